package rbac

import (
	"fmt"
	"net/netip"
	"net/textproto"
	"regexp"
	"slices"
	"strconv"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
)

// tri is a three-valued truth: unknown stands for what cannot be checked.
type tri uint8

const (
	no tri = iota
	yes
	unknown
)

func boolTri(b bool) tri {
	if b {
		return yes
	}
	return no
}

func (t tri) not() tri {
	switch t {
	case yes:
		return no
	case no:
		return yes
	}
	return unknown
}

// maxDepth bounds the nesting of permissions and principals.
const maxDepth = 64

// request is a request prepared for matching.
type request struct {
	a    *Attributes
	path string
}

func newRequest(a *Attributes) *request {
	p := a.Path
	if i := strings.IndexAny(p, "?#"); i >= 0 {
		p = p[:i]
	}
	return &request{a: a, path: p}
}

// node is a compiled permission, principal or policy.
type node interface {
	eval(r *request) tri
}

type constNode tri

func (n constNode) eval(*request) tri { return tri(n) }

type andNode []node

func (n andNode) eval(r *request) tri {
	out := yes
	for _, k := range n {
		switch k.eval(r) {
		case no:
			return no
		case unknown:
			out = unknown
		}
	}
	return out
}

type orNode []node

func (n orNode) eval(r *request) tri {
	out := no
	for _, k := range n {
		switch k.eval(r) {
		case yes:
			return yes
		case unknown:
			out = unknown
		}
	}
	return out
}

type notNode struct{ n node }

func (n notNode) eval(r *request) tri { return n.n.eval(r).not() }

// principalNode matches the peer's URI SAN; a nil matcher matches any.
type principalNode struct{ m *stringMatch }

func (n principalNode) eval(r *request) tri {
	if r.a.Principal == "" {
		return no
	}
	return boolTri(n.m == nil || n.m.match(r.a.Principal))
}

type ipField uint8

const (
	fieldDirectRemoteIP ipField = iota
	fieldRemoteIP
	fieldDestinationIP
)

type ipNode struct {
	field  ipField
	prefix netip.Prefix
}

func (n ipNode) eval(r *request) tri {
	var ip netip.Addr
	switch n.field {
	case fieldDirectRemoteIP:
		ip = r.a.DirectRemoteIP
	case fieldRemoteIP:
		ip = r.a.RemoteIP
	default:
		ip = r.a.DestinationIP
	}
	return boolTri(ip.IsValid() && n.prefix.Contains(ip.Unmap().WithZone("")))
}

type portNode uint32

func (n portNode) eval(r *request) tri { return boolTri(uint32(r.a.DestinationPort) == uint32(n)) }

// portRangeNode is [start, end).
type portRangeNode struct{ start, end int32 }

func (n portRangeNode) eval(r *request) tri {
	p := int32(r.a.DestinationPort)
	return boolTri(p >= n.start && p < n.end)
}

type pathNode struct{ m *stringMatch }

func (n pathNode) eval(r *request) tri { return boolTri(n.m.match(r.path)) }

type sniNode struct{ m *stringMatch }

func (n sniNode) eval(r *request) tri { return boolTri(n.m.match(r.a.SNI)) }

// headerSource says where a header's value comes from.
type headerSource uint8

const (
	fromHeader headerSource = iota
	fromHost
	fromMethod
)

type headerKind uint8

const (
	headerString headerKind = iota
	headerPresent
	headerRange
)

type headerNode struct {
	name         string // canonical MIME form, for Attributes.Header
	source       headerSource
	kind         headerKind
	m            *stringMatch // headerString
	present      bool         // headerPresent
	start, end   int64        // headerRange, [start, end)
	invert       bool
	missingEmpty bool
}

