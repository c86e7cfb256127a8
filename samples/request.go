package samples

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
)

// replyHead is how much of an HTTP answer the client keeps to find the pod
// and source in it; the rest is read and counted.
const replyHead = 64 << 10

// newRequester returns the requester for u's scheme.
func newRequester(u *url.URL, cfg ClientConfig) (requester, error) {
	payload := strings.Repeat("x", cfg.Payload)
	host := ""
	for k, vs := range cfg.Headers {
		if http.CanonicalHeaderKey(k) == "Host" && len(vs) > 0 {
			host = vs[0]
		}
	}
	switch u.Scheme {
	case "http", "h2c":
		conns := &connSet{m: map[*trackedConn]struct{}{}}
		tr := &http.Transport{
			DialContext:         conns.dial,
			DisableKeepAlives:   cfg.NewConn,
			MaxIdleConnsPerHost: cfg.Concurrency,
			DisableCompression:  true,
		}
		if u.Scheme == "h2c" {
			var p http.Protocols
			p.SetUnencryptedHTTP2(true)
			tr.Protocols = &p
		}
		target := *u
		target.Scheme = "http"
		return &httpRequester{
			tr: tr, conns: conns,
			client: &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error {
				return http.ErrUseLastResponse // report 3xx as they are
			}},
			target: target.String(), host: host, headers: cfg.Headers, payload: payload,
		}, nil
	case "grpc":
		g := &grpcRequester{target: u.Host, payload: payload, md: metadata.MD{},
			opts: []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}}
		if host != "" {
			g.opts = append(g.opts, grpc.WithAuthority(host))
		}
		for k, vs := range cfg.Headers {
			if http.CanonicalHeaderKey(k) != "Host" {
				g.md.Append(k, vs...)
			}
		}
		if !cfg.NewConn {
			conn, err := grpc.NewClient(g.target, g.opts...)
			if err != nil {
				return nil, fmt.Errorf("client: grpc target %s: %w", g.target, err)
			}
			g.shared = conn
		}
		return g, nil
	case "tcp":
		return &tcpRequester{addr: u.Host, payload: payload}, nil
	case "banner":
		return &bannerRequester{addr: u.Host, payload: payload}, nil
	}
	return nil, fmt.Errorf("client: target %q: unsupported scheme %q (want http, h2c, grpc, tcp or banner)", u.Redacted(), u.Scheme)
}

type httpRequester struct {
	tr      *http.Transport
	conns   *connSet
	client  *http.Client
	target  string
	host    string
	headers http.Header
	payload string
}

func (h *httpRequester) do(ctx context.Context, _ int) Result {
	method, body := http.MethodGet, io.Reader(nil)
	if h.payload != "" {
		method, body = http.MethodPost, strings.NewReader(h.payload)
	}
	req, err := http.NewRequestWithContext(ctx, method, h.target, body)
	if err != nil {
		return errResult(fmt.Errorf("building request: %w", err))
	}
	for k, vs := range h.headers {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	if h.host != "" {
		req.Header.Del("Host")
		req.Host = h.host
	}
	resp, err := h.client.Do(req)
	if err != nil {
		return errResult(describe(ctx, err))
	}
	defer resp.Body.Close()
	head, err := io.ReadAll(io.LimitReader(resp.Body, replyHead))
	n := int64(len(head))
	if err == nil {
		var rest int64
		rest, err = io.Copy(io.Discard, resp.Body)
		n += rest
	}
	if err != nil {
		return errResult(describe(ctx, fmt.Errorf("reading the %d answer after %d bytes: %w", resp.StatusCode, n, err)))
	}
	r := Result{Code: fmt.Sprint(resp.StatusCode), Bytes: n}
	r.Pod, r.Source = decodeReply(resp.Header, head)
	return r
}

// close closes every connection, idle or not: an HTTP/2 connection whose
// streams were reset at a timeout is not idle yet, and must not outlive
// the run.
func (h *httpRequester) close() {
	h.tr.CloseIdleConnections()
	h.conns.closeAll()
}

// connSet dials TCP and keeps the connections open until closeAll.
type connSet struct {
	mu sync.Mutex
	m  map[*trackedConn]struct{}
}

type trackedConn struct {
	net.Conn
	set  *connSet
	once sync.Once
}

func (c *trackedConn) Close() error {
	c.once.Do(func() {
		c.set.mu.Lock()
		delete(c.set.m, c)
		c.set.mu.Unlock()
	})
	return c.Conn.Close()
}

func (s *connSet) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	tc := &trackedConn{Conn: c, set: s}
	s.mu.Lock()
	s.m[tc] = struct{}{}
	s.mu.Unlock()
	return tc, nil
}

