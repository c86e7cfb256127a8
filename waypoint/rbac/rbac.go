// Package rbac is the waypoint's HTTP authorization engine: it evaluates
// the Envoy RBAC resources that package controlplane/l7authz publishes (one
// ALLOW and one DENY RBAC per target, plus dry-run ones) for a request, in
// upstream Istio's order: any matching DENY policy of any applicable target
// denies; then, if any applicable target has an ALLOW RBAC, some ALLOW
// policy of an applicable target must match; otherwise the request is
// allowed. The Gateway's, the Service's and the GatewayClass's policies all
// apply, merged per action as one Envoy RBAC filter would hold them.
//
// # Honoured subset of envoy.config.rbac.v3
//
//   - RBAC: action (must be the one its resource name says), policies
//     (evaluated in lexicographic order of name, as Envoy does).
//     audit_logging_options is ignored (logging only).
//   - Policy: permissions (OR), principals (OR). A policy with a condition
//     or checked_condition (CEL), or with no permission or no principal
//     (Envoy rejects those), is unsupported.
//   - Permission: and_rules, or_rules, not_rule, any, header, url_path,
//     destination_ip, destination_port, destination_port_range,
//     requested_server_name.
//   - Principal: and_ids, or_ids, not_id, any, authenticated
//     (principal_name against the peer's URI SAN; unset: any peer with
//     one), direct_remote_ip, remote_ip, header, url_path.
//   - HeaderMatcher: name (":authority" and "host" are Attributes.Host,
//     ":method" is Attributes.Method, other names are looked up
//     case-insensitively in Attributes.Header, several values joined by
//     ","), exact_match, prefix_match, suffix_match, contains_match,
//     safe_regex_match, string_match, present_match, range_match,
//     invert_match, treat_missing_header_as_empty. Other pseudo-headers
//     (":path" would need the query string, ":scheme") are unsupported.
//   - StringMatcher: exact, prefix, suffix, contains (ignore_case, ASCII,
//     as Envoy), safe_regex (RE2 syntax, whole-value match; ignore_case
//     does not apply, as in Envoy). Empty prefix, suffix, contains or
//     regex (Envoy rejects them) and custom are unsupported.
//   - PathMatcher: path (a StringMatcher on Attributes.Path).
//   - CidrRange: address_prefix, prefix_len (unset: 0).
//
// Anything else (metadata, sourced_metadata, filter_state, custom,
// matcher, uri_template, source_ip, an unset oneof, an empty and/or set,
// nesting deeper than 64) is unsupported: Compile returns a warning and
// the item evaluates to "unknown" (three-valued logic: NOT unknown is
// unknown; AND is no if any part is no; OR is yes if any part is yes). A
// policy whose result is unknown does not match in an ALLOW RBAC and
// matches in a DENY RBAC: fail closed. This is "never matches in ALLOW,
// always matches in DENY" made safe under not_rule and not_id too (a
// plain "never" under a negation would become "always").
//
// The engine does not normalize paths: Attributes.Path must be the path
// the waypoint forwards, normalized as it forwards it (Envoy normalizes
// before its RBAC filter), without the query string.
package rbac

import (
	"fmt"
	"net/http"
	"net/netip"
	"slices"

	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
)

// Target is an object whose policies apply to a request: the waypoint's
// Gateway, its GatewayClass, and the destination Service.

// Attributes is what authorization knows about a request at the waypoint.
type Attributes struct {
	// Principal is the peer's URI SAN, e.g.
	// spiffe://cluster.local/ns/demo/sa/client; "" when there is none.
	Principal string
	// DirectRemoteIP is the client's address (for a waypoint the original
	// client's, carried through the tunnel); RemoteIP the origin address
	// inferred from X-Forwarded-For or the PROXY protocol (the same when
	// neither is trusted). DestinationIP and DestinationPort are the
	// original destination (the CONNECT target), not the waypoint's.
	DirectRemoteIP, RemoteIP, DestinationIP netip.Addr
	DestinationPort                         uint16
	// Method and Host (:authority) of the request; Path is its normalized
	// path without query (a query or fragment left in is cut off).
	Method, Path, Host string
	Header             http.Header
	SNI                string // TLS server name of the client's connection, if any
}

// Decision is the outcome of an evaluation.
type Decision struct {
	Allowed bool
	// Policy is the "<ns>/<name>/rule-<i>" that decided, or "".
	Policy string
	// Reason: "denied by <policy>", "allowed by <policy>", "no ALLOW policy
	// matched", "no ALLOW policies" (DENY policies apply, none matched) or
	// "no policies".
	Reason string
	// Unknown says the deciding DENY policy was taken as matching because
	// it uses something the engine cannot check (fail closed).
	Unknown bool
	// DryRun is what the dry-run policies alone would decide, for logging;
	// nil when none applies. It never affects Allowed.
	DryRun *Decision
}

