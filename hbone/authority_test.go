package hbone

import (
	"net/netip"
	"strings"
	"testing"
)

func TestParseAuthority(t *testing.T) {
	tests := []struct {
		in      string
		want    string
		wantIP  bool
		wantErr string
	}{
		{"10.244.1.5:8080", "10.244.1.5:8080", true, ""},
		{"[fd00::1]:443", "[fd00::1]:443", true, ""},
		{"echo.demo.svc.cluster.local:80", "echo.demo.svc.cluster.local:80", false, ""},
		{"1.2.3.4:65535", "1.2.3.4:65535", true, ""},
		{"", "", false, "empty"},
		{"10.0.0.1", "", false, "no port"},
		{"10.0.0.1:", "", false, "invalid port"},
		{"10.0.0.1:0", "", false, "out of range"},
		{"10.0.0.1:65536", "", false, "out of range"},
		{"10.0.0.1:080", "", false, "invalid port"},
		{"10.0.0.1:+80", "", false, "invalid port"},
		{"10.0.0.1:8a", "", false, "invalid port"},
		{"fd00::1:443", "", false, "brackets"},
		{"[fd00::1%eth0]:443", "", false, "invalid IPv6"},
		{"[10.0.0.1]:443", "", false, "invalid IPv6"},
		{"[::ffff:10.0.0.1]:443", "", false, "invalid IPv6"},
		{"[fd00::1:443", "", false, "unterminated"},
		{"010.0.0.1:80", "", false, "invalid IPv4"},
		{"1.2.3:80", "", false, "invalid IPv4"},
		{"user@host:80", "", false, "neither"},
		{"Host.Example:80", "", false, "neither"},
		{"exa mple:80", "", false, "neither"},
		{":80", "", false, "neither"},
		{strings.Repeat("a", 400) + ":80", "", false, "longer than"},
	}
	for _, tc := range tests {
		got, err := ParseAuthority(tc.in)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("ParseAuthority(%q) = %v, %v; want error %q", tc.in, got, err, tc.wantErr)
			}
			continue
		}
		if err != nil || got.String() != tc.want || got.IsIP() != tc.wantIP {
			t.Errorf("ParseAuthority(%q) = %v (ip %v), %v", tc.in, got, got.IsIP(), err)
		}
	}
}

func FuzzParseAuthority(f *testing.F) {
	for _, s := range []string{"10.244.1.5:8080", "[fd00::1]:443", "a.b:1", "[::]:0", "1.1.1.1:99999", "x:", "[%]:1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, err := ParseAuthority(s)
		if err != nil {
			return
		}
		// What we accept must print back to something that parses the same.
		b, err := ParseAuthority(a.String())
		if err != nil || b != a {
			t.Fatalf("%q parsed to %v, which reparses to %v, %v", s, a, b, err)
		}
		if a.Port == 0 {
			t.Fatalf("%q: port 0 accepted", s)
		}
	})
}

func TestHeaders(t *testing.T) {
	got := Baggage(BaggageInfo{Cluster: "Kubernetes", Namespace: "demo", WorkloadType: "deployment", WorkloadName: "echo", Service: "echo", Version: "v1"})
	want := "k8s.cluster.name=Kubernetes,k8s.namespace.name=demo,k8s.deployment.name=echo,service.name=echo,service.version=v1"
	if got != want {
		t.Errorf("Baggage = %q, want %q", got, want)
	}
	if got := Baggage(BaggageInfo{Namespace: "demo"}); got != "k8s.namespace.name=demo" {
		t.Errorf("Baggage omits absent keys: %q", got)
	}
	if got := Forwarded(netip.MustParseAddrPort("10.0.0.1:4444"), "echo.demo.svc.cluster.local"); got != `for="10.0.0.1:4444";host=echo.demo.svc.cluster.local` {
		t.Errorf("Forwarded = %q", got)
	}
	tp := NewTraceparent()
	if len(tp) != 55 || !strings.HasPrefix(tp, "00-") || !strings.HasSuffix(tp, "-00") || tp == NewTraceparent() {
		t.Errorf("traceparent %q", tp)
	}
}
