package ztunnel

import (
	"net/netip"
	"strings"
	"testing"

	"istio.io/istio/pkg/workloadapi"
)

// TestResolve covers outbound resolution without root: it needs only the
// index.
func TestResolve(t *testing.T) {
	const key = "demo/echo.demo.svc.cluster.local"
	svc := func(ports ...*workloadapi.Port) *workloadapi.Address {
		return &workloadapi.Address{Type: &workloadapi.Address_Service{Service: &workloadapi.Service{Name: "echo", Namespace: "demo",
			Hostname: "echo.demo.svc.cluster.local", Addresses: []*workloadapi.NetworkAddress{{Address: netip.MustParseAddr("10.96.0.10").AsSlice()}}, Ports: ports}}}
	}
	unhealthy := func(a *workloadapi.Address) *workloadapi.Address {
		a.GetWorkload().Status = workloadapi.WorkloadStatus_UNHEALTHY
		return a
	}
	named := func(a *workloadapi.Address, target uint32) *workloadapi.Address {
		a.GetWorkload().Services[key] = &workloadapi.PortList{Ports: []*workloadapi.Port{{ServicePort: 80, TargetPort: target}}}
		return a
	}
	for _, tc := range []struct {
		name      string
		addresses []*workloadapi.Address
		dst       string
		kind      routeKind
		addr      string // next hop
		authority string
		wantErr   string
	}{
		{name: "VIP to an enrolled endpoint, port mapped",
			addresses: []*workloadapi.Address{svc(&workloadapi.Port{ServicePort: 80, TargetPort: 8080}), workload("e", "10.0.0.2", "echo", true, key, 8080)},
			dst:       "10.96.0.10:80", kind: routeHBONE, addr: "10.0.0.2:15008", authority: "10.0.0.2:8080"},
		{name: "VIP to an endpoint outside the mesh",
			addresses: []*workloadapi.Address{svc(&workloadapi.Port{ServicePort: 80, TargetPort: 8080}), workload("e", "10.0.0.2", "echo", false, key, 8080)},
			dst:       "10.96.0.10:80", kind: routeTCP, addr: "10.0.0.2:8080"},
		{name: "VIP with a named port: the endpoint's own target port",
			addresses: []*workloadapi.Address{svc(&workloadapi.Port{ServicePort: 80, TargetPort: 0}), named(workload("e", "10.0.0.2", "echo", true, key, 0), 9090)},
			dst:       "10.96.0.10:80", kind: routeHBONE, addr: "10.0.0.2:15008", authority: "10.0.0.2:9090"},
		{name: "VIP with a named port the endpoint lacks",
			addresses: []*workloadapi.Address{svc(&workloadapi.Port{ServicePort: 80, TargetPort: 0}), named(workload("e", "10.0.0.2", "echo", true, key, 0), 0)},
			dst:       "10.96.0.10:80", wantErr: "no healthy upstream"},
		{name: "VIP port the service does not have",
			addresses: []*workloadapi.Address{svc(&workloadapi.Port{ServicePort: 80, TargetPort: 8080}), workload("e", "10.0.0.2", "echo", true, key, 8080)},
			dst:       "10.96.0.10:81", wantErr: "has no port 81"},
		{name: "VIP whose only endpoint is unhealthy",
			addresses: []*workloadapi.Address{svc(&workloadapi.Port{ServicePort: 80, TargetPort: 8080}), unhealthy(workload("e", "10.0.0.2", "echo", true, key, 8080))},
			dst:       "10.96.0.10:80", wantErr: "no healthy upstream"},
		{name: "VIP: unhealthy endpoints are skipped",
			addresses: []*workloadapi.Address{svc(&workloadapi.Port{ServicePort: 80, TargetPort: 8080}), unhealthy(workload("bad", "10.0.0.3", "echo", true, key, 8080)), workload("e", "10.0.0.2", "echo", true, key, 8080)},
			dst:       "10.96.0.10:80", kind: routeHBONE, addr: "10.0.0.2:15008", authority: "10.0.0.2:8080"},
		{name: "pod IP, enrolled",
			addresses: []*workloadapi.Address{workload("e", "10.0.0.2", "echo", true, "", 0)},
			dst:       "10.0.0.2:7000", kind: routeHBONE, addr: "10.0.0.2:15008", authority: "10.0.0.2:7000"},
		{name: "pod IP, not enrolled",
			addresses: []*workloadapi.Address{workload("e", "10.0.0.2", "echo", false, "", 0)},
			dst:       "10.0.0.2:7000", kind: routeTCP, addr: "10.0.0.2:7000"},
		{name: "unknown address: passthrough",
			addresses: []*workloadapi.Address{workload("e", "10.0.0.2", "echo", true, "", 0)},
			dst:       "192.0.2.1:443", kind: routePassthrough, addr: "192.0.2.1:443"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			x := NewIndex()
			x.Update(tc.addresses, nil, true)
			x.UpdatePolicies(nil, nil, true)
			z := New(Config{Index: x})
			rt, err := z.resolve(netip.MustParseAddrPort(tc.dst))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if rt.kind != tc.kind || rt.addr.String() != tc.addr || rt.authority != tc.authority {
				t.Fatalf("route %s to %s (authority %q), want %s to %s (%q)", rt.kind, rt.addr, rt.authority, tc.kind, tc.addr, tc.authority)
			}
			if tc.kind == routeHBONE && rt.expect.String() != "spiffe://cluster.local/ns/demo/sa/echo" {
				t.Fatalf("expected identity %s", rt.expect)
			}
		})
	}
}
