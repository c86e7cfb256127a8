package l7authz

import (
	"fmt"
	"strings"

	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	typev1beta1 "istio.io/api/type/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"

	"github.com/ambit-mesh/ambit/waypoint/rbac"
)

// Target kinds a waypoint enforces policies for.
const (
	KindGateway      = rbac.KindGateway
	KindService      = rbac.KindService
	KindGatewayClass = rbac.KindGatewayClass
)

// Target API groups.
const (
	GroupGateway = "gateway.networking.k8s.io"
	GroupCore    = "" // "core" is accepted too
)

// WaypointGatewayClass is the class of Istio waypoints: a policy in the
// root namespace targeting it applies to every waypoint of the class.
const WaypointGatewayClass = "istio-waypoint"

// Target is an object a waypoint policy is attached to (the data plane's
// type: the waypoint names resources the same way).
type Target = rbac.Target

// TargetOf returns the waypoint targets of a policy, from targetRefs and the
// deprecated singular targetRef: Gateways and Services in the policy's own
// namespace, and, for a policy in the root namespace, GatewayClasses. It
// warns about each reference it cannot use (other kinds, groups or
// namespaces), which then does not apply. A policy without any targetRef is
// not a waypoint policy: TargetOf returns nothing and no warning.
func TargetOf(p *securityv1.AuthorizationPolicy, rootNamespace string) ([]Target, []Warning) {
	if p == nil {
		return nil, nil
	}
	if rootNamespace == "" {
		rootNamespace = DefaultRootNamespace
	}
	key := p.Namespace + "/" + p.Name
	spec := &p.Spec
	refs := spec.GetTargetRefs()
	var warnings []Warning
	warn := func(format string, args ...any) {
		warnings = append(warnings, Warning{Policy: key, Message: fmt.Sprintf(format, args...)})
	}
	labels := make([]string, 0, len(refs)+1)
	for i := range refs {
		labels = append(labels, fmt.Sprintf("targetRefs[%d]", i))
	}
	if r := spec.GetTargetRef(); r != nil {
		if len(refs) > 0 {
			warn("sets both targetRef and targetRefs (Istio rejects this): both are used")
		}
		refs = append([]*typev1beta1.PolicyTargetReference{r}, refs...)
		labels = append([]string{"targetRef"}, labels...)
	}
	var out []Target
	seen := map[Target]bool{}
	for i, r := range refs {
		t, msg := targetOfRef(r, p.Namespace, rootNamespace)
		if msg != "" {
			warn("%s (group %q, kind %q, name %q): %s; it is ignored", labels[i], r.GetGroup(), r.GetKind(), r.GetName(), msg)
			continue
		}
		if !seen[t] {
			seen[t] = true
			out = append(out, t)
		}
	}
	return out, warnings
}

// targetOfRef resolves one reference, or says why it cannot be used.
func targetOfRef(r *typev1beta1.PolicyTargetReference, policyNS, rootNS string) (Target, string) {
	if r == nil {
		return Target{}, "empty reference"
	}
	if r.GetName() == "" || strings.Contains(r.GetName(), "/") {
		return Target{}, "invalid name"
	}
	if ns := r.GetNamespace(); ns != "" && ns != policyNS {
		return Target{}, fmt.Sprintf("names namespace %q: a policy can only target objects in its own namespace %q", ns, policyNS)
	}
	group, kind := r.GetGroup(), r.GetKind()
	switch {
	case group == GroupGateway && kind == KindGateway:
		return Target{Kind: KindGateway, Namespace: policyNS, Name: r.GetName()}, ""
	case (group == GroupCore || group == "core") && kind == KindService:
		return Target{Kind: KindService, Namespace: policyNS, Name: r.GetName()}, ""
	case group == GroupGateway && kind == KindGatewayClass:
		if policyNS != rootNS {
			return Target{}, fmt.Sprintf("a GatewayClass can only be targeted from the root namespace %q", rootNS)
		}
		return Target{Kind: KindGatewayClass, Name: r.GetName()}, ""
	default:
		return Target{}, "unsupported target kind for a waypoint policy (supported: Gateway and GatewayClass of " + GroupGateway + ", core Service)"
	}
}

// Resource identifies one published RBAC (see rbac.Resource).
type Resource = rbac.Resource

// ResourceName names the enforced RBAC of a target for an action.
func ResourceName(t Target, action rbacv3.RBAC_Action) string { return rbac.ResourceName(t, action) }

// DryRunResourceName names the dry-run RBAC of a target for an action.
func DryRunResourceName(t Target, action rbacv3.RBAC_Action) string {
	return rbac.DryRunResourceName(t, action)
}

// ParseResourceName parses a name made by Resource.Name.
func ParseResourceName(name string) (Resource, bool) { return rbac.ParseResourceName(name) }
