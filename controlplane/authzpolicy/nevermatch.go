// Translation-time checks for conditions that can never match. Each check
// proves impossibility; when it cannot (too many combinations, forms it
// does not reason about), it says the condition can match, so a warning is
// never raised for a policy that could match.
//
// What can match is fixed by what ztunnel compares: a peer's principal is
// its SPIFFE id without "spiffe://", <trust-domain>/ns/<namespace>/sa/<sa>,
// and every peer id passed identity.ParseSPIFFE (a SPIFFE trust domain, a
// DNS-1123 label namespace, a DNS-1123 subdomain service account).

package authzpolicy

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"istio.io/istio/pkg/workloadapi/security"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/ambit-mesh/ambit/identity"
)

// maxCombinations bounds the combinations a check tries before it gives up
// and says "can match".
const maxCombinations = 4096

// checkRule returns the warnings for one translated rule: values that can
// never match, items (from, to or when entries) that can never match, or
// the rule itself when it can never match; canMatch is false in that case.
func checkRule(rule int, clauses [][]item) (warnings []string, canMatch bool) {
	for _, c := range clauses {
		for _, it := range c {
			for _, msg := range valueProblems(it) {
				warnings = append(warnings, fmt.Sprintf("rule %d %s", rule, msg))
			}
		}
	}
	if never := ruleNever(clauses); never != "" {
		return append(warnings, fmt.Sprintf("rule %d can never match: %s", rule, never)), false
	}
	for _, c := range clauses {
		for _, it := range c {
			if never := conjunctionOf(it).never(); never != "" {
				warnings = append(warnings, fmt.Sprintf("rule %d %s can never match: %s", rule, it.label, never))
			}
		}
	}
	return warnings, true
}

// ruleNever says why a translated rule can never match, or "" when it may:
// some clause has no item that can match, or no choice of one item per
// clause can hold at once.
func ruleNever(clauses [][]item) string {
	var alive [][]item
	for _, c := range clauses {
		var ok []item
		var why []string
		for _, it := range c {
			if never := conjunctionOf(it).never(); never != "" {
				why = append(why, it.label+": "+never)
			} else {
				ok = append(ok, it)
			}
		}
		if len(ok) == 0 {
			return strings.Join(why, "; ")
		}
		alive = append(alive, ok)
	}
	combos := 1
	for _, c := range alive {
		if combos *= len(c); combos > maxCombinations {
			return ""
		}
	}
	first := ""
	for _, choice := range choices(alive) {
		never := conjunctionOf(choice...).never()
		if never == "" {
			return ""
		}
		if first == "" {
			first = labels(choice) + " together: " + never
		}
	}
	if combos == 1 {
		return first
	}
	return "no choice of one entry per from, to and when holds at once; for example " + first
}

// choices lists every way to take one item of each clause.
func choices(clauses [][]item) [][]item {
	out := [][]item{nil}
	for _, c := range clauses {
		var next [][]item
		for _, prefix := range out {
			for _, it := range c {
				next = append(next, append(slices.Clone(prefix), it))
			}
		}
		out = next
	}
	return out
}

func labels(items []item) string {
	var ls []string
	for _, it := range items {
		ls = append(ls, it.label)
	}
	return strings.Join(ls, " and ")
}

// field names a list of an item for messages: the source or operation
// field for from and to entries, the key and values/notValues for when.
func (it item) field(name string, positive bool) string {
	switch {
	case it.key == "":
		return name
	case positive:
		return it.key + " values"
	default:
		return it.key + " notValues"
	}
}

