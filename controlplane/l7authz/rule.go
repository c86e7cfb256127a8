package l7authz

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"
	securityv1beta1 "istio.io/api/security/v1beta1"
)

// Headers the translation matches on.
const (
	headerAuthority = ":authority"
	headerMethod    = ":method"
)

// spiffePrefix is how a peer's URI SAN starts; policy principals omit it.
const spiffePrefix = "spiffe://"

// translator translates the rules of one policy.
type translator struct {
	policyNS string
	deny     bool // the policy's action is DENY
	rule     int  // index of the rule being translated
	warnings []string
}

// unknowable is the placeholder for a constraint that cannot be checked:
// it never holds in ALLOW and always holds in DENY.
func (t *translator) unknowable() *expr { return constant(t.deny) }

func (t *translator) warnf(format string, args ...any) {
	t.warnings = append(t.warnings, fmt.Sprintf("rule %d ", t.rule)+fmt.Sprintf(format, args...))
}

// consequence says what a placeholder does, for warnings.
func (t *translator) consequence(what string) string {
	if t.deny {
		return what + " is treated as matching every request (fail closed: the rule denies on its other fields alone)"
	}
	return what + " can never match (fail closed)"
}

// translateRule returns the Envoy policy for a rule, or nil when the rule
// can never match. A rule holds when its from (any entry), its to (any
// entry) and each of its when conditions hold; empty parts hold.
func (t *translator) translateRule(r *securityv1beta1.Rule) *rbacv3.Policy {
	var perms, prins []*expr
	if from := r.GetFrom(); len(from) > 0 {
		var entries []*expr
		for j, f := range from {
			entries = append(entries, t.source(fmt.Sprintf("from[%d].source", j), f.GetSource()))
		}
		prins = append(prins, or(entries...))
	}
	if to := r.GetTo(); len(to) > 0 {
		var entries []*expr
		for j, o := range to {
			entries = append(entries, t.operation(fmt.Sprintf("to[%d].operation", j), o.GetOperation()))
		}
		perms = append(perms, or(entries...))
	}
	for j, c := range r.GetWhen() {
		e, principalSide := t.condition(fmt.Sprintf("when[%d]", j), c)
		if principalSide {
			prins = append(prins, e)
		} else {
			perms = append(perms, e)
		}
	}
	perm, prin := and(perms...), and(prins...)
	if perm.isConst(false) || prin.isConst(false) {
		return nil
	}
	return &rbacv3.Policy{Permissions: []*rbacv3.Permission{perm.permission()}, Principals: []*rbacv3.Principal{prin.principal()}}
}

// leafFunc translates one value of a field into an RBAC leaf.
type leafFunc func(v string) (*expr, error)

// field is the constraint of one field: any of vals (when set) and none of
// notVals. An invalid value is warned about and replaced so the constraint
// fails closed: in vals by the placeholder; in notVals by its opposite,
// since it sits under the negation.
func (t *translator) field(label, name, notName string, vals, notVals []string, leaf leafFunc) *expr {
	var parts []*expr
	if len(vals) > 0 {
		var alts []*expr
		for _, v := range vals {
			e, err := leaf(v)
			if err != nil {
				t.warnf("%s %s: %q: %v; %s", label, name, v, err, t.consequence("this value"))
				e = t.unknowable()
			}
			alts = append(alts, e)
		}
		parts = append(parts, or(alts...))
	}
	if len(notVals) > 0 {
		var alts []*expr
		for _, v := range notVals {
			e, err := leaf(v)
			if err != nil {
				what := "the value excludes nobody (fail closed)"
				if !t.deny {
					what = "the field can never hold (fail closed)"
				}
				t.warnf("%s %s: %q: %v; %s", label, notName, v, err, what)
				e = constant(!t.deny)
			}
			alts = append(alts, e)
		}
		parts = append(parts, not(or(alts...)))
	}
	return and(parts...)
}

