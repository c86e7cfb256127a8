package routes_test

import (
	"testing"

	"github.com/ambit-mesh/ambit/controlplane/routes"
)

func TestNames(t *testing.T) {
	if got := routes.RouteName("echo.demo.svc.cluster.local", 8080); got != "echo.demo.svc.cluster.local:8080" {
		t.Errorf("RouteName = %q", got)
	}
	if got := routes.ClusterName("echo.demo.svc.cluster.local", 8080); got != "outbound|8080||echo.demo.svc.cluster.local" {
		t.Errorf("ClusterName = %q", got)
	}
	if got := routes.InvalidBackendCluster("demo", "gone", 80); got != "invalid-backend|demo/gone:80" {
		t.Errorf("InvalidBackendCluster = %q", got)
	}
	if got := routes.EntryName("HTTPRoute", "demo", "r", 1, 2); got != "HTTPRoute/demo/r/rule/1/match/2" {
		t.Errorf("EntryName = %q", got)
	}
}

func TestParseClusterName(t *testing.T) {
	for _, tc := range []struct {
		in   string
		host string
		port uint32
		ok   bool
	}{
		{"outbound|8080||echo.demo.svc.cluster.local", "echo.demo.svc.cluster.local", 8080, true},
		{"outbound|1||a", "a", 1, true},
		{"outbound|65535||a", "a", 65535, true},
		{"outbound|8080|v1|echo.demo.svc.cluster.local", "", 0, false}, // subset
		{"inbound|8080||echo", "", 0, false},
		{"outbound|0||echo", "", 0, false},
		{"outbound|65536||echo", "", 0, false},
		{"outbound|x||echo", "", 0, false},
		{"outbound|8080||", "", 0, false},
		{"outbound|8080|echo", "", 0, false},
		{"", "", 0, false},
		{"invalid-backend|demo/gone:80", "", 0, false},
	} {
		host, port, ok := routes.ParseClusterName(tc.in)
		if host != tc.host || port != tc.port || ok != tc.ok {
			t.Errorf("ParseClusterName(%q) = %q, %d, %v; want %q, %d, %v", tc.in, host, port, ok, tc.host, tc.port, tc.ok)
		}
	}
	// Round trip.
	host, port, ok := routes.ParseClusterName(routes.ClusterName("x.y", 443))
	if !ok || host != "x.y" || port != 443 {
		t.Errorf("round trip: %q %d %v", host, port, ok)
	}
}
