package routes

import (
	"fmt"
	"regexp"
	"strings"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// matchedPath is what a rewrite needs to know about the path match.
type matchedPath struct {
	kind  gatewayv1.PathMatchType
	value string // normalised: a prefix has no trailing slash, except "/"
}

// headerMatch is the common form of HTTP and gRPC header matches.
type headerMatch struct {
	name, value string
	regex       bool
	typ         string // the raw type, for error messages
}

// httpMatch translates one HTTPRouteMatch. A nil path means PathPrefix "/".
func httpMatch(m gatewayv1.HTTPRouteMatch) (*routev3.RouteMatch, precedence, matchedPath, error) {
	rm := &routev3.RouteMatch{}
	var key precedence
	mp, err := httpPath(rm, m.Path, &key)
	if err != nil {
		return nil, key, mp, err
	}
	hs := make([]headerMatch, 0, len(m.Headers))
	for _, h := range m.Headers {
		hm := headerMatch{name: string(h.Name), value: h.Value, typ: string(gatewayv1.HeaderMatchExact)}
		if h.Type != nil {
			hm.typ = string(*h.Type)
			switch *h.Type {
			case gatewayv1.HeaderMatchExact:
			case gatewayv1.HeaderMatchRegularExpression:
				hm.regex = true
			default:
				return nil, key, mp, fmt.Errorf("header %q: match type %q is not supported", h.Name, *h.Type)
			}
		}
		hs = append(hs, hm)
	}
	headers, err := headerMatchers(hs)
	if err != nil {
		return nil, key, mp, err
	}
	rm.Headers = headers
	key.headers = len(headers)
	if m.Method != nil {
		if *m.Method == "" {
			return nil, key, mp, fmt.Errorf("method must not be empty")
		}
		rm.Headers = append(rm.Headers, exactHeader(":method", string(*m.Method)))
		key.method = true
	}
	qs, err := queryMatchers(m.QueryParams)
	if err != nil {
		return nil, key, mp, err
	}
	rm.QueryParameters = qs
	key.queries = len(qs)
	return rm, key, mp, nil
}

// httpPath sets the path specifier of rm and the path part of key.
func httpPath(rm *routev3.RouteMatch, p *gatewayv1.HTTPPathMatch, key *precedence) (matchedPath, error) {
	typ, value := gatewayv1.PathMatchPathPrefix, "/"
	if p != nil {
		if p.Type != nil {
			typ = *p.Type
		}
		if p.Value != nil {
			value = *p.Value
		}
	}
	switch typ {
	case gatewayv1.PathMatchExact:
		if err := validPath(value); err != nil {
			return matchedPath{}, err
		}
		rm.PathSpecifier = &routev3.RouteMatch_Path{Path: value}
		key.pathKind, key.pathLen = pathExact, len(value)
	case gatewayv1.PathMatchPathPrefix:
		if err := validPath(value); err != nil {
			return matchedPath{}, err
		}
		value = trimPrefixSlash(value)
		if value == "/" {
			rm.PathSpecifier = &routev3.RouteMatch_Prefix{Prefix: "/"}
		} else {
			rm.PathSpecifier = &routev3.RouteMatch_PathSeparatedPrefix{PathSeparatedPrefix: value}
		}
		key.pathKind, key.pathLen = pathPrefix, len(value)
	case gatewayv1.PathMatchRegularExpression:
		re, err := safeRegex(value)
		if err != nil {
			return matchedPath{}, fmt.Errorf("path: %w", err)
		}
		rm.PathSpecifier = &routev3.RouteMatch_SafeRegex{SafeRegex: re}
		key.pathKind, key.pathLen = pathRegex, len(value)
	default:
		return matchedPath{}, fmt.Errorf("path match type %q is not supported", typ)
	}
	return matchedPath{kind: typ, value: value}, nil
}

// trimPrefixSlash drops one trailing slash from a prefix ("/foo/" -> "/foo"),
// keeping "/" as it is.
func trimPrefixSlash(v string) string {
	if len(v) > 1 && strings.HasSuffix(v, "/") {
		return v[:len(v)-1]
	}
	return v
}

// validPath accepts what Envoy takes as a literal path: it starts with "/",
// has no "//" (Gateway API forbids it; Envoy would never match it after a
// trailing-slash trim) and no query or fragment.
func validPath(v string) error {
	switch {
	case !strings.HasPrefix(v, "/"):
		return fmt.Errorf("path %q must start with /", v)
	case strings.Contains(v, "//"):
		return fmt.Errorf("path %q must not contain //", v)
	case strings.ContainsAny(v, "?#"):
		return fmt.Errorf("path %q must not contain ? or #", v)
	}
	return nil
}

// headerMatchers turns header matches into Envoy matchers. Names are
// case-insensitive: only the first match of a name counts (Gateway API).
func headerMatchers(hs []headerMatch) ([]*routev3.HeaderMatcher, error) {
	var out []*routev3.HeaderMatcher
	seen := make(map[string]bool, len(hs))
	for _, h := range hs {
		name := strings.ToLower(h.name)
		if name == "" {
			return nil, fmt.Errorf("header match with empty name")
		}
		if seen[name] {
			continue
		}
		seen[name] = true
		if !h.regex {
			out = append(out, exactHeader(name, h.value))
			continue
		}
		re, err := safeRegex(h.value)
		if err != nil {
			return nil, fmt.Errorf("header %q: %w", h.name, err)
		}
		out = append(out, &routev3.HeaderMatcher{
			Name: name,
			HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{
				MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: re},
			}},
		})
	}
	return out, nil
}

