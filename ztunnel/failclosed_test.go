package ztunnel

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/emptypb"
	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"
	"istio.io/istio/pkg/zdsapi"

	"github.com/ambit-mesh/ambit/identity"
	"github.com/ambit-mesh/ambit/nsnet"
)

// held is an open connection through the mesh to a whoami server.
type held struct {
	c net.Conn
	r *bufio.Reader
}

func hold(t *testing.T, ns, addr string) *held {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := nsnet.DialFunc(ns, nsnet.SocketOptions{}, nil)(ctx, "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	h := &held{c: c, r: bufio.NewReader(c)}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := h.r.ReadString('\n'); err != nil {
		t.Fatalf("greeting from %s: %v", addr, err)
	}
	if !h.alive() {
		t.Fatalf("held connection to %s does not echo", addr)
	}
	return h
}

// alive sends a line and reports whether it came back.
func (h *held) alive() bool {
	h.c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := fmt.Fprintf(h.c, "ping\n"); err != nil {
		return false
	}
	line, err := h.r.ReadString('\n')
	return err == nil && line == "ping\n"
}

// closedWithin reports whether the connection ends within d.
func (h *held) closedWithin(d time.Duration) bool {
	h.c.SetReadDeadline(time.Now().Add(d))
	_, err := io.Copy(io.Discard, h.r)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		return false
	}
	return true
}

func exact(s string) *security.StringMatch {
	return &security.StringMatch{MatchType: &security.StringMatch_Exact{Exact: s}}
}

