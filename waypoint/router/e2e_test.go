package router_test

import (
	"math/rand/v2"
	"net/http"
	"reflect"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambit-mesh/ambit/controlplane/routes"
	"github.com/ambit-mesh/ambit/waypoint/router"
)

// End-to-end: Gateway API objects -> routes.Build -> Compile -> Decide.

const echoRC = "echo.demo.svc.cluster.local:8080"

func ptr[T any](v T) *T { return &v }

func gwMesh() routes.Inputs {
	svc := func(name string) routes.Service {
		return routes.Service{Namespace: "demo", Name: name, Hostname: name + ".demo.svc.cluster.local",
			Ports: []routes.Port{{Port: 8080, Name: "http"}}}
	}
	return routes.Inputs{
		Services: []routes.Service{svc("echo"), svc("v1"), svc("v2"), svc("v3")},
		Bound:    []routes.ServiceRef{{Namespace: "demo", Name: "echo"}},
	}
}

func cluster(name string) string { return routes.ClusterName(name+".demo.svc.cluster.local", 8080) }

func backendTo(name string, weight ...int32) gatewayv1.HTTPBackendRef {
	b := gatewayv1.HTTPBackendRef{BackendRef: gatewayv1.BackendRef{BackendObjectReference: gatewayv1.BackendObjectReference{
		Name: gatewayv1.ObjectName(name), Port: ptr(gatewayv1.PortNumber(8080)),
	}}}
	if len(weight) > 0 {
		b.Weight = ptr(weight[0])
	}
	return b
}

func gwRoute(name string, age int, rules ...gatewayv1.HTTPRouteRule) *gatewayv1.HTTPRoute {
	return &gatewayv1.HTTPRoute{
		ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: name,
			CreationTimestamp: metav1.NewTime(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).Add(-time.Duration(age) * time.Hour))},
		Spec: gatewayv1.HTTPRouteSpec{
			CommonRouteSpec: gatewayv1.CommonRouteSpec{ParentRefs: []gatewayv1.ParentReference{{
				Group: ptr(gatewayv1.Group("")), Kind: ptr(gatewayv1.Kind("Service")), Name: "echo",
			}}},
			Rules: rules,
		},
	}
}

func pathMatch(typ gatewayv1.PathMatchType, v string) gatewayv1.HTTPRouteMatch {
	return gatewayv1.HTTPRouteMatch{Path: &gatewayv1.HTTPPathMatch{Type: ptr(typ), Value: ptr(v)}}
}

// compileBuilt builds in and compiles echo's port 8080.
func compileBuilt(t *testing.T, in routes.Inputs) *router.Router {
	t.Helper()
	out := routes.Build(in)
	rc := out.Routes[echoRC]
	if rc == nil {
		t.Fatalf("no %s in %v", echoRC, out.Routes)
	}
	r, err := router.Compile(rc)
	if err != nil {
		t.Fatalf("Compile(Build output): %v", err)
	}
	return r
}

