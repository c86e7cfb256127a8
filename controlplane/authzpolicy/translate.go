// Package authzpolicy is control-plane code: it translates
// AuthorizationPolicy (security.istio.io/v1) into the
// istio.security.Authorization resources ztunnel enforces, with upstream
// Istio ambient's semantics (scopes, ALLOW/DENY, L4 fields, HTTP fields
// without a waypoint, dry run). Translation warns about what ztunnel
// cannot enforce and about values, entries, rules and policies that can
// never match (nevermatch.go). Evaluation lives in package authz, which the
// proxies share; this package is the only one that reads the CRD types.
package authzpolicy

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"google.golang.org/protobuf/types/known/emptypb"
	securityv1beta1 "istio.io/api/security/v1beta1"
	securityclient "istio.io/client-go/pkg/apis/security/v1"
	"istio.io/istio/pkg/workloadapi/security"
)

// DefaultRootNamespace is the mesh root namespace: policies there are global.
const DefaultRootNamespace = "istio-system"

// AnnotationDryRun marks a policy whose decisions are only logged.
const AnnotationDryRun = "istio.io/dry-run"

// Warning is a note about how a policy was translated.
type Warning struct {
	Policy string // namespace/name
	Msg    string
}

func (w Warning) String() string { return w.Policy + ": " + w.Msg }

// l4WhenKeys are the condition keys ztunnel can enforce.
func l4WhenKey(k string) bool {
	switch k {
	case "source.ip", "source.namespace", "source.principal", "destination.ip", "destination.port":
		return true
	}
	return false
}

// Translate turns a policy into what ztunnel enforces. It returns nil (and
// a warning saying why) for policies ztunnel does not take: targetRef(s)
// policies (waypoints enforce them) and the CUSTOM and AUDIT actions.
func Translate(ap *securityclient.AuthorizationPolicy, rootNamespace string) (*security.Authorization, []Warning) {
	if rootNamespace == "" {
		rootNamespace = DefaultRootNamespace
	}
	key := ap.Namespace + "/" + ap.Name
	warn := func(format string, args ...any) Warning {
		return Warning{Policy: key, Msg: fmt.Sprintf(format, args...)}
	}
	spec := &ap.Spec
	if spec.GetTargetRef() != nil || len(spec.GetTargetRefs()) > 0 {
		return nil, []Warning{warn("has targetRef(s): enforced by a waypoint, not by ztunnel")}
	}
	out := &security.Authorization{Name: ap.Name, Namespace: ap.Namespace, DryRun: ap.Annotations[AnnotationDryRun] == "true"}
	switch spec.GetAction() {
	case securityv1beta1.AuthorizationPolicy_ALLOW:
		out.Action = security.Action_ALLOW
	case securityv1beta1.AuthorizationPolicy_DENY:
		out.Action = security.Action_DENY
	default:
		return nil, []Warning{warn("ztunnel does not support the %s action", spec.GetAction())}
	}
	switch {
	case spec.GetSelector() != nil && len(spec.GetSelector().GetMatchLabels()) > 0:
		out.Scope = security.Scope_WORKLOAD_SELECTOR
	case ap.Namespace == rootNamespace:
		out.Scope = security.Scope_GLOBAL
	default:
		out.Scope = security.Scope_NAMESPACE
	}
	var warnings []Warning
	canMatch := false
	for i, r := range spec.GetRules() {
		clauses, l7 := translateRule(r, ap.Namespace)
		switch {
		case l7 && out.Action == security.Action_ALLOW:
			warnings = append(warnings, warn("rule %d uses HTTP fields that need a waypoint: dropped (an ALLOW rule that cannot be checked allows nothing)", i))
			continue
		case l7 && ruleFields(r) > 0 && len(clauses) == 0:
			warnings = append(warnings, warn("rule %d has only HTTP fields that need a waypoint: dropped (nothing left to deny)", i))
			continue
		case l7:
			warnings = append(warnings, warn("rule %d: its HTTP fields need a waypoint and are ignored; the rest denies more broadly", i))
		}
		msgs, ok := checkRule(i, clauses)
		for _, msg := range msgs {
			warnings = append(warnings, warn("%s", msg))
		}
		canMatch = canMatch || ok
		out.Groups = append(out.Groups, group(clauses))
	}
	if msg := policyNever(out, len(spec.GetRules()), canMatch); msg != "" {
		warnings = append(warnings, warn("%s", msg))
	}
	return out, warnings
}

