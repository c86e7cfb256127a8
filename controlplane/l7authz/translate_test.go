package l7authz_test

import (
	"fmt"
	"net/http"
	"net/netip"
	"strings"
	"testing"

	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	"google.golang.org/protobuf/encoding/protojson"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	"sigs.k8s.io/yaml"

	"github.com/ambit-mesh/ambit/controlplane/l7authz"
	"github.com/ambit-mesh/ambit/waypoint/rbac"
)

// The tests evaluate translations with the waypoint engine (an external
// test package may import it) and pin a few wire forms.

var echo = l7authz.Target{Kind: l7authz.KindService, Namespace: "demo", Name: "echo"}

const toEcho = `targetRefs: [{group: "", kind: Service, name: echo}]`

func policy(t *testing.T, doc string) *securityv1.AuthorizationPolicy {
	t.Helper()
	ap := &securityv1.AuthorizationPolicy{}
	if err := yaml.Unmarshal([]byte(doc), ap); err != nil {
		t.Fatalf("policy YAML: %v\n%s", err, doc)
	}
	if ap.Namespace == "" {
		ap.Namespace = "demo"
	}
	return ap
}

// rulePolicy is a policy on Service demo/echo with one rule.
func rulePolicy(t *testing.T, action, rule string) *securityv1.AuthorizationPolicy {
	return policy(t, fmt.Sprintf("metadata: {name: p}\nspec:\n  %s\n  action: %s\n  rules:\n  - %s\n", toEcho, action, rule))
}

// request is the default request; cases change it.
func request() rbac.Attributes {
	return rbac.Attributes{
		Principal:       "spiffe://cluster.local/ns/demo/sa/client",
		DirectRemoteIP:  netip.MustParseAddr("10.0.0.1"),
		RemoteIP:        netip.MustParseAddr("203.0.113.7"),
		DestinationIP:   netip.MustParseAddr("10.96.0.10"),
		DestinationPort: 8080,
		Method:          "GET",
		Path:            "/public",
		Host:            "echo.demo.svc.cluster.local:8080",
		Header:          http.Header{"X-User": {"alice"}},
		SNI:             "echo.demo",
	}
}

func evaluate(t *testing.T, out l7authz.Output, a rbac.Attributes, targets ...l7authz.Target) rbac.Decision {
	t.Helper()
	e, warnings, err := rbac.Compile(out.RBAC)
	if err != nil {
		t.Fatalf("Compile: %v", err)
	}
	if len(warnings) > 0 {
		t.Fatalf("the engine does not honour what the translation emits: %v", warnings)
	}
	return e.Evaluate(targets, a)
}

func warningsText(ws []l7authz.Warning) string {
	var b strings.Builder
	for _, w := range ws {
		b.WriteString(w.String() + "\n")
	}
	return b.String()
}

type fieldCase struct {
	name  string
	rule  string
	req   func(*rbac.Attributes)
	allow bool   // as the only ALLOW policy, the request is allowed
	deny  bool   // as the only DENY policy, the request is denied
	warn  string // expected in the warnings; "" means no warning
}

// match is a case where ALLOW and DENY agree: the rule matches or not.
func match(name, rule string, req func(*rbac.Attributes), m bool) fieldCase {
	return fieldCase{name: name, rule: rule, req: req, allow: m, deny: m}
}

// failClosed is a case with something that cannot be checked: an ALLOW
// does not allow, a DENY denies.
func failClosed(name, rule, warn string) fieldCase {
	return fieldCase{name: name, rule: rule, allow: false, deny: true, warn: warn}
}

func principal(p string) func(*rbac.Attributes) { return func(a *rbac.Attributes) { a.Principal = p } }
func path(p string) func(*rbac.Attributes)      { return func(a *rbac.Attributes) { a.Path = p } }
func host(h string) func(*rbac.Attributes)      { return func(a *rbac.Attributes) { a.Host = h } }

const other = "spiffe://cluster.local/ns/other/sa/sa1"