// TestRecheckOpenConnections changes policy under open connections, HBONE
// (from a) and plaintext (from c, outside the mesh) to b, in every shape a
// policy can reach b: a namespace policy, a selector policy (which reaches
// b through b's own workload resource, sent after the policy), STRICT peer
// authentication. Denied connections must close within 2 s with a log
// line; allowed ones must keep flowing.
func TestRecheckOpenConnections(t *testing.T) {
	m := newMesh(t)
	bAddr := m.ips["b"] + ":8080"
	plainDeny := &security.Match{NotPrincipals: []*security.StringMatch{{MatchType: &security.StringMatch_Presence{Presence: &emptypb.Empty{}}}}}
	for _, tc := range []struct {
		name string
		// policy is sent first; selects, when set, is put on b's workload
		// afterwards (as the control plane does).
		policy              *security.Authorization
		selects             bool
		hboneDies, plainDie bool
	}{
		{name: "namespace DENY by principal",
			policy: &security.Authorization{Name: "deny-client", Namespace: "demo", Scope: security.Scope_NAMESPACE, Action: security.Action_DENY,
				Groups: []*security.Group{{Rules: []*security.Rules{{Matches: []*security.Match{{Principals: []*security.StringMatch{exact("cluster.local/ns/demo/sa/client")}}}}}}}},
			hboneDies: true},
		{name: "selector DENY with an empty rule",
			policy:  &security.Authorization{Name: "deny-all-b", Namespace: "demo", Scope: security.Scope_WORKLOAD_SELECTOR, Action: security.Action_DENY, Groups: []*security.Group{{}}},
			selects: true, hboneDies: true, plainDie: true},
		{name: "namespace ALLOW that narrows to another principal",
			policy: &security.Authorization{Name: "allow-other", Namespace: "demo", Scope: security.Scope_NAMESPACE, Action: security.Action_ALLOW,
				Groups: []*security.Group{{Rules: []*security.Rules{{Matches: []*security.Match{{Principals: []*security.StringMatch{exact("cluster.local/ns/demo/sa/other")}}}}}}}},
			hboneDies: true, plainDie: true},
		{name: "selector ALLOW that narrows to another port",
			policy: &security.Authorization{Name: "allow-9999", Namespace: "demo", Scope: security.Scope_WORKLOAD_SELECTOR, Action: security.Action_ALLOW,
				Groups: []*security.Group{{Rules: []*security.Rules{{Matches: []*security.Match{{DestinationPorts: []uint32{9999}}}}}}}},
			selects: true, hboneDies: true, plainDie: true},
		{name: "STRICT peer authentication (static policy on the workload)",
			policy: &security.Authorization{Name: "istio_converted_static_strict", Namespace: "istio-system", Scope: security.Scope_WORKLOAD_SELECTOR, Action: security.Action_DENY,
				Groups: []*security.Group{{Rules: []*security.Rules{{Matches: []*security.Match{plainDeny}}}}}},
			selects: true, plainDie: true},
		{name: "global DENY from a namespace",
			policy: &security.Authorization{Name: "deny-demo", Namespace: "istio-system", Scope: security.Scope_GLOBAL, Action: security.Action_DENY,
				Groups: []*security.Group{{Rules: []*security.Rules{{Matches: []*security.Match{{Namespaces: []*security.StringMatch{exact("demo")}}}}}}}},
			hboneDies: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hb := hold(t, m.pods["a"], bAddr)
			pl := hold(t, m.pods["c"], bAddr)
			key := tc.policy.GetNamespace() + "/" + tc.policy.GetName()
			m.index.UpdatePolicies([]*security.Authorization{tc.policy}, nil, false)
			b := workload("b", m.ips["b"], "echo", true, "demo/echo.demo.svc.cluster.local", 8080)
			if tc.selects {
				b.GetWorkload().AuthorizationPolicies = []string{key}
				m.index.Update([]*workloadapi.Address{b}, nil, false)
			}
			defer func() {
				m.index.Update([]*workloadapi.Address{workload("b", m.ips["b"], "echo", true, "demo/echo.demo.svc.cluster.local", 8080)}, nil, false)
				m.index.UpdatePolicies(nil, []string{key}, false)
			}()
			for _, c := range []struct {
				path string
				h    *held
				dies bool
			}{{"HBONE", hb, tc.hboneDies}, {"plaintext", pl, tc.plainDie}} {
				if c.dies {
					if !c.h.closedWithin(2 * time.Second) {
						t.Errorf("%s connection still open 2 s after the change", c.path)
					}
				} else if !c.h.alive() {
					t.Errorf("%s connection closed, but the policy allows it", c.path)
				}
			}
			if tc.plainDie {
				src := pl.c.LocalAddr().String()
				m.logs["node2"].waitForFunc(t, "closed by policy from "+src, func(r map[string]any) bool {
					return r["msg"] == "connection closed by policy" && r["src.addr"] == src && r["reason"] != nil
				})
			}
			if tc.hboneDies {
				m.logs["node2"].waitForFunc(t, "HBONE closed by policy", func(r map[string]any) bool {
					return r["msg"] == "connection closed by policy" && r["src.identity"] != nil &&
						(r["policy"] == key || tc.policy.GetAction() == security.Action_ALLOW && strings.Contains(fmt.Sprint(r["reason"]), "none allowed"))
				})
			}
		})
	}
}