// value returns the header's value, several joined by ",", and whether
// it is present.
func (n *headerNode) value(r *request) (string, bool) {
	switch n.source {
	case fromHost:
		return r.a.Host, r.a.Host != ""
	case fromMethod:
		return r.a.Method, r.a.Method != ""
	}
	vals := r.a.Header[n.name]
	// Tolerate a map filled without canonical keys (e.g. HTTP/2 lower
	// case): a DENY must not be bypassed by the key's case.
	var others []string
	for k := range r.a.Header {
		if k != n.name && strings.EqualFold(k, n.name) {
			others = append(others, k)
		}
	}
	if len(others) > 0 {
		slices.Sort(others)
		vals = slices.Clone(vals)
		for _, k := range others {
			vals = append(vals, r.a.Header[k]...)
		}
	}
	if len(vals) == 0 {
		return "", false
	}
	return strings.Join(vals, ","), true
}

func (n *headerNode) eval(r *request) tri {
	v, ok := n.value(r)
	if n.kind == headerPresent {
		return boolTri((ok == n.present) != n.invert)
	}
	if !ok {
		if !n.missingEmpty {
			return no // Envoy ignores the rule: no match, inverted or not
		}
		v = ""
	}
	var m bool
	switch n.kind {
	case headerRange:
		i, err := strconv.ParseInt(v, 10, 64)
		m = err == nil && i >= n.start && i < n.end
	default:
		m = n.m.match(v)
	}
	return boolTri(m != n.invert)
}

type matchKind uint8

const (
	matchExact matchKind = iota
	matchPrefix
	matchSuffix
	matchContains
	matchRegex
)

type stringMatch struct {
	kind       matchKind
	s          string // lower case when ignoreCase
	ignoreCase bool
	re         *regexp.Regexp
}

func (m *stringMatch) match(v string) bool {
	if m.kind == matchRegex {
		return m.re.MatchString(v)
	}
	if m.ignoreCase {
		v = asciiLower(v)
	}
	switch m.kind {
	case matchExact:
		return v == m.s
	case matchPrefix:
		return strings.HasPrefix(v, m.s)
	case matchSuffix:
		return strings.HasSuffix(v, m.s)
	}
	return strings.Contains(v, m.s)
}

// asciiLower lower-cases ASCII letters only, as Envoy's ignore_case.
func asciiLower(s string) string {
	for i := 0; i < len(s); i++ {
		if 'A' <= s[i] && s[i] <= 'Z' {
			b := []byte(s)
			for j := i; j < len(b); j++ {
				if 'A' <= b[j] && b[j] <= 'Z' {
					b[j] += 'a' - 'A'
				}
			}
			return string(b)
		}
	}
	return s
}

// compiler compiles the policies of one RBAC, collecting warnings.
type compiler struct {
	prefix   string // resource and policy, for warnings
	warnings []string
}

// unsupported records a warning and returns the unknown node.
func (c *compiler) unsupported(path, format string, args ...any) node {
	c.warnings = append(c.warnings, c.prefix+path+": "+fmt.Sprintf(format, args...)+": treated as unknown (an ALLOW policy does not match, a DENY policy matches)")
	return constNode(unknown)
}

func (c *compiler) policy(p *rbacv3.Policy) node {
	if p == nil {
		return c.unsupported("", "nil policy")
	}
	parts := andNode{}
	if p.GetCondition() != nil || p.GetCheckedCondition() != nil {
		parts = append(parts, c.unsupported("", "CEL condition is not supported"))
	}
	if len(p.GetPermissions()) == 0 {
		parts = append(parts, c.unsupported("permissions", "empty (Envoy requires at least one)"))
	} else {
		var or orNode
		for i, x := range p.GetPermissions() {
			or = append(or, c.permission(fmt.Sprintf("permissions[%d]", i), x, 1))
		}
		parts = append(parts, or)
	}
	if len(p.GetPrincipals()) == 0 {
		parts = append(parts, c.unsupported("principals", "empty (Envoy requires at least one)"))
	} else {
		var or orNode
		for i, x := range p.GetPrincipals() {
			or = append(or, c.principal(fmt.Sprintf("principals[%d]", i), x, 1))
		}
		parts = append(parts, or)
	}
	return parts
}

