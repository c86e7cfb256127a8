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
	dst       *workloadapi.Workload
	service   *workloadapi.Service
}

// resolve decides where a connection to orig goes (upstream's outbound
// resolution): a service VIP to one of its healthy endpoints with the port
// mapped, a pod IP to that pod; HBONE to enrolled endpoints, plain TCP to
// others, passthrough to addresses the control plane does not know. It
// must only run once the index is ready (see Index.WaitReady): before
// that, every address would look unknown.
func (z *Ztunnel) resolve(orig netip.AddrPort) (route, error) {
	x := z.cfg.Index
	var ep endpoint
	var svc *workloadapi.Service
	if svc = x.ServiceByVIP(orig.Addr()); svc != nil {
		var err error
		ep, err = x.pickEndpoint(svc, orig.Port())
		if err != nil {
			return route{}, err
		}
	} else if w := x.WorkloadByIP(orig.Addr()); w != nil {
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

func isZtunnelPort(p uint16) bool {
	return p == redirect.OutboundPort || p == redirect.InboundPort || p == redirect.HBONEPort
}
