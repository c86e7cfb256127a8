package routes

import (
	"fmt"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// Service is a Service of the mesh.
type Service struct {
	Namespace, Name string
	Hostname        string // e.g. "echo.demo.svc.cluster.local"; default <name>.<ns>.svc.cluster.local
	Ports           []Port
}

// Port is one Service port.
type Port struct {
	Port        uint32
	Name        string // matched by a parentRef's sectionName
	AppProtocol string
}

// ServiceRef names a Service.
type ServiceRef struct{ Namespace, Name string }

// Inputs is everything Build reads.
type Inputs struct {
	Services        []Service    // every Service of the mesh (backendRef resolution)
	Bound           []ServiceRef // the Services the waypoint serves
	HTTPRoutes      []*gatewayv1.HTTPRoute
	GRPCRoutes      []*gatewayv1.GRPCRoute
	TCPRoutes       []*gatewayv1.TCPRoute
	ReferenceGrants []*gatewayv1.ReferenceGrant // allow cross-namespace backendRefs
}

// Output is what the waypoint serves and what to write to route status.
type Output struct {
	// Routes holds the HTTP RouteConfiguration of every bound Service
	// port, by RouteName(hostname, port).
	Routes map[string]*routev3.RouteConfiguration
	// TCPRoutes holds, by the same name, the TCP destination of every bound
	// Service port: one route, named after the TCPRoute or DefaultRouteName,
	// matching prefix "/", with a cluster, weighted clusters or a 500
	// direct response (reject the connection).
	TCPRoutes map[string]*routev3.RouteConfiguration
	// Conditions holds Accepted and ResolvedRefs for every parentRef this
	// waypoint is responsible for.
	Conditions map[RouteKey][]metav1.Condition
}

const (
	kindHTTPRoute = "HTTPRoute"
	kindGRPCRoute = "GRPCRoute"
	kindTCPRoute  = "TCPRoute"
)

func (s *Service) hostname() string {
	if s.Hostname != "" {
		return s.Hostname
	}
	return defaultHostname(s.Namespace, s.Name)
}

func (s *Service) hasPort(p uint32) bool {
	for _, sp := range s.Ports {
		if sp.Port == p {
			return true
		}
	}
	return false
}

// target is one Service port.
type target struct {
	svc  ServiceRef
	port uint32
}

// entry is one Envoy route waiting for its place in a RouteConfiguration.
type entry struct {
	key          precedence
	route        *routev3.Route
	listenerPort bool // a redirect whose port is the Service port
}

// parentResult is what a parentRef resolved to.
type parentResult struct {
	ours    bool // this waypoint reports status for it
	problem *issue
	targets []target
}

// compiled is a route object translated once, independent of its parents.
type compiled struct {
	kind, ns, name string
	generation     int64
	created        time.Time
	parentRefs     []gatewayv1.ParentReference
	parents        []parentResult
	entries        []entry
	issues         issues
}

func newCompiled(kind string, meta metav1.ObjectMeta, parents []gatewayv1.ParentReference) *compiled {
	return &compiled{
		kind: kind, ns: meta.Namespace, name: meta.Name,
		generation: meta.Generation, created: meta.CreationTimestamp.Time,
		parentRefs: parents,
	}
}

// tie fills in the tie-breaking part of a precedence key.
func (c *compiled) tie(key precedence, rule, match int) precedence {
	key.created, key.nsName, key.rule, key.match = c.created, c.ns+"/"+c.name, rule, match
	return key
}

func (c *compiled) addf(mk func(string) issue, format string, args ...any) {
	c.issues.add(mk(fmt.Sprintf(format, args...)))
}

type builder struct {
	res     resolver
	bound   []ServiceRef
	isBound map[ServiceRef]bool
}

// Build translates the routes attached to the bound Services.
func Build(in Inputs) Output {
	b := newBuilder(in)
	var all []*compiled
	for _, r := range in.HTTPRoutes {
		if r != nil && r.Name != "" {
			all = append(all, b.compileHTTPRoute(r))
		}
	}
	for _, r := range in.GRPCRoutes {
		if r != nil && r.Name != "" {
			all = append(all, b.compileGRPCRoute(r))
		}
	}
	var tcp []*compiled
	for _, r := range in.TCPRoutes {
		if r != nil && r.Name != "" {
			tcp = append(tcp, b.compileTCPRoute(r))
		}
	}
	httpAt := b.attachAll(all)
	tcpAt := b.attachAll(tcp)
	resolveTCPConflicts(tcpAt)

	out := Output{
		Routes:     make(map[string]*routev3.RouteConfiguration),
		TCPRoutes:  make(map[string]*routev3.RouteConfiguration),
		Conditions: make(map[RouteKey][]metav1.Condition),
	}
	for _, ref := range b.bound {
		svc := b.res.services[ref]
		for _, p := range svc.Ports {
			if p.Port == 0 {
				continue
			}
			t := target{svc: ref, port: p.Port}
			name := RouteName(svc.hostname(), p.Port)
			out.Routes[name] = httpConfig(name, svc, p.Port, httpAt[t])
			out.TCPRoutes[name] = tcpConfig(name, svc, p.Port, tcpAt[t])
		}
	}
	for _, c := range append(all, tcp...) {
		for i, pr := range c.parents {
			if pr.ours {
				key := RouteKey{Kind: c.kind, Namespace: c.ns, Name: c.name, ParentIndex: i}
				out.Conditions[key] = conditions(c.generation, pr.problem, c.issues.list)
			}
		}
	}
	return out
}

func newBuilder(in Inputs) *builder {
	b := &builder{
		res:     resolver{services: make(map[ServiceRef]*Service, len(in.Services)), grants: in.ReferenceGrants},
		isBound: make(map[ServiceRef]bool, len(in.Bound)),
	}
	for i := range in.Services {
		s := &in.Services[i]
		ref := ServiceRef{Namespace: s.Namespace, Name: s.Name}
		if _, dup := b.res.services[ref]; !dup && s.Name != "" {
			b.res.services[ref] = s
		}
	}
	for _, ref := range in.Bound {
		if b.isBound[ref] || b.res.services[ref] == nil {
			continue
		}
		b.isBound[ref] = true
		b.bound = append(b.bound, ref)
	}
	return b
}

// attachAll resolves every parentRef and groups the routes by Service port.
func (b *builder) attachAll(cs []*compiled) map[target][]*compiled {
	at := make(map[target][]*compiled)
	for _, c := range cs {
		seen := make(map[target]bool)
		c.parents = make([]parentResult, len(c.parentRefs))
		for i, p := range c.parentRefs {
			pr := b.resolveParent(c, p)
			c.parents[i] = pr
			for _, t := range pr.targets {
				if !seen[t] {
					seen[t] = true
					at[t] = append(at[t], c)
				}
			}
		}
	}
	return at
}

// resolveParent decides what one parentRef attaches to. Only core Service
// parents concern a waypoint.
func (b *builder) resolveParent(c *compiled, p gatewayv1.ParentReference) parentResult {
	if p.Group == nil || !isCoreGroup(p.Group) || p.Kind == nil || *p.Kind != "Service" {
		return parentResult{}
	}
	ref := ServiceRef{Namespace: c.ns, Name: string(p.Name)}
	if p.Namespace != nil && *p.Namespace != "" {
		ref.Namespace = string(*p.Namespace)
	}
	fail := func(reason gatewayv1.RouteConditionReason, format string, args ...any) parentResult {
		is := notAccepted(reason, fmt.Sprintf(format, args...))
		return parentResult{ours: true, problem: &is}
	}
	svc := b.res.services[ref]
	switch {
	case svc == nil:
		return fail(gatewayv1.RouteReasonNoMatchingParent, "Service %s/%s not found", ref.Namespace, ref.Name)
	case !b.isBound[ref]:
		return parentResult{}
	case ref.Namespace != c.ns:
		return fail(gatewayv1.RouteReasonNotAllowedByListeners,
			"parentRef to Service %s/%s from namespace %s: consumer routes are not supported by waypoints", ref.Namespace, ref.Name, c.ns)
	}
	pr := parentResult{ours: true}
	for _, sp := range svc.Ports {
		if sp.Port == 0 ||
			(p.Port != nil && uint32(*p.Port) != sp.Port) ||
			(p.SectionName != nil && *p.SectionName != "" && string(*p.SectionName) != sp.Name) {
			continue
		}
		pr.targets = append(pr.targets, target{svc: ref, port: sp.Port})
	}
	if len(pr.targets) == 0 {
		return fail(gatewayv1.RouteReasonNoMatchingParent, "Service %s/%s has no port matching the parentRef", ref.Namespace, ref.Name)
	}
	return pr
}

// httpConfig assembles the RouteConfiguration of one Service port from the
// routes attached to it, or the default route when there are none.
func httpConfig(name string, svc *Service, port uint32, cs []*compiled) *routev3.RouteConfiguration {
	if len(cs) == 0 {
		return routeConfig(name, []*routev3.Route{defaultRoute(svc, port)})
	}
	var es []entry
	for _, c := range cs {
		es = append(es, c.entries...)
	}
	sortEntries(es)
	routes := make([]*routev3.Route, 0, len(es))
	for _, e := range es {
		r := proto.Clone(e.route).(*routev3.Route)
		if e.listenerPort && r.GetRedirect() != nil {
			r.GetRedirect().PortRedirect = port
		}
		routes = append(routes, r)
	}
	return routeConfig(name, routes)
}

func routeConfig(name string, routes []*routev3.Route) *routev3.RouteConfiguration {
	return &routev3.RouteConfiguration{
		Name: name,
		VirtualHosts: []*routev3.VirtualHost{{
			Name:    name,
			Domains: []string{"*"},
			Routes:  routes,
		}},
	}
}

func defaultRoute(svc *Service, port uint32) *routev3.Route {
	return &routev3.Route{
		Name:  DefaultRouteName,
		Match: prefixAll(),
		Action: &routev3.Route_Route{Route: &routev3.RouteAction{
			ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: ClusterName(svc.hostname(), port)},
			Timeout:          durationpb.New(0),
		}},
	}
}

func prefixAll() *routev3.RouteMatch {
	return &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}}
}

// setDirect500 makes r answer 500 with body (and nothing else).
func setDirect500(r *routev3.Route, body string) {
	r.Action = &routev3.Route_DirectResponse{DirectResponse: &routev3.DirectResponseAction{
		Status: 500,
		Body:   &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: body}},
	}}
	r.RequestHeadersToAdd, r.RequestHeadersToRemove = nil, nil
	r.ResponseHeadersToAdd, r.ResponseHeadersToRemove = nil, nil
}
