package waypoint

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"istio.io/istio/pkg/workloadapi"

	"github.com/ambit-mesh/ambit/waypoint/rbac"
	"github.com/ambit-mesh/ambit/waypoint/router"
)

// maxRetryBody is the largest request body kept for retries and mirrors;
// a larger one is sent once, unmirrored.
const maxRetryBody = 1 << 20

// plan is what the route decided for one request, for the round tripper.
type plan struct {
	rec      *record
	host     string         // the backend service's hostname ("" for a workload target)
	port     uint16         // its port
	fixed    netip.AddrPort // a workload target's address
	h2       bool
	attempts int
	perTry   time.Duration
	retry    *router.RetryPolicy
	body     []byte // kept for retries, nil when not

	respHeaders router.HeaderOps // the route's response header changes
}

type planKey struct{}

// serveHTTP handles one request on a tunnel: authorization, route, then
// the backend over HBONE.
func (w *Waypoint) serveHTTP(rw http.ResponseWriter, req *http.Request) {
	t := tunnelOf(req.Context())
	if t == nil {
		http.Error(rw, "no tunnel", http.StatusInternalServerError)
		return
	}
	rec := &record{start: time.Now(), t: t, proto: "http", method: req.Method, path: req.URL.RequestURI(), host: req.Host}
	if isGRPC(req) {
		rec.proto = "grpc"
	}
	cw := &countingWriter{ResponseWriter: rw}
	defer func() {
		rec.respBytes = cw.n
		if rec.code == 0 {
			rec.code = cw.code
		}
		w.finish(rec)
	}()
	body := &countingBody{ReadCloser: req.Body}
	req.Body = body
	defer func() { rec.reqBytes = body.n }()
	// Normalize the path once, as Envoy does before its filters: what
	// authorization checks is what routing matches and the backend gets.
	if clean := normalizePath(req.URL.Path); clean != req.URL.Path {
		req.URL.Path, req.URL.RawPath = clean, ""
	}
	rec.trace = childTraceparent(req.Header.Get("Traceparent"))
	req.Header.Set("Traceparent", rec.trace)

	// Authorization first, as Envoy's RBAC filter runs before its router.
	targets := []rbac.Target{{Kind: rbac.KindGatewayClass, Name: gatewayClass}, {Kind: rbac.KindGateway, Namespace: w.cfg.Namespace, Name: w.cfg.Name}}
	if t.service != nil {
		targets = append(targets, rbac.Target{Kind: rbac.KindService, Namespace: t.service.GetNamespace(), Name: t.service.GetName()})
	}
	d := w.cfg.L7.Engine().Evaluate(targets, w.attributes(t, req))
	rec.authz = d.Reason
	if !d.Allowed {
		rec.code, rec.flags = http.StatusForbidden, "-"
		writeLocal(cw, http.StatusForbidden, "RBAC: access denied")
		return
	}

	p := &plan{rec: rec, h2: req.ProtoMajor == 2, attempts: 1}
	var dec router.Decision
	if t.service != nil {
		name := routeName(t.service.GetHostname(), t.target.Port())
		rt, err := w.cfg.L7.Router(name)
		if err != nil {
			rec.err, rec.flags = err.Error(), "NR"
			writeLocal(cw, http.StatusInternalServerError, err.Error())
			return
		}
		var ok bool
		dec, ok = rt.Decide(router.RequestFrom(req), rand.Uint64N)
		if !ok {
			rec.code, rec.flags = http.StatusNotFound, "NR"
			writeLocal(cw, http.StatusNotFound, "no route matched")
			return
		}
		rec.route = dec.RouteName
	} else {
		p.fixed = t.target // a workload target: to that pod, no service routes
	}
	switch {
	case dec.Redirect != nil:
		rec.code = dec.Redirect.Status
		dec.ResponseHeaders.ApplyResponse(cw.Header())
		cw.Header().Set("Location", dec.Redirect.Location)
		cw.WriteHeader(dec.Redirect.Status)
		return
	case dec.Direct != nil:
		rec.code = dec.Direct.Status
		dec.ResponseHeaders.ApplyResponse(cw.Header())
		if rec.code >= 500 {
			rec.err = dec.Direct.Body
		}
		writeLocal(cw, dec.Direct.Status, dec.Direct.Body)
		return
	}
	if dec.Cluster != "" {
		host, port, ok := parseClusterName(dec.Cluster)
		if !ok {
			rec.err = "unknown cluster " + dec.Cluster
			writeLocal(cw, http.StatusInternalServerError, rec.err)
			return
		}
		p.host, p.port = host, port
	}
	ctx := req.Context()
	if dec.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, dec.Timeout)
		defer cancel()
	}
	if r := dec.Retry; r != nil && r.NumRetries > 0 {
		p.attempts = 1 + int(r.NumRetries)
		p.retry = r
	}
	p.perTry = dec.PerTryTimeout
	keep := p.attempts > 1 || len(dec.Mirrors) > 0
	if keep && req.Body != nil && req.Body != http.NoBody {
		b, err := io.ReadAll(io.LimitReader(req.Body, maxRetryBody+1))
		if err != nil {
			rec.err, rec.flags = err.Error(), "DC"
			return
		}
		if len(b) > maxRetryBody {
			p.attempts = 1
			req.Body = io.NopCloser(io.MultiReader(bytes.NewReader(b), req.Body))
		} else {
			p.body = b
			req.Body = io.NopCloser(bytes.NewReader(b))
		}
	}
	// The request is the server's, ours to change: the reverse proxy makes
	// the one copy that goes out.
	out := req.WithContext(context.WithValue(ctx, planKey{}, p))
	dec.RequestHeaders.ApplyRequest(out.Header)
	if dec.PathRewrite != "" {
		path, query, hasQuery := strings.Cut(dec.PathRewrite, "?")
		out.URL.Path, out.URL.RawPath = path, ""
		if hasQuery {
			out.URL.RawQuery = query
		}
	}
	if dec.HostRewrite != "" {
		out.Host = dec.HostRewrite
	}
	for _, m := range dec.Mirrors {
		w.mirror(out, m, p)
	}
	p.respHeaders = dec.ResponseHeaders
	w.rp.ServeHTTP(cw, out)
	if g := cw.Header().Get("Grpc-Status"); g != "" {
		rec.grpc = g
	}
}

