package ztunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sync"
	"time"

	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/zdsapi"

	"github.com/ambit-mesh/ambit/authz"
	"github.com/ambit-mesh/ambit/hbone"
	"github.com/ambit-mesh/ambit/identity"
	"github.com/ambit-mesh/ambit/identity/caclient"
	"github.com/ambit-mesh/ambit/nsnet"
	"github.com/ambit-mesh/ambit/redirect"
	"github.com/ambit-mesh/ambit/zds"
)

// CertSource gives the certificate of a workload identity (see
// caclient.Manager).
type CertSource interface {
	Get(ctx context.Context, id identity.SPIFFE) (*caclient.Cert, error)
}

// Config configures a Ztunnel.
type Config struct {
	Index       *Index
	Certs       CertSource
	TrustDomain string
	Logger      *slog.Logger
	// AccessLog receives one line per connection (default: Logger).
	AccessLog *slog.Logger
	// Metrics, if set, counts connections and bytes.
	Metrics *Metrics
	// ConfigWait bounds how long a connection is held while the index is
	// not ready or its source workload is unknown (default 5 s, as
	// upstream's wait for the source workload); then it is refused.
	ConfigWait time.Duration
}

// Ztunnel runs one proxy per enrolled pod. It implements zds.Handler.
type Ztunnel struct {
	cfg     Config
	mu      sync.Mutex
	proxies map[string]*podProxy // by pod uid
}

var _ zds.Handler = (*Ztunnel)(nil)

// New returns a Ztunnel with no pods.
func New(cfg Config) *Ztunnel {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.AccessLog == nil {
		cfg.AccessLog = cfg.Logger
	}
	if cfg.TrustDomain == "" {
		cfg.TrustDomain = identity.DefaultTrustDomain
	}
	if cfg.ConfigWait <= 0 {
		cfg.ConfigWait = 5 * time.Second
	}
	z := &Ztunnel{cfg: cfg, proxies: map[string]*podProxy{}}
	if cfg.Index != nil {
		cfg.Index.mu.Lock()
		cfg.Index.onChange = z.recheck
		cfg.Index.mu.Unlock()
	}
	return z
}

// recheck re-evaluates every open inbound connection after the index
// changed and closes those now denied (as upstream's policy watcher). It
// runs on workload changes too: selector policies, and STRICT peer
// authentication with port exceptions, reach a workload through its own
// resource's policy list.
func (z *Ztunnel) recheck() {
	z.mu.Lock()
	ps := make([]*podProxy, 0, len(z.proxies))
	for _, p := range z.proxies {
		ps = append(ps, p)
	}
	z.mu.Unlock()
	for _, p := range ps {
		p.mu.Lock()
		var denied []*inboundConn
		for ic := range p.inbound {
			if d := p.authorize(ic.ac); !d.Allow {
				denied = append(denied, ic)
				attrs := []any{"direction", "inbound", "src.addr", ic.src.String(), "dst.addr", ic.dst.String(),
					"dst.workload", p.info.GetName(), "dst.namespace", p.info.GetNamespace(), "policy", d.Policy, "reason", d.Reason}
				if ic.ac.Src != nil {
					attrs = append(attrs, "src.identity", ic.ac.Src.String())
				}
				z.cfg.AccessLog.Info("connection closed by policy", attrs...)
			}
		}
		p.mu.Unlock()
		for _, ic := range denied {
			ic.close()
		}
	}
}

// AddWorkload starts the proxy of a pod inside its network namespace. A
// pod re-sent with the same namespace keeps its running proxy.
func (z *Ztunnel) AddWorkload(ctx context.Context, uid string, info *zdsapi.WorkloadInfo, netns *os.File) error {
	dev, ino, err := zds.NetnsID(netns)
	if err != nil {
		netns.Close()
		return fmt.Errorf("pod %s: netns: %w", uid, err)
	}
	z.mu.Lock()
	old := z.proxies[uid]
	z.mu.Unlock()
	if old != nil {
		if old.dev == dev && old.ino == ino {
			netns.Close()
			return nil
		}
		old.stop(false)
	}
	p, err := z.startProxy(uid, info, netns, dev, ino)
	if err != nil {
		netns.Close()
		return err
	}
	z.mu.Lock()
	z.proxies[uid] = p
	z.mu.Unlock()
	z.cfg.Logger.Info("pod proxy started", "uid", uid, "pod", info.GetNamespace()+"/"+info.GetName(), "identity", p.id.String())
	return nil
}

