package router_test

import (
	"math/rand/v2"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"

	"github.com/ambit-mesh/ambit/controlplane/routes"
	"github.com/ambit-mesh/ambit/waypoint/router"
)

func TestInvalidBackendPrefixIsTheControlPlanes(t *testing.T) {
	if router.InvalidBackendPrefix != routes.InvalidBackendPrefix {
		t.Fatalf("router %q, routes %q", router.InvalidBackendPrefix, routes.InvalidBackendPrefix)
	}
}

func TestRedirectLocation(t *testing.T) {
	for _, tc := range []struct {
		name     string
		redirect string // RedirectAction, text
		match    string // RouteMatch, text; default prefix "/"
		scheme   string
		host     string
		path     string
		status   int
		location string
	}{
		{"host only: request port dropped (Envoy)", `host_redirect: "example.org"`, "", "", "echo:8080", "/a?q=1", 301, "http://example.org/a?q=1"},
		{"host and port", `host_redirect: "example.org" port_redirect: 8443 response_code: FOUND`, "", "", "echo:8080", "/a", 302, "http://example.org:8443/a"},
		{"port only replaces the request's", `port_redirect: 9000 response_code: SEE_OTHER`, "", "", "echo:8080", "/a", 303, "http://echo:9000/a"},
		{"default port omitted", `port_redirect: 80 response_code: TEMPORARY_REDIRECT`, "", "", "echo:8080", "/a", 307, "http://echo/a"},
		{"https with 443 omitted", `scheme_redirect: "https" port_redirect: 443 response_code: PERMANENT_REDIRECT`, "", "", "echo:8080", "/a", 308, "https://echo/a"},
		{"https_redirect keeps a non-default request port", `https_redirect: true`, "", "", "echo:8080", "/a", 301, "https://echo:8080/a"},
		{"https_redirect drops :80", `https_redirect: true`, "", "", "echo:80", "/a", 301, "https://echo/a"},
		{"scheme kept from the request", `host_redirect: "x"`, "", "https", "echo", "/a", 301, "https://x/a"},
		{"IPv6 authority", `port_redirect: 81`, "", "", "[fd00::1]:8080", "/", 301, "http://[fd00::1]:81/"},
		{"path_redirect keeps the query", `path_redirect: "/new"`, "", "", "echo", "/old?q=1", 301, "http://echo/new?q=1"},
		{"path_redirect with its own query", `path_redirect: "/new?a=b" strip_query: true`, "", "", "echo", "/old?q=1", 301, "http://echo/new?a=b"},
		{"strip_query", `path_redirect: "/new" strip_query: true`, "", "", "echo", "/old?q=1", 301, "http://echo/new"},
		{"prefix_rewrite", `prefix_rewrite: "/xyz"`, `path_separated_prefix: "/foo"`, "", "echo", "/foo/bar?q", 301, "http://echo/xyz/bar?q"},
		{"prefix_rewrite exact match replaces all", `prefix_rewrite: "/xyz"`, `path: "/foo"`, "", "echo", "/foo", 301, "http://echo/xyz"},
		{"regex_rewrite", `regex_rewrite: {pattern: {regex: "^/foo/*"} substitution: "/"}`, `path_separated_prefix: "/foo"`, "", "echo", "/foo/bar", 301, "http://echo/bar"},
		{"regex_rewrite with groups", `regex_rewrite: {pattern: {regex: "^/v([0-9])/(.*)$"} substitution: "/\\2/v\\1$"}`, "", "", "echo", "/v1/x?k", 301, "http://echo/x/v1$?k"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := tc.match
			if m == "" {
				m = `prefix: "/"`
			}
			r := compileText(t, oneHost(`routes: {name: "r" match: {`+m+`} redirect: {`+tc.redirect+`}}`))
			rq := get(tc.path)
			rq.Host, rq.Scheme = tc.host, tc.scheme
			d, ok := r.Decide(rq, first)
			if !ok || d.Redirect == nil {
				t.Fatalf("decision %+v, %v: want a redirect", d, ok)
			}
			if d.Redirect.Status != tc.status || d.Redirect.Location != tc.location {
				t.Errorf("redirect %d %s, want %d %s", d.Redirect.Status, d.Redirect.Location, tc.status, tc.location)
			}
			if d.Cluster != "" || d.Direct != nil {
				t.Errorf("redirect with cluster %q / direct %v", d.Cluster, d.Direct)
			}
		})
	}
}

