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
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/net/http2/hpack"
	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/identity"
)

// HTTP/2 settings, as upstream ztunnel sets them.
const (
	StreamWindow         = 4 << 20
	ConnWindow           = 16 << 20
	MaxFrameSize         = 1 << 20
	ServerMaxHeaderBytes = 64 << 10
	ClientMaxHeaderBytes = 16 << 10
	ServerMaxStreams     = 200
	KeepaliveInterval    = 10 * time.Second
	KeepaliveTimeout     = 20 * time.Second
	// HandshakeTimeout bounds the TLS handshake and the HTTP/2 preface of
	// an accepted connection.
	HandshakeTimeout = 10 * time.Second
)

// TCP keepalive as ztunnel sets it on every HBONE socket.
const (
	tcpKeepaliveIdle     = 180 * time.Second
	tcpKeepaliveInterval = 180 * time.Second
	tcpKeepaliveCount    = 9
)

// Request is an HBONE CONNECT that passed the server's own checks, handed
// to the Handler. The handler answers it once, with Accept or Refuse.
type Request struct {
	Target     Authority
	Peer       identity.SPIFFE // from the client certificate
	LocalAddr  net.Addr        // where the TCP connection arrived
	RemoteAddr net.Addr
	Header     http.Header // forwarded, baggage, traceparent, ...

	c         *conn
	st        *stream
	authority string // as sent, for logs
	answered  atomic.Bool
}

// ErrAnswered is returned by Request.Accept and Request.Refuse when the
// request was already answered.
var ErrAnswered = errors.New("hbone: CONNECT already answered")

// Accept answers the CONNECT with 200 and the headers of hdr (nil for none;
// for example a baggage header describing the destination workload), and
// hands the stream to the caller as a *Conn: Read yields what the client
// sends, then io.EOF at its END_STREAM; Write sends; CloseWrite sends
// END_STREAM (the client reads EOF and may go on sending); Close resets the
// stream unless both directions had finished; deadlines bound reads and
// the wait for flow-control credit. The stream is the handler's until
// ServeHBONE returns; the server then closes it. Accept fails if the
// request was answered already, or if the stream is gone (reset by the
// client, or its connection closed).
func (r *Request) Accept(hdr http.Header) (*Conn, error) {
	if !r.answered.CompareAndSwap(false, true) {
		return nil, ErrAnswered
	}
	if err := r.c.writeResponse(r.st, responseFields(http.StatusOK, hdr), false); err != nil {
		return nil, fmt.Errorf("hbone: accepting CONNECT %s: %w", r.authority, err)
	}
	return &Conn{s: r.st, Peer: r.Peer, Header: r.Header, local: r.LocalAddr, remote: r.RemoteAddr}, nil
}

// Refuse answers the CONNECT with code and ends the stream: 401 for a
// policy denial, 400 for a target that is not served here, 503 for an
// unknown workload or a destination that cannot be reached. Any other code
// is sent as 503. The reason is logged (at debug level), not sent. The
// server does not report the handler's refusals to Server.OnRefused: the
// handler reports its own.
func (r *Request) Refuse(code int, reason string) error {
	if !r.answered.CompareAndSwap(false, true) {
		return ErrAnswered
	}
	switch code {
	case http.StatusBadRequest, http.StatusUnauthorized, http.StatusServiceUnavailable:
	default:
		code = http.StatusServiceUnavailable
	}
	if err := r.c.refuseStream(r.st, code, reason, r.authority, r.Peer); err != nil {
		return fmt.Errorf("hbone: refusing CONNECT %s: %w", r.authority, err)
	}
	return nil
}

// Stages at which the server refuses a connection or stream on its own,
// before the handler sees a request.
const (
	StageTLS     = "tls"     // not TLS, or the handshake failed (no, wrong or foreign certificate)
	StageHTTP2   = "http2"   // TLS without h2, TLS < 1.3, or no HTTP/2 preface
	StageRequest = "request" // a stream that is not a valid CONNECT
)

