package main

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gwclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/ambit-mesh/ambit/controlplane/kubestatus"
	"github.com/ambit-mesh/ambit/internal/kubetest"
)

func TestControlPlaneSourceFlags(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "") // not in a pod
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "--config DIR or --kubeconfig PATH is required"},
		{[]string{"--config", t.TempDir(), "--kubeconfig", "kc"}, "--config and --kubeconfig exclude each other"},
		{[]string{"--config", "/nonexistent"}, "not a readable directory"},
		{[]string{"--kubeconfig", "/nonexistent"}, "--kubeconfig /nonexistent"},
	} {
		cmd := newControlPlaneCmd()
		cmd.SetArgs(append(tc.args, "--state-dir", t.TempDir()))
		cmd.SetOut(io.Discard)
		cmd.SetErr(io.Discard)
		err := cmd.ExecuteContext(context.Background())
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: err %v, want %q", tc.args, err, tc.want)
		}
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestControlPlaneKubeconfig runs `ambit controlplane --kubeconfig` against
// a real API server: it becomes ready, stores the cluster's objects, takes
// the status Lease, writes a waypoint's status, and releases the Lease when
// it stops.
func TestControlPlaneKubeconfig(t *testing.T) {
	srv := kubetest.Start(t, kubetest.Options{})
	srv.InstallCRDs(t, kubetest.MeshCRDs()...)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := srv.EnsureNamespace(ctx, "istio-system"); err != nil {
		t.Fatal(err)
	}
	if err := srv.EnsureServiceAccount(ctx, "shop", "default"); err != nil {
		t.Fatal(err)
	}
	gw, err := gwclient.NewForConfig(srv.Config)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := gw.GatewayV1().Gateways("shop").Create(ctx, &gatewayv1.Gateway{ObjectMeta: metav1.ObjectMeta{Name: "waypoint"},
		Spec: gatewayv1.GatewaySpec{GatewayClassName: "istio-waypoint", Listeners: []gatewayv1.Listener{{Name: "mesh", Port: 15008, Protocol: "HBONE"}}}},
		metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	p, err := srv.Client.CoreV1().Pods("shop").Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "waypoint-1",
		Labels: map[string]string{"gateway.networking.k8s.io/gateway-name": "waypoint"}},
		Spec: corev1.PodSpec{NodeName: "node1", Containers: []corev1.Container{{Name: "c", Image: "ambit"}}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.244.0.5", PodIPs: []corev1.PodIP{{IP: "10.244.0.5"}}}
	if _, err := srv.Client.CoreV1().Pods("shop").UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}

	httpAddr := freeAddr(t)
	cmd := newControlPlaneCmd()
	cmd.SetArgs([]string{"--kubeconfig", srv.Kubeconfig(t), "--listen", freeAddr(t), "--http", httpAddr, "--state-dir", t.TempDir()})
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		done <- cmd.ExecuteContext(runCtx)
	}()
	defer func() {
		stop()
		<-exited
	}()

	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + httpAddr + path)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	wait := func(what string, cond func() (bool, string)) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			ok, last := cond()
			if ok {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s; last: %s", what, last)
			}
			select {
			case err := <-done:
				t.Fatalf("the control plane stopped: %v", err)
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	wait("ready", func() (bool, string) {
		code, body := get("/ready")
		return code == http.StatusOK, strconv.Itoa(code) + " " + body
	})
	_, body := get("/debug/store")
	var store map[string]map[string]json.RawMessage
	if err := json.Unmarshal([]byte(body), &store); err != nil {
		t.Fatalf("/debug/store: %v", err)
	}
	if _, ok := store["Pod"]["shop/waypoint-1"]; !ok {
		t.Errorf("/debug/store has no shop/waypoint-1 pod: kinds %v", keys(store))
	}
	if _, ok := store["Gateway"]["shop/waypoint"]; !ok {
		t.Errorf("/debug/store has no shop/waypoint Gateway: kinds %v", keys(store))
	}
	holder := func() string {
		l, err := srv.Client.CoordinationV1().Leases("istio-system").Get(ctx, kubestatus.DefaultLeaseName, metav1.GetOptions{})
		if err != nil {
			return "error: " + err.Error()
		}
		return ptr.Deref(l.Spec.HolderIdentity, "")
	}
	wait("the status lease", func() (bool, string) { h := holder(); return h != "" && !strings.HasPrefix(h, "error"), h })
	wait("the waypoint's status", func() (bool, string) {
		g, err := gw.GatewayV1().Gateways("shop").Get(ctx, "waypoint", metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		return meta.IsStatusConditionTrue(g.Status.Conditions, "Programmed") && len(g.Status.Addresses) > 0, ""
	})
	stop()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("the control plane exited with %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the control plane did not stop")
	}
	if h := holder(); h != "" {
		t.Errorf("the lease is still held by %q after the stop", h)
	}
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
