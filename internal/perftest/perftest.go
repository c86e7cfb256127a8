// Package perftest holds the helpers the hot-path benchmarks and
// allocation gates of hbone and ztunnel share: counting allocations per
// operation, a loopback TCP pair, a request/response round trip.
package perftest

import (
	"io"
	"net"
	"runtime"
	"testing"
)

// AllocsPerOp runs op warm times, then reports the heap allocations of
// the whole process per call over n calls. It measures three times and
// keeps the lowest figure: a background allocation (a keepalive PING, a
// timer, the runtime) can only add to a trial, so the minimum is the hot
// path's own cost.
func AllocsPerOp(tb testing.TB, warm, n int, op func() error) float64 {
	tb.Helper()
	for i := 0; i < warm; i++ {
		if err := op(); err != nil {
			tb.Fatal(err)
		}
	}
	best := -1.0
	var ms runtime.MemStats
	for trial := 0; trial < 3; trial++ {
		runtime.GC()
		runtime.ReadMemStats(&ms)
		before := ms.Mallocs
		for i := 0; i < n; i++ {
			if err := op(); err != nil {
				tb.Fatal(err)
			}
		}
		runtime.ReadMemStats(&ms)
		got := float64(ms.Mallocs-before) / float64(n)
		if best < 0 || got < best {
			best = got
		}
	}
	return best
}

// TCPPair returns the two ends of a loopback TCP connection, closed when
// the test ends.
func TCPPair(tb testing.TB) (near, far *net.TCPConn) {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer l.Close()
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() { c, err := l.Accept(); ch <- res{c, err} }()
	d, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		tb.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		d.Close()
		tb.Fatal(r.err)
	}
	tb.Cleanup(func() { d.Close(); r.c.Close() })
	return d.(*net.TCPConn), r.c.(*net.TCPConn)
}

// RoundTrip writes req and reads len(resp) bytes back.
func RoundTrip(c net.Conn, req, resp []byte) error {
	if _, err := c.Write(req); err != nil {
		return err
	}
	_, err := io.ReadFull(c, resp)
	return err
}

// Echo writes back what c sends, reading into buf, and half-closes c at
// its EOF (closes it if it cannot half-close); it returns at the first
// error.
func Echo(c net.Conn, buf []byte) {
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if err == io.EOF {
				if cw, ok := c.(interface{ CloseWrite() error }); ok {
					_ = cw.CloseWrite()
				} else {
					c.Close()
				}
			}
			return
		}
	}
}
