package routes_test

import (
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambit-mesh/ambit/controlplane/routes"
)

func tcpRoute(name string, age int, port int32, backends ...gatewayv1.BackendRef) *gatewayv1.TCPRoute {
	r := &gatewayv1.TCPRoute{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, CreationTimestamp: created(age)}}
	r.Spec.ParentRefs = []gatewayv1.ParentReference{parent("echo", port)}
	r.Spec.Rules = []gatewayv1.TCPRouteRule{{BackendRefs: backends}}
	return r
}

func TestTCPRoutes(t *testing.T) {
	w := func(name string, port, weight int32) gatewayv1.BackendRef {
		r := ref(name, port)
		r.Weight = ptr(weight)
		return r
	}
	in := mesh()
	in.TCPRoutes = []*gatewayv1.TCPRoute{
		tcpRoute("split", 1, 9090, w("v1", 8080, 80), w("v2", 8080, 20)),
		tcpRoute("newer", 0, 9090, ref("v1", 8080)),
		tcpRoute("gone", 0, 8080, ref("gone", 1)),
	}
	out := routes.Build(in)
	assertRoute(t, out.TCPRoutes[echo9090].GetVirtualHosts()[0].GetRoutes()[0], `name: "TCPRoute/demo/split/rule/0" match: {prefix: "/"}
		route: {weighted_clusters: {clusters: {name: "outbound|8080||v1.demo.svc.cluster.local" weight: {value: 80}}
			clusters: {name: "outbound|8080||v2.demo.svc.cluster.local" weight: {value: 20}}}}`)
	assertRoute(t, out.TCPRoutes[echo8080].GetVirtualHosts()[0].GetRoutes()[0], `name: "TCPRoute/demo/gone/rule/0" match: {prefix: "/"}
		direct_response: {status: 500 body: {inline_string: "backend demo/gone:1 not found"}}`)
	if c := cond(t, out, "TCPRoute", "newer", "Accepted"); c.Status != "False" || !strings.Contains(c.Message, "already taken by TCPRoute demo/split") {
		t.Errorf("newer Accepted = %+v", c)
	}
	if c := cond(t, out, "TCPRoute", "split", "Accepted"); c.Status != "True" {
		t.Errorf("split Accepted = %+v", c)
	}
	if c := cond(t, out, "TCPRoute", "gone", "ResolvedRefs"); c.Status != "False" || c.Reason != "BackendNotFound" {
		t.Errorf("gone ResolvedRefs = %+v", c)
	}
	// HTTP routes are unaffected by TCPRoutes.
	if got := names(routesAt(t, out, echo9090)); len(got) != 1 || got[0] != routes.DefaultRouteName {
		t.Errorf("HTTP routes %v", got)
	}
}
