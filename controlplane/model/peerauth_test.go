package model

import (
	"net/netip"
	"strings"
	"testing"

	securityclient "istio.io/client-go/pkg/apis/security/v1"
	"istio.io/istio/pkg/workloadapi/security"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/ambit-mesh/ambit/authz"
	"github.com/ambit-mesh/ambit/identity"
)

func pa(t *testing.T, ns, doc string) *securityclient.PeerAuthentication {
	t.Helper()
	p := &securityclient.PeerAuthentication{}
	if err := yaml.Unmarshal([]byte(doc), p); err != nil {
		t.Fatal(err)
	}
	p.Namespace = ns
	return p
}

func TestPeerAuthentication(t *testing.T) {
	client := &identity.SPIFFE{TrustDomain: "cluster.local", Namespace: "demo", ServiceAccount: "client"}
	tests := []struct {
		name  string
		pas   []*securityclient.PeerAuthentication
		src   *identity.SPIFFE
		port  uint16
		allow bool
	}{
		{"no PeerAuthentication: plaintext allowed", nil, nil, 8080, true},
		{"mesh STRICT refuses plaintext", []*securityclient.PeerAuthentication{pa(t, "istio-system", "metadata: {name: default}\nspec: {mtls: {mode: STRICT}}\n")}, nil, 8080, false},
		{"mesh STRICT allows mTLS", []*securityclient.PeerAuthentication{pa(t, "istio-system", "metadata: {name: default}\nspec: {mtls: {mode: STRICT}}\n")}, client, 8080, true},
		{"namespace PERMISSIVE overrides mesh STRICT", []*securityclient.PeerAuthentication{
			pa(t, "istio-system", "metadata: {name: default}\nspec: {mtls: {mode: STRICT}}\n"),
			pa(t, "demo", "metadata: {name: default}\nspec: {mtls: {mode: PERMISSIVE}}\n")}, nil, 8080, true},
		{"namespace STRICT", []*securityclient.PeerAuthentication{pa(t, "demo", "metadata: {name: default}\nspec: {mtls: {mode: STRICT}}\n")}, nil, 8080, false},
		{"other namespace's STRICT does not apply", []*securityclient.PeerAuthentication{pa(t, "other", "metadata: {name: default}\nspec: {mtls: {mode: STRICT}}\n")}, nil, 8080, true},
		{"selector PERMISSIVE overrides namespace STRICT", []*securityclient.PeerAuthentication{
			pa(t, "demo", "metadata: {name: default}\nspec: {mtls: {mode: STRICT}}\n"),
			pa(t, "demo", "metadata: {name: echo}\nspec: {selector: {matchLabels: {app: echo}}, mtls: {mode: PERMISSIVE}}\n")}, nil, 8080, true},
		{"port exception: 8080 permissive", []*securityclient.PeerAuthentication{
			pa(t, "demo", "metadata: {name: echo}\nspec:\n  selector: {matchLabels: {app: echo}}\n  mtls: {mode: STRICT}\n  portLevelMtls: {8080: {mode: PERMISSIVE}}\n")}, nil, 8080, true},
		{"port exception: other ports strict", []*securityclient.PeerAuthentication{
			pa(t, "demo", "metadata: {name: echo}\nspec:\n  selector: {matchLabels: {app: echo}}\n  mtls: {mode: STRICT}\n  portLevelMtls: {8080: {mode: PERMISSIVE}}\n")}, nil, 9090, false},
		{"port-level STRICT under PERMISSIVE", []*securityclient.PeerAuthentication{
			pa(t, "demo", "metadata: {name: echo}\nspec:\n  selector: {matchLabels: {app: echo}}\n  mtls: {mode: PERMISSIVE}\n  portLevelMtls: {9090: {mode: STRICT}}\n")}, nil, 9090, false},
		{"DISABLE admits plaintext", []*securityclient.PeerAuthentication{pa(t, "demo", "metadata: {name: default}\nspec: {mtls: {mode: DISABLE}}\n")}, nil, 8080, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := pod("echo-1", map[string]string{"app": "echo"}, map[string]string{AnnotationRedirection: "enabled"}, "10.244.1.3")
			in := Inputs{Pods: []*corev1.Pod{p}, PeerAuthentications: tc.pas}
			out := Build(in)
			w := out["Kubernetes//Pod/demo/echo-1"].GetWorkload()
			policies, _ := BuildAuthorizations(in)
			var all []*security.Authorization
			for _, a := range policies {
				all = append(all, a)
			}
			d := authz.Evaluate(authz.Select(all, w), authz.Conn{Src: tc.src, SrcIP: netip.MustParseAddr("10.244.9.9"), DstIP: netip.MustParseAddr("10.244.1.3"), DstPort: tc.port})
			if d.Allow != tc.allow {
				t.Fatalf("allow = %v (%s), want %v; workload policies %v", d.Allow, d.Reason, tc.allow, w.GetAuthorizationPolicies())
			}
		})
	}
}

// TestBuildAuthorizationsWarnings checks that translation warnings, such
// as a principal written with spiffe://, reach the warnings the control
// plane reports (ambit local status shows them), and that the policy is
// still served as written.
func TestBuildAuthorizationsWarnings(t *testing.T) {
	ap := &securityclient.AuthorizationPolicy{}
	doc := "metadata: {name: allow-client, namespace: demo}\nspec:\n  rules: [{from: [{source: {principals: [spiffe://cluster.local/ns/demo/sa/client]}}]}]\n"
	if err := yaml.Unmarshal([]byte(doc), ap); err != nil {
		t.Fatal(err)
	}
	good := ap.DeepCopy()
	good.Name = "good"
	good.Spec.Rules[0].From[0].Source.Principals = []string{"cluster.local/ns/demo/sa/client"}
	out, warnings := BuildAuthorizations(Inputs{Policies: []*securityclient.AuthorizationPolicy{ap, good}})
	if out["demo/allow-client"] == nil || out["demo/good"] == nil {
		t.Fatalf("policies not served: %v", out)
	}
	got := out["demo/allow-client"].GetGroups()[0].GetRules()[0].GetMatches()[0].GetPrincipals()[0].GetExact()
	if got != "spiffe://cluster.local/ns/demo/sa/client" {
		t.Errorf("principal served as %q, want it as written", got)
	}
	var texts []string
	for _, w := range warnings {
		if w.Policy != "demo/allow-client" {
			t.Errorf("warning for a policy that can match: %v", w)
		}
		texts = append(texts, w.String())
	}
	all := strings.Join(texts, "\n")
	for _, want := range []string{`demo/allow-client: rule 0 from[0] principals: "spiffe://cluster.local/ns/demo/sa/client" never matches`, "this ALLOW policy denies all traffic"} {
		if !strings.Contains(all, want) {
			t.Errorf("warnings lack %q:\n%s", want, all)
		}
	}
}
