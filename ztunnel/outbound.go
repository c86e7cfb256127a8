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
	"golang.org/x/sys/unix"
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
	rt, err := p.z.resolve(rec.labels.src, orig)
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
	var early []byte
	var buf *[earlyBytes]byte
	if rt.kind == routeHBONE {
		buf, _ = p.z.early.Get().(*[earlyBytes]byte)
		if buf == nil {
			buf = new([earlyBytes]byte)
		}
		early = firstBytes(c, buf[:])
	}
	up, err := p.connect(ctx, src, rt, early)
	if buf != nil {
		p.z.early.Put(buf) // connect has written early when it returns
	}
	cc.turn.done()
	if err != nil {
		refuse(err)
		return
	}
	rec.early = int64(len(early))
	p.relay(c, up, rec)
}

// firstBytes reads, without waiting, what a client-first app already sent
// (at most one DATA frame's worth), to go out with the CONNECT: the
// request then crosses with it instead of a round trip behind it. A
// server-first protocol has sent nothing yet, and loses nothing.
func firstBytes(c *net.TCPConn, buf []byte) []byte {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil
	}
	n := 0
	_ = rc.Read(func(fd uintptr) bool {
		for {
			var rerr error
			n, rerr = unix.Read(int(fd), buf)
			if rerr != unix.EINTR {
				return true // one attempt: never wait
			}
		}
	})
	if n <= 0 {
		return nil // nothing yet, EOF or an error: the relay sees them
	}
	return buf[:n]
}

// earlyBytes bounds firstBytes: a typical first request, and below the
// smallest DATA frame every peer takes (16 KiB).
const earlyBytes = 4 << 10

// connect opens the upstream side of an outbound connection.
func (p *podProxy) connect(ctx context.Context, src netip.AddrPort, rt route, early []byte) (net.Conn, error) {
	if rt.kind != routeHBONE {
		return p.netns.DialFunc(nsnet.SocketOptions{Mark: redirect.ZtunnelMark}, nil)(ctx, "tcp", rt.addr.String())
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
	return p.pool.DialEarly(ctx, key, rt.authority, hdr, early)
}