func TestRouteRewrites(t *testing.T) {
	for _, tc := range []struct {
		name, action, match, path, want, host string
	}{
		{"prefix_rewrite", `prefix_rewrite: "/xyz"`, `path_separated_prefix: "/foo"`, "/foo/bar?q=1", "/xyz/bar?q=1", ""},
		{"prefix_rewrite on prefix /", `prefix_rewrite: "/xyz/"`, `prefix: "/"`, "/foo", "/xyz/foo", ""},
		{"prefix_rewrite case-insensitive match", `prefix_rewrite: "/b"`, `prefix: "/A" case_sensitive: {value: false}`, "/a/x", "/b/x", ""},
		{"regex_rewrite full path", `regex_rewrite: {pattern: {regex: "^/.*$"} substitution: "/new"}`, `prefix: "/"`, "/old/x?q", "/new?q", ""},
		{"regex_rewrite literal backslash", `regex_rewrite: {pattern: {regex: "^/.*$"} substitution: "/a\\\\b"}`, `prefix: "/"`, "/x", `/a\b`, ""},
		{"host rewrite", `host_rewrite_literal: "internal"`, `prefix: "/"`, "/x", "", "internal"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := compileText(t, oneHost(`routes: {name: "r" match: {`+tc.match+`} route: {cluster: "c" `+tc.action+`}}`))
			d, ok := r.Decide(get(tc.path), first)
			if !ok || d.Cluster != "c" {
				t.Fatalf("decision %+v, %v", d, ok)
			}
			if d.PathRewrite != tc.want || d.HostRewrite != tc.host {
				t.Errorf("path %q host %q, want %q %q", d.PathRewrite, d.HostRewrite, tc.want, tc.host)
			}
		})
	}
}

// TestWeightedSplit: 90/10 over 10,000 deterministic picks, within 2%.
func TestWeightedSplit(t *testing.T) {
	r := compileText(t, oneHost(`routes: {name: "split" match: {prefix: "/"} route: {weighted_clusters: {
		clusters: {name: "v1" weight: {value: 90}}
		clusters: {name: "never" weight: {value: 0}}
		clusters: {name: "v2" weight: {value: 10}}}}}`))
	rng := rand.New(rand.NewPCG(1, 2))
	counts := map[string]int{}
	const n = 10_000
	for range n {
		d, ok := r.Decide(get("/"), rng.Uint64N)
		if !ok {
			t.Fatal("no route")
		}
		counts[d.Cluster]++
	}
	if counts["never"] != 0 {
		t.Errorf("weight 0 cluster picked %d times", counts["never"])
	}
	for cluster, want := range map[string]float64{"v1": 0.9, "v2": 0.1} {
		if got := float64(counts[cluster]) / n; got < want-0.02 || got > want+0.02 {
			t.Errorf("%s: %.3f of picks, want %.2f±0.02", cluster, got, want)
		}
	}
	// rnd is honoured exactly: 0..89 is v1, 90..99 is v2.
	for x, want := range map[uint64]string{0: "v1", 89: "v1", 90: "v2", 99: "v2", 100: "v1" /* out of range: taken mod n */} {
		d, _ := r.Decide(get("/"), func(uint64) uint64 { return x })
		if d.Cluster != want {
			t.Errorf("rnd %d: cluster %s, want %s", x, d.Cluster, want)
		}
	}
	// A nil rnd uses math/rand.
	if d, ok := r.Decide(get("/"), nil); !ok || (d.Cluster != "v1" && d.Cluster != "v2") {
		t.Errorf("nil rnd: %+v", d)
	}
}

