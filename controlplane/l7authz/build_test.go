package l7authz_test

import (
	"slices"
	"strings"
	"testing"

	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"

	"github.com/ambit-mesh/ambit/controlplane/l7authz"
)

var waypoint = l7authz.Target{Kind: l7authz.KindGateway, Namespace: "demo", Name: "waypoint"}

func names(out l7authz.Output) []string {
	var ns []string
	for n := range out.RBAC {
		ns = append(ns, n)
	}
	slices.Sort(ns)
	return ns
}

func policyNames(x *rbacv3.RBAC) []string {
	var ns []string
	for n := range x.GetPolicies() {
		ns = append(ns, n)
	}
	slices.Sort(ns)
	return ns
}

func TestPolicies(t *testing.T) {
	for _, tc := range []struct {
		name      string
		docs      []string
		resources []string // RBAC resource names
		policies  map[string][]string
		allowed   bool   // the default request to Service demo/echo (with Gateway demo/waypoint)
		decidedBy string // Decision.Policy
		dryRun    string // Decision.DryRun.Reason, "" for none
		warn      string // expected in the warnings; "" for none
	}{
		{
			name:    "no policies",
			allowed: true,
		},
		{
			name:      "ALLOW without rules allows nothing but exists",
			docs:      []string{"metadata: {name: p}\nspec: {" + toEcho + ", action: ALLOW}\n"},
			resources: []string{"Service/demo/echo/ALLOW"},
			policies:  map[string][]string{"Service/demo/echo/ALLOW": nil},
			allowed:   false,
		},
		{
			name:      "spec {} with a target denies all",
			docs:      []string{"metadata: {name: p}\nspec: {" + toEcho + "}\n"},
			resources: []string{"Service/demo/echo/ALLOW"},
			allowed:   false,
		},
		{
			name:      "ALLOW with an empty rule allows all",
			docs:      []string{"metadata: {name: p}\nspec: {" + toEcho + ", rules: [{}]}\n"},
			resources: []string{"Service/demo/echo/ALLOW"},
			policies:  map[string][]string{"Service/demo/echo/ALLOW": {"demo/p/rule-0"}},
			allowed:   true, decidedBy: "demo/p/rule-0",
		},
		{
			name:      "DENY without rules denies nothing",
			docs:      []string{"metadata: {name: p}\nspec: {" + toEcho + ", action: DENY}\n"},
			resources: []string{"Service/demo/echo/DENY"},
			allowed:   true,
			warn:      "never matches and denies nothing",
		},
		{
			name:      "DENY with an empty rule denies all",
			docs:      []string{"metadata: {name: p}\nspec: {" + toEcho + ", action: DENY, rules: [{}]}\n"},
			resources: []string{"Service/demo/echo/DENY"},
			allowed:   false, decidedBy: "demo/p/rule-0",
		},
		{
			name: "rules are named by index; a rule that can never match is dropped",
			docs: []string{"metadata: {name: p}\nspec:\n  " + toEcho + "\n  rules:\n  - to: [{operation: {methods: [POST]}}]\n" +
				"  - from: [{source: {requestPrincipals: [\"*\"]}}]\n  - to: [{operation: {methods: [GET]}}]\n"},
			resources: []string{"Service/demo/echo/ALLOW"},
			policies:  map[string][]string{"Service/demo/echo/ALLOW": {"demo/p/rule-0", "demo/p/rule-2"}},
			allowed:   true, decidedBy: "demo/p/rule-2",
			warn: "rule 1 can never match: it allows nothing",
		},
		{
			name:      "CUSTOM fails closed: its targets deny all",
			docs:      []string{"metadata: {name: ext}\nspec:\n  " + toEcho + "\n  action: CUSTOM\n  provider: {name: oauth}\n  rules: [{to: [{operation: {paths: [/admin]}}]}]\n"},
			resources: []string{"Service/demo/echo/DENY"},
			policies:  map[string][]string{"Service/demo/echo/DENY": {"demo/ext/custom"}},
			allowed:   false, decidedBy: "demo/ext/custom",
			warn: "CUSTOM (external authorization) is not supported",
		},
		{
			name:      "CUSTOM in dry run only logs",
			docs:      []string{"metadata: {name: ext, annotations: {istio.io/dry-run: \"true\"}}\nspec:\n  " + toEcho + "\n  action: CUSTOM\n  provider: {name: oauth}\n"},
			resources: []string{"Service/demo/echo/DRYRUN-DENY"},
			allowed:   true, dryRun: "denied by demo/ext/custom",
			warn: "CUSTOM",
		},
		{
			name:    "AUDIT is ignored",
			docs:    []string{"metadata: {name: a}\nspec: {" + toEcho + ", action: AUDIT, rules: [{}]}\n"},
			allowed: true,
			warn:    "AUDIT is not supported: the policy is ignored",
		},
		{
			name:      "dry-run ALLOW is published apart and only logged",
			docs:      []string{"metadata: {name: p, annotations: {istio.io/dry-run: \"true\"}}\nspec:\n  " + toEcho + "\n  rules: [{to: [{operation: {methods: [POST]}}]}]\n"},
			resources: []string{"Service/demo/echo/DRYRUN-ALLOW"},
			allowed:   true, dryRun: "no ALLOW policy matched",
		},
		{
			name:      "dry-run DENY is published apart and only logged",
			docs:      []string{"metadata: {name: p, annotations: {istio.io/dry-run: \"true\"}}\nspec: {" + toEcho + ", action: DENY, rules: [{}]}\n"},
			resources: []string{"Service/demo/echo/DRYRUN-DENY"},
			allowed:   true, dryRun: "denied by demo/p/rule-0",
		},
		{
			name:      "dry-run annotation other than true is enforced",
			docs:      []string{"metadata: {name: p, annotations: {istio.io/dry-run: \"yes\"}}\nspec: {" + toEcho + ", action: DENY, rules: [{}]}\n"},
			resources: []string{"Service/demo/echo/DENY"},
			allowed:   false, decidedBy: "demo/p/rule-0",
			warn: "the policy is enforced",
		},
		{
			name:      "deprecated targetRef",
			docs:      []string{"metadata: {name: p}\nspec: {targetRef: {group: \"\", kind: Service, name: echo}, action: DENY, rules: [{}]}\n"},
			resources: []string{"Service/demo/echo/DENY"},
			allowed:   false, decidedBy: "demo/p/rule-0",
		},
		{
			name:      "targetRefs to a Gateway and a Service",
			docs:      []string{"metadata: {name: p}\nspec: {targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}, {kind: Service, name: echo}], action: DENY, rules: [{}]}\n"},
			resources: []string{"Gateway/demo/waypoint/DENY", "Service/demo/echo/DENY"},
			allowed:   false, decidedBy: "demo/p/rule-0",
		},
		{
			name:      "targetRef and targetRefs both",
			docs:      []string{"metadata: {name: p}\nspec: {targetRef: {kind: Service, name: echo}, targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}], action: DENY, rules: [{}]}\n"},
			resources: []string{"Gateway/demo/waypoint/DENY", "Service/demo/echo/DENY"},
			allowed:   false,
			warn:      "both targetRef and targetRefs",
		},
		{
			name:      "core group spelled out",
			docs:      []string{"metadata: {name: p}\nspec: {targetRefs: [{group: core, kind: Service, name: echo}], action: DENY, rules: [{}]}\n"},
			resources: []string{"Service/demo/echo/DENY"},
			allowed:   false,
		},
		{
			name:      "GatewayClass from the root namespace applies to every waypoint",
			docs:      []string{"metadata: {name: mesh, namespace: istio-system}\nspec: {targetRefs: [{group: gateway.networking.k8s.io, kind: GatewayClass, name: istio-waypoint}], action: DENY, rules: [{}]}\n"},
			resources: []string{"GatewayClass//istio-waypoint/DENY"},
			allowed:   false, decidedBy: "istio-system/mesh/rule-0",
		},
		{
			name:    "GatewayClass from another namespace is ignored",
			docs:    []string{"metadata: {name: p}\nspec: {targetRefs: [{group: gateway.networking.k8s.io, kind: GatewayClass, name: istio-waypoint}], action: DENY, rules: [{}]}\n"},
			allowed: true,
			warn:    "only be targeted from the root namespace",
		},
		{
			name:    "unsupported kind: ServiceEntry",
			docs:    []string{"metadata: {name: p}\nspec: {targetRefs: [{group: networking.istio.io, kind: ServiceEntry, name: ext}], action: DENY, rules: [{}]}\n"},
			allowed: true,
			warn:    "unsupported target kind",
		},
		{
			name:    "unsupported kind: Istio Gateway",
			docs:    []string{"metadata: {name: p}\nspec: {targetRefs: [{group: networking.istio.io, kind: Gateway, name: waypoint}], action: DENY, rules: [{}]}\n"},
			allowed: true,
			warn:    "unsupported target kind",
		},
		{
			name:      "unsupported kind next to a supported one",
			docs:      []string{"metadata: {name: p}\nspec: {targetRefs: [{group: apps, kind: Deployment, name: echo}, {kind: Service, name: echo}], action: DENY, rules: [{}]}\n"},
			resources: []string{"Service/demo/echo/DENY"},
			allowed:   false,
			warn:      "targetRefs[0]",
		},
		{
			name:    "target in another namespace",
			docs:    []string{"metadata: {name: p}\nspec: {targetRefs: [{kind: Service, name: echo, namespace: other}], action: DENY, rules: [{}]}\n"},
			allowed: true,
			warn:    "own namespace",
		},
		{
			name:    "a selector policy is ztunnel's: skipped",
			docs:    []string{"metadata: {name: p}\nspec: {selector: {matchLabels: {app: echo}}, action: DENY, rules: [{}]}\n"},
			allowed: true,
		},
		{
			name:    "a namespace-wide policy is ztunnel's: skipped",
			docs:    []string{"metadata: {name: p}\nspec: {action: DENY, rules: [{}]}\n"},
			allowed: true,
		},
		{
			name:      "selector and targetRefs: the waypoint enforces it",
			docs:      []string{"metadata: {name: p}\nspec: {selector: {matchLabels: {app: echo}}, " + toEcho + ", action: DENY, rules: [{}]}\n"},
			resources: []string{"Service/demo/echo/DENY"},
			allowed:   false,
			warn:      "both selector and targetRefs",
		},
		{
			name: "several policies on a target share its RBACs",
			docs: []string{
				"metadata: {name: a}\nspec: {" + toEcho + ", rules: [{to: [{operation: {methods: [POST]}}]}]}\n",
				"metadata: {name: b}\nspec: {" + toEcho + ", rules: [{to: [{operation: {methods: [GET]}}]}]}\n",
				"metadata: {name: c}\nspec: {" + toEcho + ", action: DENY, rules: [{to: [{operation: {paths: [/admin]}}]}]}\n",
			},
			resources: []string{"Service/demo/echo/ALLOW", "Service/demo/echo/DENY"},
			policies:  map[string][]string{"Service/demo/echo/ALLOW": {"demo/a/rule-0", "demo/b/rule-0"}, "Service/demo/echo/DENY": {"demo/c/rule-0"}},
			allowed:   true, decidedBy: "demo/b/rule-0",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var aps []*securityv1.AuthorizationPolicy
			for _, d := range tc.docs {
				aps = append(aps, policy(t, d))
			}
			out := l7authz.Build(aps, "")
			if got := names(out); !slices.Equal(got, tc.resources) {
				t.Errorf("resources = %q, want %q", got, tc.resources)
			}
			for res, want := range tc.policies {
				if got := policyNames(out.RBAC[res]); !slices.Equal(got, want) {
					t.Errorf("%s policies = %q, want %q", res, got, want)
				}
			}
			ws := warningsText(out.Warnings)
			switch {
			case tc.warn == "" && ws != "":
				t.Errorf("unexpected warnings:\n%s", ws)
			case tc.warn != "" && !strings.Contains(ws, tc.warn):
				t.Errorf("warnings do not mention %q:\n%s", tc.warn, ws)
			}
			gatewayClass := l7authz.Target{Kind: l7authz.KindGatewayClass, Name: l7authz.WaypointGatewayClass}
			d := evaluate(t, out, request(), waypoint, echo, gatewayClass)
			if d.Allowed != tc.allowed || (tc.decidedBy != "" && d.Policy != tc.decidedBy) {
				t.Errorf("decision %+v, want allowed %v by %q", d, tc.allowed, tc.decidedBy)
			}
			switch {
			case tc.dryRun == "" && d.DryRun != nil:
				t.Errorf("unexpected dry-run decision %+v", *d.DryRun)
			case tc.dryRun != "" && (d.DryRun == nil || d.DryRun.Reason != tc.dryRun):
				t.Errorf("dry-run decision %+v, want reason %q", d.DryRun, tc.dryRun)
			}
		})
	}
}

