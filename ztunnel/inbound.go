package ztunnel

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/ambit-mesh/ambit/authz"
	"github.com/ambit-mesh/ambit/hbone"
)

// inboundHBONE authorizes an HBONE stream, connects it to the pod's app
// and relays it (after the HBONE server's own checks of method, authority
// and client identity). Every refusal leaves one record.
func (p *podProxy) inboundHBONE(ctx context.Context, r *hbone.Request) {
	start := time.Now()
	src := unmapped(r.RemoteAddr)
	peer := r.Peer
	rec := &connRecord{direction: "inbound", src: src, srcID: peer, dstPod: p.info, dstID: p.id, start: start,
		dst: netip.AddrPortFrom(r.Target.Addr.Addr().Unmap(), r.Target.Port), hboneAddr: r.Target.String(),
		labels: connLabels{reporter: "destination", srcID: peer, srcNS: peer.Namespace, dstID: p.id, dstNS: p.info.GetNamespace(), dstName: p.info.GetName(), mtls: true}}
	refuse := func(code int, err error) {
		rec.refused(p.z.cfg.AccessLog, p.z.cfg.Metrics, "CONNECT", err)
		_ = r.Refuse(code, err.Error())
	}
	if !r.Target.IsIP() {
		refuse(http.StatusBadRequest, errors.New("hostname targets are not supported here"))
		return
	}
	local, ok := r.LocalAddr.(*net.TCPAddr)
	if !ok || local.AddrPort().Addr().Unmap() != rec.dst.Addr() {
		refuse(http.StatusBadRequest, fmt.Errorf("target %s is not this pod (%v)", r.Target, r.LocalAddr))
		return
	}
	if isZtunnelPort(r.Target.Port) {
		refuse(http.StatusServiceUnavailable, fmt.Errorf("port %d is ztunnel's", r.Target.Port))
		return
	}
	if err := p.waitConfig(); err != nil {
		refuse(http.StatusServiceUnavailable, fmt.Errorf("held %v, then refused: %w", p.z.cfg.ConfigWait, err))
		return
	}
	p.describeInbound(rec)
	ic := &inboundConn{ac: authz.Conn{Src: &peer, SrcIP: src.Addr(), DstIP: rec.dst.Addr(), DstPort: r.Target.Port}, src: src, dst: rec.dst}
	var cut onDeny
	ic.close = cut.deny
	d, untrack := p.admitInbound(ic)
	if !d.Allow {
		rec.denied(p.z.cfg.AccessLog, p.z.cfg.Metrics, d.Policy, d.Reason)
		_ = r.Refuse(http.StatusUnauthorized, d.Reason)
		return
	}
	defer untrack()
	app, err := p.dialApp(ctx, src.Addr(), r.Target.Addr)
	if err != nil {
		refuse(http.StatusServiceUnavailable, fmt.Errorf("connecting to the application: %w", err))
		return
	}
	stream, err := r.Accept(nil)
	if err != nil {
		app.Close()
		rec.refused(p.z.cfg.AccessLog, p.z.cfg.Metrics, "CONNECT", fmt.Errorf("accepting the stream: %w", err))
		return
	}
	// A re-check that denies the connection resets the stream and closes
	// the app side; a reset of the stream (or the loss of its HBONE
	// connection) closes the app side. Callbacks, not a watching
	// goroutine: an idle connection costs its two relay goroutines only.
	cut.set(func() {
		stream.Close()
		app.Close()
	})
	defer context.AfterFunc(ctx, func() { app.Close() })()
	p.relay(stream, app, rec)
}

// onDeny runs a connection's cut-off when a policy re-check denies it,
// at once if the denial came before the cut-off was set.
type onDeny struct {
	mu     sync.Mutex
	denied bool
	cut    func()
}

func (o *onDeny) deny() {
	o.mu.Lock()
	o.denied = true
	cut := o.cut
	o.mu.Unlock()
	if cut != nil {
		cut()
	}
}

func (o *onDeny) set(cut func()) {
	o.mu.Lock()
	o.cut = cut
	denied := o.denied
	o.mu.Unlock()
	if denied {
		cut()
	}
}

