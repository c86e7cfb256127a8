package routes

import (
	"fmt"
	"math"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// resolver answers "which cluster is this backendRef?".
type resolver struct {
	services map[ServiceRef]*Service
	grants   []*gatewayv1.ReferenceGrant
}

// resolved is one backendRef after resolution.
type resolved struct {
	cluster string // "" when invalid
	label   string // "<ns>/<name>:<port>", for names and messages
	problem *issue // set when invalid
	body    string // the 500 body for requests sent to it when invalid
}

// resolve resolves ref, written in a route of kind in namespace routeNS.
func (r *resolver) resolve(kind, routeNS string, ref gatewayv1.BackendObjectReference) resolved {
	ns := routeNS
	if ref.Namespace != nil && *ref.Namespace != "" {
		ns = string(*ref.Namespace)
	}
	var port uint32
	if ref.Port != nil {
		port = uint32(*ref.Port)
	}
	out := resolved{label: backendLabel(ns, string(ref.Name), port)}
	fail := func(reason gatewayv1.RouteConditionReason, body, format string, args ...any) resolved {
		is := unresolved(reason, fmt.Sprintf(format, args...))
		out.problem, out.body = &is, body
		return out
	}
	if !isCoreGroup(ref.Group) || (ref.Kind != nil && *ref.Kind != "Service") {
		return fail(gatewayv1.RouteReasonInvalidKind, "backend "+out.label+" has an unsupported kind",
			"backendRef %s: kind %s is not supported (only core Service)", out.label, groupKind(ref.Group, ref.Kind))
	}
	if ns != routeNS && !r.granted(kind, routeNS, ns, string(ref.Name)) {
		return fail(gatewayv1.RouteReasonRefNotPermitted, "backend "+out.label+" not permitted",
			"backendRef %s: cross-namespace reference not permitted by any ReferenceGrant in %s", out.label, ns)
	}
	notFound := "backend " + out.label + " not found"
	svc := r.services[ServiceRef{Namespace: ns, Name: string(ref.Name)}]
	if svc == nil || ref.Name == "" {
		return fail(gatewayv1.RouteReasonBackendNotFound, notFound, "backendRef %s: Service not found", out.label)
	}
	if port == 0 {
		return fail(gatewayv1.RouteReasonBackendNotFound, notFound, "backendRef %s: port is required for a Service", out.label)
	}
	if !svc.hasPort(port) {
		return fail(gatewayv1.RouteReasonBackendNotFound, notFound, "backendRef %s: Service has no port %d", out.label, port)
	}
	out.cluster = ClusterName(svc.hostname(), port)
	return out
}

// granted reports whether a ReferenceGrant in toNS lets routes of kind in
// fromNS refer to the Service name.
func (r *resolver) granted(kind, fromNS, toNS, name string) bool {
	for _, g := range r.grants {
		if g == nil || g.Namespace != toNS {
			continue
		}
		if grantsFrom(g.Spec.From, kind, fromNS) && grantsTo(g.Spec.To, name) {
			return true
		}
	}
	return false
}

func grantsFrom(from []gatewayv1.ReferenceGrantFrom, kind, ns string) bool {
	for _, f := range from {
		if f.Group == gatewayv1.GroupName && string(f.Kind) == kind && string(f.Namespace) == ns {
			return true
		}
	}
	return false
}

func grantsTo(to []gatewayv1.ReferenceGrantTo, name string) bool {
	for _, t := range to {
		if (t.Group == "" || t.Group == "core") && t.Kind == "Service" && (t.Name == nil || *t.Name == "" || string(*t.Name) == name) {
			return true
		}
	}
	return false
}

func isCoreGroup(g *gatewayv1.Group) bool {
	return g == nil || *g == "" || *g == "core"
}

func groupKind(g *gatewayv1.Group, k *gatewayv1.Kind) string {
	group, kind := "core", "Service"
	if g != nil && *g != "" {
		group = string(*g)
	}
	if k != nil {
		kind = string(*k)
	}
	return group + "/" + kind
}

// backend is one weighted destination of a rule.
type backend struct {
	resolved
	weight  uint32
	headers headerOps // per-backendRef filters
}

// setBackends points ra at the backends, or returns the body of the 500 a
// rule must answer with when no request can reach a valid backend.
// Weight-0 entries are dropped; a single plain backend becomes `cluster`,
// anything else `weighted_clusters`, with invalid entries keeping their
// share as InvalidBackendCluster names answered with 500.
func setBackends(ra *routev3.RouteAction, bs []backend) (failBody string, err error) {
	var live []backend
	var total, valid uint64
	for _, b := range bs {
		if b.weight == 0 {
			continue
		}
		live = append(live, b)
		total += uint64(b.weight)
		if b.problem == nil {
			valid += uint64(b.weight)
		}
	}
	switch {
	case len(bs) == 0:
		return "no backendRefs", nil
	case total == 0:
		return "all backendRefs have weight 0", nil
	case total > math.MaxUint32:
		return "", fmt.Errorf("backendRef weights sum to %d, more than %d", total, uint64(math.MaxUint32))
	case valid == 0:
		return live[0].body, nil
	}
	if len(live) == 1 && live[0].headers.empty() {
		ra.ClusterSpecifier = &routev3.RouteAction_Cluster{Cluster: live[0].cluster}
		return "", nil
	}
	wc := &routev3.WeightedCluster{}
	for _, b := range live {
		wc.Clusters = append(wc.Clusters, clusterWeight(b))
	}
	ra.ClusterSpecifier = &routev3.RouteAction_WeightedClusters{WeightedClusters: wc}
	if valid != total {
		ra.ClusterNotFoundResponseCode = routev3.RouteAction_INTERNAL_SERVER_ERROR
	}
	return "", nil
}

func clusterWeight(b backend) *routev3.WeightedCluster_ClusterWeight {
	name := b.cluster
	if b.problem != nil {
		name = InvalidBackendPrefix + b.label
	}
	return &routev3.WeightedCluster_ClusterWeight{
		Name:                    name,
		Weight:                  wrapperspb.UInt32(b.weight),
		RequestHeadersToAdd:     b.headers.reqAdd,
		RequestHeadersToRemove:  b.headers.reqRemove,
		ResponseHeadersToAdd:    b.headers.respAdd,
		ResponseHeadersToRemove: b.headers.respRemove,
	}
}

// weightOf reads a backendRef weight (default 1; negative is invalid).
func weightOf(w *int32) (uint32, error) {
	if w == nil {
		return 1, nil
	}
	if *w < 0 {
		return 0, fmt.Errorf("weight %d is negative", *w)
	}
	return uint32(*w), nil
}
