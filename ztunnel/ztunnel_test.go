package ztunnel

import (
	"bufio"
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"
	"istio.io/istio/pkg/zdsapi"

	"github.com/ambit-mesh/ambit/identity"
	"github.com/ambit-mesh/ambit/identity/caclient"
	"github.com/ambit-mesh/ambit/nsnet"
	"github.com/ambit-mesh/ambit/nsnet/nstest"
	"github.com/ambit-mesh/ambit/redirect"
)

// localCA signs CSRs in process: a stand-in for the CA service that is
// tested on its own.
type localCA struct{ auth *identity.Authority }

func (c localCA) Fetch(ctx context.Context, id identity.SPIFFE, csrPEM []byte) ([]*x509.Certificate, error) {
	csr, err := identity.ParseCSR(csrPEM)
	if err != nil {
		return nil, err
	}
	return c.auth.Issue(csr.PublicKey, id, time.Hour, time.Now(), nil)
}

// logBuffer collects JSON log lines.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// find returns the first log record with every key=value given.
func (l *logBuffer) find(kv map[string]string) map[string]any {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, line := range strings.Split(l.b.String(), "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) != nil {
			continue
		}
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
	return nil
}

func (l *logBuffer) waitFor(t *testing.T, kv map[string]string) map[string]any {
	t.Helper()
	return l.waitForFunc(t, fmt.Sprint(kv), func(rec map[string]any) bool {
		for k, v := range kv {
			if fmt.Sprint(rec[k]) != v {
				return false
			}
		}
		return true
	})
}

// findFunc returns the first log record for which match is true.
func (l *logBuffer) findFunc(match func(map[string]any) bool) map[string]any {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, line := range strings.Split(l.b.String(), "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) == nil && match(rec) {
			return rec
		}
	}
	return nil
}

// waitForFunc waits up to 5 s for a record for which match is true.
func (l *logBuffer) waitForFunc(t *testing.T, what string, match func(map[string]any) bool) map[string]any {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if rec := l.findFunc(match); rec != nil {
			return rec
		}
		if time.Now().After(deadline) {
			l.mu.Lock()
			all := l.b.String()
			l.mu.Unlock()
			t.Fatalf("no log line with %s in:\n%s", what, all)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// whoami serves, inside a namespace, a line saying the peer address.
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
				io.Copy(c, c)
			}()
		}
	}()
}

// ask connects from ns to addr and returns the greeting line.
func ask(t *testing.T, ns, addr string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := nsnet.DialFunc(ns, nsnet.SocketOptions{}, nil)(ctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

type mesh struct {
	pods   map[string]string // name -> netns path
	ips    map[string]string
	index  *Index
	zt     map[string]*Ztunnel // ztunnel per "node"
	met    map[string]*Metrics
	logs   map[string]*logBuffer
	certs  *caclient.Manager
	ztPods map[string]string // pod -> node
}

func workload(name, ip, sa string, hbone bool, svc string, port uint32) *workloadapi.Address {
	w := &workloadapi.Workload{Uid: "Kubernetes//Pod/demo/" + name, Name: name, Namespace: "demo", ServiceAccount: sa,
		Addresses: [][]byte{netip.MustParseAddr(ip).AsSlice()}, Status: workloadapi.WorkloadStatus_HEALTHY}
	if hbone {
		w.TunnelProtocol = workloadapi.TunnelProtocol_HBONE
	}
	if svc != "" {
		w.Services = map[string]*workloadapi.PortList{svc: {Ports: []*workloadapi.Port{{ServicePort: 80, TargetPort: port}}}}
	}
	return &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: w}}
}

// newMesh builds pods a (client, node1), b (server, node2), c (not in the
// mesh) and d (unknown to the control plane) on one LAN.
func newMesh(t *testing.T) *mesh { return newMeshWith(t, meshOptions{}) }

// meshOptions vary newMesh.
type meshOptions struct {
	// notReady leaves the index without a full state: the workloads are
	// there, but as if the control plane's first answer had not arrived.
	notReady   bool
	configWait time.Duration
}