func (s *connSet) closeAll() {
	s.mu.Lock()
	conns := make([]*trackedConn, 0, len(s.m))
	for c := range s.m {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
}

type grpcRequester struct {
	target  string
	opts    []grpc.DialOption
	md      metadata.MD
	payload string
	shared  *grpc.ClientConn // nil: a new connection per request
}

func (g *grpcRequester) do(ctx context.Context, seq int) Result {
	conn := g.shared
	if conn == nil {
		var err error
		conn, err = grpc.NewClient(g.target, g.opts...)
		if err != nil {
			return errResult(fmt.Errorf("grpc target %s: %w", g.target, err))
		}
		defer conn.Close()
	}
	in, err := structpb.NewStruct(map[string]any{"seq": float64(seq), "payload": g.payload})
	if err != nil {
		return errResult(fmt.Errorf("building request: %w", err))
	}
	out := &structpb.Struct{}
	if len(g.md) > 0 {
		ctx = metadata.NewOutgoingContext(ctx, g.md)
	}
	if err := conn.Invoke(ctx, EchoMethod, in, out); err != nil {
		st := status.Convert(err)
		return Result{Code: st.Code().String(), Err: st.Message()}
	}
	rep := EchoReplyFromStruct(out)
	return Result{Code: "OK", Pod: rep.Pod, Source: rep.Source, Bytes: int64(proto.Size(out))}
}

func (g *grpcRequester) close() {
	if g.shared != nil {
		g.shared.Close()
	}
}

// dial connects to addr; the connection is closed when ctx ends, so that
// no read or write outlives the request.
func dial(ctx context.Context, addr string) (net.Conn, func(), error) {
	c, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, nil, describe(ctx, err)
	}
	stop := context.AfterFunc(ctx, func() { c.Close() })
	return c, func() { stop(); c.Close() }, nil
}

// ioErr names what failed and says whether the request's time ran out.
func ioErr(ctx context.Context, what string, err error) Result {
	if ctx.Err() != nil && errors.Is(err, net.ErrClosed) {
		err = ctx.Err()
	}
	return errResult(describe(ctx, fmt.Errorf("%s: %w", what, err)))
}

type tcpRequester struct {
	addr    string
	payload string
}

func (t *tcpRequester) do(ctx context.Context, seq int) Result {
	c, done, err := dial(ctx, t.addr)
	if err != nil {
		return errResult(err)
	}
	defer done()
	msg := fmt.Sprintf("ambit-tcp-echo %d %s\n", seq, t.payload)
	werr := make(chan error, 1)
	go func() { // write while reading: the echo may fill the socket buffers
		_, err := io.WriteString(c, msg)
		werr <- err
	}()
	got := make([]byte, len(msg))
	n, err := io.ReadFull(c, got)
	if err != nil {
		return ioErr(ctx, fmt.Sprintf("reading the echo after %d of %d bytes", n, len(msg)), err)
	}
	if err := <-werr; err != nil {
		return ioErr(ctx, "writing", err)
	}
	if string(got) != msg {
		return errResult(fmt.Errorf("echo differs from what was sent (%d bytes)", len(msg)))
	}
	return Result{Code: "ok", Bytes: int64(n)}
}

func (t *tcpRequester) close() {}

type bannerRequester struct {
	addr    string
	payload string
}

func (b *bannerRequester) do(ctx context.Context, seq int) Result {
	c, done, err := dial(ctx, b.addr)
	if err != nil {
		return errResult(err)
	}
	defer done()
	rd := bufio.NewReader(c)
	// Read before writing anything: the server must speak first.
	greeting, err := rd.ReadString('\n')
	if err != nil {
		return ioErr(ctx, "reading the greeting", err)
	}
	n := int64(len(greeting))
	fields := strings.Fields(greeting)
	if len(fields) < 2 || fields[0] != "220" {
		return errResult(fmt.Errorf("bad greeting %q", greeting))
	}
	line := fmt.Sprintf("HELO %d", seq)
	if b.payload != "" {
		line += " " + b.payload
	}
	if _, err := fmt.Fprintf(c, "%s\r\nQUIT\r\n", line); err != nil {
		return ioErr(ctx, "writing", err)
	}
	for _, want := range []string{"250 " + line, "221 bye"} {
		got, err := rd.ReadString('\n')
		n += int64(len(got))
		if err != nil {
			return ioErr(ctx, "reading a reply", err)
		}
		if strings.TrimRight(got, "\r\n") != want {
			return errResult(fmt.Errorf("got %.80q, want %.80q", strings.TrimRight(got, "\r\n"), want))
		}
	}
	return Result{Code: "ok", Pod: fields[1], Bytes: n}
}

func (b *bannerRequester) close() {}
