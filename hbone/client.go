package hbone

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/identity"
)

// Pool defaults, as upstream ztunnel's.
const (
	DefaultMaxStreamsPerConn = 100
	DefaultIdleTimeout       = 5 * time.Minute
	DialTimeout              = 10 * time.Second
	tcpKeepaliveIdle         = 180 * time.Second
	tcpKeepaliveInterval     = 180 * time.Second
	tcpKeepaliveCount        = 9
)

// Key selects the connections a stream may share: streams multiplex only
// among user connections with the same source identity, expected
// destination identities, source IP and destination address.
type Key struct {
	Src     identity.SPIFFE
	Dst     []identity.SPIFFE
	SrcIP   netip.Addr     // local address to dial from (zero: any)
	DstAddr netip.AddrPort // the HBONE endpoint, usually podIP:15008
}

func (k Key) String() string {
	ids := make([]string, len(k.Dst))
	for i, d := range k.Dst {
		ids[i] = d.String()
	}
	return k.Src.String() + "|" + strings.Join(ids, ",") + "|" + k.SrcIP.String() + "|" + k.DstAddr.String()
}

// Pool dials HBONE streams, reusing connections per Key.
type Pool struct {
	// TLSConfig returns the client TLS configuration for a key: the source
	// identity's certificate and the expected destination identities (see
	// identity.ClientTLSConfig).
	TLSConfig func(ctx context.Context, k Key) (*tls.Config, error)
	// Control, if set, is applied to every socket before it connects.
	Control func(network, address string, c syscall.RawConn) error
	// DialTCP, if set, opens the TCP connection instead of a plain dialer
	// (ztunnel creates the socket inside the pod's network namespace, with
	// its mark).
	DialTCP func(ctx context.Context, network, addr string) (net.Conn, error)
	// MaxStreamsPerConn caps streams per connection (default 100).
	MaxStreamsPerConn int
	// IdleTimeout releases connections unused this long (default 5 min).
	IdleTimeout time.Duration
	Logger      *slog.Logger

	once      sync.Once
	transport *http2.Transport
	mu        sync.Mutex
	conns     map[string][]*poolConn
	dialing   map[string]chan struct{}
	closed    bool
	stopReap  chan struct{}
}

type poolConn struct {
	cc       *http2.ClientConn
	raw      net.Conn
	active   int // streams we have open on it
	lastUsed time.Time
}

func (p *Pool) init() {
	p.once.Do(func() {
		if p.MaxStreamsPerConn <= 0 {
			p.MaxStreamsPerConn = DefaultMaxStreamsPerConn
		}
		if p.IdleTimeout <= 0 {
			p.IdleTimeout = DefaultIdleTimeout
		}
		if p.Logger == nil {
			p.Logger = slog.New(slog.DiscardHandler)
		}
		t1 := &http.Transport{HTTP2: &http.HTTP2Config{
			MaxReadFrameSize:              MaxFrameSize,
			MaxReceiveBufferPerConnection: ConnWindow,
			MaxReceiveBufferPerStream:     StreamWindow,
			SendPingTimeout:               KeepaliveInterval,
			PingTimeout:                   KeepaliveTimeout,
		}}
		t2, err := http2.ConfigureTransports(t1)
		if err != nil {
			// Only fails for a transport already configured; ours is new.
			t2 = &http2.Transport{}
		}
		t2.MaxHeaderListSize = ClientMaxHeaderBytes
		t2.MaxReadFrameSize = MaxFrameSize
		t2.ReadIdleTimeout = KeepaliveInterval
		t2.PingTimeout = KeepaliveTimeout
		t2.DisableCompression = true
		p.transport = t2
		p.conns = map[string][]*poolConn{}
		p.dialing = map[string]chan struct{}{}
		p.stopReap = make(chan struct{})
		go p.reap()
	})
}

// Close closes every pooled connection.
func (p *Pool) Close() {
	p.init()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return
	}
	p.closed = true
	close(p.stopReap)
	for k, list := range p.conns {
		for _, pc := range list {
			pc.cc.Close()
		}
		delete(p.conns, k)
	}
}