// valueProblems reports the identity values of an item that no peer can
// ever match: such a positive value never holds, a negative one excludes
// nobody.
func valueProblems(it item) []string {
	var out []string
	report := func(field string, positive bool, value, why string) {
		msg := fmt.Sprintf("%s %s: %q never matches", it.label, it.field(field, positive), value)
		if !positive {
			msg += ", so it excludes nobody"
		}
		out = append(out, msg+": "+why)
	}
	for _, l := range []struct {
		field    string
		positive bool
		ms       []*security.StringMatch
		pattern  func(*security.StringMatch) (idPattern, string)
	}{
		{"principals", true, it.m.GetPrincipals(), principalPattern},
		{"notPrincipals", false, it.m.GetNotPrincipals(), principalPattern},
		{"namespaces", true, it.m.GetNamespaces(), namespacePattern},
		{"notNamespaces", false, it.m.GetNotNamespaces(), namespacePattern},
	} {
		for _, sm := range l.ms {
			if _, why := l.pattern(sm); why != "" {
				report(l.field, l.positive, stringForm(sm), why)
			}
		}
	}
	for _, l := range []struct {
		field    string
		positive bool
		ms       []*security.ServiceAccountMatch
	}{
		{"serviceAccounts", true, it.m.GetServiceAccounts()},
		{"notServiceAccounts", false, it.m.GetNotServiceAccounts()},
	} {
		for _, sa := range l.ms {
			if _, why := saPattern(sa); why != "" {
				report(l.field, l.positive, sa.GetNamespace()+"/"+sa.GetServiceAccount(), why)
			}
		}
	}
	return out
}

// stringForm writes a string match back in the policy's syntax.
func stringForm(sm *security.StringMatch) string {
	switch t := sm.GetMatchType().(type) {
	case *security.StringMatch_Exact:
		return t.Exact
	case *security.StringMatch_Prefix:
		return t.Prefix + "*"
	case *security.StringMatch_Suffix:
		return "*" + t.Suffix
	}
	return "*"
}

// The parts of a peer identity.
const (
	partTD = iota // trust domain
	partNS        // namespace
	partSA        // service account
)

// partMatch is what a condition requires of one part of a peer identity:
// an exact value and/or a prefix and a suffix. The zero value is any value.
type partMatch struct {
	exact          string
	hasExact       bool
	prefix, suffix string
}

// idPattern is what a condition requires of a peer identity, part by part.
type idPattern [3]partMatch

// principalLayout is the principal's segments: a part, or a fixed word.
var principalLayout = [5]struct {
	part int
	word string
}{{partTD, ""}, {-1, "ns"}, {partNS, ""}, {-1, "sa"}, {partSA, ""}}

const principalShape = `a principal is <trust-domain>/ns/<namespace>/sa/<service-account>, or a prefix ("x*") or suffix ("*x") of one`

// principalPattern returns what a principals value requires of a peer, or
// why no peer can match it.
func principalPattern(sm *security.StringMatch) (idPattern, string) {
	var p idPattern
	v := stringForm(sm)
	if strings.Contains(v, "spiffe://") {
		return p, spiffeHint(v)
	}
	switch t := sm.GetMatchType().(type) {
	case *security.StringMatch_Exact:
		return segmentsPattern(strings.Split(t.Exact, "/"), 0, false, false)
	case *security.StringMatch_Prefix:
		return segmentsPattern(strings.Split(t.Prefix, "/"), 0, false, true)
	case *security.StringMatch_Suffix:
		segs := strings.Split(t.Suffix, "/")
		return segmentsPattern(segs, len(principalLayout)-len(segs), true, false)
	}
	return p, ""
}

// segmentsPattern reads principal segments placed from layout position
// start. openFirst and openLast say the first or last segment is only a
// suffix or a prefix of the part it falls in (the "*x" and "x*" forms).
func segmentsPattern(segs []string, start int, openFirst, openLast bool) (idPattern, string) {
	var p idPattern
	if start < 0 || start+len(segs) > len(principalLayout) || (!openFirst && !openLast && len(segs) != len(principalLayout)) {
		return p, principalShape
	}
	for j, s := range segs {
		pos := principalLayout[start+j]
		suffixOnly, prefixOnly := openFirst && j == 0, openLast && j == len(segs)-1
		switch {
		case pos.part < 0 && suffixOnly:
			if !strings.HasSuffix(pos.word, s) {
				return p, principalShape
			}
		case pos.part < 0 && prefixOnly:
			if !strings.HasPrefix(pos.word, s) {
				return p, principalShape
			}
		case pos.part < 0:
			if s != pos.word {
				return p, principalShape
			}
		case suffixOnly || prefixOnly:
			if why := partChars(pos.part, s); why != "" {
				return p, why
			}
			if suffixOnly {
				p[pos.part].suffix = s
			}
			if prefixOnly {
				p[pos.part].prefix = s
			}
		default:
			if why := validPart(pos.part, s); why != "" {
				return p, why
			}
			p[pos.part] = partMatch{exact: s, hasExact: true}
		}
	}
	return p, ""
}