// source translates a from entry: its fields all hold (an empty source
// holds for every request).
func (t *translator) source(label string, s *securityv1beta1.Source) *expr {
	var parts []*expr
	add := func(name string, vals, notVals []string, leaf leafFunc) {
		parts = append(parts, t.field(label, name, "not"+upperFirst(name), vals, notVals, leaf))
	}
	for _, l := range []struct {
		name string
		vals []string
	}{{"principals", s.GetPrincipals()}, {"notPrincipals", s.GetNotPrincipals()}} {
		for _, v := range l.vals {
			if strings.HasPrefix(v, spiffePrefix) {
				t.warnf("%s %s: %q starts with %q: principals are written without it, so this value never matches (as upstream)", label, l.name, v, spiffePrefix)
			}
		}
	}
	add("principals", s.GetPrincipals(), s.GetNotPrincipals(), principalLeaf)
	add("namespaces", s.GetNamespaces(), s.GetNotNamespaces(), namespaceLeaf)
	add("serviceAccounts", s.GetServiceAccounts(), s.GetNotServiceAccounts(), func(v string) (*expr, error) { return serviceAccountLeaf(v, t.policyNS) })
	add("trustDomains", s.GetTrustDomains(), s.GetNotTrustDomains(), trustDomainLeaf)
	add("ipBlocks", s.GetIpBlocks(), s.GetNotIpBlocks(), directRemoteIPLeaf)
	add("remoteIpBlocks", s.GetRemoteIpBlocks(), s.GetNotRemoteIpBlocks(), remoteIPLeaf)
	if len(s.GetRequestPrincipals())+len(s.GetNotRequestPrincipals()) > 0 {
		t.warnf("%s requestPrincipals/notRequestPrincipals: need RequestAuthentication (JWT), which is not supported; %s", label, t.consequence("this source"))
		parts = append(parts, t.unknowable())
	}
	return and(parts...)
}

// operation translates a to entry: its fields all hold.
func (t *translator) operation(label string, o *securityv1beta1.Operation) *expr {
	return and(
		t.field(label, "hosts", "notHosts", o.GetHosts(), o.GetNotHosts(), hostLeaf),
		t.field(label, "ports", "notPorts", o.GetPorts(), o.GetNotPorts(), portLeaf),
		t.field(label, "methods", "notMethods", o.GetMethods(), o.GetNotMethods(), func(v string) (*expr, error) { return headerLeaf(headerMethod, v) }),
		t.field(label, "paths", "notPaths", o.GetPaths(), o.GetNotPaths(), pathLeaf),
	)
}

// condition translates a when condition; principalSide says whether its
// leaves are Principals (else Permissions).
func (t *translator) condition(label string, c *securityv1beta1.Condition) (e *expr, principalSide bool) {
	key := c.GetKey()
	label = fmt.Sprintf("%s (key %q)", label, key)
	if len(c.GetValues())+len(c.GetNotValues()) == 0 {
		t.warnf("%s: has neither values nor notValues (Istio rejects this); %s", label, t.consequence("the condition"))
		return t.unknowable(), false
	}
	cond := func(leaf leafFunc) *expr {
		return t.field(label, "values", "notValues", c.GetValues(), c.GetNotValues(), leaf)
	}
	if name, ok := headerKey(key); ok {
		if !validHeaderName(name) {
			t.warnf("%s: invalid header name %q; %s", label, name, t.consequence("the condition"))
			return t.unknowable(), false
		}
		return cond(func(v string) (*expr, error) { return headerLeaf(strings.ToLower(name), v) }), false
	}
	switch key {
	case "source.ip":
		return cond(directRemoteIPLeaf), true
	case "remote.ip":
		return cond(remoteIPLeaf), true
	case "source.namespace":
		return cond(namespaceLeaf), true
	case "source.principal":
		return cond(principalLeaf), true
	case "destination.ip":
		return cond(destinationIPLeaf), false
	case "destination.port":
		return cond(portLeaf), false
	case "connection.sni":
		return cond(sniLeaf), false
	}
	switch {
	case strings.HasPrefix(key, "request.auth."):
		t.warnf("%s: needs RequestAuthentication (JWT), which is not supported; %s", label, t.consequence("the condition"))
	case strings.HasPrefix(key, "experimental.envoy.filters."):
		t.warnf("%s: Envoy filter metadata is not supported; %s", label, t.consequence("the condition"))
	default:
		t.warnf("%s: unknown or unsupported key; %s", label, t.consequence("the condition"))
	}
	return t.unknowable(), false
}