func TestEndToEndPrecedence(t *testing.T) {
	in := gwMesh()
	hdr := gatewayv1.HTTPHeaderMatch{Name: "X-Canary", Value: "yes"}
	in.HTTPRoutes = []*gatewayv1.HTTPRoute{
		gwRoute("catchall", 5, gatewayv1.HTTPRouteRule{BackendRefs: []gatewayv1.HTTPBackendRef{backendTo("v1")}}),
		gwRoute("api", 1,
			gatewayv1.HTTPRouteRule{
				Matches:     []gatewayv1.HTTPRouteMatch{pathMatch(gatewayv1.PathMatchPathPrefix, "/api")},
				BackendRefs: []gatewayv1.HTTPBackendRef{backendTo("v1")},
			},
			gatewayv1.HTTPRouteRule{
				Matches: []gatewayv1.HTTPRouteMatch{func() gatewayv1.HTTPRouteMatch {
					m := pathMatch(gatewayv1.PathMatchPathPrefix, "/api")
					m.Headers = []gatewayv1.HTTPHeaderMatch{hdr}
					return m
				}()},
				BackendRefs: []gatewayv1.HTTPBackendRef{backendTo("v2")},
			},
			gatewayv1.HTTPRouteRule{
				Matches: []gatewayv1.HTTPRouteMatch{func() gatewayv1.HTTPRouteMatch {
					m := pathMatch(gatewayv1.PathMatchPathPrefix, "/api")
					m.Method = ptr(gatewayv1.HTTPMethodDelete)
					return m
				}()},
				BackendRefs: []gatewayv1.HTTPBackendRef{backendTo("v3")},
			},
		),
		gwRoute("login", 0, gatewayv1.HTTPRouteRule{
			Matches:     []gatewayv1.HTTPRouteMatch{pathMatch(gatewayv1.PathMatchExact, "/api/login"), pathMatch(gatewayv1.PathMatchPathPrefix, "/api/v2/")},
			BackendRefs: []gatewayv1.HTTPBackendRef{backendTo("v3")},
		}),
		gwRoute("older-api", 2, gatewayv1.HTTPRouteRule{
			Matches:     []gatewayv1.HTTPRouteMatch{pathMatch(gatewayv1.PathMatchPathPrefix, "/api")},
			BackendRefs: []gatewayv1.HTTPBackendRef{backendTo("v2")},
		}),
	}
	in.GRPCRoutes = []*gatewayv1.GRPCRoute{{
		ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "grpc"},
		Spec: gatewayv1.GRPCRouteSpec{
			CommonRouteSpec: gatewayv1.CommonRouteSpec{ParentRefs: in.HTTPRoutes[0].Spec.ParentRefs},
			Rules: []gatewayv1.GRPCRouteRule{{
				Matches: []gatewayv1.GRPCRouteMatch{{Method: &gatewayv1.GRPCMethodMatch{Service: ptr("echo.Echo")}}},
				BackendRefs: []gatewayv1.GRPCBackendRef{{BackendRef: gatewayv1.BackendRef{BackendObjectReference: gatewayv1.BackendObjectReference{
					Name: "v3", Port: ptr(gatewayv1.PortNumber(8080)),
				}}}},
			}},
		},
	}}
	r := compileBuilt(t, in)
	grpcReq := req("POST", "/echo.Echo/Say", "Content-Type", "application/grpc")
	for _, tc := range []struct {
		name    string
		req     router.Request
		route   string
		cluster string
	}{
		{"exact beats prefixes", get("/api/login"), "HTTPRoute/demo/login/rule/0/match/0", "v3"},
		{"exact is exact", get("/api/login/x"), "HTTPRoute/demo/older-api/rule/0/match/0", "v2"},
		{"longer prefix wins", get("/api/v2/users"), "HTTPRoute/demo/login/rule/0/match/1", "v3"},
		{"longer prefix, element-wise", get("/api/v2"), "HTTPRoute/demo/login/rule/0/match/1", "v3"},
		{"not an element of the longer prefix", get("/api/v20"), "HTTPRoute/demo/older-api/rule/0/match/0", "v2"},
		{"method beats headers", req("DELETE", "/api/x", "X-Canary", "yes"), "HTTPRoute/demo/api/rule/2/match/0", "v3"},
		{"header match beats none", get("/api/x", "X-Canary", "yes"), "HTTPRoute/demo/api/rule/1/match/0", "v2"},
		{"older route wins a tie", get("/api/x"), "HTTPRoute/demo/older-api/rule/0/match/0", "v2"},
		{"prefix /api does not take /apix", get("/apix"), "HTTPRoute/demo/catchall/rule/0/match/0", "v1"},
		{"catch-all", get("/"), "HTTPRoute/demo/catchall/rule/0/match/0", "v1"},
		{"gRPC request to the GRPCRoute", grpcReq, "GRPCRoute/demo/grpc/rule/0/match/0", "v3"},
		{"non-gRPC request skips the GRPCRoute", req("POST", "/echo.Echo/Say"), "HTTPRoute/demo/catchall/rule/0/match/0", "v1"},
		{"gRPC request no GRPCRoute takes", req("POST", "/other.Svc/M", "Content-Type", "application/grpc"), "HTTPRoute/demo/catchall/rule/0/match/0", "v1"},
	} {
		d, ok := r.Decide(tc.req, first)
		if !ok || d.RouteName != tc.route || d.Cluster != cluster(tc.cluster) {
			t.Errorf("%s: %q %q (ok %v), want %q %q", tc.name, d.RouteName, d.Cluster, ok, tc.route, cluster(tc.cluster))
		}
	}
}

