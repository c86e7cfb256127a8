package routes

import (
	"cmp"
	"slices"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/proto"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// compileTCPRoute translates a TCPRoute: its one rule's backends become
// the destination of every connection to the Service port.
func (b *builder) compileTCPRoute(r *gatewayv1.TCPRoute) *compiled {
	c := newCompiled(kindTCPRoute, r.ObjectMeta, r.Spec.ParentRefs)
	route := &routev3.Route{Name: tcpEntryName(c.ns, c.name), Match: prefixAll()}
	c.entries = []entry{{key: c.tie(precedence{}, 0, 0), route: route}}
	if len(r.Spec.Rules) == 0 {
		c.addf(unsupported, "TCPRoute has no rules")
		setDirect500(route, "TCPRoute has no rules")
		return c
	}
	if len(r.Spec.Rules) > 1 {
		c.addf(unsupported, "TCPRoute has %d rules; only rule 0 is used", len(r.Spec.Rules))
	}
	var bs []backend
	for _, ref := range r.Spec.Rules[0].BackendRefs {
		bk, is := b.backend(c, 0, ref, nil)
		if is != nil {
			c.issues.add(*is)
			setDirect500(route, is.msg)
			return c
		}
		bs = append(bs, bk)
	}
	ra := &routev3.RouteAction{}
	failBody, err := setBackends(ra, bs)
	switch {
	case err != nil:
		c.addf(unsupported, "rule 0: %v", err)
		setDirect500(route, err.Error())
	case failBody != "":
		setDirect500(route, failBody)
	default:
		route.Action = &routev3.Route_Route{Route: ra}
	}
	return c
}

// resolveTCPConflicts keeps, per Service port, only the oldest TCPRoute
// (then by namespace/name): a TCP connection cannot be told apart by rule.
// The others are recorded as not accepted.
func resolveTCPConflicts(at map[target][]*compiled) {
	for t, cs := range at {
		if len(cs) < 2 {
			continue
		}
		slices.SortStableFunc(cs, func(a, b *compiled) int {
			return cmp.Or(a.created.Compare(b.created), cmp.Compare(a.ns+"/"+a.name, b.ns+"/"+b.name))
		})
		for _, loser := range cs[1:] {
			loser.addf(unsupported, "port %d of Service %s/%s is already taken by TCPRoute %s/%s",
				t.port, t.svc.Namespace, t.svc.Name, cs[0].ns, cs[0].name)
		}
		at[t] = cs[:1]
	}
}

// tcpConfig is the TCP destination of one Service port.
func tcpConfig(name string, svc *Service, port uint32, cs []*compiled) *routev3.RouteConfiguration {
	if len(cs) == 0 {
		return routeConfig(name, []*routev3.Route{defaultRoute(svc, port)})
	}
	return routeConfig(name, []*routev3.Route{proto.Clone(cs[0].entries[0].route).(*routev3.Route)})
}
