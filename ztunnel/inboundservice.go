package ztunnel

import (
	"sort"

	"istio.io/istio/pkg/workloadapi"
)

// GuessInboundService picks the Service that an inbound connection to the
// workload dst on targetPort was most likely sent to. The destination
// ztunnel reports it as destination_service in its metrics. The connection
// itself only tells us the pod and the port, so this is a best guess. It
// returns nil when no Service fits; the metric then says "unknown".
//
// Upstream ztunnel does the same thing in guess_inbound_service
// (src/proxy.rs; its callers are in src/proxy/inbound.rs and
// src/proxy/inbound_passthrough.rs), and the rules here follow it:
//
//   - Only Services dst belongs to are considered, i.e. the keys of
//     dst.Services that the index knows. A key whose Service has not
//     arrived yet is skipped.
//   - A Service fits if one of its ports has target_port equal to
//     targetPort. It also fits if target_port is 0 (a named port) and dst's
//     own port list for that Service, dst.Services[key].Ports, maps the
//     same service_port to targetPort. This is the per-endpoint port
//     lookup upstream does for named ports.
//   - The first Service that fits is returned. When several fit (for
//     example two Services on the same target port), upstream takes the
//     first one in the order of the workload's service list. That order
//     comes from a protobuf map decoded into a Rust HashMap, so upstream's
//     choice is arbitrary. We make it deterministic by going through the
//     Services in ascending namespace/hostname (ServiceKey) order.
//   - When the HBONE CONNECT :authority is a hostname, upstream looks up
//     that Service by hostname and prefers one in the destination
//     workload's namespace. It then only considers that one Service. The
//     client's word is trusted only as far as the set of known Services
//     allows. authorityHost carries that hostname: an empty string means
//     the authority was an IP:port, and the caller removes any ":port".
//     Candidates are tried in this order: dst's namespace/authorityHost,
//     then dst's own Services with that hostname, then any other known
//     Service with that hostname, each group in ServiceKey order. The
//     first one that fits targetPort by the rule above is returned. We
//     differ from upstream in one way: if no candidate fits targetPort, we
//     do not give up. We fall back to the port-based guess over dst's
//     Services, because a hint that disagrees with the port is not
//     trusted.
//   - A nil dst or a zero targetPort yields nil.
//
// It is safe for concurrent use.
func (x *Index) GuessInboundService(dst *workloadapi.Workload, targetPort uint16, authorityHost string) *workloadapi.Service {
	if dst == nil || targetPort == 0 {
		return nil
	}
	port := uint32(targetPort)
	own := dst.GetServices() // key -> this workload's ports for that Service

	// dst's Service keys in ServiceKey order: the deterministic tie-break.
	keys := make([]string, 0, len(own))
	for k := range own {
		keys = append(keys, k)
	}
	sort.Strings(keys)

	x.mu.RLock()
	defer x.mu.RUnlock()

	if authorityHost != "" {
		if s := x.guessByHostLocked(dst, keys, port, authorityHost); s != nil {
			return s
		}
	}
	for _, k := range keys {
		if s := x.services[k]; s != nil && servesTargetPort(s, own[k], port) {
			return s
		}
	}
	return nil
}

// guessByHostLocked returns the first Service named host that fits port.
// It tries dst's namespace first, then dst's own Services, then every other
// known Service with that hostname. x.mu must be held.
func (x *Index) guessByHostLocked(dst *workloadapi.Workload, keys []string, port uint32, host string) *workloadapi.Service {
	own := dst.GetServices()
	tried := map[string]bool{}
	try := func(k string) *workloadapi.Service {
		if tried[k] {
			return nil
		}
		tried[k] = true
		s := x.services[k]
		if s == nil || s.GetHostname() != host {
			return nil
		}
		if servesTargetPort(s, own[k], port) { // own[k] is nil if dst is not selected
			return s
		}
		return nil
	}
	if s := try(dst.GetNamespace() + "/" + host); s != nil {
		return s
	}
	for _, k := range keys {
		if s := try(k); s != nil {
			return s
		}
	}
	// Not in dst's namespace or dst's own Services: upstream still accepts
	// a Service with this hostname from any namespace. This is rare, so a
	// scan is fine. Keys are sorted so that the result is deterministic.
	var others []string
	for k, s := range x.services {
		if s.GetHostname() == host && !tried[k] {
			others = append(others, k)
		}
	}
	sort.Strings(others)
	for _, k := range others {
		if s := try(k); s != nil {
			return s
		}
	}
	return nil
}

// servesTargetPort reports whether s forwards one of its ports to port on
// an endpoint whose own port list for s is wl (nil if unknown). A
// Service's port with target_port equal to port always matches. Otherwise
// the endpoint's mapping for the same service_port is checked, which is how
// named target ports are resolved.
func servesTargetPort(s *workloadapi.Service, wl *workloadapi.PortList, port uint32) bool {
	for _, sp := range s.GetPorts() {
		if sp.GetTargetPort() == port {
			return true
		}
		for _, wp := range wl.GetPorts() {
			if wp.GetServicePort() == sp.GetServicePort() && wp.GetTargetPort() == port {
				return true
			}
		}
	}
	return false
}
