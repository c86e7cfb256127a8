package hbone

import (
	"context"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/internal/perftest"
)

// The benchmarks run a client and server in process on loopback; the
// hbonebench package compares the same paths with plain TCP and TLS 1.3.

// BenchmarkStreamThroughput writes 64 KiB per op on one stream to an
// upstream that discards.
func BenchmarkStreamThroughput(b *testing.B) {
	e := newEnv(b)
	sink := serveTCP(b, func(c *net.TCPConn) { io.Copy(io.Discard, c) })
	e.echo = sink
	c, err := e.pool.Dial(context.Background(), e.key(), "10.244.1.5:8080", nil)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 64<<10)
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := cpuTime()
	for i := 0; i < b.N; i++ {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	c.CloseWrite()
	io.Copy(io.Discard, c)
	b.ReportMetric((cpuTime()-cpu0).Seconds()/(float64(b.N)*float64(len(buf))/1e9), "cpu-s/GB")
}

// cpuTime is the CPU time this process has used (user and system): the
// client, the server and the upstream together.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkStreamRTT is a one-byte round trip per op through the tunnel
// and an echo upstream.
func BenchmarkStreamRTT(b *testing.B) {
	e := newEnv(b)
	c, err := e.pool.Dial(context.Background(), e.key(), "10.244.1.5:8080", nil)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	var one [1]byte
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := c.Write(one[:]); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, one[:]); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkNewStream opens a stream on a pooled connection, does a
// one-byte round trip and closes it, per op.
func BenchmarkNewStream(b *testing.B) {
	e := newEnv(b)
	var one [1]byte
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c, err := e.pool.Dial(ctx, e.key(), "10.244.1.5:8080", nil)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := c.Write(one[:]); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, one[:]); err != nil {
			b.Fatal(err)
		}
		c.CloseWrite()
		c.Close()
	}
}

// Hot-path benchmarks against a server whose handler works on the stream
// itself (no upstream hop), so that the figures are the tunnel's alone:
// client and server ends of one stream, on one pooled connection.

// handlerBufs recycles the test handlers' copy buffers, so that a
// benchmark that opens a stream per op does not count the test's own
// 64 KiB buffer as the library's.
var handlerBufs = sync.Pool{New: func() any { b := make([]byte, 64<<10); return &b }}

// streamEcho accepts and echoes on the stream itself, half-closing at the
// client's END_STREAM.
func streamEcho(_ context.Context, r *Request) {
	c, err := r.Accept(nil)
	if err != nil {
		return
	}
	defer c.Close()
	bp := handlerBufs.Get().(*[]byte)
	defer handlerBufs.Put(bp)
	perftest.Echo(c, *bp)
}

// streamDiscard accepts and reads the stream to its end.
func streamDiscard(_ context.Context, r *Request) {
	c, err := r.Accept(nil)
	if err != nil {
		return
	}
	defer c.Close()
	io.Copy(io.Discard, c) // the stream's WriteTo
	c.CloseWrite()
}

// streamSource accepts and writes 64 KiB blocks until the stream fails
// (the client's Close resets it).
func streamSource(_ context.Context, r *Request) {
	c, err := r.Accept(nil)
	if err != nil {
		return
	}
	defer c.Close()
	buf := make([]byte, 64<<10)
	for {
		if _, err := c.Write(buf); err != nil {
			return
		}
	}
}

// handlerEnv is newEnv's CA and pool with a second server that runs h;
// it returns the key that reaches that server.
func handlerEnv(tb testing.TB, h HandlerFunc) (*env, Key) {
	tb.Helper()
	e := newEnv(tb)
	addr := e.serve(tb, &Server{TLSConfig: e.serverTLS, Handler: h}, "127.0.0.1:0")
	k := e.key()
	k.DstAddr = addr
	return e, k
}

// openStream dials one stream for a benchmark or test, with a generous
// deadline set once (a deadline per op would arm a timer per op).
func openStream(tb testing.TB, e *env, k Key) *Conn {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := e.pool.Dial(ctx, k, "10.244.1.5:8080", nil)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Minute))
	return c
}

