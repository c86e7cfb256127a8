package rbac

import (
	"errors"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

var svc = Target{Kind: KindService, Namespace: "demo", Name: "echo"}

func attrs() Attributes {
	return Attributes{
		Principal:       "spiffe://cluster.local/ns/demo/sa/client",
		DirectRemoteIP:  netip.MustParseAddr("10.0.0.1"),
		RemoteIP:        netip.MustParseAddr("203.0.113.7"),
		DestinationIP:   netip.MustParseAddr("10.96.0.10"),
		DestinationPort: 8080,
		Method:          "GET",
		Path:            "/public",
		Host:            "echo.demo:8080",
		Header:          http.Header{"X-User": {"alice"}},
		SNI:             "echo.demo",
	}
}

// Permission and principal builders.
func pAny() *rbacv3.Permission { return &rbacv3.Permission{Rule: &rbacv3.Permission_Any{Any: true}} }
func idAny() *rbacv3.Principal {
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_Any{Any: true}}
}
func pNot(p *rbacv3.Permission) *rbacv3.Permission {
	return &rbacv3.Permission{Rule: &rbacv3.Permission_NotRule{NotRule: p}}
}
func pAnd(ps ...*rbacv3.Permission) *rbacv3.Permission {
	return &rbacv3.Permission{Rule: &rbacv3.Permission_AndRules{AndRules: &rbacv3.Permission_Set{Rules: ps}}}
}
func pOr(ps ...*rbacv3.Permission) *rbacv3.Permission {
	return &rbacv3.Permission{Rule: &rbacv3.Permission_OrRules{OrRules: &rbacv3.Permission_Set{Rules: ps}}}
}
func pHeader(h *routev3.HeaderMatcher) *rbacv3.Permission {
	return &rbacv3.Permission{Rule: &rbacv3.Permission_Header{Header: h}}
}
func pMetadata() *rbacv3.Permission {
	return &rbacv3.Permission{Rule: &rbacv3.Permission_Metadata{Metadata: &matcherv3.MetadataMatcher{Filter: "x"}}}
}
func pPath(m *matcherv3.StringMatcher) *rbacv3.Permission {
	return &rbacv3.Permission{Rule: &rbacv3.Permission_UrlPath{UrlPath: &matcherv3.PathMatcher{Rule: &matcherv3.PathMatcher_Path{Path: m}}}}
}
func exact(s string) *matcherv3.StringMatcher {
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: s}}
}
func regex(s string) *matcherv3.StringMatcher {
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: s}}}
}
func cidr(addr string, bits uint32) *corev3.CidrRange {
	return &corev3.CidrRange{AddressPrefix: addr, PrefixLen: wrapperspb.UInt32(bits)}
}
func strHeader(name string, m *matcherv3.StringMatcher) *routev3.HeaderMatcher {
	return &routev3.HeaderMatcher{Name: name, HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: m}}
}

// matches compiles one policy with permission p and principal id into an
// RBAC of the action and tells whether the request is decided by it.
func decideOne(t *testing.T, action rbacv3.RBAC_Action, p *rbacv3.Permission, id *rbacv3.Principal, a Attributes) (Decision, []string) {
	t.Helper()
	x := &rbacv3.RBAC{Action: action, Policies: map[string]*rbacv3.Policy{"demo/p/rule-0": {Permissions: []*rbacv3.Permission{p}, Principals: []*rbacv3.Principal{id}}}}
	e, warnings, err := Compile(map[string]*rbacv3.RBAC{ResourceName(svc, action): x})
	if err != nil {
		t.Fatalf("Compile: %v", err)
	}
	return e.Evaluate([]Target{svc}, a), warnings
}

