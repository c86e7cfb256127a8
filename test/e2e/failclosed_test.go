package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/identity"
	"github.com/ambit-mesh/ambit/nsnet"
)

// TestFailClosed is issue 8's list, on one mesh built from samples/demo
// plus a namespace outside the mesh: ztunnel crashes under traffic never
// let plaintext out, every shape of policy change closes the open
// connections it denies, replacing a ztunnel refuses no connection,
// connections keep their order, and every refusal is logged and counted.
func TestFailClosed(t *testing.T) {
	stateDir := filepath.Join(t.TempDir(), "state")
	cfg := copyDir(t, filepath.Join(repoRoot(), "samples", "demo"))
	if err := os.WriteFile(filepath.Join(cfg, "legacy.yaml"), []byte(legacy), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = ambit(t, 60*time.Second, "local", "down", "--state-dir", stateDir) })
	mustAmbit(t, 90*time.Second, "local", "up", "-f", cfg, "--state-dir", stateDir)
	st := readStatus(t, stateDir)
	echo1, echo2, client := st.podIP(t, "demo", "echo-1"), st.podIP(t, "demo", "echo-2"), st.podIP(t, "demo", "client")
	var echoVIP string
	for _, s := range st.Services {
		if s.Name == "echo" {
			echoVIP = s.ClusterIP
		}
	}
	netnsOf := func(ns, name string) string { return podNetns(t, stateDir, ns, name) }

	t.Run("ztunnel killed 20 times under traffic: no plaintext leaves a mesh pod", func(t *testing.T) {
		// Everything node1's mesh pods send crosses node1's bridge (to
		// echo-1, same node) or the underlay (to echo-2): only HBONE may.
		capUnderlay := startCapture(t, "ambit-underlay", "br0", "tcp and not port 15008 and not port 15012")
		capNode := startCapture(t, "ambit-node1", "cni0", "tcp and not port 15008")
		since := time.Now()
		var ok, failed atomic.Int64
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		for _, dst := range []string{echo1, echo2, echoVIP} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				hc := podHTTPClient(netnsOf("demo", "client"), 1*time.Second)
				for ctx.Err() == nil {
					if getOK(hc, "http://"+dst+":8080/") {
						ok.Add(1)
					} else {
						failed.Add(1)
					}
					time.Sleep(20 * time.Millisecond)
				}
			}()
		}
		for i := range 20 {
			pid := newestZtunnel(t, "node1")
			if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
				t.Fatalf("kill %d: %v", i, err)
			}
			waitFor(t, 30*time.Second, "a new ready ztunnel on node1", func() bool {
				p := newestZtunnel(t, "node1")
				return p != 0 && p != pid && ztunnelReady("ambit-node1")
			})
			// Longer than the supervisor's "healthy run", so that the
			// restart backoff stays short; traffic meanwhile.
			time.Sleep(3200 * time.Millisecond)
		}
		cancel()
		wg.Wait()
		underlay, node := capUnderlay(), capNode()
		t.Logf("20 crashes: %d requests answered, %d failed while ztunnel was down", ok.Load(), failed.Load())
		if ok.Load() < 100 {
			t.Errorf("only %d requests answered", ok.Load())
		}
		for what, data := range map[string]string{"underlay": underlay, "node1 bridge": node} {
			if pkts := packetLines(data); len(pkts) > 0 {
				t.Errorf("%d non-HBONE TCP packets on the %s, e.g.:\n%s", len(pkts), what, strings.Join(tail(pkts, 5), "\n"))
			}
		}
		for _, r := range ztunnelLog(t, stateDir, "node1") {
			if r["route"] == "passthrough" && logTime(r).After(since) {
				t.Errorf("a connection went through in plaintext: %v", r)
			}
		}
	})

	t.Run("policy changes close every open connection they deny", func(t *testing.T) {
		// Held connections to the tcp-echo in the client pod (port 9000):
		// over HBONE from echo-2 (sa/echo), in plaintext from the pod
		// outside the mesh.
		type path struct {
			name, ns, pod string
		}
		hbone, plain := path{"HBONE", "demo", "echo-2"}, path{"plaintext", "legacy", "outsider"}
		const target = "9000"
		ap := func(name, action, selector, rules string) string {
			sel := ""
			if selector != "" {
				sel = "  selector: {matchLabels: {" + selector + "}}\n"
			}
			return fmt.Sprintf("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: %s, namespace: demo}\nspec:\n%s  action: %s\n  rules: %s\n", name, sel, action, rules)
		}
		for _, tc := range []struct {
			name, yaml  string
			policy      string // deciding policy in the log, "" for an ALLOW no rule matched
			closes      map[string]bool
			surviveNote string
		}{
			{"namespace DENY by principal", ap("deny-echo", "DENY", "", "[{from: [{source: {principals: [cluster.local/ns/demo/sa/echo]}}]}]"),
				"demo/deny-echo", map[string]bool{"HBONE": true}, ""},
			{"selector DENY with an empty rule", ap("deny-client-pod", "DENY", "app: client", "[{}]"),
				"demo/deny-client-pod", map[string]bool{"HBONE": true, "plaintext": true}, ""},
			{"namespace ALLOW narrowed to another principal", ap("allow-default", "ALLOW", "", "[{from: [{source: {principals: [cluster.local/ns/demo/sa/default]}}]}]"),
				"", map[string]bool{"HBONE": true, "plaintext": true}, ""},
			{"selector ALLOW narrowed to another port", ap("allow-9999", "ALLOW", "app: client", `[{to: [{operation: {ports: ["9999"]}}]}]`),
				"", map[string]bool{"HBONE": true, "plaintext": true}, ""},
			{"PeerAuthentication STRICT for the namespace", "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: demo}\nspec: {mtls: {mode: STRICT}}\n",
				"istio-system/istio_converted_static_strict", map[string]bool{"plaintext": true}, ""},
			{"PeerAuthentication STRICT for one workload", "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: client-strict, namespace: demo}\nspec: {selector: {matchLabels: {app: client}}, mtls: {mode: STRICT}}\n",
				"istio-system/istio_converted_static_strict", map[string]bool{"plaintext": true}, ""},
			{"root-namespace DENY from a namespace", "apiVersion: v1\nkind: Namespace\nmetadata: {name: istio-system}\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-demo, namespace: istio-system}\nspec:\n  action: DENY\n  rules: [{from: [{source: {namespaces: [demo]}}]}]\n",
				"istio-system/deny-demo", map[string]bool{"HBONE": true}, ""},
		} {
			t.Run(tc.name, func(t *testing.T) {
				conns := map[string]*lineConn{}
				for _, p := range []path{hbone, plain} {
					conns[p.name] = dialLines(t, netnsOf(p.ns, p.pod), client+":"+target)
				}
				file := filepath.Join(cfg, "recheck.yaml")
				written := time.Now()
				if err := os.WriteFile(file, []byte(tc.yaml), 0o644); err != nil {
					t.Fatal(err)
				}
				var wg sync.WaitGroup
				for name, c := range conns {
					wg.Add(1)
					go func() {
						defer wg.Done()
						if tc.closes[name] {
							if d, closed := c.closedWithin(3 * time.Second); !closed || d > 2*time.Second {
								t.Errorf("%s connection: closed %v after %s, want closed within 2 s", name, closed, time.Since(written).Round(10*time.Millisecond))
							} else {
								t.Logf("%s connection closed %s after the file was written", name, time.Since(written).Round(10*time.Millisecond))
							}
						} else {
							time.Sleep(2500 * time.Millisecond)
							if !c.echoes() {
								t.Errorf("%s connection was closed, but the policy allows it", name)
							}
						}
					}()
				}
				wg.Wait()
				for name := range tc.closes {
					src := conns[name].c.LocalAddr().String()
					findLogFunc(t, stateDir, "node1", func(r map[string]any) bool {
						if r["msg"] != "connection closed by policy" || !logTime(r).After(written) || r["dst.workload"] != "client" {
							return false
						}
						if name == "plaintext" && r["src.addr"] != src {
							return false
						}
						if name == "HBONE" && r["src.identity"] != echoID {
							return false
						}
						return tc.policy == "" || r["policy"] == tc.policy
					})
				}
				if err := os.Remove(file); err != nil {
					t.Fatal(err)
				}
				waitFor(t, 20*time.Second, "both paths admitted again", func() bool {
					for _, p := range []path{hbone, plain} {
						if !tryLines(netnsOf(p.ns, p.pod), client+":"+target) {
							return false
						}
					}
					return true
				})
			})
		}
	})

	t.Run("SIGTERM of either ztunnel refuses no new connection", func(t *testing.T) {
		held := dialLines(t, netnsOf("demo", "echo-2"), client+":9000")
		var ok, failed atomic.Int64
		var mu sync.Mutex
		var failures []string
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		for _, dst := range []string{echo2, echoVIP} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				hc := podHTTPClient(netnsOf("demo", "client"), 3*time.Second)
				for ctx.Err() == nil {
					if getOK(hc, "http://"+dst+":8080/") {
						ok.Add(1)
					} else {
						failed.Add(1)
						mu.Lock()
						failures = append(failures, time.Now().Format(time.StampMilli)+" "+dst)
						mu.Unlock()
					}
					time.Sleep(50 * time.Millisecond)
				}
			}()
		}
		for _, node := range []string{"node1", "node2"} {
			time.Sleep(time.Second)
			old := newestZtunnel(t, node)
			if err := syscall.Kill(old, syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			waitFor(t, 10*time.Second, "the replacement of "+node+"'s ztunnel", func() bool {
				p := newestZtunnel(t, node)
				return p != 0 && p != old && ztunnelReady("ambit-"+node)
			})
			time.Sleep(2 * time.Second)
			if !held.echoes() {
				t.Errorf("the held connection did not survive the replacement of %s's ztunnel", node)
			}
		}
		cancel()
		wg.Wait()
		t.Logf("while both ztunnels were replaced: %d requests answered, %d failed", ok.Load(), failed.Load())
		if failed.Load() != 0 || ok.Load() < 50 {
			t.Errorf("%d of %d new connections failed: %v", failed.Load(), failed.Load()+ok.Load(), failures)
		}
		held.c.Close()
		// The old ztunnels exit once their last connection is done.
		waitFor(t, 30*time.Second, "one ztunnel per node", func() bool {
			return len(ztunnelPIDs("node1")) == 1 && len(ztunnelPIDs("node2")) == 1
		})
	})

	t.Run("the destination ztunnel names the service", func(t *testing.T) {
		if sum, err := sampleClient(t, stateDir, "demo/client", "http://"+echoVIP+":8080/", 6); err != nil || sum.Codes["200"] != 6 {
			t.Fatalf("client -> VIP: %+v %v", sum, err)
		}
		if sum, err := sampleClient(t, stateDir, "legacy/outsider", "http://"+echo2+":8080/", 1); err != nil || sum.Codes["200"] != 1 {
			t.Fatalf("outsider -> echo-2: %+v %v", sum, err)
		}
		// node2's ztunnel is new since the SIGTERM test, and has seen
		// only traffic to the service's port.
		m := metricsOf(t, "node2")
		var hbone, plain bool
		for _, l := range strings.Split(m, "\n") {
			if !strings.HasPrefix(l, "istio_tcp_connections_opened_total{") || !strings.Contains(l, `reporter="destination"`) {
				continue
			}
			if strings.Contains(l, `destination_service="unknown"`) {
				t.Errorf("destination reports an unknown service: %s", l)
			}
			svc := strings.Contains(l, `destination_service="echo.demo.svc.cluster.local"`) && strings.Contains(l, `destination_service_name="echo"`) && strings.Contains(l, `destination_service_namespace="demo"`)
			hbone = hbone || svc && strings.Contains(l, `connection_security_policy="mutual_tls"`)
			plain = plain || svc && strings.Contains(l, `connection_security_policy="unknown"`)
		}
		if !hbone || !plain {
			t.Errorf("node2 metrics lack the service on HBONE (%v) or plaintext (%v):\n%s", hbone, plain, m)
		}
	})
	t.Run("refusals on 15001, 15006 and 15008 are logged and counted", func(t *testing.T) {
		outsider := netnsOf("legacy", "outsider")
		dial := func(t *testing.T, ns, addr string) net.Conn {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			c, err := nsnet.DialFunc(ns, nsnet.SocketOptions{}, nil)(ctx, "tcp", addr)
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
		key, _ := identity.NewKey()
		chain, err := foreign.Issue(key.Public(), identity.SPIFFE{TrustDomain: "cluster.local", Namespace: "demo", ServiceAccount: "client"}, time.Hour, time.Now(), nil)
		if err != nil {
			t.Fatal(err)
		}
		foreignCert := tls.Certificate{PrivateKey: key}
		for _, c := range chain {
			foreignCert.Certificate = append(foreignCert.Certificate, c.Raw)
		}
		tlsTry := func(certs []tls.Certificate) func(net.Conn) {
			return func(c net.Conn) {
				tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}, MinVersion: tls.VersionTLS13, Certificates: certs})
				_ = tc.Handshake()
				_, _ = tc.Read(make([]byte, 1))
			}
		}
		write := func(s string) func(net.Conn) { return func(c net.Conn) { _, _ = c.Write([]byte(s)) } }
		for _, tc := range []struct {
			name, node, ns, addr, flags, reporter string
			send                                  func(net.Conn)
		}{
			{"garbage on 15008", "node2", outsider, echo2 + ":15008", "TLS_FAILURE", "destination", write("\x00\x01garbage\r\n")},
			{"HTTP/1.1 on 15008", "node2", outsider, echo2 + ":15008", "TLS_FAILURE", "destination", write("CONNECT " + echo2 + ":8080 HTTP/1.1\r\nHost: x\r\n\r\n")},
			{"h2c CONNECT on 15008", "node2", outsider, echo2 + ":15008", "TLS_FAILURE", "destination", write("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")},
			{"TLS without a certificate on 15008", "node2", outsider, echo2 + ":15008", "TLS_FAILURE", "destination", tlsTry(nil)},
			{"a foreign-root certificate on 15008", "node2", outsider, echo2 + ":15008", "TLS_FAILURE", "destination", tlsTry([]tls.Certificate{foreignCert})},
			{"plaintext to a closed port (15006)", "node2", outsider, echo2 + ":7777", "CONNECT", "destination", write("hello\n")},
			{"a service port that does not exist (15001)", "node1", netnsOf("demo", "client"), echoVIP + ":7777", "CONNECT", "source", write("hello\n")},
		} {
			t.Run(tc.name, func(t *testing.T) {
				before := failedCount(t, tc.node, tc.reporter, tc.flags)
				c := dial(t, tc.ns, tc.addr)
				src := c.LocalAddr().String()
				sent := time.Now()
				tc.send(c)
				_, _ = io.ReadAll(c)
				c.Close()
				rec := findLogFunc(t, stateDir, tc.node, func(r map[string]any) bool {
					return r["msg"] == "connection complete" && r["error"] != nil && logTime(r).After(sent.Add(-time.Second)) &&
						(r["src.addr"] == src || tc.reporter == "source" && r["dst.addr"] == tc.addr)
				})
				t.Logf("logged: %v", rec["error"])
				waitFor(t, 10*time.Second, "the refusal counted", func() bool {
					return failedCount(t, tc.node, tc.reporter, tc.flags) > before
				})
			})
		}
	})

	t.Run("a spiffe:// principal never matches, as upstream, and status says so", func(t *testing.T) {
		file := filepath.Join(cfg, "spiffe-principal.yaml")
		defer os.Remove(file)
		// An ALLOW naming the client with the scheme: upstream keeps the
		// value as written, so it matches nobody and the ALLOW denies all.
		if err := os.WriteFile(file, []byte("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow-spiffe, namespace: demo}\nspec:\n  selector: {matchLabels: {app: client}}\n  action: ALLOW\n  rules: [{from: [{source: {principals: [spiffe://cluster.local/ns/demo/sa/echo]}}]}]\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		var warning string
		waitFor(t, 20*time.Second, "the warning in status -o json", func() bool {
			var st struct {
				PolicyWarnings []string `json:"policyWarnings"`
			}
			out := mustAmbit(t, 10*time.Second, "local", "status", "-o", "json", "--state-dir", stateDir)
			if json.Unmarshal([]byte(out), &st) != nil {
				return false
			}
			for _, w := range st.PolicyWarnings {
				if strings.Contains(w, "demo/allow-spiffe") && strings.Contains(w, "spiffe://") && strings.Contains(w, "never matches") {
					warning = w
					return true
				}
			}
			return false
		})
		t.Logf("warning: %s", warning)
		if out := mustAmbit(t, 10*time.Second, "local", "status", "--state-dir", stateDir); !strings.Contains(out, warning) {
			t.Errorf("the text status lacks the warning:\n%s", out)
		}
		waitFor(t, 20*time.Second, "echo-2 refused by the ALLOW that matches nobody", func() bool {
			return !tryLines(netnsOf("demo", "echo-2"), client+":9000")
		})
		os.Remove(file)
		waitFor(t, 20*time.Second, "echo-2 admitted again", func() bool { return tryLines(netnsOf("demo", "echo-2"), client+":9000") })
	})

	t.Run("back-to-back connections arrive in the order they were opened", func(t *testing.T) {
		// A server of the test's own inside echo-2's namespace records the
		// order in which connections are accepted.
		l, err := nsnet.Listen(context.Background(), netnsOf("demo", "echo-2"), ":9300", nsnet.SocketOptions{})
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		// The accept loop reads each connection's first line before the
		// next accept, so the channel holds the accept order.
		accepted := make(chan string, 1000)
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				line, _ := bufio.NewReader(c).ReadString('\n')
				c.Close()
				accepted <- strings.TrimSpace(line)
			}
		}()
		dial := nsnet.DialFunc(netnsOf("demo", "client"), nsnet.SocketOptions{}, nil)
		const pairs = 300
		reordered := 0
		for i := range pairs {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			a, err := dial(ctx, "tcp", echo2+":9300")
			if err != nil {
				cancel()
				t.Fatalf("pair %d: %v", i, err)
			}
			b, err := dial(ctx, "tcp", echo2+":9300")
			cancel()
			if err != nil {
				t.Fatalf("pair %d: %v", i, err)
			}
			fmt.Fprintf(a, "%d-A\n", i)
			fmt.Fprintf(b, "%d-B\n", i)
			first, second := <-accepted, <-accepted
			if first != fmt.Sprintf("%d-A", i) || second != fmt.Sprintf("%d-B", i) {
				reordered++
			}
			a.Close()
			b.Close()
		}
		if reordered != 0 {
			t.Errorf("%d of %d pairs arrived out of order", reordered, pairs)
		}
	})

}

