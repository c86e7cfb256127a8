package routes_test

import (
	"strings"
	"testing"

	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambit-mesh/ambit/controlplane/routes"
)

func TestHTTPMatches(t *testing.T) {
	hdr := func(typ gatewayv1.HeaderMatchType, name, value string) gatewayv1.HTTPHeaderMatch {
		return gatewayv1.HTTPHeaderMatch{Type: ptr(typ), Name: gatewayv1.HTTPHeaderName(name), Value: value}
	}
	qp := func(typ gatewayv1.QueryParamMatchType, name, value string) gatewayv1.HTTPQueryParamMatch {
		return gatewayv1.HTTPQueryParamMatch{Type: ptr(typ), Name: gatewayv1.HTTPHeaderName(name), Value: value}
	}
	for _, tc := range []struct {
		name  string
		match gatewayv1.HTTPRouteMatch
		want  string // the RouteMatch, text format
	}{
		{"no path is prefix /", gatewayv1.HTTPRouteMatch{}, `prefix: "/"`},
		{"prefix /", gatewayv1.HTTPRouteMatch{Path: prefix("/")}, `prefix: "/"`},
		{"prefix without type or value", gatewayv1.HTTPRouteMatch{Path: &gatewayv1.HTTPPathMatch{}}, `prefix: "/"`},
		{"prefix is path separated", gatewayv1.HTTPRouteMatch{Path: prefix("/foo")}, `path_separated_prefix: "/foo"`},
		{"prefix trailing slash stripped", gatewayv1.HTTPRouteMatch{Path: prefix("/foo/")}, `path_separated_prefix: "/foo"`},
		{"exact", gatewayv1.HTTPRouteMatch{Path: exact("/foo/")}, `path: "/foo/"`},
		{"regex", gatewayv1.HTTPRouteMatch{Path: regex("/v[0-9]+/.*")}, `safe_regex: {regex: "/v[0-9]+/.*"}`},
		{
			"header exact, name lower-cased",
			gatewayv1.HTTPRouteMatch{Headers: []gatewayv1.HTTPHeaderMatch{hdr(gatewayv1.HeaderMatchExact, "X-Version", "v2")}},
			`prefix: "/" headers: {name: "x-version" string_match: {exact: "v2"}}`,
		},
		{
			"header without type is exact",
			gatewayv1.HTTPRouteMatch{Headers: []gatewayv1.HTTPHeaderMatch{{Name: "a", Value: "b"}}},
			`prefix: "/" headers: {name: "a" string_match: {exact: "b"}}`,
		},
		{
			"header regex",
			gatewayv1.HTTPRouteMatch{Headers: []gatewayv1.HTTPHeaderMatch{hdr(gatewayv1.HeaderMatchRegularExpression, "x-user", "a.*")}},
			`prefix: "/" headers: {name: "x-user" string_match: {safe_regex: {regex: "a.*"}}}`,
		},
		{
			"repeated header name: first wins",
			gatewayv1.HTTPRouteMatch{Headers: []gatewayv1.HTTPHeaderMatch{
				hdr(gatewayv1.HeaderMatchExact, "Foo", "1"), hdr(gatewayv1.HeaderMatchExact, "foo", "2"),
			}},
			`prefix: "/" headers: {name: "foo" string_match: {exact: "1"}}`,
		},
		{
			"query exact and regex",
			gatewayv1.HTTPRouteMatch{QueryParams: []gatewayv1.HTTPQueryParamMatch{
				qp(gatewayv1.QueryParamMatchExact, "animal", "whale"), qp(gatewayv1.QueryParamMatchRegularExpression, "n", "[0-9]+"),
			}},
			`prefix: "/"
			 query_parameters: {name: "animal" string_match: {exact: "whale"}}
			 query_parameters: {name: "n" string_match: {safe_regex: {regex: "[0-9]+"}}}`,
		},
		{
			"method",
			gatewayv1.HTTPRouteMatch{Path: exact("/a"), Method: ptr(gatewayv1.HTTPMethodPost)},
			`path: "/a" headers: {name: ":method" string_match: {exact: "POST"}}`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := mesh()
			in.HTTPRoutes = []*gatewayv1.HTTPRoute{httpRoute("r", 0, gatewayv1.HTTPRouteRule{
				Matches:     []gatewayv1.HTTPRouteMatch{tc.match},
				BackendRefs: []gatewayv1.HTTPBackendRef{to("v1", 8080)},
			})}
			out := routes.Build(in)
			rs := echoRoutes(t, out)
			if len(rs) != 1 {
				t.Fatalf("got %d routes, want 1", len(rs))
			}
			assertRoute(t, rs[0], `name: "HTTPRoute/demo/r/rule/0/match/0" match: {`+tc.want+`} `+toV1)
			if c := cond(t, out, "HTTPRoute", "r", "Accepted"); c.Status != "True" {
				t.Errorf("Accepted = %+v", c)
			}
		})
	}
}