// spiffeHint explains a principal written as a SPIFFE URI. Upstream Istio
// keeps such a value as written (istiod and its validation do not touch
// it, and ztunnel compares it with the peer id stripped of "spiffe://"),
// so it never matches; Ambit enforces it the same way and says so.
func spiffeHint(v string) string {
	fixed := strings.Replace(v, "spiffe://", "", 1)
	hint := `principals are written without "spiffe://"`
	if _, why := principalPattern(stringMatches([]string{fixed})[0]); why == "" {
		hint += fmt.Sprintf(" (write %q)", fixed)
	}
	return hint + "; as in Istio, the value is enforced as written and matches no peer"
}

// namespacePattern returns what a namespaces value requires of a peer, or
// why no peer can match it.
func namespacePattern(sm *security.StringMatch) (idPattern, string) {
	var p idPattern
	switch t := sm.GetMatchType().(type) {
	case *security.StringMatch_Exact:
		if why := validPart(partNS, t.Exact); why != "" {
			return p, why
		}
		p[partNS] = partMatch{exact: t.Exact, hasExact: true}
	case *security.StringMatch_Prefix:
		if why := partChars(partNS, t.Prefix); why != "" {
			return p, why
		}
		p[partNS].prefix = t.Prefix
	case *security.StringMatch_Suffix:
		if why := partChars(partNS, t.Suffix); why != "" {
			return p, why
		}
		p[partNS].suffix = t.Suffix
	}
	return p, ""
}

// saPattern returns what a serviceAccounts value requires of a peer, or
// why no peer can match it.
func saPattern(sa *security.ServiceAccountMatch) (idPattern, string) {
	var p idPattern
	if why := validPart(partNS, sa.GetNamespace()); why != "" {
		return p, why
	}
	if why := validPart(partSA, sa.GetServiceAccount()); why != "" {
		return p, why
	}
	p[partNS] = partMatch{exact: sa.GetNamespace(), hasExact: true}
	p[partSA] = partMatch{exact: sa.GetServiceAccount(), hasExact: true}
	return p, ""
}

var partNames = [3]string{"trust domain", "namespace", "service account"}

const wildcardOnlyAtEnds = `"*" is a wildcard only as the first or last character, and no identity contains it`

// validPart says why s can never be the given part of a peer identity.
func validPart(part int, s string) string {
	if strings.Contains(s, "*") {
		return wildcardOnlyAtEnds
	}
	var msgs []string
	switch part {
	case partTD:
		if err := identity.ValidateTrustDomain(s); err != nil {
			return err.Error()
		}
	case partNS:
		msgs = validation.IsDNS1123Label(s)
	case partSA:
		msgs = validation.IsDNS1123Subdomain(s)
	}
	if len(msgs) > 0 {
		return fmt.Sprintf("%q is not a valid %s: %s", s, partNames[part], strings.Join(msgs, "; "))
	}
	return ""
}

// partChars says why s can never be a piece (prefix or suffix) of the
// given part: a character no such part contains.
func partChars(part int, s string) string {
	if strings.Contains(s, "*") {
		return wildcardOnlyAtEnds
	}
	extra := [3]string{"._-", "-", ".-"}[part]
	for _, r := range s {
		if (r < 'a' || r > 'z') && (r < '0' || r > '9') && !strings.ContainsRune(extra, r) {
			return fmt.Sprintf("no %s contains %q", partNames[part], r)
		}
	}
	return ""
}