// TestIperfBidir runs iperf3 --bidir through the mesh ten times: iperf3
// gives its streams their roles by accept order, so a mesh that reorders
// connections hangs it.
func TestIperfBidir(t *testing.T) {
	stateDir := filepath.Join(t.TempDir(), "state")
	cfg := copyDir(t, filepath.Join(repoRoot(), "samples", "demo"))
	t.Cleanup(func() { _, _ = ambit(t, 60*time.Second, "local", "down", "--state-dir", stateDir) })
	mustAmbit(t, 90*time.Second, "local", "up", "-f", cfg, "--state-dir", stateDir)
	st := readStatus(t, stateDir)
	echo2 := st.podIP(t, "demo", "echo-2")
	server := exec.Command("ip", "netns", "exec", filepath.Base(podNetns(t, stateDir, "demo", "echo-2")), "iperf3", "-s", "-p", "5201")
	var serverOut bytes.Buffer
	server.Stdout, server.Stderr = &serverOut, &serverOut
	if err := server.Start(); err != nil {
		t.Fatalf("iperf3 server: %v", err)
	}
	defer func() { _ = server.Process.Kill(); _ = server.Wait() }()
	time.Sleep(500 * time.Millisecond)
	runs := 10
	for i := range runs {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		out, err := exec.CommandContext(ctx, "ip", "netns", "exec", filepath.Base(podNetns(t, stateDir, "demo", "client")),
			"iperf3", "-c", echo2, "-p", "5201", "--bidir", "-t", "20", "-J").Output()
		cancel()
		if err != nil {
			t.Fatalf("run %d of %d: %v\n%s\nserver:\n%s", i+1, runs, err, tailString(string(out), 2000), tailString(serverOut.String(), 2000))
		}
		var res struct {
			End struct {
				SumSent struct {
					BitsPerSecond float64 `json:"bits_per_second"`
				} `json:"sum_sent"`
				SumSentBidi struct {
					BitsPerSecond float64 `json:"bits_per_second"`
				} `json:"sum_sent_bidir_reverse"`
			} `json:"end"`
			Error string `json:"error"`
		}
		if err := json.Unmarshal(out, &res); err != nil || res.Error != "" {
			t.Fatalf("run %d: %v %s", i+1, err, res.Error)
		}
		up, down := res.End.SumSent.BitsPerSecond, res.End.SumSentBidi.BitsPerSecond
		t.Logf("run %d: %.2f Gbit/s up, %.2f Gbit/s down", i+1, up/1e9, down/1e9)
		if up < 1e6 || down < 1e6 {
			t.Fatalf("run %d: a direction stalled (%.0f / %.0f bit/s)", i+1, up, down)
		}
	}
}

