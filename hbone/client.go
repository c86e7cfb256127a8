package hbone

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
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http2/hpack"

	"github.com/ambit-mesh/ambit/identity"
)

// Pool defaults, as upstream ztunnel's.
const (
	DefaultMaxStreamsPerConn = 100
	DefaultIdleTimeout       = 5 * time.Minute
	DialTimeout              = 10 * time.Second
)

// Key selects the connections a stream may share: streams multiplex only
// among user connections with the same source identity, expected
// destination identities and destination address. (A pool serves one
// source address: ztunnel keeps one per pod.)
type Key struct {
	Src     identity.SPIFFE
	Dst     []identity.SPIFFE
	DstAddr netip.AddrPort // the HBONE endpoint, usually podIP:15008
}

func (k Key) String() string {
	ids := make([]string, len(k.Dst))
	for i, d := range k.Dst {
		ids[i] = d.String()
	}
	return k.Src.String() + "|" + strings.Join(ids, ",") + "|" + k.DstAddr.String()
}

// Pool dials HBONE streams, reusing connections per Key: up to
// MaxStreamsPerConn streams (and no more than the server allows) share a
// connection, then another connection is opened for the key.
type Pool struct {
	// TLSConfig returns the client TLS configuration for a key: the source
	// identity's certificate and verification of the server against the
	// expected destination identities (see identity.ClientTLSConfig). The
	// pool forces TLS 1.3, ALPN h2, no SNI and no resumption on a copy, and
	// also checks the server's identity against Key.Dst when it is set.
	TLSConfig func(ctx context.Context, k Key) (*tls.Config, error)
	// DialTCP, if set, opens the TCP connection instead of a plain dialer
	// (ztunnel creates the socket inside the pod's network namespace, with
	// its mark). TCP options are applied to what it returns.
	DialTCP func(ctx context.Context, network, addr string) (net.Conn, error)
	// MaxStreamsPerConn caps streams per connection (default 100).
	MaxStreamsPerConn int
	// IdleTimeout releases connections unused this long (default 5 min).
	IdleTimeout time.Duration
	// KeepaliveInterval and KeepaliveTimeout override the PING keepalive
	// (defaults 10 s and 20 s).
	KeepaliveInterval, KeepaliveTimeout time.Duration
	Logger                              *slog.Logger

	once     sync.Once
	bufs     *buffers
	mu       sync.Mutex
	conns    map[string][]*poolConn
	dialing  map[string]*dialCall
	closed   bool
	stopReap chan struct{}
}

type poolConn struct {
	c        *conn
	key      string
	peer     identity.SPIFFE
	active   int // streams handed out and not yet closed
	lastUsed time.Time
}

type dialCall struct {
	done chan struct{}
	err  error
}

func (p *Pool) init() {
	p.once.Do(func() {
		if p.MaxStreamsPerConn <= 0 {
			p.MaxStreamsPerConn = DefaultMaxStreamsPerConn
		}
		if p.IdleTimeout <= 0 {
			p.IdleTimeout = DefaultIdleTimeout
		}
		if p.KeepaliveInterval <= 0 {
			p.KeepaliveInterval = KeepaliveInterval
		}
		if p.KeepaliveTimeout <= 0 {
			p.KeepaliveTimeout = KeepaliveTimeout
		}
		if p.Logger == nil {
			p.Logger = slog.New(slog.DiscardHandler)
		}
		p.bufs = newBuffers()
		p.conns = map[string][]*poolConn{}
		p.dialing = map[string]*dialCall{}
		p.stopReap = make(chan struct{})
		go p.reap()
	})
}

// Close closes every pooled connection; streams on them fail.
func (p *Pool) Close() {
	p.init()
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	close(p.stopReap)
	var all []*poolConn
	for _, list := range p.conns {
		all = append(all, list...)
	}
	p.conns = map[string][]*poolConn{}
	p.mu.Unlock()
	for _, pc := range all {
		pc.c.close(errors.New("hbone: pool closed"))
	}
}