// TestFailClosedBeforeConfig: a ztunnel whose index has had no full state
// holds connections (then refuses them), and never passes them through.
func TestFailClosedBeforeConfig(t *testing.T) {
	m := newMeshWith(t, meshOptions{notReady: true, configWait: 3 * time.Second})
	type answer struct {
		line string
		err  error
	}
	got := make(chan answer, 2)
	for _, dst := range []string{m.ips["b"] + ":8080", m.ips["d"] + ":8080"} {
		go func() {
			line, err := ask(t, m.pods["a"], dst)
			got <- answer{line, err}
		}()
	}
	// From outside the mesh to b: no policy known yet is not "allow".
	plain := make(chan answer, 1)
	go func() {
		line, err := ask(t, m.pods["c"], m.ips["b"]+":8080")
		plain <- answer{line, err}
	}()
	select {
	case a := <-got:
		t.Fatalf("a connection went through before the config arrived: %+v", a)
	case a := <-plain:
		t.Fatalf("a plaintext connection was admitted before the policies arrived: %+v", a)
	case <-time.After(500 * time.Millisecond):
	}
	m.index.Update(nil, nil, true)
	m.index.UpdatePolicies(nil, nil, true)
	for range 2 {
		if a := <-got; a.err != nil || !strings.HasPrefix(a.line, "you are "+m.ips["a"]+":") {
			t.Fatalf("held connection after the config arrived: %+v", a)
		}
	}
	if a := <-plain; a.err != nil || !strings.HasPrefix(a.line, "you are "+m.ips["c"]+":") {
		t.Fatalf("held plaintext connection after the config arrived: %+v", a)
	}
	// The connection to b went over HBONE, the one to the unknown d
	// through, only after the config said d is outside the mesh.
	m.logs["node1"].waitFor(t, map[string]string{"msg": "connection complete", "route": "hbone", "dst.hbone_addr": m.ips["b"] + ":8080"})
	m.logs["node1"].waitFor(t, map[string]string{"msg": "connection complete", "route": "passthrough", "dst.addr": m.ips["d"] + ":8080"})

	t.Run("no config at all: refused after the wait, with a log line", func(t *testing.T) {
		x := NewIndex()
		x.Update(m.addresses(), nil, false)
		lb := &logBuffer{}
		met := NewMetrics()
		z := New(Config{Index: x, Certs: m.certs, Logger: slog.New(slog.NewJSONHandler(lb, nil)), Metrics: met, ConfigWait: 300 * time.Millisecond})
		t.Cleanup(func() { z.Drain(context.Background()) })
		// Take pod a over from node1's ztunnel.
		if err := m.zt["node1"].DelWorkload(context.Background(), "uid-a"); err != nil {
			t.Fatal(err)
		}
		f, err := os.Open(m.pods["a"])
		if err != nil {
			t.Fatal(err)
		}
		if err := z.AddWorkload(context.Background(), "uid-a", &zdsapi.WorkloadInfo{Name: "a", Namespace: "demo", ServiceAccount: "client"}, f); err != nil {
			t.Fatal(err)
		}
		for _, dst := range []string{m.ips["b"] + ":8080", m.ips["d"] + ":8080"} {
			if line, err := ask(t, m.pods["a"], dst); err == nil && line != "" {
				t.Fatalf("%s answered %q without config", dst, line)
			}
		}
		rec := lb.waitFor(t, map[string]string{"msg": "connection complete", "direction": "outbound", "dst.addr": m.ips["d"] + ":8080"})
		if !strings.Contains(fmt.Sprint(rec["error"]), ErrNotReady.Error()) {
			t.Errorf("refusal logged as %v", rec)
		}
		rr := httptest.NewRecorder()
		met.Handler().ServeHTTP(rr, httptest.NewRequest("GET", "/metrics", nil))
		if !strings.Contains(rr.Body.String(), `istio_tcp_connections_failed_total{`) {
			t.Errorf("refusals not counted:\n%s", rr.Body.String())
		}
	})
}

