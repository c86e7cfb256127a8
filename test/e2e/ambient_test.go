package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	grpcstatus "google.golang.org/grpc/status"
	securityapi "istio.io/api/security/v1alpha1"

	"github.com/ambit-mesh/ambit/hbone"
	"github.com/ambit-mesh/ambit/identity"
	"github.com/ambit-mesh/ambit/identity/caclient"
	"github.com/ambit-mesh/ambit/identity/identitytest"
	"github.com/ambit-mesh/ambit/nsnet"
	"github.com/ambit-mesh/ambit/redirect"
)

const (
	clientID = "spiffe://cluster.local/ns/demo/sa/client"
	echoID   = "spiffe://cluster.local/ns/demo/sa/echo"
)

// legacy is a namespace outside the mesh with one pod.
const legacy = `apiVersion: v1
kind: Namespace
metadata: {name: legacy}
---
apiVersion: v1
kind: Pod
metadata: {name: outsider, namespace: legacy}
spec:
  nodeName: node1
  containers:
  - name: c
    command: [ambit, sample, tcp-echo, --port, "9000"]
`

// ztunnelLog returns the access-log records of a node's ztunnel.
func ztunnelLog(t *testing.T, stateDir, node string) []map[string]any {
	t.Helper()
	data, _ := os.ReadFile(filepath.Join(stateDir, "ztunnel-"+node+".log"))
	var out []map[string]any
	for _, line := range bytes.Split(data, []byte("\n")) {
		var rec map[string]any
		if json.Unmarshal(line, &rec) == nil && rec["direction"] != nil {
			out = append(out, rec)
		}
	}
	return out
}

