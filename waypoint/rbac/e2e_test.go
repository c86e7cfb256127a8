package rbac_test

import (
	"net/http"
	"net/netip"
	"testing"

	securityv1beta1 "istio.io/api/security/v1beta1"
	typev1beta1 "istio.io/api/type/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambit-mesh/ambit/controlplane/l7authz"
	"github.com/ambit-mesh/ambit/waypoint/rbac"
)

// Policies as they would be written in YAML, as Go structs.

func authzPolicy(ns, name string, annotations map[string]string, refs []*typev1beta1.PolicyTargetReference, action securityv1beta1.AuthorizationPolicy_Action, rules ...*securityv1beta1.Rule) *securityv1.AuthorizationPolicy {
	p := &securityv1.AuthorizationPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Annotations: annotations}}
	p.Spec.TargetRefs = refs
	p.Spec.Action = action
	p.Spec.Rules = rules
	return p
}

func serviceRef(name string) []*typev1beta1.PolicyTargetReference {
	return []*typev1beta1.PolicyTargetReference{{Group: "", Kind: "Service", Name: name}}
}

func gatewayRef(name string) []*typev1beta1.PolicyTargetReference {
	return []*typev1beta1.PolicyTargetReference{{Group: "gateway.networking.k8s.io", Kind: "Gateway", Name: name}}
}

func from(s *securityv1beta1.Source) []*securityv1beta1.Rule_From {
	return []*securityv1beta1.Rule_From{{Source: s}}
}

func to(o *securityv1beta1.Operation) []*securityv1beta1.Rule_To {
	return []*securityv1beta1.Rule_To{{Operation: o}}
}

const (
	allow = securityv1beta1.AuthorizationPolicy_ALLOW
	deny  = securityv1beta1.AuthorizationPolicy_DENY
)

// meshPolicies is a demo namespace behind the waypoint demo/waypoint.
func meshPolicies() []*securityv1.AuthorizationPolicy {
	return []*securityv1.AuthorizationPolicy{
		// Service level.
		authzPolicy("demo", "echo-viewer", nil, serviceRef("echo"), allow, &securityv1beta1.Rule{
			From: from(&securityv1beta1.Source{Principals: []string{"cluster.local/ns/demo/sa/client"}}),
			To:   to(&securityv1beta1.Operation{Methods: []string{"GET"}, Paths: []string{"/public*"}}),
		}),
		authzPolicy("demo", "echo-admin", nil, serviceRef("echo"), allow, &securityv1beta1.Rule{
			From: from(&securityv1beta1.Source{Namespaces: []string{"ops"}}),
			To:   to(&securityv1beta1.Operation{Methods: []string{"GET", "POST"}, NotPaths: []string{"/debug*"}}),
		}),
		authzPolicy("demo", "no-debug-header", nil, serviceRef("echo"), deny, &securityv1beta1.Rule{
			When: []*securityv1beta1.Condition{{Key: "request.headers[x-debug]", Values: []string{"*"}}},
		}),
		authzPolicy("demo", "echo-post-dryrun", map[string]string{l7authz.AnnotationDryRun: "true"}, serviceRef("echo"), deny, &securityv1beta1.Rule{
			To: to(&securityv1beta1.Operation{Methods: []string{"POST"}}),
		}),
		// Gateway level: applies to every service behind the waypoint.
		authzPolicy("demo", "waypoint-block", nil, gatewayRef("waypoint"), deny, &securityv1beta1.Rule{
			From: from(&securityv1beta1.Source{NotNamespaces: []string{"demo", "ops"}}),
		}),
		authzPolicy("demo", "waypoint-health", nil, gatewayRef("waypoint"), allow, &securityv1beta1.Rule{
			To: to(&securityv1beta1.Operation{Methods: []string{"GET"}, Paths: []string{"/healthz"}}),
		}),
		// Mesh level, every waypoint.
		authzPolicy("istio-system", "no-dotfiles", nil, []*typev1beta1.PolicyTargetReference{{Group: "gateway.networking.k8s.io", Kind: "GatewayClass", Name: "istio-waypoint"}}, deny, &securityv1beta1.Rule{
			To: to(&securityv1beta1.Operation{Paths: []string{"*/.env"}}),
		}),
		// ztunnel's: must not reach the waypoint.
		func() *securityv1.AuthorizationPolicy {
			p := authzPolicy("demo", "ztunnel-deny-all", nil, nil, deny, &securityv1beta1.Rule{})
			p.Spec.Selector = &typev1beta1.WorkloadSelector{MatchLabels: map[string]string{"app": "echo"}}
			return p
		}(),
	}
}

var (
	gateway      = l7authz.Target{Kind: l7authz.KindGateway, Namespace: "demo", Name: "waypoint"}
	gatewayClass = l7authz.Target{Kind: l7authz.KindGatewayClass, Name: l7authz.WaypointGatewayClass}
	echoTargets  = []rbac.Target{gateway, gatewayClass, {Kind: l7authz.KindService, Namespace: "demo", Name: "echo"}}
	otherTargets = []rbac.Target{gateway, gatewayClass, {Kind: l7authz.KindService, Namespace: "demo", Name: "other"}}
	quietTargets = []rbac.Target{{Kind: l7authz.KindGateway, Namespace: "quiet", Name: "waypoint"}, gatewayClass, {Kind: l7authz.KindService, Namespace: "quiet", Name: "svc"}}
)

