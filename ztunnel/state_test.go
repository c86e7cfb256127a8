package ztunnel

import (
	"net/netip"
	"slices"
	"testing"

	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"
)

func TestIndexEndpoints(t *testing.T) {
	const svc = "demo/echo.demo.svc.cluster.local"
	x := NewIndex()
	x.Update([]*workloadapi.Address{
		workload("e1", "10.0.0.1", "echo", true, svc, 8080),
		workload("e2", "10.0.0.2", "echo", true, svc, 8080),
		workload("other", "10.0.0.3", "x", true, "", 0),
	}, nil, true)
	names := func() map[string]bool {
		out := map[string]bool{}
		for _, w := range x.endpoints[svc] {
			out[w.GetName()] = true
		}
		return out
	}
	for _, step := range []struct {
		name    string
		apply   func()
		want    []string
		svcGone bool
	}{
		{"initial", func() {}, []string{"e1", "e2"}, false},
		{"an endpoint leaves the service", func() {
			x.Update([]*workloadapi.Address{workload("e2", "10.0.0.2", "echo", true, "", 0)}, nil, false)
		}, []string{"e1"}, false},
		{"a workload joins", func() {
			x.Update([]*workloadapi.Address{workload("other", "10.0.0.3", "x", true, svc, 9090)}, nil, false)
		}, []string{"e1", "other"}, false},
		{"workloads removed", func() {
			x.Update(nil, []string{"Kubernetes//Pod/demo/e1", "Kubernetes//Pod/demo/other"}, false)
		}, nil, true},
	} {
		step.apply()
		got := names()
		if len(got) != len(step.want) {
			t.Fatalf("%s: endpoints %v, want %v", step.name, got, step.want)
		}
		for _, n := range step.want {
			if !got[n] {
				t.Fatalf("%s: endpoints %v, want %v", step.name, got, step.want)
			}
		}
		if _, ok := x.endpoints[svc]; ok == step.svcGone {
			t.Fatalf("%s: service entry present %v", step.name, ok)
		}
	}
}

func TestIndexPoliciesFor(t *testing.T) {
	x := NewIndex()
	w := workload("b", "10.0.0.2", "echo", true, "", 0)
	w.GetWorkload().AuthorizationPolicies = []string{"demo/sel"}
	x.Update([]*workloadapi.Address{w}, nil, true)
	ns := &security.Authorization{Name: "ns", Namespace: "demo", Scope: security.Scope_NAMESPACE}
	sel := &security.Authorization{Name: "sel", Namespace: "demo", Scope: security.Scope_WORKLOAD_SELECTOR}
	x.UpdatePolicies([]*security.Authorization{sel}, nil, true)
	b := x.WorkloadByIP(netip.MustParseAddr("10.0.0.2"))
	keys := func() []string {
		var out []string
		for _, p := range x.PoliciesFor(b) {
			out = append(out, p.GetNamespace()+"/"+p.GetName())
		}
		return out
	}
	if got := keys(); len(got) != 1 || got[0] != "demo/sel" {
		t.Fatalf("policies %v", got)
	}
	// A policy update must not be hidden by the cache.
	x.UpdatePolicies([]*security.Authorization{ns}, nil, false)
	if got := keys(); len(got) != 2 || got[0] != "demo/ns" || got[1] != "demo/sel" {
		t.Fatalf("after a policy update: %v", got)
	}
	// Nor a workload update (the new resource no longer selects "sel").
	x.Update([]*workloadapi.Address{workload("b", "10.0.0.2", "echo", true, "", 0)}, nil, false)
	b = x.WorkloadByIP(netip.MustParseAddr("10.0.0.2"))
	if got := keys(); len(got) != 1 || got[0] != "demo/ns" {
		t.Fatalf("after a workload update: %v", got)
	}
	// Workloads that are not the index's are answered, not cached.
	stranger := &workloadapi.Workload{Namespace: "demo", Name: "x"}
	for range 3 {
		if got := x.PoliciesFor(stranger); len(got) != 1 {
			t.Fatalf("stranger: %v", got)
		}
	}
	if len(x.selected) > 1 {
		t.Fatalf("cache holds %d entries", len(x.selected))
	}
}

