package router

import (
	"errors"
	"fmt"
	"regexp"
	"strings"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
)

// regexError is a regular expression that does not compile: Compile fails
// on it (Envoy rejects such a configuration) instead of breaking one route.
type regexError struct{ err error }

func (e *regexError) Error() string { return e.err.Error() }
func (e *regexError) Unwrap() error { return e.err }

func isRegexError(err error) bool {
	var re *regexError
	return errors.As(err, &re)
}

// fullRegex compiles an Envoy safe_regex, which must match the whole input.
func fullRegex(m *matcherv3.RegexMatcher, field string) (*regexp.Regexp, error) {
	re, err := regexp.Compile("^(?:" + m.GetRegex() + ")$")
	if err != nil {
		return nil, &regexError{fmt.Errorf("%s: invalid regex %q: %w", field, m.GetRegex(), err)}
	}
	return re, nil
}

type pathKind int

const (
	pathAny       pathKind = iota // no usable path specifier (route is broken anyway)
	pathPrefix                    // prefix
	pathExact                     // path
	pathRegex                     // safe_regex
	pathSeparated                 // path_separated_prefix
)

type pathMatcher struct {
	kind  pathKind
	value string
	re    *regexp.Regexp
	fold  bool // case_sensitive: false
}

func (p *pathMatcher) matches(path string) bool {
	switch p.kind {
	case pathPrefix:
		return hasPrefix(path, p.value, p.fold)
	case pathExact:
		return equal(path, p.value, p.fold)
	case pathRegex:
		return p.re.MatchString(path)
	case pathSeparated:
		if !hasPrefix(path, p.value, p.fold) {
			return false
		}
		return len(path) == len(p.value) || path[len(p.value)] == '/'
	}
	return true
}

// matchedLen is how much of path the match consumed, for prefix_rewrite.
func (p *pathMatcher) matchedLen(path string) int {
	if p.kind == pathPrefix || p.kind == pathSeparated {
		return min(len(p.value), len(path))
	}
	return len(path)
}

func hasPrefix(s, prefix string, fold bool) bool {
	if fold {
		return len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix)
	}
	return strings.HasPrefix(s, prefix)
}

func equal(a, b string, fold bool) bool {
	if fold {
		return strings.EqualFold(a, b)
	}
	return a == b
}

type stringKind int

const (
	strExact stringKind = iota
	strPrefix
	strSuffix
	strContains
	strRegex
)

type stringMatcher struct {
	kind  stringKind
	value string
	re    *regexp.Regexp
	fold  bool
}

func (m *stringMatcher) matches(s string) bool {
	v := m.value
	if m.fold && m.kind != strRegex {
		s, v = strings.ToLower(s), strings.ToLower(v)
	}
	switch m.kind {
	case strExact:
		return s == v
	case strPrefix:
		return strings.HasPrefix(s, v)
	case strSuffix:
		return strings.HasSuffix(s, v)
	case strContains:
		return strings.Contains(s, v)
	}
	return m.re.MatchString(s)
}

type headerMatcher struct {
	name    string // lower case
	str     *stringMatcher
	present bool // for a presence match (str == nil)
	invert  bool
}

// matches follows Envoy: a missing header satisfies only a presence match
// asking for absence (or an inverted one asking for presence).
func (h *headerMatcher) matches(v *view) bool {
	val, ok := v.header(h.name)
	if !ok {
		return h.str == nil && h.present == h.invert
	}
	if h.str == nil {
		return h.present != h.invert
	}
	return h.str.matches(val) != h.invert
}

type queryMatcher struct {
	name    string
	str     *stringMatcher
	present *bool
}

func (q *queryMatcher) matches(v *view) bool {
	val, ok := v.param(q.name)
	switch {
	case !ok:
		return false
	case q.str != nil:
		return q.str.matches(val)
	case q.present != nil:
		return *q.present
	}
	return true
}

// matcher is a compiled RouteMatch.
type matcher struct {
	path    pathMatcher
	headers []headerMatcher
	queries []queryMatcher
	grpc    bool
}

func (m *matcher) matches(v *view) bool {
	if !m.path.matches(v.path) {
		return false
	}
	if m.grpc && !v.grpc {
		return false
	}
	for i := range m.headers {
		if !m.headers[i].matches(v) {
			return false
		}
	}
	for i := range m.queries {
		if !m.queries[i].matches(v) {
			return false
		}
	}
	return true
}