func TestFields(t *testing.T) {
	cases := []fieldCase{
		// from.source.principals: the SPIFFE id without spiffe://.
		match("principals exact", `from: [{source: {principals: [cluster.local/ns/demo/sa/client]}}]`, nil, true),
		match("principals exact other peer", `from: [{source: {principals: [cluster.local/ns/demo/sa/client]}}]`, principal(other), false),
		match("principals exact no peer", `from: [{source: {principals: [cluster.local/ns/demo/sa/client]}}]`, principal(""), false),
		match("principals prefix", `from: [{source: {principals: ["cluster.local/ns/demo/*"]}}]`, nil, true),
		match("principals prefix other ns", `from: [{source: {principals: ["cluster.local/ns/demo/*"]}}]`, principal(other), false),
		match("principals suffix", `from: [{source: {principals: ["*/sa/client"]}}]`, nil, true),
		match("principals suffix other", `from: [{source: {principals: ["*/sa/client"]}}]`, principal(other), false),
		match("principals presence", `from: [{source: {principals: ["*"]}}]`, principal(other), true),
		match("principals presence no peer", `from: [{source: {principals: ["*"]}}]`, principal(""), false),
		match("principals any of", `from: [{source: {principals: [cluster.local/ns/x/sa/y, cluster.local/ns/other/sa/sa1]}}]`, principal(other), true),
		match("notPrincipals excludes", `from: [{source: {notPrincipals: [cluster.local/ns/demo/sa/client]}}]`, nil, false),
		match("notPrincipals lets others", `from: [{source: {notPrincipals: [cluster.local/ns/demo/sa/client]}}]`, principal(other), true),
		match("notPrincipals lets no peer", `from: [{source: {notPrincipals: [cluster.local/ns/demo/sa/client]}}]`, principal(""), true),
		{name: "principals spiffe:// never matches", rule: `from: [{source: {principals: ["spiffe://cluster.local/ns/demo/sa/client"]}}]`, warn: `starts with "spiffe://"`},
		// namespaces.
		match("namespaces exact", `from: [{source: {namespaces: [demo]}}]`, nil, true),
		match("namespaces other", `from: [{source: {namespaces: [demo]}}]`, principal(other), false),
		match("namespaces prefix", `from: [{source: {namespaces: ["de*"]}}]`, nil, true),
		match("namespaces suffix", `from: [{source: {namespaces: ["*mo"]}}]`, nil, true),
		match("namespaces suffix other", `from: [{source: {namespaces: ["*mo"]}}]`, principal(other), false),
		match("namespaces presence", `from: [{source: {namespaces: ["*"]}}]`, nil, true),
		match("namespaces no peer", `from: [{source: {namespaces: ["*"]}}]`, principal(""), false),
		match("namespaces is not the service account", `from: [{source: {namespaces: [client]}}]`, nil, false),
		match("namespaces regex characters are literal", `from: [{source: {namespaces: ["d.mo"]}}]`, nil, false),
		match("notNamespaces excludes", `from: [{source: {notNamespaces: [demo]}}]`, nil, false),
		match("notNamespaces lets others", `from: [{source: {notNamespaces: [demo]}}]`, principal(other), true),
		// serviceAccounts.
		match("serviceAccounts ns/sa", `from: [{source: {serviceAccounts: [demo/client]}}]`, nil, true),
		match("serviceAccounts bare sa is the policy's ns", `from: [{source: {serviceAccounts: [client]}}]`, nil, true),
		match("serviceAccounts other ns", `from: [{source: {serviceAccounts: [other/client]}}]`, nil, false),
		match("serviceAccounts no peer", `from: [{source: {serviceAccounts: [demo/client]}}]`, principal(""), false),
		match("notServiceAccounts excludes", `from: [{source: {notServiceAccounts: [client]}}]`, nil, false),
		match("notServiceAccounts lets others", `from: [{source: {notServiceAccounts: [client]}}]`, principal(other), true),
		failClosed("serviceAccounts wildcard is invalid", `from: [{source: {serviceAccounts: ["demo/*"]}}]`, "wildcards are not allowed"),
		// trustDomains.
		match("trustDomains exact", `from: [{source: {trustDomains: [cluster.local]}}]`, nil, true),
		match("trustDomains other", `from: [{source: {trustDomains: [other.td]}}]`, nil, false),
		match("trustDomains suffix", `from: [{source: {trustDomains: ["*.local"]}}]`, nil, true),
		// ipBlocks: the direct client; remoteIpBlocks: the origin.
		match("ipBlocks CIDR", `from: [{source: {ipBlocks: [10.0.0.0/24]}}]`, nil, true),
		match("ipBlocks single IP", `from: [{source: {ipBlocks: [10.0.0.1]}}]`, nil, true),
		match("ipBlocks other", `from: [{source: {ipBlocks: [10.0.1.0/24]}}]`, nil, false),
		match("ipBlocks is not the remote IP", `from: [{source: {ipBlocks: [203.0.113.7]}}]`, nil, false),
		match("ipBlocks host bits are masked", `from: [{source: {ipBlocks: [10.0.0.77/24]}}]`, nil, true),
		match("notIpBlocks excludes", `from: [{source: {notIpBlocks: [10.0.0.1]}}]`, nil, false),
		match("notIpBlocks lets others", `from: [{source: {notIpBlocks: [10.9.0.0/16]}}]`, nil, true),
		failClosed("ipBlocks invalid CIDR", `from: [{source: {ipBlocks: [10.0.0.0/33]}}]`, "ipBlocks: \"10.0.0.0/33\": invalid CIDR"),
		failClosed("ipBlocks invalid IP", `from: [{source: {ipBlocks: [not-an-ip]}}]`, "invalid IP"),
		failClosed("notIpBlocks invalid CIDR", `from: [{source: {notIpBlocks: [10.0.0.0/99]}}]`, "notIpBlocks"),
		{name: "ipBlocks invalid next to a valid one", rule: `from: [{source: {ipBlocks: [bad, 10.0.0.0/24]}}]`, allow: true, deny: true, warn: "invalid"},
		match("remoteIpBlocks", `from: [{source: {remoteIpBlocks: [203.0.113.0/24]}}]`, nil, true),
		match("remoteIpBlocks is not the direct IP", `from: [{source: {remoteIpBlocks: [10.0.0.1]}}]`, nil, false),
		match("notRemoteIpBlocks excludes", `from: [{source: {notRemoteIpBlocks: [203.0.113.7]}}]`, nil, false),
		failClosed("remoteIpBlocks invalid", `from: [{source: {remoteIpBlocks: ["203.0.113.0/"]}}]`, "remoteIpBlocks"),
		// requestPrincipals need JWT.
		failClosed("requestPrincipals", `from: [{source: {requestPrincipals: ["*"]}}]`, "RequestAuthentication"),
		failClosed("notRequestPrincipals", `from: [{source: {notRequestPrincipals: ["*"]}}]`, "RequestAuthentication"),
		{name: "requestPrincipals in one from entry, another matches", rule: `from: [{source: {requestPrincipals: [a/b]}}, {source: {principals: [cluster.local/ns/demo/sa/client]}}]`, allow: true, deny: true, warn: "RequestAuthentication"},
		{name: "requestPrincipals: DENY denies on the other fields", rule: `{from: [{source: {requestPrincipals: ["*"]}}], to: [{operation: {paths: [/admin]}}]}`, allow: false, deny: false, warn: "RequestAuthentication"},
		{name: "requestPrincipals: DENY denies on the other fields, matching", rule: `{from: [{source: {requestPrincipals: ["*"]}}], to: [{operation: {paths: [/admin]}}]}`, req: path("/admin"), allow: false, deny: true, warn: "RequestAuthentication"},

		// to.operation.hosts: case-insensitive, port-agnostic.
		match("hosts exact, request has a port", `to: [{operation: {hosts: [echo.demo.svc.cluster.local]}}]`, nil, true),
		match("hosts exact, no port", `to: [{operation: {hosts: [echo.demo.svc.cluster.local]}}]`, host("echo.demo.svc.cluster.local"), true),
		match("hosts case-insensitive", `to: [{operation: {hosts: [Echo.Demo.svc.cluster.local]}}]`, host("ECHO.demo.svc.cluster.local"), true),
		match("hosts exact is not a prefix", `to: [{operation: {hosts: [echo.demo.svc.cluster.local]}}]`, host("echo.demo.svc.cluster.local.evil.com"), false),
		match("hosts exact is not a suffix", `to: [{operation: {hosts: [echo.demo]}}]`, host("xecho.demo"), false),
		match("hosts dot is literal", `to: [{operation: {hosts: [echo.demo]}}]`, host("echoxdemo"), false),
		match("hosts with port", `to: [{operation: {hosts: ["echo.demo:8080"]}}]`, host("echo.demo:8080"), true),
		match("hosts with port, other port", `to: [{operation: {hosts: ["echo.demo:8080"]}}]`, host("echo.demo:9090"), false),
		match("hosts with port, none in request", `to: [{operation: {hosts: ["echo.demo:8080"]}}]`, host("echo.demo"), false),
		match("hosts IPv6 with port", `to: [{operation: {hosts: ["[fd00::1]:8080"]}}]`, host("[FD00::1]:8080"), true),
		match("hosts suffix", `to: [{operation: {hosts: ["*.svc.cluster.local"]}}]`, nil, true),
		match("hosts suffix other", `to: [{operation: {hosts: ["*.example.com"]}}]`, nil, false),
		match("hosts prefix", `to: [{operation: {hosts: ["echo.*"]}}]`, nil, true),
		match("hosts presence", `to: [{operation: {hosts: ["*"]}}]`, nil, true),
		match("hosts presence, no host", `to: [{operation: {hosts: ["*"]}}]`, host(""), false),
		match("notHosts excludes", `to: [{operation: {notHosts: [echo.demo.svc.cluster.local]}}]`, nil, false),
		match("notHosts lets others", `to: [{operation: {notHosts: [other.demo.svc.cluster.local]}}]`, nil, true),
		// ports.
		match("ports", `to: [{operation: {ports: ["8080"]}}]`, nil, true),
		match("ports other", `to: [{operation: {ports: ["9090"]}}]`, nil, false),
		match("notPorts excludes", `to: [{operation: {notPorts: ["8080"]}}]`, nil, false),
		match("notPorts lets others", `to: [{operation: {notPorts: ["9090"]}}]`, nil, true),
		failClosed("ports not a number", `to: [{operation: {ports: [http]}}]`, "ports: \"http\": invalid port"),
		failClosed("ports out of range", `to: [{operation: {ports: ["70000"]}}]`, "invalid port"),
		failClosed("notPorts invalid", `to: [{operation: {notPorts: ["0"]}}]`, "notPorts"),
		// methods: case-sensitive.
		match("methods", `to: [{operation: {methods: [GET]}}]`, nil, true),
		match("methods other", `to: [{operation: {methods: [POST]}}]`, nil, false),
		match("methods case-sensitive", `to: [{operation: {methods: [get]}}]`, nil, false),
		match("methods prefix", `to: [{operation: {methods: ["G*"]}}]`, nil, true),
		match("methods suffix", `to: [{operation: {methods: ["*ET"]}}]`, nil, true),
		match("methods presence", `to: [{operation: {methods: ["*"]}}]`, nil, true),
		match("notMethods excludes", `to: [{operation: {notMethods: [GET, HEAD]}}]`, nil, false),
		match("notMethods lets others", `to: [{operation: {notMethods: [POST]}}]`, nil, true),
		// paths: the URL path without query.
		match("paths exact", `to: [{operation: {paths: [/public]}}]`, nil, true),
		match("paths exact, query ignored", `to: [{operation: {paths: [/public]}}]`, path("/public?x=1"), true),
		match("paths exact other", `to: [{operation: {paths: [/public/]}}]`, nil, false),
		match("paths exact dot is literal", `to: [{operation: {paths: [/a.b]}}]`, path("/axb"), false),
		match("paths prefix", `to: [{operation: {paths: ["/pub*"]}}]`, nil, true),
		match("paths prefix other", `to: [{operation: {paths: ["/admin/*"]}}]`, nil, false),
		match("paths suffix", `to: [{operation: {paths: ["*lic"]}}]`, nil, true),
		match("paths presence", `to: [{operation: {paths: ["*"]}}]`, nil, true),
		match("notPaths excludes", `to: [{operation: {notPaths: ["/pub*"]}}]`, nil, false),
		match("notPaths lets others", `to: [{operation: {notPaths: ["/admin*"]}}]`, nil, true),
		// path templates.
		match("template {*} one segment", `to: [{operation: {paths: ["/api/{*}/items"]}}]`, path("/api/v1/items"), true),
		match("template {*} not two segments", `to: [{operation: {paths: ["/api/{*}/items"]}}]`, path("/api/v1/v2/items"), false),
		match("template {*} not empty", `to: [{operation: {paths: ["/api/{*}/items"]}}]`, path("/api//items"), false),
		match("template {*} last", `to: [{operation: {paths: ["/foo/{*}"]}}]`, path("/foo/bar"), true),
		match("template {*} last, not deeper", `to: [{operation: {paths: ["/foo/{*}"]}}]`, path("/foo/bar/baz"), false),
		match("template {**} deep", `to: [{operation: {paths: ["/api/{**}"]}}]`, path("/api/a/b/c"), true),
		match("template {**} zero", `to: [{operation: {paths: ["/api/{**}"]}}]`, path("/api/"), true),
		match("template {**} needs the slash", `to: [{operation: {paths: ["/api/{**}"]}}]`, path("/apix"), false),
		match("template {**}/ empty", `to: [{operation: {paths: ["/foo/{**}/"]}}]`, path("/foo//"), true),
		match("template {**}/ needs the trailing slash", `to: [{operation: {paths: ["/foo/{**}/"]}}]`, path("/foo/bar"), false),
		match("template {*} then {**}", `to: [{operation: {paths: ["/foo/{*}/bar/{**}"]}}]`, path("/foo/buzz/bar/baz"), true),
		match("template literal dot", `to: [{operation: {paths: ["/v.1/{*}"]}}]`, path("/vx1/a"), false),
		match("notPaths template", `to: [{operation: {notPaths: ["/{*}"]}}]`, nil, false),
		failClosed("template with text in the segment", `to: [{operation: {paths: ["/foo/{*}.txt"]}}]`, "invalid path template"),
		failClosed("template {**} not last", `to: [{operation: {paths: ["/{**}/foo/{*}"]}}]`, "must be the last operator"),
		failClosed("template with * outside", `to: [{operation: {paths: ["/*/baz/{*}"]}}]`, "invalid path template"),
		failClosed("notPaths invalid template", `to: [{operation: {notPaths: ["/{x}"]}}]`, "notPaths"),

		// when.
		match("request.headers exact", `when: [{key: "request.headers[x-user]", values: [alice]}]`, nil, true),
		match("request.headers other", `when: [{key: "request.headers[x-user]", values: [bob]}]`, nil, false),
		match("request.headers name case", `when: [{key: "request.headers[X-USER]", values: [alice]}]`, nil, true),
		match("request.headers prefix", `when: [{key: "request.headers[x-user]", values: ["al*"]}]`, nil, true),
		match("request.headers suffix", `when: [{key: "request.headers[x-user]", values: ["*ce"]}]`, nil, true),
		match("request.headers presence", `when: [{key: "request.headers[x-user]", values: ["*"]}]`, nil, true),
		match("request.headers presence, missing", `when: [{key: "request.headers[x-other]", values: ["*"]}]`, nil, false),
		match("request.headers missing", `when: [{key: "request.headers[x-other]", values: [alice]}]`, nil, false),
		match("request.headers several values joined", `when: [{key: "request.headers[x-user]", values: ["alice,bob"]}]`, func(a *rbac.Attributes) { a.Header["X-User"] = []string{"alice", "bob"} }, true),
		match("request.headers notValues excludes", `when: [{key: "request.headers[x-user]", notValues: [alice]}]`, nil, false),
		match("request.headers notValues, missing", `when: [{key: "request.headers[x-other]", notValues: [alice]}]`, nil, true),
		match("request.headers values and notValues", `when: [{key: "request.headers[x-user]", values: ["a*"], notValues: [alice]}]`, nil, false),
		match("source.ip", `when: [{key: source.ip, values: [10.0.0.0/8]}]`, nil, true),
		match("source.ip notValues", `when: [{key: source.ip, notValues: [10.0.0.1]}]`, nil, false),
		failClosed("source.ip invalid", `when: [{key: source.ip, values: [10.0.0.300]}]`, "invalid IP"),
		match("remote.ip", `when: [{key: remote.ip, values: [203.0.113.7]}]`, nil, true),
		match("remote.ip other", `when: [{key: remote.ip, values: [10.0.0.1]}]`, nil, false),
		match("source.namespace", `when: [{key: source.namespace, values: [demo]}]`, nil, true),
		match("source.namespace notValues", `when: [{key: source.namespace, notValues: [demo]}]`, nil, false),
		match("source.principal", `when: [{key: source.principal, values: [cluster.local/ns/demo/sa/client]}]`, nil, true),
		match("source.principal other", `when: [{key: source.principal, values: [cluster.local/ns/demo/sa/client]}]`, principal(other), false),
		match("destination.ip", `when: [{key: destination.ip, values: [10.96.0.0/16]}]`, nil, true),
		match("destination.ip other", `when: [{key: destination.ip, values: [10.97.0.0/16]}]`, nil, false),
		match("destination.port", `when: [{key: destination.port, values: ["8080"]}]`, nil, true),
		match("destination.port notValues", `when: [{key: destination.port, notValues: ["8080"]}]`, nil, false),
		failClosed("destination.port invalid", `when: [{key: destination.port, values: [x]}]`, "invalid port"),
		match("connection.sni", `when: [{key: connection.sni, values: [echo.demo]}]`, nil, true),
		match("connection.sni prefix", `when: [{key: connection.sni, values: ["echo.*"]}]`, nil, true),
		match("connection.sni presence, none", `when: [{key: connection.sni, values: ["*"]}]`, func(a *rbac.Attributes) { a.SNI = "" }, false),
		failClosed("request.auth.claims", `when: [{key: "request.auth.claims[groups]", values: [admin]}]`, "RequestAuthentication"),
		failClosed("request.auth.principal notValues", `when: [{key: request.auth.principal, notValues: [a/b]}]`, "RequestAuthentication"),
		failClosed("experimental.envoy.filters", `when: [{key: "experimental.envoy.filters.network.mysql_proxy[db.table]", values: [x]}]`, "Envoy filter metadata"),
		failClosed("unknown key", `when: [{key: source.workload, values: [x]}]`, "unknown or unsupported key"),
		failClosed("condition without values", `when: [{key: source.ip}]`, "neither values nor notValues"),
		failClosed("invalid header name", `when: [{key: "request.headers[x user]", values: [x]}]`, "invalid header name"),
		failClosed("empty header name", `when: [{key: "request.headers[]", values: [x]}]`, "invalid header name"),
		failClosed("empty value", `to: [{operation: {methods: [""]}}]`, "empty value"),

		// Rule structure.
		match("empty rule matches all", `{}`, principal(""), true),
		match("empty from, to and when match all", `{from: [], to: [], when: []}`, nil, true),
		match("empty source matches all", `from: [{source: {}}]`, principal(""), true),
		match("from, to and when are AND-ed", `{from: [{source: {principals: [cluster.local/ns/demo/sa/client]}}], to: [{operation: {methods: [POST]}}]}`, nil, false),
		match("from, to and when all hold", `{from: [{source: {namespaces: [demo]}}], to: [{operation: {methods: [GET]}}], when: [{key: destination.port, values: ["8080"]}]}`, nil, true),
		match("to entries are OR-ed", `to: [{operation: {methods: [POST]}}, {operation: {paths: [/public]}}]`, nil, true),
		match("operation fields are AND-ed", `to: [{operation: {methods: [GET], paths: [/admin]}}]`, nil, false),
		match("source fields are AND-ed", `from: [{source: {namespaces: [demo], ipBlocks: [10.9.0.0/16]}}]`, nil, false),
		match("when conditions are AND-ed", `when: [{key: source.namespace, values: [demo]}, {key: destination.port, values: ["1"]}]`, nil, false),
	}
	for _, tc := range cases {
		for _, action := range []string{"ALLOW", "DENY"} {
			t.Run(tc.name+"/"+action, func(t *testing.T) {
				out := l7authz.Build([]*securityv1.AuthorizationPolicy{rulePolicy(t, action, tc.rule)}, "")
				a := request()
				if tc.req != nil {
					tc.req(&a)
				}
				d := evaluate(t, out, a, echo)
				want := tc.allow
				if action == "DENY" {
					want = !tc.deny
				}
				if d.Allowed != want {
					t.Errorf("allowed = %v, want %v (%+v)\nRBAC: %s\nwarnings: %s", d.Allowed, want, d, dump(out), warningsText(out.Warnings))
				}
				ws := warningsText(out.Warnings)
				switch {
				case tc.warn == "" && ws != "":
					t.Errorf("unexpected warnings:\n%s", ws)
				case tc.warn != "" && !strings.Contains(ws, tc.warn):
					t.Errorf("warnings do not mention %q:\n%s", tc.warn, ws)
				case tc.warn != "" && !strings.Contains(ws, "demo/p: rule 0"):
					t.Errorf("warnings do not name the policy and rule:\n%s", ws)
				}
			})
		}
	}
}

