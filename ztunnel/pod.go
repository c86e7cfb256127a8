package ztunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/zdsapi"

	"github.com/ambit-mesh/ambit/authz"
	"github.com/ambit-mesh/ambit/hbone"
	"github.com/ambit-mesh/ambit/identity"
	"github.com/ambit-mesh/ambit/nsnet"
	"github.com/ambit-mesh/ambit/redirect"
)

// podProxy is the proxy of one pod.
type podProxy struct {
	z        *Ztunnel
	uid      string
	info     *zdsapi.WorkloadInfo
	id       identity.SPIFFE
	netns    *nsnet.Netns // the pod's network namespace, where its sockets live
	dev, ino uint64
	ctx      context.Context
	cancel   context.CancelFunc
	ls       []net.Listener
	hsrv     *hbone.Server
	pool     *hbone.Pool
	conns    sync.WaitGroup
	stopOnce sync.Once
	lsOnce   sync.Once
	stopped  chan struct{}
	order    orderGate

	mu      sync.Mutex
	open    map[net.Conn]struct{}
	inbound map[*inboundConn]struct{} // inbound connections, re-checked on every change
}

// inboundConn is an inbound connection as the policy re-check sees it.
type inboundConn struct {
	ac       authz.Conn
	src, dst netip.AddrPort
	close    func()
}

