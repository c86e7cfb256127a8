package model

import (
	"net/netip"
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
