package ztunnel

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"

	"github.com/ambit-mesh/ambit/hbone"
	"github.com/ambit-mesh/ambit/identity"
	"github.com/ambit-mesh/ambit/nsnet"
	"github.com/ambit-mesh/ambit/redirect"
)

// outbound handles a connection the pod's app opened (captured on 15001):
// hold until the config is known, resolve, connect in accept order, relay.
func (p *podProxy) outbound(cc *captured) {
	c, src, orig := cc.c, cc.src, cc.orig
	rec := &connRecord{direction: "outbound", src: src, srcID: p.id, srcPod: p.info, dst: orig, start: cc.start,
		labels: connLabels{reporter: "source", srcID: p.id, srcNS: p.info.GetNamespace(), srcName: p.info.GetName()}}
	refuse := func(err error) { rec.refused(p.z.cfg.AccessLog, p.z.cfg.Metrics, "CONNECT", err) }
	if cc.origErr != nil {
		refuse(fmt.Errorf("no original destination: %w", cc.origErr))
		return
	}
	if orig.Addr().IsLoopback() && isZtunnelPort(orig.Port()) {
		refuse(errors.New("connection to a ztunnel port refused"))
		return
	}
	if err := p.waitConfig(); err != nil {
		refuse(fmt.Errorf("held %v, then refused: %w", p.z.cfg.ConfigWait, err))
		return
	}
	// As upstream, the source must be a known workload (it may lag the
	// pod's enrollment by a moment).
	wctx, wcancel := context.WithTimeout(p.ctx, p.z.cfg.ConfigWait)
	rec.labels.src = p.z.cfg.Index.WaitWorkloadByIP(wctx, src.Addr())
	wcancel()
	if rec.labels.src == nil {
		refuse(fmt.Errorf("unknown source workload %s", src.Addr()))
		return
	}
	// The set-up deadline starts before the wait for earlier connections,
	// so a stuck predecessor holds this one no longer than its own.
	ctx, cancel := context.WithTimeout(p.ctx, hbone.DialTimeout)
	defer cancel()
	cc.turn.wait(ctx)
	rt, err := p.z.resolve(orig)
	if err != nil {
		cc.turn.done()
		refuse(err)
		return
	}
	rec.route = rt
	l := &rec.labels
	l.dst, l.service, l.mtls = rt.dst, rt.service, rt.kind == routeHBONE
	if rt.dst != nil {
		l.dstNS, l.dstName = rt.dst.GetNamespace(), rt.dst.GetName()
		if l.mtls {
			l.dstID = rt.expect
		}
	}
	up, err := p.connect(ctx, src, rt)
	cc.turn.done()
	if err != nil {
		refuse(err)
		return
	}
	p.relay(c, up, rec)
}

// connect opens the upstream side of an outbound connection.
func (p *podProxy) connect(ctx context.Context, src netip.AddrPort, rt route) (net.Conn, error) {
	if rt.kind != routeHBONE {
		return nsnet.DialFunc(p.path, nsnet.SocketOptions{Mark: redirect.ZtunnelMark}, nil)(ctx, "tcp", rt.addr.String())
	}
	host := ""
	if rt.service != nil {
		host = rt.service.GetHostname()
	}
	hdr := http.Header{}
	hdr.Set("Traceparent", hbone.NewTraceparent())
	hdr.Set("Forwarded", hbone.Forwarded(src, host))
	hdr.Set("Baggage", hbone.Baggage(hbone.BaggageInfo{Namespace: p.info.GetNamespace(), WorkloadType: "pod", WorkloadName: p.info.GetName()}))
	// One pool per pod, its sockets in the pod's netns: connections are
	// shared per source identity, destination identity and address.
	key := hbone.Key{Src: p.id, Dst: []identity.SPIFFE{rt.expect}, DstAddr: rt.addr}
	return p.pool.Dial(ctx, key, rt.authority, hdr)
}
