// Package hbonebench measures the HBONE tunnel on loopback against plain
// TCP and against a plain TLS 1.3 proxy, in one run: single-stream
// throughput with the CPU and allocations it costs the process, and
// one-byte round-trip latency.
//
// The three paths carry the same bytes to the same upstream servers:
//
//	tcp:   client -> upstream
//	tls:   client =TLS 1.3=> terminating proxy -> upstream
//	hbone: client =HBONE (HTTP/2 CONNECT over mTLS)=> HBONE server -> upstream
package hbonebench

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"runtime"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ambit-mesh/ambit/hbone"
	"github.com/ambit-mesh/ambit/identity"
)

// Result is one path's figures.
type Result struct {
	Path           string
	Throughput     float64 // bytes per second, one stream
	CPUPerGB       float64 // process CPU seconds per GB sent (client, proxy and upstream together)
	AllocsPerWrite float64 // heap allocations per write of Options.Size bytes, whole process
	RTT50          time.Duration
	RTT99          time.Duration
	AllocsPerRTT   float64 // heap allocations per one-byte round trip, whole process
	RTTSamples     int
}

// Options bound a run.
type Options struct {
	Rounds   int           // rounds; the paths alternate within each
	Duration time.Duration // length of each measurement
	Size     int           // bytes per write in the throughput test
}

// Env is a running set of servers for the three paths.
type Env struct {
	echo, sink string // upstream addresses
	tlsEcho    string // TLS proxies in front of echo and sink
	tlsSink    string
	hboneAddr  netip.AddrPort
	pool       *hbone.Pool
	key        hbone.Key
	clientTLS  *tls.Config
	closers    []func()
}

// Close stops every server.
func (e *Env) Close() {
	for i := len(e.closers) - 1; i >= 0; i-- {
		e.closers[i]()
	}
}

func listen() (net.Listener, error) { return net.Listen("tcp", "127.0.0.1:0") }

func serve(l net.Listener, handle func(net.Conn)) {
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); handle(c) }()
		}
	}()
}

// Start brings up the upstreams, a TLS proxy and an HBONE server, with
// certificates from a fresh CA.
func Start() (*Env, error) {
	e := &Env{}
	fail := func(err error) (*Env, error) { e.Close(); return nil, err }
	echoL, err := listen()
	if err != nil {
		return fail(err)
	}
	e.closers = append(e.closers, func() { echoL.Close() })
	serve(echoL, func(c net.Conn) { _, _ = io.Copy(c, c) })
	e.echo = echoL.Addr().String()

	sinkL, err := listen()
	if err != nil {
		return fail(err)
	}
	e.closers = append(e.closers, func() { sinkL.Close() })
	serve(sinkL, func(c net.Conn) {
		n, _ := io.CopyBuffer(io.Discard, c, make([]byte, 256<<10))
		var b [8]byte
		binary.BigEndian.PutUint64(b[:], uint64(n))
		_, _ = c.Write(b[:])
	})
	e.sink = sinkL.Addr().String()

	auth, err := identity.NewRootAuthority("cluster.local", 24*time.Hour, time.Now())
	if err != nil {
		return fail(err)
	}
	bundle, _ := identity.NewBundle(auth.Root())
	serverID := identity.SPIFFE{TrustDomain: "cluster.local", Namespace: "bench", ServiceAccount: "server"}
	clientID := identity.SPIFFE{TrustDomain: "cluster.local", Namespace: "bench", ServiceAccount: "client"}
	serverCert, err := auth.IssueTLS(serverID, time.Hour, time.Now(), nil)
	if err != nil {
		return fail(err)
	}
	clientCert, err := auth.IssueTLS(clientID, time.Hour, time.Now(), nil)
	if err != nil {
		return fail(err)
	}
	serverTLS := identity.ServerTLSConfig(func() (*tls.Certificate, error) { return serverCert, nil }, func() *identity.Bundle { return bundle }, "cluster.local", nil)
	e.clientTLS = identity.ClientTLSConfig(func() (*tls.Certificate, error) { return clientCert, nil }, func() *identity.Bundle { return bundle }, []identity.SPIFFE{serverID}, nil)

	// The TLS proxies: terminate mutual TLS 1.3 and forward, one per upstream.
	for _, p := range []struct{ target, addr *string }{{&e.echo, &e.tlsEcho}, {&e.sink, &e.tlsSink}} {
		l, err := listen()
		if err != nil {
			return fail(err)
		}
		e.closers = append(e.closers, func() { l.Close() })
		conf := serverTLS.Clone()
		conf.NextProtos = nil
		target := *p.target
		serve(tls.NewListener(l, conf), func(c net.Conn) { proxy(c, target) })
		*p.addr = l.Addr().String()
	}

	hl, err := listen()
	if err != nil {
		return fail(err)
	}
	srv := &hbone.Server{TLSConfig: serverTLS, Handler: hbone.HandlerFunc(func(ctx context.Context, r *hbone.Request) {
		up, err := (&net.Dialer{}).DialContext(ctx, "tcp", r.Target.String())
		if err != nil {
			_ = r.Refuse(http.StatusServiceUnavailable, err.Error())
			return
		}
		defer up.Close()
		c, err := r.Accept(nil)
		if err != nil {
			return
		}
		relay(c, up)
	})}
	go func() { _ = srv.Serve(hl) }()
	e.closers = append(e.closers, func() { srv.Close() })
	e.hboneAddr = netip.MustParseAddrPort(hl.Addr().String())
	e.pool = &hbone.Pool{TLSConfig: func(context.Context, hbone.Key) (*tls.Config, error) { return e.clientTLS, nil }}
	e.closers = append(e.closers, e.pool.Close)
	e.key = hbone.Key{Src: clientID, Dst: []identity.SPIFFE{serverID}, DstAddr: e.hboneAddr}
	return e, nil
}

