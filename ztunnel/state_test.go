package ztunnel

import (
	"net/netip"
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