// DelWorkload stops a pod's proxy at once.
func (z *Ztunnel) DelWorkload(ctx context.Context, uid string) error {
	z.mu.Lock()
	p := z.proxies[uid]
	delete(z.proxies, uid)
	z.mu.Unlock()
	if p != nil {
		p.stop(false)
		z.cfg.Logger.Info("pod proxy stopped", "uid", uid, "pod", p.info.GetNamespace()+"/"+p.info.GetName())
	}
	return nil
}

// Reconcile stops every proxy whose pod is not in keep.
func (z *Ztunnel) Reconcile(ctx context.Context, keep map[string]bool) error {
	z.mu.Lock()
	var gone []string
	for uid := range z.proxies {
		if !keep[uid] {
			gone = append(gone, uid)
		}
	}
	z.mu.Unlock()
	for _, uid := range gone {
		_ = z.DelWorkload(ctx, uid)
	}
	return nil
}

// PodInfo describes a pod ztunnel serves.
type PodInfo struct {
	UID, Namespace, Name, Identity string
}

// Pods lists the pods with running proxies.
func (z *Ztunnel) Pods() []PodInfo {
	z.mu.Lock()
	defer z.mu.Unlock()
	var out []PodInfo
	for uid, p := range z.proxies {
		out = append(out, PodInfo{UID: uid, Namespace: p.info.GetNamespace(), Name: p.info.GetName(), Identity: p.id.String()})
	}
	return out
}

// Drain stops every proxy: listeners close at once (if Handoff has not
// closed them already), open connections get until ctx is done.
func (z *Ztunnel) Drain(ctx context.Context) {
	z.mu.Lock()
	ps := make([]*podProxy, 0, len(z.proxies))
	for _, p := range z.proxies {
		ps = append(ps, p)
	}
	z.proxies = map[string]*podProxy{}
	z.mu.Unlock()
	var wg sync.WaitGroup
	for _, p := range ps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			done := make(chan struct{})
			go func() { p.stop(true); close(done) }()
			select {
			case <-done:
			case <-ctx.Done():
				p.stop(false)
			}
		}()
	}
	wg.Wait()
}

