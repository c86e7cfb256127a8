package routes_test

import (
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambit-mesh/ambit/controlplane/routes"
)

const (
	echo8080 = "echo.demo.svc.cluster.local:8080"
	echo9090 = "echo.demo.svc.cluster.local:9090"
)

func TestDefaultRoutes(t *testing.T) {
	out := routes.Build(mesh())
	if len(out.Routes) != 2 || len(out.TCPRoutes) != 2 {
		t.Fatalf("routes %v, tcp %v: want echo's two ports", keys(out.Routes), keys(out.TCPRoutes))
	}
	for name, cluster := range map[string]string{
		echo8080: "outbound|8080||echo.demo.svc.cluster.local",
		echo9090: "outbound|9090||echo.demo.svc.cluster.local",
	} {
		want := `name: "default" match: {prefix: "/"} route: {cluster: "` + cluster + `" timeout: {}}`
		rs := routesAt(t, out, name)
		if len(rs) != 1 {
			t.Fatalf("%s: %d routes", name, len(rs))
		}
		assertRoute(t, rs[0], want)
		tcp := out.TCPRoutes[name].GetVirtualHosts()[0].GetRoutes()
		if len(tcp) != 1 {
			t.Fatalf("%s: %d TCP routes", name, len(tcp))
		}
		assertRoute(t, tcp[0], want)
	}
	if len(out.Conditions) != 0 {
		t.Errorf("conditions without routes: %v", out.Conditions)
	}
}

func TestParentRefs(t *testing.T) {
	sectioned := parent("echo")
	sectioned.SectionName = ptr(gatewayv1.SectionName("port-9090"))
	gw := gatewayv1.ParentReference{Name: "gateway"} // group and kind default to Gateway
	crossNS := parent("echo")
	crossNS.Namespace = ptr(gatewayv1.Namespace("other"))
	for _, tc := range []struct {
		name     string
		parent   gatewayv1.ParentReference
		attached []string // RouteConfigurations the route is in
		accepted string   // "" = no condition for this parentRef
		reason   string
	}{
		{"no port: every port", parent("echo"), []string{echo8080, echo9090}, "True", "Accepted"},
		{"port 9090 only", parent("echo", 9090), []string{echo9090}, "True", "Accepted"},
		{"sectionName selects the port by name", sectioned, []string{echo9090}, "True", "Accepted"},
		{"port the Service lacks", parent("echo", 7000), nil, "False", "NoMatchingParent"},
		{"Service that does not exist", parent("nope"), nil, "False", "NoMatchingParent"},
		{"Service not bound to this waypoint", parent("v1"), nil, "", ""},
		{"Gateway parent", gw, nil, "", ""},
		{"consumer route (Service in another namespace)", crossNS, nil, "False", "NoMatchingParent"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := mesh()
			r := httpRoute("r", 0, rule(gatewayv1.HTTPRouteMatch{Path: exact("/r")}))
			r.Spec.ParentRefs = []gatewayv1.ParentReference{tc.parent}
			in.HTTPRoutes = []*gatewayv1.HTTPRoute{r}
			out := routes.Build(in)
			for _, name := range []string{echo8080, echo9090} {
				rs := routesAt(t, out, name)
				in := rs[0].GetName() == "HTTPRoute/demo/r/rule/0/match/0"
				want := false
				for _, a := range tc.attached {
					want = want || a == name
				}
				if in != want {
					t.Errorf("%s: attached = %v, want %v (routes %v)", name, in, want, names(rs))
				}
				if !in && (len(rs) != 1 || rs[0].GetName() != routes.DefaultRouteName) {
					t.Errorf("%s: without the route, want the default route; got %v", name, names(rs))
				}
			}
			key := routes.RouteKey{Kind: "HTTPRoute", Namespace: ns, Name: "r"}
			if tc.accepted == "" {
				if cs, ok := out.Conditions[key]; ok {
					t.Errorf("conditions %v, want none", cs)
				}
				return
			}
			c := condAt(t, out, key, "Accepted")
			if string(c.Status) != tc.accepted || c.Reason != tc.reason {
				t.Errorf("Accepted = %s/%s (%s), want %s/%s", c.Status, c.Reason, c.Message, tc.accepted, tc.reason)
			}
		})
	}
}

// TestConsumerRoute: a route in another namespace pointing at a bound
// Service is refused (waypoints take producer routes only).
func TestConsumerRoute(t *testing.T) {
	in := mesh()
	r := httpRoute("r", 0, rule())
	r.Namespace = "client"
	p := parent("echo")
	p.Namespace = ptr(gatewayv1.Namespace(ns))
	r.Spec.ParentRefs = []gatewayv1.ParentReference{p}
	in.HTTPRoutes = []*gatewayv1.HTTPRoute{r}
	out := routes.Build(in)
	if got := names(routesAt(t, out, echo8080)); len(got) != 1 || got[0] != "default" {
		t.Errorf("routes %v, want the default route", got)
	}
	c := condAt(t, out, routes.RouteKey{Kind: "HTTPRoute", Namespace: "client", Name: "r"}, "Accepted")
	if c.Status != "False" || c.Reason != "NotAllowedByListeners" {
		t.Errorf("Accepted = %+v", c)
	}
}