// findLog waits for an access-log record with every key=value given.
func findLog(t *testing.T, stateDir, node string, kv map[string]string) map[string]any {
	t.Helper()
	var recs []map[string]any
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		recs = ztunnelLog(t, stateDir, node)
		for _, rec := range recs {
			ok := true
			for k, v := range kv {
				if fmt.Sprint(rec[k]) != v {
					ok = false
				}
			}
			if ok {
				return rec
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("ztunnel on %s logged no connection with %v; last records: %v", node, kv, tail(recs, 3))
	return nil
}

func tail[T any](s []T, n int) []T {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// podNetns is the namespace file of a pod of the running mesh.
func podNetns(t *testing.T, stateDir, ns, name string) string {
	t.Helper()
	for _, p := range readStatus(t, stateDir).Pods {
		if p.Namespace == ns && p.Name == name {
			return p.Netns
		}
	}
	t.Fatalf("pod %s/%s not found", ns, name)
	return ""
}

func TestAmbientMesh(t *testing.T) {
	stateDir := filepath.Join(t.TempDir(), "state")
	cfg := copyDir(t, filepath.Join(repoRoot(), "samples", "demo"))
	if err := os.WriteFile(filepath.Join(cfg, "legacy.yaml"), []byte(legacy), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = ambit(t, 60*time.Second, "local", "down", "--state-dir", stateDir) })
	mustAmbit(t, 90*time.Second, "local", "up", "-f", cfg, "--state-dir", stateDir)
	st := readStatus(t, stateDir)
	clientIP := st.podIP(t, "demo", "client")
	outsiderIP := st.podIP(t, "legacy", "outsider")
	var echoVIP string
	for _, s := range st.Services {
		if s.Name == "echo" {
			echoVIP = s.ClusterIP
		}
	}

	t.Run("client reaches the VIP and both echo pods over mTLS, keeping its IP", func(t *testing.T) {
		for target, wantPods := range map[string]int{echoVIP: 0, st.podIP(t, "demo", "echo-1"): 1, st.podIP(t, "demo", "echo-2"): 1} {
			sum, err := sampleClient(t, stateDir, "demo/client", "http://"+target+":8080/", 4)
			if err != nil || sum.Codes["200"] != 4 {
				t.Fatalf("client -> %s: %+v %v", target, sum, err)
			}
			if sum.Sources[clientIP] != 4 {
				t.Errorf("client -> %s: echo saw %v, want the client's IP %s", target, sum.Sources, clientIP)
			}
			if wantPods == 1 && len(sum.Pods) != 1 {
				t.Errorf("client -> %s: pods %v", target, sum.Pods)
			}
		}
		findLog(t, stateDir, "node1", map[string]string{"direction": "outbound", "route": "hbone", "src.identity": clientID, "dst.identity": echoID})
		findLog(t, stateDir, "node2", map[string]string{"direction": "inbound", "src.identity": clientID, "dst.identity": echoID, "dst.workload": "echo-2"})
		findLog(t, stateDir, "node1", map[string]string{"direction": "outbound", "dst.service": "echo.demo.svc.cluster.local", "src.identity": clientID})
		if out := mustAmbit(t, 20*time.Second, "ztunnel-config", "certificates", "--state-dir", stateDir, "--node", "node1"); !strings.Contains(out, clientID+"  Available") && !strings.Contains(out, clientID) {
			t.Errorf("ztunnel-config certificates:\n%s", out)
		} else if !strings.Contains(out, "Available") {
			t.Errorf("certificates not available:\n%s", out)
		}
		// Local mode's in-process control plane serves the same endpoints
		// as `ambit controlplane --http`.
		if out := mustAmbit(t, 20*time.Second, "local", "controlplane", "/ready", "--state-dir", stateDir); !strings.Contains(out, "ready") {
			t.Errorf("local controlplane /ready: %q", out)
		}
		if out := mustAmbit(t, 20*time.Second, "local", "controlplane", "/debug/proxies", "--state-dir", stateDir); !strings.Contains(out, "ztunnel~node1") || !strings.Contains(out, "ztunnel~node2") || !strings.Contains(out, "Kubernetes//Pod/demo/echo-1") {
			t.Errorf("local controlplane /debug/proxies lacks both ztunnels or echo-1:\n%s", out)
		}
		if out := mustAmbit(t, 20*time.Second, "local", "controlplane", "--state-dir", stateDir); !strings.Contains(out, `"demo/echo-1"`) {
			t.Errorf("local controlplane /debug/store lacks demo/echo-1:\n%.2000s", out)
		}
		out, err := exec.Command("ip", "netns", "exec", "ambit-node1", "curl", "-sS", "-m", "5", "http://127.0.0.1:15020/metrics").CombinedOutput()
		if err != nil {
			t.Fatalf("metrics: %v %s", err, out)
		}
		for _, want := range []string{"istio_tcp_connections_opened_total{", `source_principal="` + clientID + `"`, `destination_service="echo.demo.svc.cluster.local"`, `connection_security_policy="mutual_tls"`} {
			if !strings.Contains(string(out), want) {
				t.Errorf("node1 metrics lack %s", want)
			}
		}
	})

	t.Run("only TLS to 15008 crosses the underlay", func(t *testing.T) {
		marker := "AMBIT-PLAINTEXT-MARKER-7f3a9c"
		capture := filepath.Join(t.TempDir(), "underlay.txt")
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		out, err := os.Create(capture)
		if err != nil {
			t.Fatal(err)
		}
		tcpdump := exec.CommandContext(ctx, "ip", "netns", "exec", "ambit-underlay", "tcpdump", "-i", "br0", "-n", "-l", "-A", "-s", "0", "tcp", "and", "not", "port", "15012")
		tcpdump.Stdout, tcpdump.Stderr = out, out
		if err := tcpdump.Start(); err != nil {
			t.Fatalf("tcpdump: %v", err)
		}
		time.Sleep(time.Second) // let tcpdump attach
		echo2 := st.podIP(t, "demo", "echo-2")
		o, err := ambit(t, 30*time.Second, "local", "exec", "--state-dir", stateDir, "demo/client", "--",
			"curl", "-sS", "-m", "5", "-d", marker, "http://"+echo2+":8080/")
		if err != nil || !strings.Contains(o, "pod=echo-2") {
			t.Fatalf("request across nodes: %v %s", err, o)
		}
		time.Sleep(time.Second)
		cancel()
		tcpdump.Wait()
		data, _ := os.ReadFile(capture)
		if bytes.Contains(data, []byte(marker)) {
			t.Fatalf("the plaintext marker crossed the underlay:\n%s", data)
		}
		var packets, hbone int
		for _, line := range strings.Split(string(data), "\n") {
			if !strings.Contains(line, " IP ") || !strings.Contains(line, " > ") {
				continue
			}
			packets++
			if strings.Contains(line, ".15008 ") || strings.Contains(line, ".15008:") {
				hbone++
			}
		}
		if packets == 0 || hbone != packets {
			t.Fatalf("%d packets on the underlay, %d of them to or from 15008; want all:\n%s", packets, hbone, data)
		}
		t.Logf("%d packets on the underlay, all HBONE (15008), no plaintext marker", packets)
	})

	t.Run("outside the mesh: into the mesh as plaintext, out of it as plain TCP, unknown addresses passed through", func(t *testing.T) {
		sum, err := sampleClient(t, stateDir, "legacy/outsider", "http://"+st.podIP(t, "demo", "echo-2")+":8080/", 3)
		if err != nil || sum.Codes["200"] != 3 || sum.Sources[outsiderIP] != 3 {
			t.Fatalf("outsider -> echo-2: %+v %v", sum, err)
		}
		rec := findLogFunc(t, stateDir, "node2", func(r map[string]any) bool {
			return r["direction"] == "inbound" && r["dst.workload"] == "echo-2" && strings.HasPrefix(fmt.Sprint(r["src.addr"]), outsiderIP+":")
		})
		if rec["src.identity"] != nil {
			t.Errorf("plaintext inbound logged an identity: %v", rec)
		}
		sum, err = sampleClient(t, stateDir, "demo/client", "tcp://"+outsiderIP+":9000", 3)
		if err != nil || sum.Codes["ok"] != 3 {
			t.Fatalf("client -> outsider: %+v %v", sum, err)
		}
		findLog(t, stateDir, "node1", map[string]string{"direction": "outbound", "route": "tcp", "dst.workload": "outsider"})

		// An address the control plane does not know: a server on node2's
		// underlay address.
		l, err := nsnet.Listen(context.Background(), "/run/netns/ambit-node2", "172.30.0.12:9999", nsnet.SocketOptions{})
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				go func() { defer c.Close(); io.Copy(c, c) }()
			}
		}()
		sum, err = sampleClient(t, stateDir, "demo/client", "tcp://172.30.0.12:9999", 2)
		if err != nil || sum.Codes["ok"] != 2 {
			t.Fatalf("client -> unknown address: %+v %v", sum, err)
		}
		findLog(t, stateDir, "node1", map[string]string{"direction": "outbound", "route": "passthrough", "dst.addr": "172.30.0.12:9999"})
	})

	t.Run("server-first protocol and a long-lived connection through the mesh", func(t *testing.T) {
		var bannerVIP string
		for _, s := range readStatus(t, stateDir).Services {
			if s.Name == "banner" {
				bannerVIP = s.ClusterIP
			}
		}
		sum, err := sampleClient(t, stateDir, "demo/client", "banner://"+bannerVIP+":2525", 3)
		if err != nil || sum.Codes["ok"] != 3 || sum.Pods["banner"] != 3 {
			t.Fatalf("banner via VIP: %+v %v", sum, err)
		}
		// One connection, kept open for 3 s, carrying a line every 300 ms.
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		c, err := nsnet.DialFunc(podNetns(t, stateDir, "demo", "client"), nsnet.SocketOptions{}, nil)(ctx, "tcp", bannerVIP+":2525")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(15 * time.Second))
		r := bufio.NewReader(c)
		if greet, err := r.ReadString('\n'); err != nil || !strings.HasPrefix(greet, "220 banner") {
			t.Fatalf("greeting %q %v", greet, err)
		}
		for i := 0; i < 10; i++ {
			fmt.Fprintf(c, "line %d\r\n", i)
			got, err := r.ReadString('\n')
			if err != nil || strings.TrimSpace(got) != fmt.Sprintf("250 line %d", i) {
				t.Fatalf("after %d lines: %q %v", i, got, err)
			}
			time.Sleep(300 * time.Millisecond)
		}
	})

	t.Run("garbage, plaintext and foreign certificates on 15008 are refused", func(t *testing.T) {
		echo2 := st.podIP(t, "demo", "echo-2")
		outsiderNS := podNetns(t, stateDir, "legacy", "outsider")
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		dial := nsnet.DialFunc(outsiderNS, nsnet.SocketOptions{}, nil)
		for _, payload := range []string{"\x16\x03\x01garbage-garbage-garbage", "CONNECT " + echo2 + ":8080 HTTP/1.1\r\nHost: " + echo2 + ":8080\r\n\r\n"} {
			c, err := dial(ctx, "tcp", echo2+":15008")
			if err != nil {
				t.Fatal(err)
			}
			c.SetDeadline(time.Now().Add(5 * time.Second))
			io.WriteString(c, payload)
			got, _ := io.ReadAll(c)
			c.Close()
			if strings.Contains(string(got), "200") || strings.Contains(string(got), "pod=") {
				t.Fatalf("15008 answered %q to %q", got, payload)
			}
		}
		for name, ca := range map[string]*identitytest.CA{"rogue root": identitytest.NewCA(t, "cluster.local"), "other trust domain": identitytest.NewCA(t, "evil.org")} {
			cert := ca.Issue(t, ca.ID("demo", "client"), time.Hour)
			pool := &hbone.Pool{DialTCP: dial, TLSConfig: func(context.Context, hbone.Key) (*tls.Config, error) {
				conf := identity.ClientTLSConfig(func() (*tls.Certificate, error) { return cert, nil }, func() *identity.Bundle { return ca.Bundle() }, nil, nil)
				// Accept any server: we only want to see the server refuse us.
				conf.VerifyPeerCertificate = nil
				conf.VerifyConnection = func(tls.ConnectionState) error { return nil }
				return conf, nil
			}}
			key := hbone.Key{Src: ca.ID("demo", "client"), DstAddr: netip.MustParseAddrPort(echo2 + ":15008")}
			if c, err := pool.Dial(ctx, key, echo2+":8080", http.Header{}); err == nil {
				c.Close()
				t.Errorf("%s: a stream was opened", name)
			}
			pool.Close()
		}
		sum, err := sampleClient(t, stateDir, "demo/client", "http://"+echo2+":8080/", 2)
		if err != nil || sum.Codes["200"] != 2 {
			t.Fatalf("after bad clients: %+v %v", sum, err)
		}
	})

	t.Run("workload discovery only for node proxies", func(t *testing.T) {
		dir := filepath.Join(stateDir, "nodes", "node1")
		nodeCred, err := tls.LoadX509KeyPair(filepath.Join(dir, "cert-chain.pem"), filepath.Join(dir, "key.pem"))
		if err != nil {
			t.Fatal(err)
		}
		rootPEM, _ := os.ReadFile(filepath.Join(dir, "root-cert.pem"))
		roots, err := identity.ParseBundle(rootPEM)
		if err != nil {
			t.Fatal(err)
		}
		dialer := nsnet.DialFunc("/run/netns/ambit-node1", nsnet.SocketOptions{}, nil)
		connect := func(cert *tls.Certificate) *grpc.ClientConn {
			conf := identity.ClientTLSConfig(func() (*tls.Certificate, error) { return cert, nil }, func() *identity.Bundle { return roots },
				[]identity.SPIFFE{identity.ControlPlane("cluster.local")}, nil)
			conn, err := grpc.NewClient("172.30.0.1:15012", grpc.WithTransportCredentials(credentials.NewTLS(conf)),
				grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) { return dialer(ctx, "tcp", addr) }))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { conn.Close() })
			return conn
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		// The node credential may ask for the identity of a pod on its node...
		nodeConn := connect(&nodeCred)
		chain, err := (&caclient.GRPCFetcher{Client: securityapi.NewIstioCertificateServiceClient(nodeConn), Impersonate: true}).Fetch(ctx, identity.SPIFFE{TrustDomain: "cluster.local", Namespace: "demo", ServiceAccount: "client"}, mustCSR(t, &workloadKey))
		if err != nil {
			t.Fatalf("node1 impersonating demo/client: %v", err)
		}
		// ...but not of a pod that is only on another node.
		if _, err := (&caclient.GRPCFetcher{Client: securityapi.NewIstioCertificateServiceClient(nodeConn), Impersonate: true}).Fetch(ctx, identity.SPIFFE{TrustDomain: "cluster.local", Namespace: "demo", ServiceAccount: "default"}, mustCSR(t, nil)); grpcstatus.Code(err) != codes.PermissionDenied {
			t.Fatalf("node1 impersonating the banner pod of node2: %v, want PermissionDenied", err)
		}
		workload := identity.TLSCertificate(chain, workloadKey)
		for name, cert := range map[string]*tls.Certificate{"workload certificate": workload, "no certificate": {}} {
			st, err := discovery.NewAggregatedDiscoveryServiceClient(connect(cert)).DeltaAggregatedResources(ctx)
			if err == nil {
				_ = st.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: "type.googleapis.com/istio.workload.Address"})
				_, err = st.Recv()
			}
			if c := grpcstatus.Code(err); c != codes.PermissionDenied && c != codes.Unauthenticated {
				t.Errorf("%s on workload discovery: %v, want a refusal", name, err)
			}
		}
	})

	t.Run("L4 policy: deny-all, then allow sa/client on 8080; a DENY closes open connections", func(t *testing.T) {
		echo2 := st.podIP(t, "demo", "echo-2")
		write := func(name, doc string) {
			if err := os.WriteFile(filepath.Join(cfg, name), []byte(doc), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		defer func() {
			for _, f := range []string{"policy-deny-all.yaml", "policy-allow.yaml", "policy-deny.yaml"} {
				os.Remove(filepath.Join(cfg, f))
			}
			waitFor(t, 20*time.Second, "policies gone", func() bool {
				sum, err := sampleClient(t, stateDir, "legacy/outsider", "http://"+echo2+":8080/", 1)
				return err == nil && sum.Codes["200"] == 1
			})
		}()
		write("policy-deny-all.yaml", "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow-nothing, namespace: demo}\nspec: {}\n")
		waitFor(t, 20*time.Second, "deny-all in force", func() bool {
			sum, _ := sampleClient(t, stateDir, "demo/client", "http://"+echo2+":8080/", 1)
			return sum != nil && sum.Errors == 1
		})
		findLogFunc(t, stateDir, "node2", func(r map[string]any) bool {
			return r["msg"] == "connection denied" && r["src.identity"] == clientID && r["reason"] == "allow policies exist, but none allowed"
		})
		write("policy-allow.yaml", "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow-client, namespace: demo}\nspec:\n  action: ALLOW\n  rules:\n  - from: [{source: {principals: [cluster.local/ns/demo/sa/client]}}]\n    to: [{operation: {ports: [\"8080\"]}}]\n")
		waitFor(t, 20*time.Second, "client allowed on 8080", func() bool {
			sum, err := sampleClient(t, stateDir, "demo/client", "http://"+echo2+":8080/", 2)
			return err == nil && sum.Codes["200"] == 2
		})
		if sum, _ := sampleClient(t, stateDir, "legacy/outsider", "http://"+echo2+":8080/", 1); sum == nil || sum.Errors != 1 {
			t.Errorf("plaintext peer not refused under the allow policy: %+v", sum)
		}
		// ambit authz check agrees with what the data path just did.
		for _, c := range []struct{ from, to, want string }{
			{"demo/client", "demo/echo-2:8080", "ALLOW"},
			{"legacy/outsider", "demo/echo-2:8080", "DENY"},
			{"demo/client", "demo/banner:2525", "DENY"},
			{"demo/banner", "demo/echo-2:8080", "DENY"},
		} {
			out := mustAmbit(t, 20*time.Second, "authz", "check", "--state-dir", stateDir, "--from", c.from, "--to", c.to)
			lines := strings.Split(strings.TrimSpace(out), "\n")
			if verdict := lines[len(lines)-1]; !strings.HasPrefix(verdict, c.want) {
				t.Errorf("authz check %s -> %s:\n%s\nwant %s", c.from, c.to, out, c.want)
			}
			if c.want == "ALLOW" && !strings.Contains(out, "decided by: demo/allow-client") {
				t.Errorf("authz check does not name the deciding policy:\n%s", out)
			}
		}
		if sum, _ := sampleClient(t, stateDir, "demo/client", "banner://"+st.podIP(t, "demo", "banner")+":2525", 1); sum == nil || sum.Errors != 1 {
			t.Errorf("client on port 2525 not refused: %+v", sum)
		}
		// Another service account (the banner pod runs as demo/default).
		if sum, _ := sampleClient(t, stateDir, "demo/banner", "http://"+echo2+":8080/", 1); sum == nil || sum.Errors != 1 {
			t.Errorf("sa/default not refused: %+v", sum)
		}
		metrics, err := exec.Command("ip", "netns", "exec", "ambit-node2", "curl", "-sS", "-m", "5", "http://127.0.0.1:15020/metrics").CombinedOutput()
		if err != nil {
			t.Fatalf("metrics: %v", err)
		}
		var deniedLine, allowedLine bool
		for _, l := range strings.Split(string(metrics), "\n") {
			if strings.HasPrefix(l, "istio_tcp_connections_failed_total{") && strings.Contains(l, `response_flags="DENY"`) &&
				strings.Contains(l, `source_principal="spiffe://cluster.local/ns/demo/sa/default"`) && strings.Contains(l, `destination_workload="echo-2"`) {
				deniedLine = true
			}
			if strings.HasPrefix(l, "istio_tcp_connections_opened_total{") && strings.Contains(l, `reporter="destination"`) &&
				strings.Contains(l, `source_principal="`+clientID+`"`) && strings.Contains(l, `connection_security_policy="mutual_tls"`) {
				allowedLine = true
			}
		}
		if !deniedLine || !allowedLine {
			t.Errorf("metrics lack the denied (%v) or allowed (%v) connection:\n%s", deniedLine, allowedLine, metrics)
		}
		// A long-lived connection, then a DENY for its client: closed within 2 s.
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		c, err := nsnet.DialFunc(podNetns(t, stateDir, "demo", "client"), nsnet.SocketOptions{}, nil)(ctx, "tcp", echo2+":8080")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		br := bufio.NewReader(c)
		fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if line, err := br.ReadString('\n'); err != nil || !strings.Contains(line, "200") {
			t.Fatalf("long-lived connection: %q %v", line, err)
		}
		write("policy-deny.yaml", "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-client, namespace: demo}\nspec:\n  action: DENY\n  rules: [{from: [{source: {principals: [cluster.local/ns/demo/sa/client]}}]}]\n")
		start := time.Now()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.Copy(io.Discard, br); err != nil && time.Since(start) >= 10*time.Second {
			t.Fatal("the connection was not closed")
		}
		// The config watch debounce and the push are part of the budget.
		if d := time.Since(start); d > 2*time.Second+time.Second {
			t.Errorf("closed %s after the DENY was written, want about 2 s", d)
		} else {
			t.Logf("open connection closed %s after the DENY was written", d.Round(10*time.Millisecond))
		}
		findLogFunc(t, stateDir, "node2", func(r map[string]any) bool {
			return r["msg"] == "connection closed by policy" && r["policy"] == "demo/deny-client"
		})
		if out := mustAmbit(t, 20*time.Second, "authz", "check", "--state-dir", stateDir, "--from", "demo/client", "--to", "demo/echo-2:8080"); !strings.Contains(out, "\nDENY (decided by the destination ztunnel)") || !strings.Contains(out, "explicitly denied by: demo/deny-client") {
			t.Errorf("authz check after the DENY:\n%s", out)
		}
	})

	t.Run("PeerAuthentication: STRICT refuses plaintext, PERMISSIVE admits it", func(t *testing.T) {
		echo2 := st.podIP(t, "demo", "echo-2")
		file := filepath.Join(cfg, "peer-auth.yaml")
		defer func() {
			os.Remove(file)
			waitFor(t, 20*time.Second, "plaintext admitted again", func() bool {
				sum, err := sampleClient(t, stateDir, "legacy/outsider", "http://"+echo2+":8080/", 1)
				return err == nil && sum.Codes["200"] == 1
			})
		}()
		os.WriteFile(file, []byte("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: demo}\nspec: {mtls: {mode: STRICT}}\n"), 0o644)
		waitFor(t, 20*time.Second, "STRICT refusing the non-mesh pod", func() bool {
			sum, _ := sampleClient(t, stateDir, "legacy/outsider", "http://"+echo2+":8080/", 1)
			return sum != nil && sum.Errors == 1
		})
		if sum, err := sampleClient(t, stateDir, "demo/client", "http://"+echo2+":8080/", 2); err != nil || sum.Codes["200"] != 2 {
			t.Fatalf("mTLS client under STRICT: %+v %v", sum, err)
		}
		findLogFunc(t, stateDir, "node2", func(r map[string]any) bool {
			return r["msg"] == "connection denied" && r["policy"] == "istio-system/istio_converted_static_strict"
		})
		os.WriteFile(file, []byte("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: demo}\nspec: {mtls: {mode: PERMISSIVE}}\n"), 0o644)
		waitFor(t, 20*time.Second, "PERMISSIVE admitting the non-mesh pod", func() bool {
			sum, err := sampleClient(t, stateDir, "legacy/outsider", "http://"+echo2+":8080/", 1)
			return err == nil && sum.Codes["200"] == 1
		})
	})

	t.Run("unlabel and relabel the namespace: live, without restarting pods", func(t *testing.T) {
		echo2NS := podNetns(t, stateDir, "demo", "echo-2")
		pidBefore := podPID(t, stateDir, "demo", "echo-2")
		nsFile := filepath.Join(cfg, "namespace.yaml")
		orig, _ := os.ReadFile(nsFile)
		plain := strings.Replace(string(orig), "    istio.io/dataplane-mode: ambient\n", "", 1)
		if plain == string(orig) {
			t.Fatal("the demo namespace has no ambient label to remove")
		}
		os.WriteFile(nsFile, []byte(plain), 0o644)
		waitFor(t, 20*time.Second, "rules gone from echo-2", func() bool {
			s, err := redirect.Inspect(context.Background(), echo2NS)
			return err == nil && s.Clean()
		})
		sum, err := sampleClient(t, stateDir, "demo/client", "http://"+st.podIP(t, "demo", "echo-2")+":8080/", 2)
		if err != nil || sum.Codes["200"] != 2 || sum.Sources[clientIP] != 2 {
			t.Fatalf("after unlabel: %+v %v", sum, err)
		}
		os.WriteFile(nsFile, orig, 0o644)
		waitFor(t, 20*time.Second, "rules back in echo-2", func() bool {
			s, err := redirect.Inspect(context.Background(), echo2NS)
			return err == nil && s.Installed()
		})
		waitFor(t, 20*time.Second, "HBONE again", func() bool {
			sum, err := sampleClient(t, stateDir, "demo/client", "http://"+st.podIP(t, "demo", "echo-2")+":8080/?relabel", 1)
			if err != nil || sum.Codes["200"] != 1 {
				return false
			}
			for _, r := range ztunnelLog(t, stateDir, "node2") {
				if r["direction"] == "inbound" && r["src.identity"] == clientID && r["dst.workload"] == "echo-2" {
					return true
				}
			}
			return false
		})
		if pid := podPID(t, stateDir, "demo", "echo-2"); pid != pidBefore {
			t.Errorf("echo-2 was restarted (pid %d -> %d)", pidBefore, pid)
		}
	})

	t.Run("ztunnel restart: snapshot again, traffic flows", func(t *testing.T) {
		pid := ztunnelPID(t, "node2")
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		waitFor(t, 30*time.Second, "traffic through a new ztunnel", func() bool {
			sum, err := sampleClient(t, stateDir, "demo/client", "http://"+st.podIP(t, "demo", "echo-2")+":8080/", 1)
			return err == nil && sum.Codes["200"] == 1 && ztunnelPID(t, "node2") != pid
		})
		t.Logf("new connections flowed %s after ztunnel was killed", time.Since(start).Round(100*time.Millisecond))
	})
}

// workloadKey is the key of the workload certificate the test obtains.
var workloadKey *ecdsa.PrivateKey

func mustCSR(t *testing.T, keep **ecdsa.PrivateKey) []byte {
	t.Helper()
	key, err := identity.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	if keep != nil {
		*keep = key
	}
	csr, err := identity.NewCSR(key, identity.SPIFFE{TrustDomain: "cluster.local", Namespace: "demo", ServiceAccount: "client"})
	if err != nil {
		t.Fatal(err)
	}
	return csr
}

func findLogFunc(t *testing.T, stateDir, node string, pred func(map[string]any) bool) map[string]any {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		for _, rec := range ztunnelLog(t, stateDir, node) {
			if pred(rec) {
				return rec
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("ztunnel on %s logged no matching connection", node)
	return nil
}

// podPID is the PID of a pod's process from the state file.
func podPID(t *testing.T, stateDir, ns, name string) int {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(stateDir, "state.json"))
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Pods []struct {
			Namespace, Name string
			PID             int `json:"pid"`
		} `json:"pods"`
	}
	json.Unmarshal(data, &st)
	for _, p := range st.Pods {
		if p.Namespace == ns && p.Name == name {
			return p.PID
		}
	}
	return 0
}

// ztunnelPID finds the running ztunnel of a node.
func ztunnelPID(t *testing.T, node string) int {
	t.Helper()
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || !alive(pid) {
			continue
		}
		cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if bytes.Contains(cmd, []byte("ztunnel\x00--node\x00"+node+"\x00")) && !bytes.Contains(cmd, []byte("nsexec")) {
			return pid
		}
	}
	return 0
}