func TestEndToEndNoRouteIs404(t *testing.T) {
	in := gwMesh()
	in.HTTPRoutes = []*gatewayv1.HTTPRoute{gwRoute("r", 0, gatewayv1.HTTPRouteRule{
		Matches:     []gatewayv1.HTTPRouteMatch{pathMatch(gatewayv1.PathMatchPathPrefix, "/foo")},
		BackendRefs: []gatewayv1.HTTPBackendRef{backendTo("v1")},
	})}
	r := compileBuilt(t, in)
	for path, want := range map[string]string{
		"/foo": "HTTPRoute/demo/r/rule/0/match/0", "/foo/": "HTTPRoute/demo/r/rule/0/match/0",
		"/foo/bar": "HTTPRoute/demo/r/rule/0/match/0", "/foo?x": "HTTPRoute/demo/r/rule/0/match/0",
		"/foobar": "404", "/fo": "404", "/": "404", "/Foo": "404",
	} {
		if got := routeName(r, get(path)); got != want {
			t.Errorf("%s: %s, want %s", path, got, want)
		}
	}
	// Without routes, the default route forwards everything to the Service.
	d, ok := compileBuilt(t, gwMesh()).Decide(get("/anything"), first)
	if !ok || d.RouteName != routes.DefaultRouteName || d.Cluster != cluster("echo") || d.Timeout != 0 {
		t.Errorf("default route: %+v", d)
	}
}

// TestEndToEndPrefixRewrite: the ReplacePrefixMatch table of the Gateway
// API spec (HTTPPathModifier), plus a root prefix.
func TestEndToEndPrefixRewrite(t *testing.T) {
	for _, tc := range []struct{ path, prefix, replace, want string }{
		{"/foo/bar", "/foo", "/xyz", "/xyz/bar"},
		{"/foo/bar", "/foo", "/xyz/", "/xyz/bar"},
		{"/foo/bar", "/foo/", "/xyz", "/xyz/bar"},
		{"/foo/bar", "/foo/", "/xyz/", "/xyz/bar"},
		{"/foo", "/foo", "/xyz", "/xyz"},
		{"/foo/", "/foo", "/xyz", "/xyz/"},
		{"/foo/bar", "/foo", "", "/bar"},
		{"/foo/", "/foo", "", "/"},
		{"/foo", "/foo", "", "/"},
		{"/foo/", "/foo", "/", "/"},
		{"/foo", "/foo", "/", "/"},
		{"/foo/bar", "/foo", "/", "/bar"},
		{"/foo/bar?q=1", "/foo", "/", "/bar?q=1"},
		{"/foo", "/", "/xyz", "/xyz/foo"},
		{"/foo", "/", "/", "/foo"},
	} {
		in := gwMesh()
		in.HTTPRoutes = []*gatewayv1.HTTPRoute{gwRoute("r", 0, gatewayv1.HTTPRouteRule{
			Matches: []gatewayv1.HTTPRouteMatch{pathMatch(gatewayv1.PathMatchPathPrefix, tc.prefix)},
			Filters: []gatewayv1.HTTPRouteFilter{{Type: gatewayv1.HTTPRouteFilterURLRewrite, URLRewrite: &gatewayv1.HTTPURLRewriteFilter{
				Path: &gatewayv1.HTTPPathModifier{Type: gatewayv1.PrefixMatchHTTPPathModifier, ReplacePrefixMatch: ptr(tc.replace)},
			}}},
			BackendRefs: []gatewayv1.HTTPBackendRef{backendTo("v1")},
		})}
		d, ok := compileBuilt(t, in).Decide(get(tc.path), first)
		if !ok || d.PathRewrite != tc.want {
			t.Errorf("%s, prefix %q -> %q: rewrite %q (ok %v), want %q", tc.path, tc.prefix, tc.replace, d.PathRewrite, ok, tc.want)
		}
	}
}

