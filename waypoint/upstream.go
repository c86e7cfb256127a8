package waypoint

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"istio.io/istio/pkg/workloadapi"

	"github.com/ambit-mesh/ambit/hbone"
	"github.com/ambit-mesh/ambit/identity"
	"github.com/ambit-mesh/ambit/waypoint/router"
	"github.com/ambit-mesh/ambit/ztunnel"
)

// upstream opens the waypoint's side of requests: HTTP/1.1 and h2c
// transports whose connections are HBONE streams to the chosen endpoint's
// ztunnel (or plain TCP to an endpoint outside the mesh), kept alive per
// endpoint address.
type upstream struct {
	w      *Waypoint
	h1, h2 *http.Transport
}

func newUpstream(w *Waypoint) *upstream {
	u := &upstream{w: w}
	mk := func(h2 bool) *http.Transport {
		t := &http.Transport{
			DialContext:           u.dial,
			MaxIdleConnsPerHost:   64,
			IdleConnTimeout:       60 * time.Second,
			DisableCompression:    true,
			ResponseHeaderTimeout: 0, // route timeouts bound requests
			ExpectContinueTimeout: time.Second,
		}
		t.Protocols = new(http.Protocols)
		if h2 {
			t.Protocols.SetUnencryptedHTTP2(true)
		} else {
			t.Protocols.SetHTTP1(true)
		}
		return t
	}
	u.h1, u.h2 = mk(false), mk(true)
	return u
}

func (u *upstream) close() {
	u.h1.CloseIdleConnections()
	u.h2.CloseIdleConnections()
}

// pick chooses an endpoint of the service named by hostname for port:
// one per request, so requests over one client connection spread.
func (u *upstream) pick(hostname string, port uint16) (*workloadapi.Workload, netip.AddrPort, error) {
	svc := u.serviceByHostname(hostname)
	if svc == nil {
		return nil, netip.AddrPort{}, fmt.Errorf("service %s is unknown", hostname)
	}
	wl, target, err := u.w.cfg.Index.PickEndpoint(svc, port)
	if err != nil {
		return nil, netip.AddrPort{}, err
	}
	ip, ok := ztunnel.WorkloadIP(wl)
	if !ok {
		return nil, netip.AddrPort{}, fmt.Errorf("endpoint %s has no address", wl.GetName())
	}
	return wl, netip.AddrPortFrom(ip, target), nil
}

// serviceByHostname finds a service by its cluster hostname
// (name.namespace.svc.domain).
func (u *upstream) serviceByHostname(hostname string) *workloadapi.Service {
	parts := strings.SplitN(hostname, ".", 3)
	if len(parts) < 3 {
		return nil
	}
	return u.w.cfg.Index.Service(parts[1] + "/" + hostname)
}

// dial opens a connection to an endpoint address (podIP:targetPort): an
// HBONE stream to its ztunnel, authenticated as the waypoint and
// expecting the endpoint's identity, or plain TCP outside the mesh.
func (u *upstream) dial(ctx context.Context, _, addr string) (net.Conn, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, fmt.Errorf("endpoint %q: %w", addr, err)
	}
	wl := u.w.cfg.Index.WorkloadByIP(ap.Addr())
	if wl == nil {
		return nil, fmt.Errorf("endpoint %s is not a known workload", addr)
	}
	if wl.GetTunnelProtocol() != workloadapi.TunnelProtocol_HBONE {
		d := u.w.cfg.DialTCP
		if d == nil {
			d = (&net.Dialer{}).DialContext
		}
		return d(ctx, "tcp", addr)
	}
	key := hbone.Key{Src: u.w.cfg.Identity, Dst: []identity.SPIFFE{ztunnel.Identity(wl)}, DstAddr: netip.AddrPortFrom(ap.Addr(), hbone.Port)}
	hdr := http.Header{}
	hdr.Set("Traceparent", hbone.NewTraceparent())
	return u.w.pool.Dial(ctx, key, addr, hdr)
}

// tcpRoutePrefix starts the names of TCP destinations among the route
// configurations (the control plane's xds.TCPRoutePrefix).
const tcpRoutePrefix = "tcp|"

// dialTCP opens a TCP relay's upstream: an endpoint of the tunnel's
// service (its port mapped), or the tunnel's workload itself.
func (u *upstream) dialTCP(ctx context.Context, t *tunnel) (net.Conn, *workloadapi.Workload, string, error) {
	addr, dst := t.target, t.workload
	if t.service != nil {
		host, port := t.service.GetHostname(), t.target.Port()
		// A TCPRoute on the service port picks the backend (weighted).
		if rt, err := u.w.cfg.L7.Router(tcpRoutePrefix + routeName(host, port)); err == nil {
			d, ok := rt.Decide(router.Request{Method: http.MethodGet, Path: "/"}, nil)
			switch {
			case !ok:
				return nil, nil, "", fmt.Errorf("TCP route of %s:%d matched nothing", host, port)
			case d.Direct != nil:
				return nil, nil, "", fmt.Errorf("TCP route of %s:%d: %s", host, port, d.Direct.Body)
			}
			h, p, ok := parseClusterName(d.Cluster)
			if !ok {
				return nil, nil, "", fmt.Errorf("TCP route of %s:%d: unknown cluster %q", host, port, d.Cluster)
			}
			host, port = h, p
		}
		wl, ep, err := u.pick(host, port)
		if err != nil {
			return nil, nil, "", err
		}
		addr, dst = ep, wl
	}
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := u.dial(dctx, "tcp", addr.String())
	return c, dst, addr.String(), err
}