// Refusal describes a connection or stream the server refused on its own.
type Refusal struct {
	Stage         string
	Local, Remote net.Addr
	Peer          identity.SPIFFE // zero before the TLS handshake completed
	Authority     string          // StageRequest only, as sent
	Code          int             // StageRequest only: the status answered (0 for a reset)
	Err           error
	Start         time.Time // when the connection (or stream) arrived
}

// StatusError is the refusal of a CONNECT, with the HTTP status the
// client got (Pool.Dial returns it for any status other than 200).
type StatusError struct {
	Code   int
	Reason string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("HBONE %d %s: %s", e.Code, http.StatusText(e.Code), e.Reason)
}

// Handler serves a CONNECT that passed the server's checks (method,
// authority, client identity), in the manner of net/http: it authorizes
// the request and answers it with Request.Accept or Request.Refuse; after
// accepting, it relays the stream (to the destination application, say)
// and returns when it is done with it. A handler that returns without
// answering gets a 503; when it returns, the server closes the stream
// (resetting it if either direction had not finished). ctx ends when the
// stream is reset, when its connection closes, and when ServeHBONE
// returns.
type Handler interface {
	ServeHBONE(ctx context.Context, r *Request)
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(ctx context.Context, r *Request)

// ServeHBONE implements Handler.
func (f HandlerFunc) ServeHBONE(ctx context.Context, r *Request) { f(ctx, r) }

// Server serves HBONE on listeners. Set its fields before the first Serve.
type Server struct {
	// TLSConfig must require and verify client certificates (see
	// identity.ServerTLSConfig). The server forces TLS 1.3, ALPN h2 and no
	// session tickets on a copy of it.
	TLSConfig *tls.Config
	Handler   Handler
	Logger    *slog.Logger
	// OnRefused, if set, is told of every connection and stream the
	// server refuses before the handler sees it, so that the caller can
	// log and count it. (Refusals by the handler are the handler's to
	// report.) It must not block.
	OnRefused func(Refusal)
	// MaxStreams per connection (default ServerMaxStreams).
	MaxStreams int
	// KeepaliveInterval and KeepaliveTimeout override the PING keepalive
	// (defaults 10 s and 20 s).
	KeepaliveInterval, KeepaliveTimeout time.Duration

	once    sync.Once
	initErr error
	tlsConf *tls.Config
	bufs    *buffers

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{}
	pending   map[net.Conn]struct{} // accepted, not yet speaking HTTP/2
	closing   bool
	draining  bool          // StartDrain: connections still in their handshake are served, then drained
	idle      chan struct{} // closed and replaced when the last connection ends
}

// ErrServerClosed is returned by Serve after Shutdown or Close.
var ErrServerClosed = errors.New("hbone: server closed")

func (s *Server) init() {
	s.once.Do(func() {
		if s.Logger == nil {
			s.Logger = slog.New(slog.DiscardHandler)
		}
		if s.MaxStreams <= 0 {
			s.MaxStreams = ServerMaxStreams
		}
		if s.KeepaliveInterval <= 0 {
			s.KeepaliveInterval = KeepaliveInterval
		}
		if s.KeepaliveTimeout <= 0 {
			s.KeepaliveTimeout = KeepaliveTimeout
		}
		s.bufs = newBuffers()
		s.listeners = map[net.Listener]struct{}{}
		s.conns = map[*conn]struct{}{}
		s.pending = map[net.Conn]struct{}{}
		s.idle = make(chan struct{})
		s.tlsConf, s.initErr = serverTLS(s.TLSConfig)
		if s.Handler == nil && s.initErr == nil {
			s.initErr = errors.New("hbone: Server.Handler is nil")
		}
	})
}

// serverTLS checks the caller's configuration and pins HBONE's profile.
func serverTLS(conf *tls.Config) (*tls.Config, error) {
	if conf == nil {
		return nil, errors.New("hbone: Server.TLSConfig is nil")
	}
	switch conf.ClientAuth {
	case tls.RequireAndVerifyClientCert:
	case tls.RequireAnyClientCert:
		if conf.VerifyPeerCertificate == nil && conf.VerifyConnection == nil {
			return nil, errors.New("hbone: Server.TLSConfig takes any client certificate but verifies none")
		}
	default:
		return nil, fmt.Errorf("hbone: Server.TLSConfig must require client certificates (ClientAuth is %v)", conf.ClientAuth)
	}
	if conf.Certificates == nil && conf.GetCertificate == nil && conf.GetConfigForClient == nil {
		return nil, errors.New("hbone: Server.TLSConfig has no certificate")
	}
	c := conf.Clone()
	c.MinVersion, c.MaxVersion = tls.VersionTLS13, tls.VersionTLS13
	c.NextProtos = []string{"h2"}
	c.SessionTicketsDisabled = true
	return c, nil
}

// Serve accepts HBONE connections on l until Shutdown or Close, then
// returns ErrServerClosed. It closes l when it returns.
func (s *Server) Serve(l net.Listener) error {
	s.init()
	if s.initErr != nil {
		l.Close()
		return s.initErr
	}
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		l.Close()
		return ErrServerClosed
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
		l.Close()
	}()
	var backoff time.Duration
	for {
		nc, err := l.Accept()
		if err != nil {
			s.mu.Lock()
			closing := s.closing || s.draining
			s.mu.Unlock()
			if closing {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) || errors.Is(err, syscall.ECONNABORTED) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.Logger.Warn("HBONE accept failed; retrying", "listener", l.Addr(), "error", err, "backoff", backoff)
				time.Sleep(backoff)
				continue
			}
			return fmt.Errorf("hbone: accepting on %v: %w", l.Addr(), err)
		}
		backoff = 0
		s.mu.Lock()
		if s.closing {
			s.mu.Unlock()
			nc.Close()
			return ErrServerClosed
		}
		s.pending[nc] = struct{}{}
		s.mu.Unlock()
		go s.serveConn(nc)
	}
}

