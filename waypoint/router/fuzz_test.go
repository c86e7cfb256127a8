package router_test

import (
	"net/http"
	"testing"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambit-mesh/ambit/controlplane/routes"
	"github.com/ambit-mesh/ambit/waypoint/router"
)

// FuzzCompileDecide: arbitrary bytes, read as a RouteConfiguration, then
// compiled and decided, never panic; Decide answers with exactly one of
// cluster, redirect or direct response.
func FuzzCompileDecide(f *testing.F) {
	for _, rc := range fuzzSeeds(f) {
		b, err := proto.Marshal(rc)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, "/foo/bar?animal=whale", "application/grpc")
	}
	f.Add([]byte{}, "", "")
	f.Fuzz(func(t *testing.T, data []byte, path, contentType string) {
		rc := &routev3.RouteConfiguration{}
		if proto.Unmarshal(data, rc) != nil {
			return
		}
		r, err := router.Compile(rc)
		if err != nil {
			return
		}
		for _, rq := range []router.Request{
			{Method: "GET", Host: "echo.demo.svc.cluster.local:8080", Path: path, Header: http.Header{"Content-Type": {contentType}, "X-A": {path}}},
			{Method: "POST", Host: path, Path: "/" + path, Header: nil},
			{Path: path + "?" + contentType},
		} {
			for _, rnd := range []func(uint64) uint64{first, func(n uint64) uint64 { return n - 1 }, func(uint64) uint64 { return ^uint64(0) }} {
				d, ok := r.Decide(rq, rnd)
				if !ok {
					continue
				}
				n := 0
				if d.Cluster != "" {
					n++
				}
				if d.Redirect != nil {
					n++
				}
				if d.Direct != nil {
					n++
				}
				if n != 1 {
					t.Fatalf("decision with %d outcomes: %+v", n, d)
				}
				d.RequestHeaders.ApplyRequest(http.Header{})
				d.ResponseHeaders.ApplyResponse(http.Header{})
			}
		}
	})
}

// fuzzSeeds are configurations that use every supported field.
func fuzzSeeds(f *testing.F) []*routev3.RouteConfiguration {
	in := gwMesh()
	in.HTTPRoutes = []*gatewayv1.HTTPRoute{gwRoute("r", 0,
		gatewayv1.HTTPRouteRule{
			Matches: []gatewayv1.HTTPRouteMatch{pathMatch(gatewayv1.PathMatchPathPrefix, "/foo")},
			Filters: []gatewayv1.HTTPRouteFilter{{Type: gatewayv1.HTTPRouteFilterURLRewrite, URLRewrite: &gatewayv1.HTTPURLRewriteFilter{
				Path: &gatewayv1.HTTPPathModifier{Type: gatewayv1.PrefixMatchHTTPPathModifier, ReplacePrefixMatch: ptr("/")},
			}}},
			BackendRefs: []gatewayv1.HTTPBackendRef{backendTo("v1", 3), backendTo("gone", 1)},
			Retry:       &gatewayv1.HTTPRouteRetry{Codes: []gatewayv1.HTTPRouteRetryStatusCode{503}},
		},
		gatewayv1.HTTPRouteRule{
			Matches: []gatewayv1.HTTPRouteMatch{pathMatch(gatewayv1.PathMatchRegularExpression, "/r/.*")},
			Filters: []gatewayv1.HTTPRouteFilter{{Type: gatewayv1.HTTPRouteFilterRequestRedirect, RequestRedirect: &gatewayv1.HTTPRequestRedirectFilter{
				Scheme: ptr("https"),
			}}},
		},
	)}
	out := routes.Build(in)
	seeds := []*routev3.RouteConfiguration{out.Routes[echoRC], routes.Build(gwMesh()).Routes[echoRC]}
	for _, text := range []string{
		oneHost(`routes: {name: "h" match: {prefix: "/" headers: {name: "x-a" string_match: {safe_regex: {regex: "a.*"}}} query_parameters: {name: "animal" present_match: true} grpc: {}}
			route: {weighted_clusters: {clusters: {name: "a" weight: {value: 1} request_headers_to_add: {header: {key: "k" value: "v"}}}}
				regex_rewrite: {pattern: {regex: "^/(.*)$"} substitution: "/x/\\1"} host_rewrite_literal: "h" timeout: {seconds: 1}
				request_mirror_policies: {cluster: "m" runtime_fraction: {default_value: {numerator: 5}}}}
			response_headers_to_add: {header: {key: "r" value: "%%"}}}`),
		oneHost(`routes: {name: "rd" match: {path_separated_prefix: "/foo" case_sensitive: {}} redirect: {prefix_rewrite: "/bar" port_redirect: 8443 strip_query: true}}
			routes: {name: "d" match: {path: "/d"} direct_response: {status: 200 body: {inline_string: "ok"}}}`),
	} {
		rc := &routev3.RouteConfiguration{}
		if err := prototext.Unmarshal([]byte(text), rc); err != nil {
			f.Fatal(err)
		}
		seeds = append(seeds, rc)
	}
	return seeds
}
