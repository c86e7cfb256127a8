package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/nsnet"
	"github.com/ambit-mesh/ambit/samples"
)

// The shop namespace: a client, three echo pods (two v1, one v2) behind
// Services echo (all), echo-v1, echo-v2, api (all) and echo-grpc (all),
// and routes and policies an Istio user would write. The waypoint comes
// later (waypointYAML), as users add it.
var shopYAML = `
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {istio.io/dataplane-mode: ambient}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: client, namespace: shop}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: echo, namespace: shop}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: shop}
spec:
  nodeName: node1
  serviceAccountName: client
  containers: [{name: main, command: [sleep, "100000"]}]
` + echoPod("echo-v1-a", "node1", "v1") + echoPod("echo-v1-b", "node2", "v1") + echoPod("echo-v2", "node2", "v2") +
	service("echo", "") + service("echo-v1", "v1") + service("echo-v2", "v2") + service("api", "") + service("echo-grpc", "") +
	bannerPod("banner-a", "node1", "a") + bannerPod("banner-b", "node2", "b") + `
---
apiVersion: v1
kind: Service
metadata: {name: banner, namespace: shop}
spec:
  selector: {app: banner}
  ports: [{name: tcp-banner, port: 2525, targetPort: 2525}]
---
apiVersion: v1
kind: Service
metadata: {name: banner-b, namespace: shop}
spec:
  selector: {app: banner, which: b}
  ports: [{name: tcp-banner, port: 2525, targetPort: 2525}]
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {name: banner, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: banner, port: 2525}]
  rules:
  - backendRefs: [{name: banner-b, port: 2525}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: ingress, namespace: shop}
spec:
  gatewayClassName: some-other-class
  listeners: [{name: http, port: 80, protocol: HTTP}]
---
# vault: no waypoint; an ALLOW with HTTP fields, which ztunnel cannot
# check, denies everything (upstream's rule).
apiVersion: v1
kind: Namespace
metadata:
  name: vault
  labels: {istio.io/dataplane-mode: ambient}
---
apiVersion: v1
kind: Pod
metadata: {name: vault, namespace: vault, labels: {app: vault}}
spec:
  nodeName: node2
  containers: [{name: echo, command: [ambit, sample, echo, --port, "8080"]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: get-only, namespace: vault}
spec:
  selector: {matchLabels: {app: vault}}
  action: ALLOW
  rules:
  - to: [{operation: {methods: [GET]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: echo, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 8080}]
  rules:
  - matches: [{headers: [{name: x-canary, value: "1"}]}]
    backendRefs: [{name: echo-v2, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /rewrite}}]
    filters:
    - type: URLRewrite
      urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /rewritten}}
    - type: RequestHeaderModifier
      requestHeaderModifier: {add: [{name: x-added, value: by-route}], remove: [x-secret]}
    backendRefs: [{name: echo-v1, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /moved}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {hostname: shop.example, statusCode: 301}
  - matches: [{path: {type: PathPrefix, value: /delay}}]
    timeouts: {request: 200ms}
    backendRefs: [{name: echo-v1, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /flaky}}]
    retry: {attempts: 2, codes: [503]}
    backendRefs: [{name: echo-v1, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /keepalive}}]
    backendRefs: [{name: echo-v1, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /missing}}]
    backendRefs: [{name: no-such-service, port: 8080}]
  - backendRefs:
    - {name: echo-v1, port: 8080, weight: 90}
    - {name: echo-v2, port: 8080, weight: 10}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: echo-grpc, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: echo-grpc}]
  rules:
  - matches: [{method: {service: ambit.samples.Echo, method: Echo}}]
    backendRefs: [{name: echo-v2, port: 8080}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: api-l7, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: api}]
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/shop/sa/client]}}]
    to: [{operation: {methods: [GET], paths: [/public*]}}]
`

// waypointYAML adds the waypoint and an L4 policy that admits traffic to
// the echo pods only from it (upstream's way to stop bypasses).
const waypointYAML = `
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: shop}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-via-waypoint, namespace: shop}
spec:
  selector: {matchLabels: {app: echo}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/shop/sa/waypoint]}}]
`