// setSocketOptions applies ztunnel's TCP options to an HBONE socket.
func setSocketOptions(nc net.Conn) {
	tc, ok := nc.(*net.TCPConn)
	if !ok {
		return
	}
	_ = tc.SetNoDelay(true)
	_ = tc.SetKeepAliveConfig(net.KeepAliveConfig{Enable: true, Idle: tcpKeepaliveIdle, Interval: tcpKeepaliveInterval, Count: tcpKeepaliveCount})
	if rc, err := tc.SyscallConn(); err == nil {
		_ = rc.Control(func(fd uintptr) { _ = setUserTimeout(fd) })
	}
}

// setUserTimeout sets TCP_USER_TIMEOUT to idle + interval × probes.
func setUserTimeout(fd uintptr) error {
	ms := int((tcpKeepaliveIdle + tcpKeepaliveInterval*tcpKeepaliveCount) / time.Millisecond)
	return unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, ms)
}

func (s *Server) forgetPending(nc net.Conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.pending, nc)
	s.signalIdleLocked()
}

func (s *Server) forget(c *conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.conns, c)
	s.signalIdleLocked()
}

// signalIdleLocked wakes Shutdown when the last connection is gone.
func (s *Server) signalIdleLocked() {
	if len(s.conns) == 0 && len(s.pending) == 0 {
		close(s.idle)
		s.idle = make(chan struct{})
	}
}