// reap releases connections idle longer than IdleTimeout.
func (p *Pool) reap() {
	tick := time.NewTicker(min(p.IdleTimeout/4, 30*time.Second))
	defer tick.Stop()
	for {
		select {
		case <-p.stopReap:
			return
		case <-tick.C:
		}
		var idle []*poolConn
		p.mu.Lock()
		for _, list := range p.conns {
			for _, pc := range list {
				if pc.active == 0 && time.Since(pc.lastUsed) > p.IdleTimeout {
					idle = append(idle, pc)
				}
			}
		}
		for _, pc := range idle {
			p.removeLocked(pc)
		}
		p.mu.Unlock()
		for _, pc := range idle {
			p.Logger.Debug("HBONE connection released after idling", "key", pc.key)
			pc.c.close(nil)
		}
	}
}

func (p *Pool) removeLocked(pc *poolConn) {
	list := p.conns[pc.key]
	for i, x := range list {
		if x == pc {
			list = append(list[:i:i], list[i+1:]...)
			break
		}
	}
	if len(list) == 0 {
		delete(p.conns, pc.key)
	} else {
		p.conns[pc.key] = list
	}
}

// Dial opens a CONNECT stream to target (the :authority, "ip:port") through
// the HBONE endpoint of key, reusing a pooled connection when one has room.
// header carries forwarded and baggage; a traceparent is added when it has
// none. A status other than 200 is a *StatusError.
func (p *Pool) Dial(ctx context.Context, key Key, target string, header http.Header) (*Conn, error) {
	return p.DialEarly(ctx, key, target, header, nil)
}

// DialEarly is Dial that sends early, the first bytes of the tunnelled
// connection, as DATA right behind the CONNECT, in the same TLS record:
// the server holds them in the stream until its handler accepts, so a
// client-first protocol saves the round trip of waiting for the 200. A
// refused CONNECT discards them. When the peer's windows do not take them
// at once, they are written after the 200. An unanswered stream is tried
// again on another connection only if the server provably never
// processed it (refused by GOAWAY or REFUSED_STREAM) once early bytes
// went out with it.
func (p *Pool) DialEarly(ctx context.Context, key Key, target string, header http.Header, early []byte) (*Conn, error) {
	p.init()
	if _, err := ParseAuthority(target); err != nil {
		return nil, fmt.Errorf("hbone: CONNECT via %s: %w", key.DstAddr, err)
	}
	fields, err := requestFields(target, header)
	if err != nil {
		return nil, err
	}
	if header.Get("Traceparent") == "" {
		fields = append(fields, hpack.HeaderField{Name: "traceparent", Value: NewTraceparent()})
	}
	for attempt := 0; ; attempt++ {
		pc, err := p.get(ctx, key)
		if err != nil {
			return nil, err
		}
		s, sentEarly, err := pc.c.openStream(ctx, fields, early)
		if err != nil {
			p.release(pc)
			// No user byte has been sent, or the server never saw the
			// stream: it can be retried on another connection.
			if ctx.Err() == nil && attempt < 2 && (!sentEarly || neverProcessed(err)) {
				p.Logger.Debug("HBONE CONNECT retried", "target", target, "via", key.DstAddr, "error", err)
				continue
			}
			return nil, fmt.Errorf("hbone: CONNECT %s via %s: %w", target, key.DstAddr, err)
		}
		if s.status != http.StatusOK {
			s.Close()
			p.release(pc)
			return nil, &StatusError{Code: s.status, Reason: fmt.Sprintf("CONNECT %s via %s refused", target, key.DstAddr)}
		}
		c := &Conn{s: s, Peer: pc.peer, Header: s.respHeader, local: pc.c.nc.LocalAddr(), remote: pc.c.nc.RemoteAddr()}
		c.onClose = func() { p.release(pc) }
		if len(early) > 0 && !sentEarly {
			if _, err := c.Write(early); err != nil {
				c.Close()
				return nil, fmt.Errorf("hbone: CONNECT %s via %s: writing the first bytes: %w", target, key.DstAddr, err)
			}
		}
		return c, nil
	}
}

// neverProcessed reports whether a stream's error proves the server never
// processed it (RFC 9113 §8.7): refused by GOAWAY, or reset with
// REFUSED_STREAM.
func neverProcessed(err error) bool {
	var re *ResetError
	return errors.Is(err, errGoAwayRefused) || (errors.As(err, &re) && re.Code == uint32(errCodeRefusedStream))
}

