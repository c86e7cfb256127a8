package interop

// The ztunnel scenario: Ambit's ztunnel served by a control plane running
// against a real API server with Istio's authentication. It is written
// once (runScenario) and runs against each control plane under test:
// Istio's own istiod (TestZtunnelAgainstIstiod, istiod_test.go), the
// reference, and Ambit's (TestZtunnelAgainstAmbitControlPlane,
// ambitcp_test.go).
//
// What runs for real, all on loopback:
//   - etcd and kube-apiserver (internal/kubetest, built from the Go module
//     proxy), with Istio's and Gateway API's CRDs from the module cache. There
//     is no kubelet, scheduler or controller manager: pods are API objects
//     with nodeName set and their status (phase, podIP, Ready) written
//     through the status subresource, as a kubelet would.
//   - the control plane under test, out of cluster with an admin
//     kubeconfig, serving xDS and its CA on one TLS port (istiod's 15012),
//     its root published in the istio-ca-root-cert ConfigMap, tokens
//     reviewed with TokenReview and istio-system/ztunnel as the one trusted
//     node account (CA_TRUSTED_NODE_ACCOUNTS, as Istio's Helm chart sets).
//   - Ambit's ztunnel: the ambit-ztunnel binary, built from ./cmd/ambit-ztunnel
//     by the test, in the host network namespace, speaking to the control
//     plane's port (TLS, verified against the root from the
//     istio-ca-root-cert ConfigMap for istiod.istio-system.svc) with a
//     pod-bound projected token of istio-system/ztunnel (audience istio-ca).
//   - the node agent's side of ZDS (zds.Server, nodeagent.Agent): pods are
//     network namespaces the test creates (client and server on one LAN
//     with their pod IPs, the others with their IP on lo); the agent
//     installs the capture rules in them and hands them to ztunnel, which
//     runs its listeners there and fetches each pod's certificate from
//     the control plane by impersonation. The "application" in the server
//     pod is a listener of the test inside its netns; the client's is a
//     dial of the test from the client's netns (captured like any pod's
//     traffic).
//
// Not real: no kubelet, so no containers, and ztunnel itself runs in the
// host netns rather than in a pod of its own (its pod exists only as an API
// object, for its token and node id).
//
// What it asserts: ztunnel receives the control plane's workloads, service
// and L4 AuthorizationPolicy (its admin /config_dump), and the control
// plane's own view of the connection is Istio's node id; traffic from
// client to the service VIP flows over HBONE with the certificates the
// control plane issued, and is refused once its policy no longer allows
// it; a pod added, a pod deleted and a policy changed or deleted in the
// API server reach ztunnel within a bound; the certificate for
// spiffe://cluster.local/ns/demo/sa/client chains to the published root
// and is what the pod's HBONE port serves; the control plane refuses what
// it must (a workload with no pod on ztunnel's node, a caller whose
// service account is not a trusted node account), saying so in its log;
// and when it restarts, ztunnel keeps serving, reconnects and catches up
// on what changed meanwhile (additions and removals).

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"google.golang.org/protobuf/encoding/protojson"
	"istio.io/istio/pkg/workloadapi/security"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/util/retry"

	"github.com/ambit-mesh/ambit/internal/kubetest"
	"github.com/ambit-mesh/ambit/nodeagent"
	"github.com/ambit-mesh/ambit/nsnet"
	"github.com/ambit-mesh/ambit/nsnet/nstest"
	"github.com/ambit-mesh/ambit/redirect"
	"github.com/ambit-mesh/ambit/zds"
	"github.com/ambit-mesh/ambit/ztunnel"
)

// Bounds of the waits.
const (
	readyTimeout     = 90 * time.Second // the control plane's readiness
	configTimeout    = 30 * time.Second // first WDS view, first certificate
	updateTimeout    = 15 * time.Second // a change in the API server reaching ztunnel
	reconnectTimeout = 45 * time.Second // ztunnel's reconnect backoff grows to 15 s
)

var authzGVR = schema.GroupVersionResource{Group: "security.istio.io", Version: "v1", Resource: "authorizationpolicies"}

// The resource types ztunnel watches.
const (
	addressType       = "type.googleapis.com/istio.workload.Address"
	authorizationType = "type.googleapis.com/istio.security.Authorization"
)

