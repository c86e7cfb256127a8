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
			rt, err := z.resolve(nil, netip.MustParseAddrPort(tc.dst))
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

// TestResolveWaypoint: a service or pod with a waypoint is reached through
// it, with the original destination as the authority; never around it.
func TestResolveWaypoint(t *testing.T) {
	const (
		echoKey = "demo/echo.demo.svc.cluster.local"
		wpKey   = "demo/waypoint.demo.svc.cluster.local"
	)
	gw := &workloadapi.GatewayAddress{Destination: &workloadapi.GatewayAddress_Hostname{Hostname: &workloadapi.NamespacedHostname{
		Namespace: "demo", Hostname: "waypoint.demo.svc.cluster.local"}}, HboneMtlsPort: 15008}
	service := func(name, vip string, withWaypoint bool) *workloadapi.Address {
		s := &workloadapi.Service{Name: name, Namespace: "demo", Hostname: name + ".demo.svc.cluster.local",
			Addresses: []*workloadapi.NetworkAddress{{Address: netip.MustParseAddr(vip).AsSlice()}},
			Ports:     []*workloadapi.Port{{ServicePort: 80, TargetPort: 8080}, {ServicePort: 15008, TargetPort: 15008}}}
		if withWaypoint {
			s.Waypoint = gw
		}
		return &workloadapi.Address{Type: &workloadapi.Address_Service{Service: s}}
	}
	withWaypoint := func(a *workloadapi.Address) *workloadapi.Address {
		a.GetWorkload().Waypoint = gw
		return a
	}
	down := func(a *workloadapi.Address) *workloadapi.Address {
		a.GetWorkload().Status = workloadapi.WorkloadStatus_UNHEALTHY
		return a
	}
	wpPod := func() *workloadapi.Address {
		return workload("waypoint-0", "10.0.0.50", "waypoint", true, wpKey, 15008)
	}
	for _, tc := range []struct {
		name                    string
		addresses               []*workloadapi.Address
		src                     string // source workload name ("" none)
		dst                     string
		addr, authority, expect string
		wantErr                 string
	}{
		{name: "service VIP with a waypoint: to the waypoint, authority VIP:port",
			addresses: []*workloadapi.Address{service("echo", "10.96.0.10", true), service("waypoint", "10.96.0.50", false), wpPod(), workload("e", "10.0.0.2", "echo", true, echoKey, 8080)},
			dst:       "10.96.0.10:80", addr: "10.0.0.50:15008", authority: "10.96.0.10:80", expect: "spiffe://cluster.local/ns/demo/sa/waypoint"},
		{name: "service VIP without a waypoint: to the endpoint",
			addresses: []*workloadapi.Address{service("echo", "10.96.0.10", false), service("waypoint", "10.96.0.50", false), wpPod(), workload("e", "10.0.0.2", "echo", true, echoKey, 8080)},
			dst:       "10.96.0.10:80", addr: "10.0.0.2:15008", authority: "10.0.0.2:8080", expect: "spiffe://cluster.local/ns/demo/sa/echo"},
		{name: "pod IP with a workload waypoint: authority podIP:port",
			addresses: []*workloadapi.Address{service("waypoint", "10.96.0.50", false), wpPod(), withWaypoint(workload("e", "10.0.0.2", "echo", true, "", 0))},
			dst:       "10.0.0.2:7000", addr: "10.0.0.50:15008", authority: "10.0.0.2:7000", expect: "spiffe://cluster.local/ns/demo/sa/waypoint"},
		{name: "from the waypoint itself: straight to the pod",
			addresses: []*workloadapi.Address{service("waypoint", "10.96.0.50", false), wpPod(), withWaypoint(workload("e", "10.0.0.2", "echo", true, "", 0))},
			src:       "waypoint-0", dst: "10.0.0.2:7000", addr: "10.0.0.2:15008", authority: "10.0.0.2:7000", expect: "spiffe://cluster.local/ns/demo/sa/echo"},
		{name: "waypoint unknown: refused, not bypassed",
			addresses: []*workloadapi.Address{service("echo", "10.96.0.10", true), workload("e", "10.0.0.2", "echo", true, echoKey, 8080)},
			dst:       "10.96.0.10:80", wantErr: "waypoint demo/waypoint.demo.svc.cluster.local of 10.96.0.10:80 is unknown"},
		{name: "waypoint without a healthy pod: refused, not bypassed",
			addresses: []*workloadapi.Address{service("echo", "10.96.0.10", true), service("waypoint", "10.96.0.50", false), down(wpPod()), workload("e", "10.0.0.2", "echo", true, echoKey, 8080)},
			dst:       "10.96.0.10:80", wantErr: "no healthy endpoint of demo/waypoint"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			x := NewIndex()
			x.Update(tc.addresses, nil, true)
			x.UpdatePolicies(nil, nil, true)
			z := New(Config{Index: x})
			var src *workloadapi.Workload
			if tc.src != "" {
				src = x.Workload("Kubernetes//Pod/demo/" + tc.src)
			}
			rt, err := z.resolve(src, netip.MustParseAddrPort(tc.dst))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if rt.kind != routeHBONE || rt.addr.String() != tc.addr || rt.authority != tc.authority || rt.expect.String() != tc.expect {
				t.Fatalf("route %s to %s (authority %q, expect %s), want hbone to %s (%q, %s)", rt.kind, rt.addr, rt.authority, rt.expect, tc.addr, tc.authority, tc.expect)
			}
		})
	}
}