// serveConn runs the TLS handshake, checks the HBONE profile and the
// HTTP/2 preface, then serves streams until the connection ends.
func (s *Server) serveConn(nc net.Conn) {
	start := time.Now()
	setSocketOptions(nc)
	log := s.Logger.With("peer", nc.RemoteAddr().String())
	refused := func(stage string, peer identity.SPIFFE, err error) {
		if s.OnRefused != nil {
			s.OnRefused(Refusal{Stage: stage, Local: nc.LocalAddr(), Remote: nc.RemoteAddr(), Peer: peer, Err: err, Start: start})
		}
	}
	bc := &batchConn{Conn: nc, pool: &s.bufs.batches}
	tc := tls.Server(bc, s.tlsConf)
	_ = nc.SetDeadline(time.Now().Add(HandshakeTimeout))
	ctx, cancel := context.WithTimeout(context.Background(), HandshakeTimeout)
	err := tc.HandshakeContext(ctx)
	cancel()
	if err != nil {
		log.Debug("HBONE TLS handshake failed", "error", err)
		refused(StageTLS, identity.SPIFFE{}, fmt.Errorf("TLS handshake: %w", err))
		tc.Close()
		s.forgetPending(nc)
		return
	}
	cs := tc.ConnectionState()
	if cs.NegotiatedProtocol != "h2" || cs.Version != tls.VersionTLS13 || len(cs.PeerCertificates) == 0 {
		log.Debug("HBONE connection refused: not h2 over mutual TLS 1.3", "alpn", cs.NegotiatedProtocol, "version", tls.VersionName(cs.Version))
		peer, _ := identity.PeerIdentity(cs)
		refused(StageHTTP2, peer, fmt.Errorf("not h2 over mutual TLS 1.3 (ALPN %q, %s)", cs.NegotiatedProtocol, tls.VersionName(cs.Version)))
		tc.Close()
		s.forgetPending(nc)
		return
	}
	var preface [len(clientPreface)]byte
	if _, err := io.ReadFull(tc, preface[:]); err != nil || string(preface[:]) != clientPreface {
		log.Debug("HBONE connection refused: no HTTP/2 preface", "error", err)
		peer, _ := identity.PeerIdentity(cs)
		if err == nil {
			err = errors.New("bad preface")
		}
		refused(StageHTTP2, peer, fmt.Errorf("no HTTP/2 client preface: %w", err))
		tc.Close()
		s.forgetPending(nc)
		return
	}
	_ = nc.SetDeadline(time.Time{})
	peer, peerErr := identity.PeerIdentity(cs)

	var c *conn
	c = newConn(tc, nc, connConfig{
		server:           true,
		maxStreams:       uint32(s.MaxStreams),
		maxHeaderList:    ServerMaxHeaderBytes,
		streamWindow:     StreamWindow,
		connWindow:       ConnWindow,
		maxFrame:         MaxFrameSize,
		keepalive:        s.KeepaliveInterval,
		keepaliveTimeout: s.KeepaliveTimeout,
		logger:           log,
		buffers:          s.bufs,
		onStream: func(st *stream, fields []hpack.HeaderField, tooBig bool) {
			go s.serveStream(c, st, fields, tooBig, peer, peerErr)
		},
		onClose: s.forget,
	})
	c.batch = bc
	s.mu.Lock()
	delete(s.pending, nc)
	if s.closing {
		s.signalIdleLocked()
		s.mu.Unlock()
		tc.Close()
		return
	}
	s.conns[c] = struct{}{}
	s.mu.Unlock()
	if err := c.startConn(); err != nil {
		return
	}
	s.mu.Lock()
	draining := s.draining
	s.mu.Unlock()
	if draining {
		c.startDrain()
	}
	c.readLoop()
}