func TestConditionsPerParentRef(t *testing.T) {
	in := mesh()
	r := httpRoute("r", 0, rule())
	r.Spec.ParentRefs = []gatewayv1.ParentReference{parent("echo", 8080), {Name: "gw"}, parent("nope")}
	in.HTTPRoutes = []*gatewayv1.HTTPRoute{r}
	out := routes.Build(in)
	k := func(i int) routes.RouteKey {
		return routes.RouteKey{Kind: "HTTPRoute", Namespace: ns, Name: "r", ParentIndex: i}
	}
	if len(out.Conditions) != 2 {
		t.Fatalf("conditions for %d parentRefs, want 2: %v", len(out.Conditions), out.Conditions)
	}
	for _, typ := range []string{"Accepted", "ResolvedRefs"} {
		c := condAt(t, out, k(0), typ)
		if c.Status != metav1.ConditionTrue || c.Reason != typ || c.ObservedGeneration != 3 {
			t.Errorf("parent 0 %s = %+v", typ, c)
		}
	}
	if c := condAt(t, out, k(2), "Accepted"); c.Status != "False" || c.Reason != "NoMatchingParent" || !strings.Contains(c.Message, "demo/nope") {
		t.Errorf("parent 2 Accepted = %+v", c)
	}
}

// TestBadInput: nothing in the input makes Build panic.
func TestBadInput(t *testing.T) {
	empty := &gatewayv1.HTTPRoute{}
	noName := httpRoute("", 0, rule())
	nilSpecParts := httpRoute("nils", 0, gatewayv1.HTTPRouteRule{
		Matches: []gatewayv1.HTTPRouteMatch{{Path: &gatewayv1.HTTPPathMatch{Type: ptr(gatewayv1.PathMatchExact)}}},
		Filters: []gatewayv1.HTTPRouteFilter{
			{Type: gatewayv1.HTTPRouteFilterRequestHeaderModifier},
			{Type: gatewayv1.HTTPRouteFilterRequestRedirect, RequestRedirect: &gatewayv1.HTTPRequestRedirectFilter{Path: &gatewayv1.HTTPPathModifier{}}},
		},
		BackendRefs: []gatewayv1.HTTPBackendRef{{}},
		Timeouts:    &gatewayv1.HTTPRouteTimeouts{},
		Retry:       &gatewayv1.HTTPRouteRetry{},
	})
	nilFilterBodies := httpRoute("bodies", 0)
	for _, ft := range []gatewayv1.HTTPRouteFilterType{
		gatewayv1.HTTPRouteFilterRequestHeaderModifier, gatewayv1.HTTPRouteFilterResponseHeaderModifier,
		gatewayv1.HTTPRouteFilterRequestRedirect, gatewayv1.HTTPRouteFilterURLRewrite, gatewayv1.HTTPRouteFilterRequestMirror,
		gatewayv1.HTTPRouteFilterCORS, gatewayv1.HTTPRouteFilterExtensionRef, "",
	} {
		nilFilterBodies.Spec.Rules = append(nilFilterBodies.Spec.Rules, gatewayv1.HTTPRouteRule{Filters: []gatewayv1.HTTPRouteFilter{{Type: ft}}})
	}
	rewriteNil := httpRoute("rw", 0, gatewayv1.HTTPRouteRule{
		Filters: []gatewayv1.HTTPRouteFilter{{Type: gatewayv1.HTTPRouteFilterURLRewrite, URLRewrite: &gatewayv1.HTTPURLRewriteFilter{
			Path: &gatewayv1.HTTPPathModifier{Type: gatewayv1.PrefixMatchHTTPPathModifier},
		}}},
		BackendRefs: []gatewayv1.HTTPBackendRef{to("v1", 8080)},
	})
	badParent := httpRoute("bp", 0, rule())
	badParent.Spec.ParentRefs = []gatewayv1.ParentReference{{Group: ptr(gatewayv1.Group("")), Kind: ptr(gatewayv1.Kind("Service"))}}
	in := routes.Inputs{
		Services: []routes.Service{
			{}, {Name: "nohost", Namespace: ns, Ports: []routes.Port{{}, {Port: 80}}},
			svc(ns, "echo", 8080), svc(ns, "echo", 1),
		},
		Bound:      []routes.ServiceRef{{}, {Namespace: ns, Name: "echo"}, {Namespace: ns, Name: "echo"}, {Namespace: ns, Name: "nohost"}, {Name: "ghost"}},
		HTTPRoutes: []*gatewayv1.HTTPRoute{nil, empty, noName, nilSpecParts, nilFilterBodies, rewriteNil, badParent},
		GRPCRoutes: []*gatewayv1.GRPCRoute{nil, {}, grpcRoute("g", 0, gatewayv1.GRPCRouteRule{
			Matches: []gatewayv1.GRPCRouteMatch{{Method: &gatewayv1.GRPCMethodMatch{Type: ptr(gatewayv1.GRPCMethodMatchType(""))}}},
			Filters: []gatewayv1.GRPCRouteFilter{{Type: gatewayv1.GRPCRouteFilterRequestMirror}},
		})},
		TCPRoutes:       []*gatewayv1.TCPRoute{nil, {}, {ObjectMeta: metav1.ObjectMeta{Name: "t", Namespace: ns}}},
		ReferenceGrants: []*gatewayv1.ReferenceGrant{nil, {}},
	}
	out := routes.Build(in)
	if _, ok := out.Routes["nohost.demo.svc.cluster.local:80"]; !ok {
		t.Errorf("Service without Hostname: want the default hostname; got %v", keys(out.Routes))
	}
	if got := len(routesAt(t, out, echo8080)); got == 0 {
		t.Error("no routes for echo")
	}
	for key, cs := range out.Conditions {
		if len(cs) != 2 {
			t.Errorf("%+v: %d conditions", key, len(cs))
		}
	}
}
