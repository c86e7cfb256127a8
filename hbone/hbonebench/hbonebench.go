// Package hbonebench measures the HBONE tunnel on loopback against plain
// TCP and against a plain TLS 1.3 proxy, in one run: single-stream
// throughput and one-byte round-trip latency.
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
	"net/netip"
	"sort"
	"sync"
	"time"

	"github.com/ambit-mesh/ambit/hbone"
	"github.com/ambit-mesh/ambit/identity"
)

// Result is one path's figures.
type Result struct {
	Path       string
	Throughput float64 // bytes per second, one stream
	RTT50      time.Duration
	RTT99      time.Duration
	RTTSamples int
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
	srv := &hbone.Server{TLSConfig: serverTLS, Handler: hbone.HandlerFunc(func(ctx context.Context, r *hbone.Request) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "tcp", r.Target.String())
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

// Throughput sends as much as it can for d on one connection to the sink
// and returns the bytes per second the sink acknowledged.
func (e *Env) Throughput(ctx context.Context, path string, d time.Duration, chunk int) (float64, error) {
	c, err := e.Dial(ctx, path, "sink")
	if err != nil {
		return 0, err
	}
	defer c.Close()
	buf := make([]byte, chunk)
	start := time.Now()
	var sent int64
	for time.Since(start) < d {
		n, err := c.Write(buf)
		sent += int64(n)
		if err != nil {
			return 0, fmt.Errorf("%s: write: %w", path, err)
		}
	}
	cw, ok := c.(closeWriter)
	if !ok {
		return 0, errors.New("connection cannot half-close")
	}
	if err := cw.CloseWrite(); err != nil {
		return 0, err
	}
	var ack [8]byte
	if _, err := io.ReadFull(c, ack[:]); err != nil {
		return 0, fmt.Errorf("%s: reading the sink's count: %w", path, err)
	}
	elapsed := time.Since(start)
	got := int64(binary.BigEndian.Uint64(ack[:]))
	if got != sent {
		return 0, fmt.Errorf("%s: sink received %d bytes, sent %d", path, got, sent)
	}
	return float64(got) / elapsed.Seconds(), nil
}

// RTT bounces one byte off the echo server for d (at most max times) on
// one connection and returns the median and 99th percentile.
func (e *Env) RTT(ctx context.Context, path string, d time.Duration, max int) (p50, p99 time.Duration, n int, err error) {
	c, err := e.Dial(ctx, path, "echo")
	if err != nil {
		return 0, 0, 0, err
	}
	defer c.Close()
	var b [1]byte
	var samples []time.Duration
	start := time.Now()
	for time.Since(start) < d && len(samples) < max {
		t0 := time.Now()
		if _, err := c.Write(b[:]); err != nil {
			return 0, 0, 0, err
		}
		if _, err := io.ReadFull(c, b[:]); err != nil {
			return 0, 0, 0, err
		}
		samples = append(samples, time.Since(t0))
	}
	if len(samples) == 0 {
		return 0, 0, 0, errors.New("no samples")
	}
	sort.Slice(samples, func(i, j int) bool { return samples[i] < samples[j] })
	return samples[len(samples)/2], samples[len(samples)*99/100], len(samples), nil
}

// Run measures every path, interleaved round by round so that machine
// noise hits all paths alike, and reports each path's median over rounds.
func Run(ctx context.Context, e *Env, rounds int, d time.Duration, chunk int) ([]Result, error) {
	tput := map[string][]float64{}
	rtt50 := map[string][]time.Duration{}
	rtt99 := map[string][]time.Duration{}
	samples := map[string]int{}
	for r := 0; r < rounds; r++ {
		for _, p := range Paths() {
			bps, err := e.Throughput(ctx, p, d, chunk)
			if err != nil {
				return nil, err
			}
			a, b, n, err := e.RTT(ctx, p, d, 1_000_000)
			if err != nil {
				return nil, fmt.Errorf("%s: rtt: %w", p, err)
			}
			tput[p] = append(tput[p], bps)
			rtt50[p] = append(rtt50[p], a)
			rtt99[p] = append(rtt99[p], b)
			samples[p] += n
		}
	}
	var out []Result
	for _, p := range Paths() {
		out = append(out, Result{Path: p, Throughput: medianF(tput[p]), RTT50: medianD(rtt50[p]), RTT99: medianD(rtt99[p]), RTTSamples: samples[p]})
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
	s := fmt.Sprintf("%-6s %14s %8s %12s %8s %12s\n", "path", "throughput", "x tcp", "RTT p50", "x tcp", "RTT p99")
	for _, r := range results {
		s += fmt.Sprintf("%-6s %9.2f Gb/s %8.2f %12s %8.2f %12s\n", r.Path, r.Throughput*8/1e9, r.Throughput/base.Throughput,
			r.RTT50.Round(100*time.Nanosecond), float64(r.RTT50)/float64(base.RTT50), r.RTT99.Round(100*time.Nanosecond))
	}
	return s
}