// compileMatch compiles a RouteMatch. A regexError is fatal; any other
// error breaks the route (it answers 500) but still lets it match.
func compileMatch(rm *routev3.RouteMatch) (matcher, error) {
	var m matcher
	if rm == nil {
		return m, fmt.Errorf("route has no match")
	}
	var errs []error
	fold := rm.CaseSensitive != nil && !rm.CaseSensitive.GetValue()
	m.path.fold = fold
	switch ps := rm.PathSpecifier.(type) {
	case *routev3.RouteMatch_Prefix:
		m.path.kind, m.path.value = pathPrefix, ps.Prefix
	case *routev3.RouteMatch_Path:
		m.path.kind, m.path.value = pathExact, ps.Path
	case *routev3.RouteMatch_SafeRegex:
		re, err := fullRegex(ps.SafeRegex, "match.safe_regex")
		if err != nil {
			return m, err
		}
		m.path.kind, m.path.re = pathRegex, re
	case *routev3.RouteMatch_PathSeparatedPrefix:
		m.path.kind, m.path.value = pathSeparated, ps.PathSeparatedPrefix
		v := ps.PathSeparatedPrefix
		if v == "" || strings.HasSuffix(v, "/") || strings.ContainsAny(v, "?#") {
			errs = append(errs, fmt.Errorf("match.path_separated_prefix %q must be non-empty, without ? or # and not end with /", v))
		}
	default:
		errs = append(errs, fmt.Errorf("match has no supported path specifier"))
	}
	m.grpc = rm.Grpc != nil
	for i, h := range rm.Headers {
		hm, err := compileHeaderMatcher(h)
		if isRegexError(err) {
			return m, fmt.Errorf("match.headers[%d]: %w", i, err)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("match.headers[%d]: %w", i, err))
			continue
		}
		m.headers = append(m.headers, hm)
	}
	for i, q := range rm.QueryParameters {
		qm, err := compileQueryMatcher(q)
		if isRegexError(err) {
			return m, fmt.Errorf("match.query_parameters[%d]: %w", i, err)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("match.query_parameters[%d]: %w", i, err))
			continue
		}
		m.queries = append(m.queries, qm)
	}
	return m, errors.Join(errs...)
}

func compileHeaderMatcher(h *routev3.HeaderMatcher) (headerMatcher, error) {
	hm := headerMatcher{name: strings.ToLower(h.GetName()), invert: h.GetInvertMatch(), present: true}
	if hm.name == "" {
		return hm, fmt.Errorf("header matcher without name")
	}
	switch s := h.HeaderMatchSpecifier.(type) {
	case nil:
		// Envoy: no specifier means "is present".
	case *routev3.HeaderMatcher_PresentMatch:
		hm.present = s.PresentMatch
	case *routev3.HeaderMatcher_StringMatch:
		sm, err := compileStringMatcher(s.StringMatch)
		if err != nil {
			return hm, fmt.Errorf("string_match: %w", err)
		}
		hm.str = sm
	default:
		return hm, fmt.Errorf("header matcher %q: unsupported specifier", hm.name)
	}
	return hm, nil
}

func compileQueryMatcher(q *routev3.QueryParameterMatcher) (queryMatcher, error) {
	qm := queryMatcher{name: q.GetName()}
	if qm.name == "" {
		return qm, fmt.Errorf("query parameter matcher without name")
	}
	switch s := q.QueryParameterMatchSpecifier.(type) {
	case nil:
	case *routev3.QueryParameterMatcher_PresentMatch:
		p := s.PresentMatch
		qm.present = &p
	case *routev3.QueryParameterMatcher_StringMatch:
		sm, err := compileStringMatcher(s.StringMatch)
		if err != nil {
			return qm, fmt.Errorf("string_match: %w", err)
		}
		qm.str = sm
	}
	return qm, nil
}

func compileStringMatcher(s *matcherv3.StringMatcher) (*stringMatcher, error) {
	sm := &stringMatcher{fold: s.GetIgnoreCase()}
	switch p := s.GetMatchPattern().(type) {
	case *matcherv3.StringMatcher_Exact:
		sm.kind, sm.value = strExact, p.Exact
	case *matcherv3.StringMatcher_Prefix:
		sm.kind, sm.value = strPrefix, p.Prefix
	case *matcherv3.StringMatcher_Suffix:
		sm.kind, sm.value = strSuffix, p.Suffix
	case *matcherv3.StringMatcher_Contains:
		sm.kind, sm.value = strContains, p.Contains
	case *matcherv3.StringMatcher_SafeRegex:
		re, err := fullRegex(p.SafeRegex, "safe_regex")
		if err != nil {
			return nil, err
		}
		sm.kind, sm.re = strRegex, re
	default:
		return nil, fmt.Errorf("no supported match pattern")
	}
	if sm.kind != strExact && sm.kind != strRegex && sm.value == "" {
		return nil, fmt.Errorf("empty prefix, suffix or contains")
	}
	return sm, nil
}