// get returns a connection for key with a stream reserved on it.
func (p *Pool) get(ctx context.Context, key Key) (*poolConn, error) {
	k := key.String()
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return nil, errors.New("hbone: pool closed")
		}
		for _, pc := range p.conns[k] {
			if pc.active < p.MaxStreamsPerConn && pc.c.reserve() {
				pc.active++
				pc.lastUsed = time.Now()
				p.mu.Unlock()
				return pc, nil
			}
		}
		if call, ok := p.dialing[k]; ok {
			p.mu.Unlock()
			select {
			case <-call.done:
				if call.err != nil {
					return nil, call.err
				}
				continue
			case <-ctx.Done():
				return nil, fmt.Errorf("hbone: waiting for a connection to %s: %w", key.DstAddr, ctx.Err())
			}
		}
		call := &dialCall{done: make(chan struct{})}
		p.dialing[k] = call
		p.mu.Unlock()

		pc, err := p.dial(ctx, key)

		p.mu.Lock()
		delete(p.dialing, k)
		if err != nil && ctx.Err() == nil {
			call.err = err // the others would fail the same way
		}
		close(call.done)
		if err != nil {
			p.mu.Unlock()
			return nil, err
		}
		if p.closed {
			p.mu.Unlock()
			pc.c.close(nil)
			return nil, errors.New("hbone: pool closed")
		}
		pc.key = k
		pc.lastUsed = time.Now()
		p.conns[k] = append(p.conns[k], pc)
		if pc.c.reserve() {
			pc.active = 1
			p.mu.Unlock()
			return pc, nil
		}
		p.mu.Unlock()
	}
}

func (p *Pool) release(pc *poolConn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	pc.active--
	pc.lastUsed = time.Now()
}

// clientTLS pins HBONE's client profile on a copy of conf.
func clientTLS(conf *tls.Config) (*tls.Config, error) {
	if conf == nil {
		return nil, errors.New("no TLS configuration")
	}
	if conf.InsecureSkipVerify && conf.VerifyPeerCertificate == nil && conf.VerifyConnection == nil {
		return nil, errors.New("the TLS configuration verifies no server certificate")
	}
	c := conf.Clone()
	c.MinVersion, c.MaxVersion = tls.VersionTLS13, tls.VersionTLS13
	c.NextProtos = []string{"h2"}
	c.ServerName = ""
	c.ClientSessionCache = nil
	c.SessionTicketsDisabled = true
	return c, nil
}

// dial opens a new TLS + HTTP/2 connection for key.
func (p *Pool) dial(ctx context.Context, key Key) (*poolConn, error) {
	if !key.DstAddr.IsValid() {
		return nil, errors.New("hbone: no destination address")
	}
	if p.TLSConfig == nil {
		return nil, errors.New("hbone: Pool.TLSConfig is nil")
	}
	conf, err := p.TLSConfig(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("hbone: TLS for %s: %w", key.Src, err)
	}
	if conf, err = clientTLS(conf); err != nil {
		return nil, fmt.Errorf("hbone: TLS for %s: %w", key.Src, err)
	}
	dctx, cancel := context.WithTimeout(ctx, DialTimeout)
	defer cancel()
	raw, err := p.dialTCP(dctx, key)
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() && key.DstAddr.Port() == Port {
			return nil, fmt.Errorf("hbone: connecting to %s timed out (maybe a NetworkPolicy is blocking HBONE port %d): %w", key.DstAddr, Port, err)
		}
		return nil, fmt.Errorf("hbone: connecting to %s: %w", key.DstAddr, err)
	}
	setSocketOptions(raw)
	bc := &batchConn{Conn: raw, pool: &p.bufs.batches}
	tc := tls.Client(bc, conf)
	if err := tc.HandshakeContext(dctx); err != nil {
		raw.Close()
		return nil, fmt.Errorf("hbone: TLS handshake with %s: %w", key.DstAddr, err)
	}
	cs := tc.ConnectionState()
	if cs.NegotiatedProtocol != "h2" {
		tc.Close()
		return nil, fmt.Errorf("hbone: %s did not negotiate h2", key.DstAddr)
	}
	peer, err := identity.PeerIdentity(cs)
	if err != nil {
		tc.Close()
		return nil, fmt.Errorf("hbone: server %s: %w", key.DstAddr, err)
	}
	if len(key.Dst) > 0 {
		if err := identity.CheckExpected(peer, key.Dst); err != nil {
			tc.Close()
			return nil, fmt.Errorf("hbone: server %s: %w", key.DstAddr, err)
		}
	}
	pc := &poolConn{peer: peer}
	c := newConn(tc, raw, connConfig{
		maxHeaderList:    ClientMaxHeaderBytes,
		streamWindow:     StreamWindow,
		connWindow:       ConnWindow,
		maxFrame:         MaxFrameSize,
		keepalive:        p.KeepaliveInterval,
		keepaliveTimeout: p.KeepaliveTimeout,
		logger:           p.Logger.With("peer", key.DstAddr.String()),
		buffers:          p.bufs,
		onClose: func(*conn) {
			p.mu.Lock()
			p.removeLocked(pc)
			p.mu.Unlock()
		},
	})
	pc.c = c
	c.batch = bc
	if err := c.startConn(); err != nil {
		return nil, fmt.Errorf("hbone: HTTP/2 with %s: %w", key.DstAddr, err)
	}
	go c.readLoop()
	p.Logger.Debug("HBONE connection", "key", key.String())
	return pc, nil
}