func dump(out l7authz.Output) string {
	var b strings.Builder
	for name, x := range out.RBAC {
		b.WriteString(name + ": " + protojson.Format(x) + "\n")
	}
	return b.String()
}

// TestWireForm pins the Envoy fields the translation uses.
func TestWireForm(t *testing.T) {
	for _, tc := range []struct {
		rule string
		want []string
	}{
		{`from: [{source: {principals: [cluster.local/ns/demo/sa/client]}}]`, []string{`"authenticated"`, `"exact": "spiffe://cluster.local/ns/demo/sa/client"`}},
		{`from: [{source: {principals: ["cluster.local/ns/*"]}}]`, []string{`"prefix": "spiffe://cluster.local/ns/"`}},
		{`from: [{source: {namespaces: [demo]}}]`, []string{`"regex": ".*/ns/demo/.*"`}},
		{`from: [{source: {ipBlocks: [10.0.0.1/8]}}]`, []string{`"directRemoteIp"`, `"addressPrefix": "10.0.0.0"`, `"prefixLen": 8`}},
		{`from: [{source: {remoteIpBlocks: ["fd00::/8"]}}]`, []string{`"remoteIp"`, `"addressPrefix": "fd00::"`}},
		{`from: [{source: {notPrincipals: [a/b]}}]`, []string{`"notId"`}},
		{`to: [{operation: {hosts: [example.com]}}]`, []string{`":authority"`, `"regex": "(?i)example\\.com(:[0-9]+)?"`}},
		{`to: [{operation: {ports: ["8080"]}}]`, []string{`"destinationPort": 8080`}},
		{`to: [{operation: {methods: [GET]}}]`, []string{`":method"`, `"exact": "GET"`}},
		{`to: [{operation: {paths: ["/api/{*}/x/{**}"]}}]`, []string{`"urlPath"`, `"regex": "/api/[^/]+/x/.*"`}},
		{`to: [{operation: {notPaths: ["/admin*"]}}]`, []string{`"notRule"`, `"prefix": "/admin"`}},
		{`when: [{key: connection.sni, values: [a.b]}]`, []string{`"requestedServerName"`}},
		{`when: [{key: destination.ip, values: [10.0.0.1]}]`, []string{`"destinationIp"`, `"prefixLen": 32`}},
		{`when: [{key: "request.headers[X-Token]", values: ["*"]}]`, []string{`"name": "x-token"`, `"presentMatch": true`}},
	} {
		out := l7authz.Build([]*securityv1.AuthorizationPolicy{rulePolicy(t, "ALLOW", tc.rule)}, "")
		x := out.RBAC[l7authz.ResourceName(echo, rbacv3.RBAC_ALLOW)]
		if x == nil || x.Policies["demo/p/rule-0"] == nil {
			t.Fatalf("%s: no demo/p/rule-0 in %s", tc.rule, dump(out))
		}
		got := compact(protojson.Format(x.Policies["demo/p/rule-0"]))
		for _, w := range tc.want {
			if !strings.Contains(got, compact(w)) {
				t.Errorf("%s: %s not in\n%s", tc.rule, w, got)
			}
		}
	}
}

// compact drops whitespace: protojson's output spacing is not stable.
func compact(s string) string {
	return strings.Join(strings.Fields(s), "")
}