// BenchmarkStreamRTT1K is a 1 KB request and its 1 KB echo per op through
// the tunnel and an echo upstream (the path BenchmarkStreamRTT takes).
func BenchmarkStreamRTT1K(b *testing.B) {
	e := newEnv(b)
	c := openStream(b, e, e.key())
	req, resp := make([]byte, 1024), make([]byte, 1024)
	b.SetBytes(2 * 1024)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := perftest.RoundTrip(c, req, resp); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkStreamEchoRTT is a round trip per op on one stream to a server
// handler that echoes on the stream itself: client Write, server Read and
// Write, client Read; 1 byte and 1 KB.
func BenchmarkStreamEchoRTT(b *testing.B) {
	for _, size := range []int{1, 1024} {
		b.Run(sizeName(size), func(b *testing.B) {
			e, k := handlerEnv(b, streamEcho)
			c := openStream(b, e, k)
			req, resp := make([]byte, size), make([]byte, size)
			b.SetBytes(2 * int64(size))
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if err := perftest.RoundTrip(c, req, resp); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func sizeName(n int) string {
	switch {
	case n >= 1<<10 && n%(1<<10) == 0:
		return strconv.Itoa(n>>10) + "KiB"
	default:
		return strconv.Itoa(n) + "B"
	}
}

// BenchmarkStreamWrite writes 64 KiB per op on one stream to a server
// handler that reads the stream to its end (its WriteTo into io.Discard).
func BenchmarkStreamWrite(b *testing.B) {
	e, k := handlerEnv(b, streamDiscard)
	c := openStream(b, e, k)
	buf := make([]byte, 64<<10)
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	c.CloseWrite()
	io.Copy(io.Discard, c) // the server's END_STREAM: everything was read
}

// BenchmarkStreamRead reads 64 KiB per op on the client, from a server
// handler that writes 64 KiB blocks as fast as flow control lets it (the
// server -> client direction).
func BenchmarkStreamRead(b *testing.B) {
	e, k := handlerEnv(b, streamSource)
	c := openStream(b, e, k)
	buf := make([]byte, 64<<10)
	if _, err := io.ReadFull(c, buf); err != nil { // the source is running
		b.Fatal(err)
	}
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := io.ReadFull(c, buf); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPoolDial is a pool get: Pool.Dial of a new stream on an
// already-open pooled connection (CONNECT, 200 answer), then Close (a
// reset, since neither side ended the stream), per op.
func BenchmarkPoolDial(b *testing.B) {
	e, k := handlerEnv(b, streamEcho)
	openStream(b, e, k) // the pooled connection is open
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c, err := e.pool.Dial(ctx, k, "10.244.1.5:8080", nil)
		if err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
}

// BenchmarkShortConn is what a short connection costs on an open pooled
// connection: a new stream, 1 KB out, END_STREAM, 1 KB echoed back, the
// server's END_STREAM, Close, per op.
func BenchmarkShortConn(b *testing.B) {
	e, k := handlerEnv(b, streamEcho)
	openStream(b, e, k) // the pooled connection is open
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	req, resp := make([]byte, 1024), make([]byte, 1024)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := shortConn(ctx, e.pool, k, req, resp); err != nil {
			b.Fatal(err)
		}
	}
}

// shortConn opens a stream, sends req, half-closes, reads the answer to
// EOF into resp and closes.
func shortConn(ctx context.Context, p *Pool, k Key, req, resp []byte) error {
	c, err := p.Dial(ctx, k, "10.244.1.5:8080", nil)
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := c.Write(req); err != nil {
		return err
	}
	if err := c.CloseWrite(); err != nil {
		return err
	}
	if _, err := io.ReadFull(c, resp); err != nil {
		return err
	}
	if n, err := c.Read(resp[:1]); n != 0 || err != io.EOF {
		return fmt.Errorf("after the echo: %d bytes, %v, want EOF", n, err)
	}
	return nil
}