// policyNever says how a policy none of whose rules can match behaves, or
// "" when some rule can match. An ALLOW without rules is the documented
// allow-nothing idiom and is not warned about.
func policyNever(p *security.Authorization, rules int, canMatch bool) string {
	allow := p.GetAction() == security.Action_ALLOW
	switch {
	case canMatch || (allow && rules == 0):
		return ""
	case !allow && rules == 0:
		return "has no rules, so this DENY policy never matches and denies nothing (Istio rejects a DENY without rules; write rules: [{}] to deny everything)"
	case allow && len(p.GetGroups()) == 0:
		return "no rule is left: this ALLOW policy denies all traffic to the workloads it selects"
	case allow:
		return "no rule can ever match: this ALLOW policy denies all traffic to the workloads it selects"
	case len(p.GetGroups()) == 0:
		return "no rule is left: this DENY policy denies nothing"
	default:
		return "no rule can ever match: this DENY policy denies nothing"
	}
}

// item is one translated match and where it came from in its rule.
type item struct {
	label string // from[j], to[j] or when[j]
	key   string // the when key; empty for from and to items
	m     *security.Match
}

// group makes the enforced form of a rule's clauses: every clause must
// hold, and a clause holds when any of its matches does.
func group(clauses [][]item) *security.Group {
	g := &security.Group{}
	for _, c := range clauses {
		r := &security.Rules{}
		for _, it := range c {
			r.Matches = append(r.Matches, it.m)
		}
		g.Rules = append(g.Rules, r)
	}
	return g
}

// ruleFields counts a rule's from, to and when entries.
func ruleFields(r *securityv1beta1.Rule) int {
	return len(r.GetFrom()) + len(r.GetTo()) + len(r.GetWhen())
}

// translateRule turns one rule into its clauses: from, to and each L4 when,
// each a list of items of which one must hold. l7 reports that the rule
// used fields ztunnel cannot check; those are left out, and so are from
// and to entries with nothing left, and clauses with no entry left.
func translateRule(r *securityv1beta1.Rule, policyNS string) (clauses [][]item, l7 bool) {
	var from, to []item
	for j, f := range r.GetFrom() {
		m, httpOnly := sourceMatch(f.GetSource(), policyNS)
		l7 = l7 || httpOnly
		if !emptyMatch(m) {
			from = append(from, item{label: fmt.Sprintf("from[%d]", j), m: m})
		}
	}
	for j, t := range r.GetTo() {
		m, httpOnly := operationMatch(t.GetOperation())
		l7 = l7 || httpOnly
		if !emptyMatch(m) {
			to = append(to, item{label: fmt.Sprintf("to[%d]", j), m: m})
		}
	}
	for _, c := range [][]item{from, to} {
		if len(c) > 0 {
			clauses = append(clauses, c)
		}
	}
	for j, c := range r.GetWhen() {
		if !l4WhenKey(c.GetKey()) {
			l7 = true
			continue
		}
		clauses = append(clauses, []item{{label: fmt.Sprintf("when[%d]", j), key: c.GetKey(), m: conditionMatch(c)}})
	}
	return clauses, l7
}

// sourceMatch converts a from entry; l7 reports fields only a waypoint can
// check (they are left out).
func sourceMatch(s *securityv1beta1.Source, policyNS string) (m *security.Match, l7 bool) {
	l7 = len(s.GetRequestPrincipals())+len(s.GetNotRequestPrincipals())+len(s.GetRemoteIpBlocks())+len(s.GetNotRemoteIpBlocks()) > 0
	return &security.Match{
		Principals: stringMatches(s.GetPrincipals()), NotPrincipals: stringMatches(s.GetNotPrincipals()),
		Namespaces: stringMatches(s.GetNamespaces()), NotNamespaces: stringMatches(s.GetNotNamespaces()),
		ServiceAccounts: saMatches(s.GetServiceAccounts(), policyNS), NotServiceAccounts: saMatches(s.GetNotServiceAccounts(), policyNS),
		SourceIps: addresses(s.GetIpBlocks()), NotSourceIps: addresses(s.GetNotIpBlocks()),
	}, l7
}

