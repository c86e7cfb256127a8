package interop

// TestZtunnelAgainstIstiod: Istio's own istiod serves Ambit's ztunnel, in
// the scenario of scenario_test.go. istiod is the reference: what it does
// there is what Ambit's control plane must do (ambitcp_test.go).
//
// istiod is istio.io/istio/pilot/cmd/pilot-discovery at the version this
// module requires (hack/istiod-bin.sh builds and caches it;
// $AMBIT_ISTIOD_BIN names a prebuilt one), run out of cluster with an
// admin kubeconfig, ambient enabled, its self-signed CA (istio-ca-secret)
// and CA_TRUSTED_NODE_ACCOUNTS=istio-system/ztunnel, as its Helm chart
// sets.

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambit-mesh/ambit/identity"
	"github.com/ambit-mesh/ambit/nsnet/nstest"
)

func TestZtunnelAgainstIstiod(t *testing.T) {
	nstest.RequireRoot(t)
	bin := istiodBinary(t)
	runScenario(t, func(t *testing.T, k *kube) controlPlane { return startIstiod(t, bin, k) })
}

// istiodProc is istiod, restartable on the same ports.
type istiodProc struct {
	*proc
	k          *kube
	secureGRPC string // host:port of its 15012
	bin, http  string
	env, args  []string
	runs       int
}

// startIstiod runs pilot-discovery out of cluster, every port on a free
// loopback port, and waits until its /ready says it is.
func startIstiod(t *testing.T, bin string, k *kube) *istiodProc {
	t.Helper()
	kubeconfig := k.s.Kubeconfig(t)
	ist := &istiodProc{k: k, bin: bin, secureGRPC: "127.0.0.1:" + freePort(t), http: "127.0.0.1:" + freePort(t)}
	ist.env = append(baseEnv(),
		"PILOT_ENABLE_AMBIENT=true",                     // the ambient profile
		"CA_TRUSTED_NODE_ACCOUNTS=istio-system/ztunnel", // what the Helm chart sets
		"POD_NAMESPACE=istio-system", "POD_NAME=istiod-test", "SERVICE_ACCOUNT=istiod",
		"REVISION=default", "CLUSTER_ID=Kubernetes", "PILOT_CERT_PROVIDER=istiod", "JWT_POLICY=third-party-jwt",
		"KUBECONFIG="+kubeconfig,
	)
	ist.args = []string{"discovery",
		"--kubeconfig=" + kubeconfig,
		"--domain=cluster.local",
		"--httpAddr=" + ist.http,
		"--grpcAddr=127.0.0.1:" + freePort(t),
		"--secureGRPCAddr=" + ist.secureGRPC,
		"--httpsAddr=127.0.0.1:" + freePort(t),
		"--monitoringAddr=127.0.0.1:" + freePort(t),
		"--shutdownDuration=1s",
	}
	ist.start(t)
	return ist
}

func (ist *istiodProc) name() string    { return "istiod" }
func (ist *istiodProc) xdsAddr() string { return ist.secureGRPC }

// start starts istiod in a working directory of its own (it looks for
// ./etc/cacerts and mesh config files there, absent: its self-signed CA in
// istio-ca-secret, kept across restarts, and the default mesh config; it
// writes its DNS certificate under ./var) and waits until it is ready.
func (ist *istiodProc) start(t *testing.T) {
	t.Helper()
	ist.runs++
	dir := t.TempDir()
	args := append(slices.Clone(ist.args),
		"--meshConfig="+filepath.Join(dir, "mesh.yaml"), // absent: defaults and the istio ConfigMap
		"--networksConfig="+filepath.Join(dir, "meshNetworks.yaml"))
	ist.proc = start(t, fmt.Sprintf("istiod-%d", ist.runs), ist.bin, dir, ist.env, args)
	t.Logf("istiod ready in %s", waitReady(t, ist.proc, "http://"+ist.http+"/ready").Round(time.Millisecond))
}

// rootPEM: istiod's root is its self-signed CA's, istio-ca-secret's
// ca-cert.pem.
func (ist *istiodProc) rootPEM(t *testing.T) []byte {
	t.Helper()
	return ist.k.configMapRoot(ist.proc, func() []byte {
		sec, err := ist.k.s.Client.CoreV1().Secrets("istio-system").Get(ist.k.ctx, "istio-ca-secret", metav1.GetOptions{})
		if err != nil {
			t.Fatalf("istiod's self-signed CA: %v", err)
		}
		return sec.Data["ca-cert.pem"]
	})
}