func exactHeader(name, value string) *routev3.HeaderMatcher {
	return &routev3.HeaderMatcher{
		Name: name,
		HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{
			MatchPattern: &matcherv3.StringMatcher_Exact{Exact: value},
		}},
	}
}

// queryMatchers turns query param matches into Envoy matchers. Names are
// compared exactly; only the first match of a name counts.
func queryMatchers(qs []gatewayv1.HTTPQueryParamMatch) ([]*routev3.QueryParameterMatcher, error) {
	var out []*routev3.QueryParameterMatcher
	seen := make(map[string]bool, len(qs))
	for _, q := range qs {
		name := string(q.Name)
		if name == "" {
			return nil, fmt.Errorf("query param match with empty name")
		}
		if seen[name] {
			continue
		}
		seen[name] = true
		sm := &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: q.Value}}
		if q.Type != nil {
			switch *q.Type {
			case gatewayv1.QueryParamMatchExact:
			case gatewayv1.QueryParamMatchRegularExpression:
				re, err := safeRegex(q.Value)
				if err != nil {
					return nil, fmt.Errorf("query param %q: %w", name, err)
				}
				sm.MatchPattern = &matcherv3.StringMatcher_SafeRegex{SafeRegex: re}
			default:
				return nil, fmt.Errorf("query param %q: match type %q is not supported", name, *q.Type)
			}
		}
		out = append(out, &routev3.QueryParameterMatcher{
			Name:                         name,
			QueryParameterMatchSpecifier: &routev3.QueryParameterMatcher_StringMatch{StringMatch: sm},
		})
	}
	return out, nil
}

