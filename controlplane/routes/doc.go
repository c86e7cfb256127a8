// Package routes is control-plane code: it translates Gateway API HTTPRoute
// and GRPCRoute (and TCPRoute) objects attached to Services (GAMMA
// "producer" routes) into the Envoy RouteConfigurations a waypoint serves,
// one per (Service, Service port), plus the route status conditions
// (Accepted, ResolvedRefs) to write back. Build is a pure function of its
// Inputs: no clock, no network, no shared state.
//
// Choices where the Gateway API leaves room:
//
//   - Precedence within HTTPRoutes: Exact path > RegularExpression path
//     (longer expression first) > PathPrefix (longer prefix first), then
//     method match, more header matches, more query matches, the older
//     route, namespace/name, rule index, match index. Regexes sit above
//     prefixes so that a catch-all prefix "/" cannot make them unreachable.
//   - GRPCRoutes (more service characters, more method characters, more
//     header matches, then the same tie-breakers) are never merged with
//     HTTPRoutes: all GRPCRoute entries come first, each carrying a
//     `grpc: {}` match, so only gRPC requests can hit them; a gRPC request
//     no GRPCRoute rule takes falls through to the HTTPRoute entries.
//   - A match that cannot be expressed (bad path, invalid regex, unknown
//     match type) produces no Envoy route; a rule whose action cannot be
//     honoured (unsupported filter, bad duration, bad redirect) keeps its
//     routes but they answer 500 with a body saying why. Both set Accepted
//     False (UnsupportedValue or IncompatibleFilters); the route's valid
//     rules stay programmed.
//   - Invalid backends (missing Service or port, wrong kind, cross-namespace
//     without a ReferenceGrant) keep their weight as a weighted cluster
//     named InvalidBackendCluster(...), answered with 500; a rule with no
//     usable backend at all answers 500 directly.
//   - parentRefs to a Service in another namespace ("consumer" routes) are
//     not supported by waypoints: Accepted False, NotAllowedByListeners.
//     parentRefs to a Service that exists but is not bound to this
//     waypoint get no condition here (another waypoint, or none, owns it);
//     parentRefs to Gateways are ignored.
//   - spec.hostnames is ignored: the VirtualHost matches every authority
//     (the waypoint already chose the Service from the HBONE target).
//   - Redirects always carry the Gateway API port in port_redirect
//     (explicit port, else the scheme's well-known port, else the listener
//     = Service port); the router omits :80 for http and :443 for https.
//   - Conditions carry ObservedGeneration but no LastTransitionTime: the
//     status writer sets it (meta.SetStatusCondition does).
package routes
