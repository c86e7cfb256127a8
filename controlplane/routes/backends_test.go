package routes_test

import (
	"strings"
	"testing"

	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambit-mesh/ambit/controlplane/routes"
)

func TestBackends(t *testing.T) {
	const (
		v1 = `"outbound|8080||v1.demo.svc.cluster.local"`
		v2 = `"outbound|8080||v2.demo.svc.cluster.local"`
	)
	far := to("far", 8080)
	far.Namespace = ptr(gatewayv1.Namespace("remote"))
	farWeighted := weighted("far", 8080, 1)
	farWeighted.Namespace = ptr(gatewayv1.Namespace("remote"))
	noPort := to("v1", 8080)
	noPort.Port = nil
	kind := to("v1", 8080)
	kind.Kind = ptr(gatewayv1.Kind("ServiceImport"))
	group := to("v1", 8080)
	group.Group = ptr(gatewayv1.Group("multicluster.x-k8s.io"))
	grant := &gatewayv1.ReferenceGrant{}
	grant.Namespace = "remote"
	grant.Spec.From = []gatewayv1.ReferenceGrantFrom{{Group: gatewayv1.GroupName, Kind: "HTTPRoute", Namespace: ns}}
	grant.Spec.To = []gatewayv1.ReferenceGrantTo{{Group: "", Kind: "Service"}}
	wrongGrant := grant.DeepCopy()
	wrongGrant.Spec.From[0].Kind = "GRPCRoute"

	for _, tc := range []struct {
		name     string
		backends []gatewayv1.HTTPBackendRef
		grants   []*gatewayv1.ReferenceGrant
		action   string
		resolved string // ResolvedRefs reason
	}{
		{"single backend", []gatewayv1.HTTPBackendRef{to("v1", 8080)},
			nil, `route: {cluster: ` + v1 + ` timeout: {}}`, "ResolvedRefs"},
		{"weighted 90/10", []gatewayv1.HTTPBackendRef{weighted("v1", 8080, 90), weighted("v2", 8080, 10)},
			nil, `route: {weighted_clusters: {clusters: {name: ` + v1 + ` weight: {value: 90}} clusters: {name: ` + v2 + ` weight: {value: 10}}} timeout: {}}`, "ResolvedRefs"},
		{"default weight is 1", []gatewayv1.HTTPBackendRef{to("v1", 8080), weighted("v2", 8080, 3)},
			nil, `route: {weighted_clusters: {clusters: {name: ` + v1 + ` weight: {value: 1}} clusters: {name: ` + v2 + ` weight: {value: 3}}} timeout: {}}`, "ResolvedRefs"},
		{"weight 0 is dropped", []gatewayv1.HTTPBackendRef{weighted("v1", 8080, 0), weighted("v2", 8080, 5)},
			nil, `route: {cluster: ` + v2 + ` timeout: {}}`, "ResolvedRefs"},
		{"single backend weight 0", []gatewayv1.HTTPBackendRef{weighted("v1", 8080, 0)},
			nil, `direct_response: {status: 500 body: {inline_string: "all backendRefs have weight 0"}}`, "ResolvedRefs"},
		{"no backendRefs", nil,
			nil, `direct_response: {status: 500 body: {inline_string: "no backendRefs"}}`, "ResolvedRefs"},
		{"missing Service", []gatewayv1.HTTPBackendRef{to("gone", 80)},
			nil, `direct_response: {status: 500 body: {inline_string: "backend demo/gone:80 not found"}}`, "BackendNotFound"},
		{"missing port", []gatewayv1.HTTPBackendRef{to("v1", 9999)},
			nil, `direct_response: {status: 500 body: {inline_string: "backend demo/v1:9999 not found"}}`, "BackendNotFound"},
		{"no port", []gatewayv1.HTTPBackendRef{noPort},
			nil, `direct_response: {status: 500 body: {inline_string: "backend demo/v1:0 not found"}}`, "BackendNotFound"},
		{"one of two missing keeps its share as a 500", []gatewayv1.HTTPBackendRef{weighted("v1", 8080, 3), weighted("gone", 80, 1)},
			nil, `route: {weighted_clusters: {clusters: {name: ` + v1 + ` weight: {value: 3}} clusters: {name: "invalid-backend|demo/gone:80" weight: {value: 1}}}
			 cluster_not_found_response_code: INTERNAL_SERVER_ERROR timeout: {}}`, "BackendNotFound"},
		{"cross-namespace without ReferenceGrant", []gatewayv1.HTTPBackendRef{far},
			nil, `direct_response: {status: 500 body: {inline_string: "backend remote/far:8080 not permitted"}}`, "RefNotPermitted"},
		{"cross-namespace, grant for another kind", []gatewayv1.HTTPBackendRef{far},
			[]*gatewayv1.ReferenceGrant{wrongGrant}, `direct_response: {status: 500 body: {inline_string: "backend remote/far:8080 not permitted"}}`, "RefNotPermitted"},
		{"cross-namespace with ReferenceGrant", []gatewayv1.HTTPBackendRef{far},
			[]*gatewayv1.ReferenceGrant{grant}, `route: {cluster: "outbound|8080||far.remote.svc.cluster.local" timeout: {}}`, "ResolvedRefs"},
		{"refused cross-namespace share", []gatewayv1.HTTPBackendRef{weighted("v1", 8080, 1), farWeighted},
			nil, `route: {weighted_clusters: {clusters: {name: ` + v1 + ` weight: {value: 1}} clusters: {name: "invalid-backend|remote/far:8080" weight: {value: 1}}}
			 cluster_not_found_response_code: INTERNAL_SERVER_ERROR timeout: {}}`, "RefNotPermitted"},
		{"unsupported kind", []gatewayv1.HTTPBackendRef{kind},
			nil, `direct_response: {status: 500 body: {inline_string: "backend demo/v1:8080 has an unsupported kind"}}`, "InvalidKind"},
		{"unsupported group", []gatewayv1.HTTPBackendRef{group},
			nil, `direct_response: {status: 500 body: {inline_string: "backend demo/v1:8080 has an unsupported kind"}}`, "InvalidKind"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := mesh()
			in.ReferenceGrants = tc.grants
			in.HTTPRoutes = []*gatewayv1.HTTPRoute{httpRoute("r", 0, gatewayv1.HTTPRouteRule{BackendRefs: tc.backends})}
			out := routes.Build(in)
			rs := echoRoutes(t, out)
			if len(rs) != 1 {
				t.Fatalf("%d routes", len(rs))
			}
			assertRoute(t, rs[0], `name: "HTTPRoute/demo/r/rule/0/match/0" match: {prefix: "/"} `+tc.action)
			c := cond(t, out, "HTTPRoute", "r", "ResolvedRefs")
			if c.Reason != tc.resolved || (c.Status == "True") != (tc.resolved == "ResolvedRefs") {
				t.Errorf("ResolvedRefs = %s/%s (%s), want reason %s", c.Status, c.Reason, c.Message, tc.resolved)
			}
			if a := cond(t, out, "HTTPRoute", "r", "Accepted"); a.Status != "True" {
				t.Errorf("Accepted = %+v: invalid backends do not make a route unaccepted", a)
			}
		})
	}
}

func TestNegativeWeight(t *testing.T) {
	in := mesh()
	in.HTTPRoutes = []*gatewayv1.HTTPRoute{httpRoute("r", 0, gatewayv1.HTTPRouteRule{
		BackendRefs: []gatewayv1.HTTPBackendRef{weighted("v1", 8080, -1)},
	})}
	out := routes.Build(in)
	rs := echoRoutes(t, out)
	if rs[0].GetDirectResponse().GetStatus() != 500 {
		t.Errorf("route %v, want a 500", rs[0])
	}
	if c := cond(t, out, "HTTPRoute", "r", "Accepted"); c.Status != "False" || !strings.Contains(c.Message, "negative") {
		t.Errorf("Accepted = %+v", c)
	}
}