func TestTargetOf(t *testing.T) {
	ap := policy(t, "metadata: {name: p}\nspec: {targetRef: {kind: Service, name: echo}, targetRefs: [{kind: Service, name: echo}, {group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}, {kind: Pod, name: x}]}\n")
	got, warnings := l7authz.TargetOf(ap, "")
	if want := []l7authz.Target{echo, waypoint}; !slices.Equal(got, want) {
		t.Errorf("targets = %v, want %v", got, want)
	}
	if len(warnings) != 2 || !strings.Contains(warningsText(warnings), `kind "Pod"`) {
		t.Errorf("warnings = %s", warningsText(warnings))
	}
	if got, warnings := l7authz.TargetOf(policy(t, "metadata: {name: p}\nspec: {selector: {matchLabels: {a: b}}}\n"), ""); got != nil || warnings != nil {
		t.Errorf("selector policy: %v %v", got, warnings)
	}
	custom := policy(t, "metadata: {name: p, namespace: mesh-root}\nspec: {targetRefs: [{group: gateway.networking.k8s.io, kind: GatewayClass, name: istio-waypoint}]}\n")
	if got, _ := l7authz.TargetOf(custom, "mesh-root"); len(got) != 1 || got[0].Kind != l7authz.KindGatewayClass {
		t.Errorf("custom root namespace: %v", got)
	}
}

