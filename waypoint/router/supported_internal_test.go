package router

import (
	"testing"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambit-mesh/ambit/controlplane/routes"
)

// TestBuildOutputIsSupported: every route controlplane/routes produces,
// using every feature it has, compiles without being broken.
func TestBuildOutputIsSupported(t *testing.T) {
	p := func(s string) *string { return &s }
	port := gatewayv1.PortNumber(8080)
	ref := func(name string) gatewayv1.BackendObjectReference {
		return gatewayv1.BackendObjectReference{Name: gatewayv1.ObjectName(name), Port: &port}
	}
	parents := []gatewayv1.ParentReference{{Group: (*gatewayv1.Group)(p("")), Kind: (*gatewayv1.Kind)(p("Service")), Name: "echo"}}
	prefixFoo := gatewayv1.HTTPRouteMatch{Path: &gatewayv1.HTTPPathMatch{Value: p("/foo")}}
	regexMethod := gatewayv1.GRPCMethodMatchRegularExpression
	hdrs := &gatewayv1.HTTPHeaderFilter{
		Set: []gatewayv1.HTTPHeader{{Name: "a", Value: "1%"}}, Add: []gatewayv1.HTTPHeader{{Name: "b", Value: "2"}}, Remove: []string{"c"},
	}
	pct := int32(10)
	attempts := 2
	d := gatewayv1.Duration("1s")
	withFilters := gatewayv1.HTTPBackendRef{BackendRef: gatewayv1.BackendRef{BackendObjectReference: ref("v1")},
		Filters: []gatewayv1.HTTPRouteFilter{{Type: gatewayv1.HTTPRouteFilterResponseHeaderModifier, ResponseHeaderModifier: hdrs}}}
	in := routes.Inputs{
		Services: []routes.Service{
			{Namespace: "demo", Name: "echo", Ports: []routes.Port{{Port: 8080}}},
			{Namespace: "demo", Name: "v1", Ports: []routes.Port{{Port: 8080}}},
		},
		Bound: []routes.ServiceRef{{Namespace: "demo", Name: "echo"}},
		HTTPRoutes: []*gatewayv1.HTTPRoute{{
			ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "all"},
			Spec: gatewayv1.HTTPRouteSpec{CommonRouteSpec: gatewayv1.CommonRouteSpec{ParentRefs: parents}, Rules: []gatewayv1.HTTPRouteRule{
				{
					Matches: []gatewayv1.HTTPRouteMatch{{
						Path:        &gatewayv1.HTTPPathMatch{Value: p("/foo")},
						Headers:     []gatewayv1.HTTPHeaderMatch{{Name: "x", Value: "y"}},
						QueryParams: []gatewayv1.HTTPQueryParamMatch{{Name: "q", Value: "v"}},
						Method:      (*gatewayv1.HTTPMethod)(p("GET")),
					}},
					Filters: []gatewayv1.HTTPRouteFilter{
						{Type: gatewayv1.HTTPRouteFilterRequestHeaderModifier, RequestHeaderModifier: hdrs},
						{Type: gatewayv1.HTTPRouteFilterResponseHeaderModifier, ResponseHeaderModifier: hdrs},
						{Type: gatewayv1.HTTPRouteFilterURLRewrite, URLRewrite: &gatewayv1.HTTPURLRewriteFilter{
							Hostname: (*gatewayv1.PreciseHostname)(p("h")),
							Path:     &gatewayv1.HTTPPathModifier{Type: gatewayv1.PrefixMatchHTTPPathModifier, ReplacePrefixMatch: p("/")},
						}},
						{Type: gatewayv1.HTTPRouteFilterRequestMirror, RequestMirror: &gatewayv1.HTTPRequestMirrorFilter{BackendRef: ref("v1"), Percent: &pct}},
					},
					BackendRefs: []gatewayv1.HTTPBackendRef{withFilters, {BackendRef: gatewayv1.BackendRef{BackendObjectReference: ref("gone")}}},
					Timeouts:    &gatewayv1.HTTPRouteTimeouts{Request: &d, BackendRequest: &d},
					Retry:       &gatewayv1.HTTPRouteRetry{Codes: []gatewayv1.HTTPRouteRetryStatusCode{503}, Attempts: &attempts, Backoff: &d},
				},
				{
					Matches: []gatewayv1.HTTPRouteMatch{prefixFoo},
					Filters: []gatewayv1.HTTPRouteFilter{{Type: gatewayv1.HTTPRouteFilterRequestRedirect, RequestRedirect: &gatewayv1.HTTPRequestRedirectFilter{
						Scheme: p("https"), Hostname: (*gatewayv1.PreciseHostname)(p("x")),
						Path: &gatewayv1.HTTPPathModifier{Type: gatewayv1.PrefixMatchHTTPPathModifier, ReplacePrefixMatch: p("/")},
					}}},
				},
				{
					Matches: []gatewayv1.HTTPRouteMatch{{Path: &gatewayv1.HTTPPathMatch{Type: ptrTo(gatewayv1.PathMatchRegularExpression), Value: p("/r.*")}}},
					Filters: []gatewayv1.HTTPRouteFilter{{Type: gatewayv1.HTTPRouteFilterURLRewrite, URLRewrite: &gatewayv1.HTTPURLRewriteFilter{
						Path: &gatewayv1.HTTPPathModifier{Type: gatewayv1.FullPathHTTPPathModifier, ReplaceFullPath: p(`/a\1$`)},
					}}},
					BackendRefs: []gatewayv1.HTTPBackendRef{{BackendRef: gatewayv1.BackendRef{BackendObjectReference: ref("v1")}}},
				},
				{Filters: []gatewayv1.HTTPRouteFilter{{Type: gatewayv1.HTTPRouteFilterCORS}}},
				{},
			}},
		}},
		GRPCRoutes: []*gatewayv1.GRPCRoute{{
			ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "g"},
			Spec: gatewayv1.GRPCRouteSpec{CommonRouteSpec: gatewayv1.CommonRouteSpec{ParentRefs: parents}, Rules: []gatewayv1.GRPCRouteRule{{
				Matches: []gatewayv1.GRPCRouteMatch{
					{Method: &gatewayv1.GRPCMethodMatch{Service: p("s"), Method: p("m")}},
					{Method: &gatewayv1.GRPCMethodMatch{Method: p("m")}},
					{Method: &gatewayv1.GRPCMethodMatch{Type: &regexMethod, Service: p("s.*")}},
				},
				BackendRefs: []gatewayv1.GRPCBackendRef{{BackendRef: gatewayv1.BackendRef{BackendObjectReference: ref("v1")}}},
			}}},
		}},
		TCPRoutes: []*gatewayv1.TCPRoute{{
			ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "t"},
			Spec: gatewayv1.TCPRouteSpec{CommonRouteSpec: gatewayv1.CommonRouteSpec{ParentRefs: parents}, Rules: []gatewayv1.TCPRouteRule{{
				BackendRefs: []gatewayv1.BackendRef{{BackendObjectReference: ref("v1")}, {BackendObjectReference: ref("gone")}},
			}}},
		}},
	}
	out := routes.Build(in)
	n := 0
	for _, m := range []map[string]*routev3.RouteConfiguration{out.Routes, out.TCPRoutes} {
		for name, rc := range m {
			r, err := Compile(rc)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			for _, vh := range r.vhosts {
				for _, rt := range vh.routes {
					n++
					if rt.broken != "" {
						t.Errorf("%s: route %s is broken: %s", name, rt.name, rt.broken)
					}
				}
			}
		}
	}
	if n != 9 { // 5 HTTPRoute rules, 3 GRPCRoute matches, 1 TCPRoute
		t.Errorf("%d routes checked, want 9", n)
	}
}

func ptrTo[T any](v T) *T { return &v }