// Reasons.
const (
	ReasonNoPolicies     = "no policies"
	ReasonNoAllowPolicy  = "no ALLOW policies"
	ReasonNoAllowMatched = "no ALLOW policy matched"
)

// Engine evaluates compiled RBACs; it is immutable and safe for concurrent
// use.
type Engine struct {
	sets   map[Resource]*compiledRBAC
	dryRun bool // some set is a dry-run one
}

type compiledRBAC struct {
	policies []compiledPolicy // sorted by name
}

type compiledPolicy struct {
	name  string
	match node
}

// InvalidResourceError reports a resource Compile cannot place.
type InvalidResourceError struct {
	Name   string
	Reason string
}

func (e *InvalidResourceError) Error() string {
	return fmt.Sprintf("rbac resource %q: %s", e.Name, e.Reason)
}

// Compile compiles RBACs keyed by l7authz resource names. It fails for a
// name it cannot parse, a nil RBAC, or an RBAC whose action is not the
// one its name says: the caller should keep its previous engine. Anything
// inside an RBAC outside the honoured subset yields a warning and fails
// closed (see the package documentation).
func Compile(rbacs map[string]*rbacv3.RBAC) (*Engine, []string, error) {
	e := &Engine{sets: make(map[Resource]*compiledRBAC, len(rbacs))}
	var warnings []string
	names := make([]string, 0, len(rbacs))
	for name := range rbacs {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		x := rbacs[name]
		res, ok := ParseResourceName(name)
		switch {
		case !ok:
			return nil, warnings, fmt.Errorf("compile: %w", &InvalidResourceError{Name: name, Reason: "not a resource name (<Kind>/<namespace>/<name>/<[DRYRUN-]ALLOW|DENY>)"})
		case x == nil:
			return nil, warnings, fmt.Errorf("compile: %w", &InvalidResourceError{Name: name, Reason: "nil RBAC"})
		case x.GetAction() != res.Action:
			return nil, warnings, fmt.Errorf("compile: %w", &InvalidResourceError{Name: name, Reason: fmt.Sprintf("action %v, but the name says %v", x.GetAction(), res.Action)})
		}
		c := &compiler{}
		set := &compiledRBAC{}
		pnames := make([]string, 0, len(x.GetPolicies()))
		for pn := range x.GetPolicies() {
			pnames = append(pnames, pn)
		}
		slices.Sort(pnames)
		for _, pn := range pnames {
			c.prefix = fmt.Sprintf("%s: policy %q: ", name, pn)
			set.policies = append(set.policies, compiledPolicy{name: pn, match: c.policy(x.GetPolicies()[pn])})
		}
		warnings = append(warnings, c.warnings...)
		e.sets[res] = set
		e.dryRun = e.dryRun || res.DryRun
	}
	return e, warnings, nil
}

// Evaluate decides a request to which the policies of targets apply
// (duplicates are ignored). A nil engine denies.
func (e *Engine) Evaluate(targets []Target, a Attributes) Decision {
	if e == nil {
		return Decision{Reason: "no authorization engine"}
	}
	var ts []Target
	for _, t := range targets {
		if !slices.Contains(ts, t) {
			ts = append(ts, t)
		}
	}
	r := newRequest(&a)
	d, _ := e.decide(ts, r, false)
	if e.dryRun {
		if dd, ok := e.decide(ts, r, true); ok {
			d.DryRun = &dd
		}
	}
	return d
}

// decide evaluates the enforced (or the dry-run) sets of targets; applies
// says whether any set exists for them.
func (e *Engine) decide(ts []Target, r *request, dryRun bool) (d Decision, applies bool) {
	for _, t := range ts {
		set := e.sets[Resource{Target: t, Action: rbacv3.RBAC_DENY, DryRun: dryRun}]
		if set == nil {
			continue
		}
		applies = true
		for _, p := range set.policies {
			switch p.match.eval(r) {
			case yes:
				return Decision{Policy: p.name, Reason: "denied by " + p.name}, true
			case unknown:
				return Decision{Policy: p.name, Reason: "denied by " + p.name + " (it uses something the engine cannot check: fail closed)", Unknown: true}, true
			}
		}
	}
	allows := false
	for _, t := range ts {
		set := e.sets[Resource{Target: t, Action: rbacv3.RBAC_ALLOW, DryRun: dryRun}]
		if set == nil {
			continue
		}
		applies, allows = true, true
		for _, p := range set.policies {
			if p.match.eval(r) == yes {
				return Decision{Allowed: true, Policy: p.name, Reason: "allowed by " + p.name}, true
			}
		}
	}
	switch {
	case allows:
		return Decision{Reason: ReasonNoAllowMatched}, true
	case applies:
		return Decision{Allowed: true, Reason: ReasonNoAllowPolicy}, true
	}
	return Decision{Allowed: true, Reason: ReasonNoPolicies}, false
}