// and returns what both a and b require, or false when nothing can.
func (a partMatch) and(b partMatch) (partMatch, bool) {
	if b.hasExact {
		if a.hasExact && a.exact != b.exact {
			return a, false
		}
		a.exact, a.hasExact = b.exact, true
	}
	var ok1, ok2 bool
	a.prefix, ok1 = longer(a.prefix, b.prefix, strings.HasPrefix)
	a.suffix, ok2 = longer(a.suffix, b.suffix, strings.HasSuffix)
	if !ok1 || !ok2 {
		return a, false
	}
	if a.hasExact && (!strings.HasPrefix(a.exact, a.prefix) || !strings.HasSuffix(a.exact, a.suffix)) {
		return a, false
	}
	return a, true
}

// longer returns the longer of two affixes when one extends the other.
func longer(x, y string, has func(s, affix string) bool) (string, bool) {
	switch {
	case has(x, y):
		return x, true
	case has(y, x):
		return y, true
	}
	return "", false
}

// covers reports whether every value r allows also satisfies n.
func (n partMatch) covers(r partMatch) bool {
	start, end := r.prefix, r.suffix
	if r.hasExact {
		start, end = r.exact, r.exact
	}
	return (!n.hasExact || (r.hasExact && r.exact == n.exact)) &&
		strings.HasPrefix(start, n.prefix) && strings.HasSuffix(end, n.suffix)
}

func (p idPattern) and(q idPattern) (idPattern, bool) {
	for i := range p {
		var ok bool
		if p[i], ok = p[i].and(q[i]); !ok {
			return p, false
		}
	}
	return p, true
}

func (n idPattern) covers(r idPattern) bool {
	for i := range n {
		if !n[i].covers(r[i]) {
			return false
		}
	}
	return true
}

// conjunction is the conditions of items that must all hold, by dimension:
// the peer identity, the source and destination IPs, the destination port.
// In each, every positive list needs one of its values, and no negative
// value may hold.
type conjunction struct {
	id       dimension[idPattern]
	src, dst dimension[netip.Prefix]
	port     dimension[uint32]
}

// dimension holds one kind of value's lists; dead names a positive list
// none of whose values can hold, and desc the lists for messages.
type dimension[T any] struct {
	pos  [][]T
	neg  []T
	dead string
	desc []string
}

// add records one list: its values that can hold, and its description.
func (d *dimension[T]) add(field string, positive bool, shown []string, vals []T) {
	if len(shown) == 0 {
		return
	}
	desc := field + " [" + strings.Join(shown, ", ") + "]"
	d.desc = append(d.desc, desc)
	switch {
	case !positive:
		d.neg = append(d.neg, vals...)
	case len(vals) == 0 && d.dead == "":
		d.dead = desc
	default:
		d.pos = append(d.pos, vals)
	}
}

// conjunctionOf collects the conditions of items that must all hold.
func conjunctionOf(items ...item) *conjunction {
	c := &conjunction{}
	for _, it := range items {
		m := it.m
		addStrings(&c.id, it.field("principals", true), true, m.GetPrincipals(), principalPattern)
		addStrings(&c.id, it.field("notPrincipals", false), false, m.GetNotPrincipals(), principalPattern)
		addStrings(&c.id, it.field("namespaces", true), true, m.GetNamespaces(), namespacePattern)
		addStrings(&c.id, it.field("notNamespaces", false), false, m.GetNotNamespaces(), namespacePattern)
		addAccounts(&c.id, "serviceAccounts", true, m.GetServiceAccounts())
		addAccounts(&c.id, "notServiceAccounts", false, m.GetNotServiceAccounts())
		addAddresses(&c.src, it.field("ipBlocks", true), true, m.GetSourceIps())
		addAddresses(&c.src, it.field("notIpBlocks", false), false, m.GetNotSourceIps())
		addAddresses(&c.dst, it.field("destination.ip", true), true, m.GetDestinationIps())
		addAddresses(&c.dst, it.field("destination.ip", false), false, m.GetNotDestinationIps())
		addPorts(&c.port, it.field("ports", true), true, m.GetDestinationPorts())
		addPorts(&c.port, it.field("notPorts", false), false, m.GetNotDestinationPorts())
	}
	return c
}

func addStrings(d *dimension[idPattern], field string, positive bool, ms []*security.StringMatch, pattern func(*security.StringMatch) (idPattern, string)) {
	var shown []string
	var vals []idPattern
	for _, sm := range ms {
		shown = append(shown, stringForm(sm))
		if p, why := pattern(sm); why == "" {
			vals = append(vals, p)
		}
	}
	d.add(field, positive, shown, vals)
}