// controlPlane is the control plane under test, started against the
// scenario's API server: xDS and the CA on one TLS port, its root in the
// istio-ca-root-cert ConfigMaps, restartable on the same port with the
// same root.
type controlPlane interface {
	// name names it in messages ("istiod").
	name() string
	// xdsAddr is host:port of its xDS and CA port (istiod's 15012).
	xdsAddr() string
	// rootPEM waits for the root in ConfigMap istio-system/istio-ca-root-cert
	// and checks that it is its CA's.
	rootPEM(t *testing.T) []byte
	// checkProxy checks the control plane's own view of the xDS connection
	// of the ztunnel running as pod: Istio's node id, and the resource
	// types it watches (or was sent).
	checkProxy(t *testing.T, pod *corev1.Pod)
	// refusedState is what ztunnel's config dump says (substrings of the
	// certificate's state) of the certificate for id that the control
	// plane refused to the ztunnel running as caller, for why.
	refusedState(why refusal, caller *corev1.Pod, id string) []string
	// waitRefusalLog waits until the control plane's log says it refused
	// the certificate for id to the ztunnel running as caller, for why.
	waitRefusalLog(t *testing.T, why refusal, caller *corev1.Pod, id string)
	// stop stops it (SIGTERM) and waits for the exit.
	stop()
	// start starts it again, on the same ports with the same root, and
	// waits until it is ready.
	start(t *testing.T)
}

// refusal is why a control plane refuses a ztunnel a certificate.
type refusal int

const (
	// notOnNode: the identity has no pod on the caller's node.
	notOnNode refusal = iota
	// untrustedCaller: the caller's service account is not a trusted node
	// account, so it may not impersonate at all.
	untrustedCaller
)

