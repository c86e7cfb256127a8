package hbone

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/identity"
	"github.com/ambit-mesh/ambit/identity/identitytest"
)

// Target ports the test handler treats specially.
const (
	portDeny      = 401  // policy denial: 401
	portUnknown   = 503  // unknown workload: 503
	portTeapot    = 418  // a status HBONE never sends: becomes 503
	portRefused   = 1    // upstream connect fails: 503
	portBanner    = 7    // upstream writes a banner, half-closes, counts what it reads
	portRSTUpstrm = 9    // upstream aborts with a TCP reset after the banner
	portSilent    = 2    // the handler returns without answering: 503
	portEcho      = 8080 // anything else: echo
)

// env is a CA, an HBONE server in front of in-process upstreams, and a pool.
type env struct {
	ca        *identitytest.CA
	serverID  identity.SPIFFE
	clientID  identity.SPIFFE
	srv       *Server
	addr      netip.AddrPort // HBONE listener
	accepts   *atomic.Int32  // TCP connections the HBONE listener accepted
	echo      string         // upstream echo address
	banner    string         // upstream banner address
	bannerGot chan int64     // bytes the banner upstream read before EOF
	rst       string         // upstream that resets
	pool      *Pool
	lastReq   chan *Request
	serverTLS *tls.Config
}

// countingListener counts accepted connections.
type countingListener struct {
	net.Listener
	n *atomic.Int32
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

// noLeaks fails the test if goroutines started during it outlive it.
func noLeaks(t *testing.T) {
	t.Helper()
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for runtime.NumGoroutine() > before {
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				n := runtime.Stack(buf, true)
				t.Errorf("%d goroutines before, %d after:\n%s", before, runtime.NumGoroutine(), buf[:n])
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
}

func serveTCP(t testing.TB, handle func(*net.TCPConn)) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { l.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				c.SetDeadline(time.Now().Add(20 * time.Second))
				handle(c.(*net.TCPConn))
			}()
		}
	}()
	return l.Addr().String()
}

// handler connects to the upstreams and relays, refusing some targets
// with the codes the tests expect.
func (e *env) handler() Handler {
	return HandlerFunc(func(ctx context.Context, r *Request) {
		select {
		case e.lastReq <- r:
		default:
		}
		addr := e.echo
		switch r.Target.Port {
		case portDeny:
			r.Refuse(http.StatusUnauthorized, "denied by policy demo/deny")
			return
		case portUnknown:
			r.Refuse(http.StatusServiceUnavailable, "unknown workload")
			return
		case portTeapot:
			r.Refuse(http.StatusTeapot, "not an HBONE status")
			return
		case portSilent:
			return // neither accepts nor refuses
		case portBanner:
			addr = e.banner
		case portRSTUpstrm:
			addr = e.rst
		}
		up, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
		if r.Target.Port == portRefused {
			err = errors.New("connection refused")
		}
		if err != nil {
			r.Refuse(http.StatusServiceUnavailable, err.Error())
			return
		}
		defer up.Close()
		c, err := r.Accept(http.Header{"Baggage": {"k8s.namespace.name=demo"}})
		if err != nil {
			return
		}
		relay(c, up)
	})
}

// relay copies both ways between an accepted stream and its upstream,
// passing half-closes along, and returns when both directions are done:
// END_STREAM from the client becomes CloseWrite on the upstream, the
// upstream's EOF becomes END_STREAM, and an error either way aborts both.
func relay(c *Conn, upstream net.Conn) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		if _, err := c.WriteTo(upstream); err == nil {
			if cw, ok := upstream.(interface{ CloseWrite() error }); ok {
				_ = cw.CloseWrite()
				return
			}
		}
		upstream.Close()
	}()
	if _, err := c.ReadFrom(upstream); err == nil {
		_ = c.CloseWrite()
	} else {
		c.Close()
	}
	<-done
}

// poolStats reports, per key, the open streams of each pooled connection.
func poolStats(p *Pool) map[string][]int {
	p.init()
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[string][]int{}
	for k, list := range p.conns {
		for _, pc := range list {
			out[k] = append(out[k], pc.active)
		}
	}
	return out
}

// usable reports whether new streams may still be opened (client).
func (c *conn) usable() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return !c.closed && !c.goAwayRecv
}