// headerKey extracts NAME from "request.headers[NAME]".
func headerKey(key string) (string, bool) {
	rest, ok := strings.CutPrefix(key, "request.headers[")
	if !ok {
		return "", false
	}
	name, ok := strings.CutSuffix(rest, "]")
	return name, ok
}

// validHeaderName accepts an HTTP token (RFC 9110), the only form a header
// field name can take.
func validHeaderName(name string) bool {
	if name == "" {
		return false
	}
	for _, c := range []byte(name) {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return false
		}
	}
	return true
}

func upperFirst(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

// valueError is an error about a value, constant so it can be a sentinel.
type valueError string

func (e valueError) Error() string { return string(e) }

const errEmpty valueError = "empty value"

// Value forms shared by string fields: "*" presence, "*x" suffix, "x*"
// prefix, else exact (as upstream; a "*" elsewhere is literal).
type form uint8

const (
	formExact form = iota
	formPrefix
	formSuffix
	formPresence
)

// parseForm splits a value into its form and the literal part.
func parseForm(v string) (form, string) {
	switch {
	case v == "*":
		return formPresence, ""
	case strings.HasPrefix(v, "*"):
		return formSuffix, v[1:]
	case strings.HasSuffix(v, "*"):
		return formPrefix, v[:len(v)-1]
	}
	return formExact, v
}

func exactMatcher(s string) *matcherv3.StringMatcher {
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: s}}
}

func prefixMatcher(s string) *matcherv3.StringMatcher {
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: s}}
}

func suffixMatcher(s string) *matcherv3.StringMatcher {
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Suffix{Suffix: s}}
}

// regexMatcher matches the whole value (Envoy's safe_regex is a full match).
func regexMatcher(re string) *matcherv3.StringMatcher {
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: re}}}
}

// stringMatcher turns a value form into a StringMatcher; presence is a
// non-empty value.
func stringMatcher(v string) (*matcherv3.StringMatcher, error) {
	if v == "" {
		return nil, errEmpty
	}
	switch f, s := parseForm(v); f {
	case formPresence:
		return regexMatcher(".+"), nil
	case formSuffix:
		return suffixMatcher(s), nil
	case formPrefix:
		return prefixMatcher(s), nil
	default:
		return exactMatcher(s), nil
	}
}

func authenticated(m *matcherv3.StringMatcher) *expr {
	return prinLeaf(&rbacv3.Principal{Identifier: &rbacv3.Principal_Authenticated_{
		Authenticated: &rbacv3.Principal_Authenticated{PrincipalName: m},
	}})
}

// principalLeaf matches the peer's URI SAN: a policy principal is the
// SPIFFE id without "spiffe://".
func principalLeaf(v string) (*expr, error) {
	if v == "" {
		return nil, errEmpty
	}
	switch f, s := parseForm(v); f {
	case formPresence:
		return authenticated(regexMatcher(".+")), nil
	case formSuffix:
		return authenticated(suffixMatcher(s)), nil
	case formPrefix:
		return authenticated(prefixMatcher(spiffePrefix + s)), nil
	default:
		return authenticated(exactMatcher(spiffePrefix + s)), nil
	}
}

// segmentPattern is the regex of one identity segment in a value form.
func segmentPattern(v string) (string, error) {
	if v == "" {
		return "", errEmpty
	}
	switch f, s := parseForm(v); f {
	case formPresence:
		return `[^/]+`, nil
	case formSuffix:
		return `[^/]*` + regexp.QuoteMeta(s), nil
	case formPrefix:
		return regexp.QuoteMeta(s) + `[^/]*`, nil
	default:
		if strings.Contains(s, "/") {
			return "", errors.New(`contains "/"`)
		}
		return regexp.QuoteMeta(s), nil
	}
}

// namespaceLeaf matches the namespace of the peer's SPIFFE id
// (".../ns/<namespace>/...").
func namespaceLeaf(v string) (*expr, error) {
	p, err := segmentPattern(v)
	if err != nil {
		return nil, err
	}
	return authenticated(regexMatcher(`.*/ns/` + p + `/.*`)), nil
}