func tailString(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// startCapture runs tcpdump on an interface of a namespace; the returned
// function stops it and returns what it printed.
func startCapture(t *testing.T, netns, iface, filter string) func() string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", netns, "tcpdump", "-i", iface, "-n", "-l", "-s", "128"}, strings.Fields(filter)...)...)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("tcpdump: %v", err)
	}
	time.Sleep(time.Second) // let it attach
	var once sync.Once
	var text string
	stop := func() string {
		once.Do(func() {
			time.Sleep(500 * time.Millisecond)
			cancel()
			_ = cmd.Wait()
			text = out.String()
		})
		return text
	}
	t.Cleanup(func() { stop() })
	return stop
}

// packetLines keeps tcpdump's packet lines.
func packetLines(s string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, " IP ") && strings.Contains(l, " > ") {
			out = append(out, l)
		}
	}
	return out
}

// podHTTPClient makes a fresh connection per request from inside a pod.
func podHTTPClient(netns string, timeout time.Duration) *http.Client {
	dial := nsnet.DialFunc(netns, nsnet.SocketOptions{}, nil)
	return &http.Client{Timeout: timeout, Transport: &http.Transport{DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) { return dial(ctx, network, addr) }}}
}

func getOK(hc *http.Client, url string) bool {
	resp, err := hc.Get(url)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	_, err = io.Copy(io.Discard, resp.Body)
	return err == nil && resp.StatusCode == http.StatusOK
}