// operationMatch converts a to entry; l7 reports HTTP fields (left out).
func operationMatch(op *securityv1beta1.Operation) (m *security.Match, l7 bool) {
	l7 = len(op.GetHosts())+len(op.GetNotHosts())+len(op.GetMethods())+len(op.GetNotMethods())+len(op.GetPaths())+len(op.GetNotPaths()) > 0
	return &security.Match{DestinationPorts: ports(op.GetPorts()), NotDestinationPorts: ports(op.GetNotPorts())}, l7
}

// conditionMatch converts a when condition with an L4 key.
func conditionMatch(c *securityv1beta1.Condition) *security.Match {
	m := &security.Match{}
	switch c.GetKey() {
	case "source.ip":
		m.SourceIps, m.NotSourceIps = addresses(c.GetValues()), addresses(c.GetNotValues())
	case "destination.ip":
		m.DestinationIps, m.NotDestinationIps = addresses(c.GetValues()), addresses(c.GetNotValues())
	case "source.namespace":
		m.Namespaces, m.NotNamespaces = stringMatches(c.GetValues()), stringMatches(c.GetNotValues())
	case "source.principal":
		m.Principals, m.NotPrincipals = stringMatches(c.GetValues()), stringMatches(c.GetNotValues())
	case "destination.port":
		m.DestinationPorts, m.NotDestinationPorts = ports(c.GetValues()), ports(c.GetNotValues())
	}
	return m
}

func emptyMatch(m *security.Match) bool {
	return len(m.Principals)+len(m.NotPrincipals)+len(m.Namespaces)+len(m.NotNamespaces)+len(m.ServiceAccounts)+len(m.NotServiceAccounts)+
		len(m.SourceIps)+len(m.NotSourceIps)+len(m.DestinationIps)+len(m.NotDestinationIps)+len(m.DestinationPorts)+len(m.NotDestinationPorts) == 0
}

// stringMatches converts Istio's string forms: "*" presence, "*x" suffix,
// "x*" prefix, else exact.
func stringMatches(vals []string) []*security.StringMatch {
	var out []*security.StringMatch
	for _, v := range vals {
		switch {
		case v == "*":
			out = append(out, &security.StringMatch{MatchType: &security.StringMatch_Presence{Presence: &emptypb.Empty{}}})
		case strings.HasPrefix(v, "*"):
			out = append(out, &security.StringMatch{MatchType: &security.StringMatch_Suffix{Suffix: v[1:]}})
		case strings.HasSuffix(v, "*"):
			out = append(out, &security.StringMatch{MatchType: &security.StringMatch_Prefix{Prefix: v[:len(v)-1]}})
		default:
			out = append(out, &security.StringMatch{MatchType: &security.StringMatch_Exact{Exact: v}})
		}
	}
	return out
}

// saMatches converts "ns/sa" or bare "sa" (the policy's namespace).
func saMatches(vals []string, policyNS string) []*security.ServiceAccountMatch {
	var out []*security.ServiceAccountMatch
	for _, v := range vals {
		ns, sa, ok := strings.Cut(v, "/")
		if !ok {
			ns, sa = policyNS, v
		}
		out = append(out, &security.ServiceAccountMatch{Namespace: ns, ServiceAccount: sa})
	}
	return out
}

// addresses converts IPs and CIDRs; invalid ones are left out (the loader
// rejects them before they get here).
func addresses(vals []string) []*security.Address {
	var out []*security.Address
	for _, v := range vals {
		if p, err := netip.ParsePrefix(v); err == nil {
			out = append(out, &security.Address{Address: p.Addr().AsSlice(), Length: uint32(p.Bits())})
		} else if a, err := netip.ParseAddr(v); err == nil {
			out = append(out, &security.Address{Address: a.AsSlice(), Length: uint32(a.BitLen())})
		}
	}
	return out
}

func ports(vals []string) []uint32 {
	var out []uint32
	for _, v := range vals {
		if n, err := strconv.ParseUint(v, 10, 16); err == nil && n > 0 {
			out = append(out, uint32(n))
		}
	}
	return out
}