func newEnv(t testing.TB) *env {
	t.Helper()
	ca := identitytest.NewCA(t, "cluster.local")
	e := &env{ca: ca, serverID: ca.ID("demo", "echo"), clientID: ca.ID("demo", "client"), lastReq: make(chan *Request, 1),
		bannerGot: make(chan int64, 1), accepts: new(atomic.Int32)}
	e.echo = serveTCP(t, func(c *net.TCPConn) {
		io.Copy(c, c)
		c.CloseWrite()
	})
	e.banner = serveTCP(t, func(c *net.TCPConn) {
		c.Write([]byte("banner\n"))
		c.CloseWrite()
		n, _ := io.Copy(io.Discard, c)
		e.bannerGot <- n
	})
	e.rst = serveTCP(t, func(c *net.TCPConn) {
		c.Write([]byte("banner\n"))
		time.Sleep(50 * time.Millisecond)
		c.SetLinger(0) // close with RST
	})
	serverCert := ca.Issue(t, e.serverID, time.Hour)
	e.serverTLS = identity.ServerTLSConfig(identity.StaticCert(serverCert), identity.StaticBundle(ca.Bundle()), "cluster.local", nil)
	e.srv = &Server{TLSConfig: e.serverTLS, Handler: e.handler()}
	e.addr = e.serve(t, e.srv, "127.0.0.1:0")
	clientCert := ca.Issue(t, e.clientID, time.Hour)
	e.pool = &Pool{TLSConfig: func(_ context.Context, k Key) (*tls.Config, error) {
		return identity.ClientTLSConfig(identity.StaticCert(clientCert), identity.StaticBundle(ca.Bundle()), k.Dst, nil), nil
	}}
	t.Cleanup(e.pool.Close)
	return e
}

// serve runs srv on a new counted listener at addr.
func (e *env) serve(t testing.TB, srv *Server, addr string) netip.AddrPort {
	t.Helper()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(countingListener{l, e.accepts}); !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
	}()
	t.Cleanup(func() { srv.Close(); <-done })
	return netip.MustParseAddrPort(l.Addr().String())
}

func (e *env) key() Key {
	return Key{Src: e.clientID, Dst: []identity.SPIFFE{e.serverID}, DstAddr: e.addr}
}

func dialCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func (e *env) dial(t *testing.T, target string) *Conn {
	t.Helper()
	c, err := e.pool.Dial(dialCtx(t), e.key(), target, nil)
	if err != nil {
		t.Fatalf("dial %s: %v", target, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestRoundTripAndHalfClose(t *testing.T) {
	noLeaks(t)
	e := newEnv(t)
	hdr := http.Header{"Forwarded": {Forwarded(netip.MustParseAddrPort("10.0.0.1:1234"), "")},
		"Baggage": {Baggage(BaggageInfo{Namespace: "demo", WorkloadType: "pod", WorkloadName: "client"})}}
	c, err := e.pool.Dial(dialCtx(t), e.key(), "10.244.1.5:8080", hdr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Peer != e.serverID {
		t.Errorf("client saw server %v, want %v", c.Peer, e.serverID)
	}
	if got := c.Header.Get("Baggage"); got != "k8s.namespace.name=demo" {
		t.Errorf("response baggage %q", got)
	}
	r := <-e.lastReq
	if r.Peer != e.clientID || r.Target.String() != "10.244.1.5:8080" || r.Header.Get("Forwarded") != `for="10.0.0.1:1234"` ||
		r.Header.Get("Baggage") != "k8s.namespace.name=demo,k8s.pod.name=client" || len(r.Header.Get("Traceparent")) != 55 {
		t.Errorf("server saw %+v", r)
	}
	if r.LocalAddr == nil || r.LocalAddr.String() != e.addr.String() {
		t.Errorf("server local addr %v, want %v", r.LocalAddr, e.addr)
	}
	if _, ok := r.RemoteAddr.(*net.TCPAddr); !ok {
		t.Errorf("server remote addr %T %v", r.RemoteAddr, r.RemoteAddr)
	}
	payload := bytes.Repeat([]byte("hbone!"), 200000) // 1.2 MB
	go func() {
		c.Write(payload)
		c.CloseWrite() // END_STREAM: the upstream echo sees EOF and closes
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if !bytes.Equal(got, payload) {
		t.Fatalf("echoed %d bytes, want %d", len(got), len(payload))
	}
}

// TestServerHalfClosesFirst: the upstream finishes sending first; the
// client reads EOF and can still send, and the upstream reads all of it.
func TestServerHalfClosesFirst(t *testing.T) {
	noLeaks(t)
	e := newEnv(t)
	c := e.dial(t, fmt.Sprintf("10.244.1.5:%d", portBanner))
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "banner\n" {
		t.Fatalf("read %q, %v; want the banner then EOF", got, err)
	}
	payload := bytes.Repeat([]byte{'x'}, 3<<20)
	if n, err := c.Write(payload); err != nil || n != len(payload) {
		t.Fatalf("write after the server's END_STREAM: %d, %v", n, err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	select {
	case n := <-e.bannerGot:
		if n != int64(len(payload)) {
			t.Fatalf("upstream read %d bytes, want %d", n, len(payload))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("upstream never saw EOF")
	}
}

// TestBulkBothWays moves more than a connection window in both directions
// at once, through the io.Copy fast paths (ReadFrom and WriteTo).
func TestBulkBothWays(t *testing.T) {
	noLeaks(t)
	e := newEnv(t)
	c := e.dial(t, "10.244.1.5:8080")
	const size = 24 << 20
	src := make([]byte, size)
	for i := range src {
		src[i] = byte(i * 7 / 3)
	}
	go func() {
		io.Copy(c, bytes.NewReader(src))
		c.CloseWrite()
	}()
	h := sha256.New()
	n, err := io.Copy(h, c)
	if err != nil || n != size {
		t.Fatalf("received %d bytes, %v", n, err)
	}
	if want := sha256.Sum256(src); !bytes.Equal(h.Sum(nil), want[:]) {
		t.Fatal("payload corrupted")
	}
}

func TestManyStreamsShareOneConnection(t *testing.T) {
	noLeaks(t)
	e := newEnv(t)
	var wg sync.WaitGroup
	conns := make([]*Conn, 50)
	for i := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := e.pool.Dial(dialCtx(t), e.key(), "10.244.1.5:8080", nil)
			if err != nil {
				t.Error(err)
				return
			}
			conns[i] = c
			msg := fmt.Sprintf("stream %d\n", i)
			c.Write([]byte(msg))
			line, err := bufio.NewReader(c).ReadString('\n')
			if err != nil || line != msg {
				t.Errorf("stream %d: %q %v", i, line, err)
			}
		}()
	}
	wg.Wait()
	if n := e.accepts.Load(); n != 1 {
		t.Errorf("%d TCP connections, want 1", n)
	}
	stats := poolStats(e.pool)[e.key().String()]
	if len(stats) != 1 || stats[0] != 50 {
		t.Fatalf("pool = %v, want one connection with 50 streams", stats)
	}
	for _, c := range conns {
		if c != nil {
			c.Close()
		}
	}
	if s := poolStats(e.pool)[e.key().String()]; s[0] != 0 {
		t.Errorf("streams not released: %v", s)
	}
}

func TestPoolGrowsPast100Streams(t *testing.T) {
	noLeaks(t)
	e := newEnv(t)
	for i := 0; i < 101; i++ {
		e.dial(t, "10.244.1.5:8080")
	}
	if n := e.accepts.Load(); n != 2 {
		t.Errorf("%d TCP connections, want 2", n)
	}
	stats := poolStats(e.pool)[e.key().String()]
	if len(stats) != 2 || stats[0] != 100 || stats[1] != 1 {
		t.Fatalf("pool = %v, want [100 1]", stats)
	}
	// Another key (another source identity) never shares.
	other := e.key()
	other.Src = e.ca.ID("demo", "other")
	c, err := e.pool.Dial(dialCtx(t), other, "10.244.1.5:8080", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if len(poolStats(e.pool)[other.String()]) != 1 || e.accepts.Load() != 3 {
		t.Errorf("a different key reused a connection")
	}
}

// TestPeerStreamLimit: the server's SETTINGS_MAX_CONCURRENT_STREAMS caps
// a connection below the pool's own limit.
func TestPeerStreamLimit(t *testing.T) {
	noLeaks(t)
	e := newEnv(t)
	srv := &Server{TLSConfig: e.serverTLS, Handler: e.handler(), MaxStreams: 3}
	e.addr = e.serve(t, srv, "127.0.0.1:0")
	first := e.dial(t, "10.244.1.5:8080") // learns the limit from SETTINGS
	first.Write([]byte("x"))
	first.Read(make([]byte, 1))
	for i := 0; i < 3; i++ {
		e.dial(t, "10.244.1.5:8080")
	}
	if stats := poolStats(e.pool)[e.key().String()]; len(stats) != 2 || stats[0] != 3 || stats[1] != 1 {
		t.Fatalf("pool = %v, want [3 1]", stats)
	}
}

func TestStatusCodes(t *testing.T) {
	noLeaks(t)
	e := newEnv(t)
	for _, tc := range []struct {
		name   string
		target string
		code   int
	}{
		{"policy denial", "10.244.1.5:401", 401},
		{"unknown workload", "10.244.1.5:503", 503},
		{"upstream connect fails", "10.244.1.5:1", 503},
		{"handler status outside HBONE's set", "10.244.1.5:418", 503},
		{"handler that does not answer", "10.244.1.5:2", 503},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.pool.Dial(dialCtx(t), e.key(), tc.target, nil)
			var se *StatusError
			if !errors.As(err, &se) || se.Code != tc.code {
				t.Errorf("%s: err %v, want status %d", tc.target, err, tc.code)
			}
		})
	}
	if s := poolStats(e.pool)[e.key().String()]; len(s) != 1 || s[0] != 0 {
		t.Errorf("refused streams kept their slots: %v", s)
	}
	// Requests our client never sends, from Go's own HTTP/2 client.
	raw := e.rawClient(t, e.ca.Issue(t, e.clientID, time.Hour))
	for _, tc := range []struct {
		method, authority string
		code              int
	}{
		{"GET", "10.244.1.5:8080", 400},
		{"POST", "10.244.1.5:8080", 400},
		{"CONNECT", "10.244.1.5", 400},
		{"CONNECT", "Bad_Host.example:80", 400},
		{"CONNECT", "10.244.1.5:0", 400},
		{"CONNECT", "[fd00::1%eth0]:80", 400},
		{"CONNECT", "10.244.1.5:401", 401},
		{"CONNECT", "10.244.1.5:8080", 200},
	} {
		t.Run(tc.method+" "+tc.authority, func(t *testing.T) {
			var body io.Reader
			if tc.method == "CONNECT" {
				pr, pw := io.Pipe()
				defer pw.Close()
				body = pr
			}
			req, _ := http.NewRequest(tc.method, "https://"+e.addr.String(), body)
			req.Host = tc.authority
			resp, err := raw.RoundTrip(req)
			if err != nil {
				t.Fatalf("%v", err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.code {
				t.Errorf("status %d, want %d", resp.StatusCode, tc.code)
			}
		})
	}
}

// rawClient is Go's HTTP/2 client with the given certificate.
func (e *env) rawClient(t *testing.T, cert *tls.Certificate) *http.Transport {
	t.Helper()
	tr := &http.Transport{
		TLSClientConfig:   identity.ClientTLSConfig(identity.StaticCert(cert), identity.StaticBundle(e.ca.Bundle()), []identity.SPIFFE{e.serverID}, nil),
		ForceAttemptHTTP2: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "tcp", e.addr.String())
		},
	}
	var p http.Protocols
	p.SetHTTP2(true)
	tr.Protocols = &p
	t.Cleanup(tr.CloseIdleConnections)
	return tr
}

func TestServerIdentityChecked(t *testing.T) {
	noLeaks(t)
	e := newEnv(t)
	someoneElse := e.ca.ID("demo", "someone-else")
	k := e.key()
	k.Dst = []identity.SPIFFE{someoneElse}
	_, err := e.pool.Dial(dialCtx(t), k, "10.244.1.5:8080", nil)
	if err == nil || !strings.Contains(err.Error(), "is not the expected spiffe://cluster.local/ns/demo/sa/someone-else") {
		t.Fatalf("dial to the wrong server identity: %v", err)
	}
	// The pool checks Key.Dst itself, even if the TLS configuration
	// accepts the server (here it expects the real server, whatever the key).
	clientCert := e.ca.Issue(t, e.clientID, time.Hour)
	anyServer := &Pool{TLSConfig: func(context.Context, Key) (*tls.Config, error) {
		return identity.ClientTLSConfig(identity.StaticCert(clientCert), identity.StaticBundle(e.ca.Bundle()), []identity.SPIFFE{e.serverID}, nil), nil
	}}
	defer anyServer.Close()
	if _, err := anyServer.Dial(dialCtx(t), k, "10.244.1.5:8080", nil); err == nil || !strings.Contains(err.Error(), "someone-else") {
		t.Fatalf("Key.Dst not enforced: %v", err)
	}
	// A configuration that verifies nothing is refused before dialing.
	insecure := &Pool{TLSConfig: func(context.Context, Key) (*tls.Config, error) {
		return &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{*clientCert}}, nil
	}}
	defer insecure.Close()
	if _, err := insecure.Dial(dialCtx(t), e.key(), "10.244.1.5:8080", nil); err == nil || !strings.Contains(err.Error(), "verifies no server") {
		t.Fatalf("unverified TLS configuration: %v", err)
	}
	if n := e.accepts.Load(); n != 2 {
		t.Errorf("%d TCP connections, want 2 (the insecure one must not connect)", n)
	}
}

func TestServerConfigChecked(t *testing.T) {
	e := newEnv(t)
	cert := e.ca.Issue(t, e.serverID, time.Hour)
	for _, tc := range []struct {
		name string
		conf *tls.Config
	}{
		{"nil", nil},
		{"no client certificate required", &tls.Config{Certificates: []tls.Certificate{*cert}}},
		{"any client certificate, unverified", &tls.Config{Certificates: []tls.Certificate{*cert}, ClientAuth: tls.RequireAnyClientCert}},
		{"no server certificate", &tls.Config{ClientAuth: tls.RequireAndVerifyClientCert}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			s := &Server{TLSConfig: tc.conf, Handler: e.handler()}
			if err := s.Serve(l); err == nil || errors.Is(err, ErrServerClosed) {
				t.Fatalf("Serve accepted the configuration: %v", err)
			}
		})
	}
}

// TestAnswerOnce: a request is answered once; a later Accept or Refuse
// fails with ErrAnswered and sends nothing.
func TestAnswerOnce(t *testing.T) {
	noLeaks(t)
	e := newEnv(t)
	errs := make(chan error, 4)
	srv := &Server{TLSConfig: e.serverTLS, Handler: HandlerFunc(func(ctx context.Context, r *Request) {
		if r.Target.Port == portDeny {
			errs <- r.Refuse(http.StatusUnauthorized, "denied")
			_, err := r.Accept(nil)
			errs <- err
			return
		}
		c, err := r.Accept(nil)
		errs <- err
		errs <- r.Refuse(http.StatusUnauthorized, "too late")
		if err == nil {
			c.Write([]byte("accepted\n"))
			c.CloseWrite()
			io.Copy(io.Discard, c)
		}
	})}
	e.addr = e.serve(t, srv, "127.0.0.1:0")
	c := e.dial(t, "10.244.1.5:8080")
	if got, err := io.ReadAll(c); err != nil || string(got) != "accepted\n" {
		t.Fatalf("read %q, %v", got, err)
	}
	c.CloseWrite()
	if err := <-errs; err != nil {
		t.Fatalf("Accept: %v", err)
	}
	if err := <-errs; !errors.Is(err, ErrAnswered) {
		t.Fatalf("Refuse after Accept: %v, want ErrAnswered", err)
	}
	_, err := e.pool.Dial(dialCtx(t), e.key(), fmt.Sprintf("10.244.1.5:%d", portDeny), nil)
	var se *StatusError
	if !errors.As(err, &se) || se.Code != http.StatusUnauthorized {
		t.Fatalf("dial: %v, want 401", err)
	}
	if err := <-errs; err != nil {
		t.Fatalf("Refuse: %v", err)
	}
	if err := <-errs; !errors.Is(err, ErrAnswered) {
		t.Fatalf("Accept after Refuse: %v, want ErrAnswered", err)
	}
}

// TestAcceptedStream: the handler's side of a stream has deadlines, reads
// the client's END_STREAM as EOF, half-closes, and its Close resets a
// stream that had not finished.
func TestAcceptedStream(t *testing.T) {
	noLeaks(t)
	e := newEnv(t)
	errs := make(chan error, 4)
	srv := &Server{TLSConfig: e.serverTLS, Handler: HandlerFunc(func(ctx context.Context, r *Request) {
		c, err := r.Accept(http.Header{"X-Served": {"yes"}})
		if err != nil {
			errs <- err
			return
		}
		c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		_, err = c.Read(make([]byte, 1))
		errs <- err // the deadline
		c.SetReadDeadline(time.Time{})
		if r.Target.Port == portRSTUpstrm {
			c.Write([]byte("partial"))
			c.Close() // the client has not finished: a reset
			errs <- nil
			return
		}
		got, err := io.ReadAll(c)
		if err == nil && string(got) != "hello" {
			err = fmt.Errorf("read %q", got)
		}
		errs <- err
		c.Write([]byte("bye"))
		errs <- c.CloseWrite()
	})}
	e.addr = e.serve(t, srv, "127.0.0.1:0")

	c := e.dial(t, "10.244.1.5:8080")
	if c.Header.Get("X-Served") != "yes" {
		t.Errorf("response headers %v", c.Header)
	}
	if err := <-errs; !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("handler read past its deadline: %v", err)
	}
	c.Write([]byte("hello"))
	c.CloseWrite()
	if err := <-errs; err != nil {
		t.Fatalf("handler read: %v", err)
	}
	if got, err := io.ReadAll(c); err != nil || string(got) != "bye" {
		t.Fatalf("client read %q, %v", got, err)
	}
	if err := <-errs; err != nil {
		t.Fatalf("handler CloseWrite: %v", err)
	}

	c2 := e.dial(t, fmt.Sprintf("10.244.1.5:%d", portRSTUpstrm))
	<-errs
	<-errs
	c2.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(c2)
	var re *ResetError
	if string(got) != "partial" || !errors.As(err, &re) || !re.Remote {
		t.Fatalf("read %q, %v; want the data then a reset from the server", got, err)
	}
}

func TestRequestHeadersChecked(t *testing.T) {
	e := newEnv(t)
	for _, h := range []http.Header{{"Connection": {"close"}}, {"Host": {"x"}}, {"X-Bad": {"a\r\nb"}}, {"Transfer-Encoding": {"chunked"}}} {
		if c, err := e.pool.Dial(dialCtx(t), e.key(), "10.244.1.5:8080", h); err == nil {
			c.Close()
			t.Errorf("header %v was sent", h)
		}
	}
	if _, err := e.pool.Dial(dialCtx(t), e.key(), "not an authority", nil); err == nil {
		t.Error("a malformed target was sent")
	}
}

// assertServing checks that the server still serves a good client.
func (e *env) assertServing(t *testing.T) {
	t.Helper()
	c, err := e.pool.Dial(dialCtx(t), e.key(), "10.244.1.5:8080", nil)
	if err != nil {
		t.Fatalf("server stopped serving good clients: %v", err)
	}
	c.Write([]byte("ping\n"))
	line, err := bufio.NewReader(c).ReadString('\n')
	c.Close()
	if err != nil || line != "ping\n" {
		t.Fatalf("echo after bad clients: %q %v", line, err)
	}
}

func TestBadClientsRefused(t *testing.T) {
	noLeaks(t)
	e := newEnv(t)
	otherTD := identitytest.NewCA(t, "evil.org")
	rogue := identitytest.NewCA(t, "cluster.local")
	bothRoots, _ := identity.NewBundle(e.ca.Root(), otherTD.Root())
	// A server that trusts the other root too, to prove the trust-domain
	// check (not just the chain) refuses it.
	serverCert := e.ca.Issue(t, e.serverID, time.Hour)
	tdServer := &Server{TLSConfig: identity.ServerTLSConfig(identity.StaticCert(serverCert), identity.StaticBundle(bothRoots), "cluster.local", nil), Handler: e.handler()}
	e.addr = e.serve(t, tdServer, "127.0.0.1:0")

	tlsDial := func(conf *tls.Config) error {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", e.addr.String(), conf)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		// TLS 1.3: the server's verdict on our certificate arrives on read.
		c.Write([]byte(clientPreface))
		c.Write(frameBytes(frameSettings, 0, 0, nil))
		_, err = c.Read(make([]byte, 1))
		return err
	}
	certConf := func(cert *tls.Certificate, protos ...string) *tls.Config {
		conf := identity.ClientTLSConfig(identity.StaticCert(cert), identity.StaticBundle(bothRoots), []identity.SPIFFE{e.serverID}, nil)
		if protos != nil {
			conf.NextProtos = protos
		}
		return conf
	}
	plainRequest := func(c net.Conn) error {
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(c, "CONNECT 10.244.1.5:8080 HTTP/1.1\r\nHost: 10.244.1.5:8080\r\n\r\n")
		b, _ := io.ReadAll(c)
		if strings.Contains(string(b), "200") {
			return nil
		}
		return fmt.Errorf("refused: %q", b)
	}
	cases := []struct {
		name string
		try  func() error
	}{
		{"plaintext HTTP/1.1 CONNECT", func() error {
			c, err := net.Dial("tcp", e.addr.String())
			if err != nil {
				return err
			}
			return plainRequest(c)
		}},
		{"plaintext HTTP/2 preface", func() error {
			c, err := net.Dial("tcp", e.addr.String())
			if err != nil {
				return err
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			c.Write(clientStart())
			b, _ := io.ReadAll(c)
			if len(b) > 0 && b[0] != 0x15 { // anything but a TLS alert
				return nil
			}
			return errors.New("closed")
		}},
		{"garbage bytes", func() error {
			c, err := net.Dial("tcp", e.addr.String())
			if err != nil {
				return err
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			c.Write(bytes.Repeat([]byte{0x16, 0x03, 0xff, 0x00}, 1000))
			io.ReadAll(c)
			return errors.New("closed")
		}},
		{"no client certificate", func() error { return tlsDial(certConf(&tls.Certificate{})) }},
		{"certificate from a rogue root", func() error { return tlsDial(certConf(rogue.Issue(t, e.clientID, time.Hour))) }},
		{"certificate from another trust domain", func() error {
			return tlsDial(certConf(otherTD.Issue(t, otherTD.ID("demo", "client"), time.Hour)))
		}},
		{"TLS 1.2", func() error {
			conf := certConf(e.ca.Issue(t, e.clientID, time.Hour))
			conf.MinVersion, conf.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
			return tlsDial(conf)
		}},
		{"ALPN http/1.1 only", func() error { return tlsDial(certConf(e.ca.Issue(t, e.clientID, time.Hour), "http/1.1")) }},
		{"HTTP/1.1 over TLS without ALPN", func() error {
			conf := certConf(e.ca.Issue(t, e.clientID, time.Hour))
			conf.NextProtos = nil
			c, err := tls.Dial("tcp", e.addr.String(), conf)
			if err != nil {
				return err
			}
			return plainRequest(c)
		}},
		{"h2 ALPN but HTTP/1.1 bytes", func() error {
			c, err := tls.Dial("tcp", e.addr.String(), certConf(e.ca.Issue(t, e.clientID, time.Hour)))
			if err != nil {
				return err
			}
			return plainRequest(c)
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.try(); err == nil {
				t.Fatal("the server accepted it")
			}
			e.assertServing(t)
		})
	}
}

// TestGoawayDrain: Shutdown sends GOAWAY; the open stream keeps working
// until it is done, while new streams go to a new connection (here to a
// new server on the same address, as after a ztunnel restart).
func TestGoawayDrain(t *testing.T) {
	noLeaks(t)
	e := newEnv(t)
	c := e.dial(t, "10.244.1.5:8080")
	shutdownDone := make(chan error, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	go func() { shutdownDone <- e.srv.Shutdown(ctx) }()
	// Wait until the pool has seen the GOAWAY.
	deadline := time.Now().Add(5 * time.Second)
	for {
		e.pool.mu.Lock()
		usable := e.pool.conns[e.key().String()][0].c.usable()
		e.pool.mu.Unlock()
		if !usable {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no GOAWAY")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// A new server takes over the address.
	next := &Server{TLSConfig: e.serverTLS, Handler: e.handler()}
	e.serve(t, next, e.addr.String())

	br := bufio.NewReader(c)
	for i := 0; i < 3; i++ {
		fmt.Fprintf(c, "during drain %d\n", i)
		line, err := br.ReadString('\n')
		if err != nil || line != fmt.Sprintf("during drain %d\n", i) {
			t.Fatalf("stream broke during drain: %q %v", line, err)
		}
		if i == 1 {
			// New streams go to the new connection.
			n := e.dial(t, "10.244.1.5:8080")
			n.Write([]byte("new\n"))
			if line, err := bufio.NewReader(n).ReadString('\n'); err != nil || line != "new\n" {
				t.Fatalf("new stream: %q %v", line, err)
			}
			n.Close()
			if got := e.accepts.Load(); got != 2 {
				t.Fatalf("%d TCP connections, want 2", got)
			}
		}
	}
	select {
	case err := <-shutdownDone:
		t.Fatalf("shutdown finished while a stream was open: %v", err)
	default:
	}
	c.CloseWrite()
	if rest, err := io.ReadAll(br); err != nil || len(rest) != 0 {
		t.Fatalf("end of the drained stream: %q %v", rest, err)
	}
	c.Close()
	select {
	case err := <-shutdownDone:
		if err != nil {
			t.Fatalf("shutdown: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("shutdown did not finish after the last stream closed")
	}
	deadline = time.Now().Add(5 * time.Second)
	for len(poolStats(e.pool)[e.key().String()]) != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("pool after the drain: %v, want only the new connection", poolStats(e.pool))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestShutdownDeadline: streams still open when Shutdown's context ends
// are cut.
func TestShutdownDeadline(t *testing.T) {
	noLeaks(t)
	e := newEnv(t)
	c := e.dial(t, "10.244.1.5:8080")
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := e.srv.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown = %v, want the context's deadline", err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read after a forced shutdown: %v", err)
	}
}

func TestResets(t *testing.T) {
	noLeaks(t)
	e := newEnv(t)
	// The upstream aborts: the client's read fails (not a clean EOF).
	c := e.dial(t, fmt.Sprintf("10.244.1.5:%d", portRSTUpstrm))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(c)
	var re *ResetError
	if string(got) != "banner\n" || !errors.As(err, &re) || !re.Remote {
		t.Fatalf("read %q, %v; want the banner then a reset from the server", got, err)
	}
	// The client aborts: the server closes the upstream.
	c2 := e.dial(t, fmt.Sprintf("10.244.1.5:%d", portBanner))
	c2.Read(make([]byte, 1))
	c2.Close()
	select {
	case <-e.bannerGot:
	case <-time.After(5 * time.Second):
		t.Fatal("the upstream was not closed after the client reset the stream")
	}
	if _, err := c2.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("write after Close: %v", err)
	}
}

func TestDeadlines(t *testing.T) {
	noLeaks(t)
	e := newEnv(t)
	c := e.dial(t, "10.244.1.5:8080")
	c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	start := time.Now()
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past the deadline: %v", err)
	}
	if d := time.Since(start); d < 40*time.Millisecond || d > 2*time.Second {
		t.Errorf("deadline fired after %v", d)
	}
	c.SetReadDeadline(time.Time{})
	c.Write([]byte("a"))
	b := make([]byte, 1)
	if _, err := io.ReadFull(c, b); err != nil || b[0] != 'a' {
		t.Fatalf("read after clearing the deadline: %q %v", b, err)
	}
	c.SetWriteDeadline(time.Now().Add(-time.Second))
	if _, err := c.Write([]byte("a")); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("write past the deadline: %v", err)
	}
}

func TestIdleRelease(t *testing.T) {
	noLeaks(t)
	e := newEnv(t)
	e.pool.IdleTimeout = 200 * time.Millisecond
	c, err := e.pool.Dial(dialCtx(t), e.key(), "10.244.1.5:8080", nil)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(400 * time.Millisecond)
	if len(poolStats(e.pool)[e.key().String()]) != 1 {
		t.Fatal("a connection with an open stream was released")
	}
	c.Close()
	deadline := time.Now().Add(5 * time.Second)
	for len(poolStats(e.pool)[e.key().String()]) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("idle connection not released")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestKeepalive: PINGs keep a quiet connection that answers, and drop one
// whose peer stopped answering.
func TestKeepalive(t *testing.T) {
	noLeaks(t)
	e := newEnv(t)
	e.pool.KeepaliveInterval, e.pool.KeepaliveTimeout = 50*time.Millisecond, 200*time.Millisecond
	c := e.dial(t, "10.244.1.5:8080")
	c.Close()
	time.Sleep(500 * time.Millisecond)
	e.dial(t, "10.244.1.5:8080")
	if n := e.accepts.Load(); n != 1 {
		t.Fatalf("%d TCP connections, want 1: the quiet connection was dropped", n)
	}

	// A peer that completes TLS and HTTP/2 SETTINGS, then goes silent.
	l, err := tls.Listen("tcp", "127.0.0.1:0", e.serverTLS)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	held := make(chan net.Conn, 1)
	go func() {
		nc, err := l.Accept()
		if err != nil {
			return
		}
		nc.Write(frameBytes(frameSettings, 0, 0, nil))
		held <- nc
	}()
	k := e.key()
	k.DstAddr = netip.MustParseAddrPort(l.Addr().String())
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := e.pool.Dial(ctx, k, "10.244.1.5:8080", nil); err == nil {
		t.Fatal("a silent server answered")
	}
	defer func() { (<-held).Close() }()
	deadline := time.Now().Add(5 * time.Second)
	for len(poolStats(e.pool)[k.String()]) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the connection to a silent peer was not dropped")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestClientAgainstGoHTTP2Server: our client through Go's own HTTP/2
// server (16 KiB frames, its own windows), full duplex.
func TestClientAgainstGoHTTP2Server(t *testing.T) {
	noLeaks(t)
	e := newEnv(t)
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodConnect {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		w.WriteHeader(http.StatusOK)
		rc := http.NewResponseController(w)
		rc.Flush()
		buf := make([]byte, 32<<10)
		for {
			n, err := r.Body.Read(buf)
			if n > 0 {
				w.Write(buf[:n])
				rc.Flush()
			}
			if err != nil {
				return
			}
		}
	}), TLSConfig: e.serverTLS.Clone()}
	var p http.Protocols
	p.SetHTTP2(true)
	hs.Protocols = &p
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go hs.ServeTLS(l, "", "")
	defer hs.Close()
	k := e.key()
	k.DstAddr = netip.MustParseAddrPort(l.Addr().String())
	c, err := e.pool.Dial(dialCtx(t), k, "10.244.1.5:8080", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	payload := bytes.Repeat([]byte("0123456789abcdef"), 256<<10) // 4 MiB
	go func() { c.Write(payload); c.CloseWrite() }()
	got, err := io.ReadAll(c)
	if err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("echo through Go's HTTP/2 server: %d bytes, %v", len(got), err)
	}
}