func (c *compiler) permission(path string, p *rbacv3.Permission, depth int) node {
	if depth > maxDepth {
		return c.unsupported(path, "nested deeper than %d", maxDepth)
	}
	set := func(name string, s *rbacv3.Permission_Set) []node {
		if len(s.GetRules()) == 0 {
			return nil
		}
		var out []node
		for i, x := range s.GetRules() {
			out = append(out, c.permission(fmt.Sprintf("%s.%s[%d]", path, name, i), x, depth+1))
		}
		return out
	}
	switch r := p.GetRule().(type) {
	case *rbacv3.Permission_AndRules:
		if ns := set("and_rules", r.AndRules); ns != nil {
			return andNode(ns)
		}
		return c.unsupported(path, "empty and_rules")
	case *rbacv3.Permission_OrRules:
		if ns := set("or_rules", r.OrRules); ns != nil {
			return orNode(ns)
		}
		return c.unsupported(path, "empty or_rules")
	case *rbacv3.Permission_NotRule:
		return notNode{c.permission(path+".not_rule", r.NotRule, depth+1)}
	case *rbacv3.Permission_Any:
		if !r.Any {
			return c.unsupported(path, "any: false")
		}
		return constNode(yes)
	case *rbacv3.Permission_Header:
		return c.header(path+".header", r.Header)
	case *rbacv3.Permission_UrlPath:
		return c.urlPath(path+".url_path", r.UrlPath)
	case *rbacv3.Permission_DestinationIp:
		return c.cidr(path+".destination_ip", fieldDestinationIP, r.DestinationIp)
	case *rbacv3.Permission_DestinationPort:
		if r.DestinationPort > 65535 {
			return c.unsupported(path, "destination_port %d out of range", r.DestinationPort)
		}
		return portNode(r.DestinationPort)
	case *rbacv3.Permission_DestinationPortRange:
		if r.DestinationPortRange == nil {
			return c.unsupported(path, "destination_port_range unset")
		}
		return portRangeNode{start: r.DestinationPortRange.GetStart(), end: r.DestinationPortRange.GetEnd()}
	case *rbacv3.Permission_RequestedServerName:
		m, ok := c.stringMatch(path+".requested_server_name", r.RequestedServerName)
		if !ok {
			return constNode(unknown)
		}
		return sniNode{m}
	case nil:
		return c.unsupported(path, "no rule set")
	default:
		return c.unsupported(path, "permission %s is not supported", ruleName(p))
	}
}

func (c *compiler) principal(path string, p *rbacv3.Principal, depth int) node {
	if depth > maxDepth {
		return c.unsupported(path, "nested deeper than %d", maxDepth)
	}
	set := func(name string, s *rbacv3.Principal_Set) []node {
		if len(s.GetIds()) == 0 {
			return nil
		}
		var out []node
		for i, x := range s.GetIds() {
			out = append(out, c.principal(fmt.Sprintf("%s.%s[%d]", path, name, i), x, depth+1))
		}
		return out
	}
	switch id := p.GetIdentifier().(type) {
	case *rbacv3.Principal_AndIds:
		if ns := set("and_ids", id.AndIds); ns != nil {
			return andNode(ns)
		}
		return c.unsupported(path, "empty and_ids")
	case *rbacv3.Principal_OrIds:
		if ns := set("or_ids", id.OrIds); ns != nil {
			return orNode(ns)
		}
		return c.unsupported(path, "empty or_ids")
	case *rbacv3.Principal_NotId:
		return notNode{c.principal(path+".not_id", id.NotId, depth+1)}
	case *rbacv3.Principal_Any:
		if !id.Any {
			return c.unsupported(path, "any: false")
		}
		return constNode(yes)
	case *rbacv3.Principal_Authenticated_:
		pn := id.Authenticated.GetPrincipalName()
		if pn == nil {
			return principalNode{}
		}
		m, ok := c.stringMatch(path+".authenticated.principal_name", pn)
		if !ok {
			return constNode(unknown)
		}
		return principalNode{m}
	case *rbacv3.Principal_DirectRemoteIp:
		return c.cidr(path+".direct_remote_ip", fieldDirectRemoteIP, id.DirectRemoteIp)
	case *rbacv3.Principal_RemoteIp:
		return c.cidr(path+".remote_ip", fieldRemoteIP, id.RemoteIp)
	case *rbacv3.Principal_Header:
		return c.header(path+".header", id.Header)
	case *rbacv3.Principal_UrlPath:
		return c.urlPath(path+".url_path", id.UrlPath)
	case nil:
		return c.unsupported(path, "no identifier set")
	default:
		return c.unsupported(path, "principal %s is not supported", identifierName(p))
	}
}

