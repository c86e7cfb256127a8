package install

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/kubernetes"

	"github.com/ambit-mesh/ambit/identity"
	"github.com/ambit-mesh/ambit/internal/kubetest"
	"github.com/ambit-mesh/ambit/manifests"
)

// generatedCRDs runs hack/crds.sh into a temporary directory (the CRDs
// from the module cache, as make manifests does) and loads them.
func generatedCRDs(t *testing.T) []manifests.Object {
	t.Helper()
	dir := t.TempDir()
	cmd := exec.Command("bash", filepath.Join("..", "..", "hack", "crds.sh"))
	cmd.Env = append(os.Environ(), "OUT="+dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("hack/crds.sh: %v\n%s", err, out)
	}
	crds, err := manifests.LoadCRDs(dir)
	if err != nil {
		t.Fatal(err)
	}
	return crds
}

// startKCM runs kube-controller-manager against srv (garbage collection,
// namespace deletion, the Deployment and DaemonSet controllers), stopped
// by PID when the test ends.
func startKCM(t *testing.T, srv *kubetest.Server) {
	t.Helper()
	bin := filepath.Join(kubetest.BinDir(t), "kube-controller-manager")
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("%v (hack/k8s-testbins.sh builds it)", err)
	}
	logf, err := os.Create(filepath.Join(srv.Dir, "kcm.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(bin, "--kubeconfig="+srv.Kubeconfig(t), "--leader-elect=false", "--secure-port=0",
		"--controllers=garbage-collector-controller,namespace-controller,deployment-controller,replicaset-controller,daemonset-controller,serviceaccount-controller",
		"--concurrent-gc-syncs=5")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	// Ready once it created the default service account of "default".
	deadline := time.Now().Add(60 * time.Second)
	for {
		_, err := srv.Client.CoreV1().ServiceAccounts("default").Get(context.Background(), "default", metav1.GetOptions{})
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(logf.Name())
			t.Fatalf("kube-controller-manager not working after 60 s: %v\n%s", err, tail(string(b), 20))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// get returns the object o names, or nil if it is not found.
func get(t *testing.T, c *Client, o manifests.Object) *unstructured.Unstructured {
	t.Helper()
	r, err := c.resource(o.Unstructured)
	if err != nil {
		t.Fatal(err)
	}
	u, err := r.Get(context.Background(), o.GetName(), metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		t.Fatalf("%s: %v", o.Ref(), err)
	}
	return u
}

// TestEnvtest installs, reinstalls, checks RBAC and uninstalls against a
// real API server (and kube-controller-manager, for garbage collection
// and namespace deletion; there are no nodes, so no pod ever runs).
func TestEnvtest(t *testing.T) {
	srv := kubetest.Start(t, kubetest.Options{})
	startKCM(t, srv)
	crds := generatedCRDs(t)
	objs, err := manifests.Render(manifests.Defaults("v0.0.0-test"))
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	c, err := NewClient(srv.Config, &out)
	if err != nil {
		t.Fatal(err)
	}
	c.Poll = 100 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	kube := srv.Client

	if err := c.Install(ctx, objs, InstallOptions{CRDs: crds, Wait: false, Timeout: time.Minute}); err != nil {
		t.Fatalf("install: %v\n%s", err, out.String())
	}
	t.Logf("install:\n%s", out.String())
	all := append(append([]manifests.Object{}, crds...), objs...)
	versions := map[string]string{}
	for _, o := range all {
		u := get(t, c, o)
		if u == nil {
			t.Errorf("%s was not applied", o.Ref())
			continue
		}
		versions[o.Ref()] = u.GetResourceVersion()
		managed := false
		for _, mf := range u.GetManagedFields() {
			managed = managed || mf.Manager == FieldManager && mf.Operation == metav1.ManagedFieldsOperationApply
		}
		if !managed {
			t.Errorf("%s is not server-side applied by %q", o.Ref(), FieldManager)
		}
		if o.GetKind() == "CustomResourceDefinition" {
			established := false
			conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
			for _, cond := range conds {
				m, _ := cond.(map[string]any)
				established = established || m["type"] == "Established" && m["status"] == "True"
			}
			if !established {
				t.Errorf("%s not Established", o.Ref())
			}
		}
		if !strings.Contains(out.String(), "applied      "+o.Ref()+"\n") {
			t.Errorf("no progress line for %s", o.Ref())
		}
	}
	// The generated CA: a root for the trust domain, its key, Istio's keys.
	ca, err := kube.CoreV1().Secrets(manifests.Namespace).Get(ctx, CASecret, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("CA secret: %v", err)
	}
	checkCASecret(t, ca)

	t.Run("reinstall is idempotent", func(t *testing.T) {
		out.Reset()
		if err := c.Install(ctx, objs, InstallOptions{CRDs: crds}); err != nil {
			t.Fatalf("%v\n%s", err, out.String())
		}
		for _, o := range all {
			u := get(t, c, o)
			if u == nil || u.GetResourceVersion() != versions[o.Ref()] {
				t.Errorf("%s changed on reinstall", o.Ref())
			}
		}
		again, err := kube.CoreV1().Secrets(manifests.Namespace).Get(ctx, CASecret, metav1.GetOptions{})
		if err != nil || again.ResourceVersion != ca.ResourceVersion {
			t.Errorf("the CA secret changed on reinstall: %v", err)
		}
		if !strings.Contains(out.String(), "kept         Secret istio-system/cacerts") {
			t.Errorf("no line for the kept CA:\n%s", out.String())
		}
	})

	t.Run("an upgrade applies the change", func(t *testing.T) {
		v := manifests.Defaults("v0.0.1-test")
		objs2, err := manifests.Render(v)
		if err != nil {
			t.Fatal(err)
		}
		out.Reset()
		if err := c.Install(ctx, objs2, InstallOptions{}); err != nil {
			t.Fatalf("%v\n%s", err, out.String())
		}
		ds, err := kube.AppsV1().DaemonSets(manifests.Namespace).Get(ctx, "ztunnel", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if img := ds.Spec.Template.Spec.Containers[0].Image; img != "ambit.local/ambit-ztunnel:v0.0.1-test" {
			t.Errorf("ztunnel image %s after the upgrade", img)
		}
		// Back to the first version for the rest.
		if err := c.Install(ctx, objs, InstallOptions{}); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("wait says what is not ready", func(t *testing.T) {
		out.Reset()
		err := c.Install(ctx, objs, InstallOptions{Wait: true, Timeout: 3 * time.Second})
		// No scheduler, no nodes: the control plane's pod stays Pending;
		// the DaemonSets want no pods, so they are ready.
		if err == nil || !strings.Contains(err.Error(), "Deployment istio-system/istiod not ready") {
			t.Fatalf("wait: %v\n%s", err, out.String())
		}
		if !strings.Contains(out.String(), "waiting      Deployment istio-system/istiod: 0/1 ready") {
			t.Errorf("no waiting line:\n%s", out.String())
		}
	})

	t.Run("RBAC", func(t *testing.T) { checkRBAC(t, kube) })

	t.Run("uninstall", func(t *testing.T) {
		// What the running control plane would have left behind, and a
		// pod a node agent did not clean up.
		if _, err := kube.CoreV1().ConfigMaps("default").Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{
			Name: rootCertCM, Labels: map[string]string{"istio.io/config": "true"}}, Data: map[string]string{"root-cert.pem": "x"}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := kube.CoreV1().ConfigMaps("default").Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "unrelated"}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := kube.CoordinationV1().Leases(manifests.Namespace).Create(ctx, &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: statusLeaseName}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := kube.CoreV1().Pods("default").Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "app", Annotations: map[string]string{RedirectionAnnotation: "enabled"}},
			Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app"}}},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		out.Reset()
		if err := c.Uninstall(ctx, objs, UninstallOptions{Wait: true, Timeout: time.Minute}); err != nil {
			t.Fatalf("uninstall: %v\n%s", err, out.String())
		}
		t.Logf("uninstall:\n%s", out.String())
		for _, o := range objs {
			u := get(t, c, o)
			if o.GetKind() == "Namespace" {
				if u == nil || u.GetDeletionTimestamp() != nil {
					t.Errorf("%s was deleted without --purge", o.Ref())
				}
			} else if u != nil {
				t.Errorf("%s is still there", o.Ref())
			}
		}
		for _, crd := range crds {
			if get(t, c, crd) == nil {
				t.Errorf("%s was deleted without --purge", crd.Ref())
			}
		}
		if pods, _ := kube.CoreV1().Pods(manifests.Namespace).List(ctx, metav1.ListOptions{}); len(pods.Items) != 0 {
			t.Errorf("%d pods left in %s", len(pods.Items), manifests.Namespace)
		}
		if _, err := kube.CoreV1().ConfigMaps("default").Get(ctx, rootCertCM, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("the published root is still there: %v", err)
		}
		if _, err := kube.CoreV1().ConfigMaps("default").Get(ctx, "unrelated", metav1.GetOptions{}); err != nil {
			t.Errorf("an unrelated ConfigMap went: %v", err)
		}
		if _, err := kube.CoordinationV1().Leases(manifests.Namespace).Get(ctx, statusLeaseName, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("the status lease is still there: %v", err)
		}
		if _, err := kube.CoreV1().Secrets(manifests.Namespace).Get(ctx, CASecret, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("the generated CA is still there: %v", err)
		}
		if !strings.Contains(out.String(), "warning") || !strings.Contains(out.String(), "default/app") {
			t.Errorf("no warning about the captured pod:\n%s", out.String())
		}
		_ = kube.CoreV1().Pods("default").Delete(ctx, "app", metav1.DeleteOptions{})

		// Again: nothing left to do.
		out.Reset()
		if err := c.Uninstall(ctx, objs, UninstallOptions{Wait: true, Timeout: time.Minute}); err != nil {
			t.Fatalf("second uninstall: %v\n%s", err, out.String())
		}
		if strings.Contains(out.String(), "deleted") {
			t.Errorf("a second uninstall deleted something:\n%s", out.String())
		}
	})

	t.Run("a CA you brought stays", func(t *testing.T) {
		mine, err := NewCASecret("example.org", time.Now())
		if err != nil {
			t.Fatal(err)
		}
		mine.Labels = nil
		if _, err := kube.CoreV1().Secrets(manifests.Namespace).Create(ctx, mine, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		out.Reset()
		if err := c.Install(ctx, objs, InstallOptions{CRDs: crds}); err != nil {
			t.Fatalf("%v\n%s", err, out.String())
		}
		if err := c.Uninstall(ctx, objs, UninstallOptions{Wait: true, Timeout: time.Minute}); err != nil {
			t.Fatalf("%v\n%s", err, out.String())
		}
		s, err := kube.CoreV1().Secrets(manifests.Namespace).Get(ctx, CASecret, metav1.GetOptions{})
		if err != nil || !bytes.Equal(s.Data["ca-key.pem"], mine.Data["ca-key.pem"]) {
			t.Errorf("your CA did not stay: %v", err)
		}
	})

	t.Run("purge", func(t *testing.T) {
		out.Reset()
		if err := c.Install(ctx, objs, InstallOptions{CRDs: crds}); err != nil {
			t.Fatalf("%v\n%s", err, out.String())
		}
		out.Reset()
		if err := c.Uninstall(ctx, objs, UninstallOptions{Purge: true, CRDs: crds, Wait: true, Timeout: 2 * time.Minute}); err != nil {
			t.Fatalf("purge: %v\n%s", err, out.String())
		}
		for _, o := range all {
			if get(t, c, o) != nil {
				t.Errorf("%s is still there after --purge", o.Ref())
			}
		}
	})
}

func checkCASecret(t *testing.T, s *corev1.Secret) {
	t.Helper()
	if s.Labels[manifests.ManagedByLabel] != manifests.ManagedBy {
		t.Errorf("CA secret labels %v", s.Labels)
	}
	for _, k := range []string{"ca-cert.pem", "ca-key.pem", "cert-chain.pem", "root-cert.pem"} {
		if len(s.Data[k]) == 0 {
			t.Errorf("CA secret lacks %s", k)
		}
	}
	certs, err := identity.ParseCerts(s.Data["cert-chain.pem"])
	if err != nil || len(certs) != 1 {
		t.Fatalf("cert-chain.pem: %v", err)
	}
	root := certs[0]
	if !root.IsCA || root.CheckSignatureFrom(root) != nil {
		t.Error("cert-chain.pem is not a self-signed CA")
	}
	block, _ := pem.Decode(s.Data["ca-key.pem"])
	if block == nil {
		t.Fatal("ca-key.pem: no PEM")
	}
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		t.Fatalf("ca-key.pem holds a %T", key)
	}
	auth := &identity.Authority{Cert: root, Key: signer, Chain: certs}
	if err := auth.Check(time.Now()); err != nil {
		t.Errorf("the generated CA does not check: %v", err)
	}
}

// checkRBAC asks the API server what each service account may do: what
// its component needs, and not more.
func checkRBAC(t *testing.T, kube kubernetes.Interface) {
	ns := manifests.Namespace
	for _, tc := range []struct {
		sa    string
		allow []sar
		deny  []sar
	}{
		{
			sa: "istiod",
			allow: []sar{
				{verb: "list", resource: "pods"}, {verb: "watch", resource: "pods"}, {verb: "list", resource: "services"},
				{verb: "watch", resource: "namespaces"}, {verb: "list", resource: "nodes"}, {verb: "list", resource: "serviceaccounts"},
				{verb: "list", group: "discovery.k8s.io", resource: "endpointslices"},
				{verb: "list", group: "security.istio.io", resource: "authorizationpolicies"},
				{verb: "watch", group: "security.istio.io", resource: "peerauthentications"},
				{verb: "update", group: "security.istio.io", resource: "authorizationpolicies", subresource: "status", namespace: "default"},
				{verb: "list", group: "gateway.networking.k8s.io", resource: "gateways"},
				{verb: "watch", group: "gateway.networking.k8s.io", resource: "httproutes"},
				{verb: "update", group: "gateway.networking.k8s.io", resource: "gateways", subresource: "status", namespace: "default"},
				{verb: "update", group: "gateway.networking.k8s.io", resource: "tcproutes", subresource: "status", namespace: "default"},
				{verb: "create", group: "authentication.k8s.io", resource: "tokenreviews"},
				{verb: "create", resource: "configmaps", namespace: "default"},
				{verb: "get", resource: "configmaps", namespace: "default", name: rootCertCM},
				{verb: "list", resource: "configmaps", name: rootCertCM},
				{verb: "update", resource: "configmaps", namespace: "default", name: rootCertCM},
				{verb: "create", group: "coordination.k8s.io", resource: "leases", namespace: ns},
				{verb: "update", group: "coordination.k8s.io", resource: "leases", namespace: ns, name: statusLeaseName},
				{verb: "create", group: "apps", resource: "deployments", namespace: "default"},
				{verb: "create", resource: "services", namespace: "default"},
			},
			deny: []sar{
				{verb: "delete", resource: "pods", namespace: "default"},
				{verb: "patch", resource: "pods", namespace: "default"},
				{verb: "get", resource: "secrets", namespace: ns, name: CASecret},
				{verb: "list", resource: "secrets"},
				{verb: "get", resource: "configmaps", namespace: "default", name: "other"},
				{verb: "list", resource: "configmaps"},
				{verb: "delete", resource: "configmaps", namespace: "default", name: rootCertCM},
				{verb: "update", group: "coordination.k8s.io", resource: "leases", namespace: ns, name: "other"},
				{verb: "create", group: "coordination.k8s.io", resource: "leases", namespace: "kube-system"},
				{verb: "update", group: "security.istio.io", resource: "authorizationpolicies", namespace: "default"},
				{verb: "delete", group: "gateway.networking.k8s.io", resource: "gateways", namespace: "default"},
				{verb: "update", group: "gateway.networking.k8s.io", resource: "httproutes", namespace: "default"},
				{verb: "create", group: "rbac.authorization.k8s.io", resource: "clusterroles"},
				{verb: "create", group: "apps", resource: "daemonsets", namespace: "default"},
				{verb: "impersonate", resource: "serviceaccounts"},
				{verb: "create", resource: "serviceaccounts", subresource: "token", namespace: "default"},
				{verb: "patch", resource: "nodes"},
			},
		},
		{
			sa: "ambit-node-agent",
			allow: []sar{
				{verb: "list", resource: "pods"}, {verb: "watch", resource: "pods"}, {verb: "get", resource: "pods", namespace: "default"},
				{verb: "watch", resource: "namespaces"},
				{verb: "patch", resource: "pods", namespace: "default"},
				{verb: "get", group: "apps", resource: "daemonsets", namespace: ns, name: "ambit-node-agent"},
			},
			deny: []sar{
				{verb: "update", resource: "pods", namespace: "default"},
				{verb: "patch", resource: "pods", subresource: "status", namespace: "default"},
				{verb: "create", resource: "pods", subresource: "exec", namespace: "default"},
				{verb: "delete", resource: "pods", namespace: "default"},
				{verb: "create", resource: "pods", namespace: "default"},
				{verb: "get", resource: "secrets", namespace: ns},
				{verb: "list", resource: "configmaps"},
				{verb: "list", resource: "services"},
				{verb: "get", group: "apps", resource: "daemonsets", namespace: ns, name: "ztunnel"},
				{verb: "create", group: "authentication.k8s.io", resource: "tokenreviews"},
			},
		},
		{
			sa: "ztunnel",
			deny: []sar{
				{verb: "list", resource: "pods"}, {verb: "get", resource: "configmaps", namespace: ns, name: rootCertCM},
				{verb: "create", group: "authentication.k8s.io", resource: "tokenreviews"},
				{verb: "get", resource: "secrets", namespace: ns, name: CASecret},
				{verb: "list", group: "security.istio.io", resource: "authorizationpolicies"},
			},
		},
	} {
		t.Run(tc.sa, func(t *testing.T) {
			for _, q := range tc.allow {
				if !allowed(t, kube, tc.sa, q) {
					t.Errorf("%s may not %s", tc.sa, q)
				}
			}
			for _, q := range tc.deny {
				if allowed(t, kube, tc.sa, q) {
					t.Errorf("%s may %s", tc.sa, q)
				}
			}
		})
	}
}

// sar is one access question.
type sar struct {
	verb, group, resource, subresource, namespace, name string
}

func (s sar) String() string {
	r := s.resource
	if s.subresource != "" {
		r += "/" + s.subresource
	}
	if s.group != "" {
		r = s.group + "/" + r
	}
	out := s.verb + " " + r
	if s.name != "" {
		out += " " + s.name
	}
	if s.namespace != "" {
		out += " in " + s.namespace
	}
	return out
}

func allowed(t *testing.T, kube kubernetes.Interface, sa string, q sar) bool {
	t.Helper()
	user := "system:serviceaccount:" + manifests.Namespace + ":" + sa
	r, err := kube.AuthorizationV1().SubjectAccessReviews().Create(context.Background(), &authorizationv1.SubjectAccessReview{
		Spec: authorizationv1.SubjectAccessReviewSpec{
			User:   user,
			Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + manifests.Namespace, "system:authenticated"},
			ResourceAttributes: &authorizationv1.ResourceAttributes{
				Verb: q.verb, Group: q.group, Resource: q.resource, Subresource: q.subresource, Namespace: q.namespace, Name: q.name,
			},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("SubjectAccessReview %s for %s: %v", q, sa, err)
	}
	return r.Status.Allowed
}