// TestHTTPMatchesORed: a rule's matches become one route each, in order;
// a rule without matches matches everything.
func TestHTTPMatchesORed(t *testing.T) {
	in := mesh()
	in.HTTPRoutes = []*gatewayv1.HTTPRoute{httpRoute("r", 0,
		gatewayv1.HTTPRouteRule{
			Matches:     []gatewayv1.HTTPRouteMatch{{Path: exact("/a")}, {Path: exact("/b")}},
			BackendRefs: []gatewayv1.HTTPBackendRef{to("v1", 8080)},
		},
		gatewayv1.HTTPRouteRule{BackendRefs: []gatewayv1.HTTPBackendRef{to("v1", 8080)}},
	)}
	rs := echoRoutes(t, routes.Build(in))
	want := []string{"HTTPRoute/demo/r/rule/0/match/0", "HTTPRoute/demo/r/rule/0/match/1", "HTTPRoute/demo/r/rule/1/match/0"}
	if got := names(rs); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("routes %v, want %v", got, want)
	}
	assertRoute(t, rs[2], `name: "HTTPRoute/demo/r/rule/1/match/0" match: {prefix: "/"} `+toV1)
}

// TestInvalidMatches: a match that cannot be expressed yields no route and
// Accepted False UnsupportedValue; the rule's other matches still work.
func TestInvalidMatches(t *testing.T) {
	for _, tc := range []struct {
		name  string
		match gatewayv1.HTTPRouteMatch
		msg   string
	}{
		{"invalid path regex", gatewayv1.HTTPRouteMatch{Path: regex("/(")}, "invalid regular expression"},
		{"invalid header regex", gatewayv1.HTTPRouteMatch{Headers: []gatewayv1.HTTPHeaderMatch{
			{Type: ptr(gatewayv1.HeaderMatchRegularExpression), Name: "a", Value: "[z-a]"},
		}}, "invalid regular expression"},
		{"invalid query regex", gatewayv1.HTTPRouteMatch{QueryParams: []gatewayv1.HTTPQueryParamMatch{
			{Type: ptr(gatewayv1.QueryParamMatchRegularExpression), Name: "a", Value: "*"},
		}}, "invalid regular expression"},
		{"unknown path type", gatewayv1.HTTPRouteMatch{Path: &gatewayv1.HTTPPathMatch{Type: ptr(gatewayv1.PathMatchType("Glob")), Value: ptr("/a")}}, "not supported"},
		{"unknown header type", gatewayv1.HTTPRouteMatch{Headers: []gatewayv1.HTTPHeaderMatch{
			{Type: ptr(gatewayv1.HeaderMatchType("Prefix")), Name: "a", Value: "b"},
		}}, "not supported"},
		{"path without slash", gatewayv1.HTTPRouteMatch{Path: prefix("foo")}, "must start with /"},
		{"path with //", gatewayv1.HTTPRouteMatch{Path: exact("/a//b")}, "must not contain //"},
		{"path with query", gatewayv1.HTTPRouteMatch{Path: exact("/a?b")}, "must not contain ?"},
		{"empty header name", gatewayv1.HTTPRouteMatch{Headers: []gatewayv1.HTTPHeaderMatch{{Value: "b"}}}, "empty name"},
		{"empty method", gatewayv1.HTTPRouteMatch{Method: ptr(gatewayv1.HTTPMethod(""))}, "method"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := mesh()
			in.HTTPRoutes = []*gatewayv1.HTTPRoute{httpRoute("r", 0, gatewayv1.HTTPRouteRule{
				Matches:     []gatewayv1.HTTPRouteMatch{tc.match, {Path: exact("/ok")}},
				BackendRefs: []gatewayv1.HTTPBackendRef{to("v1", 8080)},
			})}
			out := routes.Build(in)
			if got := names(echoRoutes(t, out)); len(got) != 1 || got[0] != "HTTPRoute/demo/r/rule/0/match/1" {
				t.Errorf("routes %v, want only match 1", got)
			}
			c := cond(t, out, "HTTPRoute", "r", "Accepted")
			if c.Status != "False" || c.Reason != "UnsupportedValue" || !strings.Contains(c.Message, tc.msg) || !strings.Contains(c.Message, "rule 0 match 0") {
				t.Errorf("Accepted = %+v, want False/UnsupportedValue mentioning %q", c, tc.msg)
			}
		})
	}
}

