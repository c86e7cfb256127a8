package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gwclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/ambit-mesh/ambit/controlplane/kubestatus"
	"github.com/ambit-mesh/ambit/internal/kubetest"
	"github.com/ambit-mesh/ambit/manifests"
)

// crdDir runs hack/crds.sh into a temporary directory (as make manifests
// does into manifests/crds) and returns it.
func crdDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	cmd := exec.Command("bash", filepath.Join("..", "..", "hack", "crds.sh"))
	cmd.Env = append(os.Environ(), "OUT="+dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("hack/crds.sh: %v\n%s", err, out)
	}
	return dir
}

// ambit runs the ambit command line in process.
func ambit(ctx context.Context, args ...string) (string, error) {
	root := newRootCmd()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	return out.String(), err
}

func TestInstallDryRun(t *testing.T) {
	dir := crdDir(t)
	ctx := context.Background()
	out, err := ambit(ctx, "install", "--dry-run", "--crds", dir, "--hub", "reg.example/mesh", "--tag", "v7", "--trust-domain", "example.org")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	objs, err := manifests.Parse("dry-run", []byte(out))
	if err != nil {
		t.Fatalf("the output does not parse as YAML: %v", err)
	}
	kinds := map[string]int{}
	var order []string
	for _, o := range objs {
		kinds[o.GetKind()]++
		if len(order) == 0 || order[len(order)-1] != o.GetKind() {
			order = append(order, o.GetKind())
		}
	}
	crds, err := manifests.LoadCRDs(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int{
		"Namespace": 1, "CustomResourceDefinition": len(crds), "ServiceAccount": 3,
		"ClusterRole": 2, "ClusterRoleBinding": 2, "Role": 2, "RoleBinding": 2,
		"Deployment": 1, "Service": 1, "DaemonSet": 2,
	}
	if fmt.Sprint(kinds) != fmt.Sprint(want) {
		t.Errorf("kinds %v, want %v", kinds, want)
	}
	if len(order) < 2 || order[0] != "Namespace" || order[1] != "CustomResourceDefinition" {
		t.Errorf("order %v: want the namespace, then the CRDs", order)
	}
	for _, o := range objs {
		if o.GetKind() == "CustomResourceDefinition" && !slices.ContainsFunc(crds, func(c manifests.Object) bool { return c.GetName() == o.GetName() }) {
			t.Errorf("unexpected CRD %s", o.GetName())
		}
	}
	for _, s := range []string{"image: \"reg.example/mesh/ambit:v7\"", "image: \"reg.example/mesh/ambit-ztunnel:v7\"", "--trust-domain=example.org"} {
		if !strings.Contains(out, s) {
			t.Errorf("the output lacks %s", s)
		}
	}
	if strings.Contains(out, "kind: Secret") || strings.Contains(out, "PRIVATE KEY") {
		t.Error("the dry run prints a secret")
	}

	out, err = ambit(ctx, "install", "--dry-run", "--install-crds=false", "--ambit-image", "a:1", "--ztunnel-image", "z:1")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if strings.Contains(out, "kind: CustomResourceDefinition") {
		t.Error("--install-crds=false printed CRDs")
	}
	if !strings.Contains(out, `image: "a:1"`) || !strings.Contains(out, `image: "z:1"`) {
		t.Error("--ambit-image/--ztunnel-image ignored")
	}

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"install", "--dry-run", "--install-crds=false", "--image-pull-policy", "Sometimes"}, "image pull policy"},
		{[]string{"install", "--dry-run", "--install-crds=false", "--tag", "not/a label"}, "not an image reference"},
		{[]string{"install", "--dry-run", "--crds", t.TempDir()}, "no CustomResourceDefinition"},
	} {
		if out, err := ambit(ctx, tc.args...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want %q\n%s", tc.args, err, tc.want, out)
		}
	}
}