// newReverseProxy returns the waypoint's one reverse proxy: what it does
// per request comes from the request's plan.
func newReverseProxy(w *Waypoint) *httputil.ReverseProxy {
	return &httputil.ReverseProxy{
		Rewrite:       func(pr *httputil.ProxyRequest) { pr.Out.URL.Scheme = "http" },
		Transport:     attempts{w},
		FlushInterval: -1,
		BufferPool:    newCopyBuffers(),
		ModifyResponse: func(resp *http.Response) error {
			p := planOf(resp.Request)
			p.respHeaders.ApplyResponse(resp.Header)
			p.rec.code = resp.StatusCode
			p.rec.grpc = resp.Header.Get("Grpc-Status")
			return nil
		},
		ErrorHandler: func(rw http.ResponseWriter, r *http.Request, err error) {
			rec := planOf(r).rec
			rec.err = err.Error()
			switch {
			case errors.Is(err, context.DeadlineExceeded):
				rec.code, rec.flags = http.StatusGatewayTimeout, "UT"
				writeLocal(rw, http.StatusGatewayTimeout, "upstream request timeout")
			case errors.Is(err, context.Canceled):
				rec.code, rec.flags = 499, "DC"
			default:
				rec.code, rec.flags = http.StatusServiceUnavailable, "UF"
				writeLocal(rw, http.StatusServiceUnavailable, "upstream connect error or disconnect/reset before headers: "+err.Error())
			}
		},
	}
}

// planOf returns a proxied request's plan (serveHTTP puts one in every
// request it hands the reverse proxy).
func planOf(r *http.Request) *plan {
	if p, _ := r.Context().Value(planKey{}).(*plan); p != nil {
		return p
	}
	return &plan{rec: &record{}} // unreachable; keeps a mistake from panicking
}

// copyBuffers lends the reverse proxy its 32 KiB copy buffers, instead of
// a new one per response.
type copyBuffers struct{ pool sync.Pool }

func newCopyBuffers() *copyBuffers {
	return &copyBuffers{pool: sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}}
}

func (c *copyBuffers) Get() []byte  { return *c.pool.Get().(*[]byte) }
func (c *copyBuffers) Put(b []byte) { c.pool.Put(&b) }

// attempts is the ReverseProxy's transport: it picks an endpoint per
// attempt and retries as the route says.
type attempts struct{ w *Waypoint }