func TestHeaderOps(t *testing.T) {
	r := compileText(t, oneHost(`routes: {name: "h" match: {prefix: "/"}
		route: {weighted_clusters: {clusters: {name: "c" weight: {value: 1}
			request_headers_to_add: {header: {key: "x-level" value: "cluster"} append_action: OVERWRITE_IF_EXISTS_OR_ADD}
			response_headers_to_remove: "x-internal"}}}
		request_headers_to_add: {header: {key: "X-Set" value: "new"} append_action: OVERWRITE_IF_EXISTS_OR_ADD}
		request_headers_to_add: {header: {key: "x-add" value: "2"}}
		request_headers_to_add: {header: {key: "x-level" value: "route"} append_action: APPEND_IF_EXISTS_OR_ADD}
		request_headers_to_add: {header: {key: "x-absent" value: "a"} append_action: ADD_IF_ABSENT}
		request_headers_to_add: {header: {key: "x-only-if" value: "o"} append_action: OVERWRITE_IF_EXISTS}
		request_headers_to_add: {header: {key: "x-legacy" value: "l"} append: {value: false}}
		request_headers_to_add: {header: {key: "x-pct" value: "100%%"}}
		request_headers_to_add: {header: {key: "x-empty" value: ""}}
		request_headers_to_remove: "x-set"
		request_headers_to_remove: "X-Gone"
		response_headers_to_add: {header: {key: "x-served-by" value: "waypoint"}}
	}`))
	d, ok := r.Decide(get("/"), first)
	if !ok {
		t.Fatal("no route")
	}
	want := router.HeaderOps{
		{Action: router.HeaderSet, Name: "x-level", Value: "cluster"}, // cluster level first
		{Action: router.HeaderRemove, Name: "x-set"},                  // then the route: removals,
		{Action: router.HeaderRemove, Name: "x-gone"},
		{Action: router.HeaderSet, Name: "x-set", Value: "new"}, // then additions in order
		{Action: router.HeaderAppend, Name: "x-add", Value: "2"},
		{Action: router.HeaderAppend, Name: "x-level", Value: "route"},
		{Action: router.HeaderAddIfAbsent, Name: "x-absent", Value: "a"},
		{Action: router.HeaderOverwriteIfExists, Name: "x-only-if", Value: "o"},
		{Action: router.HeaderSet, Name: "x-legacy", Value: "l"},
		{Action: router.HeaderAppend, Name: "x-pct", Value: "100%"},
	}
	if !reflect.DeepEqual(d.RequestHeaders, want) {
		t.Errorf("request ops:\n%v\nwant\n%v", d.RequestHeaders, want)
	}
	h := http.Header{"X-Set": {"old"}, "X-Gone": {"1"}, "X-Add": {"1"}, "X-Absent": {"keep"}, "X-Level": {"client"}}
	d.RequestHeaders.ApplyRequest(h)
	wantH := http.Header{
		"X-Set": {"new"}, "X-Add": {"1", "2"}, "X-Absent": {"keep"}, "X-Level": {"cluster", "route"},
		"X-Legacy": {"l"}, "X-Pct": {"100%"},
	}
	if !reflect.DeepEqual(h, wantH) {
		t.Errorf("request headers:\n%v\nwant\n%v", h, wantH)
	}
	resp := http.Header{"X-Internal": {"secret"}}
	d.ResponseHeaders.ApplyResponse(resp)
	if !reflect.DeepEqual(resp, http.Header{"X-Served-By": {"waypoint"}}) {
		t.Errorf("response headers: %v", resp)
	}
	router.HeaderOps{{Action: router.HeaderSet, Name: "a", Value: "b"}}.ApplyRequest(nil) // no panic
}

func TestDirectAndInvalidBackend(t *testing.T) {
	r := compileText(t, oneHost(`
		routes: {name: "direct" match: {path: "/d"} direct_response: {status: 503 body: {inline_string: "down"}}
			response_headers_to_add: {header: {key: "retry-after" value: "1"}}}
		routes: {name: "bytes" match: {path: "/b"} direct_response: {status: 200 body: {inline_bytes: "ok"}}}
		routes: {name: "invalid" match: {path: "/i"} route: {cluster_not_found_response_code: INTERNAL_SERVER_ERROR
			weighted_clusters: {clusters: {name: "invalid-backend|demo/gone:80" weight: {value: 1}}}}}
		routes: {name: "invalid-default" match: {path: "/j"} route: {cluster: "invalid-backend|demo/gone:81"}}
	`))
	for _, tc := range []struct {
		path   string
		status int
		body   string
	}{
		{"/d", 503, "down"},
		{"/b", 200, "ok"},
		{"/i", 500, "backend demo/gone:80 not found"},
		{"/j", 503, "backend demo/gone:81 not found"}, // Envoy's default cluster_not_found_response_code
	} {
		d, ok := r.Decide(get(tc.path), first)
		if !ok || d.Direct == nil || d.Cluster != "" {
			t.Fatalf("%s: %+v, %v", tc.path, d, ok)
		}
		if d.Direct.Status != tc.status || d.Direct.Body != tc.body {
			t.Errorf("%s: %d %q, want %d %q", tc.path, d.Direct.Status, d.Direct.Body, tc.status, tc.body)
		}
	}
	d, _ := r.Decide(get("/d"), first)
	if len(d.ResponseHeaders) != 1 || d.ResponseHeaders[0].Name != "retry-after" {
		t.Errorf("direct response headers %v", d.ResponseHeaders)
	}
}

