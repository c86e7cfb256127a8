package routes

import (
	"fmt"
	"regexp"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// headerOps are header modifications at one level (route or backend).
type headerOps struct {
	reqAdd, respAdd       []*corev3.HeaderValueOption
	reqRemove, respRemove []string
}

func (h headerOps) empty() bool {
	return len(h.reqAdd)+len(h.respAdd)+len(h.reqRemove)+len(h.respRemove) == 0
}

// ruleFilters is what a rule's filters ask for.
type ruleFilters struct {
	headers  headerOps
	redirect *gatewayv1.HTTPRequestRedirectFilter
	rewrite  *gatewayv1.HTTPURLRewriteFilter
	mirrors  []*gatewayv1.HTTPRequestMirrorFilter
}

// httpFilters reads rule-level filters. Any filter it cannot honour makes
// the whole rule invalid: the returned issue says which.
func httpFilters(fs []gatewayv1.HTTPRouteFilter) (ruleFilters, *issue) {
	var rf ruleFilters
	for i, f := range fs {
		var err error
		switch f.Type {
		case gatewayv1.HTTPRouteFilterRequestHeaderModifier:
			err = addHeaderFilter(&rf.headers.reqAdd, &rf.headers.reqRemove, f.RequestHeaderModifier, "requestHeaderModifier")
		case gatewayv1.HTTPRouteFilterResponseHeaderModifier:
			err = addHeaderFilter(&rf.headers.respAdd, &rf.headers.respRemove, f.ResponseHeaderModifier, "responseHeaderModifier")
		case gatewayv1.HTTPRouteFilterRequestRedirect:
			if f.RequestRedirect == nil {
				err = fmt.Errorf("has no requestRedirect")
			}
			rf.redirect = f.RequestRedirect
		case gatewayv1.HTTPRouteFilterURLRewrite:
			if f.URLRewrite == nil {
				err = fmt.Errorf("has no urlRewrite")
			}
			rf.rewrite = f.URLRewrite
		case gatewayv1.HTTPRouteFilterRequestMirror:
			if f.RequestMirror == nil {
				err = fmt.Errorf("has no requestMirror")
			}
			rf.mirrors = append(rf.mirrors, f.RequestMirror)
		default:
			is := unsupported(fmt.Sprintf("filter %d (%s) is not supported by the waypoint", i, filterName(f.Type)))
			return rf, &is
		}
		if err != nil {
			is := unsupported(fmt.Sprintf("filter %d (%s): %v", i, f.Type, err))
			return rf, &is
		}
	}
	if rf.redirect != nil && rf.rewrite != nil {
		is := notAccepted(gatewayv1.RouteReasonIncompatibleFilters, "RequestRedirect and URLRewrite cannot be combined")
		return rf, &is
	}
	return rf, nil
}

func filterName(t gatewayv1.HTTPRouteFilterType) string {
	if t == "" {
		return "filter without type"
	}
	return string(t)
}

// grpcFilters maps GRPCRoute filters onto their HTTPRoute equivalents.
func grpcFilters(fs []gatewayv1.GRPCRouteFilter) []gatewayv1.HTTPRouteFilter {
	out := make([]gatewayv1.HTTPRouteFilter, len(fs))
	for i, f := range fs {
		out[i] = gatewayv1.HTTPRouteFilter{
			Type:                   gatewayv1.HTTPRouteFilterType(f.Type),
			RequestHeaderModifier:  f.RequestHeaderModifier,
			ResponseHeaderModifier: f.ResponseHeaderModifier,
			RequestMirror:          f.RequestMirror,
			ExtensionRef:           f.ExtensionRef,
		}
	}
	return out
}

// backendFilters reads the filters of one backendRef: only the header
// modifiers can be applied per backend (on the weighted cluster entry).
func backendFilters(fs []gatewayv1.HTTPRouteFilter) (headerOps, *issue) {
	var h headerOps
	for i, f := range fs {
		var err error
		switch f.Type {
		case gatewayv1.HTTPRouteFilterRequestHeaderModifier:
			err = addHeaderFilter(&h.reqAdd, &h.reqRemove, f.RequestHeaderModifier, "requestHeaderModifier")
		case gatewayv1.HTTPRouteFilterResponseHeaderModifier:
			err = addHeaderFilter(&h.respAdd, &h.respRemove, f.ResponseHeaderModifier, "responseHeaderModifier")
		default:
			is := unsupported(fmt.Sprintf("backendRef filter %d (%s) is not supported by the waypoint", i, filterName(f.Type)))
			return h, &is
		}
		if err != nil {
			is := unsupported(fmt.Sprintf("backendRef filter %d (%s): %v", i, f.Type, err))
			return h, &is
		}
	}
	return h, nil
}

// addHeaderFilter appends a header modifier: set overwrites, add appends,
// remove lists names to remove (Envoy removes before it adds).
func addHeaderFilter(add *[]*corev3.HeaderValueOption, remove *[]string, f *gatewayv1.HTTPHeaderFilter, field string) error {
	if f == nil {
		return fmt.Errorf("has no %s", field)
	}
	for _, h := range f.Set {
		name, err := modifiableHeader(string(h.Name))
		if err != nil {
			return fmt.Errorf("set: %w", err)
		}
		*add = append(*add, headerValue(name, h.Value, corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD))
	}
	for _, h := range f.Add {
		name, err := modifiableHeader(string(h.Name))
		if err != nil {
			return fmt.Errorf("add: %w", err)
		}
		*add = append(*add, headerValue(name, h.Value, corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD))
	}
	for _, n := range f.Remove {
		name, err := modifiableHeader(n)
		if err != nil {
			return fmt.Errorf("remove: %w", err)
		}
		*remove = append(*remove, name)
	}
	return nil
}

// modifiableHeader lower-cases a header name and refuses the ones Envoy
// does not let routes modify (pseudo-headers and host).
func modifiableHeader(name string) (string, error) {
	n := strings.ToLower(name)
	switch {
	case n == "":
		return "", fmt.Errorf("empty header name")
	case strings.HasPrefix(n, ":") || n == "host":
		return "", fmt.Errorf("header %q cannot be modified", name)
	}
	return n, nil
}

// headerValue builds one header to add. Envoy reads %...% in values as
// formatter commands, so a literal % is written %%.
func headerValue(name, value string, action corev3.HeaderValueOption_HeaderAppendAction) *corev3.HeaderValueOption {
	return &corev3.HeaderValueOption{
		Header:       &corev3.HeaderValue{Key: name, Value: strings.ReplaceAll(value, "%", "%%")},
		AppendAction: action,
	}
}

// redirectCode maps a Gateway API redirect status code to Envoy's.
func redirectCode(code int) (routev3.RedirectAction_RedirectResponseCode, bool) {
	switch code {
	case 301:
		return routev3.RedirectAction_MOVED_PERMANENTLY, true
	case 302:
		return routev3.RedirectAction_FOUND, true
	case 303:
		return routev3.RedirectAction_SEE_OTHER, true
	case 307:
		return routev3.RedirectAction_TEMPORARY_REDIRECT, true
	case 308:
		return routev3.RedirectAction_PERMANENT_REDIRECT, true
	}
	return 0, false
}

// redirectAction translates a RequestRedirect filter for one match. When
// neither port nor scheme is given, the Gateway API port is the listener
// port, which only the caller knows: listenerPort is then true and the
// caller sets port_redirect.
func redirectAction(f *gatewayv1.HTTPRequestRedirectFilter, mp matchedPath) (ra *routev3.RedirectAction, listenerPort bool, err error) {
	ra = &routev3.RedirectAction{ResponseCode: routev3.RedirectAction_FOUND}
	if f.StatusCode != nil {
		code, ok := redirectCode(*f.StatusCode)
		if !ok {
			return nil, false, fmt.Errorf("redirect status code %d is not supported", *f.StatusCode)
		}
		ra.ResponseCode = code
	}
	if f.Hostname != nil && *f.Hostname != "" {
		ra.HostRedirect = string(*f.Hostname)
	}
	switch {
	case f.Port != nil && *f.Port != 0:
		ra.PortRedirect = uint32(*f.Port)
	case f.Scheme != nil:
		ra.PortRedirect = wellKnownPort(*f.Scheme)
	default:
		listenerPort = true
	}
	if f.Scheme != nil {
		if wellKnownPort(*f.Scheme) == 0 {
			return nil, false, fmt.Errorf("redirect scheme %q is not supported", *f.Scheme)
		}
		ra.SchemeRewriteSpecifier = &routev3.RedirectAction_SchemeRedirect{SchemeRedirect: *f.Scheme}
	}
	if f.Path == nil {
		return ra, listenerPort, nil
	}
	switch f.Path.Type {
	case gatewayv1.FullPathHTTPPathModifier:
		if f.Path.ReplaceFullPath == nil {
			return nil, false, fmt.Errorf("redirect ReplaceFullPath without replaceFullPath")
		}
		ra.PathRewriteSpecifier = &routev3.RedirectAction_PathRedirect{PathRedirect: *f.Path.ReplaceFullPath}
	case gatewayv1.PrefixMatchHTTPPathModifier:
		literal, re, err := prefixReplacement(f.Path, mp)
		if err != nil {
			return nil, false, fmt.Errorf("redirect: %w", err)
		}
		if re != nil {
			ra.PathRewriteSpecifier = &routev3.RedirectAction_RegexRewrite{RegexRewrite: re}
		} else {
			ra.PathRewriteSpecifier = &routev3.RedirectAction_PrefixRewrite{PrefixRewrite: literal}
		}
	default:
		return nil, false, fmt.Errorf("redirect path modifier type %q is not supported", f.Path.Type)
	}
	return ra, listenerPort, nil
}

func wellKnownPort(scheme string) uint32 {
	switch scheme {
	case "http":
		return 80
	case "https":
		return 443
	}
	return 0
}

// applyRewrite translates a URLRewrite filter for one match onto ra.
func applyRewrite(ra *routev3.RouteAction, f *gatewayv1.HTTPURLRewriteFilter, mp matchedPath) error {
	if f.Hostname != nil && *f.Hostname != "" {
		ra.HostRewriteSpecifier = &routev3.RouteAction_HostRewriteLiteral{HostRewriteLiteral: string(*f.Hostname)}
	}
	if f.Path == nil {
		return nil
	}
	switch f.Path.Type {
	case gatewayv1.FullPathHTTPPathModifier:
		if f.Path.ReplaceFullPath == nil {
			return fmt.Errorf("rewrite ReplaceFullPath without replaceFullPath")
		}
		ra.RegexRewrite = &matcherv3.RegexMatchAndSubstitute{
			Pattern:      &matcherv3.RegexMatcher{Regex: "^/.*$"},
			Substitution: escapeSubstitution(*f.Path.ReplaceFullPath),
		}
	case gatewayv1.PrefixMatchHTTPPathModifier:
		literal, re, err := prefixReplacement(f.Path, mp)
		if err != nil {
			return fmt.Errorf("rewrite: %w", err)
		}
		if re != nil {
			ra.RegexRewrite = re
		} else {
			ra.PrefixRewrite = literal
		}
	default:
		return fmt.Errorf("rewrite path modifier type %q is not supported", f.Path.Type)
	}
	return nil
}

// prefixReplacement expresses ReplacePrefixMatch for the matched prefix in
// Envoy terms, which replace the matched characters literally. Gateway API
// replaces whole path elements, so:
//
//	prefix /foo, replacement /xyz or /xyz/: prefix_rewrite "/xyz"
//	prefix /foo, replacement "" or "/":     regex_rewrite ^/foo/* -> "/"
//	prefix /,    replacement /xyz:          prefix_rewrite "/xyz/"
//	prefix /,    replacement "" or "/":     prefix_rewrite "/" (no change)
func prefixReplacement(pm *gatewayv1.HTTPPathModifier, mp matchedPath) (string, *matcherv3.RegexMatchAndSubstitute, error) {
	if mp.kind != gatewayv1.PathMatchPathPrefix {
		return "", nil, fmt.Errorf("ReplacePrefixMatch needs a PathPrefix match, not %s", mp.kind)
	}
	if pm.ReplacePrefixMatch == nil {
		return "", nil, fmt.Errorf("ReplacePrefixMatch without replacePrefixMatch")
	}
	repl := strings.TrimSuffix(*pm.ReplacePrefixMatch, "/")
	if repl != "" && !strings.HasPrefix(repl, "/") {
		return "", nil, fmt.Errorf("replacePrefixMatch %q must start with /", *pm.ReplacePrefixMatch)
	}
	switch {
	case mp.value == "/" && repl == "":
		return "/", nil, nil
	case mp.value == "/":
		return repl + "/", nil, nil
	case repl == "":
		return "", &matcherv3.RegexMatchAndSubstitute{
			Pattern:      &matcherv3.RegexMatcher{Regex: "^" + regexp.QuoteMeta(mp.value) + "/*"},
			Substitution: "/",
		}, nil
	}
	return repl, nil, nil
}

// escapeSubstitution makes s literal in an Envoy regex substitution, where
// a backslash introduces a capture group reference.
func escapeSubstitution(s string) string {
	return strings.ReplaceAll(s, `\`, `\\`)
}

// mirrorPolicy translates a resolved RequestMirror filter.
func mirrorPolicy(cluster string, f *gatewayv1.HTTPRequestMirrorFilter) (*routev3.RouteAction_RequestMirrorPolicy, error) {
	p := &routev3.RouteAction_RequestMirrorPolicy{Cluster: cluster}
	switch {
	case f.Percent != nil && f.Fraction != nil:
		return nil, fmt.Errorf("mirror sets both percent and fraction")
	case f.Percent != nil:
		if *f.Percent < 0 || *f.Percent > 100 {
			return nil, fmt.Errorf("mirror percent %d is outside 0..100", *f.Percent)
		}
		if *f.Percent < 100 {
			p.RuntimeFraction = fraction(uint32(*f.Percent), typev3.FractionalPercent_HUNDRED)
		}
	case f.Fraction != nil:
		num, den := int64(f.Fraction.Numerator), int64(100)
		if f.Fraction.Denominator != nil {
			den = int64(*f.Fraction.Denominator)
		}
		if den < 1 || num < 0 || num > den {
			return nil, fmt.Errorf("mirror fraction %d/%d is not within 0..1", num, den)
		}
		if num < den {
			p.RuntimeFraction = fraction(uint32(num*1_000_000/den), typev3.FractionalPercent_MILLION)
		}
	}
	return p, nil
}

func fraction(n uint32, d typev3.FractionalPercent_DenominatorType) *corev3.RuntimeFractionalPercent {
	return &corev3.RuntimeFractionalPercent{DefaultValue: &typev3.FractionalPercent{Numerator: n, Denominator: d}}
}