// TestPickEndpointLoadBalancing is the table of a service's load-balancing
// shapes and the endpoints a client on node1/zone-a may get.
func TestPickEndpointLoadBalancing(t *testing.T) {
	const key = "demo/echo.demo.svc.cluster.local"
	ep := func(name, node, zone string, healthy bool) *workloadapi.Address {
		a := workload(name, "10.0.0."+name[1:], "echo", true, key, 8080)
		w := a.GetWorkload()
		w.Node, w.Locality = node, &workloadapi.Locality{Region: "r", Zone: zone}
		if !healthy {
			w.Status = workloadapi.WorkloadStatus_UNHEALTHY
		}
		return a
	}
	src := &workloadapi.Workload{Name: "client", Node: "node1", Locality: &workloadapi.Locality{Region: "r", Zone: "zone-a"}}
	nodeLocal := &workloadapi.LoadBalancing{RoutingPreference: []workloadapi.LoadBalancing_Scope{workloadapi.LoadBalancing_NODE}, Mode: workloadapi.LoadBalancing_STRICT}
	sameZone := &workloadapi.LoadBalancing{RoutingPreference: []workloadapi.LoadBalancing_Scope{
		workloadapi.LoadBalancing_NETWORK, workloadapi.LoadBalancing_REGION, workloadapi.LoadBalancing_ZONE}, Mode: workloadapi.LoadBalancing_FAILOVER}
	for _, tc := range []struct {
		name      string
		lb        *workloadapi.LoadBalancing
		endpoints []*workloadapi.Address
		src       *workloadapi.Workload
		want      []string // the endpoints that may be chosen; none: an error
	}{
		{"default: any healthy", nil, []*workloadapi.Address{ep("e1", "node1", "zone-a", true), ep("e2", "node2", "zone-b", true), ep("e3", "node2", "zone-b", false)}, src, []string{"e1", "e2"}},
		{"node local", nodeLocal, []*workloadapi.Address{ep("e1", "node1", "zone-a", true), ep("e2", "node2", "zone-a", true)}, src, []string{"e1"}},
		{"node local, none on this node", nodeLocal, []*workloadapi.Address{ep("e2", "node2", "zone-a", true)}, src, nil},
		{"node local, the local one unhealthy", nodeLocal, []*workloadapi.Address{ep("e1", "node1", "zone-a", false), ep("e2", "node2", "zone-a", true)}, src, nil},
		{"node local without a source (a waypoint)", nodeLocal, []*workloadapi.Address{ep("e2", "node2", "zone-a", true)}, nil, []string{"e2"}},
		{"same zone preferred", sameZone, []*workloadapi.Address{ep("e1", "node3", "zone-a", true), ep("e2", "node2", "zone-b", true)}, src, []string{"e1"}},
		{"same zone gone: fail over", sameZone, []*workloadapi.Address{ep("e1", "node3", "zone-a", false), ep("e2", "node2", "zone-b", true), ep("e3", "node4", "zone-c", true)}, src, []string{"e2", "e3"}},
		{"allow all health", &workloadapi.LoadBalancing{HealthPolicy: workloadapi.LoadBalancing_ALLOW_ALL}, []*workloadapi.Address{ep("e3", "node2", "zone-b", false)}, src, []string{"e3"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			x := NewIndex()
			svc := &workloadapi.Service{Name: "echo", Namespace: "demo", Hostname: "echo.demo.svc.cluster.local",
				Ports: []*workloadapi.Port{{ServicePort: 80, TargetPort: 8080}}, LoadBalancing: tc.lb}
			x.Update(append(tc.endpoints, &workloadapi.Address{Type: &workloadapi.Address_Service{Service: svc}}), nil, true)
			got := map[string]bool{}
			for range 200 {
				e, err := x.pickEndpoint(svc, 80, tc.src)
				if err != nil {
					if tc.want != nil {
						t.Fatalf("error %v, want one of %v", err, tc.want)
					}
					return
				}
				got[e.w.GetName()] = true
			}
			if tc.want == nil {
				t.Fatalf("picked %v, want an error", got)
			}
			for n := range got {
				if !slices.Contains(tc.want, n) {
					t.Errorf("picked %s, want one of %v", n, tc.want)
				}
			}
			if len(got) != len(tc.want) {
				t.Errorf("picked %v over 200 tries, want each of %v", got, tc.want)
			}
		})
	}
}