func TestTimeoutsRetriesMirrors(t *testing.T) {
	r := compileText(t, oneHost(`
		routes: {name: "default" match: {path: "/default"} route: {cluster: "c"}}
		routes: {name: "none" match: {path: "/none"} route: {cluster: "c" timeout: {}}}
		routes: {name: "retry" match: {path: "/retry"} route: {cluster: "c" timeout: {seconds: 2}
			retry_policy: {retry_on: "retriable-status-codes,connect-failure,refused-stream,reset" num_retries: {value: 3}
				retriable_status_codes: [500, 503] per_try_timeout: {nanos: 250000000} retry_back_off: {base_interval: {nanos: 100000000}}}}}
		routes: {name: "pertry" match: {path: "/pertry"} route: {cluster: "c" retry_policy: {num_retries: {} per_try_timeout: {seconds: 1}}}}
		routes: {name: "envoydefaults" match: {path: "/envoy"} route: {cluster: "c" retry_policy: {retry_on: "5xx"}}}
		routes: {name: "mirror" match: {path: "/mirror"} route: {cluster: "c"
			request_mirror_policies: {cluster: "all"}
			request_mirror_policies: {cluster: "quarter" runtime_fraction: {default_value: {numerator: 25}}}
			request_mirror_policies: {cluster: "none" runtime_fraction: {default_value: {numerator: 0 denominator: MILLION}}}}}
	`))
	decide := func(path string, rnd func(uint64) uint64) router.Decision {
		t.Helper()
		d, ok := r.Decide(get(path), rnd)
		if !ok {
			t.Fatalf("%s: no route", path)
		}
		return d
	}
	if d := decide("/default", first); d.Timeout != 15*time.Second || d.Retry != nil {
		t.Errorf("default: timeout %s retry %v; want Envoy's 15s, none", d.Timeout, d.Retry)
	}
	if d := decide("/none", first); d.Timeout != 0 {
		t.Errorf("timeout 0: got %s", d.Timeout)
	}
	d := decide("/retry", first)
	want := &router.RetryPolicy{
		NumRetries: 3, RetryOn: []string{"retriable-status-codes", "connect-failure", "refused-stream", "reset"},
		RetriableStatusCodes: []uint32{500, 503}, BaseInterval: 100 * time.Millisecond, MaxInterval: time.Second,
	}
	if d.Timeout != 2*time.Second || d.PerTryTimeout != 250*time.Millisecond || !reflect.DeepEqual(d.Retry, want) {
		t.Errorf("retry: timeout %s per-try %s retry %+v", d.Timeout, d.PerTryTimeout, d.Retry)
	}
	for code, retry := range map[int]bool{500: true, 503: true, 502: false, 404: false} {
		if d.Retry.RetriableStatus(code) != retry {
			t.Errorf("RetriableStatus(%d) = %v", code, !retry)
		}
	}
	if !d.Retry.RetriesOn("reset") || d.Retry.RetriesOn("5xx") {
		t.Error("RetriesOn")
	}
	if d := decide("/pertry", first); d.Retry != nil || d.PerTryTimeout != time.Second {
		t.Errorf("per-try only: retry %v per-try %s", d.Retry, d.PerTryTimeout)
	}
	d = decide("/envoy", first)
	if d.Retry == nil || d.Retry.NumRetries != 1 || d.Retry.BaseInterval != 25*time.Millisecond || d.Retry.MaxInterval != 250*time.Millisecond || !d.Retry.RetriableStatus(502) {
		t.Errorf("Envoy retry defaults: %+v", d.Retry)
	}
	if d := decide("/mirror", first); !reflect.DeepEqual(d.Mirrors, []string{"all", "quarter"}) {
		t.Errorf("mirrors drawing 0: %v", d.Mirrors)
	}
	if d := decide("/mirror", func(n uint64) uint64 { return n - 1 }); !reflect.DeepEqual(d.Mirrors, []string{"all"}) {
		t.Errorf("mirrors drawing n-1: %v", d.Mirrors)
	}
}

