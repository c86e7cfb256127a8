package ztunnel

import (
	"fmt"
	"net/netip"

	"istio.io/istio/pkg/workloadapi"

	"github.com/ambit-mesh/ambit/hbone"
	"github.com/ambit-mesh/ambit/identity"
	"github.com/ambit-mesh/ambit/redirect"
)

// routeKind is how an outbound connection leaves the pod.
type routeKind uint8

const (
	routeNone        routeKind = iota // not routed (refused, or inbound)
	routeHBONE                        // HBONE to the endpoint's ztunnel on 15008
	routeTCP                          // plain TCP to an endpoint outside the mesh
	routePassthrough                  // plain TCP to an address the control plane does not know
)

// String is the access log's route field.
func (k routeKind) String() string {
	switch k {
	case routeHBONE:
		return "hbone"
	case routeTCP:
		return "tcp"
	case routePassthrough:
		return "passthrough"
	}
	return ""
}

// route is where an outbound connection goes.
type route struct {
	kind      routeKind
	addr      netip.AddrPort // next hop: podIP:15008 for HBONE
	authority string         // HBONE only: the CONNECT target podIP:port
	expect    identity.SPIFFE
	dst       *workloadapi.Workload // the next hop's workload: the waypoint's, via a waypoint
	service   *workloadapi.Service
	// waypoint is set when the connection goes through the destination's
	// waypoint (dst is then one of its pods).
	waypoint *workloadapi.Service
}

// resolve decides where a connection from src to orig goes (upstream's
// outbound resolution): a service VIP to one of its healthy endpoints
// with the port mapped, a pod IP to that pod; HBONE to enrolled
// endpoints, plain TCP to others, passthrough to addresses the control
// plane does not know. A service or pod with a waypoint is reached
// through the waypoint instead, before any endpoint is chosen (the
// waypoint balances at L7), unless src is that waypoint. It must only run
// once the index is ready (see Index.WaitReady): before that, every
// address would look unknown.
func (z *Ztunnel) resolve(src *workloadapi.Workload, orig netip.AddrPort) (route, error) {
	x := z.cfg.Index
	var ep endpoint
	var svc *workloadapi.Service
	if svc = x.ServiceByVIP(orig.Addr()); svc != nil {
		if gw := svc.GetWaypoint(); gw != nil {
			if rt, ok, err := z.viaWaypoint(src, gw, orig); ok || err != nil {
				rt.service = svc
				return rt, err
			}
		}
		var err error
		ep, err = x.pickEndpoint(svc, orig.Port(), src)
		if err != nil {
			return route{}, err
		}
	} else if w := x.WorkloadByIP(orig.Addr()); w != nil {
		if gw := w.GetWaypoint(); gw != nil {
			if rt, ok, err := z.viaWaypoint(src, gw, orig); ok || err != nil {
				return rt, err
			}
		}
		ep = endpoint{w: w, port: orig.Port()}
	} else {
		return route{kind: routePassthrough, addr: orig}, nil
	}
	ip, ok := WorkloadIP(ep.w)
	if !ok {
		return route{}, fmt.Errorf("workload %s has no address", ep.w.GetUid())
	}
	target := netip.AddrPortFrom(ip, ep.port)
	if ep.w.GetTunnelProtocol() == workloadapi.TunnelProtocol_HBONE {
		return route{kind: routeHBONE, addr: netip.AddrPortFrom(ip, hbone.Port), authority: target.String(), expect: Identity(ep.w), dst: ep.w, service: svc}, nil
	}
	return route{kind: routeTCP, addr: target, dst: ep.w, service: svc}, nil
}

// viaWaypoint routes a connection to orig through the waypoint gw names:
// HBONE to one of the waypoint's pods on its HBONE port, with the
// original destination as the CONNECT authority, expecting the
// waypoint's identity. ok is false when the waypoint does not apply: src
// is one of its pods (no loops). A waypoint that cannot be reached is an
// error, never a reason to go around it.
func (z *Ztunnel) viaWaypoint(src *workloadapi.Workload, gw *workloadapi.GatewayAddress, orig netip.AddrPort) (rt route, ok bool, err error) {
	x := z.cfg.Index
	h := gw.GetHostname()
	if h == nil {
		return route{}, false, fmt.Errorf("waypoint of %s: only hostname waypoints are supported", orig)
	}
	key := h.GetNamespace() + "/" + h.GetHostname()
	wp := x.Service(key)
	if wp == nil {
		return route{}, false, fmt.Errorf("waypoint %s of %s is unknown", key, orig)
	}
	if src != nil {
		if _, own := src.GetServices()[key]; own {
			return route{}, false, nil
		}
	}
	w, err := x.pickAnyEndpoint(wp)
	if err != nil {
		return route{}, false, fmt.Errorf("waypoint of %s: %w", orig, err)
	}
	ip, _ := WorkloadIP(w)
	port := uint16(gw.GetHboneMtlsPort())
	if port == 0 {
		port = hbone.Port
	}
	return route{kind: routeHBONE, addr: netip.AddrPortFrom(ip, port), authority: orig.String(),
		expect: Identity(w), dst: w, waypoint: wp}, true, nil
}

func isZtunnelPort(p uint16) bool {
	return p == redirect.OutboundPort || p == redirect.InboundPort || p == redirect.HBONEPort
}