// runScenario runs the scenario against the control plane startCP starts
// on the cluster of k (k.s.Kubeconfig is an admin's) once the cluster's
// first objects exist, and waits to be ready.
func runScenario(t *testing.T, startCP func(t *testing.T, k *kube) controlPlane) {
	ztBin := buildBinary(t, "ambit-ztunnel", "./cmd/ambit-ztunnel")

	s := kubetest.Start(t, kubetest.Options{})
	s.InstallCRDs(t, kubetest.MeshCRDs()...)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	k := &kube{t: t, s: s, ctx: ctx}

	// The cluster: two nodes, ztunnel's pod (and an intruder's) on node1,
	// an ambient namespace with a client and a server on node1 and a pod
	// on node2, a Service for the server and an L4 policy.
	k.node("node1")
	k.node("node2")
	ztPod := k.pod("istio-system", "ztunnel-node1", "ztunnel", "node1", "10.244.1.2", nil, nil)
	intruderPod := k.pod("istio-system", "intruder-node1", "intruder", "node1", "10.244.1.3", nil, nil)
	k.namespace("demo", map[string]string{"istio.io/dataplane-mode": "ambient"})
	enrolled := map[string]string{"ambient.istio.io/redirection": "enabled"}
	client := k.pod("demo", "client", "client", "node1", "10.244.1.10", map[string]string{"app": "client"}, enrolled)
	server := k.pod("demo", "server", "server", "node1", "10.244.1.11", map[string]string{"app": "server"}, enrolled)
	remote := k.pod("demo", "remote", "remote", "node2", "10.244.2.10", map[string]string{"app": "remote"}, enrolled)
	svc, err := s.Client.CoreV1().Services("demo").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "server", Namespace: "demo"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "server"},
			Ports: []corev1.ServicePort{{Name: "tcp", Port: 80, TargetPort: intstr.FromInt32(8080)}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(s.Config)
	if err != nil {
		t.Fatal(err)
	}
	policies := dyn.Resource(authzGVR).Namespace("demo")
	if _, err := policies.Create(ctx, allowPolicy("allow-client", []string{"cluster.local/ns/demo/sa/client"}, "8080"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	// The control plane, out of cluster.
	cp := startCP(t, k)
	rootPEM := cp.rootPEM(t)
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(rootPEM) {
		t.Fatal("istio-ca-root-cert holds no certificate")
	}
	dir := t.TempDir()
	rootFile := writeFile(t, dir, "root-cert.pem", rootPEM)

	// The pods' network: client and server on one LAN (node1's pod
	// network), each with a default route as a pod has; the server runs
	// an application on 8080.
	clientNS, serverNS := nstest.Netns(t), nstest.Netns(t)
	nstest.LAN(t, map[string]string{clientNS: "10.244.1.10/24", serverNS: "10.244.1.11/24"})
	nstest.DefaultRoute(t, clientNS)
	nstest.DefaultRoute(t, serverNS)
	whoami(t, serverNS, ":8080")

	// Our ztunnel, with ztunnel's pod-bound token, and a node agent
	// handing it demo/client and demo/server (on its node) and demo/remote
	// (not on it).
	zt := startZtunnel(t, ztBin, k, ztPod, "ztunnel", cp.xdsAddr(), rootFile)
	enroll(t, ctx, zt.zds, client, clientNS)
	enroll(t, ctx, zt.zds, server, serverNS)
	enroll(t, ctx, zt.zds, remote, loNetns(t, remote.Status.PodIP))
	vip := net.JoinHostPort(svc.Spec.ClusterIP, "80")

	clientID := "spiffe://cluster.local/ns/demo/sa/client"
	t.Run("workloads, service and policy from the control plane", func(t *testing.T) {
		d := zt.waitDump(t, configTimeout, "demo's workloads, the service and the policy", func(d ztunnel.ConfigDump) string {
			for _, w := range []struct{ uid, ip, proto string }{
				{"Kubernetes//Pod/demo/client", "10.244.1.10", "HBONE"},
				{"Kubernetes//Pod/demo/server", "10.244.1.11", "HBONE"},
				{"Kubernetes//Pod/demo/remote", "10.244.2.10", "HBONE"},
				{"Kubernetes//Pod/istio-system/ztunnel-node1", "10.244.1.2", "NONE"},
			} {
				wd, ok := workload(d, w.uid)
				if !ok {
					return "no workload " + w.uid
				}
				if !slices.Contains(wd.Addresses, w.ip) || wd.TunnelProtocol != w.proto {
					return fmt.Sprintf("workload %s: addresses %v protocol %s, want %s %s", w.uid, wd.Addresses, wd.TunnelProtocol, w.ip, w.proto)
				}
			}
			sd, ok := service(d, "demo", "server.demo.svc.cluster.local")
			if !ok {
				return "no service demo/server.demo.svc.cluster.local"
			}
			if !slices.Contains(sd.VIPs, svc.Spec.ClusterIP) || !slices.Contains(sd.Ports, `{"port":80,"targetPort":8080}`) {
				return fmt.Sprintf("service: VIPs %v ports %v, want %s and 80->8080", sd.VIPs, sd.Ports, svc.Spec.ClusterIP)
			}
			p, ok := policy(t, d, "demo", "allow-client")
			if !ok {
				return "no policy demo/allow-client"
			}
			if principals, ports := policyFacts(p); !slices.Equal(principals, []string{"cluster.local/ns/demo/sa/client"}) || !slices.Equal(ports, []uint32{8080}) ||
				p.GetScope() != security.Scope_WORKLOAD_SELECTOR || p.GetAction() != security.Action_ALLOW {
				return fmt.Sprintf("policy: %v", p)
			}
			server, _ := workload(d, "Kubernetes//Pod/demo/server")
			if !slices.Contains(server.Policies, "demo/allow-client") {
				return fmt.Sprintf("server's policies %v, want demo/allow-client", server.Policies)
			}
			return ""
		})
		// And the control plane sees our ztunnel as Istio's.
		cp.checkProxy(t, ztPod)
		if w, _ := workload(d, "Kubernetes//Pod/demo/server"); !slices.Contains(w.Services, "demo/server.demo.svc.cluster.local") {
			t.Errorf("server's services %v, want demo/server.demo.svc.cluster.local", w.Services)
		}
		if w, _ := workload(d, "Kubernetes//Pod/demo/client"); w.Identity != clientID || w.Node != "node1" {
			t.Errorf("client: identity %s node %s", w.Identity, w.Node)
		}
	})

	t.Run("traffic through the service VIP under the control plane's policy", func(t *testing.T) {
		zt.waitDump(t, configTimeout, "the pods' certificates", func(d ztunnel.ConfigDump) string {
			for _, id := range []string{clientID, "spiffe://cluster.local/ns/demo/sa/server"} {
				if c, ok := cert(d, id); !ok || c.State != "Available" {
					return fmt.Sprintf("%s: %+v", id, c)
				}
			}
			return ""
		})
		got, err := ask(clientNS, vip)
		if err != nil || !strings.HasPrefix(got, "you are 10.244.1.10:") {
			t.Fatalf("client -> %s: %q (%v), want the server to see the client's IP", vip, got, err)
		}
		zt.waitLog(t, updateTimeout, `msg="connection complete"`, "direction=inbound", "src.identity="+clientID, "dst.workload=server")
	})

	t.Run("updates arrive live", func(t *testing.T) {
		start := time.Now()
		k.pod("demo", "client2", "client", "node1", "10.244.1.12", map[string]string{"app": "client"}, enrolled)
		zt.waitDump(t, updateTimeout, "the added pod", func(d ztunnel.ConfigDump) string {
			if w, ok := workload(d, "Kubernetes//Pod/demo/client2"); !ok || !slices.Contains(w.Addresses, "10.244.1.12") {
				return "no workload demo/client2 at 10.244.1.12"
			}
			return ""
		})
		t.Logf("added pod reached ztunnel in %s", time.Since(start).Round(time.Millisecond))

		start = time.Now()
		// The control plane may write the policy's status meanwhile (both
		// do): on a conflict, read it again.
		if err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
			u, err := policies.Get(ctx, "allow-client", metav1.GetOptions{})
			if err != nil {
				return err
			}
			u.Object["spec"] = allowPolicy("", []string{"cluster.local/ns/demo/sa/client", "cluster.local/ns/demo/sa/other"}, "9090").Object["spec"]
			_, err = policies.Update(ctx, u, metav1.UpdateOptions{})
			return err
		}); err != nil {
			t.Fatal(err)
		}
		zt.waitDump(t, updateTimeout, "the changed policy", func(d ztunnel.ConfigDump) string {
			p, ok := policy(t, d, "demo", "allow-client")
			if !ok {
				return "no policy demo/allow-client"
			}
			principals, ports := policyFacts(p)
			if !slices.Equal(principals, []string{"cluster.local/ns/demo/sa/client", "cluster.local/ns/demo/sa/other"}) || !slices.Equal(ports, []uint32{9090}) {
				return fmt.Sprintf("policy principals %v ports %v", principals, ports)
			}
			return ""
		})
		t.Logf("changed policy reached ztunnel in %s", time.Since(start).Round(time.Millisecond))
		// Now only port 9090 is allowed: the server's ztunnel refuses the
		// client on 8080.
		if got, err := ask(clientNS, vip); err == nil {
			t.Fatalf("client -> %s under a policy allowing only port 9090: %q, want refused", vip, got)
		}
		zt.waitLog(t, updateTimeout, "direction=inbound", "src.identity="+clientID, "allow policies exist, but none allowed")

		start = time.Now()
		if err := s.Client.CoreV1().Pods("demo").Delete(ctx, "client2", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
			t.Fatal(err)
		}
		if err := policies.Delete(ctx, "allow-client", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		zt.waitDump(t, updateTimeout, "the deleted pod and policy gone", func(d ztunnel.ConfigDump) string {
			if _, ok := workload(d, "Kubernetes//Pod/demo/client2"); ok {
				return "workload demo/client2 still there"
			}
			if _, ok := policy(t, d, "demo", "allow-client"); ok {
				return "policy demo/allow-client still there"
			}
			if w, _ := workload(d, "Kubernetes//Pod/demo/server"); slices.Contains(w.Policies, "demo/allow-client") {
				return "server still references demo/allow-client"
			}
			return ""
		})
		t.Logf("deletions reached ztunnel in %s", time.Since(start).Round(time.Millisecond))
		if got, err := ask(clientNS, vip); err != nil || !strings.HasPrefix(got, "you are 10.244.1.10:") {
			t.Fatalf("client -> %s without any policy: %q (%v)", vip, got, err)
		}
	})

	t.Run("certificate by impersonation", func(t *testing.T) {
		d := zt.waitDump(t, configTimeout, "demo/client's certificate", func(d ztunnel.ConfigDump) string {
			c, ok := cert(d, clientID)
			if !ok {
				return "no certificate entry for " + clientID
			}
			if c.State != "Available" {
				return "state: " + c.State
			}
			return ""
		})
		c, _ := cert(d, clientID)
		// What the pod's HBONE port presents, inside the pod's netns.
		chain := hboneChain(t, clientNS)
		leaf := chain[0]
		inter := x509.NewCertPool()
		for _, c := range chain[1:] {
			inter.AddCert(c)
		}
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
			t.Fatalf("the pod's certificate does not chain to %s's root: %v", cp.name(), err)
		}
		if len(leaf.URIs) != 1 || leaf.URIs[0].String() != clientID {
			t.Fatalf("the pod's certificate is for %v, want %s", leaf.URIs, clientID)
		}
		if leaf.SerialNumber.Text(16) != c.Serial {
			t.Errorf("served serial %s, config dump says %s", leaf.SerialNumber.Text(16), c.Serial)
		}
		t.Logf("%s: serial %s, %s .. %s, issuer %q", clientID, c.Serial, leaf.NotBefore.Format(time.RFC3339), leaf.NotAfter.Format(time.RFC3339), leaf.Issuer)
	})

	// refused waits until ztunnel's certificate for id is refused as the
	// control plane refuses it for why.
	refused := func(t *testing.T, z *ztunnelProc, why refusal, caller *corev1.Pod, id string) {
		t.Helper()
		want := cp.refusedState(why, caller, id)
		z.waitDump(t, configTimeout, id+"'s certificate refused", func(d ztunnel.ConfigDump) string {
			if _, ok := workload(d, "Kubernetes//Pod/demo/client"); !ok {
				return "no WDS (the control plane serves xDS to any valid token)"
			}
			c, ok := cert(d, id)
			if !ok {
				return "no certificate entry for " + id
			}
			if c.State == "Available" {
				return fmt.Sprintf("%s issued %s to %s/%s", cp.name(), id, caller.Namespace, caller.Name)
			}
			if i := slices.IndexFunc(want, func(s string) bool { return !strings.Contains(c.State, s) }); i >= 0 {
				return fmt.Sprintf("state %q, want it to say %q", c.State, want[i])
			}
			return ""
		})
		cp.waitRefusalLog(t, why, caller, id)
	}

	t.Run("no certificate for a workload not on ztunnel's node", func(t *testing.T) {
		refused(t, zt, notOnNode, ztPod, "spiffe://cluster.local/ns/demo/sa/remote")
	})

	t.Run("no impersonation for an untrusted service account", func(t *testing.T) {
		// Another ztunnel, as it would run with the token of a pod whose
		// service account the control plane does not trust, handed
		// demo/client.
		bad := startZtunnel(t, ztBin, k, intruderPod, "intruder", cp.xdsAddr(), rootFile)
		enroll(t, ctx, bad.zds, client, loNetns(t, client.Status.PodIP))
		refused(t, bad, untrustedCaller, intruderPod, clientID)
		bad.stop()
	})

	t.Run("the control plane restarts: ztunnel keeps serving, reconnects and catches up", func(t *testing.T) {
		cp.stop()
		// Without its control plane, ztunnel keeps what it has.
		if got, err := ask(clientNS, vip); err != nil || !strings.HasPrefix(got, "you are 10.244.1.10:") {
			t.Fatalf("client -> %s with %s down: %q (%v)", vip, cp.name(), got, err)
		}
		// Changes made meanwhile: a pod added, one deleted, a policy added.
		k.pod("demo", "late", "client", "node1", "10.244.1.13", map[string]string{"app": "client"}, enrolled)
		if err := s.Client.CoreV1().Pods("demo").Delete(ctx, "remote", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
			t.Fatal(err)
		}
		if _, err := policies.Create(ctx, allowPolicy("allow-late", []string{"cluster.local/ns/demo/sa/late"}, "8080"), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		cp.start(t)
		zt.waitDump(t, reconnectTimeout, "the changes made while the control plane was down", func(d ztunnel.ConfigDump) string {
			if _, ok := workload(d, "Kubernetes//Pod/demo/late"); !ok {
				return "no workload demo/late"
			}
			if _, ok := workload(d, "Kubernetes//Pod/demo/remote"); ok {
				return "workload demo/remote still there"
			}
			if _, ok := policy(t, d, "demo", "allow-late"); !ok {
				return "no policy demo/allow-late"
			}
			return ""
		})
		t.Logf("ztunnel caught up %s after %s was started again", time.Since(start).Round(time.Millisecond), cp.name())
		// The policy is enforced: only demo/late may reach the server now.
		if got, err := ask(clientNS, vip); err == nil {
			t.Fatalf("client -> %s under a policy allowing only demo/late: %q, want refused", vip, got)
		}
	})
}

// waitReady polls url until it answers 200, failing if p exits or after
// readyTimeout; it returns how long it took.
func waitReady(t *testing.T, p *proc, url string) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := start.Add(readyTimeout)
	hc := &http.Client{Timeout: 2 * time.Second}
	for {
		if p.exited() {
			t.Fatalf("%s exited; log:\n%s", p.name, p.tail(60))
		}
		resp, err := hc.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return time.Since(start)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not ready after %s; log:\n%s", p.name, readyTimeout, p.tail(60))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// getJSON decodes what GET url answers into v.
func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	hc := &http.Client{Timeout: 5 * time.Second}
	resp, err := hc.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s %v: %s", url, resp.Status, err, b)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("GET %s: %v: %s", url, err, b)
	}
}

