package router

import (
	"errors"
	"fmt"
	"strings"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/durationpb"
)

// InvalidBackendPrefix starts the name of a weighted cluster that stands
// for an invalid Gateway API backend (controlplane/routes.InvalidBackendPrefix).
const InvalidBackendPrefix = "invalid-backend|"

// Envoy defaults and limits this package follows.
const (
	defaultRouteTimeout   = 15 * time.Second
	defaultRetryBase      = 25 * time.Millisecond
	maxDirectResponseBody = 4096
)

// Router is a compiled RouteConfiguration. It is immutable and safe for
// concurrent use.
type Router struct {
	name   string
	vhosts []*vhost
}

type vhost struct {
	name    string
	domains []string // lower case
	routes  []*route
}

type actionKind int

const (
	actForward actionKind = iota
	actRedirect
	actDirect
)

// route is a compiled Route. broken routes match as configured but answer
// 500 with broken as the body.
type route struct {
	name     string
	match    matcher
	broken   string
	kind     actionKind
	fwd      *forward
	redirect *redirect
	direct   DirectResponse
	reqOps   HeaderOps
	respOps  HeaderOps
}

type forward struct {
	cluster       string
	weighted      []weightedCluster
	total         uint64
	notFound      int
	prefixRewrite *string
	regexRewrite  *regexRewrite
	hostRewrite   string
	timeout       time.Duration
	perTry        time.Duration
	retry         *RetryPolicy
	mirrors       []mirror
}

type weightedCluster struct {
	name    string
	weight  uint64
	reqOps  HeaderOps
	respOps HeaderOps
}

// mirror sends a copy of num out of den requests (den 0: every request).
type mirror struct {
	cluster  string
	num, den uint64
}

// Name is the RouteConfiguration's name.
func (r *Router) Name() string { return r.name }

// Compile compiles rc. It fails on a nil configuration, on unsupported
// fields of the RouteConfiguration or of a VirtualHost, on invalid domains
// and on regular expressions that do not compile; errors name the virtual
// host, the route and the field. Other problems in a route make that route
// answer 500.
func Compile(rc *routev3.RouteConfiguration) (*Router, error) {
	if rc == nil {
		return nil, errors.New("compile routes: nil RouteConfiguration")
	}
	if p := unsupportedField(rc.ProtoReflect(), "route_config", "virtual_hosts"); p != "" {
		return nil, fmt.Errorf("compile routes %q: unsupported field %s", rc.GetName(), p)
	}
	r := &Router{name: rc.GetName()}
	seen := make(map[string]bool)
	for i, vh := range rc.GetVirtualHosts() {
		v, err := compileVHost(vh, seen)
		if err != nil {
			return nil, fmt.Errorf("compile routes %q: virtual host %d (%q): %w", rc.GetName(), i, vh.GetName(), err)
		}
		r.vhosts = append(r.vhosts, v)
	}
	return r, nil
}

func compileVHost(vh *routev3.VirtualHost, seen map[string]bool) (*vhost, error) {
	if p := unsupportedField(vh.ProtoReflect(), "virtual_host", "routes"); p != "" {
		return nil, fmt.Errorf("unsupported field %s", p)
	}
	v := &vhost{name: vh.GetName()}
	for _, d := range vh.GetDomains() {
		d = strings.ToLower(d)
		if err := validDomain(d); err != nil {
			return nil, err
		}
		if seen[d] {
			return nil, fmt.Errorf("domain %q is in more than one virtual host", d)
		}
		seen[d] = true
		v.domains = append(v.domains, d)
	}
	for i, rt := range vh.GetRoutes() {
		c, err := compileRoute(rt)
		if err != nil {
			return nil, fmt.Errorf("route %d (%q): %w", i, rt.GetName(), err)
		}
		v.routes = append(v.routes, c)
	}
	return v, nil
}