// TestUnsupportedFields: a route using a field outside the subset answers
// 500 naming the field; on the config or a virtual host, Compile fails.
func TestUnsupportedFields(t *testing.T) {
	for _, tc := range []struct{ route, field string }{
		{`match: {prefix: "/"} route: {cluster: "c" hash_policy: {header: {header_name: "x"}}}`, "route.route.hash_policy"},
		{`match: {prefix: "/"} route: {cluster: "c" cors: {}}`, "route.route.cors"},
		{`match: {prefix: "/" cookies: {name: "a"}} route: {cluster: "c"}`, "route.match.cookies"},
		{`match: {prefix: "/" runtime_fraction: {default_value: {numerator: 1}}} route: {cluster: "c"}`, "route.match.runtime_fraction"},
		{`match: {prefix: "/" headers: {name: "a" exact_match: "b"}} route: {cluster: "c"}`, "route.match.headers.exact_match"},
		{`match: {prefix: "/"} route: {cluster_header: "x"}`, "route.route.cluster_header"},
		{`match: {prefix: "/"} route: {cluster: "c" retry_policy: {retry_host_predicate: {name: "x"}}}`, "route.route.retry_policy.retry_host_predicate"},
		{`match: {prefix: "/"} route: {cluster: "c"} typed_per_filter_config: {key: "x" value: {}}`, "route.typed_per_filter_config"},
		{`match: {prefix: "/"} route: {cluster: "c"} metadata: {}`, "route.metadata"},
		{`match: {prefix: "/"} direct_response: {status: 200 body: {filename: "/etc/passwd"}}`, "route.direct_response.body.filename"},
		{`match: {prefix: "/"} route: {cluster: "c"} request_headers_to_add: {header: {key: "a" value: "b"} keep_empty_value: true}`, "route.request_headers_to_add.keep_empty_value"},
	} {
		r := compileText(t, oneHost(`routes: {name: "r" `+tc.route+`}`))
		d, ok := r.Decide(get("/"), first)
		if !ok || d.Direct == nil || d.Direct.Status != 500 || d.Direct.Body != "unsupported route field: "+tc.field {
			t.Errorf("%s: %+v, %v; want 500 naming %s", tc.route, d.Direct, ok, tc.field)
		}
	}
	// Unknown fields (a newer Envoy) are unsupported too.
	rc := &routev3.RouteConfiguration{VirtualHosts: []*routev3.VirtualHost{{Domains: []string{"*"}, Routes: []*routev3.Route{{
		Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
		Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: "c"}}},
	}}}}}
	rc.VirtualHosts[0].Routes[0].ProtoReflect().SetUnknown([]byte{0xf8, 0xff, 0x7f, 0x01}) // field 2097151, varint 1
	r, err := router.Compile(rc)
	if err != nil {
		t.Fatal(err)
	}
	if d, _ := r.Decide(get("/"), first); d.Direct == nil || !strings.Contains(d.Direct.Body, "unknown field") {
		t.Errorf("unknown field: %+v", d)
	}
	for _, cfg := range []string{
		`name: "x" validate_clusters: {value: true}`,
		`name: "x" virtual_hosts: {domains: "*" require_tls: ALL}`,
		`name: "x" virtual_hosts: {domains: "*" request_headers_to_add: {header: {key: "a" value: "b"}}}`,
	} {
		rc := &routev3.RouteConfiguration{}
		if err := prototextUnmarshal(cfg, rc); err != nil {
			t.Fatal(err)
		}
		if _, err := router.Compile(rc); err == nil || !strings.Contains(err.Error(), "unsupported field") {
			t.Errorf("%s: Compile error %v, want unsupported field", cfg, err)
		}
	}
}

