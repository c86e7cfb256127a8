package routes_test

import (
	"strings"
	"testing"

	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambit-mesh/ambit/controlplane/routes"
)

func rule(matches ...gatewayv1.HTTPRouteMatch) gatewayv1.HTTPRouteRule {
	return gatewayv1.HTTPRouteRule{Matches: matches, BackendRefs: []gatewayv1.HTTPBackendRef{to("v1", 8080)}}
}

func headers(n int) []gatewayv1.HTTPHeaderMatch {
	var hs []gatewayv1.HTTPHeaderMatch
	for i := range n {
		hs = append(hs, gatewayv1.HTTPHeaderMatch{Name: gatewayv1.HTTPHeaderName("h" + string(rune('a'+i))), Value: "v"})
	}
	return hs
}

func queries(n int) []gatewayv1.HTTPQueryParamMatch {
	var qs []gatewayv1.HTTPQueryParamMatch
	for i := range n {
		qs = append(qs, gatewayv1.HTTPQueryParamMatch{Name: gatewayv1.HTTPHeaderName("q" + string(rune('a'+i))), Value: "v"})
	}
	return qs
}

func TestHTTPPrecedence(t *testing.T) {
	foo := prefix("/foo")
	in := mesh()
	in.HTTPRoutes = []*gatewayv1.HTTPRoute{
		httpRoute("c", 1, rule(gatewayv1.HTTPRouteMatch{Path: foo})),
		httpRoute("a", 1, rule(
			gatewayv1.HTTPRouteMatch{Path: prefix("/")},
			gatewayv1.HTTPRouteMatch{Path: foo},
			gatewayv1.HTTPRouteMatch{Path: exact("/foo")},
			gatewayv1.HTTPRouteMatch{Path: prefix("/foo/bar/")},
		)),
		httpRoute("b", 2,
			rule(gatewayv1.HTTPRouteMatch{Path: foo, Method: ptr(gatewayv1.HTTPMethodGet)}),
			rule(gatewayv1.HTTPRouteMatch{Path: foo, Headers: headers(2)}),
			rule(gatewayv1.HTTPRouteMatch{Path: foo, Headers: headers(1)}),
			rule(gatewayv1.HTTPRouteMatch{Path: foo, Headers: headers(1), QueryParams: queries(1)}),
			rule(gatewayv1.HTTPRouteMatch{Path: foo}),
			rule(gatewayv1.HTTPRouteMatch{Path: foo, QueryParams: queries(2)}),
			rule(gatewayv1.HTTPRouteMatch{Path: foo}),
		),
		httpRoute("d", 0, rule(
			gatewayv1.HTTPRouteMatch{Path: regex("/x")},
			gatewayv1.HTTPRouteMatch{Path: regex("/foo/.*")},
		)),
	}
	want := []string{
		"HTTPRoute/demo/a/rule/0/match/2", // Exact /foo
		"HTTPRoute/demo/d/rule/0/match/1", // regex, longer
		"HTTPRoute/demo/d/rule/0/match/0", // regex, shorter
		"HTTPRoute/demo/a/rule/0/match/3", // prefix /foo/bar (8 characters)
		"HTTPRoute/demo/b/rule/0/match/0", // prefix /foo + method
		"HTTPRoute/demo/b/rule/1/match/0", // prefix /foo + 2 headers
		"HTTPRoute/demo/b/rule/3/match/0", // prefix /foo + 1 header + 1 query
		"HTTPRoute/demo/b/rule/2/match/0", // prefix /foo + 1 header
		"HTTPRoute/demo/b/rule/5/match/0", // prefix /foo + 2 queries
		"HTTPRoute/demo/b/rule/4/match/0", // prefix /foo, oldest route, first rule
		"HTTPRoute/demo/b/rule/6/match/0", // prefix /foo, oldest route, later rule
		"HTTPRoute/demo/a/rule/0/match/1", // prefix /foo, same age as c: demo/a < demo/c
		"HTTPRoute/demo/c/rule/0/match/0",
		"HTTPRoute/demo/a/rule/0/match/0", // prefix /
	}
	got := names(echoRoutes(t, routes.Build(in)))
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("order:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func grpcRule(matches ...gatewayv1.GRPCRouteMatch) gatewayv1.GRPCRouteRule {
	return gatewayv1.GRPCRouteRule{Matches: matches, BackendRefs: []gatewayv1.GRPCBackendRef{{BackendRef: ref("v1", 8080)}}}
}

func grpcMethod(service, method string) *gatewayv1.GRPCMethodMatch {
	m := &gatewayv1.GRPCMethodMatch{}
	if service != "" {
		m.Service = ptr(service)
	}
	if method != "" {
		m.Method = ptr(method)
	}
	return m
}

func TestGRPCPrecedence(t *testing.T) {
	in := mesh()
	in.GRPCRoutes = []*gatewayv1.GRPCRoute{
		grpcRoute("g1", 0,
			grpcRule(gatewayv1.GRPCRouteMatch{}),
			grpcRule(gatewayv1.GRPCRouteMatch{Method: grpcMethod("", "Say")}),
			grpcRule(gatewayv1.GRPCRouteMatch{Method: grpcMethod("pkg.Echo", "")}),
			grpcRule(gatewayv1.GRPCRouteMatch{Method: grpcMethod("pkg.Echo", "Say")}),
			grpcRule(gatewayv1.GRPCRouteMatch{Method: grpcMethod("pkg.Echo", ""), Headers: []gatewayv1.GRPCHeaderMatch{{Name: "x", Value: "y"}}}),
		),
		grpcRoute("g2", 1, grpcRule(gatewayv1.GRPCRouteMatch{Method: grpcMethod("pkg.Echo", "")})),
	}
	in.HTTPRoutes = []*gatewayv1.HTTPRoute{httpRoute("h", 5, rule(gatewayv1.HTTPRouteMatch{Path: exact("/pkg.Echo/Say")}))}
	want := []string{
		"GRPCRoute/demo/g1/rule/3/match/0", // service and method
		"GRPCRoute/demo/g1/rule/4/match/0", // service + header
		"GRPCRoute/demo/g2/rule/0/match/0", // service only, older route
		"GRPCRoute/demo/g1/rule/2/match/0", // service only
		"GRPCRoute/demo/g1/rule/1/match/0", // method only
		"GRPCRoute/demo/g1/rule/0/match/0", // any gRPC request
		"HTTPRoute/demo/h/rule/0/match/0",  // HTTPRoutes after every GRPCRoute
	}
	got := names(echoRoutes(t, routes.Build(in)))
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("order:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