func (a attempts) RoundTrip(req *http.Request) (*http.Response, error) {
	p, _ := req.Context().Value(planKey{}).(*plan)
	if p == nil {
		return nil, errors.New("waypoint: request without a plan")
	}
	tr := a.w.up.h1
	if p.h2 {
		tr = a.w.up.h2
	}
	for attempt := 1; ; attempt++ {
		addr := p.fixed
		var wl *workloadapi.Workload
		if !addr.IsValid() {
			var err error
			wl, addr, err = a.w.up.pick(p.host, p.port)
			if err != nil {
				p.rec.flags = "UH"
				return nil, err
			}
		} else {
			wl = a.w.cfg.Index.WorkloadByIP(addr.Addr())
		}
		p.rec.upstream, p.rec.dstWL = addr.String(), wl
		// The first attempt sends the proxy's own outgoing request; a
		// retry needs a fresh copy, as the transport may still hold the
		// last one.
		r := req
		if attempt > 1 {
			r = req.Clone(req.Context())
		}
		r.URL.Host = addr.String()
		if p.body != nil {
			r.Body = io.NopCloser(bytes.NewReader(p.body))
			r.ContentLength = int64(len(p.body))
		}
		var cancel context.CancelFunc = func() {}
		if p.perTry > 0 {
			var ctx context.Context
			ctx, cancel = context.WithTimeout(r.Context(), p.perTry)
			r = r.WithContext(ctx)
		}
		resp, err := tr.RoundTrip(r)
		last := attempt >= p.attempts || req.Context().Err() != nil
		var retriable bool
		if err != nil {
			retriable = req.Context().Err() == nil && (p.retry.RetriesOn("connect-failure") || p.retry.RetriesOn("reset") ||
				p.retry.RetriesOn("refused-stream") || p.retry.RetriesOn("5xx") || p.retry.RetriesOn("gateway-error"))
		} else {
			retriable = p.retry.RetriableStatus(resp.StatusCode)
		}
		if !last && retriable && (p.body != nil || req.Body == nil || req.Body == http.NoBody) {
			if resp != nil {
				_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
				resp.Body.Close()
			}
			cancel()
			p.rec.retries++
			if b := p.retry.BaseInterval; b > 0 {
				select {
				case <-time.After(b * time.Duration(attempt)):
				case <-req.Context().Done():
					return nil, req.Context().Err()
				}
			}
			continue
		}
		if err != nil {
			cancel()
			if errors.Is(err, context.DeadlineExceeded) && req.Context().Err() == nil {
				// The per-try timeout ended the last attempt.
				return nil, fmt.Errorf("per-try timeout %v: %w", p.perTry, err)
			}
			return nil, err
		}
		resp.Body = &cancelBody{ReadCloser: resp.Body, cancel: cancel}
		return resp, nil
	}
}