// adsConn is a connection as istiod's /debug/adsz shows it.
type adsConn struct {
	ConnectionID string              `json:"connectionId"`
	Metadata     map[string]any      `json:"metadata"`
	Watches      map[string][]string `json:"watches"`
}

// checkProxy: istiod's debug view of the connection (its id made from the
// node id's pod and namespace), with the node metadata it keeps (NAME,
// which ztunnel sends too, is bootstrap-only in istiod and not kept) and
// what it watches.
func (ist *istiodProc) checkProxy(t *testing.T, pod *corev1.Pod) {
	t.Helper()
	var all struct {
		Connected []adsConn `json:"clients"`
	}
	getJSON(t, "http://"+ist.http+"/debug/adsz", &all)
	prefix := pod.Name + "." + pod.Namespace + "-"
	i := slices.IndexFunc(all.Connected, func(c adsConn) bool { return strings.HasPrefix(c.ConnectionID, prefix) })
	if i < 0 {
		t.Fatalf("istiod has no xDS connection %s*: %+v", prefix, all.Connected)
	}
	conn := all.Connected[i]
	for k, want := range map[string]string{"NAMESPACE": pod.Namespace, "NODE_NAME": pod.Spec.NodeName, "CLUSTER_ID": "Kubernetes",
		"SERVICE_ACCOUNT": pod.Spec.ServiceAccountName, "INSTANCE_IPS": pod.Status.PodIP} {
		if got := fmt.Sprint(conn.Metadata[k]); got != want {
			t.Errorf("istiod's view of ztunnel: metadata %s = %q, want %q (metadata %v)", k, got, want, conn.Metadata)
		}
	}
	if conn.Metadata["ISTIO_VERSION"] == nil {
		t.Errorf("istiod's view of ztunnel: no ISTIO_VERSION")
	}
	for _, typ := range []string{addressType, authorizationType} {
		if _, ok := conn.Watches[typ]; !ok {
			t.Errorf("istiod's view of ztunnel: not watching %s (watches %v)", typ, conn.Watches)
		}
	}
}

// refusedState: istiod answers every impersonation refusal with the same
// opaque Unauthenticated (security/pkg/server/ca/server.go), the reason
// going to its log only.
func (ist *istiodProc) refusedState(refusal, *corev1.Pod, string) []string {
	return []string{"code = Unauthenticated", "request impersonation authentication failure"}
}

// waitRefusalLog: istiod logs "impersonation failed for identity <id>,
// error: <the node authorizer's reason>" (node_auth.go).
func (ist *istiodProc) waitRefusalLog(t *testing.T, why refusal, caller *corev1.Pod, id string) {
	t.Helper()
	prefix := "impersonation failed for identity " + id + ", error: "
	switch why {
	case notOnNode:
		want, err := identity.ParseSPIFFE(id)
		if err != nil {
			t.Fatal(err)
		}
		ist.waitLog(t, updateTimeout, prefix+fmt.Sprintf("no instances of %q found on node %q", want.Namespace+"/"+want.ServiceAccount, caller.Spec.NodeName))
	case untrustedCaller:
		ist.waitLog(t, updateTimeout, prefix+"caller", "ServiceAccount: "+caller.Spec.ServiceAccountName, "is not allowed to impersonate")
	default:
		t.Fatalf("refusal %d", why)
	}
}

// istiodBinary is $AMBIT_ISTIOD_BIN, or what hack/istiod-bin.sh builds (or
// has cached). A missing binary fails the test.
func istiodBinary(t *testing.T) string {
	t.Helper()
	bin := os.Getenv("AMBIT_ISTIOD_BIN")
	if bin == "" {
		script := filepath.Join(repoRoot(t), "hack", "istiod-bin.sh")
		t.Logf("AMBIT_ISTIOD_BIN unset: running %s (a cold build takes about 5 minutes)", script)
		cmd := exec.Command("bash", script)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%s: %v\n%s", script, err, stderr.String())
		}
		bin = strings.TrimSpace(string(out))
	}
	if fi, err := os.Stat(bin); err != nil || fi.Mode()&0o111 == 0 {
		t.Fatalf("istiod binary %q: missing or not executable (%v); build it with make istiod-bin", bin, err)
	}
	return bin
}