func TestResourceName(t *testing.T) {
	gc := l7authz.Target{Kind: l7authz.KindGatewayClass, Name: "istio-waypoint"}
	for _, tc := range []struct {
		r    l7authz.Resource
		name string
	}{
		{l7authz.Resource{Target: echo, Action: rbacv3.RBAC_DENY}, "Service/demo/echo/DENY"},
		{l7authz.Resource{Target: echo, Action: rbacv3.RBAC_ALLOW}, "Service/demo/echo/ALLOW"},
		{l7authz.Resource{Target: waypoint, Action: rbacv3.RBAC_ALLOW, DryRun: true}, "Gateway/demo/waypoint/DRYRUN-ALLOW"},
		{l7authz.Resource{Target: gc, Action: rbacv3.RBAC_DENY, DryRun: true}, "GatewayClass//istio-waypoint/DRYRUN-DENY"},
	} {
		if got := tc.r.Name(); got != tc.name {
			t.Errorf("Name = %q, want %q", got, tc.name)
		}
		if got, ok := l7authz.ParseResourceName(tc.name); !ok || got != tc.r {
			t.Errorf("ParseResourceName(%q) = %v, %v", tc.name, got, ok)
		}
	}
	if got := l7authz.ResourceName(echo, rbacv3.RBAC_DENY); got != "Service/demo/echo/DENY" {
		t.Errorf("ResourceName = %q", got)
	}
	if got := l7authz.DryRunResourceName(echo, rbacv3.RBAC_DENY); got != "Service/demo/echo/DRYRUN-DENY" {
		t.Errorf("DryRunResourceName = %q", got)
	}
	for _, bad := range []string{"", "Service/demo/echo", "Service/demo/echo/LOG", "Service//echo/DENY", "Pod/demo/echo/DENY",
		"Service/demo//DENY", "GatewayClass/ns/x/DENY", "Service/demo/echo/DENY/x", "Service/demo/echo/DRYRUN-", "Service/demo/echo/deny"} {
		if r, ok := l7authz.ParseResourceName(bad); ok {
			t.Errorf("ParseResourceName(%q) = %v, want not ok", bad, r)
		}
	}
}
