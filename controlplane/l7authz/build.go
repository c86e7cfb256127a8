// Package l7authz is control-plane code: it translates the
// AuthorizationPolicy resources (security.istio.io/v1) that waypoints
// enforce, those whose targetRefs name a Gateway, a Service or (from the root
// namespace) a GatewayClass, into Envoy RBAC (envoy.config.rbac.v3.RBAC),
// one ALLOW and one DENY RBAC per target, with upstream Istio's semantics
// for the HTTP and connection fields. It warns about everything it cannot
// enforce exactly and then fails closed: what it cannot check never lets an
// ALLOW rule match and always lets a DENY rule match. Policies with a
// selector, or with neither selector nor targetRefs, are ztunnel's
// (package controlplane/authzpolicy) and are skipped here. Evaluation lives
// in package waypoint/rbac.
//
// Fail-closed choices:
//   - CUSTOM (external authorization) is not supported. Ignoring such a
//     policy would fail open, so each of its targets gets a deny-all policy
//     "<ns>/<name>/custom" in its DENY RBAC (in DRYRUN-DENY for a dry-run
//     policy), with a warning.
//   - AUDIT only affects logging upstream: it is ignored with a warning.
//   - requestPrincipals, notRequestPrincipals and request.auth.* need
//     RequestAuthentication (JWT), which is not supported; and so are
//     experimental.envoy.filters.* and unknown condition keys. Such a field
//     or condition can never hold in an ALLOW rule and always holds in a
//     DENY rule (the rule then denies on its other fields alone).
//   - An invalid value (CIDR, port, path template, empty value, wildcard in
//     a service account) in a positive list can never match in ALLOW and
//     always matches in DENY; in a negative list (not*, notValues) the
//     field can never hold in ALLOW and, in DENY, the value excludes nobody.
//
// Each placeholder sits directly in an AND or OR, never under a negation,
// so the resulting rule matches a subset of what the policy asks in ALLOW
// and a superset in DENY.
package l7authz

import (
	"fmt"

	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	"google.golang.org/protobuf/proto"
	securityv1beta1 "istio.io/api/security/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
)

// DefaultRootNamespace is the mesh root namespace.
const DefaultRootNamespace = "istio-system"

// AnnotationDryRun marks a policy whose decisions are only logged.
const AnnotationDryRun = "istio.io/dry-run"

// Warning is a note about how a policy was translated.
type Warning struct {
	Policy  string // namespace/name
	Message string
}

func (w Warning) String() string { return w.Policy + ": " + w.Message }

// Output is what the waypoints of a mesh enforce.
type Output struct {
	// RBAC holds, by Resource name, one RBAC per target and action that
	// has any policy (and, under DRYRUN-* names, the dry-run policies).
	// Policy names inside are "<ns>/<name>/rule-<i>" (or "<ns>/<name>/custom").
	RBAC     map[string]*rbacv3.RBAC
	Warnings []Warning
}

// Build translates every waypoint policy among policies. rootNamespace ""
// means DefaultRootNamespace.
func Build(policies []*securityv1.AuthorizationPolicy, rootNamespace string) Output {
	if rootNamespace == "" {
		rootNamespace = DefaultRootNamespace
	}
	out := Output{RBAC: map[string]*rbacv3.RBAC{}}
	for _, p := range policies {
		if p == nil {
			continue
		}
		out.Warnings = append(out.Warnings, buildPolicy(&out, p, rootNamespace)...)
	}
	return out
}

// rbacFor returns the RBAC of a resource, creating it.
func (o *Output) rbacFor(r Resource) *rbacv3.RBAC {
	name := r.Name()
	if x, ok := o.RBAC[name]; ok {
		return x
	}
	x := &rbacv3.RBAC{Action: r.Action, Policies: map[string]*rbacv3.Policy{}}
	o.RBAC[name] = x
	return x
}

func buildPolicy(out *Output, p *securityv1.AuthorizationPolicy, rootNS string) []Warning {
	key := p.Namespace + "/" + p.Name
	spec := &p.Spec
	if spec.GetTargetRef() == nil && len(spec.GetTargetRefs()) == 0 {
		return nil // a ztunnel policy (selector, namespace or mesh wide)
	}
	targets, warnings := TargetOf(p, rootNS)
	warn := func(format string, args ...any) {
		warnings = append(warnings, Warning{Policy: key, Message: fmt.Sprintf(format, args...)})
	}
	if spec.GetSelector() != nil {
		warn("sets both selector and targetRefs (Istio rejects this): the selector is ignored and the waypoint enforces the policy")
	}
	if len(targets) == 0 {
		warn("no usable targetRef: the policy applies to no waypoint")
		return warnings
	}
	dryRun := false
	switch v, ok := p.Annotations[AnnotationDryRun]; {
	case !ok:
	case v == "true":
		dryRun = true
	case v != "false":
		warn("annotation %s=%q is not \"true\": the policy is enforced", AnnotationDryRun, v)
	}

	var action rbacv3.RBAC_Action
	switch spec.GetAction() {
	case securityv1beta1.AuthorizationPolicy_ALLOW:
		action = rbacv3.RBAC_ALLOW
	case securityv1beta1.AuthorizationPolicy_DENY:
		action = rbacv3.RBAC_DENY
	case securityv1beta1.AuthorizationPolicy_CUSTOM:
		warn("action CUSTOM (external authorization) is not supported, so the policy is not evaluated; to fail closed, every request to its targets is denied (policy %s/custom)", key)
		denyAll := &rbacv3.Policy{Permissions: []*rbacv3.Permission{permAny()}, Principals: []*rbacv3.Principal{prinAny()}}
		for _, t := range targets {
			out.rbacFor(Resource{Target: t, Action: rbacv3.RBAC_DENY, DryRun: dryRun}).Policies[key+"/custom"] = proto.CloneOf(denyAll)
		}
		return warnings
	case securityv1beta1.AuthorizationPolicy_AUDIT:
		warn("action AUDIT is not supported: the policy is ignored (it only affects logging)")
		return warnings
	default:
		warn("unknown action %v: the policy is ignored", spec.GetAction())
		return warnings
	}

	rules := spec.GetRules()
	if action == rbacv3.RBAC_DENY && len(rules) == 0 {
		warn("has no rules, so this DENY policy never matches and denies nothing (write rules: [{}] to deny everything)")
	}
	tr := &translator{policyNS: p.Namespace, deny: action == rbacv3.RBAC_DENY}
	generated := map[string]*rbacv3.Policy{}
	for i, r := range rules {
		tr.rule = i
		tr.warnings = nil
		pol := tr.translateRule(r)
		for _, m := range tr.warnings {
			warn("%s", m)
		}
		if pol == nil {
			if action == rbacv3.RBAC_ALLOW {
				warn("rule %d can never match: it allows nothing", i)
			} else {
				warn("rule %d can never match: it denies nothing", i)
			}
			continue
		}
		generated[fmt.Sprintf("%s/rule-%d", key, i)] = pol
	}
	if action == rbacv3.RBAC_ALLOW && len(rules) > 0 && len(generated) == 0 {
		warn("no rule is left: this ALLOW policy allows nothing, so its targets only admit what another ALLOW policy allows")
	}
	// Every target gets the RBAC even when no rule is left: an ALLOW policy
	// without rules still exists and so denies what no other ALLOW allows.
	for _, t := range targets {
		x := out.rbacFor(Resource{Target: t, Action: action, DryRun: dryRun})
		for name, pol := range generated {
			x.Policies[name] = proto.CloneOf(pol)
		}
	}
	return warnings
}
