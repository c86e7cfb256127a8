package redirect

import (
	"context"
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

func TestConfigForPod(t *testing.T) {
	node := Config{DNSCapture: true, IPv6: true, VirtualInterfaces: []string{"vm0"}}
	tests := []struct {
		name string
		ann  map[string]string
		def  Config
		want Config
	}{
		{"no annotations", nil, Config{}, Config{}},
		{"defaults kept", map[string]string{"other": "x"}, node, node},
		{"bypass inbound", map[string]string{AnnotationBypassInbound: "true"}, Config{}, Config{BypassInbound: true}},
		{"bypass inbound ParseBool form", map[string]string{AnnotationBypassInbound: "1"}, Config{}, Config{BypassInbound: true}},
		{"bypass inbound false overrides", map[string]string{AnnotationBypassInbound: "false"}, Config{BypassInbound: true}, Config{}},
		{"bypass inbound junk ignored", map[string]string{AnnotationBypassInbound: "yes"}, Config{}, Config{}},
		{"dns off on the pod", map[string]string{AnnotationDNSCapture: "false"}, Config{DNSCapture: true}, Config{}},
		{"dns on on the pod", map[string]string{AnnotationDNSCapture: "true"}, Config{}, Config{DNSCapture: true}},
		{"dns TRUE", map[string]string{AnnotationDNSCapture: "TRUE"}, Config{}, Config{DNSCapture: true}},
		{"dns junk ignored", map[string]string{AnnotationDNSCapture: "maybe"}, Config{DNSCapture: true}, Config{DNSCapture: true}},
		{"dns empty ignored", map[string]string{AnnotationDNSCapture: ""}, Config{DNSCapture: true}, Config{DNSCapture: true}},
		{"virtual interfaces", map[string]string{AnnotationVirtualInterfaces: " tap0, net1 ,,tap0"}, Config{}, Config{VirtualInterfaces: []string{"tap0", "net1"}}},
		{"virtual interfaces replace defaults", map[string]string{AnnotationVirtualInterfaces: "net1"}, node, Config{DNSCapture: true, IPv6: true, VirtualInterfaces: []string{"net1"}}},
		{"virtual interfaces empty clears", map[string]string{AnnotationVirtualInterfaces: ""}, node, Config{DNSCapture: true, IPv6: true}},
		{"invalid interface names dropped", map[string]string{AnnotationVirtualInterfaces: "a/b,ok0,waytoolonginterfacename,.,x y"}, Config{}, Config{VirtualInterfaces: []string{"ok0"}}},
		{"all at once", map[string]string{AnnotationBypassInbound: "true", AnnotationDNSCapture: "false", AnnotationVirtualInterfaces: "kv0"}, node,
			Config{BypassInbound: true, IPv6: true, VirtualInterfaces: []string{"kv0"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := ConfigForPod(tc.ann, tc.def)
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("ConfigForPod(%v, %+v) = %+v, want %+v", tc.ann, tc.def, got, tc.want)
			}
		})
	}
}

func TestConfigForPodDoesNotAlias(t *testing.T) {
	def := Config{VirtualInterfaces: []string{"vm0"}}
	c := ConfigForPod(nil, def)
	c.VirtualInterfaces[0] = "changed"
	if def.VirtualInterfaces[0] != "vm0" {
		t.Fatal("ConfigForPod shares the defaults' interface list")
	}
}

func TestConfigForPodBoundsInterfaces(t *testing.T) {
	var names []string
	for i := range 200 {
		names = append(names, "if"+strings.Repeat("x", i%10)+string(rune('a'+i%26))+string(rune('a'+i/26)))
	}
	c := ConfigForPod(map[string]string{AnnotationVirtualInterfaces: strings.Join(names, ",")}, Config{})
	if len(c.VirtualInterfaces) != maxVirtualInterfaces {
		t.Fatalf("%d interfaces kept, want %d", len(c.VirtualInterfaces), maxVirtualInterfaces)
	}
	if err := c.validate(); err != nil {
		t.Fatalf("ConfigForPod result does not validate: %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"zero", Config{}, true},
		{"custom probe addresses", Config{ProbeSNATv4: netip.MustParseAddr("169.254.1.1"), ProbeSNATv6: netip.MustParseAddr("fd00::7")}, true},
		{"v6 probe address for v4", Config{ProbeSNATv4: netip.MustParseAddr("fd00::7")}, false},
		{"v4 probe address for v6", Config{ProbeSNATv6: netip.MustParseAddr("10.0.0.1")}, false},
		{"v4-mapped probe address for v6", Config{ProbeSNATv6: netip.MustParseAddr("::ffff:10.0.0.1")}, false},
		{"bad interface name", Config{VirtualInterfaces: []string{"eth0", "a/b"}}, false},
		{"empty interface name", Config{VirtualInterfaces: []string{""}}, false},
		{"too many interfaces", Config{VirtualInterfaces: make([]string, maxVirtualInterfaces+1)}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.validate()
			if (err == nil) != tc.ok {
				t.Fatalf("validate(%+v) = %v, want ok=%v", tc.cfg, err, tc.ok)
			}
			if tc.ok {
				return
			}
			// Install refuses before it touches any namespace.
			ierr := Install(context.Background(), "/nonexistent/netns", tc.cfg)
			if ierr == nil || strings.Contains(ierr.Error(), "opening netns") || !strings.Contains(ierr.Error(), "/nonexistent/netns") {
				t.Fatalf("Install with %+v: %v, want a config error naming the netns", tc.cfg, ierr)
			}
		})
	}
}

// TestTablesFor checks the shape of the rule set per config without root;
// the exact rules are checked against nft's own listing in
// TestRulesetListing.
func TestTablesFor(t *testing.T) {
	count := func(cfg Config) (tables []string, rules int) {
		for _, ts := range tablesFor(cfg) {
			tables = append(tables, ts.name)
			if len(ts.chains) != 4 {
				t.Fatalf("table %s has %d chains, want 4", ts.name, len(ts.chains))
			}
			for _, cs := range ts.chains {
				rules += len(cs.rules)
			}
		}
		return tables, rules
	}
	tests := []struct {
		name   string
		cfg    Config
		tables []string
		rules  int
	}{
		// nat: 2 jumps + 2 prerouting (probe, 15006) + 4 output (probe, 0x111, lo, 15001); mangle: 2 jumps + 2.
		{"default", Config{}, []string{NatTable, MangleTable}, 12},
		// + DNS: 2 nat rules (udp, tcp) and the raw table (2 jumps + 2).
		{"dns", Config{DNSCapture: true}, []string{NatTable, MangleTable, RawTable}, 12 + 2 + 4},
		// + IPv6: one more of each family-specific nat rule (probe x2, 15006, tcp dns, lo, 15001).
		{"dns ipv6", Config{DNSCapture: true, IPv6: true}, []string{NatTable, MangleTable, RawTable}, 18 + 6},
		{"bypass inbound", Config{BypassInbound: true}, []string{NatTable, MangleTable}, 10},
		{"virtual interfaces", Config{VirtualInterfaces: []string{"a", "b"}}, []string{NatTable, MangleTable}, 12 + 4},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tables, rules := count(tc.cfg)
			if !reflect.DeepEqual(tables, tc.tables) || rules != tc.rules {
				t.Fatalf("tables %v with %d rules, want %v with %d", tables, rules, tc.tables, tc.rules)
			}
		})
	}
}

func TestStatePredicates(t *testing.T) {
	full := State{Tables: []string{NatTable, MangleTable}, Rules: 12, RuleV4: true, RouteV4: true}
	if !full.Installed() || full.Clean() {
		t.Fatalf("%+v: Installed=%v Clean=%v", full, full.Installed(), full.Clean())
	}
	for _, partial := range []State{
		{Tables: []string{NatTable}, RuleV4: true, RouteV4: true},
		{Tables: []string{NatTable, MangleTable}, RouteV4: true},
		{Tables: []string{NatTable, MangleTable}, RuleV4: true},
	} {
		if partial.Installed() || partial.Clean() {
			t.Errorf("%+v: Installed=%v Clean=%v, want neither", partial, partial.Installed(), partial.Clean())
		}
	}
	if (State{RuleV6: true}).Clean() || !(State{}).Clean() {
		t.Error("Clean ignores IPv6 leftovers or rejects the empty state")
	}
}