func (p *Pool) dialTCP(ctx context.Context, key Key) (net.Conn, error) {
	if p.DialTCP != nil {
		return p.DialTCP(ctx, "tcp", key.DstAddr.String())
	}
	d := &net.Dialer{
		KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: tcpKeepaliveIdle, Interval: tcpKeepaliveInterval, Count: tcpKeepaliveCount},
	}
	return d.DialContext(ctx, "tcp", key.DstAddr.String())
}

// Conn is one HBONE stream, usable as a net.Conn: on the client from
// Pool.Dial, on the server from Request.Accept. Close it when done: on the
// client that returns its slot to the pool.
type Conn struct {
	s *stream
	// Peer is the identity the other end proved in the TLS handshake.
	Peer identity.SPIFFE
	// Header holds the other end's headers: on the client the 200
	// response's (for example baggage), on the server the CONNECT's.
	Header        http.Header
	local, remote net.Addr
	once          sync.Once
	onClose       func()
}

var (
	_ net.Conn      = (*Conn)(nil)
	_ io.WriterTo   = (*Conn)(nil)
	_ io.ReaderFrom = (*Conn)(nil)
)

// Read reads what the other end sent; io.EOF after its END_STREAM.
func (c *Conn) Read(b []byte) (int, error) { return c.s.Read(b) }

// Write sends b, waiting for flow-control credit as needed.
func (c *Conn) Write(b []byte) (int, error) { return c.s.Write(b) }

// WriteTo copies what the other end sends to w until it ends the stream
// (then it returns a nil error), straight from the receive buffer (io.Copy
// uses it).
func (c *Conn) WriteTo(w io.Writer) (int64, error) { return c.s.WriteTo(w) }

// ReadFrom sends what r yields until EOF, without ending the stream.
func (c *Conn) ReadFrom(r io.Reader) (int64, error) { return c.s.ReadFrom(r) }

// CloseWrite ends our direction of the stream (END_STREAM): the other end
// reads EOF (a server half-closes its upstream). Reading goes on.
func (c *Conn) CloseWrite() error { return c.s.CloseWrite() }

// Close ends the stream both ways (RST_STREAM if either side had not
// finished) and, on the client, returns its slot to the pool.
func (c *Conn) Close() error {
	c.once.Do(func() {
		c.s.Close()
		if c.onClose != nil {
			c.onClose()
		}
	})
	return nil
}

// LocalAddr is the local address of the TCP connection carrying the stream.
func (c *Conn) LocalAddr() net.Addr { return c.local }

// RemoteAddr is the other end's address of the TCP connection.
func (c *Conn) RemoteAddr() net.Addr { return c.remote }

// SetDeadline sets both deadlines.
func (c *Conn) SetDeadline(t time.Time) error {
	c.s.SetReadDeadline(t)
	return c.s.SetWriteDeadline(t)
}

// SetReadDeadline bounds reads.
func (c *Conn) SetReadDeadline(t time.Time) error { return c.s.SetReadDeadline(t) }

// SetWriteDeadline bounds waiting for flow-control credit; a write already
// handed to the connection completes with it.
func (c *Conn) SetWriteDeadline(t time.Time) error { return c.s.SetWriteDeadline(t) }