// TestMatchers covers the honoured subset, run as ALLOW and as DENY: a
// definite match allows (ALLOW) and denies (DENY); an unknown item does
// neither allow nor let through.
func TestMatchers(t *testing.T) {
	type result uint8
	const (
		noMatch result = iota
		matches
		unknownResult // does not allow, denies
	)
	ip := netip.MustParseAddr
	for _, tc := range []struct {
		name string
		p    *rbacv3.Permission
		id   *rbacv3.Principal
		a    func(*Attributes)
		want result
		warn string
	}{
		{name: "any", want: matches},
		{name: "not any", p: pNot(pAny()), want: noMatch},
		{name: "and", p: pAnd(pAny(), pPath(exact("/public"))), want: matches},
		{name: "and, one fails", p: pAnd(pAny(), pPath(exact("/x"))), want: noMatch},
		{name: "or", p: pOr(pPath(exact("/x")), pPath(exact("/public"))), want: matches},
		{name: "or, none", p: pOr(pPath(exact("/x")), pPath(exact("/y"))), want: noMatch},
		// Three-valued logic around unsupported fields.
		{name: "metadata is unknown", p: pMetadata(), want: unknownResult, warn: "permission metadata is not supported"},
		{name: "not metadata is unknown", p: pNot(pMetadata()), want: unknownResult, warn: "metadata"},
		{name: "metadata or a match matches", p: pOr(pMetadata(), pAny()), want: matches, warn: "metadata"},
		{name: "metadata and a non-match does not match", p: pAnd(pMetadata(), pPath(exact("/x"))), want: noMatch, warn: "metadata"},
		{name: "metadata and a match is unknown", p: pAnd(pMetadata(), pAny()), want: unknownResult, warn: "metadata"},
		{name: "uri_template is unknown", p: &rbacv3.Permission{Rule: &rbacv3.Permission_UriTemplate{UriTemplate: &corev3.TypedExtensionConfig{Name: "x"}}}, want: unknownResult, warn: "uri_template"},
		{name: "unset rule is unknown", p: &rbacv3.Permission{}, want: unknownResult, warn: "no rule set"},
		{name: "empty and_rules is unknown", p: &rbacv3.Permission{Rule: &rbacv3.Permission_AndRules{AndRules: &rbacv3.Permission_Set{}}}, want: unknownResult, warn: "empty and_rules"},
		{name: "any false is unknown", p: &rbacv3.Permission{Rule: &rbacv3.Permission_Any{}}, want: unknownResult, warn: "any: false"},
		{name: "principal custom is unknown", id: &rbacv3.Principal{Identifier: &rbacv3.Principal_Custom{Custom: &corev3.TypedExtensionConfig{Name: "x"}}}, want: unknownResult, warn: "principal custom"},
		{name: "principal not filter_state is unknown", id: &rbacv3.Principal{Identifier: &rbacv3.Principal_NotId{NotId: &rbacv3.Principal{Identifier: &rbacv3.Principal_FilterState{FilterState: &matcherv3.FilterStateMatcher{Key: "k"}}}}}, want: unknownResult, warn: "filter_state"},
		{name: "source_ip is unknown", id: &rbacv3.Principal{Identifier: &rbacv3.Principal_SourceIp{SourceIp: cidr("10.0.0.0", 8)}}, want: unknownResult, warn: "source_ip"},
		// Principals.
		{name: "authenticated exact", id: &rbacv3.Principal{Identifier: &rbacv3.Principal_Authenticated_{Authenticated: &rbacv3.Principal_Authenticated{PrincipalName: exact("spiffe://cluster.local/ns/demo/sa/client")}}}, want: matches},
		{name: "authenticated, no peer", id: &rbacv3.Principal{Identifier: &rbacv3.Principal_Authenticated_{Authenticated: &rbacv3.Principal_Authenticated{PrincipalName: regex(".*")}}}, a: func(a *Attributes) { a.Principal = "" }, want: noMatch},
		{name: "authenticated unset name: any peer", id: &rbacv3.Principal{Identifier: &rbacv3.Principal_Authenticated_{Authenticated: &rbacv3.Principal_Authenticated{}}}, want: matches},
		{name: "authenticated unset name, no peer", id: &rbacv3.Principal{Identifier: &rbacv3.Principal_Authenticated_{Authenticated: &rbacv3.Principal_Authenticated{}}}, a: func(a *Attributes) { a.Principal = "" }, want: noMatch},
		{name: "direct_remote_ip", id: &rbacv3.Principal{Identifier: &rbacv3.Principal_DirectRemoteIp{DirectRemoteIp: cidr("10.0.0.0", 8)}}, want: matches},
		{name: "direct_remote_ip, mapped client", id: &rbacv3.Principal{Identifier: &rbacv3.Principal_DirectRemoteIp{DirectRemoteIp: cidr("10.0.0.0", 8)}}, a: func(a *Attributes) { a.DirectRemoteIP = ip("::ffff:10.0.0.1") }, want: matches},
		{name: "direct_remote_ip, mapped range", id: &rbacv3.Principal{Identifier: &rbacv3.Principal_DirectRemoteIp{DirectRemoteIp: cidr("::ffff:10.0.0.0", 104)}}, want: matches},
		{name: "direct_remote_ip, no address", id: &rbacv3.Principal{Identifier: &rbacv3.Principal_DirectRemoteIp{DirectRemoteIp: cidr("0.0.0.0", 0)}}, a: func(a *Attributes) { a.DirectRemoteIP = netip.Addr{} }, want: noMatch},
		{name: "remote_ip", id: &rbacv3.Principal{Identifier: &rbacv3.Principal_RemoteIp{RemoteIp: cidr("203.0.113.0", 24)}}, want: matches},
		{name: "cidr unset prefix_len is /0", id: &rbacv3.Principal{Identifier: &rbacv3.Principal_RemoteIp{RemoteIp: &corev3.CidrRange{AddressPrefix: "1.2.3.4"}}}, want: matches},
		{name: "cidr v6 range, v4 client", id: &rbacv3.Principal{Identifier: &rbacv3.Principal_RemoteIp{RemoteIp: cidr("::", 0)}}, want: noMatch},
		{name: "cidr invalid address", id: &rbacv3.Principal{Identifier: &rbacv3.Principal_RemoteIp{RemoteIp: cidr("10.0.0.x", 8)}}, want: unknownResult, warn: "invalid address"},
		{name: "cidr prefix too long", id: &rbacv3.Principal{Identifier: &rbacv3.Principal_RemoteIp{RemoteIp: cidr("10.0.0.0", 33)}}, want: unknownResult, warn: "too long"},
		// Permissions on the connection.
		{name: "destination_ip", p: &rbacv3.Permission{Rule: &rbacv3.Permission_DestinationIp{DestinationIp: cidr("10.96.0.0", 12)}}, want: matches},
		{name: "destination_port", p: &rbacv3.Permission{Rule: &rbacv3.Permission_DestinationPort{DestinationPort: 8080}}, want: matches},
		{name: "destination_port other", p: &rbacv3.Permission{Rule: &rbacv3.Permission_DestinationPort{DestinationPort: 80}}, want: noMatch},
		{name: "destination_port_range", p: &rbacv3.Permission{Rule: &rbacv3.Permission_DestinationPortRange{DestinationPortRange: &typev3.Int32Range{Start: 8000, End: 8081}}}, want: matches},
		{name: "destination_port_range end exclusive", p: &rbacv3.Permission{Rule: &rbacv3.Permission_DestinationPortRange{DestinationPortRange: &typev3.Int32Range{Start: 8000, End: 8080}}}, want: noMatch},
		{name: "requested_server_name", p: &rbacv3.Permission{Rule: &rbacv3.Permission_RequestedServerName{RequestedServerName: exact("echo.demo")}}, want: matches},
		// String matchers.
		{name: "prefix", p: pPath(&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: "/pub"}}), want: matches},
		{name: "suffix", p: pPath(&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Suffix{Suffix: "lic"}}), want: matches},
		{name: "contains", p: pPath(&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Contains{Contains: "ubl"}}), want: matches},
		{name: "ignore_case", p: pPath(&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: "/PUBLIC"}, IgnoreCase: true}), want: matches},
		{name: "ignore_case is ASCII only", p: pPath(&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: "/\u212a"}, IgnoreCase: true}), a: func(a *Attributes) { a.Path = "/k" }, want: noMatch},
		{name: "case-sensitive by default", p: pPath(exact("/PUBLIC")), want: noMatch},
		{name: "regex is a full match", p: pPath(regex("/pub")), want: noMatch},
		{name: "regex", p: pPath(regex("/p[a-z]+")), want: matches},
		{name: "regex alternation is whole", p: pPath(regex("/x|/public")), want: matches},
		{name: "regex unbalanced cannot escape its anchors", p: pPath(regex(".*)|(x")), want: unknownResult, warn: "invalid regex"},
		{name: "regex invalid", p: pPath(regex("(")), want: unknownResult, warn: "invalid regex"},
		{name: "empty prefix is unknown", p: pPath(&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{}}), want: unknownResult, warn: "empty prefix"},
		{name: "custom string matcher is unknown", p: pPath(&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Custom{}}), want: unknownResult, warn: "not supported"},
		{name: "path ignores the query", p: pPath(exact("/public")), a: func(a *Attributes) { a.Path = "/public?a=b" }, want: matches},
		// Headers.
		{name: "header", p: pHeader(strHeader("x-user", exact("alice"))), want: matches},
		{name: "header name any case", p: pHeader(strHeader("X-USER", exact("alice"))), want: matches},
		{name: "header map not canonical", p: pHeader(strHeader("x-user", exact("alice"))), a: func(a *Attributes) { a.Header = http.Header{"x-user": {"alice"}} }, want: matches},
		{name: "header values joined", p: pHeader(strHeader("x-user", exact("alice,bob"))), a: func(a *Attributes) { a.Header.Add("X-User", "bob") }, want: matches},
		{name: "header missing", p: pHeader(strHeader("x-none", regex(".*"))), want: noMatch},
		{name: "header missing, inverted: still no", p: pHeader(&routev3.HeaderMatcher{Name: "x-none", InvertMatch: true, HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: exact("a")}}), want: noMatch},
		{name: "header missing treated as empty", p: pHeader(&routev3.HeaderMatcher{Name: "x-none", TreatMissingHeaderAsEmpty: true, HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: exact("")}}), want: matches},
		{name: "header inverted", p: pHeader(&routev3.HeaderMatcher{Name: "x-user", InvertMatch: true, HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: exact("bob")}}), want: matches},
		{name: "header present", p: pHeader(&routev3.HeaderMatcher{Name: "x-user", HeaderMatchSpecifier: &routev3.HeaderMatcher_PresentMatch{PresentMatch: true}}), want: matches},
		{name: "header present false: absent", p: pHeader(&routev3.HeaderMatcher{Name: "x-none", HeaderMatchSpecifier: &routev3.HeaderMatcher_PresentMatch{PresentMatch: false}}), want: matches},
		{name: "header present, inverted", p: pHeader(&routev3.HeaderMatcher{Name: "x-none", InvertMatch: true, HeaderMatchSpecifier: &routev3.HeaderMatcher_PresentMatch{PresentMatch: true}}), want: matches},
		{name: "header range", p: pHeader(&routev3.HeaderMatcher{Name: "x-n", HeaderMatchSpecifier: &routev3.HeaderMatcher_RangeMatch{RangeMatch: &typev3.Int64Range{Start: -10, End: 0}}}), a: func(a *Attributes) { a.Header.Set("X-N", "-1") }, want: matches},
		{name: "header range not a number", p: pHeader(&routev3.HeaderMatcher{Name: "x-n", HeaderMatchSpecifier: &routev3.HeaderMatcher_RangeMatch{RangeMatch: &typev3.Int64Range{Start: -10, End: 0}}}), a: func(a *Attributes) { a.Header.Set("X-N", "-1x") }, want: noMatch},
		{name: "header legacy exact_match", p: pHeader(&routev3.HeaderMatcher{Name: "x-user", HeaderMatchSpecifier: &routev3.HeaderMatcher_ExactMatch{ExactMatch: "alice"}}), want: matches},
		{name: "header legacy prefix_match", p: pHeader(&routev3.HeaderMatcher{Name: "x-user", HeaderMatchSpecifier: &routev3.HeaderMatcher_PrefixMatch{PrefixMatch: "al"}}), want: matches},
		{name: ":authority is the host", p: pHeader(strHeader(":authority", exact("echo.demo:8080"))), want: matches},
		{name: "host is the host", p: pHeader(strHeader("host", exact("echo.demo:8080"))), want: matches},
		{name: ":method", p: pHeader(strHeader(":method", exact("GET"))), want: matches},
		{name: ":path is unknown", p: pHeader(strHeader(":path", exact("/public"))), want: unknownResult, warn: "pseudo-header"},
		{name: "header no specifier is unknown", p: pHeader(&routev3.HeaderMatcher{Name: "x-user"}), want: unknownResult, warn: "no header match specifier"},
	} {
		for _, action := range []rbacv3.RBAC_Action{rbacv3.RBAC_ALLOW, rbacv3.RBAC_DENY} {
			t.Run(tc.name+"/"+action.String(), func(t *testing.T) {
				p, id := tc.p, tc.id
				if p == nil {
					p = pAny()
				}
				if id == nil {
					id = idAny()
				}
				a := attrs()
				if tc.a != nil {
					tc.a(&a)
				}
				d, warnings := decideOne(t, action, p, id, a)
				var want bool // allowed
				switch {
				case action == rbacv3.RBAC_ALLOW:
					want = tc.want == matches
				default:
					want = tc.want == noMatch
				}
				if d.Allowed != want {
					t.Errorf("allowed = %v, want %v (%+v)", d.Allowed, want, d)
				}
				if action == rbacv3.RBAC_DENY && d.Unknown != (tc.want == unknownResult) {
					t.Errorf("Unknown = %v (%+v)", d.Unknown, d)
				}
				ws := strings.Join(warnings, "\n")
				switch {
				case tc.warn == "" && ws != "":
					t.Errorf("unexpected warnings: %s", ws)
				case tc.warn != "" && !strings.Contains(ws, tc.warn):
					t.Errorf("warnings do not mention %q: %s", tc.warn, ws)
				}
			})
		}
	}
}