// configMapRoot waits for the root in ConfigMap
// istio-system/istio-ca-root-cert and checks that it holds caCert (the
// CA's own certificate, PEM).
func (k *kube) configMapRoot(cp *proc, caCert func() []byte) []byte {
	k.t.Helper()
	deadline := time.Now().Add(configTimeout)
	for {
		cm, err := k.s.Client.CoreV1().ConfigMaps("istio-system").Get(k.ctx, "istio-ca-root-cert", metav1.GetOptions{})
		if err == nil && cm.Data["root-cert.pem"] != "" {
			root := []byte(cm.Data["root-cert.pem"])
			if want := bytes.TrimSpace(caCert()); len(want) == 0 || !bytes.Contains(root, want) {
				k.t.Fatalf("istio-ca-root-cert does not hold %s's CA certificate:\n%s\nwant:\n%s", cp.name, root, want)
			}
			return root
		}
		if time.Now().After(deadline) {
			k.t.Fatalf("no istio-ca-root-cert in istio-system after %s (%v); %s log:\n%s", configTimeout, err, cp.name, cp.tail(40))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// istioNodeID is the xDS node id Istio's ztunnel sends for its pod.
func istioNodeID(pod *corev1.Pod) string {
	return fmt.Sprintf("ztunnel~%s~%s.%s~%s.svc.cluster.local", pod.Status.PodIP, pod.Name, pod.Namespace, pod.Namespace)
}

// buildBinary builds the main module's package pkg, as make build does.
func buildBinary(t *testing.T, name, pkg string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), name)
	cmd := exec.Command("go", "build", "-trimpath", "-o", out, pkg)
	cmd.Dir = repoRoot(t)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building %s: %v\n%s", pkg, err, b)
	}
	return out
}

