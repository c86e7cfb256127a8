package hbone

import (
	"context"
	"io"
	"net"
	"syscall"
	"testing"
	"time"
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
