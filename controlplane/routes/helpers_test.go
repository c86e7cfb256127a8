package routes_test

import (
	"fmt"
	"testing"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambit-mesh/ambit/controlplane/routes"
)

const ns = "demo"

func ptr[T any](v T) *T { return &v }

// created is the creation time of a test route age hours old.
func created(age int) metav1.Time {
	return metav1.NewTime(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).Add(-time.Duration(age) * time.Hour))
}

func svc(namespace, name string, ports ...uint32) routes.Service {
	s := routes.Service{Namespace: namespace, Name: name, Hostname: name + "." + namespace + ".svc.cluster.local"}
	for _, p := range ports {
		s.Ports = append(s.Ports, routes.Port{Port: p, Name: fmt.Sprintf("port-%d", p)})
	}
	return s
}

// mesh is the Services every test starts with: echo (bound, 8080 and
// 9090), v1 and v2 (8080), and remote/far (8080) in another namespace.
func mesh() routes.Inputs {
	return routes.Inputs{
		Services: []routes.Service{
			svc(ns, "echo", 8080, 9090),
			svc(ns, "v1", 8080),
			svc(ns, "v2", 8080),
			svc("remote", "far", 8080),
		},
		Bound: []routes.ServiceRef{{Namespace: ns, Name: "echo"}},
	}
}

func parent(name string, port ...int32) gatewayv1.ParentReference {
	p := gatewayv1.ParentReference{Group: ptr(gatewayv1.Group("")), Kind: ptr(gatewayv1.Kind("Service")), Name: gatewayv1.ObjectName(name)}
	if len(port) > 0 {
		p.Port = ptr(gatewayv1.PortNumber(port[0]))
	}
	return p
}

func ref(name string, port int32) gatewayv1.BackendRef {
	return gatewayv1.BackendRef{BackendObjectReference: gatewayv1.BackendObjectReference{
		Name: gatewayv1.ObjectName(name), Port: ptr(gatewayv1.PortNumber(port)),
	}}
}

func weighted(name string, port, weight int32) gatewayv1.HTTPBackendRef {
	r := ref(name, port)
	r.Weight = ptr(weight)
	return gatewayv1.HTTPBackendRef{BackendRef: r}
}

func to(name string, port int32) gatewayv1.HTTPBackendRef {
	return gatewayv1.HTTPBackendRef{BackendRef: ref(name, port)}
}

func httpRoute(name string, age int, rules ...gatewayv1.HTTPRouteRule) *gatewayv1.HTTPRoute {
	return &gatewayv1.HTTPRoute{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: ns, Name: name, Generation: 3,
			CreationTimestamp: created(age),
		},
		Spec: gatewayv1.HTTPRouteSpec{
			CommonRouteSpec: gatewayv1.CommonRouteSpec{ParentRefs: []gatewayv1.ParentReference{parent("echo")}},
			Rules:           rules,
		},
	}
}

func grpcRoute(name string, age int, rules ...gatewayv1.GRPCRouteRule) *gatewayv1.GRPCRoute {
	return &gatewayv1.GRPCRoute{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: ns, Name: name, Generation: 1,
			CreationTimestamp: created(age),
		},
		Spec: gatewayv1.GRPCRouteSpec{
			CommonRouteSpec: gatewayv1.CommonRouteSpec{ParentRefs: []gatewayv1.ParentReference{parent("echo")}},
			Rules:           rules,
		},
	}
}

func prefix(v string) *gatewayv1.HTTPPathMatch {
	return &gatewayv1.HTTPPathMatch{Type: ptr(gatewayv1.PathMatchPathPrefix), Value: ptr(v)}
}

func exact(v string) *gatewayv1.HTTPPathMatch {
	return &gatewayv1.HTTPPathMatch{Type: ptr(gatewayv1.PathMatchExact), Value: ptr(v)}
}

func regex(v string) *gatewayv1.HTTPPathMatch {
	return &gatewayv1.HTTPPathMatch{Type: ptr(gatewayv1.PathMatchRegularExpression), Value: ptr(v)}
}

// echoRoutes returns the routes of echo's port 8080.
func echoRoutes(t *testing.T, out routes.Output) []*routev3.Route {
	t.Helper()
	return routesAt(t, out, "echo.demo.svc.cluster.local:8080")
}

func routesAt(t *testing.T, out routes.Output, name string) []*routev3.Route {
	t.Helper()
	rc := out.Routes[name]
	if rc == nil {
		t.Fatalf("no RouteConfiguration %q; have %v", name, keys(out.Routes))
	}
	if rc.GetName() != name || len(rc.GetVirtualHosts()) != 1 {
		t.Fatalf("RouteConfiguration %q: name %q, %d virtual hosts", name, rc.GetName(), len(rc.GetVirtualHosts()))
	}
	vh := rc.GetVirtualHosts()[0]
	if len(vh.GetDomains()) != 1 || vh.GetDomains()[0] != "*" {
		t.Fatalf("virtual host domains %v, want [*]", vh.GetDomains())
	}
	return vh.GetRoutes()
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// textRoute parses a route written in protobuf text format.
func textRoute(t *testing.T, text string) *routev3.Route {
	t.Helper()
	r := &routev3.Route{}
	if err := prototext.Unmarshal([]byte(text), r); err != nil {
		t.Fatalf("bad expected route %q: %v", text, err)
	}
	return r
}

func assertRoute(t *testing.T, got *routev3.Route, want string) {
	t.Helper()
	w := textRoute(t, want)
	if !proto.Equal(got, w) {
		t.Errorf("route mismatch\n got: %s\nwant: %s", prototext.Format(got), prototext.Format(w))
	}
}

func names(rs []*routev3.Route) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = r.GetName()
	}
	return out
}

// cond returns a condition of a route's parentRef 0.
func cond(t *testing.T, out routes.Output, kind, name, typ string) metav1.Condition {
	t.Helper()
	return condAt(t, out, routes.RouteKey{Kind: kind, Namespace: ns, Name: name}, typ)
}

func condAt(t *testing.T, out routes.Output, key routes.RouteKey, typ string) metav1.Condition {
	t.Helper()
	for _, c := range out.Conditions[key] {
		if c.Type == typ {
			return c
		}
	}
	t.Fatalf("no %s condition for %+v; conditions: %+v", typ, key, out.Conditions)
	return metav1.Condition{}
}

// toV1 is the route action of a rule forwarding to v1:8080.
const toV1 = `route: {cluster: "outbound|8080||v1.demo.svc.cluster.local" timeout: {}}`