// Stats reports the connections per key and their open streams.
func (p *Pool) Stats() map[string][]int {
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

// reap releases idle connections and forgets dead ones.
func (p *Pool) reap() {
	tick := time.NewTicker(min(p.IdleTimeout/4, 30*time.Second))
	defer tick.Stop()
	for {
		select {
		case <-p.stopReap:
			return
		case <-tick.C:
		}
		p.mu.Lock()
		for k, list := range p.conns {
			keep := list[:0]
			for _, pc := range list {
				idle := pc.active == 0 && time.Since(pc.lastUsed) > p.IdleTimeout
				dead := pc.active == 0 && !pc.cc.CanTakeNewRequest()
				if idle || dead {
					pc.cc.Close()
					continue
				}
				keep = append(keep, pc)
			}
			if len(keep) == 0 {
				delete(p.conns, k)
			} else {
				p.conns[k] = keep
			}
		}
		p.mu.Unlock()
	}
}

// Dial opens a CONNECT stream to target (the :authority, "ip:port") through
// the HBONE endpoint of key, reusing a pooled connection when one has room.
func (p *Pool) Dial(ctx context.Context, key Key, target string, header http.Header) (*Conn, error) {
	p.init()
	if _, err := ParseAuthority(target); err != nil {
		return nil, fmt.Errorf("hbone: %w", err)
	}
	pc, err := p.get(ctx, key)
	if err != nil {
		return nil, err
	}
	pr, pw := io.Pipe()
	req := &http.Request{
		Method: http.MethodConnect,
		URL:    &url.URL{Scheme: "https", Host: target},
		Host:   target,
		Header: header.Clone(),
		Body:   pr,
	}
	if req.Header == nil {
		req.Header = http.Header{}
	}
	req = req.WithContext(context.WithoutCancel(ctx)) // the stream outlives the dial
	type result struct {
		resp *http.Response
		err  error
	}
	done := make(chan result, 1)
	go func() {
		resp, err := pc.cc.RoundTrip(req)
		done <- result{resp, err}
	}()
	var res result
	select {
	case res = <-done:
	case <-ctx.Done():
		pw.CloseWithError(ctx.Err())
		go func() {
			if r := <-done; r.resp != nil {
				r.resp.Body.Close()
			}
		}()
		p.release(key, pc)
		return nil, fmt.Errorf("hbone: CONNECT %s via %s: %w", target, key.DstAddr, ctx.Err())
	}
	if res.err != nil {
		pw.Close()
		p.release(key, pc)
		return nil, fmt.Errorf("hbone: CONNECT %s via %s: %w", target, key.DstAddr, res.err)
	}
	if res.resp.StatusCode != http.StatusOK {
		res.resp.Body.Close()
		pw.Close()
		p.release(key, pc)
		return nil, &StatusError{Code: res.resp.StatusCode, Reason: fmt.Sprintf("CONNECT %s via %s refused", target, key.DstAddr)}
	}
	c := &Conn{body: res.resp.Body, pw: pw, local: pc.raw.LocalAddr(), remote: pc.raw.RemoteAddr(), Peer: peerOf(res.resp.TLS)}
	c.onClose = func() { p.release(key, pc) }
	return c, nil
}

func peerOf(cs *tls.ConnectionState) identity.SPIFFE {
	if cs == nil {
		return identity.SPIFFE{}
	}
	id, _ := identity.PeerIdentity(*cs)
	return id
}

// get returns a connection for key with a stream reserved on it.
func (p *Pool) get(ctx context.Context, key Key) (*poolConn, error) {
	k := key.String()
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return nil, errors.New("hbone: pool closed")
		}
		for _, pc := range p.conns[k] {
			if pc.active < p.MaxStreamsPerConn && pc.cc.ReserveNewRequest() {
				pc.active++
				pc.lastUsed = time.Now()
				p.mu.Unlock()
				return pc, nil
			}
		}
		if wait, ok := p.dialing[k]; ok {
			p.mu.Unlock()
			select {
			case <-wait:
				continue
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		wait := make(chan struct{})
		p.dialing[k] = wait
		p.mu.Unlock()

		pc, err := p.dial(ctx, key)

		p.mu.Lock()
		delete(p.dialing, k)
		close(wait)
		if err != nil {
			p.mu.Unlock()
			return nil, err
		}
		if p.closed {
			p.mu.Unlock()
			pc.cc.Close()
			return nil, errors.New("hbone: pool closed")
		}
		pc.active = 1
		pc.lastUsed = time.Now()
		p.conns[k] = append(p.conns[k], pc)
		p.mu.Unlock()
		if !pc.cc.ReserveNewRequest() {
			p.release(key, pc)
			continue
		}
		return pc, nil
	}
}

func (p *Pool) release(key Key, pc *poolConn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	pc.active--
	pc.lastUsed = time.Now()
}

// dial opens a new TLS + HTTP/2 connection for key.
func (p *Pool) dial(ctx context.Context, key Key) (*poolConn, error) {
	if !key.DstAddr.IsValid() {
		return nil, errors.New("hbone: no destination address")
	}
	conf, err := p.TLSConfig(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("hbone: TLS for %s: %w", key.Src, err)
	}
	d := &net.Dialer{
		Timeout:         DialTimeout,
		KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: tcpKeepaliveIdle, Interval: tcpKeepaliveInterval, Count: tcpKeepaliveCount},
		Control: func(network, address string, c syscall.RawConn) error {
			var serr error
			if err := c.Control(func(fd uintptr) {
				ms := int((tcpKeepaliveIdle + tcpKeepaliveInterval*tcpKeepaliveCount) / time.Millisecond)
				serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, ms)
			}); err != nil {
				return err
			}
			if serr != nil {
				return serr
			}
			if p.Control != nil {
				return p.Control(network, address, c)
			}
			return nil
		},
	}
	if key.SrcIP.IsValid() {
		d.LocalAddr = &net.TCPAddr{IP: key.SrcIP.AsSlice()}
	}
	dialFn := d.DialContext
	if p.DialTCP != nil {
		dialFn = p.DialTCP
	}
	dctx, cancel := context.WithTimeout(ctx, DialTimeout)
	defer cancel()
	raw, err := dialFn(dctx, "tcp", key.DstAddr.String())
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() && key.DstAddr.Port() == Port {
			return nil, fmt.Errorf("hbone: connecting to %s timed out (maybe a NetworkPolicy is blocking HBONE port %d): %w", key.DstAddr, Port, err)
		}
		return nil, fmt.Errorf("hbone: connecting to %s: %w", key.DstAddr, err)
	}
	conf = conf.Clone()
	conf.NextProtos = []string{"h2"}
	conf.ServerName = ""
	tc := tls.Client(raw, conf)
	if err := tc.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, fmt.Errorf("hbone: TLS handshake with %s: %w", key.DstAddr, err)
	}
	if tc.ConnectionState().NegotiatedProtocol != "h2" {
		tc.Close()
		return nil, fmt.Errorf("hbone: %s did not negotiate h2", key.DstAddr)
	}
	cc, err := p.transport.NewClientConn(tc)
	if err != nil {
		tc.Close()
		return nil, fmt.Errorf("hbone: HTTP/2 with %s: %w", key.DstAddr, err)
	}
	p.Logger.Debug("HBONE connection", "key", key.String())
	return &poolConn{cc: cc, raw: tc}, nil
}

