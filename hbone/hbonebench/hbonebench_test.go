package hbonebench

import (
	"context"
	"io"
	"testing"
	"time"
)

// TestRun checks every path carries bytes and the table renders.
func TestRun(t *testing.T) {
	e, err := Start()
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	res, err := Run(context.Background(), e, Options{Rounds: 1, Duration: 100 * time.Millisecond, Size: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range res {
		if r.Throughput <= 0 || r.RTT50 <= 0 || r.RTT99 < r.RTT50 || r.RTTSamples == 0 || r.CPUPerGB <= 0 {
			t.Errorf("%s: %+v", r.Path, r)
		}
	}
	t.Log("\n" + Table(res))
}

// BenchmarkThroughput moves 64 KiB per op over one long-lived stream to an
// upstream that discards, and reports the process's CPU per GB.
func BenchmarkThroughput(b *testing.B) {
	e, err := Start()
	if err != nil {
		b.Fatal(err)
	}
	defer e.Close()
	for _, p := range Paths() {
		b.Run(p, func(b *testing.B) {
			c, err := e.Dial(context.Background(), p, "sink")
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			buf := make([]byte, 64<<10)
			b.SetBytes(int64(len(buf)))
			b.ReportAllocs()
			b.ResetTimer()
			before := sample()
			for i := 0; i < b.N; i++ {
				if _, err := c.Write(buf); err != nil {
					b.Fatal(err)
				}
			}
			c.(closeWriter).CloseWrite()
			io.Copy(io.Discard, c) // the sink's count: everything arrived
			b.ReportMetric((sample().cpu-before.cpu).Seconds()/(float64(b.N)*float64(len(buf))/1e9), "cpu-s/GB")
		})
	}
}

// BenchmarkRTT is a one-byte round trip per op.
func BenchmarkRTT(b *testing.B) {
	e, err := Start()
	if err != nil {
		b.Fatal(err)
	}
	defer e.Close()
	for _, p := range Paths() {
		b.Run(p, func(b *testing.B) {
			c, err := e.Dial(context.Background(), p, "echo")
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
		})
	}
}

// BenchmarkNewConn is the cost of a new tunnelled connection with one
// round trip (HBONE: a new stream on a pooled connection; TLS: a full
// handshake; TCP: a connect).
func BenchmarkNewConn(b *testing.B) {
	e, err := Start()
	if err != nil {
		b.Fatal(err)
	}
	defer e.Close()
	for _, p := range Paths() {
		b.Run(p, func(b *testing.B) {
			b.ReportAllocs()
			var one [1]byte
			for i := 0; i < b.N; i++ {
				c, err := e.Dial(context.Background(), p, "echo")
				if err != nil {
					b.Fatal(err)
				}
				if _, err := c.Write(one[:]); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(c, one[:]); err != nil {
					b.Fatal(err)
				}
				c.Close()
			}
		})
	}
}