// kube creates the cluster's objects.
type kube struct {
	t   *testing.T
	s   *kubetest.Server
	ctx context.Context
}

func (k *kube) node(name string) {
	k.t.Helper()
	if _, err := k.s.Client.CoreV1().Nodes().Create(k.ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		k.t.Fatal(err)
	}
}

func (k *kube) namespace(name string, labels map[string]string) {
	k.t.Helper()
	if _, err := k.s.Client.CoreV1().Namespaces().Create(k.ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}, metav1.CreateOptions{}); err != nil {
		k.t.Fatal(err)
	}
}

// pod creates a pod on node with its service account (and namespace, if
// missing) and writes the status a kubelet would: Running, Ready, podIP.
func (k *kube) pod(ns, name, sa, node, ip string, labels, annotations map[string]string) *corev1.Pod {
	k.t.Helper()
	if err := k.s.EnsureServiceAccount(k.ctx, ns, sa); err != nil {
		k.t.Fatal(err)
	}
	pods := k.s.Client.CoreV1().Pods(ns)
	p, err := pods.Create(k.ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels, Annotations: annotations},
		Spec: corev1.PodSpec{ServiceAccountName: sa, NodeName: node,
			Containers: []corev1.Container{{Name: "app", Image: "example.invalid/" + name}}},
	}, metav1.CreateOptions{})
	if err != nil {
		k.t.Fatal(err)
	}
	now := metav1.Now()
	p.Status = corev1.PodStatus{Phase: corev1.PodRunning, HostIP: "192.168.0.1", PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}, StartTime: &now,
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.ContainersReady, Status: corev1.ConditionTrue, LastTransitionTime: now}}}
	if p, err = pods.UpdateStatus(k.ctx, p, metav1.UpdateOptions{}); err != nil {
		k.t.Fatal(err)
	}
	return p
}