// tokenKubeconfig writes a kubeconfig that authenticates with token.
func tokenKubeconfig(t *testing.T, srv *kubetest.Server, token string) string {
	t.Helper()
	ca := filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(ca, srv.CACert, 0o600); err != nil {
		t.Fatal(err)
	}
	kc := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: test
  cluster: {server: %q, certificate-authority: %q}
users:
- name: sa
  user: {token: %q}
contexts:
- name: test
  context: {cluster: test, user: sa}
current-context: test
`, srv.URL, ca, token)
	p := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(p, []byte(kc), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestInstallCLI runs `ambit check`, `ambit install` and `ambit uninstall`
// against a real API server, and the control plane with only the
// permissions the install gave its service account (and the CA the
// install generated), which must be enough for everything it does.
func TestInstallCLI(t *testing.T) {
	srv := kubetest.Start(t, kubetest.Options{})
	dir := crdDir(t)
	admin := srv.Kubeconfig(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	out, err := ambit(ctx, "check", "--node=false", "--kubeconfig", admin)
	if err != nil || !strings.Contains(out, "All 6 checks passed") {
		t.Fatalf("check: %v\n%s", err, out)
	}
	out, err = ambit(ctx, "install", "--kubeconfig", admin, "--crds", dir, "--wait=false", "--tag", "v0.0.0-test")
	if err != nil {
		t.Fatalf("install: %v\n%s", err, out)
	}
	for _, s := range []string{"established  ", "created      Secret istio-system/cacerts", "applied      DaemonSet istio-system/ambit-node-agent", "not waiting"} {
		if !strings.Contains(out, s) {
			t.Errorf("install output lacks %q:\n%s", s, out)
		}
	}
	if out, err := ambit(ctx, "check", "--node=false", "--kubeconfig", admin); err != nil || !strings.Contains(out, "istiod is Ambit's") {
		t.Errorf("check after install: %v\n%s", err, out)
	}

	t.Run("the control plane runs with its service account", func(t *testing.T) {
		runControlPlaneAsInstalled(t, ctx, srv)
	})

	out, err = ambit(ctx, "uninstall", "--kubeconfig", admin, "--crds", dir, "--purge", "--wait=false")
	if err != nil {
		t.Fatalf("uninstall: %v\n%s", err, out)
	}
	if _, err := srv.Client.AppsV1().DaemonSets(manifests.Namespace).Get(ctx, "ztunnel", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("ztunnel DaemonSet after uninstall: %v", err)
	}
	gw, err := gwclient.NewForConfig(srv.Config)
	if err != nil {
		t.Fatal(err)
	}
	// The CRDs go (the API server itself removes them); without
	// kube-controller-manager the namespace stays Terminating.
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := gw.GatewayV1().Gateways("default").List(ctx, metav1.ListOptions{})
		if apierrors.IsNotFound(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Gateway API still served after --purge: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	ns, err := srv.Client.CoreV1().Namespaces().Get(ctx, manifests.Namespace, metav1.GetOptions{})
	if err == nil && ns.DeletionTimestamp == nil {
		t.Error("namespace istio-system not being deleted after --purge")
	}
}

// runControlPlaneAsInstalled runs `ambit controlplane` as the installed
// Deployment would: as service account istio-system/istiod, with the CA of
// Secret cacerts. It must become ready, take the status Lease, publish
// the root in every namespace, write a waypoint's and a policy's status,
// and log no "forbidden".
func runControlPlaneAsInstalled(t *testing.T, ctx context.Context, srv *kubetest.Server) {
	kube := srv.Client
	token, err := srv.Token(ctx, manifests.Namespace, "istiod", nil, time.Hour, "")
	if err != nil {
		t.Fatal(err)
	}
	secret, err := kube.CoreV1().Secrets(manifests.Namespace).Get(ctx, "cacerts", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	caDir := t.TempDir()
	for k, v := range secret.Data {
		if err := os.WriteFile(filepath.Join(caDir, k), v, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := srv.EnsureServiceAccount(ctx, "shop", "default"); err != nil {
		t.Fatal(err)
	}
	dc, err := dynamic.NewForConfig(srv.Config)
	if err != nil {
		t.Fatal(err)
	}
	policies := dc.Resource(schema.GroupVersionResource{Group: "security.istio.io", Version: "v1", Resource: "authorizationpolicies"}).Namespace("shop")
	if _, err := policies.Create(ctx, &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy", "metadata": map[string]any{"name": "deny-all"},
		"spec": map[string]any{"selector": map[string]any{"matchLabels": map[string]any{"app": "x"}}},
	}}, metav1.CreateOptions{}); err != nil {
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
	p, err := kube.CoreV1().Pods("shop").Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "waypoint-1",
		Labels: map[string]string{"gateway.networking.k8s.io/gateway-name": "waypoint"}},
		Spec: corev1.PodSpec{NodeName: "node1", Containers: []corev1.Container{{Name: "c", Image: "ambit"}}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.244.0.5", PodIPs: []corev1.PodIP{{IP: "10.244.0.5"}}}
	if _, err := kube.CoreV1().Pods("shop").UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}

	// The control plane logs to stderr: keep it, to look for denials.
	logPath := filepath.Join(t.TempDir(), "controlplane.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	stderr := os.Stderr
	os.Stderr = logf
	defer func() { os.Stderr = stderr }()

	httpAddr := freeAddr(t)
	cmd := newControlPlaneCmd()
	cmd.SetArgs([]string{"--kubeconfig", tokenKubeconfig(t, srv, token), "--listen", freeAddr(t), "--http", httpAddr,
		"--root-cert", filepath.Join(caDir, "cert-chain.pem"), "--root-key", filepath.Join(caDir, "ca-key.pem"), "--namespace", manifests.Namespace})
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(runCtx) }()
	stopped := false
	defer func() {
		if !stopped {
			stop()
			<-done
		}
	}()
	logTail := func() string { b, _ := os.ReadFile(logPath); return string(b) }
	wait := func(what string, cond func() (bool, string)) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			ok, last := cond()
			if ok {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s; last: %s\nlog:\n%s", what, last, logTail())
			}
			select {
			case err := <-done:
				stopped = true
				t.Fatalf("the control plane stopped: %v\nlog:\n%s", err, logTail())
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	wait("ready", func() (bool, string) {
		resp, err := http.Get("http://" + httpAddr + "/ready")
		if err != nil {
			return false, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode == http.StatusOK, resp.Status + " " + string(b)
	})
	wait("the status lease", func() (bool, string) {
		l, err := kube.CoordinationV1().Leases(manifests.Namespace).Get(ctx, kubestatus.DefaultLeaseName, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		return l.Spec.HolderIdentity != nil && *l.Spec.HolderIdentity != "", ""
	})
	for _, ns := range []string{"default", "shop", manifests.Namespace} {
		wait("the root in "+ns, func() (bool, string) {
			cm, err := kube.CoreV1().ConfigMaps(ns).Get(ctx, "istio-ca-root-cert", metav1.GetOptions{})
			if err != nil {
				return false, err.Error()
			}
			return strings.Contains(cm.Data["root-cert.pem"], "BEGIN CERTIFICATE"), ""
		})
	}
	wait("the waypoint's status", func() (bool, string) {
		g, err := gw.GatewayV1().Gateways("shop").Get(ctx, "waypoint", metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		return meta.IsStatusConditionTrue(g.Status.Conditions, "Programmed"), fmt.Sprint(g.Status.Conditions)
	})
	wait("the policy's status", func() (bool, string) {
		u, err := policies.Get(ctx, "deny-all", metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
		for _, c := range conds {
			if m, _ := c.(map[string]any); m["type"] == "ZtunnelAccepted" {
				return true, ""
			}
		}
		return false, fmt.Sprint(conds)
	})
	stop()
	stopped = true
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("the control plane exited with %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the control plane did not stop")
	}
	if log := logTail(); strings.Contains(strings.ToLower(log), "forbidden") {
		t.Errorf("the control plane was denied something:\n%s", log)
	}
}