func proxy(c net.Conn, target string) {
	up, err := net.Dial("tcp", target)
	if err != nil {
		return
	}
	defer up.Close()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		_, _ = io.CopyBuffer(up, c, make([]byte, 256<<10))
		_ = up.(*net.TCPConn).CloseWrite()
	}()
	_, _ = io.CopyBuffer(c, up, make([]byte, 256<<10))
	if tc, ok := c.(*tls.Conn); ok {
		_ = tc.CloseWrite()
	}
	wg.Wait()
}

// relay copies both ways between an accepted HBONE stream and its
// upstream, as a ztunnel does: END_STREAM becomes CloseWrite on the
// upstream and the upstream's EOF becomes END_STREAM; an error either way
// aborts both. The copies take the stream's WriteTo and ReadFrom paths.
func relay(c *hbone.Conn, up net.Conn) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		if _, err := c.WriteTo(up); err == nil {
			_ = up.(*net.TCPConn).CloseWrite()
			return
		}
		up.Close()
	}()
	if _, err := c.ReadFrom(up); err == nil {
		_ = c.CloseWrite()
	} else {
		c.Close()
	}
	<-done
}

// Paths lists the paths in the order they are reported.
func Paths() []string { return []string{"tcp", "tls", "hbone"} }

// Dial opens a connection on path to the echo ("echo") or sink ("sink").
func (e *Env) Dial(ctx context.Context, path, upstream string) (net.Conn, error) {
	target, tlsAddr := e.echo, e.tlsEcho
	if upstream == "sink" {
		target, tlsAddr = e.sink, e.tlsSink
	}
	switch path {
	case "tcp":
		return (&net.Dialer{}).DialContext(ctx, "tcp", target)
	case "tls":
		conf := e.clientTLS.Clone()
		conf.NextProtos = nil
		return (&tls.Dialer{Config: conf}).DialContext(ctx, "tcp", tlsAddr)
	case "hbone":
		return e.pool.Dial(ctx, e.key, target, nil)
	}
	return nil, fmt.Errorf("unknown path %q", path)
}

type closeWriter interface{ CloseWrite() error }

// counters samples what the process has spent so far.
type counters struct {
	cpu     time.Duration
	mallocs uint64
}

func sample() counters {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return counters{cpu: time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), mallocs: ms.Mallocs}
}

// throughput is one throughput measurement.
type throughput struct {
	bps, cpuPerGB, allocsPerWrite float64
}