// mirror sends a copy of the request to a mirror cluster and forgets
// it: its answer is discarded, its failure only logged.
func (w *Waypoint) mirror(req *http.Request, cluster string, p *plan) {
	host, port, ok := parseClusterName(cluster)
	if !ok || (req.Body != nil && req.Body != http.NoBody && p.body == nil) {
		return
	}
	m := req.Clone(context.Background())
	m.Host = strings.TrimSuffix(req.Host, ":"+strconv.Itoa(int(p.port))) + "-shadow"
	if p.body != nil {
		m.Body = io.NopCloser(bytes.NewReader(p.body))
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, addr, err := w.up.pick(host, port)
		if err != nil {
			w.cfg.Logger.Debug("mirror", "cluster", cluster, "err", err)
			return
		}
		m = m.WithContext(ctx)
		m.URL.Scheme, m.URL.Host, m.RequestURI = "http", addr.String(), ""
		tr := w.up.h1
		if p.h2 {
			tr = w.up.h2
		}
		resp, err := tr.RoundTrip(m)
		if err != nil {
			w.cfg.Logger.Debug("mirror", "cluster", cluster, "err", err)
			return
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}()
}

// attributes describes a request for the authorization engine.
func (w *Waypoint) attributes(t *tunnel, req *http.Request) rbac.Attributes {
	a := rbac.Attributes{Method: req.Method, Path: req.URL.Path, Host: req.Host, Header: req.Header,
		DestinationIP: t.target.Addr(), DestinationPort: t.target.Port(), DirectRemoteIP: t.src, RemoteIP: t.src}
	if !t.peer.IsZero() {
		a.Principal = t.peer.URL().String()
	}
	return a
}

func isGRPC(req *http.Request) bool {
	return strings.HasPrefix(req.Header.Get("Content-Type"), "application/grpc")
}

// writeLocal answers from the waypoint itself.
func writeLocal(rw http.ResponseWriter, code int, body string) {
	rw.Header().Set("Content-Type", "text/plain")
	rw.Header().Set("Server", "ambit-waypoint")
	rw.WriteHeader(code)
	_, _ = io.WriteString(rw, body)
}

// childTraceparent continues a W3C trace with a new span id, or starts
// one when the request has none (or a malformed one).
func childTraceparent(in string) string {
	var span [8]byte
	_, _ = crand.Read(span[:])
	parts := strings.Split(in, "-")
	if len(parts) == 4 && len(parts[0]) == 2 && len(parts[1]) == 32 && len(parts[2]) == 16 && len(parts[3]) == 2 &&
		lowerHex(parts[0]) && lowerHex(parts[1]) && lowerHex(parts[2]) && lowerHex(parts[3]) &&
		parts[0] != "ff" && parts[1] != strings.Repeat("0", 32) {
		return parts[0] + "-" + parts[1] + "-" + hex.EncodeToString(span[:]) + "-" + parts[3]
	}
	var trace [16]byte
	_, _ = crand.Read(trace[:])
	return "00-" + hex.EncodeToString(trace[:]) + "-" + hex.EncodeToString(span[:]) + "-01"
}

// lowerHex reports whether s is lower-case hex digits only (W3C trace
// context's alphabet).
func lowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// countingWriter counts the response body and remembers the status.
type countingWriter struct {
	http.ResponseWriter
	n    int64
	code int
}

func (c *countingWriter) WriteHeader(code int) {
	if c.code == 0 {
		c.code = code
	}
	c.ResponseWriter.WriteHeader(code)
}

func (c *countingWriter) Write(b []byte) (int, error) {
	if c.code == 0 {
		c.code = http.StatusOK
	}
	n, err := c.ResponseWriter.Write(b)
	c.n += int64(n)
	return n, err
}

// Unwrap lets http.ResponseController reach Flush and deadlines.
func (c *countingWriter) Unwrap() http.ResponseWriter { return c.ResponseWriter }

type countingBody struct {
	io.ReadCloser
	n int64
}

func (c *countingBody) Read(b []byte) (int, error) {
	if c.ReadCloser == nil {
		return 0, io.EOF
	}
	n, err := c.ReadCloser.Read(b)
	c.n += int64(n)
	return n, err
}

func (c *countingBody) Close() error {
	if c.ReadCloser == nil {
		return nil
	}
	return c.ReadCloser.Close()
}

type cancelBody struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (c *cancelBody) Close() error {
	err := c.ReadCloser.Close()
	c.cancel()
	return err
}

var _ net.Conn = (*streamConn)(nil)

// gatewayClass is the class of every waypoint: mesh-wide waypoint policies
// target it from the root namespace.
const gatewayClass = "istio-waypoint"

// normalizePath resolves "." and ".." segments and merges repeated
// slashes (Envoy's normalize_path and merge_slashes, as Istio sets them),
// keeping a trailing slash.
func normalizePath(p string) string {
	if p == "" {
		return "/"
	}
	var out []string
	for _, seg := range strings.Split(p, "/") {
		switch seg {
		case "", ".":
		case "..":
			if len(out) > 0 {
				out = out[:len(out)-1]
			}
		default:
			out = append(out, seg)
		}
	}
	clean := "/" + strings.Join(out, "/")
	if len(out) > 0 && (strings.HasSuffix(p, "/") || strings.HasSuffix(p, "/.") || strings.HasSuffix(p, "/..")) {
		clean += "/"
	}
	return clean
}

// routeName names a service port's route configuration as the control
// plane does: "<hostname>:<port>".
func routeName(hostname string, port uint16) string {
	return hostname + ":" + strconv.Itoa(int(port))
}

// parseClusterName reads Istio's cluster name "outbound|<port>||<hostname>".
func parseClusterName(name string) (hostname string, port uint16, ok bool) {
	parts := strings.Split(name, "|")
	if len(parts) != 4 || parts[0] != "outbound" || parts[3] == "" {
		return "", 0, false
	}
	n, err := strconv.ParseUint(parts[1], 10, 16)
	if err != nil || n == 0 {
		return "", 0, false
	}
	return parts[3], uint16(n), true
}