// serveStream answers one request: the checks upstream ztunnel makes, in
// its order (header list size, method, authority, client identity), then
// the handler's verdict and its use of the stream.
func (s *Server) serveStream(c *conn, st *stream, fields []hpack.HeaderField, tooBig bool, peer identity.SPIFFE, peerErr error) {
	ctx, cancel := context.WithCancel(context.Background())
	c.mu.Lock()
	st.cancel = cancel
	if st.removed || c.closed {
		cancel()
	}
	c.mu.Unlock()
	defer cancel()
	defer st.Close()

	start := time.Now()
	// refuse answers a request the server itself refuses, and reports it.
	refuse := func(code int, reason string, authority string) {
		_ = c.refuseStream(st, code, reason, authority, peer)
		if s.OnRefused != nil {
			s.OnRefused(Refusal{Stage: StageRequest, Local: c.nc.LocalAddr(), Remote: c.nc.RemoteAddr(), Peer: peer, Authority: authority,
				Code: code, Err: errors.New(reason), Start: start})
		}
	}
	if tooBig {
		refuse(http.StatusBadRequest, "request header list too large", "")
		return
	}
	head, code, reason, err := parseRequest(fields)
	if err != nil {
		var se *streamError
		if errors.As(err, &se) {
			c.cfg.logger.Debug("HBONE malformed request", "error", se)
			c.mu.Lock()
			st.resetLocked(se.code)
			c.mu.Unlock()
			if s.OnRefused != nil {
				s.OnRefused(Refusal{Stage: StageRequest, Local: c.nc.LocalAddr(), Remote: c.nc.RemoteAddr(), Peer: peer, Err: fmt.Errorf("malformed request: %w", se), Start: start})
			}
		}
		return
	}
	if code != 0 {
		refuse(code, reason, head.authority)
		return
	}
	target, err := ParseAuthority(head.authority)
	if err != nil {
		refuse(http.StatusBadRequest, err.Error(), head.authority)
		return
	}
	if peerErr != nil {
		refuse(http.StatusUnauthorized, "peer identity: "+peerErr.Error(), head.authority)
		return
	}
	req := &Request{Target: target, Peer: peer, LocalAddr: c.nc.LocalAddr(), RemoteAddr: c.nc.RemoteAddr(), Header: head.header,
		c: c, st: st, authority: head.authority}
	s.Handler.ServeHBONE(ctx, req)
	if req.answered.CompareAndSwap(false, true) {
		_ = c.refuseStream(st, http.StatusServiceUnavailable, "the handler returned without answering", head.authority, peer)
	}
}

// refuseStream answers a request with a refusal status and END_STREAM.
func (c *conn) refuseStream(st *stream, code int, reason, authority string, peer identity.SPIFFE) error {
	c.cfg.logger.Debug("HBONE refused", "code", code, "reason", reason, "authority", authority, "identity", peer.String())
	return c.writeResponse(st, responseFields(code, nil), true)
}

// StartDrain stops accepting and sends GOAWAY on every connection: open
// streams go on, and clients open new connections elsewhere. Shutdown
// then waits for the streams.
func (s *Server) StartDrain() {
	s.init()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.draining = true
	for l := range s.listeners {
		l.Close()
	}
	for c := range s.conns {
		c.startDrain()
	}
}

// Shutdown stops accepting, sends GOAWAY on every connection, and waits
// for open streams to finish until ctx is done; then it closes whatever is
// left and returns ctx's error.
func (s *Server) Shutdown(ctx context.Context) error {
	s.init()
	s.mu.Lock()
	s.closing = true
	for l := range s.listeners {
		l.Close()
	}
	for nc := range s.pending {
		nc.Close() // not yet serving streams
	}
	for c := range s.conns {
		c.startDrain()
	}
	s.mu.Unlock()
	for {
		s.mu.Lock()
		n := len(s.conns) + len(s.pending)
		idle := s.idle
		s.mu.Unlock()
		if n == 0 {
			return nil
		}
		select {
		case <-idle:
		case <-ctx.Done():
			s.Close()
			return ctx.Err()
		}
	}
}

// Close closes every listener and connection at once. Handlers still
// running see their context end, and their streams fail.
func (s *Server) Close() error {
	s.init()
	s.mu.Lock()
	s.closing = true
	for l := range s.listeners {
		l.Close()
	}
	for nc := range s.pending {
		nc.Close()
	}
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.close(ErrServerClosed)
	}
	return nil
}
