package waypoint

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"

	"istio.io/istio/pkg/workloadapi"

	"github.com/ambit-mesh/ambit/hbone"
	"github.com/ambit-mesh/ambit/identity"
	"github.com/ambit-mesh/ambit/ztunnel"
)

// tunnel is what the waypoint knows of one HBONE stream: who sent it and
// what it is for. Every request on the stream carries it (connContext).
type tunnel struct {
	peer     identity.SPIFFE       // the sending ztunnel's client identity: the source workload
	src      netip.Addr            // the original client (Forwarded), or invalid
	target   netip.AddrPort        // the CONNECT target: a service VIP:port or a pod IP:port
	service  *workloadapi.Service  // set for a service target
	workload *workloadapi.Workload // set for a workload target
	srcWL    *workloadapi.Workload // the source workload, when known
	baggage  string
}

// bound resolves a CONNECT target to the service or workload it names,
// and checks that it uses this waypoint: a waypoint serves only what is
// bound to it.
func (w *Waypoint) bound(target hbone.Authority) (*workloadapi.Service, *workloadapi.Workload, error) {
	if !target.IsIP() {
		return nil, nil, fmt.Errorf("target %s: only IP targets are served", target)
	}
	x := w.cfg.Index
	if svc := x.ServiceByVIP(target.Addr.Addr()); svc != nil {
		if !w.isMe(svc.GetWaypoint()) {
			return nil, nil, fmt.Errorf("service %s does not use waypoint %s/%s", ztunnel.ServiceKey(svc), w.cfg.Namespace, w.cfg.Name)
		}
		return svc, nil, nil
	}
	if wl := x.WorkloadByIP(target.Addr.Addr()); wl != nil {
		if !w.isMe(wl.GetWaypoint()) {
			return nil, nil, fmt.Errorf("workload %s/%s does not use waypoint %s/%s", wl.GetNamespace(), wl.GetName(), w.cfg.Namespace, w.cfg.Name)
		}
		return nil, wl, nil
	}
	return nil, nil, fmt.Errorf("target %s is not a known service or workload", target)
}

func (w *Waypoint) isMe(gw *workloadapi.GatewayAddress) bool {
	h := gw.GetHostname()
	return h != nil && h.GetNamespace() == w.cfg.Namespace && h.GetHostname() == w.cfg.Hostname
}

// serveTunnel handles one CONNECT: checks, accepts, then hands the stream
// to the HTTP server (or relays it as TCP) and holds it until done.
func (w *Waypoint) serveTunnel(ctx context.Context, r *hbone.Request) {
	// A waypoint that just started holds tunnels until it knows the
	// workloads, routes and policies, for at most configWait: no policy
	// yet is not "allow".
	hold, cancel := context.WithTimeout(ctx, configWait)
	err := w.cfg.Index.WaitReady(hold)
	if err == nil {
		select {
		case <-w.cfg.L7.Ready():
		case <-hold.Done():
			err = errors.New("no routes and policies from the control plane yet")
		}
	}
	cancel()
	if err != nil {
		_ = r.Refuse(http.StatusServiceUnavailable, err.Error())
		return
	}
	svc, wl, err := w.bound(r.Target)
	if err != nil {
		w.cfg.Logger.Info("tunnel refused", "peer", r.Peer.String(), "target", r.Target.String(), "reason", err.Error())
		w.cfg.Metrics.tunnelRefused()
		_ = r.Refuse(http.StatusBadRequest, err.Error())
		return
	}
	t := &tunnel{peer: r.Peer, target: r.Target.Addr, service: svc, workload: wl,
		src: forwardedFor(r.Header.Get("Forwarded")), baggage: r.Header.Get("Baggage")}
	if t.src.IsValid() {
		t.srcWL = w.cfg.Index.WorkloadByIP(t.src)
	}
	c, err := r.Accept(nil)
	if err != nil {
		return
	}
	// Sniff: HTTP/2's preface or an HTTP/1 request line make it HTTP;
	// anything else, or silence (a server-first protocol), is TCP.
	br := bufio.NewReaderSize(c, 4096)
	_ = c.SetReadDeadline(time.Now().Add(w.cfg.SniffTimeout))
	head, _ := br.Peek(len(h2Preface))
	_ = c.SetReadDeadline(time.Time{})
	if !looksHTTP(head) {
		w.relayTCP(ctx, t, &bufferedConn{Conn: c, r: br})
		return
	}
	sc := &streamConn{Conn: c, r: br, t: t, done: make(chan struct{})}
	if !w.conns.push(sc) {
		return // shutting down
	}
	select {
	case <-sc.done:
	case <-ctx.Done():
	}
}