// Throughput sends as much as it can for d on one connection to the sink,
// in writes of size bytes, and returns the rate the sink acknowledged with
// what the process spent on it.
func (e *Env) Throughput(ctx context.Context, path string, d time.Duration, size int) (throughput, error) {
	c, err := e.Dial(ctx, path, "sink")
	if err != nil {
		return throughput{}, err
	}
	defer c.Close()
	buf := make([]byte, size)
	start, before := time.Now(), sample()
	var sent int64
	writes := 0
	for time.Since(start) < d && ctx.Err() == nil {
		n, err := c.Write(buf)
		sent += int64(n)
		writes++
		if err != nil {
			return throughput{}, fmt.Errorf("%s: write: %w", path, err)
		}
	}
	cw, ok := c.(closeWriter)
	if !ok {
		return throughput{}, errors.New("connection cannot half-close")
	}
	if err := cw.CloseWrite(); err != nil {
		return throughput{}, err
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var ack [8]byte
	if _, err := io.ReadFull(c, ack[:]); err != nil {
		return throughput{}, fmt.Errorf("%s: reading the sink's count: %w", path, err)
	}
	elapsed, after := time.Since(start), sample()
	got := int64(binary.BigEndian.Uint64(ack[:]))
	if got != sent {
		return throughput{}, fmt.Errorf("%s: sink received %d bytes, sent %d", path, got, sent)
	}
	return throughput{
		bps:            float64(got) / elapsed.Seconds(),
		cpuPerGB:       (after.cpu - before.cpu).Seconds() / (float64(got) / 1e9),
		allocsPerWrite: float64(after.mallocs-before.mallocs) / float64(writes),
	}, nil
}

// RTT bounces one byte off the echo server for d (at most max times) on
// one connection and returns the median and 99th percentile, and the
// allocations per round trip.
func (e *Env) RTT(ctx context.Context, path string, d time.Duration, max int) (p50, p99 time.Duration, n int, allocs float64, err error) {
	c, err := e.Dial(ctx, path, "echo")
	if err != nil {
		return 0, 0, 0, 0, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(d + 10*time.Second))
	var b [1]byte
	samples := make([]time.Duration, 0, min(max, 1<<20))
	before := sample()
	start := time.Now()
	for time.Since(start) < d && len(samples) < max && ctx.Err() == nil {
		t0 := time.Now()
		if _, err := c.Write(b[:]); err != nil {
			return 0, 0, 0, 0, err
		}
		if _, err := io.ReadFull(c, b[:]); err != nil {
			return 0, 0, 0, 0, err
		}
		samples = append(samples, time.Since(t0))
	}
	after := sample()
	if len(samples) == 0 {
		return 0, 0, 0, 0, errors.New("no samples")
	}
	sort.Slice(samples, func(i, j int) bool { return samples[i] < samples[j] })
	allocs = float64(after.mallocs-before.mallocs) / float64(len(samples))
	return samples[len(samples)/2], samples[len(samples)*99/100], len(samples), allocs, nil
}

// Run measures every path, interleaved round by round so that machine
// noise hits all paths alike, and reports each path's median over rounds.
func Run(ctx context.Context, e *Env, o Options) ([]Result, error) {
	if o.Rounds < 1 || o.Duration <= 0 || o.Size < 1 {
		return nil, errors.New("rounds, duration and size must be positive")
	}
	tput, cpu, aw, ar := map[string][]float64{}, map[string][]float64{}, map[string][]float64{}, map[string][]float64{}
	rtt50 := map[string][]time.Duration{}
	rtt99 := map[string][]time.Duration{}
	samples := map[string]int{}
	for r := 0; r < o.Rounds; r++ {
		for _, p := range Paths() {
			t, err := e.Throughput(ctx, p, o.Duration, o.Size)
			if err != nil {
				return nil, err
			}
			a, b, n, allocs, err := e.RTT(ctx, p, o.Duration, 1_000_000)
			if err != nil {
				return nil, fmt.Errorf("%s: rtt: %w", p, err)
			}
			tput[p] = append(tput[p], t.bps)
			cpu[p] = append(cpu[p], t.cpuPerGB)
			aw[p] = append(aw[p], t.allocsPerWrite)
			ar[p] = append(ar[p], allocs)
			rtt50[p] = append(rtt50[p], a)
			rtt99[p] = append(rtt99[p], b)
			samples[p] += n
		}
	}
	var out []Result
	for _, p := range Paths() {
		out = append(out, Result{Path: p, Throughput: medianF(tput[p]), CPUPerGB: medianF(cpu[p]), AllocsPerWrite: medianF(aw[p]),
			RTT50: medianD(rtt50[p]), RTT99: medianD(rtt99[p]), AllocsPerRTT: medianF(ar[p]), RTTSamples: samples[p]})
	}
	return out, nil
}

func medianF(v []float64) float64 {
	sort.Float64s(v)
	return v[len(v)/2]
}

func medianD(v []time.Duration) time.Duration {
	sort.Slice(v, func(i, j int) bool { return v[i] < v[j] })
	return v[len(v)/2]
}

// Table renders results with ratios to the tcp path.
func Table(results []Result) string {
	var base Result
	for _, r := range results {
		if r.Path == "tcp" {
			base = r
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%-6s %12s %6s %9s %9s %6s %9s %6s %13s %11s\n",
		"path", "throughput", "x tcp", "CPU s/GB", "RTT p50", "x tcp", "RTT p99", "x tcp", "allocs/write", "allocs/RTT")
	for _, r := range results {
		fmt.Fprintf(&b, "%-6s %7.2f Gb/s %6.2f %9.2f %9s %6.2f %9s %6.2f %13.1f %11.1f\n",
			r.Path, r.Throughput*8/1e9, r.Throughput/base.Throughput, r.CPUPerGB,
			r.RTT50.Round(100*time.Nanosecond), float64(r.RTT50)/float64(base.RTT50),
			r.RTT99.Round(100*time.Nanosecond), float64(r.RTT99)/float64(base.RTT99),
			r.AllocsPerWrite, r.AllocsPerRTT)
	}
	return b.String()
}