// describeInbound fills in what the index knows of an inbound
// connection's ends, and the service it was addressed to (upstream's
// guess of the inbound service).
func (p *podProxy) describeInbound(rec *connRecord) {
	x := p.z.cfg.Index
	l := &rec.labels
	l.src, l.dst = x.WorkloadByIP(rec.src.Addr()), x.WorkloadByIP(rec.dst.Addr())
	if l.src != nil {
		l.srcName = l.src.GetName()
		if l.srcNS == "" {
			l.srcNS = l.src.GetNamespace()
		}
	}
	l.service = x.GuessInboundService(l.dst, rec.dst.Port(), "")
	rec.service = l.service
}

// hboneRefused records a connection or stream the HBONE server refused
// before the handler saw it: not TLS, a wrong or missing certificate, not
// HTTP/2, a malformed request.
func (p *podProxy) hboneRefused(r hbone.Refusal) {
	rec := &connRecord{direction: "inbound", src: unmapped(r.Remote), srcID: r.Peer, dst: unmapped(r.Local), dstPod: p.info, dstID: p.id,
		start: r.Start, hboneAddr: r.Authority,
		labels: connLabels{reporter: "destination", srcID: r.Peer, srcNS: r.Peer.Namespace, dstID: p.id, dstNS: p.info.GetNamespace(), dstName: p.info.GetName()}}
	flags := "CONNECT"
	switch r.Stage {
	case hbone.StageTLS:
		flags = "TLS_FAILURE"
	case hbone.StageHTTP2:
		flags = "H2_HANDSHAKE_FAILURE"
		rec.labels.mtls = true
	default:
		rec.labels.mtls = true
	}
	rec.labels.dst = p.z.cfg.Index.WorkloadByIP(rec.dst.Addr())
	rec.refused(p.z.cfg.AccessLog, p.z.cfg.Metrics, flags, fmt.Errorf("HBONE %s refused: %w", r.Stage, r.Err))
}

// inboundPlain handles plaintext arriving on 15006 from outside the mesh.
func (p *podProxy) inboundPlain(cc *captured) {
	c, src, orig := cc.c, cc.src, cc.orig
	rec := &connRecord{direction: "inbound", src: src, dst: orig, dstPod: p.info, dstID: p.id, start: cc.start, plaintext: true,
		labels: connLabels{reporter: "destination", dstID: p.id, dstNS: p.info.GetNamespace(), dstName: p.info.GetName()}}
	refuse := func(err error) { rec.refused(p.z.cfg.AccessLog, p.z.cfg.Metrics, "CONNECT", err) }
	if cc.origErr != nil {
		refuse(fmt.Errorf("no original destination: %w", cc.origErr))
		return
	}
	if isZtunnelPort(orig.Port()) {
		refuse(errors.New("plaintext to a ztunnel port"))
		return
	}
	if err := p.waitConfig(); err != nil {
		refuse(fmt.Errorf("held %v, then refused: %w", p.z.cfg.ConfigWait, err))
		return
	}
	p.describeInbound(rec)
	ic := &inboundConn{ac: authz.Conn{SrcIP: src.Addr(), DstIP: orig.Addr(), DstPort: orig.Port()}, src: src, dst: orig}
	ic.close = func() { c.Close() }
	d, untrack := p.admitInbound(ic)
	if !d.Allow {
		rec.denied(p.z.cfg.AccessLog, p.z.cfg.Metrics, d.Policy, d.Reason)
		return
	}
	defer untrack()
	ctx, cancel := context.WithTimeout(p.ctx, hbone.DialTimeout)
	cc.turn.wait(ctx)
	app, err := p.dialApp(ctx, src.Addr(), orig)
	cancel()
	cc.turn.done()
	if err != nil {
		refuse(err)
		return
	}
	p.relay(c, app, rec)
}

// unmapped is a socket address as a netip.AddrPort without the IPv4-in-6
// mapping.
func unmapped(a net.Addr) netip.AddrPort {
	ap, _ := netip.ParseAddrPort(a.String())
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