func TestPolicyLevel(t *testing.T) {
	one := func(p *rbacv3.Policy) map[string]*rbacv3.RBAC {
		return map[string]*rbacv3.RBAC{"Service/demo/echo/ALLOW": {Action: rbacv3.RBAC_ALLOW, Policies: map[string]*rbacv3.Policy{"demo/p/rule-0": p}}}
	}
	for _, tc := range []struct {
		name string
		p    *rbacv3.Policy
		warn string
	}{
		{"no permissions", &rbacv3.Policy{Principals: []*rbacv3.Principal{idAny()}}, "permissions: empty"},
		{"no principals", &rbacv3.Policy{Permissions: []*rbacv3.Permission{pAny()}}, "principals: empty"},
		{"nil policy", nil, "nil policy"},
	} {
		e, warnings, err := Compile(one(tc.p))
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if d := e.Evaluate([]Target{svc}, attrs()); d.Allowed {
			t.Errorf("%s: allowed (%+v)", tc.name, d)
		}
		if !strings.Contains(strings.Join(warnings, "\n"), tc.warn) {
			t.Errorf("%s: warnings %q", tc.name, warnings)
		}
	}

	// Deep nesting is cut off, failing closed.
	p := pAny()
	for range maxDepth + 5 {
		p = pNot(pNot(p))
	}
	e, warnings, err := Compile(one(&rbacv3.Policy{Permissions: []*rbacv3.Permission{p}, Principals: []*rbacv3.Principal{idAny()}}))
	if err != nil || len(warnings) != 1 || !strings.Contains(warnings[0], "nested deeper") {
		t.Fatalf("deep: %v %q", err, warnings)
	}
	if d := e.Evaluate([]Target{svc}, attrs()); d.Allowed {
		t.Errorf("deep: allowed")
	}
}