// TestRefusalsOn15008 sends what must be refused to b's HBONE port and
// checks that each refusal leaves an access-log line and a count.
func TestRefusalsOn15008(t *testing.T) {
	m := newMesh(t)
	hb := m.ips["b"] + ":15008"
	dial := func(t *testing.T) net.Conn {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, err := nsnet.DialFunc(m.pods["d"], nsnet.SocketOptions{}, nil)(ctx, "tcp", hb)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		return c
	}
	foreign, err := identity.NewRootAuthority("cluster.local", time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	foreignCert := func() *tls.Certificate {
		key, _ := identity.NewKey()
		chain, err := foreign.Issue(key.Public(), identity.SPIFFE{TrustDomain: "cluster.local", Namespace: "demo", ServiceAccount: "client"}, time.Hour, time.Now(), nil)
		if err != nil {
			t.Fatal(err)
		}
		c := &tls.Certificate{PrivateKey: key}
		for _, x := range chain {
			c.Certificate = append(c.Certificate, x.Raw)
		}
		return c
	}()
	for i, tc := range []struct {
		name  string
		send  func(t *testing.T, c net.Conn)
		flags string
	}{
		{"garbage", func(t *testing.T, c net.Conn) { c.Write([]byte("\x00\x01garbage-marker\r\n")) }, "TLS_FAILURE"},
		{"HTTP/1.1 in plaintext", func(t *testing.T, c net.Conn) { c.Write([]byte("CONNECT x:80 HTTP/1.1\r\nHost: x\r\n\r\n")) }, "TLS_FAILURE"},
		{"h2c CONNECT", func(t *testing.T, c net.Conn) { c.Write([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")) }, "TLS_FAILURE"},
		{"TLS without a client certificate", func(t *testing.T, c net.Conn) {
			tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}, MinVersion: tls.VersionTLS13})
			tc.Handshake()
			tc.Read(make([]byte, 1))
		}, "TLS_FAILURE"},
		{"a certificate from a foreign root", func(t *testing.T, c net.Conn) {
			tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}, MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{*foreignCert}})
			tc.Handshake()
			tc.Read(make([]byte, 1))
		}, "TLS_FAILURE"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dial(t)
			src := c.LocalAddr().String()
			tc.send(t, c)
			io.ReadAll(c)
			c.Close()
			rec := m.logs["node2"].waitFor(t, map[string]string{"msg": "connection complete", "direction": "inbound", "src.addr": src})
			if !strings.Contains(fmt.Sprint(rec["error"]), "tls") {
				t.Errorf("refusal %d logged as %v", i, rec)
			}
			rr := httptest.NewRecorder()
			m.met["node2"].Handler().ServeHTTP(rr, httptest.NewRequest("GET", "/metrics", nil))
			want := fmt.Sprintf(`response_flags="%s"`, tc.flags)
			found := false
			for _, l := range strings.Split(rr.Body.String(), "\n") {
				if strings.HasPrefix(l, "istio_tcp_connections_failed_total{") && strings.Contains(l, want) && strings.HasSuffix(l, fmt.Sprintf(" %d", i+1)) {
					found = true
				}
			}
			if !found {
				t.Errorf("refusal %d not counted with %s:\n%s", i+1, want, rr.Body.String())
			}
		})
	}
	if got, err := ask(t, m.pods["a"], m.ips["b"]+":8080"); err != nil || !strings.HasPrefix(got, "you are ") {
		t.Fatalf("b stopped serving after the refusals: %q %v", got, err)
	}
}

// TestHandoff replaces b's proxy with one in another Ztunnel while
// connections keep arriving: none is refused, and the open one survives.
func TestHandoff(t *testing.T) {
	m := newMesh(t)
	bAddr := m.ips["b"] + ":8080"
	open := hold(t, m.pods["a"], bAddr)
	lb := &logBuffer{}
	next := New(Config{Index: m.index, Certs: m.certs, Logger: slog.New(slog.NewJSONHandler(lb, nil))})
	t.Cleanup(func() { next.Drain(context.Background()) })

	handed := make(chan int, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		handed <- m.zt["node2"].Handoff(ctx)
	}()
	stop := time.Now().Add(1500 * time.Millisecond)
	failed, total := 0, 0
	added := false
	for time.Now().Before(stop) {
		for _, src := range []string{"a", "c"} {
			total++
			if got, err := ask(t, m.pods[src], bAddr); err != nil || !strings.HasPrefix(got, "you are ") {
				failed++
				t.Logf("%s -> b: %q %v", src, got, err)
			}
		}
		if !added && time.Until(stop) < time.Second {
			added = true
			f, err := os.Open(m.pods["b"])
			if err != nil {
				t.Fatal(err)
			}
			if err := next.AddWorkload(context.Background(), "uid-b", &zdsapi.WorkloadInfo{Name: "b", Namespace: "demo", ServiceAccount: "echo"}, f); err != nil {
				t.Fatal(err)
			}
		}
	}
	if n := <-handed; n != 1 {
		t.Fatalf("Handoff handed over %d pods, want 1", n)
	}
	for range 20 {
		total++
		if got, err := ask(t, m.pods["a"], bAddr); err != nil || !strings.HasPrefix(got, "you are ") {
			failed++
		}
	}
	if failed != 0 {
		t.Fatalf("%d of %d connections refused during the hand-off", failed, total)
	}
	if !open.alive() {
		t.Fatal("the open connection did not survive the hand-off")
	}
	lb.waitFor(t, map[string]string{"msg": "connection complete", "direction": "inbound", "dst.workload": "b"})
}
