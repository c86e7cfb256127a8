package rbac

import (
	"strings"

	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
)

// Target kinds a waypoint enforces policies for.
const (
	KindGateway      = "Gateway"      // a waypoint's Gateway (gateway.networking.k8s.io)
	KindService      = "Service"      // a core Service bound to a waypoint
	KindGatewayClass = "GatewayClass" // every waypoint of a class; only from the root namespace
)

// Target is an object a waypoint policy is attached to. Namespace is empty
// for a GatewayClass (cluster-scoped).
type Target struct {
	Kind      string // KindGateway, KindService or KindGatewayClass
	Namespace string
	Name      string
}

func (t Target) String() string { return t.Kind + "/" + t.Namespace + "/" + t.Name }

// Resource identifies one published RBAC: a target, an action, and whether
// it holds dry-run policies (evaluated only for logging).
type Resource struct {
	Target Target
	Action rbacv3.RBAC_Action // ALLOW or DENY
	DryRun bool
}

// Name is the resource name: "<Kind>/<namespace>/<name>/<ACTION>", with
// ACTION one of ALLOW, DENY, DRYRUN-ALLOW, DRYRUN-DENY; e.g.
// "Service/demo/echo/DENY", "GatewayClass//istio-waypoint/ALLOW".
func (r Resource) Name() string {
	action := r.Action.String()
	if r.DryRun {
		action = dryRunPrefix + action
	}
	return r.Target.String() + "/" + action
}

const dryRunPrefix = "DRYRUN-"

// ResourceName names the enforced RBAC of a target for an action.
func ResourceName(t Target, action rbacv3.RBAC_Action) string {
	return Resource{Target: t, Action: action}.Name()
}

// DryRunResourceName names the dry-run RBAC of a target for an action.
func DryRunResourceName(t Target, action rbacv3.RBAC_Action) string {
	return Resource{Target: t, Action: action, DryRun: true}.Name()
}

// ParseResourceName parses a name made by Resource.Name; ok is false for
// anything else (unknown kind or action, missing parts).
func ParseResourceName(name string) (r Resource, ok bool) {
	parts := strings.Split(name, "/")
	if len(parts) != 4 {
		return Resource{}, false
	}
	t := Target{Kind: parts[0], Namespace: parts[1], Name: parts[2]}
	switch t.Kind {
	case KindGateway, KindService:
		if t.Namespace == "" {
			return Resource{}, false
		}
	case KindGatewayClass:
		if t.Namespace != "" {
			return Resource{}, false
		}
	default:
		return Resource{}, false
	}
	if t.Name == "" {
		return Resource{}, false
	}
	action, dry := parts[3], false
	if rest, found := strings.CutPrefix(action, dryRunPrefix); found {
		action, dry = rest, true
	}
	switch action {
	case "ALLOW":
		return Resource{Target: t, Action: rbacv3.RBAC_ALLOW, DryRun: dry}, true
	case "DENY":
		return Resource{Target: t, Action: rbacv3.RBAC_DENY, DryRun: dry}, true
	}
	return Resource{}, false
}
