package interop

// TestZtunnelAgainstAmbitControlPlane: Ambit's own control plane serves
// Ambit's ztunnel from the API server, with Istio's authentication, in the
// scenario of scenario_test.go that istiod passes (istiod_test.go).
//
// The control plane is `ambit controlplane --kubeconfig`, the ambit binary
// built by the test from ./cmd/ambit, out of cluster with an admin
// kubeconfig: it watches the API server (kubesource), publishes its root
// (generated on first start and kept in --state-dir across restarts) as
// ConfigMap istio-ca-root-cert, serves xDS and its CA on one TLS port with
// a certificate for istiod.istio-system.svc, reviews tokens with
// TokenReview, and lets only --trusted-node-accounts istio-system/ztunnel
// impersonate, only for pods on its pod's node (controlplane/ca,
// controlplane/kubeauth).

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/ambit-mesh/ambit/identity"
	"github.com/ambit-mesh/ambit/nsnet/nstest"
)

func TestZtunnelAgainstAmbitControlPlane(t *testing.T) {
	nstest.RequireRoot(t)
	bin := buildBinary(t, "ambit", "./cmd/ambit")
	runScenario(t, func(t *testing.T, k *kube) controlPlane { return startAmbitCP(t, bin, k) })
}

// ambitCP is `ambit controlplane --kubeconfig`, restartable on the same
// ports with the same root.
type ambitCP struct {
	*proc
	k          *kube
	bin        string
	listen     string // host:port of its xDS and CA port
	http       string
	stateDir   string // the root, kept across restarts
	kubeconfig string
	runs       int
}

func startAmbitCP(t *testing.T, bin string, k *kube) *ambitCP {
	t.Helper()
	cp := &ambitCP{k: k, bin: bin, listen: "127.0.0.1:" + freePort(t), http: "127.0.0.1:" + freePort(t),
		stateDir: filepath.Join(t.TempDir(), "ca"), kubeconfig: k.s.Kubeconfig(t)}
	cp.start(t)
	return cp
}

func (cp *ambitCP) name() string    { return "Ambit's control plane" }
func (cp *ambitCP) xdsAddr() string { return cp.listen }

// start runs the control plane in a working directory of its own and
// waits until its /ready says it is (its first state published).
func (cp *ambitCP) start(t *testing.T) {
	t.Helper()
	cp.runs++
	dir := t.TempDir()
	cp.proc = start(t, fmt.Sprintf("ambit-controlplane-%d", cp.runs), cp.bin, dir, baseEnv(), []string{"controlplane",
		"--kubeconfig=" + cp.kubeconfig,
		"--cluster-id=Kubernetes",
		"--trusted-node-accounts=istio-system/ztunnel",
		"--namespace=istio-system",
		"--trust-domain=cluster.local",
		"--listen=" + cp.listen,
		"--http=" + cp.http,
		"--state-dir=" + cp.stateDir,
	})
	t.Logf("Ambit's control plane ready in %s", waitReady(t, cp.proc, "http://"+cp.http+"/ready").Round(time.Millisecond))
}

// rootPEM: the root is the one generated in --state-dir.
func (cp *ambitCP) rootPEM(t *testing.T) []byte {
	t.Helper()
	return cp.k.configMapRoot(cp.proc, func() []byte {
		b, err := os.ReadFile(filepath.Join(cp.stateDir, "root-cert.pem"))
		if err != nil {
			t.Fatalf("the control plane's root: %v", err)
		}
		return b
	})
}

// proxyStatus is a connection as /debug/proxies shows it
// (controlplane/xds.ProxyStatus).
type proxyStatus struct {
	Node     string                       `json:"node"`
	Sent     map[string]map[string]string `json:"sent"`
	Rejected map[string]string            `json:"rejected"`
}

// checkProxy: the control plane's debug view of the connection, by
// Istio's node id, and what it was sent (it keeps no node metadata).
func (cp *ambitCP) checkProxy(t *testing.T, pod *corev1.Pod) {
	t.Helper()
	var all []proxyStatus
	getJSON(t, "http://"+cp.http+"/debug/proxies", &all)
	id := istioNodeID(pod)
	i := slices.IndexFunc(all, func(p proxyStatus) bool { return p.Node == id })
	if i < 0 {
		t.Fatalf("Ambit's control plane has no xDS connection of node %s: %+v", id, all)
	}
	p := all[i]
	for _, typ := range []string{addressType, authorizationType} {
		if _, ok := p.Sent[typ]; !ok {
			t.Errorf("Ambit's control plane's view of ztunnel: sent nothing of %s (sent %v)", typ, p.Sent)
		}
	}
	if own := "Kubernetes//Pod/" + pod.Namespace + "/" + pod.Name; !mapHas(p.Sent[addressType], own) {
		t.Errorf("Ambit's control plane's view of ztunnel: its own workload %s not sent (sent %v)", own, p.Sent[addressType])
	}
	if len(p.Rejected) > 0 {
		t.Errorf("Ambit's control plane's view of ztunnel: rejected %v", p.Rejected)
	}
}

func mapHas[V any](m map[string]V, k string) bool { _, ok := m[k]; return ok }

// refusal says why the control plane refuses, to the caller and in its
// log (controlplane/ca authorize).
func (cp *ambitCP) refusal(why refusal, caller *corev1.Pod, id string) string {
	want, err := identity.ParseSPIFFE(id)
	if err != nil {
		return fmt.Sprintf("(%s: %v)", id, err)
	}
	switch why {
	case notOnNode:
		return fmt.Sprintf("node %s may not impersonate %s: no running pod with service account %s/%s on that node",
			caller.Spec.NodeName, id, want.Namespace, want.ServiceAccount)
	case untrustedCaller:
		account := caller.Namespace + "/" + caller.Spec.ServiceAccountName
		return fmt.Sprintf("spiffe://cluster.local/ns/%s/sa/%s may not impersonate %s: service account %s is not a trusted node account (trusted: istio-system/ztunnel)",
			caller.Namespace, caller.Spec.ServiceAccountName, id, account)
	}
	return fmt.Sprintf("(refusal %d)", why)
}

// refusedState: the control plane refuses impersonation with
// PermissionDenied and says why, where istiod answers Unauthenticated
// "request impersonation authentication failure" whatever the reason
// (controlplane/ca Server.authorize and kubeauth CallerNode against
// istiod's security/pkg/server/ca/server.go CreateCertificate). Ambit's
// ztunnel treats both alike (identity/caclient: a failed fetch, retried
// with backoff); the difference is known, and kept visible here.
func (cp *ambitCP) refusedState(why refusal, caller *corev1.Pod, id string) []string {
	return []string{"code = PermissionDenied", cp.refusal(why, caller, id)}
}

// waitRefusalLog: the CA logs `certificate refused` with the caller (its
// identity and the pod its token is bound to) and the reason.
func (cp *ambitCP) waitRefusalLog(t *testing.T, why refusal, caller *corev1.Pod, id string) {
	t.Helper()
	cp.waitLog(t, updateTimeout, `msg="certificate refused"`, "component=ca",
		fmt.Sprintf("(token of pod %s/%s)", caller.Namespace, caller.Name), cp.refusal(why, caller, id))
}