// TestBrokenRoutes: invalid values answer 500 saying why.
func TestBrokenRoutes(t *testing.T) {
	for _, tc := range []struct{ route, body string }{
		{`match: {prefix: "/"}`, "route has no supported action"},
		{`route: {cluster: "c"}`, "route has no match"},
		{`match: {path_separated_prefix: "/a/"} route: {cluster: "c"}`, "must be non-empty"},
		{`match: {prefix: "/"} route: {}`, "no supported cluster specifier"},
		{`match: {prefix: "/"} route: {weighted_clusters: {clusters: {name: "a"}}}`, "total weight is 0"},
		{`match: {prefix: "/"} route: {cluster: "c" prefix_rewrite: "/a" regex_rewrite: {pattern: {regex: "a"}}}`, "both set"},
		{`match: {prefix: "/"} route: {cluster: "c" timeout: {seconds: -1}}`, "route.timeout"},
		{`match: {prefix: "/"} route: {cluster: "c" retry_policy: {retry_on: "sometimes"}}`, "unknown condition"},
		{`match: {prefix: "/"} direct_response: {status: 99}`, "outside 200..599"},
		{`match: {prefix: "/"} route: {cluster: "c"} request_headers_to_add: {header: {key: ":path" value: "/x"}}`, "cannot be modified"},
		{`match: {prefix: "/"} route: {cluster: "c"} request_headers_to_remove: "host"`, "cannot be modified"},
		{`match: {prefix: "/"} route: {cluster: "c"} request_headers_to_add: {header: {key: "a" value: "%DOWNSTREAM_REMOTE_ADDRESS%"}}`, "formatter"},
		{`match: {prefix: "/"} route: {cluster: "c"} response_headers_to_add: {header: {key: "a" value: "x\ny"}}`, "CR, LF"},
		{`match: {prefix: "/"} redirect: {port_redirect: 70000}`, "not a port"},
	} {
		r := compileText(t, oneHost(`routes: {name: "r" `+tc.route+`}`))
		path := "/"
		if strings.Contains(tc.route, "path_separated_prefix") {
			path = "/a/" // the broken route still matches as configured
		}
		d, ok := r.Decide(get(path), first)
		if !ok || d.Direct == nil || d.Direct.Status != 500 || !strings.Contains(d.Direct.Body, tc.body) {
			t.Errorf("%s: %+v, %v; want 500 containing %q", tc.route, d.Direct, ok, tc.body)
		}
		if d.RouteName != "r" {
			t.Errorf("%s: RouteName %q", tc.route, d.RouteName)
		}
	}
}

func TestCompileErrors(t *testing.T) {
	for _, tc := range []struct{ cfg, want string }{
		{oneHost(`routes: {name: "bad" match: {safe_regex: {regex: "("}} route: {cluster: "c"}}`), `route 0 ("bad"): match.safe_regex: invalid regex`},
		{oneHost(`routes: {name: "h" match: {prefix: "/" headers: {name: "a" string_match: {safe_regex: {regex: "[z-a]"}}}} route: {cluster: "c"}}`), `route 0 ("h"): match.headers[0]: string_match: safe_regex: invalid regex`},
		{oneHost(`routes: {name: "q" match: {prefix: "/" query_parameters: {name: "a" string_match: {safe_regex: {regex: "*"}}}} route: {cluster: "c"}}`), `match.query_parameters[0]`},
		{oneHost(`routes: {name: "rw" match: {prefix: "/"} route: {cluster: "c" regex_rewrite: {pattern: {regex: "(a"} substitution: "b"}}}`), `route.regex_rewrite.pattern`},
		{oneHost(`routes: {name: "sub" match: {prefix: "/"} route: {cluster: "c" regex_rewrite: {pattern: {regex: "a"} substitution: "\\1"}}}`), `refers to group 1 of 0`},
		{oneHost(`routes: {name: "rd" match: {prefix: "/"} redirect: {regex_rewrite: {pattern: {regex: "+"} substitution: ""}}}`), `redirect.regex_rewrite.pattern`},
		{`name: "x" virtual_hosts: {name: "a" domains: "*"} virtual_hosts: {name: "b" domains: "*"}`, `domain "*" is in more than one virtual host`},
		{`name: "x" virtual_hosts: {name: "a" domains: "a*b"}`, "wildcard"},
		{`name: "x" virtual_hosts: {name: "a" domains: ""}`, "empty domain"},
	} {
		rc := &routev3.RouteConfiguration{}
		if err := prototextUnmarshal(tc.cfg, rc); err != nil {
			t.Fatal(err)
		}
		_, err := router.Compile(rc)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Compile error %v, want one containing %q", err, tc.want)
		}
	}
	if _, err := router.Compile(nil); err == nil {
		t.Error("Compile(nil) succeeded")
	}
}