// validDomain accepts "*", exact names and one leading or trailing "*".
func validDomain(d string) error {
	if d == "" {
		return errors.New("empty domain")
	}
	if d == "*" {
		return nil
	}
	inner := strings.TrimSuffix(strings.TrimPrefix(d, "*"), "*")
	if len(inner) < len(d)-1 || strings.Contains(inner, "*") || inner == "" {
		return fmt.Errorf("domain %q: a wildcard may only be a leading or trailing *", d)
	}
	return nil
}

// compileRoute compiles one route. Only regex errors are returned; other
// problems mark the route broken.
func compileRoute(r *routev3.Route) (*route, error) {
	rt := &route{name: r.GetName()}
	var problems []error
	note := func(err error) {
		if err != nil {
			problems = append(problems, err)
		}
	}
	if p := unsupportedField(r.ProtoReflect(), "route", ""); p != "" {
		note(fmt.Errorf("unsupported route field: %s", p))
	}
	m, err := compileMatch(r.GetMatch())
	if isRegexError(err) {
		return nil, err
	}
	note(err)
	rt.match = m
	if rt.reqOps, err = compileHeaderOps(r.GetRequestHeadersToAdd(), r.GetRequestHeadersToRemove()); err != nil {
		note(fmt.Errorf("request_%w", err))
	}
	if rt.respOps, err = compileHeaderOps(r.GetResponseHeadersToAdd(), r.GetResponseHeadersToRemove()); err != nil {
		note(fmt.Errorf("response_%w", err))
	}
	switch a := r.GetAction().(type) {
	case *routev3.Route_Route:
		rt.kind = actForward
		rt.fwd, err = compileForward(a.Route)
	case *routev3.Route_Redirect:
		rt.kind = actRedirect
		rt.redirect, err = compileRedirect(a.Redirect)
	case *routev3.Route_DirectResponse:
		rt.kind = actDirect
		rt.direct, err = compileDirect(a.DirectResponse)
	default:
		err = errors.New("route has no supported action")
	}
	if isRegexError(err) {
		return nil, err
	}
	note(err)
	if len(problems) > 0 {
		rt.broken = problems[0].Error()
	}
	return rt, nil
}

func compileForward(ra *routev3.RouteAction) (*forward, error) {
	f := &forward{timeout: defaultRouteTimeout}
	switch ra.GetClusterNotFoundResponseCode() {
	case routev3.RouteAction_SERVICE_UNAVAILABLE:
		f.notFound = 503
	case routev3.RouteAction_NOT_FOUND:
		f.notFound = 404
	case routev3.RouteAction_INTERNAL_SERVER_ERROR:
		f.notFound = 500
	default:
		return nil, fmt.Errorf("route.cluster_not_found_response_code %d is unknown", ra.GetClusterNotFoundResponseCode())
	}
	if err := compileClusters(f, ra); err != nil {
		return nil, err
	}
	if ra.GetPrefixRewrite() != "" && ra.GetRegexRewrite() != nil {
		return nil, errors.New("route.prefix_rewrite and route.regex_rewrite are both set")
	}
	if ra.GetPrefixRewrite() != "" {
		p := ra.GetPrefixRewrite()
		f.prefixRewrite = &p
	}
	if ra.GetRegexRewrite() != nil {
		rr, err := compileRegexRewrite(ra.GetRegexRewrite(), "route.regex_rewrite")
		if err != nil {
			return nil, err
		}
		f.regexRewrite = rr
	}
	f.hostRewrite = ra.GetHostRewriteLiteral()
	if ra.Timeout != nil {
		d, err := duration(ra.Timeout, "route.timeout")
		if err != nil {
			return nil, err
		}
		f.timeout = d
	}
	if ra.RetryPolicy != nil {
		rp, perTry, err := compileRetry(ra.RetryPolicy)
		if err != nil {
			return nil, err
		}
		f.retry, f.perTry = rp, perTry
	}
	for i, mp := range ra.GetRequestMirrorPolicies() {
		m, err := compileMirror(mp)
		if err != nil {
			return nil, fmt.Errorf("route.request_mirror_policies[%d]: %w", i, err)
		}
		f.mirrors = append(f.mirrors, m)
	}
	return f, nil
}