func allowPolicy(name string, principals []string, port string) *unstructured.Unstructured {
	ps := make([]any, len(principals))
	for i, p := range principals {
		ps[i] = p
	}
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
		"metadata": map[string]any{"name": name, "namespace": "demo"},
		"spec": map[string]any{
			"selector": map[string]any{"matchLabels": map[string]any{"app": "server"}},
			"action":   "ALLOW",
			"rules": []any{map[string]any{
				"from": []any{map[string]any{"source": map[string]any{"principals": ps}}},
				"to":   []any{map[string]any{"operation": map[string]any{"ports": []any{port}}}},
			}},
		},
	}}
}

func repoRoot(t *testing.T) string {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("cannot locate the source tree")
	}
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
}

func writeFile(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// proc is a process the test started; stop (and the test's Cleanup) ends
// it by PID.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	once sync.Once
}

// start runs bin in dir with env and args, output to a log file; the test's
// Cleanup stops it and prints the log's tail if the test failed (and copies
// the log to $AMBIT_INTEROP_LOG_DIR if set). Pdeathsig kills it if the test
// binary dies.
func start(t *testing.T, name, bin, dir string, env, args []string) *proc {
	t.Helper()
	logPath := filepath.Join(dir, name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command(bin, args...)
	cmd.Dir, cmd.Env, cmd.Stdout, cmd.Stderr = dir, env, f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	p := &proc{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("%s log (tail):\n%s", name, p.tail(60))
		}
		if d := os.Getenv("AMBIT_INTEROP_LOG_DIR"); d != "" {
			if b, err := os.ReadFile(logPath); err == nil {
				_ = os.WriteFile(filepath.Join(d, name+".log"), b, 0o644)
			}
		}
	})
	return p
}