// ruleName and identifierName name the set oneof field, for warnings.
func ruleName(p *rbacv3.Permission) string {
	if fd := p.ProtoReflect().WhichOneof(p.ProtoReflect().Descriptor().Oneofs().ByName("rule")); fd != nil {
		return string(fd.Name())
	}
	return "?"
}

func identifierName(p *rbacv3.Principal) string {
	if fd := p.ProtoReflect().WhichOneof(p.ProtoReflect().Descriptor().Oneofs().ByName("identifier")); fd != nil {
		return string(fd.Name())
	}
	return "?"
}

func (c *compiler) cidr(path string, field ipField, r *corev3.CidrRange) node {
	if r == nil {
		return c.unsupported(path, "unset")
	}
	addr, err := netip.ParseAddr(r.GetAddressPrefix())
	if err != nil || addr.Zone() != "" {
		return c.unsupported(path, "invalid address %q", r.GetAddressPrefix())
	}
	if l := r.GetPrefixLen().GetValue(); l > uint32(addr.BitLen()) {
		return c.unsupported(path, "prefix_len %d too long for %s", l, addr)
	}
	bits := int(r.GetPrefixLen().GetValue())
	if addr.Is4In6() && bits >= 96 { // an IPv4-mapped range is the IPv4 one
		addr, bits = addr.Unmap(), bits-96
	}
	p, err := addr.Prefix(bits)
	if err != nil {
		return c.unsupported(path, "invalid prefix: %v", err)
	}
	return ipNode{field: field, prefix: p}
}

func (c *compiler) urlPath(path string, m *matcherv3.PathMatcher) node {
	pm := m.GetPath()
	if pm == nil {
		return c.unsupported(path, "no path matcher set")
	}
	sm, ok := c.stringMatch(path+".path", pm)
	if !ok {
		return constNode(unknown)
	}
	return pathNode{sm}
}

func (c *compiler) header(path string, h *routev3.HeaderMatcher) node {
	if h == nil {
		return c.unsupported(path, "unset")
	}
	name := strings.ToLower(h.GetName())
	n := &headerNode{invert: h.GetInvertMatch(), missingEmpty: h.GetTreatMissingHeaderAsEmpty()}
	switch {
	case name == ":authority" || name == "host":
		n.source = fromHost
	case name == ":method":
		n.source = fromMethod
	case strings.HasPrefix(name, ":"):
		return c.unsupported(path, "pseudo-header %q is not available", name)
	case name == "" || !validHeaderName(name):
		return c.unsupported(path, "invalid header name %q", h.GetName())
	default:
		n.name = textproto.CanonicalMIMEHeaderKey(name)
	}
	var (
		sm *stringMatch
		ok = true
	)
	switch s := h.GetHeaderMatchSpecifier().(type) {
	case *routev3.HeaderMatcher_ExactMatch:
		sm = &stringMatch{kind: matchExact, s: s.ExactMatch}
	case *routev3.HeaderMatcher_PrefixMatch:
		sm, ok = c.literal(path, matchPrefix, s.PrefixMatch, false)
	case *routev3.HeaderMatcher_SuffixMatch:
		sm, ok = c.literal(path, matchSuffix, s.SuffixMatch, false)
	case *routev3.HeaderMatcher_ContainsMatch:
		sm, ok = c.literal(path, matchContains, s.ContainsMatch, false)
	case *routev3.HeaderMatcher_SafeRegexMatch:
		sm, ok = c.regex(path+".safe_regex_match", s.SafeRegexMatch)
	case *routev3.HeaderMatcher_StringMatch:
		sm, ok = c.stringMatch(path+".string_match", s.StringMatch)
	case *routev3.HeaderMatcher_PresentMatch:
		n.kind, n.present = headerPresent, s.PresentMatch
		return n
	case *routev3.HeaderMatcher_RangeMatch:
		if s.RangeMatch == nil {
			return c.unsupported(path, "range_match unset")
		}
		n.kind, n.start, n.end = headerRange, s.RangeMatch.GetStart(), s.RangeMatch.GetEnd()
		return n
	default:
		return c.unsupported(path, "no header match specifier set")
	}
	if !ok {
		return constNode(unknown)
	}
	n.m = sm
	return n
}

