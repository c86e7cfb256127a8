package router

import (
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"time"
)

// Request is what routing looks at.
type Request struct {
	Method string
	Scheme string // "http" when empty
	Host   string // the authority; when empty, Header's Host
	Path   string // the raw :path, query included
	Header http.Header
}

// RequestFrom takes a Request from an incoming *http.Request.
func RequestFrom(r *http.Request) Request {
	path := r.RequestURI
	if path == "" || !strings.HasPrefix(path, "/") {
		path = r.URL.RequestURI()
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return Request{Method: r.Method, Scheme: scheme, Host: r.Host, Path: path, Header: r.Header}
}

// DirectResponse is a response to send without going upstream.
type DirectResponse struct {
	Status int
	Body   string
}

// Decision is what to do with a request.
type Decision struct {
	RouteName string // the route's name, for logs

	// Exactly one of Cluster, Redirect and Direct is set.
	Cluster  string // the cluster to forward to, after the weighted pick
	Redirect *Redirect
	Direct   *DirectResponse

	RequestHeaders  HeaderOps // to apply before forwarding (cluster level, then route level)
	ResponseHeaders HeaderOps // to apply to the response (also to redirects and direct responses)
	PathRewrite     string    // the new :path (query kept); "" = unchanged
	HostRewrite     string    // the new :authority; "" = unchanged

	Timeout       time.Duration // whole request, retries included; 0 = none (Envoy's default is 15 s)
	PerTryTimeout time.Duration // each upstream try; 0 = none
	Retry         *RetryPolicy  // nil = no retries
	Mirrors       []string      // clusters to send a copy to (their fractions already drawn)
}

// Decide routes req: the first route of the virtual host for req's
// authority whose match holds. ok is false when none does (answer 404).
// rnd(n) must return a uniform value in [0, n); it draws the weighted
// cluster and the mirror fractions. nil uses math/rand/v2.
func (r *Router) Decide(req Request, rnd func(n uint64) uint64) (d Decision, ok bool) {
	if r == nil {
		return Decision{}, false
	}
	v := newView(&req)
	vh := r.virtualHost(v.host())
	if vh == nil {
		return Decision{}, false
	}
	if rnd == nil {
		rnd = rand.Uint64N
	}
	for _, rt := range vh.routes {
		if rt.match.matches(v) {
			return rt.decide(v, rnd), true
		}
	}
	return Decision{}, false
}

// virtualHost picks the virtual host for the authority as sent and
// without its port, whichever match is more specific (as sent on a tie).
func (r *Router) virtualHost(host string) *vhost {
	h := strings.ToLower(host)
	vh, rank := r.bestVHost(h)
	if i := strings.LastIndexByte(h, ':'); i >= 0 && !strings.HasSuffix(h, "]") {
		if vh2, rank2 := r.bestVHost(h[:i]); rank2 < rank {
			return vh2
		}
	}
	return vh
}

// Virtual host match ranks, most specific first.
const (
	rankExact = iota
	rankSuffix
	rankPrefix
	rankStar
	rankNone
)

// bestVHost follows Envoy: exact domain, then the longest suffix wildcard,
// then the longest prefix wildcard, then "*".
func (r *Router) bestVHost(h string) (*vhost, int) {
	var suffix, prefix, star *vhost
	sLen, pLen := -1, -1
	for _, vh := range r.vhosts {
		for _, d := range vh.domains {
			switch {
			case d == "*":
				if star == nil {
					star = vh
				}
			case d == h:
				return vh, rankExact
			case d[0] == '*':
				if s := d[1:]; len(h) > len(s) && strings.HasSuffix(h, s) && len(s) > sLen {
					suffix, sLen = vh, len(s)
				}
			case d[len(d)-1] == '*':
				if p := d[:len(d)-1]; len(h) > len(p) && strings.HasPrefix(h, p) && len(p) > pLen {
					prefix, pLen = vh, len(p)
				}
			}
		}
	}
	switch {
	case suffix != nil:
		return suffix, rankSuffix
	case prefix != nil:
		return prefix, rankPrefix
	case star != nil:
		return star, rankStar
	}
	return nil, rankNone
}

func (rt *route) decide(v *view, rnd func(uint64) uint64) Decision {
	d := Decision{RouteName: rt.name}
	if rt.broken != "" {
		d.Direct = &DirectResponse{Status: http.StatusInternalServerError, Body: rt.broken}
		return d
	}
	switch rt.kind {
	case actDirect:
		dr := rt.direct
		d.Direct = &dr
		d.ResponseHeaders = slices.Clone(rt.respOps)
	case actRedirect:
		d.Redirect = rt.redirect.location(v, rt.match.path.matchedLen(v.path))
		d.ResponseHeaders = slices.Clone(rt.respOps)
	case actForward:
		rt.fwd.decide(&d, rt, v, rnd)
	}
	return d
}

func (f *forward) decide(d *Decision, rt *route, v *view, rnd func(uint64) uint64) {
	name, wc := f.pick(rnd)
	d.RequestHeaders = concat(wc.reqOps, rt.reqOps)
	d.ResponseHeaders = concat(wc.respOps, rt.respOps)
	if backend, invalid := strings.CutPrefix(name, InvalidBackendPrefix); invalid {
		d.RequestHeaders = nil
		d.Direct = &DirectResponse{Status: f.notFound, Body: "backend " + backend + " not found"}
		return
	}
	d.Cluster = name
	if f.prefixRewrite != nil || f.regexRewrite != nil {
		d.PathRewrite = rewrittenPath(v, f.prefixRewrite, rt.match.path.matchedLen(v.path), f.regexRewrite)
	}
	d.HostRewrite = f.hostRewrite
	d.Timeout, d.PerTryTimeout = f.timeout, f.perTry
	d.Retry = f.retry.clone()
	for _, m := range f.mirrors {
		if m.den == 0 || draw(rnd, m.den) < m.num {
			d.Mirrors = append(d.Mirrors, m.cluster)
		}
	}
}

// pick chooses the cluster: weighted in proportion to the weights (a
// weight of 0 is never chosen).
func (f *forward) pick(rnd func(uint64) uint64) (string, weightedCluster) {
	if len(f.weighted) == 0 {
		return f.cluster, weightedCluster{}
	}
	x := draw(rnd, f.total)
	for _, wc := range f.weighted {
		if x < wc.weight {
			return wc.name, wc
		}
		x -= wc.weight
	}
	last := f.weighted[len(f.weighted)-1]
	return last.name, last // unreachable: x < total
}

// draw is rnd(n), kept in [0, n) whatever rnd returns.
func draw(rnd func(uint64) uint64, n uint64) uint64 {
	x := rnd(n)
	if x >= n {
		x %= n
	}
	return x
}

func concat(a, b HeaderOps) HeaderOps {
	if len(a)+len(b) == 0 {
		return nil
	}
	out := make(HeaderOps, 0, len(a)+len(b))
	return append(append(out, a...), b...)
}

// view is a request prepared for matching; the query is parsed on demand.
type view struct {
	req    *Request
	path   string // :path without query or fragment
	query  string // after '?', without fragment
	hasQ   bool
	params map[string]string
	grpc   bool
}

func newView(req *Request) *view {
	v := &view{req: req, path: req.Path}
	if i := strings.IndexByte(v.path, '#'); i >= 0 {
		v.path = v.path[:i]
	}
	if p, q, ok := strings.Cut(v.path, "?"); ok {
		v.path, v.query, v.hasQ = p, q, true
	}
	ct, _ := v.header("content-type")
	v.grpc = ct == "application/grpc" || strings.HasPrefix(ct, "application/grpc+") || strings.HasPrefix(ct, "application/grpc;")
	return v
}

func (v *view) scheme() string {
	if v.req.Scheme == "" {
		return "http"
	}
	return strings.ToLower(v.req.Scheme)
}

func (v *view) host() string {
	if v.req.Host != "" {
		return v.req.Host
	}
	return v.req.Header.Get("Host")
}

func (v *view) rawQuerySuffix() string {
	if !v.hasQ {
		return ""
	}
	return "?" + v.query
}

// header returns a header's value (repeated values joined with ","), with
// the pseudo-headers :method, :authority (also "host"), :path and :scheme.
func (v *view) header(name string) (string, bool) {
	switch name {
	case ":method":
		return v.req.Method, v.req.Method != ""
	case ":authority", "host":
		h := v.host()
		return h, h != ""
	case ":path":
		return v.req.Path, v.req.Path != ""
	case ":scheme":
		return v.scheme(), true
	}
	vals := v.req.Header.Values(name)
	if len(vals) == 0 {
		for k, vs := range v.req.Header {
			if strings.EqualFold(k, name) {
				vals = append(vals, vs...)
			}
		}
	}
	if len(vals) == 0 {
		return "", false
	}
	return strings.Join(vals, ","), true
}

// param returns the first value of a query parameter, undecoded.
func (v *view) param(name string) (string, bool) {
	if v.params == nil {
		v.params = make(map[string]string)
		for _, kv := range strings.Split(v.query, "&") {
			if kv == "" {
				continue
			}
			k, val, _ := strings.Cut(kv, "=")
			if _, dup := v.params[k]; !dup {
				v.params[k] = val
			}
		}
	}
	val, ok := v.params[name]
	return val, ok
}
