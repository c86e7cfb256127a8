package model

import (
	"fmt"
	"slices"
	"strings"

	typev1beta1 "istio.io/api/type/v1beta1"
	securityclient "istio.io/client-go/pkg/apis/security/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Condition types istiod sets on an AuthorizationPolicy in ambient mode:
// ZtunnelAccepted on a policy ztunnel enforces (no targetRefs),
// WaypointAccepted on one a waypoint enforces (targetRefs).
const (
	ConditionZtunnelAccepted  = "ZtunnelAccepted"
	ConditionWaypointAccepted = "WaypointAccepted"
)

// Reasons of those conditions, istiod's.
const (
	ReasonAccepted         = "Accepted"
	ReasonUnsupportedValue = "UnsupportedValue"
	ReasonInvalid          = "Invalid"
	ReasonPartiallyInvalid = "PartiallyInvalid"
	ReasonAncestorNotBound = "AncestorNotBound"
	ReasonTargetNotFound   = "TargetNotFound"
)

// PolicyStatus is the condition the control plane reports on one
// AuthorizationPolicy (ObservedGeneration is the policy's generation;
// LastTransitionTime is left to the writer).
type PolicyStatus struct {
	Namespace, Name string
	Condition       metav1.Condition
}

// PolicyReport returns the status of every AuthorizationPolicy of the
// last Build, sorted by namespace/name, as istiod reports them: a policy
// without targetRefs is ZtunnelAccepted (True once translated, with reason
// UnsupportedValue and what was left out when parts of it are not
// enforceable at L4; False for an action ztunnel does not support); a
// policy with targetRefs is WaypointAccepted, True when a target is bound
// to a waypoint.
func (b *Builder) PolicyReport() []PolicyStatus {
	out := make([]PolicyStatus, 0, len(b.translated))
	for p, t := range b.translated {
		c := metav1.Condition{ObservedGeneration: p.Generation}
		if len(p.Spec.GetTargetRefs()) > 0 || p.Spec.GetTargetRef() != nil {
			c = b.waypointCondition(p)
		} else {
			c.Type, c.Status, c.Reason, c.Message = ConditionZtunnelAccepted, metav1.ConditionTrue, ReasonAccepted, "attached to ztunnel"
			if t.a == nil {
				c.Status = metav1.ConditionFalse
			}
			if len(t.warnings) > 0 {
				msgs := make([]string, len(t.warnings))
				for i, w := range t.warnings {
					msgs[i] = w.Msg
				}
				c.Reason, c.Message = ReasonUnsupportedValue, strings.Join(msgs, "; ")
			}
		}
		c.ObservedGeneration = p.Generation
		out = append(out, PolicyStatus{Namespace: p.Namespace, Name: p.Name, Condition: c})
	}
	slices.SortFunc(out, func(a, b PolicyStatus) int {
		return strings.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name)
	})
	return out
}

// targetBinding is one targetRef's outcome.
type targetBinding struct {
	ancestor        string // Kind.group:namespace/name, as istiod names it
	bound           bool
	reason, message string
}

// waypointCondition is WaypointAccepted for a policy with targetRefs: one
// outcome per target, flattened as istiod does (one target: its outcome;
// several: True if any is bound, PartiallyInvalid if some are not).
func (b *Builder) waypointCondition(p *securityclient.AuthorizationPolicy) metav1.Condition {
	refs := p.Spec.GetTargetRefs()
	if r := p.Spec.GetTargetRef(); r != nil {
		refs = append([]*typev1beta1.PolicyTargetReference{r}, refs...)
	}
	var bs []targetBinding
	for _, r := range refs {
		ns := r.GetNamespace()
		if ns == "" {
			ns = p.Namespace
		}
		key := ns + "/" + r.GetName()
		group := r.GetGroup()
		if group == "" {
			group = "core"
		}
		tb := targetBinding{ancestor: r.GetKind() + "." + group + ":" + key, reason: ReasonInvalid,
			message: fmt.Sprintf("targetRef kind %q is not supported", r.GetKind())}
		switch r.GetKind() {
		case "Gateway":
			if w := b.c.wps[key]; w != nil {
				tb.bound, tb.reason, tb.message = true, ReasonAccepted, "bound to "+w.Key()
			} else {
				tb.reason, tb.message = ReasonTargetNotFound, "Gateway "+key+" is not a waypoint"
			}
		case "GatewayClass":
			switch {
			case p.Namespace != b.c.root:
				tb.message = fmt.Sprintf("AuthorizationPolicy must be in the root namespace `%s` when referencing a GatewayClass", b.c.root)
			case r.GetName() != GatewayClassWaypoint:
				tb.message = fmt.Sprintf("GatewayClass %s is not the waypoints' class %s", r.GetName(), GatewayClassWaypoint)
			default:
				tb.bound, tb.reason, tb.message = true, ReasonAccepted, "bound to "+GatewayClassWaypoint
			}
		case "Service":
			e := b.services[key]
			switch {
			case e == nil:
				tb.reason, tb.message = ReasonTargetNotFound, "Service "+key+" was not found"
			case e.bind.Waypoint == nil:
				tb.reason, tb.message = ReasonAncestorNotBound, "Service "+key+" is not bound to a waypoint"
			default:
				tb.bound, tb.reason, tb.message = true, ReasonAccepted, "bound to "+e.bind.Waypoint.Key()
			}
		}
		bs = append(bs, tb)
	}
	c := metav1.Condition{Type: ConditionWaypointAccepted, Status: metav1.ConditionFalse}
	if len(bs) == 1 {
		c.Reason, c.Message = bs[0].reason, bs[0].message
		if bs[0].bound {
			c.Status = metav1.ConditionTrue
		}
		return c
	}
	var unbound []string
	for _, tb := range bs {
		if tb.bound {
			c.Status = metav1.ConditionTrue
		} else {
			unbound = append(unbound, tb.ancestor)
		}
	}
	switch {
	case c.Status == metav1.ConditionTrue && len(unbound) > 0:
		c.Reason = ReasonPartiallyInvalid
	case c.Status == metav1.ConditionTrue:
		c.Reason, c.Message = ReasonAccepted, "bound to every target"
	default:
		c.Reason = ReasonInvalid
	}
	if len(unbound) > 0 {
		c.Message = "Invalid targetRefs: " + strings.Join(unbound, ", ")
	}
	return c
}