// lineConn is an open connection to a line echo server (tcp-echo).
type lineConn struct {
	c net.Conn
	r *bufio.Reader
}

func dialLines(t *testing.T, netns, addr string) *lineConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := nsnet.DialFunc(netns, nsnet.SocketOptions{}, nil)(ctx, "tcp", addr)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	lc := &lineConn{c: c, r: bufio.NewReader(c)}
	if !lc.echoes() {
		t.Fatalf("connection to %s does not echo", addr)
	}
	return lc
}

func tryLines(netns, addr string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := nsnet.DialFunc(netns, nsnet.SocketOptions{}, nil)(ctx, "tcp", addr)
	if err != nil {
		return false
	}
	defer c.Close()
	return (&lineConn{c: c, r: bufio.NewReader(c)}).echoes()
}

// echoes sends a line and reports whether it came back.
func (l *lineConn) echoes() bool {
	l.c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := fmt.Fprintf(l.c, "line %d\n", time.Now().UnixNano()); err != nil {
		return false
	}
	line, err := l.r.ReadString('\n')
	return err == nil && strings.HasPrefix(line, "line ")
}

// closedWithin waits up to d for the connection to end (it writes a line
// every 100 ms, as a client of a long-lived connection would), and says
// how long it took.
func (l *lineConn) closedWithin(d time.Duration) (time.Duration, bool) {
	start := time.Now()
	for time.Since(start) < d {
		if !l.echoes() {
			return time.Since(start), true
		}
		time.Sleep(100 * time.Millisecond)
	}
	return d, false
}