// stop sends SIGTERM, then SIGKILL after 5 s, and waits for the exit.
func (p *proc) stop() {
	p.once.Do(func() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *proc) tail(n int) string {
	b, _ := os.ReadFile(p.log)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// waitLog waits until a line of the process's log holds every one of
// parts.
func (p *proc) waitLog(t *testing.T, timeout time.Duration, parts ...string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		b, _ := os.ReadFile(p.log)
		for line := range strings.SplitSeq(string(b), "\n") {
			if !slices.ContainsFunc(parts, func(s string) bool { return !strings.Contains(line, s) }) {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not log a line with %q within %s", p.name, parts, timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// baseEnv is the environment of the processes started: PATH and HOME only,
// so that nothing of the caller's (KUBECONFIG, XDS_ADDRESS, ...) leaks in.
func baseEnv() []string {
	return []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}
}

type ztunnelProc struct {
	*proc
	admin string
	zds   *zds.Server
}

// startZtunnel runs our ztunnel as the pod pod of service account sa
// would: its projected token (pod-bound, audience istio-ca), Istio's node
// id and metadata from the pod's name, namespace and IP, the control
// plane's root, and a ZDS socket served by a node agent of the test.
func startZtunnel(t *testing.T, bin string, k *kube, pod *corev1.Pod, sa, xds, rootFile string) *ztunnelProc {
	t.Helper()
	dir := t.TempDir()
	tok, err := k.s.Token(k.ctx, pod.Namespace, sa, []string{"istio-ca"}, time.Hour, pod.Name)
	if err != nil {
		t.Fatal(err)
	}
	tokenFile := writeFile(t, dir, "istio-token", []byte(tok))
	sock := filepath.Join(dir, "ztunnel.sock")
	srv, err := zds.NewServer(sock, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	zctx, zcancel := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() { _ = srv.Run(zctx); close(ran) }()
	t.Cleanup(func() { zcancel(); srv.Close(); <-ran })

	z := &ztunnelProc{admin: "127.0.0.1:" + freePort(t), zds: srv}
	z.proc = start(t, "ztunnel-"+pod.Name, bin, dir, baseEnv(), []string{
		"--node=" + pod.Spec.NodeName,
		"--xds-address=" + xds, "--ca-address=" + xds,
		"--token-file=" + tokenFile,
		"--cluster-id=Kubernetes",
		"--control-plane-san=istiod.istio-system.svc",
		"--root-cert=" + rootFile,
		"--pod-name=" + pod.Name, "--pod-namespace=" + pod.Namespace, "--pod-ip=" + pod.Status.PodIP,
		"--service-account=" + sa,
		"--zds-socket=" + sock,
		"--admin=" + z.admin, "--readiness=127.0.0.1:" + freePort(t), "--metrics=127.0.0.1:" + freePort(t),
		"--handoff-timeout=0s", "--drain-timeout=1s",
	})
	// Ready: synced with the control plane and connected to the node agent.
	deadline := time.Now().Add(configTimeout)
	hc := &http.Client{Timeout: 2 * time.Second}
	for {
		if z.exited() {
			t.Fatalf("ztunnel exited; log:\n%s", z.tail(60))
		}
		resp, err := hc.Get("http://" + z.admin + "/healthz/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return z
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("ztunnel not ready after %s; log:\n%s", configTimeout, z.tail(60))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (z *ztunnelProc) dump() (ztunnel.ConfigDump, error) {
	var d ztunnel.ConfigDump
	hc := &http.Client{Timeout: 10 * time.Second}
	resp, err := hc.Get("http://" + z.admin + "/config_dump")
	if err != nil {
		return d, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return d, err
	}
	if resp.StatusCode != http.StatusOK {
		return d, fmt.Errorf("config_dump: %s: %s", resp.Status, b)
	}
	return d, json.Unmarshal(b, &d)
}

// waitDump polls the config dump until check returns "" (else what is
// missing), failing after timeout.
func (z *ztunnelProc) waitDump(t *testing.T, timeout time.Duration, what string, check func(ztunnel.ConfigDump) string) ztunnel.ConfigDump {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		d, err := z.dump()
		msg := ""
		if err == nil {
			if msg = check(d); msg == "" {
				return d
			}
		} else {
			msg = err.Error()
		}
		if z.exited() {
			t.Fatalf("ztunnel exited waiting for %s", what)
		}
		if time.Now().After(deadline) {
			t.Fatalf("ztunnel: no %s within %s: %s", what, timeout, msg)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func workload(d ztunnel.ConfigDump, uid string) (ztunnel.WorkloadDump, bool) {
	for _, w := range d.Workloads {
		if w.UID == uid {
			return w, true
		}
	}
	return ztunnel.WorkloadDump{}, false
}

func service(d ztunnel.ConfigDump, ns, host string) (ztunnel.ServiceDump, bool) {
	for _, s := range d.Services {
		if s.Namespace == ns && s.Hostname == host {
			return s, true
		}
	}
	return ztunnel.ServiceDump{}, false
}

func cert(d ztunnel.ConfigDump, id string) (ztunnel.CertDump, bool) {
	for _, c := range d.Certificates {
		if c.Identity == id {
			return c, true
		}
	}
	return ztunnel.CertDump{}, false
}

func policy(t *testing.T, d ztunnel.ConfigDump, ns, name string) (*security.Authorization, bool) {
	t.Helper()
	for _, raw := range d.Policies {
		var a security.Authorization
		if err := protojson.Unmarshal(raw, &a); err != nil {
			t.Fatalf("policy in the config dump: %v: %s", err, raw)
		}
		if a.GetNamespace() == ns && a.GetName() == name {
			return &a, true
		}
	}
	return nil, false
}

// policyFacts lists the exact principals and destination ports anywhere in
// the policy.
func policyFacts(a *security.Authorization) (principals []string, ports []uint32) {
	for _, g := range a.GetGroups() {
		for _, r := range g.GetRules() {
			for _, m := range r.GetMatches() {
				for _, p := range m.GetPrincipals() {
					principals = append(principals, p.GetExact())
				}
				ports = append(ports, m.GetDestinationPorts()...)
			}
		}
	}
	slices.Sort(principals)
	slices.Sort(ports)
	return principals, ports
}

// loNetns is a pod network namespace with no network but its IP (on lo).
func loNetns(t *testing.T, podIP string) string {
	t.Helper()
	path := nstest.Netns(t)
	h := nstest.Handle(t, path)
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	ip := netip.MustParseAddr(podIP)
	if err := h.AddrAdd(lo, &netlink.Addr{IPNet: &net.IPNet{IP: ip.AsSlice(), Mask: net.CIDRMask(32, 32)}}); err != nil {
		t.Fatal(err)
	}
	return path
}

// enroll has the node agent capture the pod (its network namespace at
// path) and hand it to ztunnel over ZDS.
func enroll(t *testing.T, ctx context.Context, srv *zds.Server, pod *corev1.Pod, path string) {
	t.Helper()
	agent := &nodeagent.Agent{Node: pod.Spec.NodeName, ZDS: srv}
	p := nodeagent.Pod{UID: string(pod.UID), Namespace: pod.Namespace, Name: pod.Name, ServiceAccount: pod.Spec.ServiceAccountName,
		Netns: path, Annotations: pod.Annotations}
	ectx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	state, err := agent.Enroll(ectx, p)
	if err != nil {
		t.Fatal(err)
	}
	if state != nodeagent.Enabled {
		t.Fatalf("enrolling %s/%s: %s, want %s", pod.Namespace, pod.Name, state, nodeagent.Enabled)
	}
	t.Cleanup(func() {
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = agent.Unenroll(cctx, p)
	})
}

// whoami serves, in the network namespace ns, a greeting with the caller's
// address.
func whoami(t *testing.T, ns, addr string) {
	t.Helper()
	l, err := nsnet.Listen(context.Background(), ns, addr, nsnet.SocketOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				fmt.Fprintf(c, "you are %s\n", c.RemoteAddr())
			}()
		}
	}()
}

// ask connects from the network namespace ns to addr, as the pod's
// application would (captured by ztunnel), and returns the greeting.
func ask(ns, addr string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := nsnet.DialFunc(ns, nsnet.SocketOptions{}, nil)(ctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(line), nil
}

// hboneChain connects to the pod's HBONE port inside its network namespace
// (as ztunnel's own sockets do, with its mark, so the capture leaves the
// connection alone) and returns the chain the server presents.
func hboneChain(t *testing.T, netnsPath string) []*x509.Certificate {
	t.Helper()
	dial := nsnet.DialFunc(netnsPath, nsnet.SocketOptions{Mark: redirect.ZtunnelMark}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := dial(ctx, "tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(redirect.HBONEPort)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var chain []*x509.Certificate
	conf := &tls.Config{
		MinVersion: tls.VersionTLS13, NextProtos: []string{"h2"},
		// Only looking: the chain is verified by the caller, and the
		// server refuses this certificate-less client after it has shown
		// its own.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			chain = cs.PeerCertificates
			return nil
		},
	}
	tc := tls.Client(c, conf)
	_ = tc.SetDeadline(time.Now().Add(10 * time.Second))
	herr := tc.HandshakeContext(ctx)
	if len(chain) == 0 {
		t.Fatalf("HBONE port presented no certificate (handshake: %v)", herr)
	}
	return chain
}
