package rootcert_test

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambit-mesh/ambit/controlplane/rootcert"
	"github.com/ambit-mesh/ambit/identity"
	"github.com/ambit-mesh/ambit/internal/kubetest"
)

// TestPublisher runs the publisher against a real API server: the
// ConfigMap appears in existing and new namespaces (not in the ignored
// ones), is put back after it is deleted or its root-cert.pem changed
// (other keys kept), and follows a root rotation.
func TestPublisher(t *testing.T) {
	s := kubetest.Start(t, kubetest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := s.EnsureNamespace(ctx, "before"); err != nil {
		t.Fatal(err)
	}
	auth, err := identity.NewRootAuthority("cluster.local", time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	roots := identity.EncodeCerts(auth.Root())
	p, err := rootcert.New(s.Client, roots, nil)
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- p.Run(runCtx) }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	cms := func(ns string) (*corev1.ConfigMap, error) {
		return s.Client.CoreV1().ConfigMaps(ns).Get(ctx, rootcert.ConfigMapName, metav1.GetOptions{})
	}
	// eventually waits for namespace ns to hold want.
	eventually := func(ns, want string) *corev1.ConfigMap {
		t.Helper()
		start := time.Now()
		for {
			cm, err := cms(ns)
			if err == nil && cm.Data[rootcert.DataKey] == want {
				t.Logf("%s: ConfigMap in place after %s", ns, time.Since(start).Round(time.Millisecond))
				return cm
			}
			if time.Since(start) > 20*time.Second {
				t.Fatalf("%s: ConfigMap %v, %v; want root-cert.pem = the roots", ns, cm, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	cm := eventually("before", string(roots))
	if cm.Labels["istio.io/config"] != "true" {
		t.Errorf("labels %v", cm.Labels)
	}
	eventually("default", string(roots))
	eventually("kube-system", string(roots))

	if err := s.EnsureNamespace(ctx, "fresh"); err != nil {
		t.Fatal(err)
	}
	eventually("fresh", string(roots))

	// Deleted: restored (a new object).
	old, err := cms("fresh")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Client.CoreV1().ConfigMaps("fresh").Delete(ctx, rootcert.ConfigMapName, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if cm := eventually("fresh", string(roots)); cm.UID == old.UID {
		t.Error("the ConfigMap was not deleted")
	}

	// Changed: restored, other keys kept.
	cm, err = cms("fresh")
	if err != nil {
		t.Fatal(err)
	}
	cm.Data[rootcert.DataKey] = "tampered"
	cm.Data["extra"] = "kept"
	if _, err := s.Client.CoreV1().ConfigMaps("fresh").Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if cm := eventually("fresh", string(roots)); cm.Data["extra"] != "kept" {
		t.Errorf("other keys dropped: %v", cm.Data)
	}

	// Rotation: every namespace follows.
	next, err := identity.NewRootAuthority("cluster.local", time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	both := string(identity.EncodeCerts(next.Root(), auth.Root()))
	p.SetRoots([]byte(both))
	for _, ns := range []string{"before", "fresh", "default"} {
		eventually(ns, both)
	}

	// Ignored namespaces get none.
	if err := s.EnsureNamespace(ctx, "kube-node-lease"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	if _, err := cms("kube-node-lease"); !apierrors.IsNotFound(err) {
		t.Errorf("kube-node-lease: %v, want no ConfigMap", err)
	}
}

func TestNewRefuses(t *testing.T) {
	if _, err := rootcert.New(nil, []byte("x"), nil); err == nil || !strings.Contains(err.Error(), "client") {
		t.Errorf("nil client: %v", err)
	}
}
