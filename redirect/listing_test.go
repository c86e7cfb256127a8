package redirect

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/nsnet/nstest"
)

// TestRulesetListing checks the installed rule set as nft itself decodes it
// from the kernel (nft is used by this test only, never by the package).
// Each testdata/<case>.nft is what `nft -s list ruleset` prints after
// loading upstream Istio's golden rule set for the same config
// (istio/istio cni/pkg/nftables/testdata at 86c9f01f): default_ipv6.golden
// for dns_ipv6 (probe v6 address set to the default),
// dns_pod_disabled_and_on_globally.golden for default, and
// ingress_and_virtual_interfaces.golden. So our rules equal upstream's,
// rule for rule, as the kernel holds them.
func TestRulesetListing(t *testing.T) {
	nstest.RequireRoot(t)
	nft, err := exec.LookPath("nft")
	if err != nil {
		t.Fatalf("this test needs the nft binary (Debian package nftables; scripts/install-deps.sh installs it): %v", err)
	}
	tests := []struct {
		name string
		cfg  Config
	}{
		{"default", Config{}},
		{"dns_ipv6", Config{DNSCapture: true, IPv6: true}},
		{"ingress_virtual_interfaces", Config{BypassInbound: true, VirtualInterfaces: []string{"fake1s0f0", "fake1s0f1"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pod := nstest.Netns(t)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := Install(ctx, pod, tc.cfg); err != nil {
				t.Fatal(err)
			}
			first := listRuleset(ctx, t, nft, pod)
			if err := Install(ctx, pod, tc.cfg); err != nil {
				t.Fatal(err)
			}
			if again := listRuleset(ctx, t, nft, pod); again != first {
				t.Fatalf("second Install changed the rule set:\n%s\nthen:\n%s", first, again)
			}
			golden := filepath.Join("testdata", tc.name+".nft")
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatal(err)
			}
			if normalize(string(want)) != normalize(first) {
				t.Fatalf("nft list ruleset:\n%s\nwant (%s):\n%s", first, golden, want)
			}
			if err := Remove(ctx, pod); err != nil {
				t.Fatal(err)
			}
			if left := listRuleset(ctx, t, nft, pod); strings.TrimSpace(left) != "" {
				t.Fatalf("after Remove the namespace still has:\n%s", left)
			}
		})
	}
}

// listRuleset runs `nft -s list ruleset` (no counter values) in the
// namespace at path.
func listRuleset(ctx context.Context, t *testing.T, nft, path string) string {
	t.Helper()
	out, err := exec.CommandContext(ctx, "nsenter", "--net="+path, nft, "-s", "list", "ruleset").CombinedOutput()
	if err != nil {
		t.Fatalf("nft list ruleset in %s: %v\n%s", path, err, out)
	}
	return string(out)
}

// normalize makes the comparison blind to indentation differences.
func normalize(s string) string {
	var lines []string
	for l := range strings.SplitSeq(s, "\n") {
		if l = strings.Join(strings.Fields(l), " "); l != "" {
			lines = append(lines, l)
		}
	}
	return strings.Join(lines, "\n")
}
