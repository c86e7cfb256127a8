package preflight

import (
	"context"
	"net"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
	authorizationv1 "k8s.io/api/authorization/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// LocalNode is this machine.
func LocalNode() Node {
	return Node{Root: os.DirFS("/"), KernelRelease: kernelRelease, ReusePort: reusePort}
}

func kernelRelease() (string, error) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "", err
	}
	return unix.ByteSliceToString(u.Release[:]), nil
}

// reusePort binds two listeners to one loopback port with SO_REUSEPORT.
func reusePort() error {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1) }); err != nil {
			return err
		}
		return serr
	}}
	ctx := context.Background()
	l1, err := lc.Listen(ctx, "tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer l1.Close()
	l2, err := lc.Listen(ctx, "tcp", l1.Addr().String())
	if err != nil {
		return err
	}
	return l2.Close()
}

// KubeCluster asks a real API server.
type KubeCluster struct{ Client kubernetes.Interface }

// ServerVersion implements Cluster.
func (k KubeCluster) ServerVersion(context.Context) (string, error) {
	v, err := k.Client.Discovery().ServerVersion()
	if err != nil {
		return "", err
	}
	return v.GitVersion, nil
}

// Istiod implements Cluster.
func (k KubeCluster) Istiod(ctx context.Context) (bool, bool, error) {
	s, err := k.Client.CoreV1().Services("istio-system").Get(ctx, "istiod", metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return false, false, nil
	}
	if err != nil {
		return false, false, err
	}
	return true, s.Labels["app.kubernetes.io/managed-by"] == "ambit", nil
}

// CanI implements Cluster with a SelfSubjectAccessReview.
func (k KubeCluster) CanI(ctx context.Context, verb, group, resource string) (bool, error) {
	r, err := k.Client.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authorizationv1.SelfSubjectAccessReview{
		Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authorizationv1.ResourceAttributes{Verb: verb, Group: group, Resource: resource}},
	}, metav1.CreateOptions{})
	if err != nil {
		return false, err
	}
	return r.Status.Allowed, nil
}