func TestEndToEndRedirects(t *testing.T) {
	full := func(p string) *gatewayv1.HTTPPathModifier {
		return &gatewayv1.HTTPPathModifier{Type: gatewayv1.FullPathHTTPPathModifier, ReplaceFullPath: ptr(p)}
	}
	pfx := func(p string) *gatewayv1.HTTPPathModifier {
		return &gatewayv1.HTTPPathModifier{Type: gatewayv1.PrefixMatchHTTPPathModifier, ReplacePrefixMatch: ptr(p)}
	}
	host := func(h string) *gatewayv1.PreciseHostname { return ptr(gatewayv1.PreciseHostname(h)) }
	port := func(p int32) *gatewayv1.PortNumber { return ptr(gatewayv1.PortNumber(p)) }
	for _, tc := range []struct {
		name   string
		f      gatewayv1.HTTPRequestRedirectFilter
		path   string
		status int
		want   string
	}{
		{"nothing: same URL on the listener port", gatewayv1.HTTPRequestRedirectFilter{}, "/foo/a", 302, "http://echo.demo.svc.cluster.local:8080/foo/a"},
		{"hostname keeps the listener port", gatewayv1.HTTPRequestRedirectFilter{Hostname: host("example.org")}, "/foo/a", 302, "http://example.org:8080/foo/a"},
		{"scheme https: port 443, omitted", gatewayv1.HTTPRequestRedirectFilter{Scheme: ptr("https"), StatusCode: ptr(301)}, "/foo/a", 301, "https://echo.demo.svc.cluster.local/foo/a"},
		{"scheme http: port 80, omitted", gatewayv1.HTTPRequestRedirectFilter{Scheme: ptr("http")}, "/foo", 302, "http://echo.demo.svc.cluster.local/foo"},
		{"scheme and port", gatewayv1.HTTPRequestRedirectFilter{Scheme: ptr("https"), Port: port(8443)}, "/foo", 302, "https://echo.demo.svc.cluster.local:8443/foo"},
		{"port", gatewayv1.HTTPRequestRedirectFilter{Port: port(9000)}, "/foo", 302, "http://echo.demo.svc.cluster.local:9000/foo"},
		{"port 80 omitted", gatewayv1.HTTPRequestRedirectFilter{Port: port(80)}, "/foo", 302, "http://echo.demo.svc.cluster.local/foo"},
		{"hostname and port", gatewayv1.HTTPRequestRedirectFilter{Hostname: host("example.org"), Port: port(8083)}, "/foo", 302, "http://example.org:8083/foo"},
		{"full path", gatewayv1.HTTPRequestRedirectFilter{Path: full("/new")}, "/foo/a?q=1", 302, "http://echo.demo.svc.cluster.local:8080/new?q=1"},
		{"prefix", gatewayv1.HTTPRequestRedirectFilter{Path: pfx("/bar")}, "/foo/a", 302, "http://echo.demo.svc.cluster.local:8080/bar/a"},
		{"prefix to /", gatewayv1.HTTPRequestRedirectFilter{Path: pfx("/")}, "/foo/a", 302, "http://echo.demo.svc.cluster.local:8080/a"},
		{"prefix to / on the prefix itself", gatewayv1.HTTPRequestRedirectFilter{Path: pfx("/")}, "/foo", 302, "http://echo.demo.svc.cluster.local:8080/"},
		{"everything", gatewayv1.HTTPRequestRedirectFilter{Scheme: ptr("https"), Hostname: host("x.org"), Port: port(444), Path: full("/y"), StatusCode: ptr(308)}, "/foo", 308, "https://x.org:444/y"},
	} {
		in := gwMesh()
		f := tc.f
		in.HTTPRoutes = []*gatewayv1.HTTPRoute{gwRoute("r", 0, gatewayv1.HTTPRouteRule{
			Matches: []gatewayv1.HTTPRouteMatch{pathMatch(gatewayv1.PathMatchPathPrefix, "/foo")},
			Filters: []gatewayv1.HTTPRouteFilter{{Type: gatewayv1.HTTPRouteFilterRequestRedirect, RequestRedirect: &f}},
		})}
		d, ok := compileBuilt(t, in).Decide(get(tc.path), first)
		if !ok || d.Redirect == nil || d.Redirect.Status != tc.status || d.Redirect.Location != tc.want {
			t.Errorf("%s: %+v (ok %v), want %d %s", tc.name, d.Redirect, ok, tc.status, tc.want)
		}
	}
}

