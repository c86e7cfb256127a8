package ztunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/internal/perftest"

	"github.com/ambit-mesh/ambit/hbone"
	"github.com/ambit-mesh/ambit/identity"
	"github.com/ambit-mesh/ambit/identity/identitytest"
)

// Benchmarks of the relay's pipe, in process on loopback: between two TCP
// connection pairs, and with an HBONE stream on one side (inbound: the
// server's accepted stream piped to a TCP upstream; outbound: an app's TCP
// connection piped to a pooled client stream). Each runs a bulk transfer
// (64 KiB writes to a far end that discards) and a 1 KB request/response
// (to a far end that echoes), seen from the app's end.

// farEnd is what sits past the pipe: it reads and answers c.
type farEnd func(c net.Conn)

// farDiscard reads c to its end, then half-closes it (so the app reads EOF
// once everything it sent has arrived).
func farDiscard(c net.Conn) {
	if _, err := io.Copy(io.Discard, c); err == nil {
		closeWrite(c)
	}
}

// farEcho echoes c with a fixed buffer, then half-closes at EOF.
func farEcho(c net.Conn) { perftest.Echo(c, make([]byte, 64<<10)) }

// startPipe runs pipe(a, b) until the test ends (then closes both).
func startPipe(tb testing.TB, a, b net.Conn) {
	done := make(chan struct{})
	go func() { defer close(done); pipe(a, b) }()
	tb.Cleanup(func() { a.Close(); b.Close(); <-done })
}

// goFar runs far on c until the test ends (then closes c).
func goFar(tb testing.TB, far farEnd, c net.Conn) {
	done := make(chan struct{})
	go func() { defer close(done); far(c) }()
	tb.Cleanup(func() { c.Close(); <-done })
}

// serveUpstream serves far on each TCP connection to the address returned.
func serveUpstream(tb testing.TB, far farEnd) string {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]struct{}{}
	tb.Cleanup(func() {
		l.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = struct{}{}
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				far(c)
			}()
		}
	}()
	return l.Addr().String()
}

// hboneLoop is an HBONE server running h on loopback and a client pool
// for it, with test identities; it returns the pool and the key that
// reaches the server.
func hboneLoop(tb testing.TB, h hbone.HandlerFunc) (*hbone.Pool, hbone.Key) {
	tb.Helper()
	ca := identitytest.NewCA(tb, "cluster.local")
	serverID, clientID := ca.ID("demo", "server"), ca.ID("demo", "client")
	serverCert, clientCert := ca.Issue(tb, serverID, time.Hour), ca.Issue(tb, clientID, time.Hour)
	srv := &hbone.Server{
		TLSConfig: identity.ServerTLSConfig(identity.StaticCert(serverCert), identity.StaticBundle(ca.Bundle()), "cluster.local", nil),
		Handler:   h,
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(l); !errors.Is(err, hbone.ErrServerClosed) {
			tb.Errorf("Serve: %v", err)
		}
	}()
	tb.Cleanup(func() { srv.Close(); <-done })
	pool := &hbone.Pool{TLSConfig: func(_ context.Context, k hbone.Key) (*tls.Config, error) {
		return identity.ClientTLSConfig(identity.StaticCert(clientCert), identity.StaticBundle(ca.Bundle()), k.Dst, nil), nil
	}}
	tb.Cleanup(pool.Close)
	return pool, hbone.Key{Src: clientID, Dst: []identity.SPIFFE{serverID}, DstAddr: netip.MustParseAddrPort(l.Addr().String())}
}

// dialStream opens one stream on the pool.
func dialStream(tb testing.TB, pool *hbone.Pool, k hbone.Key) *hbone.Conn {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pool.Dial(ctx, k, "10.244.1.5:8080", nil)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

// A pipeSetup builds one path through pipe to far and returns the app's
// end of it.
type pipeSetup func(tb testing.TB, far farEnd) net.Conn

// pipeTCP: app -TCP- pipe -TCP- far.
func pipeTCP(tb testing.TB, far farEnd) net.Conn {
	app, a := perftest.TCPPair(tb)
	b, c := perftest.TCPPair(tb)
	startPipe(tb, a, b)
	goFar(tb, far, c)
	return app
}

// pipeHBONEInbound: app (an HBONE client stream) -HBONE- server handler
// running pipe(stream, upstream) -TCP- far, as ztunnel's inbound.
func pipeHBONEInbound(tb testing.TB, far farEnd) net.Conn {
	up := serveUpstream(tb, far)
	pool, k := hboneLoop(tb, func(ctx context.Context, r *hbone.Request) {
		u, err := (&net.Dialer{}).DialContext(ctx, "tcp", up)
		if err != nil {
			r.Refuse(503, err.Error())
			return
		}
		defer u.Close()
		c, err := r.Accept(nil)
		if err != nil {
			return
		}
		defer c.Close()
		pipe(c, u)
	})
	return dialStream(tb, pool, k)
}

// pipeHBONEOutbound: app -TCP- pipe(app conn, pooled client stream)
// -HBONE- far (in the server's handler, on the stream), as ztunnel's
// outbound.
func pipeHBONEOutbound(tb testing.TB, far farEnd) net.Conn {
	pool, k := hboneLoop(tb, func(_ context.Context, r *hbone.Request) {
		c, err := r.Accept(nil)
		if err != nil {
			return
		}
		defer c.Close()
		far(c)
	})
	app, a := perftest.TCPPair(tb)
	startPipe(tb, a, dialStream(tb, pool, k))
	return app
}

func benchPipe(b *testing.B, setup pipeSetup) {
	b.Run("64KiB", func(b *testing.B) {
		app := setup(b, farDiscard)
		buf := make([]byte, 64<<10)
		b.SetBytes(int64(len(buf)))
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if _, err := app.Write(buf); err != nil {
				b.Fatal(err)
			}
		}
		// The far end's half-close comes back once it has read everything.
		closeWrite(app)
		if _, err := io.Copy(io.Discard, app); err != nil {
			b.Fatal(err)
		}
	})
	b.Run("RTT1KiB", func(b *testing.B) {
		app := setup(b, farEcho)
		req, resp := make([]byte, 1024), make([]byte, 1024)
		b.SetBytes(2 * 1024)
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if err := perftest.RoundTrip(app, req, resp); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkPipeTCP is pipe between two loopback TCP connection pairs
// (io.Copy's splice path): 64 KiB writes, and a 1 KB request/response.
func BenchmarkPipeTCP(b *testing.B) { benchPipe(b, pipeTCP) }

// BenchmarkPipeHBONEInbound is pipe(accepted HBONE stream, TCP upstream)
// in the server's handler, driven by an HBONE client stream.
func BenchmarkPipeHBONEInbound(b *testing.B) { benchPipe(b, pipeHBONEInbound) }

// BenchmarkPipeHBONEOutbound is pipe(app TCP, pooled HBONE client stream)
// to a server handler that answers on the stream.
func BenchmarkPipeHBONEOutbound(b *testing.B) { benchPipe(b, pipeHBONEOutbound) }