func TestCompileErrors(t *testing.T) {
	ok := &rbacv3.RBAC{Action: rbacv3.RBAC_DENY}
	for _, tc := range []struct {
		name  string
		rbacs map[string]*rbacv3.RBAC
		want  string
	}{
		{"bad name", map[string]*rbacv3.RBAC{"echo": ok}, "not a resource name"},
		{"nil", map[string]*rbacv3.RBAC{"Service/demo/echo/DENY": nil}, "nil RBAC"},
		{"action mismatch", map[string]*rbacv3.RBAC{"Service/demo/echo/ALLOW": ok}, "the name says ALLOW"},
		{"LOG", map[string]*rbacv3.RBAC{"Service/demo/echo/DENY": {Action: rbacv3.RBAC_LOG}}, "action LOG"},
	} {
		e, _, err := Compile(tc.rbacs)
		var ire *InvalidResourceError
		if e != nil || !errors.As(err, &ire) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, %v", tc.name, e, err)
		}
	}
	var nilEngine *Engine
	if d := nilEngine.Evaluate([]Target{svc}, attrs()); d.Allowed {
		t.Errorf("a nil engine allows")
	}
}

// TestOrder pins the evaluation order and the deciding policy.
func TestOrder(t *testing.T) {
	gw := Target{Kind: KindGateway, Namespace: "demo", Name: "waypoint"}
	pol := func(p *rbacv3.Permission) *rbacv3.Policy {
		return &rbacv3.Policy{Permissions: []*rbacv3.Permission{p}, Principals: []*rbacv3.Principal{idAny()}}
	}
	get := pHeader(strHeader(":method", exact("GET")))
	rbacs := map[string]*rbacv3.RBAC{
		"Service/demo/echo/ALLOW": {Action: rbacv3.RBAC_ALLOW, Policies: map[string]*rbacv3.Policy{
			"demo/b/rule-0": pol(get), "demo/a/rule-0": pol(get), "demo/c/rule-0": pol(pNot(pAny())),
		}},
		"Gateway/demo/waypoint/DENY": {Action: rbacv3.RBAC_DENY, Policies: map[string]*rbacv3.Policy{
			"demo/z/rule-0": pol(pPath(exact("/admin"))), "demo/y/rule-0": pol(pPath(&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: "/adm"}})),
		}},
		"Service/demo/echo/DRYRUN-DENY": {Action: rbacv3.RBAC_DENY, Policies: map[string]*rbacv3.Policy{"demo/d/rule-0": pol(pAny())}},
	}
	e, warnings, err := Compile(rbacs)
	if err != nil || len(warnings) > 0 {
		t.Fatalf("Compile: %v %v", err, warnings)
	}
	for _, tc := range []struct {
		name    string
		targets []Target
		a       func(*Attributes)
		allowed bool
		policy  string
		reason  string
		dryRun  string
	}{
		{"ALLOW: first policy by name", []Target{svc}, nil, true, "demo/a/rule-0", "allowed by demo/a/rule-0", "denied by demo/d/rule-0"},
		{"ALLOW: none matched", []Target{svc}, func(a *Attributes) { a.Method = "POST" }, false, "", ReasonNoAllowMatched, "denied by demo/d/rule-0"},
		{"DENY of the gateway wins over the service's ALLOW", []Target{gw, svc}, func(a *Attributes) { a.Path = "/admin" }, false, "demo/y/rule-0", "denied by demo/y/rule-0", "denied by demo/d/rule-0"},
		{"gateway DENY only", []Target{gw}, nil, true, "", ReasonNoAllowPolicy, ""},
		{"targets without policies", []Target{{Kind: KindService, Namespace: "demo", Name: "other"}}, nil, true, "", ReasonNoPolicies, ""},
		{"no targets", nil, nil, true, "", ReasonNoPolicies, ""},
		{"duplicate targets", []Target{svc, svc}, nil, true, "demo/a/rule-0", "allowed by demo/a/rule-0", "denied by demo/d/rule-0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := attrs()
			if tc.a != nil {
				tc.a(&a)
			}
			d := e.Evaluate(tc.targets, a)
			if d.Allowed != tc.allowed || d.Policy != tc.policy || d.Reason != tc.reason {
				t.Errorf("got %+v, want allowed %v by %q (%q)", d, tc.allowed, tc.policy, tc.reason)
			}
			switch {
			case tc.dryRun == "" && d.DryRun != nil:
				t.Errorf("dry run %+v", *d.DryRun)
			case tc.dryRun != "" && (d.DryRun == nil || d.DryRun.Reason != tc.dryRun || d.DryRun.Allowed):
				t.Errorf("dry run %+v, want %q", d.DryRun, tc.dryRun)
			}
		})
	}

	// Concurrent use.
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 200 {
				if d := e.Evaluate([]Target{gw, svc}, attrs()); !d.Allowed {
					t.Errorf("concurrent: %+v", d)
					return
				}
			}
		})
	}
	wg.Wait()
}