func (z *Ztunnel) startProxy(uid string, info *zdsapi.WorkloadInfo, netns *os.File, dev, ino uint64) (*podProxy, error) {
	sa := info.GetServiceAccount()
	if sa == "" {
		sa = "default"
	}
	id := identity.SPIFFE{TrustDomain: z.cfg.TrustDomain, Namespace: info.GetNamespace(), ServiceAccount: sa}
	if err := id.Validate(); err != nil {
		return nil, fmt.Errorf("pod %s: %w", uid, err)
	}
	ns, err := nsnet.NewNetns(netns)
	if err != nil {
		return nil, fmt.Errorf("pod %s: %w", uid, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &podProxy{z: z, uid: uid, info: info, id: id, netns: ns, dev: dev, ino: ino,
		ctx: ctx, cancel: cancel,
		open: map[net.Conn]struct{}{}, inbound: map[*inboundConn]struct{}{}, stopped: make(chan struct{})}
	p.pool = &hbone.Pool{
		Logger:  z.cfg.Logger,
		DialTCP: ns.DialFunc(nsnet.SocketOptions{Mark: redirect.ZtunnelMark}, nil),
		TLSConfig: func(ctx context.Context, k hbone.Key) (*tls.Config, error) {
			if _, err := z.cfg.Certs.Get(ctx, k.Src); err != nil {
				return nil, err
			}
			return identity.ClientTLSConfig(p.certFunc(k.Src), p.bundleFunc(k.Src), k.Dst, nil), nil
		},
	}
	p.hsrv = &hbone.Server{
		TLSConfig: identity.ServerTLSConfig(p.certFunc(id), p.bundleFunc(id), z.cfg.TrustDomain, nil),
		Handler:   hbone.HandlerFunc(p.inboundHBONE),
		Logger:    z.cfg.Logger,
		OnRefused: p.hboneRefused,
	}
	if err := enableRequestMigration(ns); err != nil {
		z.cfg.Logger.Warn("tcp_migrate_req not set: a hand-off to a new ztunnel may reset queued connections", "pod", info.GetNamespace()+"/"+info.GetName(), "err", err)
	}
	opts := nsnet.SocketOptions{Mark: redirect.ZtunnelMark, ReusePort: true, Transparent: true}
	for _, port := range []int{redirect.OutboundPort, redirect.InboundPort, redirect.HBONEPort} {
		l, err := ns.Listen(ctx, fmt.Sprintf(":%d", port), opts)
		if err != nil {
			p.stop(false)
			return nil, fmt.Errorf("pod %s/%s: %w", info.GetNamespace(), info.GetName(), err)
		}
		p.ls = append(p.ls, l)
	}
	go p.serve(p.ls[0], outboundKey, p.outbound)
	go p.serve(p.ls[1], inboundKey, p.inboundPlain)
	go func() { _ = p.hsrv.Serve(p.ls[2]) }()
	// Fetch the certificate now, so the first connection does not wait.
	go func() { _, _ = z.cfg.Certs.Get(ctx, id) }()
	return p, nil
}

func (p *podProxy) certFunc(id identity.SPIFFE) identity.CertFunc {
	return func() (*tls.Certificate, error) {
		ctx, cancel := context.WithTimeout(p.ctx, 10*time.Second)
		defer cancel()
		c, err := p.z.cfg.Certs.Get(ctx, id)
		if err != nil {
			return nil, err
		}
		return c.TLS, nil
	}
}

func (p *podProxy) bundleFunc(id identity.SPIFFE) identity.BundleFunc {
	return func() *identity.Bundle {
		ctx, cancel := context.WithTimeout(p.ctx, 10*time.Second)
		defer cancel()
		c, err := p.z.cfg.Certs.Get(ctx, id)
		if err != nil {
			return nil
		}
		return c.Bundle
	}
}

// stop closes the listeners; graceful lets HBONE streams and proxied
// connections finish, otherwise they are cut.
func (p *podProxy) stop(graceful bool) {
	if !graceful {
		p.closeConns()
	}
	p.stopOnce.Do(func() {
		p.closeListeners()
		if graceful {
			ctx, cancel := context.WithTimeout(context.Background(), 25*time.Second)
			_ = p.hsrv.Shutdown(ctx)
			cancel()
			p.conns.Wait()
		} else {
			_ = p.hsrv.Close()
		}
		p.cancel()
		p.pool.Close()
		p.netns.Close()
		close(p.stopped)
	})
	<-p.stopped
}

// closeListeners stops accepting on the pod's three ports; HBONE
// connections get a GOAWAY (their open streams go on), so that peers open
// new ones, to whoever listens now.
func (p *podProxy) closeListeners() {
	p.lsOnce.Do(func() {
		for _, l := range p.ls {
			l.Close()
		}
		p.hsrv.StartDrain()
	})
}

func (p *podProxy) closeConns() {
	_ = p.hsrv.Close()
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.open {
		c.Close()
	}
}

// authorize evaluates the policies that apply to this pod for a connection.
func (p *podProxy) authorize(c authz.Conn) authz.Decision {
	w := p.z.cfg.Index.WorkloadByIP(c.DstIP)
	if w == nil {
		w = &workloadapi.Workload{Namespace: p.info.GetNamespace(), Name: p.info.GetName()}
	}
	return authz.Evaluate(p.z.cfg.Index.PoliciesFor(w), c)
}

// admitInbound registers an inbound connection for re-checks, then
// authorizes it. Registering first means no policy change can fall
// between the verdict and the registration unnoticed. The returned
// function unregisters it.
func (p *podProxy) admitInbound(ic *inboundConn) (authz.Decision, func()) {
	p.mu.Lock()
	p.inbound[ic] = struct{}{}
	p.mu.Unlock()
	untrack := func() {
		p.mu.Lock()
		delete(p.inbound, ic)
		p.mu.Unlock()
	}
	d := p.authorize(ic.ac)
	if !d.Allow {
		untrack()
	}
	return d, untrack
}

func (p *podProxy) track(c net.Conn) func() {
	p.mu.Lock()
	p.open[c] = struct{}{}
	p.mu.Unlock()
	return func() {
		p.mu.Lock()
		delete(p.open, c)
		p.mu.Unlock()
	}
}

// captured is a connection accepted on 15001 or 15006, with its original
// destination and its place in the set-up order.
type captured struct {
	c       *net.TCPConn
	src     netip.AddrPort
	orig    netip.AddrPort
	origErr error
	turn    *turn
	start   time.Time
}

// outboundKey orders set-ups per original destination (the source is the
// pod); inboundKey per client address and destination.
func outboundKey(c *captured) string { return c.orig.String() }

func inboundKey(c *captured) string { return c.src.Addr().String() + ">" + c.orig.String() }

// serve accepts captured connections. The original destination is read
// and the set-up place reserved here, in accept order; the rest runs on
// the connection's own goroutine.
func (p *podProxy) serve(l net.Listener, key func(*captured) string, handle func(*captured)) {
	for {
		c, err := l.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return
		}
		tc := c.(*net.TCPConn)
		cc := &captured{c: tc, start: time.Now()}
		cc.src, _ = netip.ParseAddrPort(c.RemoteAddr().String())
		cc.src = netip.AddrPortFrom(cc.src.Addr().Unmap(), cc.src.Port())
		cc.orig, cc.origErr = redirect.OriginalDst(tc)
		if cc.origErr == nil {
			cc.turn = p.order.reserve(key(cc))
		}
		p.conns.Add(1)
		go func() {
			defer p.conns.Done()
			defer c.Close()
			defer cc.turn.done()
			untrack := p.track(c)
			defer untrack()
			handle(cc)
		}()
	}
}

// waitConfig holds a connection until the index is ready (the first full
// state of workloads and policies has arrived), for at most ConfigWait.
// A ztunnel that just started knows no workload yet: treating every
// destination as unknown would send it in plaintext (passthrough), and
// treating "no policy" as allow would admit what a policy denies.
func (p *podProxy) waitConfig() error {
	ctx, cancel := context.WithTimeout(p.ctx, p.z.cfg.ConfigWait)
	defer cancel()
	return p.z.cfg.Index.WaitReady(ctx)
}

// dialApp connects to the app inside the pod, from the original client's
// address (IP_TRANSPARENT), so the app sees who really called.
func (p *podProxy) dialApp(ctx context.Context, srcIP netip.Addr, target netip.AddrPort) (net.Conn, error) {
	opts := nsnet.SocketOptions{Mark: redirect.ZtunnelMark}
	var local net.Addr
	if srcIP.IsValid() && !srcIP.IsLoopback() && srcIP != target.Addr() {
		opts.Transparent = true
		local = &net.TCPAddr{IP: srcIP.AsSlice()}
	}
	return p.netns.DialFunc(opts, local)(ctx, "tcp", target.String())
}