func addAccounts(d *dimension[idPattern], field string, positive bool, ms []*security.ServiceAccountMatch) {
	var shown []string
	var vals []idPattern
	for _, sa := range ms {
		shown = append(shown, sa.GetNamespace()+"/"+sa.GetServiceAccount())
		if p, why := saPattern(sa); why == "" {
			vals = append(vals, p)
		}
	}
	d.add(field, positive, shown, vals)
}

// addAddresses reads addresses as the evaluator does (anyAddr): unmapped,
// masked to their length; one that cannot be read matches nothing.
func addAddresses(d *dimension[netip.Prefix], field string, positive bool, as []*security.Address) {
	var shown []string
	var vals []netip.Prefix
	for _, a := range as {
		addr, ok := netip.AddrFromSlice(a.GetAddress())
		if !ok {
			shown = append(shown, fmt.Sprintf("%x/%d", a.GetAddress(), a.GetLength()))
			continue
		}
		shown = append(shown, fmt.Sprintf("%s/%d", addr, a.GetLength()))
		if p, err := addr.Unmap().Prefix(int(a.GetLength())); err == nil {
			vals = append(vals, p)
		}
	}
	d.add(field, positive, shown, vals)
}

func addPorts(d *dimension[uint32], field string, positive bool, ps []uint32) {
	var shown []string
	for _, p := range ps {
		shown = append(shown, fmt.Sprint(p))
	}
	d.add(field, positive, shown, ps)
}

// never says why no connection can satisfy c, or "" when one may.
func (c *conjunction) never() string {
	if why := c.id.never("no peer identity", idAnd, idCovers); why != "" {
		return why
	}
	if why := c.src.never("no source address", prefixAnd, prefixCovers); why != "" {
		return why
	}
	if why := c.dst.never("no destination address", prefixAnd, prefixCovers); why != "" {
		return why
	}
	return c.port.never("no port", portAnd, portCovers)
}

// never tries every choice of one value per positive list; a choice holds
// when the values agree (and) and no negative value covers them all. With
// no positive list nothing is required (a plaintext peer, with no
// identity, is not excluded by negative identity lists).
func (d *dimension[T]) never(nothing string, and func(a, b T) (T, bool), covers func(n, r T) bool) string {
	if d.dead != "" {
		return "none of " + d.dead + " can ever match"
	}
	if len(d.pos) == 0 {
		return ""
	}
	combos := 1
	for _, l := range d.pos {
		if combos *= len(l); combos > maxCombinations {
			return ""
		}
	}
	var try func(i int, acc T) bool
	try = func(i int, acc T) bool {
		if i == len(d.pos) {
			for _, n := range d.neg {
				if covers(n, acc) {
					return false
				}
			}
			return true
		}
		for _, v := range d.pos[i] {
			if i == 0 {
				if try(1, v) {
					return true
				}
			} else if next, ok := and(acc, v); ok && try(i+1, next) {
				return true
			}
		}
		return false
	}
	var zero T
	if try(0, zero) {
		return ""
	}
	return nothing + " satisfies " + strings.Join(d.desc, " and ")
}

func idAnd(a, b idPattern) (idPattern, bool) { return a.and(b) }
func idCovers(n, r idPattern) bool           { return n.covers(r) }

// prefixAnd intersects two address ranges: one holds the other, or none.
func prefixAnd(a, b netip.Prefix) (netip.Prefix, bool) {
	switch {
	case prefixCovers(a, b):
		return b, true
	case prefixCovers(b, a):
		return a, true
	}
	return a, false
}

// prefixCovers reports whether range n holds all of range r.
func prefixCovers(n, r netip.Prefix) bool {
	return n.Addr().BitLen() == r.Addr().BitLen() && n.Bits() <= r.Bits() && n.Contains(r.Addr())
}

func portAnd(a, b uint32) (uint32, bool) { return a, a == b }
func portCovers(n, r uint32) bool        { return n == r }