// grpcMatch translates one GRPCRouteMatch: the method becomes a path match
// on "/<service>/<method>", and the match requires a gRPC content type.
func grpcMatch(m gatewayv1.GRPCRouteMatch) (*routev3.RouteMatch, precedence, error) {
	rm := &routev3.RouteMatch{Grpc: &routev3.RouteMatch_GrpcRouteMatchOptions{}}
	key := precedence{grpc: true}
	if err := grpcMethod(rm, m.Method, &key); err != nil {
		return nil, key, err
	}
	hs := make([]headerMatch, 0, len(m.Headers))
	for _, h := range m.Headers {
		hm := headerMatch{name: string(h.Name), value: h.Value}
		if h.Type != nil {
			switch *h.Type {
			case gatewayv1.GRPCHeaderMatchExact:
			case gatewayv1.GRPCHeaderMatchRegularExpression:
				hm.regex = true
			default:
				return nil, key, fmt.Errorf("header %q: match type %q is not supported", h.Name, *h.Type)
			}
		}
		hs = append(hs, hm)
	}
	headers, err := headerMatchers(hs)
	if err != nil {
		return nil, key, err
	}
	rm.Headers = headers
	key.headers = len(headers)
	return rm, key, nil
}

// grpcMethod sets the path specifier for a gRPC method match.
func grpcMethod(rm *routev3.RouteMatch, mm *gatewayv1.GRPCMethodMatch, key *precedence) error {
	if mm == nil {
		rm.PathSpecifier = &routev3.RouteMatch_Prefix{Prefix: "/"}
		return nil
	}
	var svc, method string
	if mm.Service != nil {
		svc = *mm.Service
	}
	if mm.Method != nil {
		method = *mm.Method
	}
	if svc == "" && method == "" {
		return fmt.Errorf("method match needs a service or a method")
	}
	key.serviceLen, key.methodLen = len(svc), len(method)
	typ := gatewayv1.GRPCMethodMatchExact
	if mm.Type != nil {
		typ = *mm.Type
	}
	switch typ {
	case gatewayv1.GRPCMethodMatchExact:
		return grpcExactMethod(rm, svc, method)
	case gatewayv1.GRPCMethodMatchRegularExpression:
		re, err := grpcRegex(svc, method)
		if err != nil {
			return err
		}
		rm.PathSpecifier = &routev3.RouteMatch_SafeRegex{SafeRegex: re}
		return nil
	default:
		return fmt.Errorf("method match type %q is not supported", typ)
	}
}

func grpcExactMethod(rm *routev3.RouteMatch, svc, method string) error {
	for _, v := range []string{svc, method} {
		if strings.ContainsAny(v, "/?#") {
			return fmt.Errorf("gRPC service or method %q must not contain /, ? or #", v)
		}
	}
	switch {
	case svc != "" && method != "":
		rm.PathSpecifier = &routev3.RouteMatch_Path{Path: "/" + svc + "/" + method}
	case svc != "":
		rm.PathSpecifier = &routev3.RouteMatch_Prefix{Prefix: "/" + svc + "/"}
	default:
		re, err := safeRegex("/[^/]+/" + regexp.QuoteMeta(method))
		if err != nil {
			return err
		}
		rm.PathSpecifier = &routev3.RouteMatch_SafeRegex{SafeRegex: re}
	}
	return nil
}

// grpcRegex builds "/(?:svc)/(?:method)", an empty part matching any name.
func grpcRegex(svc, method string) (*matcherv3.RegexMatcher, error) {
	part := func(what, v string) (string, error) {
		if v == "" {
			return "[^/]+", nil
		}
		if _, err := regexp.Compile(v); err != nil {
			return "", fmt.Errorf("gRPC %s regex %q: %w", what, v, err)
		}
		return "(?:" + v + ")", nil
	}
	s, err := part("service", svc)
	if err != nil {
		return nil, err
	}
	m, err := part("method", method)
	if err != nil {
		return nil, err
	}
	return safeRegex("/" + s + "/" + m)
}

// safeRegex checks an RE2 expression (Go's regexp is RE2 syntax) and wraps
// it for Envoy, which full-matches safe_regex.
func safeRegex(expr string) (*matcherv3.RegexMatcher, error) {
	if _, err := regexp.Compile(expr); err != nil {
		return nil, fmt.Errorf("invalid regular expression %q: %w", expr, err)
	}
	return &matcherv3.RegexMatcher{Regex: expr}, nil
}