func TestEndToEndBackends(t *testing.T) {
	in := gwMesh()
	in.HTTPRoutes = []*gatewayv1.HTTPRoute{gwRoute("r", 0,
		gatewayv1.HTTPRouteRule{
			Matches:     []gatewayv1.HTTPRouteMatch{pathMatch(gatewayv1.PathMatchExact, "/gone")},
			BackendRefs: []gatewayv1.HTTPBackendRef{backendTo("gone")},
		},
		gatewayv1.HTTPRouteRule{
			Matches:     []gatewayv1.HTTPRouteMatch{pathMatch(gatewayv1.PathMatchExact, "/half")},
			BackendRefs: []gatewayv1.HTTPBackendRef{backendTo("v1"), backendTo("gone")},
		},
		gatewayv1.HTTPRouteRule{
			Matches:     []gatewayv1.HTTPRouteMatch{pathMatch(gatewayv1.PathMatchExact, "/split")},
			BackendRefs: []gatewayv1.HTTPBackendRef{backendTo("v1", 90), backendTo("v2", 10)},
		},
	)}
	r := compileBuilt(t, in)
	d, _ := r.Decide(get("/gone"), first)
	if d.Direct == nil || d.Direct.Status != 500 || d.Direct.Body != "backend demo/gone:8080 not found" {
		t.Errorf("missing backend: %+v", d)
	}
	counts := map[int]int{}
	rng := rand.New(rand.NewPCG(7, 7))
	for range 1000 {
		d, _ := r.Decide(get("/half"), rng.Uint64N)
		switch {
		case d.Cluster == cluster("v1"):
			counts[200]++
		case d.Direct != nil && d.Direct.Status == 500 && d.Direct.Body == "backend demo/gone:8080 not found":
			counts[500]++
		default:
			t.Fatalf("half: %+v", d)
		}
	}
	if counts[500] < 400 || counts[500] > 600 {
		t.Errorf("half the traffic should get 500: %v", counts)
	}
	split := map[string]int{}
	rng = rand.New(rand.NewPCG(3, 4))
	for range 10_000 {
		d, _ := r.Decide(get("/split"), rng.Uint64N)
		split[d.Cluster]++
	}
	if v1 := float64(split[cluster("v1")]) / 10_000; v1 < 0.88 || v1 > 0.92 {
		t.Errorf("90/10 split: %v", split)
	}
}

func TestEndToEndHeaders(t *testing.T) {
	in := gwMesh()
	in.HTTPRoutes = []*gatewayv1.HTTPRoute{gwRoute("r", 0, gatewayv1.HTTPRouteRule{
		Filters: []gatewayv1.HTTPRouteFilter{{Type: gatewayv1.HTTPRouteFilterRequestHeaderModifier, RequestHeaderModifier: &gatewayv1.HTTPHeaderFilter{
			Set:    []gatewayv1.HTTPHeader{{Name: "X-Mode", Value: "100%"}},
			Add:    []gatewayv1.HTTPHeader{{Name: "X-Trace", Value: "waypoint"}},
			Remove: []string{"X-Mode", "Cookie"},
		}}},
		BackendRefs: []gatewayv1.HTTPBackendRef{backendTo("v1")},
		Timeouts:    &gatewayv1.HTTPRouteTimeouts{Request: ptr(gatewayv1.Duration("3s")), BackendRequest: ptr(gatewayv1.Duration("1s"))},
		Retry:       &gatewayv1.HTTPRouteRetry{Codes: []gatewayv1.HTTPRouteRetryStatusCode{503}, Attempts: ptr(2)},
	})}
	d, ok := compileBuilt(t, in).Decide(get("/"), first)
	if !ok {
		t.Fatal("no route")
	}
	h := http.Header{"X-Mode": {"old"}, "Cookie": {"c"}, "X-Trace": {"client"}}
	d.RequestHeaders.ApplyRequest(h)
	if want := (http.Header{"X-Mode": {"100%"}, "X-Trace": {"client", "waypoint"}}); !reflect.DeepEqual(h, want) {
		t.Errorf("headers %v, want %v (remove, then set, then add)", h, want)
	}
	if d.Timeout != 3*time.Second || d.PerTryTimeout != time.Second || d.Retry == nil || d.Retry.NumRetries != 2 ||
		!d.Retry.RetriableStatus(503) || d.Retry.RetriableStatus(500) || !d.Retry.RetriesOn("connect-failure") {
		t.Errorf("timeouts/retry: %s %s %+v", d.Timeout, d.PerTryTimeout, d.Retry)
	}
}

// TestEndToEndUnsupportedFilter: the rule answers 500 naming the filter.
func TestEndToEndUnsupportedFilter(t *testing.T) {
	in := gwMesh()
	in.HTTPRoutes = []*gatewayv1.HTTPRoute{gwRoute("r", 0, gatewayv1.HTTPRouteRule{
		Filters:     []gatewayv1.HTTPRouteFilter{{Type: gatewayv1.HTTPRouteFilterExtensionRef, ExtensionRef: &gatewayv1.LocalObjectReference{Name: "x"}}},
		BackendRefs: []gatewayv1.HTTPBackendRef{backendTo("v1")},
	})}
	d, ok := compileBuilt(t, in).Decide(get("/"), first)
	if !ok || d.Direct == nil || d.Direct.Status != 500 || d.Direct.Body != "rule 0: filter 0 (ExtensionRef) is not supported by the waypoint" {
		t.Errorf("%+v", d.Direct)
	}
}
