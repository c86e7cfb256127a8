package authz

import (
	"net/netip"
	"strings"
	"testing"

	"google.golang.org/protobuf/types/known/emptypb"
	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"

	"github.com/ambit-mesh/ambit/identity"
)

// TestEvaluateOrder pins ztunnel's order on resources as the control plane
// sends them (the translation package tests policies written as YAML).
func TestEvaluateOrder(t *testing.T) {
	client := &identity.SPIFFE{TrustDomain: "cluster.local", Namespace: "demo", ServiceAccount: "client"}
	exact := func(s string) *security.StringMatch {
		return &security.StringMatch{MatchType: &security.StringMatch_Exact{Exact: s}}
	}
	byPrincipal := func(p string) []*security.Group {
		return []*security.Group{{Rules: []*security.Rules{{Matches: []*security.Match{{Principals: []*security.StringMatch{exact(p)}}}}}}}
	}
	denyClient := &security.Authorization{Name: "deny", Namespace: "demo", Action: security.Action_DENY, Groups: byPrincipal("cluster.local/ns/demo/sa/client")}
	dryDeny := &security.Authorization{Name: "dry", Namespace: "demo", Action: security.Action_DENY, DryRun: true, Groups: byPrincipal("cluster.local/ns/demo/sa/client")}
	allowClient := &security.Authorization{Name: "allow", Namespace: "demo", Action: security.Action_ALLOW, Groups: byPrincipal("cluster.local/ns/demo/sa/client")}
	allowOther := &security.Authorization{Name: "allow-other", Namespace: "demo", Action: security.Action_ALLOW, Groups: byPrincipal("cluster.local/ns/demo/sa/other")}
	allowNothing := &security.Authorization{Name: "nothing", Namespace: "demo", Action: security.Action_ALLOW}
	denyPlain := &security.Authorization{Name: "strict", Namespace: "istio-system", Action: security.Action_DENY,
		Groups: []*security.Group{{Rules: []*security.Rules{{Matches: []*security.Match{{NotPrincipals: []*security.StringMatch{{MatchType: &security.StringMatch_Presence{Presence: &emptypb.Empty{}}}}}}}}}}}
	mtls := Conn{Src: client, SrcIP: netip.MustParseAddr("10.0.0.1"), DstIP: netip.MustParseAddr("10.0.0.2"), DstPort: 80}
	plain := Conn{SrcIP: netip.MustParseAddr("10.0.0.1"), DstIP: netip.MustParseAddr("10.0.0.2"), DstPort: 80}
	for _, tc := range []struct {
		name     string
		policies []*security.Authorization
		c        Conn
		allow    bool
		policy   string
	}{
		{"no policy allows", nil, mtls, true, ""},
		{"a DENY match denies", []*security.Authorization{denyClient}, mtls, false, "demo/deny"},
		{"DENY wins over ALLOW", []*security.Authorization{allowClient, denyClient}, mtls, false, "demo/deny"},
		{"a dry-run DENY only notes", []*security.Authorization{dryDeny}, mtls, true, ""},
		{"an ALLOW match allows", []*security.Authorization{allowClient}, mtls, true, "demo/allow"},
		{"ALLOWs that do not match deny", []*security.Authorization{allowOther}, mtls, false, ""},
		{"an ALLOW with no rules denies all", []*security.Authorization{allowNothing}, mtls, false, ""},
		{"plaintext has no principal", []*security.Authorization{allowClient}, plain, false, ""},
		{"STRICT refuses plaintext", []*security.Authorization{denyPlain}, plain, false, "istio-system/strict"},
		{"STRICT admits mTLS", []*security.Authorization{denyPlain}, mtls, true, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := Evaluate(tc.policies, tc.c)
			if d.Allow != tc.allow || (tc.policy != "" && d.Policy != tc.policy) {
				t.Fatalf("got %+v, want allow %v by %q", d, tc.allow, tc.policy)
			}
		})
	}
}

func TestSelect(t *testing.T) {
	global := &security.Authorization{Name: "g", Namespace: "istio-system", Scope: security.Scope_GLOBAL}
	nsDemo := &security.Authorization{Name: "n", Namespace: "demo", Scope: security.Scope_NAMESPACE}
	nsOther := &security.Authorization{Name: "n", Namespace: "other", Scope: security.Scope_NAMESPACE}
	sel := &security.Authorization{Name: "s", Namespace: "demo", Scope: security.Scope_WORKLOAD_SELECTOR}
	selOther := &security.Authorization{Name: "t", Namespace: "demo", Scope: security.Scope_WORKLOAD_SELECTOR}
	w := &workloadapi.Workload{Namespace: "demo", AuthorizationPolicies: []string{"demo/s"}}
	got := Select([]*security.Authorization{global, nsDemo, nsOther, sel, selOther}, w)
	var names []string
	for _, p := range got {
		names = append(names, p.GetNamespace()+"/"+p.GetName())
	}
	if strings.Join(names, ",") != "istio-system/g,demo/n,demo/s" {
		t.Errorf("Select = %v", names)
	}
}