// trustDomainLeaf matches the trust domain of the peer's SPIFFE id.
func trustDomainLeaf(v string) (*expr, error) {
	p, err := segmentPattern(v)
	if err != nil {
		return nil, err
	}
	return authenticated(regexMatcher(regexp.QuoteMeta(spiffePrefix) + p + `/.*`)), nil
}

// serviceAccountLeaf matches "<ns>/<sa>", or "<sa>" in the policy's
// namespace, exactly: no wildcard is allowed.
func serviceAccountLeaf(v, policyNS string) (*expr, error) {
	if v == "" {
		return nil, errEmpty
	}
	if strings.Contains(v, "*") {
		return nil, errors.New("wildcards are not allowed in service accounts")
	}
	ns, sa, ok := strings.Cut(v, "/")
	if !ok {
		ns, sa = policyNS, v
	}
	if ns == "" || sa == "" || strings.Contains(sa, "/") {
		return nil, errors.New(`want "<namespace>/<serviceaccount>" or "<serviceaccount>"`)
	}
	return authenticated(regexMatcher(`.*/ns/` + regexp.QuoteMeta(ns) + `/sa/` + regexp.QuoteMeta(sa))), nil
}

// cidr parses an IP or CIDR into a CidrRange with the host bits cleared.
func cidr(v string) (*corev3.CidrRange, error) {
	var p netip.Prefix
	if strings.Contains(v, "/") {
		var err error
		if p, err = netip.ParsePrefix(v); err != nil {
			return nil, fmt.Errorf("invalid CIDR: %w", err)
		}
	} else {
		a, err := netip.ParseAddr(v)
		if err != nil {
			return nil, fmt.Errorf("invalid IP: %w", err)
		}
		if a.Zone() != "" {
			return nil, errors.New("invalid IP: has a zone")
		}
		p = netip.PrefixFrom(a, a.BitLen())
	}
	p = p.Masked()
	return &corev3.CidrRange{AddressPrefix: p.Addr().String(), PrefixLen: wrapperspb.UInt32(uint32(p.Bits()))}, nil
}

// directRemoteIPLeaf matches the client address (source.ip, ipBlocks): for
// a waypoint, the original client's IP carried through the tunnel.
func directRemoteIPLeaf(v string) (*expr, error) {
	c, err := cidr(v)
	if err != nil {
		return nil, err
	}
	return prinLeaf(&rbacv3.Principal{Identifier: &rbacv3.Principal_DirectRemoteIp{DirectRemoteIp: c}}), nil
}

// remoteIPLeaf matches the origin address (remote.ip, remoteIpBlocks), as
// inferred from X-Forwarded-For or the PROXY protocol.
func remoteIPLeaf(v string) (*expr, error) {
	c, err := cidr(v)
	if err != nil {
		return nil, err
	}
	return prinLeaf(&rbacv3.Principal{Identifier: &rbacv3.Principal_RemoteIp{RemoteIp: c}}), nil
}

func destinationIPLeaf(v string) (*expr, error) {
	c, err := cidr(v)
	if err != nil {
		return nil, err
	}
	return permLeaf(&rbacv3.Permission{Rule: &rbacv3.Permission_DestinationIp{DestinationIp: c}}), nil
}

func portLeaf(v string) (*expr, error) {
	n, err := strconv.ParseUint(v, 10, 16)
	if err != nil || n == 0 {
		return nil, errors.New("invalid port: want 1-65535")
	}
	return permLeaf(&rbacv3.Permission{Rule: &rbacv3.Permission_DestinationPort{DestinationPort: uint32(n)}}), nil
}

func sniLeaf(v string) (*expr, error) {
	m, err := stringMatcher(v)
	if err != nil {
		return nil, err
	}
	return permLeaf(&rbacv3.Permission{Rule: &rbacv3.Permission_RequestedServerName{RequestedServerName: m}}), nil
}

func headerPerm(h *routev3.HeaderMatcher) *expr {
	return permLeaf(&rbacv3.Permission{Rule: &rbacv3.Permission_Header{Header: h}})
}