// podProxy is the proxy of one pod.
type podProxy struct {
	z        *Ztunnel
	uid      string
	info     *zdsapi.WorkloadInfo
	id       identity.SPIFFE
	netns    *os.File
	dev, ino uint64
	path     string // /proc/self/fd/N of netns
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
	ctx, cancel := context.WithCancel(context.Background())
	p := &podProxy{z: z, uid: uid, info: info, id: id, netns: netns, dev: dev, ino: ino,
		path: fmt.Sprintf("/proc/self/fd/%d", netns.Fd()), ctx: ctx, cancel: cancel,
		open: map[net.Conn]struct{}{}, inbound: map[*inboundConn]struct{}{}, stopped: make(chan struct{})}
	p.pool = &hbone.Pool{
		Logger:  z.cfg.Logger,
		DialTCP: nsnet.DialFunc(p.path, nsnet.SocketOptions{Mark: redirect.ZtunnelMark}, nil),
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
	if err := enableRequestMigration(p.path); err != nil {
		z.cfg.Logger.Warn("tcp_migrate_req not set: a hand-off to a new ztunnel may reset queued connections", "pod", info.GetNamespace()+"/"+info.GetName(), "err", err)
	}
	opts := nsnet.SocketOptions{Mark: redirect.ZtunnelMark, ReusePort: true, Transparent: true}
	for _, port := range []int{redirect.OutboundPort, redirect.InboundPort, redirect.HBONEPort} {
		l, err := nsnet.Listen(ctx, p.path, fmt.Sprintf(":%d", port), opts)
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
	return authz.Evaluate(authz.Select(p.z.cfg.Index.Policies(), w), c)
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
func inboundKey(c *captured) string  { return c.src.Addr().String() + ">" + c.orig.String() }

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

// route is where an outbound connection goes.
type route struct {
	kind      string // "hbone", "tcp" or "passthrough"
	addr      netip.AddrPort
	authority string
	expect    identity.SPIFFE
	dst       *workloadapi.Workload
	service   *workloadapi.Service
}

// resolve decides where a connection to orig goes (facts §5.6): a service
// VIP to one of its healthy endpoints (port mapped), HBONE to enrolled
// endpoints, plain TCP to others, passthrough to unknown addresses.
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
		return route{kind: "passthrough", addr: orig}, nil
	}
	ip, ok := WorkloadIP(ep.w)
	if !ok {
		return route{}, fmt.Errorf("workload %s has no address", ep.w.GetUid())
	}
	target := netip.AddrPortFrom(ip, ep.port)
	if ep.w.GetTunnelProtocol() == workloadapi.TunnelProtocol_HBONE {
		return route{kind: "hbone", addr: netip.AddrPortFrom(ip, hbone.Port), authority: target.String(), expect: Identity(ep.w), dst: ep.w, service: svc}, nil
	}
	return route{kind: "tcp", addr: target, dst: ep.w, service: svc}, nil
}

func isZtunnelPort(p uint16) bool {
	return p == redirect.OutboundPort || p == redirect.InboundPort || p == redirect.HBONEPort
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

// outbound handles a connection the pod's app opened (captured on 15001).
func (p *podProxy) outbound(cc *captured) {
	c, src, orig := cc.c, cc.src, cc.orig
	log := accessLog{direction: "outbound", src: src, srcID: p.id, srcPod: p.info, dst: orig, start: cc.start}
	ml := connLabels{reporter: "source", srcID: p.id, srcNS: p.info.GetNamespace(), srcName: p.info.GetName(), responseFlags: "CONNECT"}
	refuse := func(err error) {
		log.fail(p.z.cfg.AccessLog, err)
		p.z.cfg.Metrics.fail(ml)
	}
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
	ml.src = p.z.cfg.Index.WaitWorkloadByIP(wctx, src.Addr())
	wcancel()
	if ml.src == nil {
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
		refuse(err)
		return
	}
	ml.responseFlags = ""
	log.route = rt
	ml.dst, ml.service, ml.mtls = rt.dst, rt.service, rt.kind == "hbone"
	if rt.dst != nil {
		ml.dstNS, ml.dstName = rt.dst.GetNamespace(), rt.dst.GetName()
		if ml.mtls {
			ml.dstID = rt.expect
		}
	}
	var up net.Conn
	switch rt.kind {
	case "hbone":
		host := ""
		if rt.service != nil {
			host = rt.service.GetHostname()
		}
		hdr := http.Header{}
		hdr.Set("Traceparent", hbone.NewTraceparent())
		hdr.Set("Forwarded", hbone.Forwarded(src, host))
		hdr.Set("Baggage", hbone.Baggage(hbone.BaggageInfo{Namespace: p.info.GetNamespace(), WorkloadType: "pod", WorkloadName: p.info.GetName()}))
		// The socket is created in the pod's netns, so its source is the
		// pod's own address; SrcIP still keys the pool per source.
		key := hbone.Key{Src: p.id, Dst: []identity.SPIFFE{rt.expect}, DstAddr: rt.addr}
		up, err = p.pool.Dial(ctx, key, rt.authority, hdr)
	default:
		up, err = nsnet.DialFunc(p.path, nsnet.SocketOptions{Mark: redirect.ZtunnelMark}, nil)(ctx, "tcp", rt.addr.String())
	}
	cc.turn.done()
	p.relay(c, up, err, &log, ml)
}

// relay finishes a captured connection: on a dial error it logs and
// counts the failure; otherwise it copies both ways, then logs and counts.
func (p *podProxy) relay(c, up net.Conn, err error, log *accessLog, ml connLabels) {
	if err != nil {
		log.fail(p.z.cfg.AccessLog, err)
		ml.responseFlags = "CONNECT"
		p.z.cfg.Metrics.fail(ml)
		return
	}
	defer up.Close()
	untrack := p.track(up)
	defer untrack()
	closed := p.z.cfg.Metrics.open(ml)
	log.sent, log.recv = pipe(c, up)
	closed(log.recv, log.sent)
	log.done(p.z.cfg.AccessLog)
}

// inboundHBONE authorizes an HBONE stream, connects it to the pod's app
// and relays it (after the HBONE server's own checks of method, authority
// and client identity). Every refusal leaves one access-log line and one
// failed-connection count.
func (p *podProxy) inboundHBONE(ctx context.Context, r *hbone.Request) {
	start := time.Now()
	src, _ := netip.ParseAddrPort(r.RemoteAddr.String())
	src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
	peer := r.Peer
	log := accessLog{direction: "inbound", src: src, srcID: peer, dstPod: p.info, dstID: p.id, start: start,
		dst: netip.AddrPortFrom(r.Target.Addr.Addr().Unmap(), r.Target.Port), hboneAddr: r.Target.String()}
	ml := connLabels{reporter: "destination", srcID: peer, srcNS: peer.Namespace, dstID: p.id, dstNS: p.info.GetNamespace(), dstName: p.info.GetName(), mtls: true}
	refuse := func(code int, flags string, err error) {
		ml.responseFlags = flags
		log.fail(p.z.cfg.AccessLog, err)
		p.z.cfg.Metrics.fail(ml)
		_ = r.Refuse(code, err.Error())
	}
	if !r.Target.IsIP() {
		refuse(http.StatusBadRequest, "CONNECT", errors.New("hostname targets are not supported here"))
		return
	}
	local, ok := r.LocalAddr.(*net.TCPAddr)
	if !ok || local.AddrPort().Addr().Unmap() != r.Target.Addr.Addr().Unmap() {
		refuse(http.StatusBadRequest, "CONNECT", fmt.Errorf("target %s is not this pod (%v)", r.Target, r.LocalAddr))
		return
	}
	if isZtunnelPort(r.Target.Port) {
		refuse(http.StatusServiceUnavailable, "CONNECT", fmt.Errorf("port %d is ztunnel's", r.Target.Port))
		return
	}
	if err := p.waitConfig(); err != nil {
		refuse(http.StatusServiceUnavailable, "CONNECT", fmt.Errorf("held %v, then refused: %w", p.z.cfg.ConfigWait, err))
		return
	}
	x := p.z.cfg.Index
	ml.src, ml.dst = x.WorkloadByIP(src.Addr()), x.WorkloadByIP(log.dst.Addr())
	if ml.src != nil {
		ml.srcName = ml.src.GetName()
	}
	ml.service = x.GuessInboundService(ml.dst, r.Target.Port, "")
	log.service = ml.service
	ic := &inboundConn{ac: authz.Conn{Src: &peer, SrcIP: src.Addr(), DstIP: log.dst.Addr(), DstPort: r.Target.Port}, src: src, dst: log.dst}
	var closed sync.Once
	done := make(chan struct{})
	ic.close = func() { closed.Do(func() { close(done) }) }
	d, untrack := p.admitInbound(ic)
	if !d.Allow {
		p.z.cfg.AccessLog.Info("connection denied", "direction", "inbound", "src.addr", src.String(), "src.identity", peer.String(),
			"dst.addr", r.Target.String(), "dst.workload", p.info.GetName(), "dst.namespace", p.info.GetNamespace(), "policy", d.Policy, "reason", d.Reason)
		ml.responseFlags = "DENY"
		p.z.cfg.Metrics.fail(ml)
		_ = r.Refuse(http.StatusUnauthorized, d.Reason)
		return
	}
	up, err := p.dialApp(ctx, src.Addr(), r.Target.Addr)
	if err != nil {
		untrack()
		refuse(http.StatusServiceUnavailable, "CONNECT", fmt.Errorf("connecting to the application: %w", err))
		return
	}
	untrackConn := p.track(up)
	closedMetric := p.z.cfg.Metrics.open(ml)
	finish := func(fromClient, toClient int64) {
		up.Close()
		ic.close()
		untrack()
		untrackConn()
		// Bytes as seen from the client: what it sent reached the app.
		log.sent, log.recv = fromClient, toClient
		// Metrics count as the plaintext path does: sent is app to client.
		closedMetric(toClient, fromClient)
		log.done(p.z.cfg.AccessLog)
	}
	hc, err := r.Accept(nil)
	if err != nil {
		finish(0, 0) // the stream is gone already
		return
	}
	// A re-check that denies the connection resets the stream and closes
	// the app side; a reset of the stream (or the loss of its HBONE
	// connection) closes the app side.
	go func() {
		select {
		case <-done:
			hc.Close()
			up.Close()
		case <-ctx.Done():
			up.Close()
		case <-p.ctx.Done():
		}
	}()
	finish(pipe(hc, &appConn{Conn: up, stream: hc}))
}

// hboneRefused records a connection or stream the HBONE server refused
// before the handler saw it: not TLS, a wrong or missing certificate, not
// HTTP/2, a malformed request.
func (p *podProxy) hboneRefused(r hbone.Refusal) {
	src, _ := netip.ParseAddrPort(r.Remote.String())
	dst, _ := netip.ParseAddrPort(r.Local.String())
	log := accessLog{direction: "inbound", src: netip.AddrPortFrom(src.Addr().Unmap(), src.Port()), srcID: r.Peer,
		dst: netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port()), dstPod: p.info, dstID: p.id, start: r.Start, hboneAddr: r.Authority}
	ml := connLabels{reporter: "destination", srcID: r.Peer, srcNS: r.Peer.Namespace, dstID: p.id, dstNS: p.info.GetNamespace(), dstName: p.info.GetName()}
	switch r.Stage {
	case hbone.StageTLS:
		ml.responseFlags = "TLS_FAILURE"
	case hbone.StageHTTP2:
		ml.responseFlags = "H2_HANDSHAKE_FAILURE"
		ml.mtls = true
	default:
		ml.responseFlags = "CONNECT"
		ml.mtls = true
	}
	ml.dst = p.z.cfg.Index.WorkloadByIP(log.dst.Addr())
	log.fail(p.z.cfg.AccessLog, fmt.Errorf("HBONE %s refused: %w", r.Stage, r.Err))
	p.z.cfg.Metrics.fail(ml)
}

// inboundPlain handles plaintext arriving on 15006 from outside the mesh.
func (p *podProxy) inboundPlain(cc *captured) {
	c, src, orig := cc.c, cc.src, cc.orig
	log := accessLog{direction: "inbound", src: src, dst: orig, dstPod: p.info, dstID: p.id, start: cc.start, plaintext: true}
	ml := connLabels{reporter: "destination", dstID: p.id, dstNS: p.info.GetNamespace(), dstName: p.info.GetName(), responseFlags: "CONNECT"}
	refuse := func(err error) {
		log.fail(p.z.cfg.AccessLog, err)
		p.z.cfg.Metrics.fail(ml)
	}
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
	x := p.z.cfg.Index
	ml.src, ml.dst = x.WorkloadByIP(src.Addr()), x.WorkloadByIP(orig.Addr())
	if ml.src != nil {
		ml.srcNS, ml.srcName = ml.src.GetNamespace(), ml.src.GetName()
	}
	ml.service = x.GuessInboundService(ml.dst, orig.Port(), "")
	log.service = ml.service
	ic := &inboundConn{ac: authz.Conn{SrcIP: src.Addr(), DstIP: orig.Addr(), DstPort: orig.Port()}, src: src, dst: orig}
	ic.close = func() { c.Close() }
	d, untrack := p.admitInbound(ic)
	if !d.Allow {
		p.z.cfg.AccessLog.Info("connection denied", "direction", "inbound", "src.addr", src.String(), "dst.addr", orig.String(),
			"dst.workload", p.info.GetName(), "dst.namespace", p.info.GetNamespace(), "policy", d.Policy, "reason", d.Reason)
		ml.responseFlags = "DENY"
		p.z.cfg.Metrics.fail(ml)
		return
	}
	defer untrack()
	ml.responseFlags = ""
	ctx, cancel := context.WithTimeout(p.ctx, hbone.DialTimeout)
	cc.turn.wait(ctx)
	up, err := p.dialApp(ctx, src.Addr(), orig)
	cancel()
	cc.turn.done()
	if err != nil {
		ml.responseFlags = "CONNECT"
	}
	p.relay(c, up, err, &log, ml)
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
	return nsnet.DialFunc(p.path, opts, local)(ctx, "tcp", target.String())
}

// pipe copies both ways with half-close and returns the bytes a->b and b->a.
func pipe(a, b net.Conn) (aToB, bToA int64) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		aToB, _ = io.CopyBuffer(b, a, make([]byte, 32<<10))
		closeWrite(b)
	}()
	bToA, _ = io.CopyBuffer(a, b, make([]byte, 32<<10))
	closeWrite(a)
	wg.Wait()
	return aToB, bToA
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	} else {
		c.Close()
	}
}

