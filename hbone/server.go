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
	"time"

	"github.com/ambit-mesh/ambit/identity"
)

// HTTP/2 settings, as upstream ztunnel's (facts §1.7).
const (
	StreamWindow         = 4 << 20
	ConnWindow           = 16 << 20
	MaxFrameSize         = 1 << 20
	ServerMaxHeaderBytes = 64 << 10
	ClientMaxHeaderBytes = 16 << 10
	ServerMaxStreams     = 200
	KeepaliveInterval    = 10 * time.Second
	KeepaliveTimeout     = 20 * time.Second
)

// Request is an HBONE CONNECT the server has parsed.
type Request struct {
	Target     Authority
	Peer       identity.SPIFFE // from the client certificate
	LocalAddr  net.Addr        // where the TCP connection arrived
	RemoteAddr net.Addr
	Header     http.Header // forwarded, baggage, traceparent, ...
}

// StatusError is a refusal with the HTTP status the client gets.
type StatusError struct {
	Code   int
	Reason string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("HBONE %d %s: %s", e.Code, http.StatusText(e.Code), e.Reason)
}

// Handler authorizes a CONNECT and connects it upstream. It returns a
// *StatusError to refuse (401 for policy denials, 400 for an unexpected
// target, 503 for an unknown workload); any other error is a 503. The
// server answers 200 only after Connect succeeded.
type Handler interface {
	Connect(ctx context.Context, r *Request) (net.Conn, error)
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(ctx context.Context, r *Request) (net.Conn, error)

// Connect implements Handler.
func (f HandlerFunc) Connect(ctx context.Context, r *Request) (net.Conn, error) { return f(ctx, r) }

// Server serves HBONE on a listener.
type Server struct {
	// TLSConfig must require and verify client certificates (see
	// identity.ServerTLSConfig); the server adds nothing to it but h2.
	TLSConfig *tls.Config
	Handler   Handler
	Logger    *slog.Logger
	// MaxStreams per connection (default ServerMaxStreams).
	MaxStreams int

	once sync.Once
	srv  *http.Server
}

func (s *Server) init() {
	s.once.Do(func() {
		if s.Logger == nil {
			s.Logger = slog.New(slog.DiscardHandler)
		}
		maxStreams := s.MaxStreams
		if maxStreams <= 0 {
			maxStreams = ServerMaxStreams
		}
		var protocols http.Protocols
		protocols.SetHTTP2(true) // HTTP/2 over TLS only: no HTTP/1, no h2c
		tlsConf := s.TLSConfig.Clone()
		tlsConf.NextProtos = []string{"h2"}
		s.srv = &http.Server{
			Handler:           http.HandlerFunc(s.serveHTTP),
			TLSConfig:         tlsConf,
			Protocols:         &protocols,
			ReadHeaderTimeout: 10 * time.Second,
			MaxHeaderBytes:    ServerMaxHeaderBytes,
			ErrorLog:          slog.NewLogLogger(s.Logger.Handler(), slog.LevelDebug),
			HTTP2: &http.HTTP2Config{
				MaxConcurrentStreams:          maxStreams,
				MaxReadFrameSize:              MaxFrameSize,
				MaxReceiveBufferPerConnection: ConnWindow,
				MaxReceiveBufferPerStream:     StreamWindow,
				SendPingTimeout:               KeepaliveInterval,
				PingTimeout:                   KeepaliveTimeout,
			},
		}
	})
}

// Serve accepts HBONE connections on l until Shutdown or Close.
func (s *Server) Serve(l net.Listener) error {
	s.init()
	err := s.srv.ServeTLS(l, "", "")
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops accepting, sends GOAWAY on every connection, and waits
// for open streams to finish until ctx is done; then it closes them.
func (s *Server) Shutdown(ctx context.Context) error {
	s.init()
	err := s.srv.Shutdown(ctx)
	if err != nil {
		s.srv.Close()
	}
	return err
}

// Close closes every connection at once.
func (s *Server) Close() error {
	s.init()
	return s.srv.Close()
}

func (s *Server) refuse(w http.ResponseWriter, r *http.Request, code int, reason string) {
	s.Logger.Info("HBONE refused", "code", code, "reason", reason, "authority", r.Host, "remote", r.RemoteAddr)
	w.WriteHeader(code)
}

func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	if r.ProtoMajor != 2 || r.TLS == nil {
		s.refuse(w, r, http.StatusBadRequest, "HBONE needs HTTP/2 over TLS")
		return
	}
	if r.Method != http.MethodConnect {
		s.refuse(w, r, http.StatusBadRequest, "method "+r.Method+" is not CONNECT")
		return
	}
	target, err := ParseAuthority(r.Host)
	if err != nil {
		s.refuse(w, r, http.StatusBadRequest, err.Error())
		return
	}
	peer, err := identity.PeerIdentity(*r.TLS)
	if err != nil {
		s.refuse(w, r, http.StatusUnauthorized, "peer identity: "+err.Error())
		return
	}
	req := &Request{Target: target, Peer: peer, Header: r.Header}
	req.LocalAddr, _ = r.Context().Value(http.LocalAddrContextKey).(net.Addr)
	req.RemoteAddr, _ = net.ResolveTCPAddr("tcp", r.RemoteAddr)
	upstream, err := s.Handler.Connect(r.Context(), req)
	if err != nil {
		var se *StatusError
		if errors.As(err, &se) {
			s.refuse(w, r, se.Code, se.Reason)
		} else {
			s.refuse(w, r, http.StatusServiceUnavailable, err.Error())
		}
		return
	}
	defer upstream.Close()
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	if err := rc.Flush(); err != nil {
		return
	}
	// Client to upstream: on the client's END_STREAM, half-close upstream.
	go func() {
		buf := make([]byte, 64<<10)
		_, err := io.CopyBuffer(upstream, r.Body, buf)
		if cw, ok := upstream.(interface{ CloseWrite() error }); ok && err == nil {
			_ = cw.CloseWrite()
		} else {
			upstream.Close() // a reset stream: tear the upstream down too
		}
	}()
	// Upstream to client, flushing each read so small writes are not held.
	buf := make([]byte, 64<<10)
	for {
		n, rerr := upstream.Read(buf)
		if n > 0 {
			if _, err := w.Write(buf[:n]); err != nil {
				break
			}
			if err := rc.Flush(); err != nil {
				break
			}
		}
		if rerr != nil {
			break
		}
	}
	// Upstream finished sending: returning ends the stream (END_STREAM).
	// Go's HTTP/2 server cannot half-close a response while it keeps
	// reading the request, so a client still sending is reset; apps that
	// close their write side first and keep reading are not supported yet.
}
