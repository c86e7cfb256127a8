package model

import (
	"testing"

	securityclient "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/yaml"
)

func authzPolicy(t *testing.T, ns, name, spec string) *securityclient.AuthorizationPolicy {
	t.Helper()
	p := &securityclient.AuthorizationPolicy{}
	if err := yaml.Unmarshal([]byte("spec:\n"+spec), p); err != nil {
		t.Fatalf("policy %s/%s: %v", ns, name, err)
	}
	p.Namespace, p.Name, p.Generation = ns, name, 3
	return p
}

// TestPolicyReport is the table of AuthorizationPolicy shapes and the
// condition istiod would write on each.
func TestPolicyReport(t *testing.T) {
	in := Inputs{
		Namespaces: []*corev1.Namespace{nsWith("istio-system", nil), nsWith("demo", map[string]string{LabelDataplaneMode: "ambient"})},
		Gateways:   []*gatewayv1.Gateway{waypointGW("demo", "wp", "", "", nil)},
		Pods:       []*corev1.Pod{waypointPod("demo", "wp", "10.244.1.5")},
		Services: []*corev1.Service{
			svcWith("demo", "bound", map[string]string{LabelUseWaypoint: "wp"}),
			svcWith("demo", "plain", nil),
			svcWith("demo", "wp", nil),
		},
	}
	for _, tc := range []struct {
		name, ns, spec string
		want           metav1.Condition
	}{
		{"l4 allow", "demo", "  action: ALLOW\n  rules:\n  - from:\n    - source:\n        principals: [cluster.local/ns/demo/sa/client]\n",
			metav1.Condition{Type: ConditionZtunnelAccepted, Status: metav1.ConditionTrue, Reason: ReasonAccepted, Message: "attached to ztunnel"}},
		{"selector deny", "demo", "  action: DENY\n  selector:\n    matchLabels: {app: x}\n  rules:\n  - to:\n    - operation:\n        ports: [\"22\"]\n",
			metav1.Condition{Type: ConditionZtunnelAccepted, Status: metav1.ConditionTrue, Reason: ReasonAccepted, Message: "attached to ztunnel"}},
		{"http attributes", "demo", "  rules:\n  - to:\n    - operation:\n        methods: [GET]\n",
			metav1.Condition{Type: ConditionZtunnelAccepted, Status: metav1.ConditionTrue, Reason: ReasonUnsupportedValue}},
		{"custom action", "demo", "  action: CUSTOM\n  provider: {name: ext}\n  rules:\n  - {}\n",
			metav1.Condition{Type: ConditionZtunnelAccepted, Status: metav1.ConditionFalse, Reason: ReasonUnsupportedValue}},
		{"audit action", "demo", "  action: AUDIT\n",
			metav1.Condition{Type: ConditionZtunnelAccepted, Status: metav1.ConditionFalse, Reason: ReasonUnsupportedValue}},
		{"target waypoint gateway", "demo", "  targetRefs:\n  - {kind: Gateway, group: gateway.networking.k8s.io, name: wp}\n",
			metav1.Condition{Type: ConditionWaypointAccepted, Status: metav1.ConditionTrue, Reason: ReasonAccepted, Message: "bound to demo/wp"}},
		{"target unknown gateway", "demo", "  targetRefs:\n  - {kind: Gateway, group: gateway.networking.k8s.io, name: nope}\n",
			metav1.Condition{Type: ConditionWaypointAccepted, Status: metav1.ConditionFalse, Reason: ReasonTargetNotFound}},
		{"target bound service", "demo", "  targetRefs:\n  - {kind: Service, group: \"\", name: bound}\n",
			metav1.Condition{Type: ConditionWaypointAccepted, Status: metav1.ConditionTrue, Reason: ReasonAccepted, Message: "bound to demo/wp"}},
		{"target unbound service", "demo", "  targetRefs:\n  - {kind: Service, group: \"\", name: plain}\n",
			metav1.Condition{Type: ConditionWaypointAccepted, Status: metav1.ConditionFalse, Reason: ReasonAncestorNotBound}},
		{"target missing service", "demo", "  targetRefs:\n  - {kind: Service, group: \"\", name: gone}\n",
			metav1.Condition{Type: ConditionWaypointAccepted, Status: metav1.ConditionFalse, Reason: ReasonTargetNotFound}},
		{"single targetRef", "demo", "  targetRef: {kind: Gateway, group: gateway.networking.k8s.io, name: wp}\n",
			metav1.Condition{Type: ConditionWaypointAccepted, Status: metav1.ConditionTrue, Reason: ReasonAccepted}},
		{"some targets bound", "demo", "  targetRefs:\n  - {kind: Service, group: \"\", name: bound}\n  - {kind: Service, group: \"\", name: plain}\n",
			metav1.Condition{Type: ConditionWaypointAccepted, Status: metav1.ConditionTrue, Reason: ReasonPartiallyInvalid, Message: "Invalid targetRefs: Service.core:demo/plain"}},
		{"no target bound", "demo", "  targetRefs:\n  - {kind: Service, group: \"\", name: plain}\n  - {kind: Gateway, group: gateway.networking.k8s.io, name: nope}\n",
			metav1.Condition{Type: ConditionWaypointAccepted, Status: metav1.ConditionFalse, Reason: ReasonInvalid}},
		{"gateway class in root", "istio-system", "  targetRefs:\n  - {kind: GatewayClass, group: gateway.networking.k8s.io, name: istio-waypoint}\n",
			metav1.Condition{Type: ConditionWaypointAccepted, Status: metav1.ConditionTrue, Reason: ReasonAccepted}},
		{"gateway class elsewhere", "demo", "  targetRefs:\n  - {kind: GatewayClass, group: gateway.networking.k8s.io, name: istio-waypoint}\n",
			metav1.Condition{Type: ConditionWaypointAccepted, Status: metav1.ConditionFalse, Reason: ReasonInvalid}},
		{"unsupported kind", "demo", "  targetRefs:\n  - {kind: ServiceEntry, group: networking.istio.io, name: x}\n",
			metav1.Condition{Type: ConditionWaypointAccepted, Status: metav1.ConditionFalse, Reason: ReasonInvalid}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := in
			in.Policies = []*securityclient.AuthorizationPolicy{authzPolicy(t, tc.ns, "p", tc.spec)}
			b := NewBuilder()
			b.Build(in)
			got := b.PolicyReport()
			if len(got) != 1 {
				t.Fatalf("%d statuses, want 1", len(got))
			}
			c := got[0].Condition
			if got[0].Namespace != tc.ns || got[0].Name != "p" || c.ObservedGeneration != 3 {
				t.Errorf("status of %s/%s at generation %d, want %s/p at 3", got[0].Namespace, got[0].Name, c.ObservedGeneration, tc.ns)
			}
			if c.Type != tc.want.Type || c.Status != tc.want.Status || c.Reason != tc.want.Reason {
				t.Errorf("condition %s=%s (%s: %q), want %s=%s (%s)", c.Type, c.Status, c.Reason, c.Message, tc.want.Type, tc.want.Status, tc.want.Reason)
			}
			if tc.want.Message != "" && c.Message != tc.want.Message {
				t.Errorf("message %q, want %q", c.Message, tc.want.Message)
			}
			if c.Message == "" {
				t.Error("no message")
			}
		})
	}
}
