package routes

import (
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// RouteKey identifies one parentRef of one route object; its conditions
// belong in status.parents[] for spec.parentRefs[ParentIndex].
type RouteKey struct {
	Kind        string // "HTTPRoute", "GRPCRoute" or "TCPRoute"
	Namespace   string
	Name        string
	ParentIndex int
}

// issue is one problem found while translating a route.
type issue struct {
	cond   gatewayv1.RouteConditionType
	reason gatewayv1.RouteConditionReason
	msg    string
}

func notAccepted(reason gatewayv1.RouteConditionReason, msg string) issue {
	return issue{cond: gatewayv1.RouteConditionAccepted, reason: reason, msg: msg}
}

func unsupported(msg string) issue {
	return notAccepted(gatewayv1.RouteReasonUnsupportedValue, msg)
}

func unresolved(reason gatewayv1.RouteConditionReason, msg string) issue {
	return issue{cond: gatewayv1.RouteConditionResolvedRefs, reason: reason, msg: msg}
}

// prefixed returns the issue with its message prefixed.
func (is issue) prefixed(prefix string) issue {
	is.msg = prefix + is.msg
	return is
}

// issues collects a route's problems once each, in the order found.
type issues struct {
	list []issue
	seen map[issue]bool
}

func (s *issues) add(is issue) {
	if s.seen == nil {
		s.seen = make(map[issue]bool)
	}
	if s.seen[is] {
		return
	}
	s.seen[is] = true
	s.list = append(s.list, is)
}

// conditions renders the Accepted and ResolvedRefs conditions of one
// parentRef: parent (if set) is a problem of this parentRef alone, route
// holds the route object's own problems.
func conditions(generation int64, parent *issue, route []issue) []metav1.Condition {
	var accepted, refs []issue
	if parent != nil {
		accepted = append(accepted, *parent)
	}
	for _, is := range route {
		if is.cond == gatewayv1.RouteConditionAccepted {
			accepted = append(accepted, is)
		} else {
			refs = append(refs, is)
		}
	}
	return []metav1.Condition{
		condition(generation, gatewayv1.RouteConditionAccepted, gatewayv1.RouteReasonAccepted,
			"Route is programmed on the waypoint", accepted),
		condition(generation, gatewayv1.RouteConditionResolvedRefs, gatewayv1.RouteReasonResolvedRefs,
			"All references resolved", refs),
	}
}

// condition is True with okReason when there are no problems; otherwise
// False with the first problem's reason and every problem's message.
func condition(generation int64, t gatewayv1.RouteConditionType, okReason gatewayv1.RouteConditionReason, okMsg string, problems []issue) metav1.Condition {
	c := metav1.Condition{
		Type:               string(t),
		Status:             metav1.ConditionTrue,
		Reason:             string(okReason),
		Message:            okMsg,
		ObservedGeneration: generation,
	}
	if len(problems) == 0 {
		return c
	}
	msgs := make([]string, len(problems))
	for i, p := range problems {
		msgs[i] = p.msg
	}
	c.Status = metav1.ConditionFalse
	c.Reason = string(problems[0].reason)
	c.Message = strings.Join(msgs, "; ")
	return c
}