// appConn is the app side of an inbound HBONE connection: an error
// reading from the app (a reset, not its EOF) resets the stream, so that
// the client sees the abort rather than an orderly end.
type appConn struct {
	net.Conn
	stream net.Conn
}

func (c *appConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if err != nil && err != io.EOF {
		c.stream.Close()
	}
	return n, err
}

func (c *appConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// accessLog is the record of one connection.
type accessLog struct {
	direction  string
	src        netip.AddrPort
	srcID      identity.SPIFFE
	srcPod     *zdsapi.WorkloadInfo
	dst        netip.AddrPort
	dstID      identity.SPIFFE
	dstPod     *zdsapi.WorkloadInfo
	hboneAddr  string               // inbound: the CONNECT target
	service    *workloadapi.Service // inbound: the service inferred
	route      route
	start      time.Time
	sent, recv int64 // client to destination, destination to client
	plaintext  bool
}

func (a *accessLog) attrs() []any {
	attrs := []any{"direction", a.direction, "src.addr", a.src.String()}
	if a.srcPod != nil {
		attrs = append(attrs, "src.workload", a.srcPod.GetName(), "src.namespace", a.srcPod.GetNamespace())
	}
	if !a.srcID.IsZero() && !a.plaintext {
		attrs = append(attrs, "src.identity", a.srcID.String())
	}
	switch a.route.kind {
	case "hbone":
		attrs = append(attrs, "dst.addr", a.route.addr.String(), "dst.hbone_addr", a.route.authority)
	case "":
		attrs = append(attrs, "dst.addr", a.dst.String())
		if a.hboneAddr != "" {
			attrs = append(attrs, "dst.hbone_addr", a.hboneAddr)
		}
	default:
		attrs = append(attrs, "dst.addr", a.route.addr.String())
	}
	if a.route.service != nil {
		attrs = append(attrs, "dst.service", a.route.service.GetHostname())
	} else if a.service != nil {
		attrs = append(attrs, "dst.service", a.service.GetHostname())
	}
	if w := a.route.dst; w != nil {
		attrs = append(attrs, "dst.workload", w.GetName(), "dst.namespace", w.GetNamespace())
		if a.route.kind == "hbone" {
			attrs = append(attrs, "dst.identity", Identity(w).String())
		}
	}
	if a.dstPod != nil {
		attrs = append(attrs, "dst.workload", a.dstPod.GetName(), "dst.namespace", a.dstPod.GetNamespace())
		if !a.dstID.IsZero() && !a.plaintext {
			attrs = append(attrs, "dst.identity", a.dstID.String())
		}
	}
	if a.route.kind != "" {
		attrs = append(attrs, "route", a.route.kind)
	}
	return attrs
}

func (a *accessLog) done(l *slog.Logger) {
	attrs := append(a.attrs(), "bytes_sent", a.sent, "bytes_recv", a.recv, "duration", time.Since(a.start).Round(time.Millisecond).String())
	l.Info("connection complete", attrs...)
}

func (a *accessLog) fail(l *slog.Logger, err error) {
	l.Error("connection complete", append(a.attrs(), "error", err.Error())...)
}