// validHeaderName accepts an HTTP token (RFC 9110).
func validHeaderName(name string) bool {
	for _, ch := range []byte(name) {
		if !('a' <= ch && ch <= 'z' || 'A' <= ch && ch <= 'Z' || '0' <= ch && ch <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", ch) >= 0) {
			return false
		}
	}
	return true
}

// stringMatch compiles a StringMatcher; ok is false (with a warning) when
// it is unsupported.
func (c *compiler) stringMatch(path string, m *matcherv3.StringMatcher) (*stringMatch, bool) {
	if m == nil {
		c.unsupported(path, "unset")
		return nil, false
	}
	ic := m.GetIgnoreCase()
	switch p := m.GetMatchPattern().(type) {
	case *matcherv3.StringMatcher_Exact:
		if ic {
			return &stringMatch{kind: matchExact, s: asciiLower(p.Exact), ignoreCase: true}, true
		}
		return &stringMatch{kind: matchExact, s: p.Exact}, true
	case *matcherv3.StringMatcher_Prefix:
		return c.literal(path, matchPrefix, p.Prefix, ic)
	case *matcherv3.StringMatcher_Suffix:
		return c.literal(path, matchSuffix, p.Suffix, ic)
	case *matcherv3.StringMatcher_Contains:
		return c.literal(path, matchContains, p.Contains, ic)
	case *matcherv3.StringMatcher_SafeRegex:
		return c.regex(path+".safe_regex", p.SafeRegex)
	case nil:
		c.unsupported(path, "no match pattern set")
	default:
		c.unsupported(path, "string matcher %T is not supported", p)
	}
	return nil, false
}

// literal compiles a prefix, suffix or contains match; Envoy rejects an
// empty one.
func (c *compiler) literal(path string, kind matchKind, s string, ignoreCase bool) (*stringMatch, bool) {
	if s == "" {
		c.unsupported(path, "empty prefix, suffix or contains value (Envoy rejects it)")
		return nil, false
	}
	if ignoreCase {
		s = asciiLower(s)
	}
	return &stringMatch{kind: kind, s: s, ignoreCase: ignoreCase}, true
}

// regex compiles a whole-value RE2 match.
func (c *compiler) regex(path string, r *matcherv3.RegexMatcher) (*stringMatch, bool) {
	if r.GetRegex() == "" {
		c.unsupported(path, "empty regex")
		return nil, false
	}
	// The regex must parse on its own, so that wrapping it cannot change
	// its structure (an unbalanced ")" would).
	if _, err := regexp.Compile(r.GetRegex()); err != nil {
		c.unsupported(path, "invalid regex %q: %v", r.GetRegex(), err)
		return nil, false
	}
	re, err := regexp.Compile(`\A(?:` + r.GetRegex() + `)\z`)
	if err != nil {
		c.unsupported(path, "invalid regex %q: %v", r.GetRegex(), err)
		return nil, false
	}
	return &stringMatch{kind: matchRegex, re: re}, true
}