// headerLeaf matches a request header (or :method); presence "*" means the
// header is present. Several values of a header are matched joined by ",".
func headerLeaf(name, v string) (*expr, error) {
	if v == "*" {
		return headerPerm(&routev3.HeaderMatcher{Name: name, HeaderMatchSpecifier: &routev3.HeaderMatcher_PresentMatch{PresentMatch: true}}), nil
	}
	m, err := stringMatcher(v)
	if err != nil {
		return nil, err
	}
	return headerPerm(&routev3.HeaderMatcher{Name: name, HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: m}}), nil
}

// hostLeaf matches the :authority case-insensitively. A host without a
// port also matches it with any port ("example.com" matches
// "example.com:8080"), as upstream.
func hostLeaf(v string) (*expr, error) {
	if v == "" {
		return nil, errEmpty
	}
	if v == "*" {
		return headerPerm(&routev3.HeaderMatcher{Name: headerAuthority, HeaderMatchSpecifier: &routev3.HeaderMatcher_PresentMatch{PresentMatch: true}}), nil
	}
	f, s := parseForm(v)
	var m *matcherv3.StringMatcher
	switch {
	case f == formPrefix: // the wildcard covers any port
		m = prefixMatcher(s)
		m.IgnoreCase = true
	case hasPort(v) && f == formSuffix:
		m = suffixMatcher(s)
		m.IgnoreCase = true
	case hasPort(v):
		m = exactMatcher(s)
		m.IgnoreCase = true
	case f == formSuffix:
		m = regexMatcher(`(?i).*` + regexp.QuoteMeta(s) + `(:[0-9]+)?`)
	default:
		m = regexMatcher(`(?i)` + regexp.QuoteMeta(s) + `(:[0-9]+)?`)
	}
	return headerPerm(&routev3.HeaderMatcher{Name: headerAuthority, HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: m}}), nil
}

// hasPort reports whether a host value ends in ":<digits>" ("[v6]:port"
// for IPv6).
func hasPort(h string) bool {
	if strings.HasPrefix(h, "[") {
		i := strings.LastIndex(h, "]:")
		return i >= 0 && allDigits(h[i+2:])
	}
	i := strings.LastIndexByte(h, ':')
	return i >= 0 && strings.Count(h, ":") == 1 && allDigits(h[i+1:])
}

func allDigits(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range []byte(s) {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// pathLeaf matches the URL path (without query). Besides the value forms,
// a path with "{*}" (one segment) or "{**}" (any characters, "/"
// included; only as the last operator) is an Istio path template.
func pathLeaf(v string) (*expr, error) {
	var m *matcherv3.StringMatcher
	if strings.ContainsAny(v, "{}") {
		re, err := pathTemplate(v)
		if err != nil {
			return nil, err
		}
		m = regexMatcher(re)
	} else {
		var err error
		if m, err = stringMatcher(v); err != nil {
			return nil, err
		}
	}
	return permLeaf(&rbacv3.Permission{Rule: &rbacv3.Permission_UrlPath{UrlPath: &matcherv3.PathMatcher{Rule: &matcherv3.PathMatcher_Path{Path: m}}}}), nil
}

// pathTemplate converts a path template to a regex. A segment with an
// operator holds nothing else, and "*", "{" and "}" appear nowhere else.
func pathTemplate(v string) (string, error) {
	var b strings.Builder
	last := false // seen {**}
	for i, seg := range strings.Split(v, "/") {
		if i > 0 {
			b.WriteByte('/')
		}
		switch seg {
		case "{*}", "{**}":
			if last {
				return "", errors.New("invalid path template: {**} must be the last operator")
			}
			if seg == "{**}" {
				last = true
				b.WriteString(`.*`)
			} else {
				b.WriteString(`[^/]+`)
			}
		default:
			if strings.ContainsAny(seg, "*{}") {
				return "", fmt.Errorf("invalid path template: segment %q: an operator must be a whole segment {*} or {**}, and * { } appear nowhere else", seg)
			}
			b.WriteString(regexp.QuoteMeta(seg))
		}
	}
	return b.String(), nil
}