func compileClusters(f *forward, ra *routev3.RouteAction) error {
	switch cs := ra.GetClusterSpecifier().(type) {
	case *routev3.RouteAction_Cluster:
		if cs.Cluster == "" {
			return errors.New("route.cluster is empty")
		}
		f.cluster = cs.Cluster
	case *routev3.RouteAction_WeightedClusters:
		for i, cw := range cs.WeightedClusters.GetClusters() {
			wc, err := compileClusterWeight(cw)
			if err != nil {
				return fmt.Errorf("route.weighted_clusters.clusters[%d]: %w", i, err)
			}
			f.weighted = append(f.weighted, wc)
			f.total += wc.weight
		}
		if f.total == 0 {
			return errors.New("route.weighted_clusters: total weight is 0")
		}
	default:
		return errors.New("route action has no supported cluster specifier")
	}
	return nil
}

func compileClusterWeight(cw *routev3.WeightedCluster_ClusterWeight) (weightedCluster, error) {
	wc := weightedCluster{name: cw.GetName(), weight: uint64(cw.GetWeight().GetValue())}
	if wc.name == "" {
		return wc, errors.New("cluster without name")
	}
	var err error
	if wc.reqOps, err = compileHeaderOps(cw.GetRequestHeadersToAdd(), cw.GetRequestHeadersToRemove()); err != nil {
		return wc, fmt.Errorf("request_%w", err)
	}
	if wc.respOps, err = compileHeaderOps(cw.GetResponseHeadersToAdd(), cw.GetResponseHeadersToRemove()); err != nil {
		return wc, fmt.Errorf("response_%w", err)
	}
	return wc, nil
}

func duration(d *durationpb.Duration, field string) (time.Duration, error) {
	if err := d.CheckValid(); err != nil {
		return 0, fmt.Errorf("%s: %w", field, err)
	}
	if d.AsDuration() < 0 {
		return 0, fmt.Errorf("%s: negative duration %s", field, d.AsDuration())
	}
	return d.AsDuration(), nil
}

func compileMirror(mp *routev3.RouteAction_RequestMirrorPolicy) (mirror, error) {
	m := mirror{cluster: mp.GetCluster()}
	if m.cluster == "" {
		return m, errors.New("mirror without cluster")
	}
	rf := mp.GetRuntimeFraction()
	if rf == nil {
		return m, nil
	}
	if rf.GetDefaultValue() == nil {
		return m, errors.New("runtime_fraction without default_value")
	}
	switch rf.GetDefaultValue().GetDenominator() {
	case typev3.FractionalPercent_HUNDRED:
		m.den = 100
	case typev3.FractionalPercent_TEN_THOUSAND:
		m.den = 10_000
	case typev3.FractionalPercent_MILLION:
		m.den = 1_000_000
	default:
		return m, fmt.Errorf("unknown denominator %d", rf.GetDefaultValue().GetDenominator())
	}
	m.num = uint64(rf.GetDefaultValue().GetNumerator())
	if m.num >= m.den {
		m.num, m.den = 0, 0 // every request
	}
	return m, nil
}

func compileDirect(dr *routev3.DirectResponseAction) (DirectResponse, error) {
	d := DirectResponse{Status: int(dr.GetStatus())}
	if d.Status < 200 || d.Status > 599 {
		return d, fmt.Errorf("direct_response.status %d is outside 200..599", d.Status)
	}
	if s := dr.GetBody().GetInlineString(); s != "" {
		d.Body = s
	} else {
		d.Body = string(dr.GetBody().GetInlineBytes())
	}
	if len(d.Body) > maxDirectResponseBody {
		return d, fmt.Errorf("direct_response.body is longer than %d bytes", maxDirectResponseBody)
	}
	return d, nil
}