func echoPod(name, node, version string) string {
	return fmt.Sprintf(`
---
apiVersion: v1
kind: Pod
metadata: {name: %s, namespace: shop, labels: {app: echo, version: %s}}
spec:
  nodeName: %s
  serviceAccountName: echo
  containers:
  - name: echo
    command: [ambit, sample, echo, --port, "8080"]
    env: [{name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}]
`, name, version, node)
}

func bannerPod(name, node, which string) string {
	return fmt.Sprintf(`
---
apiVersion: v1
kind: Pod
metadata: {name: %s, namespace: shop, labels: {app: banner, which: %s}}
spec:
  nodeName: %s
  containers:
  - name: banner
    command: [ambit, sample, banner, --port, "2525"]
    env: [{name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}]
`, name, which, node)
}

// greeting dials addr from netns and reads a banner's first line.
func greeting(netns, addr string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := nsnet.DialFunc(netns, nsnet.SocketOptions{}, nil)(ctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

func service(name, version string) string {
	sel := "{app: echo}"
	if version != "" {
		sel = "{app: echo, version: " + version + "}"
	}
	return fmt.Sprintf(`
---
apiVersion: v1
kind: Service
metadata: {name: %s, namespace: shop}
spec:
  selector: %s
  ports: [{name: http, port: 8080, targetPort: 8080}]
`, name, sel)
}

// shopClient sends requests from the shop client pod: through its
// ztunnel, as the pod's own sockets do.
type shopClient struct {
	hc *http.Client
}

func newShopClient(netns string, keepAlive bool) *shopClient {
	dial := nsnet.DialFunc(netns, nsnet.SocketOptions{}, nil)
	tr := &http.Transport{DisableKeepAlives: !keepAlive, MaxConnsPerHost: 1, MaxIdleConnsPerHost: 1,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) { return dial(ctx, network, addr) }}
	return &shopClient{hc: &http.Client{Timeout: 5 * time.Second, Transport: tr,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

type shopResp struct {
	code   int
	header http.Header
	body   string
	echo   *samples.EchoReply
	took   time.Duration
}

func (c *shopClient) do(method, url string, hdr map[string]string) (*shopResp, error) {
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		return nil, err
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	start := time.Now()
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	r := &shopResp{code: resp.StatusCode, header: resp.Header, body: string(b), took: time.Since(start)}
	if resp.StatusCode == http.StatusOK {
		r.echo, _ = samples.ParseEchoText(r.body)
	}
	return r, nil
}

func TestWaypoint(t *testing.T) {
	stateDir := filepath.Join(t.TempDir(), "state")
	cfg := t.TempDir()
	write := func(name, data string) {
		t.Helper()
		if err := replaceConfigFile(filepath.Join(cfg, name), data); err != nil {
			t.Fatal(err)
		}
	}
	write("shop.yaml", shopYAML)
	t.Cleanup(func() { _, _ = ambit(t, 60*time.Second, "local", "down", "--state-dir", stateDir) })
	mustAmbit(t, 120*time.Second, "local", "up", "-f", cfg, "--state-dir", stateDir)
	st := readStatus(t, stateDir)
	vip := map[string]string{}
	for _, s := range st.Services {
		if s.Namespace == "shop" {
			vip[s.Name] = s.ClusterIP
		}
	}
	clientNS := podNetns(t, stateDir, "shop", "client")
	c := newShopClient(clientNS, false)
	echoURL := "http://" + vip["echo"] + ":8080"
	pids := map[string]int{}
	for _, p := range []string{"client", "echo-v1-a", "echo-v1-b", "echo-v2"} {
		pids[p] = podPID(t, stateDir, "shop", p)
	}

	t.Run("without a waypoint, routes change nothing and targetRefs policies wait for one", func(t *testing.T) {
		r, err := c.do("GET", echoURL+"/rewrite/x", nil)
		if err != nil || r.echo == nil {
			t.Fatalf("GET /rewrite/x: %v %+v", err, r)
		}
		if r.echo.URL != "/rewrite/x" || len(r.echo.Headers["X-Added"]) != 0 {
			t.Errorf("without a waypoint the route applied: echo saw %s %v", r.echo.URL, r.echo.Headers)
		}
		seen := map[string]int{}
		for i := 0; i < 30; i++ {
			r, err := c.do("GET", echoURL+"/", map[string]string{"x-canary": "1"})
			if err != nil || r.echo == nil {
				t.Fatalf("GET / x-canary: %v", err)
			}
			seen[r.echo.Pod]++
		}
		if seen["echo-v1-a"]+seen["echo-v1-b"] == 0 {
			t.Errorf("without a waypoint x-canary still went only to v2: %v (L4 balancing spreads it)", seen)
		}
		// A policy with targetRefs is a waypoint's: without one, ztunnel
		// does not take it (upstream), and status says why.
		if r, err := c.do("POST", "http://"+vip["api"]+":8080/admin", nil); err != nil || r.code != 200 {
			t.Errorf("POST /admin to api without a waypoint: %v %+v", err, r)
		}
		out := mustAmbit(t, 10*time.Second, "local", "status", "--state-dir", stateDir)
		if !strings.Contains(out, "shop/api-l7") || !strings.Contains(out, "waypoint") {
			t.Errorf("status does not say the L7 policy waits for a waypoint:\n%s", out)
		}
		// A selector policy with HTTP fields: ztunnel denies, and says why.
		vault := "http://" + st.podIP(t, "vault", "vault") + ":8080/"
		if r, err := c.do("GET", vault, nil); err == nil {
			t.Errorf("GET to vault under an ALLOW with HTTP fields and no waypoint got %d, want refused", r.code)
		}
		if !strings.Contains(out, "vault/get-only") {
			t.Errorf("status does not warn about vault/get-only:\n%s", out)
		}
		// A Gateway of another class is ignored, with a reason.
		if !regexp.MustCompile(`shop\s+ingress\s+-\s+-\s+false\s+false.*not served by Ambit`).MatchString(out) {
			t.Errorf("status does not say the ingress Gateway is ignored:\n%s", out)
		}
	})

	// Add the waypoint, then bind the namespace to it: no pod restarts.
	write("waypoint.yaml", waypointYAML)
	waitFor(t, 60*time.Second, "the waypoint pod running", func() bool {
		for _, p := range readStatus(t, stateDir).Pods {
			if p.Namespace == "shop" && p.Name == "waypoint" {
				return p.Phase == "Running"
			}
		}
		return false
	})
	write("shop.yaml", strings.Replace(shopYAML, "labels: {istio.io/dataplane-mode: ambient}",
		"labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}", 1))
	waitFor(t, 30*time.Second, "requests following the route", func() bool {
		r, err := c.do("GET", echoURL+"/rewrite/x", nil)
		return err == nil && r.echo != nil && r.echo.URL == "/rewritten/x"
	})
	for p, pid := range pids {
		if got := podPID(t, stateDir, "shop", p); got != pid {
			t.Errorf("pod %s restarted (pid %d -> %d) when its namespace joined the waypoint", p, pid, got)
		}
	}
	wpID := "spiffe://cluster.local/ns/shop/sa/waypoint"

	t.Run("a rewrite and header modifiers reach the backend", func(t *testing.T) {
		r, err := c.do("GET", echoURL+"/rewrite/deep/path?q=1", map[string]string{"x-secret": "s3cret"})
		if err != nil || r.echo == nil {
			t.Fatalf("%v %+v", err, r)
		}
		if r.echo.URL != "/rewritten/deep/path?q=1" {
			t.Errorf("echo saw %s, want /rewritten/deep/path?q=1", r.echo.URL)
		}
		if got := r.echo.Headers["X-Added"]; len(got) != 1 || got[0] != "by-route" {
			t.Errorf("x-added %v, want [by-route]", got)
		}
		if got := r.echo.Headers["X-Secret"]; len(got) != 0 {
			t.Errorf("x-secret %v reached the backend; the route removes it", got)
		}
		if tp := r.echo.Headers["Traceparent"]; len(tp) != 1 || !regexp.MustCompile(`^00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]$`).MatchString(tp[0]) {
			t.Errorf("traceparent at the backend %v", tp)
		}
		if !strings.HasPrefix(r.echo.Pod, "echo-v1-") {
			t.Errorf("/rewrite served by %s, want echo-v1", r.echo.Pod)
		}
	})

	t.Run("header match sends x-canary: 1 to v2", func(t *testing.T) {
		for i := 0; i < 20; i++ {
			r, err := c.do("GET", echoURL+"/", map[string]string{"x-canary": "1"})
			if err != nil || r.echo == nil || r.echo.Pod != "echo-v2" {
				t.Fatalf("request %d: %v %+v", i, err, r)
			}
		}
	})

	t.Run("a 90/10 split lands within 5% over 2000 requests", func(t *testing.T) {
		var mu sync.Mutex
		counts := map[string]int{}
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for w := 0; w < 8; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				kc := newShopClient(clientNS, true)
				for i := 0; i < 250; i++ {
					r, err := kc.do("GET", echoURL+"/split", nil)
					if err != nil || r.echo == nil {
						errs <- fmt.Errorf("%v %+v", err, r)
						return
					}
					mu.Lock()
					counts[r.echo.Pod]++
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		v2 := counts["echo-v2"]
		t.Logf("split over 2000: %v (v2 %.1f%%)", counts, float64(v2)/20)
		logged := map[string]int{}
		for _, l := range waypointLog(t, stateDir) {
			if l["path"] == "/split" {
				logged[fmt.Sprint(l["dst.workload"], " ", l["code"], " ", l["retries"])]++
			}
		}
		t.Logf("waypoint log for /split: %v", logged)
		if v2 < 100 || v2 > 300 {
			t.Errorf("v2 got %d of 2000, want 200 ± 100", v2)
		}
	})

	t.Run("requests over one keep-alive connection spread across endpoints", func(t *testing.T) {
		kc := newShopClient(clientNS, true)
		seen, sources := map[string]int{}, map[string]bool{}
		for i := 0; i < 40; i++ {
			r, err := kc.do("GET", echoURL+"/keepalive", nil)
			if err != nil || r.echo == nil {
				t.Fatalf("%v %+v", err, r)
			}
			seen[r.echo.Pod]++
			sources[r.header.Get("X-Ambit-Source")] = true
		}
		if seen["echo-v1-a"] == 0 || seen["echo-v1-b"] == 0 {
			t.Errorf("40 requests on one connection reached %v, want both v1 pods", seen)
		}
	})

	t.Run("a redirect answers 301 with the Location", func(t *testing.T) {
		r, err := c.do("GET", echoURL+"/moved/here?x=1", nil)
		if err != nil {
			t.Fatal(err)
		}
		if loc := r.header.Get("Location"); r.code != 301 || !strings.HasPrefix(loc, "http://shop.example") || !strings.HasSuffix(loc, "/moved/here?x=1") {
			t.Errorf("got %d Location %q, want 301 http://shop.example[:port]/moved/here?x=1", r.code, loc)
		}
	})

	t.Run("a 200 ms timeout answers 504 in about 200 ms", func(t *testing.T) {
		r, err := c.do("GET", echoURL+"/delay/2s", nil)
		if err != nil {
			t.Fatal(err)
		}
		if r.code != http.StatusGatewayTimeout || r.took < 180*time.Millisecond || r.took > 900*time.Millisecond {
			t.Errorf("got %d after %v, want 504 after about 200ms", r.code, r.took)
		}
		if r, err := c.do("GET", echoURL+"/delay/20ms", nil); err != nil || r.code != 200 {
			t.Errorf("a fast request under the timeout: %v %+v", err, r)
		}
	})

	t.Run("retries recover from a backend that fails 1 in 3", func(t *testing.T) {
		for i := 0; i < 30; i++ {
			r, err := c.do("GET", echoURL+"/flaky/3", nil)
			if err != nil || r.code != 200 {
				t.Fatalf("request %d: %v %+v", i, err, r)
			}
		}
		found := false
		for _, l := range waypointLog(t, stateDir) {
			if l["path"] == "/flaky/3" && l["retries"].(float64) > 0 {
				found = true
			}
		}
		if !found {
			t.Errorf("no retried /flaky/3 in the waypoint's access log")
		}
	})

	t.Run("a TCPRoute sends a server-first TCP service to its backend", func(t *testing.T) {
		for i := 0; i < 10; i++ {
			line, err := greeting(clientNS, vip["banner"]+":2525")
			if err != nil || line != samples.BannerGreeting("banner-b") {
				t.Fatalf("connection %d: %q %v, want banner-b's greeting", i, line, err)
			}
		}
		waitFor(t, 10*time.Second, "the waypoint's log of a TCP connection to banner-b", func() bool {
			for _, l := range waypointLog(t, stateDir) {
				if l["protocol"] == "tcp" && l["dst.workload"] == "banner-b" {
					return true
				}
			}
			return false
		})
	})

	t.Run("a route to a missing backend answers 500 and says why", func(t *testing.T) {
		r, err := c.do("GET", echoURL+"/missing", nil)
		if err != nil || r.code != 500 || !strings.Contains(r.body, "no-such-service") {
			t.Fatalf("got %v %+v, want 500 naming the backend", err, r)
		}
	})

	t.Run("L7 authorization at the waypoint", func(t *testing.T) {
		api := "http://" + vip["api"] + ":8080"
		for i := 0; i < 10; i++ {
			if r, err := c.do("GET", api+"/public/item", nil); err != nil || r.code != 200 {
				t.Fatalf("GET /public/item: %v %+v", err, r)
			}
		}
		for i := 0; i < 5; i++ {
			r, err := c.do("POST", api+"/admin", nil)
			if err != nil || r.code != 403 || !strings.Contains(r.body, "RBAC: access denied") {
				t.Fatalf("POST /admin: %v %+v, want 403 from the waypoint", err, r)
			}
		}
		if r, err := c.do("GET", api+"/public/../admin", nil); err != nil || r.code != 403 {
			t.Errorf("GET /public/../admin: %v %+v, want 403 (paths are normalized before authorization)", err, r)
		}
		// The destination ztunnel sees the waypoint's identity (on
		// connections the waypoint keeps alive: counted when opened).
		if m := metricsOf(t, "node2"); !regexp.MustCompile(`istio_tcp_connections_opened_total\{[^}]*reporter="destination"[^}]*source_principal="` + regexp.QuoteMeta(wpID) + `"`).MatchString(m) {
			t.Errorf("node2's ztunnel counted no inbound connection from the waypoint %s", wpID)
		}
		// A direct pod-IP call skips the waypoint (the waypoint is for
		// services) and the L4 policy refuses it, as upstream.
		direct := "http://" + st.podIP(t, "shop", "echo-v1-b") + ":8080/"
		if r, err := c.do("GET", direct, nil); err == nil {
			t.Errorf("a direct pod-IP call bypassing the waypoint got %d", r.code)
		}
	})

	t.Run("gRPC follows its GRPCRoute, many streams over HTTP/2", func(t *testing.T) {
		out, err := ambit(t, 60*time.Second, "local", "exec", "--state-dir", stateDir, "shop/client", "--",
			"ambit", "sample", "client", "grpc://"+vip["echo-grpc"]+":8080", "-n", "200", "-c", "20", "-o", "json", "--timeout", "5s")
		if err != nil || !strings.Contains(out, `"echo-v2": 200`) && !strings.Contains(out, `"echo-v2":200`) {
			t.Fatalf("gRPC through the waypoint: %v\n%.1500s", err, out)
		}
	})

	t.Run("status shows the waypoint, what it serves and the route's missing backend", func(t *testing.T) {
		out := mustAmbit(t, 10*time.Second, "local", "status", "-o", "json", "--state-dir", stateDir)
		var st struct {
			Waypoints []struct {
				Namespace, Name string
				Programmed      bool
				Addresses       []string
				Services        []string
			} `json:"waypoints"`
			Routes []struct {
				Kind, Name string
				Conditions []struct{ Type, Status, Reason, Message string }
			} `json:"routes"`
		}
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			t.Fatal(err)
		}
		i := slices.IndexFunc(st.Waypoints, func(w struct {
			Namespace, Name string
			Programmed      bool
			Addresses       []string
			Services        []string
		}) bool {
			return w.Namespace == "shop" && w.Name == "waypoint"
		})
		if i < 0 || !st.Waypoints[i].Programmed || len(st.Waypoints[i].Addresses) != 1 ||
			!slices.Contains(st.Waypoints[i].Services, "shop/echo") || !slices.Contains(st.Waypoints[i].Services, "shop/api") ||
			slices.Contains(st.Waypoints[i].Services, "shop/waypoint") {
			t.Errorf("waypoints in status: %+v", st.Waypoints)
		}
		missing := false
		for _, r := range st.Routes {
			for _, c := range r.Conditions {
				if r.Kind == "HTTPRoute" && r.Name == "echo" && c.Type == "ResolvedRefs" && c.Status == "False" && c.Reason == "BackendNotFound" && strings.Contains(c.Message, "no-such-service") {
					missing = true
				}
			}
		}
		if !missing {
			t.Errorf("route status does not report the missing backend: %+v", st.Routes)
		}
		text := mustAmbit(t, 10*time.Second, "local", "status", "--state-dir", stateDir)
		for _, want := range []string{"WAYPOINT", "ROUTE CONDITIONS", "BackendNotFound"} {
			if !strings.Contains(text, want) {
				t.Errorf("status text lacks %q:\n%s", want, text)
			}
		}
	})

	t.Run("authz check says which layer decided", func(t *testing.T) {
		for _, tc := range []struct {
			args []string
			want []string
		}{
			{[]string{"--to", "shop/api:8080", "--method", "POST", "--path", "/admin"},
				[]string{"layer 1, waypoint shop/waypoint (L7, POST /admin): DENY", "no ALLOW policy matched", "DENY (decided by the waypoint)"}},
			{[]string{"--to", "shop/api:8080", "--method", "GET", "--path", "/public/x"},
				[]string{"layer 1, waypoint shop/waypoint (L7, GET /public/x): ALLOW", "allowed by shop/api-l7/rule-0",
					"layer 2, destination ztunnel (L4), from the waypoint as spiffe://cluster.local/ns/shop/sa/waypoint", "shop/only-via-waypoint", "\nALLOW\n"}},
			{[]string{"--to", "shop/echo-v1-b:8080"},
				[]string{"destination ztunnel (L4)", "shop/echo-v1-b: DENY", "DENY (decided by the destination ztunnel)"}},
		} {
			out, _ := ambit(t, 30*time.Second, append([]string{"authz", "check", "--state-dir", stateDir, "--from", "shop/client"}, tc.args...)...)
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("authz check %v: output lacks %q:\n%s", tc.args, w, out)
				}
			}
		}
		out := mustAmbit(t, 20*time.Second, "ztunnel-config", "services", "--state-dir", stateDir, "--node", "node1")
		if !regexp.MustCompile(`shop\s+echo\s+\S+\s+shop/waypoint.shop.svc.cluster.local`).MatchString(out) {
			t.Errorf("ztunnel-config services does not show echo's waypoint:\n%s", out)
		}
	})

	t.Run("ambit waypoint apply, list, status and delete", func(t *testing.T) {
		out := mustAmbit(t, 90*time.Second, "waypoint", "apply", "--state-dir", stateDir, "-n", "shop", "--name", "wp2", "--for", "workload")
		if !strings.Contains(out, "waypoint shop/wp2 programmed at 10.") {
			t.Fatalf("apply: %s", out)
		}
		out = mustAmbit(t, 10*time.Second, "waypoint", "list", "--state-dir", stateDir, "-n", "shop")
		if !regexp.MustCompile(`shop\s+waypoint\s+service\s+true`).MatchString(out) || !regexp.MustCompile(`shop\s+wp2\s+workload\s+true`).MatchString(out) {
			t.Errorf("list:\n%s", out)
		}
		out = mustAmbit(t, 10*time.Second, "waypoint", "status", "--state-dir", stateDir, "-n", "shop")
		for _, w := range []string{"Programmed: true", "shop/api", "shop/echo"} {
			if !strings.Contains(out, w) {
				t.Errorf("status lacks %q:\n%s", w, out)
			}
		}
		if out, err := ambit(t, 10*time.Second, "waypoint", "apply", "--state-dir", stateDir, "-n", "shop", "--for", "everything"); err == nil || !strings.Contains(out, "want service, workload, all or none") {
			t.Errorf("apply --for everything: %v %s", err, out)
		}
		if out, err := ambit(t, 10*time.Second, "waypoint", "apply", "--state-dir", stateDir, "-n", "nosuch"); err == nil || !strings.Contains(out, "no Namespace nosuch") {
			t.Errorf("apply into a namespace that does not exist: %v %s", err, out)
		}
		mustAmbit(t, 10*time.Second, "waypoint", "delete", "--state-dir", stateDir, "-n", "shop", "--name", "wp2")
		waitFor(t, 30*time.Second, "wp2 gone", func() bool {
			out := mustAmbit(t, 10*time.Second, "waypoint", "list", "--state-dir", stateDir, "-n", "shop")
			for _, p := range readStatus(t, stateDir).Pods {
				if p.Namespace == "shop" && p.Name == "wp2" {
					return false // its pod still runs
				}
			}
			return !strings.Contains(out, "wp2")
		})
		if out, err := ambit(t, 10*time.Second, "waypoint", "delete", "--state-dir", stateDir, "-n", "shop", "--name", "waypoint"); err == nil || !strings.Contains(out, "not created by ambit waypoint apply") {
			t.Errorf("delete of a user's Gateway: %v %s", err, out)
		}
	})

	t.Run("istio_requests_total counts by response code", func(t *testing.T) {
		m := waypointMetrics(t, stateDir)
		count := func(svc, code string) float64 {
			total := 0.0
			for _, line := range strings.Split(m, "\n") {
				if strings.HasPrefix(line, "istio_requests_total{") && strings.Contains(line, `destination_service="`+svc+`.shop.svc.cluster.local"`) &&
					strings.Contains(line, `response_code="`+code+`"`) && strings.Contains(line, `reporter="waypoint"`) {
					v, _ := strconv.ParseFloat(line[strings.LastIndex(line, " ")+1:], 64)
					total += v
				}
			}
			return total
		}
		if got := count("api", "200"); got != 10 {
			t.Errorf("api 200: %v, want 10", got)
		}
		if got := count("api", "403"); got != 6 {
			t.Errorf("api 403: %v, want 6", got)
		}
		if got := count("echo", "504"); got != 1 {
			t.Errorf("echo 504: %v, want 1", got)
		}
		for _, want := range []string{`source_principal="spiffe://cluster.local/ns/shop/sa/client"`, `connection_security_policy="mutual_tls"`,
			`request_protocol="grpc"`, "istio_request_duration_milliseconds_bucket{", "istio_request_bytes_count{", "istio_response_bytes_sum{"} {
			if !strings.Contains(m, want) {
				t.Errorf("metrics lack %s", want)
			}
		}
	})

	// Last, as it restarts the waypoint: killed or stopped under traffic,
	// nothing goes around it, and it comes back.
	t.Run("the waypoint killed or stopped under traffic: refused, never bypassed, then back", func(t *testing.T) {
		for _, sig := range []syscall.Signal{syscall.SIGKILL, syscall.SIGTERM} {
			old := podPID(t, stateDir, "shop", "waypoint")
			if old == 0 {
				t.Fatal("no waypoint pid")
			}
			if err := syscall.Kill(old, sig); err != nil {
				t.Fatal(err)
			}
			ok, failed := 0, 0
			deadline := time.Now().Add(30 * time.Second)
			for time.Now().Before(deadline) {
				r, err := c.do("GET", echoURL+"/rewrite/x", nil)
				switch {
				case err != nil || r.code >= 500:
					failed++
				case r.echo == nil || r.echo.URL != "/rewritten/x":
					t.Fatalf("%v: a request went around the waypoint: %+v", sig, r)
				default:
					ok++
				}
				if pid := podPID(t, stateDir, "shop", "waypoint"); pid != 0 && pid != old && ok >= 5 {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			t.Logf("%v: %d requests refused while the waypoint was down, %d served through it", sig, failed, ok)
			if ok < 5 {
				t.Fatalf("%v: the waypoint did not come back within 30s", sig)
			}
		}
	})
}

// waypointLog returns the shop waypoint's access-log lines.
func waypointLog(t *testing.T, stateDir string) []map[string]any {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(stateDir, "pods", "shop_waypoint.log"))
	if err != nil {
		t.Fatal(err)
	}
	var out []map[string]any
	for _, line := range strings.Split(string(data), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil && m["scope"] == "access" {
			out = append(out, m)
		}
	}
	return out
}

// waypointMetrics fetches the shop waypoint's /metrics from inside its pod.
func waypointMetrics(t *testing.T, stateDir string) string {
	t.Helper()
	ns := podNetns(t, stateDir, "shop", "waypoint")
	out, err := exec.Command("ip", "netns", "exec", filepath.Base(ns), "curl", "-sS", "-m", "5", "http://127.0.0.1:15020/metrics").CombinedOutput()
	if err != nil {
		t.Fatalf("waypoint metrics: %v %s", err, out)
	}
	return string(out)
}