func req(principal, method, path string, header http.Header) rbac.Attributes {
	if principal != "" {
		principal = "spiffe://" + principal
	}
	return rbac.Attributes{
		Principal:       principal,
		DirectRemoteIP:  netip.MustParseAddr("10.244.1.2"),
		RemoteIP:        netip.MustParseAddr("10.244.1.2"),
		DestinationIP:   netip.MustParseAddr("10.96.3.4"),
		DestinationPort: 80,
		Method:          method,
		Path:            path,
		Host:            "echo.demo.svc.cluster.local",
		Header:          header,
	}
}

const (
	client = "cluster.local/ns/demo/sa/client"
	admin  = "cluster.local/ns/ops/sa/admin"
	evil   = "cluster.local/ns/evil/sa/default"
)

func TestEndToEnd(t *testing.T) {
	out := l7authz.Build(meshPolicies(), "istio-system")
	for _, w := range out.Warnings {
		t.Errorf("translation warning: %s", w)
	}
	e, warnings, err := rbac.Compile(out.RBAC)
	if err != nil {
		t.Fatalf("Compile: %v", err)
	}
	for _, w := range warnings {
		t.Errorf("compile warning: %s", w)
	}
	for _, tc := range []struct {
		name    string
		targets []rbac.Target
		a       rbac.Attributes
		allowed bool
		policy  string
		reason  string
		dryRun  string // reason of the dry-run decision, "" for none
	}{
		{"client GET /public", echoTargets, req(client, "GET", "/public", nil), true, "demo/echo-viewer/rule-0", "allowed by demo/echo-viewer/rule-0", "no ALLOW policies"},
		{"client GET /public/a?q=1", echoTargets, req(client, "GET", "/public/a?q=1", nil), true, "demo/echo-viewer/rule-0", "", ""},
		{"client POST /admin", echoTargets, req(client, "POST", "/admin", nil), false, "", "no ALLOW policy matched", "denied by demo/echo-post-dryrun/rule-0"},
		{"client GET /admin", echoTargets, req(client, "GET", "/admin", nil), false, "", "no ALLOW policy matched", ""},
		{"client GET /public with x-debug", echoTargets, req(client, "GET", "/public", http.Header{"X-Debug": {"1"}}), false, "demo/no-debug-header/rule-0", "denied by demo/no-debug-header/rule-0", ""},
		{"client GET /public with an empty x-debug", echoTargets, req(client, "GET", "/public", http.Header{"X-Debug": {""}}), false, "demo/no-debug-header/rule-0", "", ""},
		{"ops POST /admin", echoTargets, req(admin, "POST", "/admin", nil), true, "demo/echo-admin/rule-0", "", "denied by demo/echo-post-dryrun/rule-0"},
		{"ops GET /debug/vars (notPaths)", echoTargets, req(admin, "GET", "/debug/vars", nil), false, "", "no ALLOW policy matched", ""},
		{"other namespace denied at the gateway", echoTargets, req(evil, "GET", "/public", nil), false, "demo/waypoint-block/rule-0", "denied by demo/waypoint-block/rule-0", ""},
		{"no peer denied at the gateway (notNamespaces)", echoTargets, req("", "GET", "/healthz", nil), false, "demo/waypoint-block/rule-0", "", ""},
		{"gateway ALLOW combines with the service's", echoTargets, req(client, "GET", "/healthz", nil), true, "demo/waypoint-health/rule-0", "", ""},
		{"gateway ALLOW applies to other services", otherTargets, req(client, "GET", "/healthz", nil), true, "demo/waypoint-health/rule-0", "", ""},
		{"other service: only the gateway's ALLOW", otherTargets, req(client, "GET", "/public", nil), false, "", "no ALLOW policy matched", ""},
		{"mesh-wide DENY", echoTargets, req(admin, "GET", "/app/.env", nil), false, "istio-system/no-dotfiles/rule-0", "", ""},
		{"only the mesh-wide DENY applies", quietTargets, req(client, "POST", "/anything", nil), true, "", "no ALLOW policies", ""},
		{"no policies", quietTargets[:1], req(client, "POST", "/anything", nil), true, "", "no policies", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := e.Evaluate(tc.targets, tc.a)
			if d.Allowed != tc.allowed || d.Policy != tc.policy || (tc.reason != "" && d.Reason != tc.reason) {
				t.Errorf("got %+v, want allowed %v by %q (%q)", d, tc.allowed, tc.policy, tc.reason)
			}
			if tc.dryRun != "" && (d.DryRun == nil || d.DryRun.Reason != tc.dryRun) {
				t.Errorf("dry run %+v, want %q", d.DryRun, tc.dryRun)
			}
		})
	}
}

func TestNoPolicies(t *testing.T) {
	out := l7authz.Build(nil, "")
	e, warnings, err := rbac.Compile(out.RBAC)
	if err != nil || len(warnings) > 0 {
		t.Fatalf("Compile: %v %v", err, warnings)
	}
	if d := e.Evaluate(echoTargets, req(client, "DELETE", "/x", nil)); !d.Allowed || d.Reason != rbac.ReasonNoPolicies || d.DryRun != nil {
		t.Errorf("got %+v", d)
	}
}
