package cpconn

import (
	"context"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambit-mesh/ambit/controlplane/ca"
	"github.com/ambit-mesh/ambit/controlplane/kubeauth"
	"github.com/ambit-mesh/ambit/identity"
	"github.com/ambit-mesh/ambit/internal/kubetest"
)

// TestXDSWithTokenReview: against a real API server, xDS refuses a stream
// without a token (and without a mesh certificate), with an invalid token
// or one for another audience, and accepts ztunnel's projected token, sent
// by Dial as ztunnel sends it. The node credential of local mode still
// works beside it.
func TestXDSWithTokenReview(t *testing.T) {
	s := kubetest.Start(t, kubetest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := s.EnsureServiceAccount(ctx, "istio-system", "ztunnel"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Client.CoreV1().Pods("istio-system").Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "ztunnel-a", Namespace: "istio-system"},
		Spec: corev1.PodSpec{ServiceAccountName: "ztunnel", NodeName: "node-a",
			Containers: []corev1.Container{{Name: "istio-proxy", Image: "example.invalid/ztunnel"}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	good, err := s.Token(ctx, "istio-system", "ztunnel", []string{"istio-ca"}, time.Hour, "ztunnel-a")
	if err != nil {
		t.Fatal(err)
	}
	otherAud, err := s.Token(ctx, "istio-system", "ztunnel", []string{"kubernetes"}, time.Hour, "ztunnel-a")
	if err != nil {
		t.Fatal(err)
	}
	authn, err := kubeauth.New(kubeauth.Options{Client: s.Client})
	if err != nil {
		t.Fatal(err)
	}
	cp := startCP(t, authn)
	rootPath := newKubeletDir(t).write("root-cert.pem", string(identity.EncodeCerts(cp.auth.Root())))
	self := Node{Type: "ztunnel", PodName: "ztunnel-a", PodNamespace: "istio-system", PodIP: "10.244.0.7", NodeName: "node-a", ServiceAccount: "ztunnel", ClusterID: "Kubernetes"}
	node := &corev3.Node{Id: self.ID(), Metadata: self.Metadata(nil)}

	withToken := func(tok string) *grpc.ClientConn {
		t.Helper()
		conn, err := Dial(Options{Addr: cp.addr, TokenFile: newKubeletDir(t).write("istio-token", tok), RootCert: rootPath})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return conn
	}
	roots := &rootFile{file: newWatchedFile(rootPath)}
	bare, err := grpc.NewClient(cp.addr, grpc.WithTransportCredentials(credentials.NewTLS(clientTLS(DefaultServerName, nil, roots))))
	if err != nil {
		t.Fatal(err)
	}
	defer bare.Close()
	local, err := Dial(Options{Addr: cp.addr, CredDir: cp.dir})
	if err != nil {
		t.Fatal(err)
	}
	defer local.Close()

	tests := []struct {
		name     string
		conn     *grpc.ClientConn
		wantCode codes.Code
		wantMsg  string
	}{
		{"ztunnel's projected token", withToken(good), codes.OK, ""},
		{"no token, no certificate", bare, codes.Unauthenticated, "no client certificate"},
		{"invalid token", withToken("eyJhbGciOiJSUzI1NiJ9.e30.c2ln"), codes.Unauthenticated, "token refused by the API server"},
		{"token for another audience", withToken(otherAud), codes.Unauthenticated, "token refused by the API server"},
		{"node credential (local mode)", local, codes.OK, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := watch(t, tc.conn, node)
			if status.Code(err) != tc.wantCode || (tc.wantMsg != "" && !strings.Contains(status.Convert(err).Message(), tc.wantMsg)) {
				t.Fatalf("err %v, want %v with %q", err, tc.wantCode, tc.wantMsg)
			}
		})
	}
	t.Run("the token also gets ztunnel its own certificate", func(t *testing.T) {
		if err := renew(withToken(good), ca.NodeProxyIdentity("cluster.local"), false); err != nil {
			t.Fatal(err)
		}
	})
}