func newMeshWith(t *testing.T, o meshOptions) *mesh {
	nstest.RequireRoot(t)
	m := &mesh{pods: map[string]string{}, ips: map[string]string{"a": "10.77.0.2", "b": "10.77.0.3", "c": "10.77.0.4", "d": "10.77.0.5"},
		index: NewIndex(), zt: map[string]*Ztunnel{}, logs: map[string]*logBuffer{}, met: map[string]*Metrics{}}
	members := map[string]string{}
	for _, p := range []string{"a", "b", "c", "d"} {
		m.pods[p] = nstest.Netns(t)
		members[m.pods[p]] = m.ips[p] + "/24"
	}
	nstest.LAN(t, members)
	for _, ns := range m.pods {
		nstest.DefaultRoute(t, ns)
	}
	m.index.Update(m.addresses(), nil, !o.notReady)
	m.index.UpdatePolicies(nil, nil, !o.notReady)
	auth, err := identity.NewRootAuthority("cluster.local", 24*time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	m.certs = caclient.NewManager(localCA{auth}, nil, nil)
	t.Cleanup(m.certs.Close)
	for _, node := range []string{"node1", "node2"} {
		lb := &logBuffer{}
		m.logs[node] = lb
		m.met[node] = NewMetrics()
		m.zt[node] = New(Config{Index: m.index, Certs: m.certs, Logger: slog.New(slog.NewJSONHandler(lb, nil)), Metrics: m.met[node], ConfigWait: o.configWait})
		zt := m.zt[node]
		t.Cleanup(func() { zt.Drain(context.Background()) })
	}
	m.enroll(t, "a", "node1", "client")
	m.enroll(t, "b", "node2", "echo")
	for _, p := range []string{"a", "b", "c", "d"} {
		whoami(t, m.pods[p], ":8080")
	}
	return m
}

// addresses is what the control plane says of the mesh's pods.
func (m *mesh) addresses() []*workloadapi.Address {
	return []*workloadapi.Address{
		workload("a", m.ips["a"], "client", true, "", 0),
		workload("b", m.ips["b"], "echo", true, "demo/echo.demo.svc.cluster.local", 8080),
		workload("c", m.ips["c"], "", false, "", 0),
		{Type: &workloadapi.Address_Service{Service: &workloadapi.Service{Name: "echo", Namespace: "demo", Hostname: "echo.demo.svc.cluster.local",
			Addresses: []*workloadapi.NetworkAddress{{Address: netip.MustParseAddr("10.77.100.1").AsSlice()}},
			Ports:     []*workloadapi.Port{{ServicePort: 80, TargetPort: 8080}}}}},
	}
}

func (m *mesh) enroll(t *testing.T, pod, node, sa string) {
	t.Helper()
	if err := redirect.Install(context.Background(), m.pods[pod], redirect.Config{}); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(m.pods[pod])
	if err != nil {
		t.Fatal(err)
	}
	if err := m.zt[node].AddWorkload(context.Background(), "uid-"+pod, &zdsapi.WorkloadInfo{Name: pod, Namespace: "demo", ServiceAccount: sa}, f); err != nil {
		t.Fatal(err)
	}
}

func TestMeshTraffic(t *testing.T) {
	m := newMesh(t)
	clientID := "spiffe://cluster.local/ns/demo/sa/client"
	echoID := "spiffe://cluster.local/ns/demo/sa/echo"

	t.Run("pod IP over HBONE keeps the client's address", func(t *testing.T) {
		got, err := ask(t, m.pods["a"], m.ips["b"]+":8080")
		if err != nil || !strings.HasPrefix(got, "you are "+m.ips["a"]+":") {
			t.Fatalf("b saw %q (%v), want a's IP %s", got, err, m.ips["a"])
		}
		m.logs["node1"].waitFor(t, map[string]string{"msg": "connection complete", "direction": "outbound", "route": "hbone",
			"src.identity": clientID, "dst.identity": echoID, "dst.hbone_addr": m.ips["b"] + ":8080"})
		m.logs["node2"].waitFor(t, map[string]string{"msg": "connection complete", "direction": "inbound", "src.identity": clientID, "dst.identity": echoID})
		for node, want := range map[string][]string{
			"node1": {`istio_tcp_connections_opened_total{`, `reporter="source"`, `source_principal="spiffe://cluster.local/ns/demo/sa/client"`, `destination_principal="spiffe://cluster.local/ns/demo/sa/echo"`, `connection_security_policy="mutual_tls"`, `destination_workload="b"`},
			"node2": {`istio_tcp_connections_closed_total{`, `reporter="destination"`, `source_principal="spiffe://cluster.local/ns/demo/sa/client"`, `source_workload="a"`, `request_protocol="tcp"`, `istio_tcp_sent_bytes_total{`},
		} {
			rec := httptest.NewRecorder()
			m.met[node].Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
			for _, w := range want {
				if !strings.Contains(rec.Body.String(), w) {
					t.Errorf("%s metrics lack %s:\n%s", node, w, rec.Body.String())
				}
			}
		}
	})
	t.Run("service VIP to an endpoint", func(t *testing.T) {
		got, err := ask(t, m.pods["a"], "10.77.100.1:80")
		if err != nil || !strings.HasPrefix(got, "you are "+m.ips["a"]+":") {
			t.Fatalf("via VIP: %q (%v)", got, err)
		}
		m.logs["node1"].waitFor(t, map[string]string{"direction": "outbound", "dst.service": "echo.demo.svc.cluster.local", "route": "hbone"})
	})
	t.Run("to a pod outside the mesh: plain TCP", func(t *testing.T) {
		got, err := ask(t, m.pods["a"], m.ips["c"]+":8080")
		if err != nil || !strings.HasPrefix(got, "you are "+m.ips["a"]+":") {
			t.Fatalf("to c: %q (%v)", got, err)
		}
		m.logs["node1"].waitFor(t, map[string]string{"direction": "outbound", "route": "tcp", "dst.workload": "c"})
	})
	t.Run("to an unknown address: passthrough", func(t *testing.T) {
		got, err := ask(t, m.pods["a"], m.ips["d"]+":8080")
		if err != nil || !strings.HasPrefix(got, "you are "+m.ips["a"]+":") {
			t.Fatalf("to d: %q (%v)", got, err)
		}
		m.logs["node1"].waitFor(t, map[string]string{"direction": "outbound", "route": "passthrough", "dst.addr": m.ips["d"] + ":8080"})
	})
	t.Run("from outside the mesh: plaintext into 15006", func(t *testing.T) {
		got, err := ask(t, m.pods["c"], m.ips["b"]+":8080")
		if err != nil || !strings.HasPrefix(got, "you are "+m.ips["c"]+":") {
			t.Fatalf("c to b: %q (%v)", got, err)
		}
		rec := m.logs["node2"].waitForFunc(t, "plaintext inbound from c", func(r map[string]any) bool {
			return r["msg"] == "connection complete" && r["direction"] == "inbound" && r["dst.workload"] == "b" &&
				strings.HasPrefix(fmt.Sprint(r["src.addr"]), m.ips["c"]+":")
		})
		// c sent nothing; b sent its greeting (inbound, bytes_sent is the
		// destination's, as upstream).
		if rec["src.identity"] != nil || fmt.Sprint(rec["bytes_recv"]) != "0" || fmt.Sprint(rec["bytes_sent"]) == "0" {
			t.Fatalf("plaintext inbound logged as %v", rec)
		}
	})
	t.Run("garbage on 15008 is refused and b keeps serving", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, err := nsnet.DialFunc(m.pods["d"], nsnet.SocketOptions{}, nil)(ctx, "tcp", m.ips["b"]+":15008")
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\nmarker-plaintext"))
		io.ReadAll(c)
		c.Close()
		if got, err := ask(t, m.pods["a"], m.ips["b"]+":8080"); err != nil || !strings.HasPrefix(got, "you are ") {
			t.Fatalf("after garbage: %q %v", got, err)
		}
	})
	t.Run("policy: deny closes open connections and refuses new ones; allow restores", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		open, err := nsnet.DialFunc(m.pods["a"], nsnet.SocketOptions{}, nil)(ctx, "tcp", m.ips["b"]+":8080")
		if err != nil {
			t.Fatal(err)
		}
		defer open.Close()
		r := bufio.NewReader(open)
		if _, err := r.ReadString('\n'); err != nil {
			t.Fatal(err)
		}
		deny := &security.Authorization{Name: "deny-client", Namespace: "demo", Scope: security.Scope_NAMESPACE, Action: security.Action_DENY,
			Groups: []*security.Group{{Rules: []*security.Rules{{Matches: []*security.Match{{Principals: []*security.StringMatch{{MatchType: &security.StringMatch_Exact{Exact: "cluster.local/ns/demo/sa/client"}}}}}}}}}}
		m.index.UpdatePolicies([]*security.Authorization{deny}, nil, false)
		open.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := r.ReadString('\n'); err == nil {
			t.Fatal("the open connection survived a DENY")
		}
		if got, err := ask(t, m.pods["a"], m.ips["b"]+":8080"); err == nil && strings.HasPrefix(got, "you are") {
			t.Fatalf("a denied client got through: %q", got)
		}
		m.logs["node2"].waitFor(t, map[string]string{"msg": "connection denied", "policy": "demo/deny-client"})
		// Plaintext from outside the mesh is not the denied principal.
		if got, err := ask(t, m.pods["c"], m.ips["b"]+":8080"); err != nil || !strings.HasPrefix(got, "you are") {
			t.Fatalf("plaintext peer: %q %v", got, err)
		}
		m.index.UpdatePolicies(nil, []string{"demo/deny-client"}, false)
		if got, err := ask(t, m.pods["a"], m.ips["b"]+":8080"); err != nil || !strings.HasPrefix(got, "you are") {
			t.Fatalf("after removing the DENY: %q %v", got, err)
		}
	})
	t.Run("unenroll: traffic is plaintext again", func(t *testing.T) {
		if err := m.zt["node2"].DelWorkload(context.Background(), "uid-b"); err != nil {
			t.Fatal(err)
		}
		if err := redirect.Remove(context.Background(), m.pods["b"]); err != nil {
			t.Fatal(err)
		}
		m.index.Update([]*workloadapi.Address{workload("b", m.ips["b"], "echo", false, "demo/echo.demo.svc.cluster.local", 8080)}, nil, false)
		got, err := ask(t, m.pods["a"], m.ips["b"]+":8080")
		if err != nil || !strings.HasPrefix(got, "you are "+m.ips["a"]+":") {
			t.Fatalf("after unenroll: %q (%v)", got, err)
		}
		m.logs["node1"].waitFor(t, map[string]string{"direction": "outbound", "route": "tcp", "dst.workload": "b"})
	})
}