// Conn is one HBONE stream, usable as a net.Conn.
type Conn struct {
	body          io.ReadCloser
	pw            *io.PipeWriter
	local, remote net.Addr
	// Peer is the identity the server proved in the TLS handshake.
	Peer identity.SPIFFE

	closeOnce sync.Once
	onClose   func()
}

func (c *Conn) Read(b []byte) (int, error)  { return c.body.Read(b) }
func (c *Conn) Write(b []byte) (int, error) { return c.pw.Write(b) }

// CloseWrite ends the stream in the client-to-server direction
// (END_STREAM); the server half-closes its upstream.
func (c *Conn) CloseWrite() error { return c.pw.Close() }

// Close ends the stream both ways.
func (c *Conn) Close() error {
	c.closeOnce.Do(func() {
		c.pw.CloseWithError(net.ErrClosed)
		c.body.Close()
		if c.onClose != nil {
			c.onClose()
		}
	})
	return nil
}

func (c *Conn) LocalAddr() net.Addr                { return c.local }
func (c *Conn) RemoteAddr() net.Addr               { return c.remote }
func (c *Conn) SetDeadline(t time.Time) error      { return errors.ErrUnsupported }
func (c *Conn) SetReadDeadline(t time.Time) error  { return errors.ErrUnsupported }
func (c *Conn) SetWriteDeadline(t time.Time) error { return errors.ErrUnsupported }

// NewTraceparent returns a W3C traceparent with random ids, as ztunnel sets
// per outbound connection (it doubles as a connection id in logs).
func NewTraceparent() string {
	var b [24]byte
	_, _ = rand.Read(b[:])
	return "00-" + hex.EncodeToString(b[:16]) + "-" + hex.EncodeToString(b[16:]) + "-00"
}

// Forwarded returns the forwarded header value for a client address, with
// host set when the original destination was a service.
func Forwarded(src netip.AddrPort, host string) string {
	v := `for="` + src.String() + `"`
	if host != "" {
		v += ";host=" + host
	}
	return v
}

// BaggageInfo describes the source workload in the baggage header.
type BaggageInfo struct {
	Cluster, Namespace         string
	WorkloadType, WorkloadName string // WorkloadType: deployment, cronjob, pod or job
	Service, Version           string
	Region, Zone               string
}

// Baggage returns the baggage header value ztunnel sends: comma-joined
// key=value pairs, absent keys omitted.
func Baggage(b BaggageInfo) string {
	var parts []string
	add := func(k, v string) {
		if v != "" {
			parts = append(parts, k+"="+v)
		}
	}
	add("k8s.cluster.name", b.Cluster)
	add("k8s.namespace.name", b.Namespace)
	if b.WorkloadType != "" {
		add("k8s."+b.WorkloadType+".name", b.WorkloadName)
	}
	add("service.name", b.Service)
	add("service.version", b.Version)
	add("cloud.region", b.Region)
	add("cloud.availability_zone", b.Zone)
	return strings.Join(parts, ",")
}