func TestGRPCMatches(t *testing.T) {
	method := func(typ gatewayv1.GRPCMethodMatchType, service, m string) *gatewayv1.GRPCMethodMatch {
		mm := &gatewayv1.GRPCMethodMatch{Type: ptr(typ)}
		if service != "" {
			mm.Service = ptr(service)
		}
		if m != "" {
			mm.Method = ptr(m)
		}
		return mm
	}
	for _, tc := range []struct {
		name    string
		match   gatewayv1.GRPCRouteMatch
		want    string
		invalid string
	}{
		{"no method matches every gRPC request", gatewayv1.GRPCRouteMatch{}, `prefix: "/" grpc: {}`, ""},
		{"service and method", gatewayv1.GRPCRouteMatch{Method: method(gatewayv1.GRPCMethodMatchExact, "echo.Echo", "Say")},
			`path: "/echo.Echo/Say" grpc: {}`, ""},
		{"type defaults to exact", gatewayv1.GRPCRouteMatch{Method: &gatewayv1.GRPCMethodMatch{Service: ptr("echo.Echo"), Method: ptr("Say")}},
			`path: "/echo.Echo/Say" grpc: {}`, ""},
		{"service only", gatewayv1.GRPCRouteMatch{Method: method(gatewayv1.GRPCMethodMatchExact, "echo.Echo", "")},
			`prefix: "/echo.Echo/" grpc: {}`, ""},
		{"method only", gatewayv1.GRPCRouteMatch{Method: method(gatewayv1.GRPCMethodMatchExact, "", "Say")},
			`safe_regex: {regex: "/[^/]+/Say"} grpc: {}`, ""},
		{"regex service and method", gatewayv1.GRPCRouteMatch{Method: method(gatewayv1.GRPCMethodMatchRegularExpression, `echo\.v[0-9]+\.Echo`, "Say.*")},
			`safe_regex: {regex: "/(?:echo\\.v[0-9]+\\.Echo)/(?:Say.*)"} grpc: {}`, ""},
		{"regex method only", gatewayv1.GRPCRouteMatch{Method: method(gatewayv1.GRPCMethodMatchRegularExpression, "", "Get|List")},
			`safe_regex: {regex: "/[^/]+/(?:Get|List)"} grpc: {}`, ""},
		{"headers", gatewayv1.GRPCRouteMatch{Headers: []gatewayv1.GRPCHeaderMatch{
			{Name: "X-Tenant", Value: "a"},
			{Type: ptr(gatewayv1.GRPCHeaderMatchRegularExpression), Name: "x-env", Value: "prod|stage"},
		}}, `prefix: "/" headers: {name: "x-tenant" string_match: {exact: "a"}} headers: {name: "x-env" string_match: {safe_regex: {regex: "prod|stage"}}} grpc: {}`, ""},
		{"neither service nor method", gatewayv1.GRPCRouteMatch{Method: &gatewayv1.GRPCMethodMatch{}}, "", "needs a service or a method"},
		{"bad service regex", gatewayv1.GRPCRouteMatch{Method: method(gatewayv1.GRPCMethodMatchRegularExpression, "(", "")}, "", "regex"},
		{"slash in exact service", gatewayv1.GRPCRouteMatch{Method: method(gatewayv1.GRPCMethodMatchExact, "a/b", "")}, "", "must not contain"},
		{"unknown method type", gatewayv1.GRPCRouteMatch{Method: method("Prefix", "a", "")}, "", "not supported"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := mesh()
			in.GRPCRoutes = []*gatewayv1.GRPCRoute{grpcRoute("g", 0, gatewayv1.GRPCRouteRule{
				Matches:     []gatewayv1.GRPCRouteMatch{tc.match},
				BackendRefs: []gatewayv1.GRPCBackendRef{{BackendRef: ref("v1", 8080)}},
			})}
			out := routes.Build(in)
			rs := echoRoutes(t, out)
			c := cond(t, out, "GRPCRoute", "g", "Accepted")
			if tc.invalid != "" {
				if len(rs) != 0 {
					t.Errorf("got routes %v for an invalid match", names(rs))
				}
				if c.Status != "False" || c.Reason != "UnsupportedValue" || !strings.Contains(c.Message, tc.invalid) {
					t.Errorf("Accepted = %+v, want False mentioning %q", c, tc.invalid)
				}
				return
			}
			if len(rs) != 1 {
				t.Fatalf("got %d routes", len(rs))
			}
			assertRoute(t, rs[0], `name: "GRPCRoute/demo/g/rule/0/match/0" match: {`+tc.want+`} `+toV1)
			if c.Status != "True" {
				t.Errorf("Accepted = %+v", c)
			}
		})
	}
}