// configWait bounds how long a tunnel is held for the first configuration.
const configWait = 5 * time.Second

const h2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// looksHTTP reports whether a stream's first bytes are HTTP/2's preface
// or the start of an HTTP/1 request line (a token method, then a space).
func looksHTTP(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	if strings.HasPrefix(h2Preface, string(b)) || strings.HasPrefix(string(b), h2Preface) {
		return true
	}
	for i, c := range b {
		if c == ' ' {
			return i > 0
		}
		if c < 'A' || c > 'Z' {
			return false
		}
	}
	return len(b) < len(h2Preface) // a short method prefix: let HTTP decide
}

// forwardedFor returns the for= address of a Forwarded header, as a
// ztunnel writes it (`for="10.0.0.1:1234"`).
func forwardedFor(v string) netip.Addr {
	for _, part := range strings.Split(v, ";") {
		k, val, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok || !strings.EqualFold(k, "for") {
			continue
		}
		val = strings.Trim(val, `"`)
		if ap, err := netip.ParseAddrPort(val); err == nil {
			return ap.Addr()
		}
		if a, err := netip.ParseAddr(strings.Trim(val, "[]")); err == nil {
			return a
		}
	}
	return netip.Addr{}
}

// relayTCP relays a non-HTTP tunnel to an endpoint of its target.
func (w *Waypoint) relayTCP(ctx context.Context, t *tunnel, c net.Conn) {
	start := time.Now()
	up, dstWL, ep, err := w.up.dialTCP(ctx, t)
	rec := &record{start: start, t: t, proto: "tcp", method: "-", code: 0}
	if err != nil {
		rec.err, rec.flags = err.Error(), "UF"
		w.finish(rec)
		c.Close()
		return
	}
	rec.upstream, rec.dstWL = ep, dstWL
	var wg sync.WaitGroup
	var sent, recv int64
	wg.Add(2)
	go func() {
		defer wg.Done()
		sent, _ = io.Copy(up, c)
		closeWrite(up)
	}()
	go func() {
		defer wg.Done()
		recv, _ = io.Copy(c, up)
		closeWrite(c)
	}()
	wg.Wait()
	up.Close()
	c.Close()
	rec.reqBytes, rec.respBytes = sent, recv
	w.finish(rec)
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
}

// bufferedConn is a conn whose first bytes sit in a bufio.Reader.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (b *bufferedConn) Read(p []byte) (int, error) { return b.r.Read(p) }

// CloseWrite passes through to the stream.
func (b *bufferedConn) CloseWrite() error { closeWrite(b.Conn); return nil }

// streamConn is an accepted stream handed to the HTTP server: it carries
// its tunnel, and tells serveTunnel when the server is done with it.
type streamConn struct {
	net.Conn
	r    *bufio.Reader
	t    *tunnel
	once sync.Once
	done chan struct{}
}

func (s *streamConn) Read(p []byte) (int, error) { return s.r.Read(p) }

func (s *streamConn) Close() error {
	err := s.Conn.Close()
	s.once.Do(func() { close(s.done) })
	return err
}

type tunnelKey struct{}

// connContext puts a stream's tunnel into its requests' context.
func connContext(ctx context.Context, c net.Conn) context.Context {
	if sc, ok := c.(*streamConn); ok {
		return context.WithValue(ctx, tunnelKey{}, sc.t)
	}
	return ctx
}

func tunnelOf(ctx context.Context) *tunnel {
	t, _ := ctx.Value(tunnelKey{}).(*tunnel)
	return t
}

// chanListener feeds accepted streams to an http.Server.
type chanListener struct {
	ch     chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func newChanListener() *chanListener {
	return &chanListener{ch: make(chan net.Conn), closed: make(chan struct{})}
}

func (l *chanListener) push(c net.Conn) bool {
	select {
	case l.ch <- c:
		return true
	case <-l.closed:
		c.Close()
		return false
	}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return &net.TCPAddr{} }
