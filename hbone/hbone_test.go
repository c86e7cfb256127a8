package hbone

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/identity"
	"github.com/ambit-mesh/ambit/identity/identitytest"
)

// env is a CA, an HBONE server in front of a TCP echo upstream, and a pool.
type env struct {
	ca        *identitytest.CA
	serverID  identity.SPIFFE
	clientID  identity.SPIFFE
	srv       *Server
	addr      netip.AddrPort // HBONE listener
	echo      string         // upstream echo address
	pool      *Pool
	lastReq   chan *Request
	serverTLS *tls.Config
}

func startEcho(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
				c.(*net.TCPConn).CloseWrite()
			}()
		}
	}()
	return l.Addr().String()
}

// handler connects to the echo upstream, refusing some targets with the
// codes the tests expect.
func (e *env) handler() Handler {
	return HandlerFunc(func(ctx context.Context, r *Request) (net.Conn, error) {
		select {
		case e.lastReq <- r:
		default:
		}
		switch r.Target.Port {
		case 401:
			return nil, &StatusError{Code: http.StatusUnauthorized, Reason: "denied by policy demo/deny"}
		case 503:
			return nil, &StatusError{Code: http.StatusServiceUnavailable, Reason: "unknown workload"}
		case 1:
			return nil, errors.New("connection refused")
		}
		return (&net.Dialer{}).DialContext(ctx, "tcp", e.echo)
	})
}

func newEnv(t *testing.T) *env {
	t.Helper()
	ca := identitytest.NewCA(t, "cluster.local")
	e := &env{ca: ca, serverID: ca.ID("demo", "echo"), clientID: ca.ID("demo", "client"), echo: startEcho(t), lastReq: make(chan *Request, 1)}
	serverCert := ca.Issue(t, e.serverID, time.Hour)
	e.serverTLS = identity.ServerTLSConfig(func() (*tls.Certificate, error) { return serverCert, nil },
		func() *identity.Bundle { return ca.Bundle() }, "cluster.local", nil)
	e.srv = &Server{TLSConfig: e.serverTLS, Handler: e.handler()}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.addr = netip.MustParseAddrPort(l.Addr().String())
	go e.srv.Serve(l)
	t.Cleanup(func() { e.srv.Close() })
	clientCert := ca.Issue(t, e.clientID, time.Hour)
	e.pool = &Pool{TLSConfig: func(_ context.Context, k Key) (*tls.Config, error) {
		return identity.ClientTLSConfig(func() (*tls.Certificate, error) { return clientCert, nil },
			func() *identity.Bundle { return ca.Bundle() }, k.Dst, nil), nil
	}}
	t.Cleanup(e.pool.Close)
	return e
}

func (e *env) key() Key {
	return Key{Src: e.clientID, Dst: []identity.SPIFFE{e.serverID}, DstAddr: e.addr}
}

func dialCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestRoundTripAndHalfClose(t *testing.T) {
	e := newEnv(t)
	hdr := http.Header{"Traceparent": {NewTraceparent()}, "Forwarded": {Forwarded(netip.MustParseAddrPort("10.0.0.1:1234"), "")}}
	c, err := e.pool.Dial(dialCtx(t), e.key(), "10.244.1.5:8080", hdr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Peer != e.serverID {
		t.Errorf("client saw server %v, want %v", c.Peer, e.serverID)
	}
	r := <-e.lastReq
	if r.Peer != e.clientID || r.Target.String() != "10.244.1.5:8080" || r.Header.Get("Forwarded") != `for="10.0.0.1:1234"` || !strings.HasPrefix(r.Header.Get("Traceparent"), "00-") {
		t.Errorf("server saw %+v", r)
	}
	if r.LocalAddr == nil || r.LocalAddr.String() != e.addr.String() {
		t.Errorf("server local addr %v, want %v", r.LocalAddr, e.addr)
	}
	payload := bytes.Repeat([]byte("hbone!"), 200000) // 1.2 MB, larger than one window update
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

func TestManyStreamsShareOneConnection(t *testing.T) {
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
	stats := e.pool.Stats()[e.key().String()]
	if len(stats) != 1 || stats[0] != 50 {
		t.Fatalf("pool = %v, want one connection with 50 streams", stats)
	}
	for _, c := range conns {
		if c != nil {
			c.Close()
		}
	}
	if s := e.pool.Stats()[e.key().String()]; s[0] != 0 {
		t.Errorf("streams not released: %v", s)
	}
}

func TestPoolGrowsPast100Streams(t *testing.T) {
	e := newEnv(t)
	var conns []*Conn
	for i := 0; i < 101; i++ {
		c, err := e.pool.Dial(dialCtx(t), e.key(), "10.244.1.5:8080", nil)
		if err != nil {
			t.Fatalf("stream %d: %v", i, err)
		}
		conns = append(conns, c)
	}
	stats := e.pool.Stats()[e.key().String()]
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
	if len(e.pool.Stats()[other.String()]) != 1 {
		t.Errorf("a different key reused a connection")
	}
	c.Close()
	for _, c := range conns {
		c.Close()
	}
}

func TestStatusCodes(t *testing.T) {
	e := newEnv(t)
	tests := []struct {
		target string
		code   int
	}{
		{"10.244.1.5:401", 401},
		{"10.244.1.5:503", 503},
		{"10.244.1.5:1", 503},
	}
	for _, tc := range tests {
		_, err := e.pool.Dial(dialCtx(t), e.key(), tc.target, nil)
		var se *StatusError
		if !errors.As(err, &se) || se.Code != tc.code {
			t.Errorf("%s: err %v, want status %d", tc.target, err, tc.code)
		}
	}
	// Malformed requests, sent with a raw HTTP/2 client.
	raw := e.rawClient(t, e.ca.Issue(t, e.clientID, time.Hour))
	for _, tc := range []struct {
		method, authority string
		code              int
	}{
		{"GET", "10.244.1.5:8080", 400},
		{"CONNECT", "10.244.1.5", 400},
		{"CONNECT", "Bad_Host.example:80", 400},
		{"CONNECT", "10.244.1.5:0", 400},
		{"CONNECT", "10.244.1.5:8080", 200},
	} {
		var body io.Reader
		if tc.method == "CONNECT" {
			body, _ = io.Pipe()
		}
		req, _ := http.NewRequest(tc.method, "https://"+e.addr.String(), body)
		req.Host = tc.authority
		resp, err := raw.RoundTrip(req)
		if err != nil {
			t.Errorf("%s %s: %v", tc.method, tc.authority, err)
			continue
		}
		resp.Body.Close()
		if resp.StatusCode != tc.code {
			t.Errorf("%s %s: status %d, want %d", tc.method, tc.authority, resp.StatusCode, tc.code)
		}
	}
}

// rawClient is a plain HTTP/2 client with the given certificate.
func (e *env) rawClient(t *testing.T, cert *tls.Certificate) *http.Transport {
	t.Helper()
	tr := &http.Transport{
		TLSClientConfig: identity.ClientTLSConfig(func() (*tls.Certificate, error) { return cert, nil },
			func() *identity.Bundle { return e.ca.Bundle() }, []identity.SPIFFE{e.serverID}, nil),
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
	e := newEnv(t)
	k := e.key()
	k.Dst = []identity.SPIFFE{e.ca.ID("demo", "someone-else")}
	_, err := e.pool.Dial(dialCtx(t), k, "10.244.1.5:8080", nil)
	if err == nil || !strings.Contains(err.Error(), "is not the expected spiffe://cluster.local/ns/demo/sa/someone-else") {
		t.Fatalf("dial to the wrong server identity: %v", err)
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
	e := newEnv(t)
	otherTD := identitytest.NewCA(t, "evil.org")
	rogue := identitytest.NewCA(t, "cluster.local")
	bothRoots, _ := identity.NewBundle(e.ca.Root(), otherTD.Root())
	// A server that trusts the other root too, to prove the trust-domain
	// check (not just the chain) refuses it.
	e.srv.Close()
	tdServer := &Server{TLSConfig: identity.ServerTLSConfig(func() (*tls.Certificate, error) { return e.ca.Issue(t, e.serverID, time.Hour), nil },
		func() *identity.Bundle { return bothRoots }, "cluster.local", nil), Handler: e.handler()}
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	e.addr = netip.MustParseAddrPort(l.Addr().String())
	go tdServer.Serve(l)
	defer tdServer.Close()

	tlsDial := func(conf *tls.Config) error {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", e.addr.String(), conf)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		// TLS 1.3: the server's verdict on our certificate arrives on read.
		c.Write([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"))
		_, err = c.Read(make([]byte, 1))
		return err
	}
	certConf := func(cert *tls.Certificate, protos ...string) *tls.Config {
		conf := identity.ClientTLSConfig(func() (*tls.Certificate, error) { return cert, nil },
			func() *identity.Bundle { return bothRoots }, []identity.SPIFFE{e.serverID}, nil)
		if protos != nil {
			conf.NextProtos = protos
		}
		return conf
	}
	cases := []struct {
		name string
		try  func() error
	}{
		{"plaintext HTTP", func() error {
			c, err := net.Dial("tcp", e.addr.String())
			if err != nil {
				return err
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			fmt.Fprintf(c, "CONNECT 10.244.1.5:8080 HTTP/1.1\r\nHost: 10.244.1.5:8080\r\n\r\n")
			b, err := io.ReadAll(c)
			if strings.Contains(string(b), "200") {
				return nil
			}
			return fmt.Errorf("refused: %q %v", b, err)
		}},
		{"garbage bytes", func() error {
			c, err := net.Dial("tcp", e.addr.String())
			if err != nil {
				return err
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			c.Write(bytes.Repeat([]byte{0x16, 0x03, 0xff, 0x00}, 1000))
			_, err = io.ReadAll(c)
			return errors.New("closed")
		}},
		{"no client certificate", func() error { return tlsDial(certConf(&tls.Certificate{})) }},
		{"certificate from a rogue root", func() error { return tlsDial(certConf(rogue.Issue(t, e.clientID, time.Hour))) }},
		{"certificate from another trust domain", func() error {
			return tlsDial(certConf(otherTD.Issue(t, otherTD.ID("demo", "client"), time.Hour)))
		}},
		{"ALPN http/1.1 only", func() error { return tlsDial(certConf(e.ca.Issue(t, e.clientID, time.Hour), "http/1.1")) }},
		{"HTTP/1.1 over TLS without ALPN", func() error {
			conf := certConf(e.ca.Issue(t, e.clientID, time.Hour))
			conf.NextProtos = nil
			c, err := tls.Dial("tcp", e.addr.String(), conf)
			if err != nil {
				return err
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			fmt.Fprintf(c, "CONNECT 10.244.1.5:8080 HTTP/1.1\r\nHost: 10.244.1.5:8080\r\n\r\n")
			b, _ := io.ReadAll(c)
			if strings.HasPrefix(string(b), "HTTP/1.1 200") {
				return nil
			}
			return fmt.Errorf("refused: %q", b)
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

func TestGoawayDrain(t *testing.T) {
	e := newEnv(t)
	c, err := e.pool.Dial(dialCtx(t), e.key(), "10.244.1.5:8080", nil)
	if err != nil {
		t.Fatal(err)
	}
	shutdownDone := make(chan error, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	go func() { shutdownDone <- e.srv.Shutdown(ctx) }()
	// The open stream keeps working during the drain.
	time.Sleep(200 * time.Millisecond)
	br := bufio.NewReader(c)
	for i := 0; i < 3; i++ {
		fmt.Fprintf(c, "during drain %d\n", i)
		line, err := br.ReadString('\n')
		if err != nil || line != fmt.Sprintf("during drain %d\n", i) {
			t.Fatalf("stream broke during drain: %q %v", line, err)
		}
	}
	select {
	case err := <-shutdownDone:
		t.Fatalf("shutdown finished while a stream was open: %v", err)
	default:
	}
	// The pooled connection got GOAWAY: new streams must not use it.
	if _, err := e.pool.Dial(dialCtx(t), e.key(), "10.244.1.5:8080", nil); err == nil {
		t.Fatal("a new stream was accepted by a draining server")
	}
	c.CloseWrite()
	io.ReadAll(br)
	c.Close()
	select {
	case err := <-shutdownDone:
		if err != nil {
			t.Fatalf("shutdown: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("shutdown did not finish after the last stream closed")
	}
}

func TestIdleRelease(t *testing.T) {
	e := newEnv(t)
	e.pool.IdleTimeout = 200 * time.Millisecond
	c, err := e.pool.Dial(dialCtx(t), e.key(), "10.244.1.5:8080", nil)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(400 * time.Millisecond)
	if len(e.pool.Stats()[e.key().String()]) != 1 {
		t.Fatal("a connection with an open stream was released")
	}
	c.Close()
	deadline := time.Now().Add(5 * time.Second)
	for len(e.pool.Stats()[e.key().String()]) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("idle connection not released")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