// ztunnelPIDs lists the running ztunnels of a node, oldest first.
func ztunnelPIDs(node string) []int {
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		var pid int
		if _, err := fmt.Sscan(e.Name(), &pid); err != nil || !alive(pid) {
			continue
		}
		cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if bytes.Contains(cmd, []byte("ztunnel\x00--node\x00"+node+"\x00")) && !bytes.Contains(cmd, []byte("nsexec")) {
			pids = append(pids, pid)
		}
	}
	sort.Ints(pids)
	return pids
}

// newestZtunnel is the node's most recently started ztunnel (0 if none).
func newestZtunnel(t *testing.T, node string) int {
	pids := ztunnelPIDs(node)
	if len(pids) == 0 {
		return 0
	}
	return pids[len(pids)-1]
}

// ztunnelReady asks the readiness endpoint in a node's namespace.
func ztunnelReady(netns string) bool {
	out, err := exec.Command("ip", "netns", "exec", netns, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "2", "http://127.0.0.1:15021/healthz/ready").Output()
	return err == nil && string(out) == "200"
}

func metricsOf(t *testing.T, node string) string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", "ambit-"+node, "curl", "-sS", "-m", "5", "http://127.0.0.1:15020/metrics").CombinedOutput()
	if err != nil {
		t.Fatalf("metrics of %s: %v %s", node, err, out)
	}
	return string(out)
}

// failedCount sums istio_tcp_connections_failed_total for a reporter and
// response flag.
func failedCount(t *testing.T, node, reporter, flags string) float64 {
	t.Helper()
	var sum float64
	for _, l := range strings.Split(metricsOf(t, node), "\n") {
		if strings.HasPrefix(l, "istio_tcp_connections_failed_total{") && strings.Contains(l, `reporter="`+reporter+`"`) && strings.Contains(l, `response_flags="`+flags+`"`) {
			var v float64
			if _, err := fmt.Sscan(l[strings.LastIndexByte(l, ' ')+1:], &v); err == nil {
				sum += v
			}
		}
	}
	return sum
}

// logTime is a log record's time.
func logTime(r map[string]any) time.Time {
	ts, _ := time.Parse(time.RFC3339Nano, fmt.Sprint(r["time"]))
	return ts
}
