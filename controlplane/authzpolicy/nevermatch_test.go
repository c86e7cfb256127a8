package authzpolicy

import (
	"fmt"
	"math/rand"
	"net/netip"
	"strings"
	"testing"

	securityv1beta1 "istio.io/api/security/v1beta1"
	"istio.io/istio/pkg/workloadapi/security"

	"github.com/ambit-mesh/ambit/authz"
	"github.com/ambit-mesh/ambit/identity"
)

// rulesDoc makes a policy named p with the given action and rules (YAML flow).
func rulesDoc(action, rules string) string {
	return "metadata: {name: p}\nspec:\n  action: " + action + "\n  rules: " + rules + "\n"
}

func TestNeverMatchWarns(t *testing.T) {
	tests := []struct {
		name   string
		doc    string
		want   []string // each must be in some warning
		absent []string // none may be in any warning
	}{
		// spiffe:// principals: enforced as written (never matching, as upstream), with a warning.
		{"spiffe:// principal", rulesDoc("ALLOW", `[{from: [{source: {principals: ["spiffe://cluster.local/ns/demo/sa/client"]}}]}]`),
			[]string{`demo/p: rule 0 from[0] principals: "spiffe://cluster.local/ns/demo/sa/client" never matches: principals are written without "spiffe://" (write "cluster.local/ns/demo/sa/client")`,
				"as in Istio, the value is enforced as written",
				"demo/p: rule 0 can never match: from[0]: none of principals [spiffe://cluster.local/ns/demo/sa/client] can ever match",
				"demo/p: no rule can ever match: this ALLOW policy denies all traffic"}, nil},
		{"spiffe:// notPrincipals excludes nobody", rulesDoc("DENY", `[{from: [{source: {notPrincipals: ["spiffe://cluster.local/ns/demo/sa/client"]}}]}]`),
			[]string{`rule 0 from[0] notPrincipals: "spiffe://cluster.local/ns/demo/sa/client" never matches, so it excludes nobody: principals are written without "spiffe://"`},
			[]string{"can never match", "denies nothing"}},
		{"spiffe:// when source.principal prefix", rulesDoc("ALLOW", `[{when: [{key: source.principal, values: ["spiffe://cluster.local/ns/demo/*"]}]}]`),
			[]string{`rule 0 when[0] source.principal values: "spiffe://cluster.local/ns/demo/*" never matches`, `(write "cluster.local/ns/demo/*")`, "rule 0 can never match: when[0]"}, nil},
		{"spiffe:// when source.principal notValues", rulesDoc("ALLOW", `[{when: [{key: source.principal, notValues: ["spiffe://cluster.local/ns/demo/sa/client"]}]}]`),
			[]string{`rule 0 when[0] source.principal notValues: "spiffe://cluster.local/ns/demo/sa/client" never matches, so it excludes nobody`}, []string{"can never match"}},
		{"spiffe:// with a wrong shape: no rewrite offered", rulesDoc("ALLOW", `[{from: [{source: {principals: ["spiffe://cluster.local/demo"]}}]}]`),
			[]string{`principals are written without "spiffe://"; as in Istio`}, []string{"(write"}},
		{"spiffe:// in one of two principals", rulesDoc("ALLOW", `[{from: [{source: {principals: ["spiffe://cluster.local/ns/demo/sa/client", cluster.local/ns/demo/sa/client]}}]}]`),
			[]string{`principals: "spiffe://cluster.local/ns/demo/sa/client" never matches`}, []string{"can never match", "no rule can ever match"}},

		// Principals of a shape no SPIFFE id has.
		{"principal without sa", rulesDoc("ALLOW", `[{from: [{source: {principals: [cluster.local/ns/demo]}}]}]`),
			[]string{`principals: "cluster.local/ns/demo" never matches: a principal is <trust-domain>/ns/<namespace>/sa/<service-account>`}, nil},
		{"principal too long", rulesDoc("ALLOW", `[{from: [{source: {principals: [cluster.local/ns/demo/sa/client/x]}}]}]`),
			[]string{`"cluster.local/ns/demo/sa/client/x" never matches: a principal is`}, nil},
		{"principal with a wildcard inside", rulesDoc("ALLOW", `[{from: [{source: {principals: ["cluster.local/ns/*/sa/client"]}}]}]`),
			[]string{`"cluster.local/ns/*/sa/client" never matches: "*" is a wildcard only as the first or last character`}, nil},
		{"principal prefix of a wrong shape", rulesDoc("ALLOW", `[{from: [{source: {principals: ["cluster.local/namespace/*"]}}]}]`),
			[]string{`"cluster.local/namespace/*" never matches: a principal is`}, nil},
		{"principal prefix past the end", rulesDoc("ALLOW", `[{from: [{source: {principals: ["cluster.local/ns/demo/sa/client/*"]}}]}]`),
			[]string{`"cluster.local/ns/demo/sa/client/*" never matches: a principal is`}, nil},
		{"principal suffix of a wrong shape", rulesDoc("ALLOW", `[{from: [{source: {principals: ["*/serviceaccount/client"]}}]}]`),
			[]string{`"*/serviceaccount/client" never matches: a principal is`}, nil},
		{"principal suffix ending in a slash", rulesDoc("ALLOW", `[{from: [{source: {principals: ["*client/"]}}]}]`),
			[]string{`"*client/" never matches: a principal is`}, nil},
		{"principal with an invalid namespace", rulesDoc("ALLOW", `[{from: [{source: {principals: [cluster.local/ns/Demo/sa/client]}}]}]`),
			[]string{`"cluster.local/ns/Demo/sa/client" never matches: "Demo" is not a valid namespace`}, nil},
		{"principal with an invalid trust domain", rulesDoc("ALLOW", `[{from: [{source: {principals: [Cluster.Local/ns/demo/sa/client]}}]}]`),
			[]string{`"Cluster.Local/ns/demo/sa/client" never matches: invalid SPIFFE trust domain`}, nil},
		{"principal prefix with a character no trust domain has", rulesDoc("ALLOW", `[{from: [{source: {principals: ["Cluster*"]}}]}]`),
			[]string{`"Cluster*" never matches: no trust domain contains 'C'`}, nil},
		{"namespace with a slash", rulesDoc("ALLOW", `[{from: [{source: {namespaces: [demo/client]}}]}]`),
			[]string{`namespaces: "demo/client" never matches: "demo/client" is not a valid namespace`}, nil},
		{"when source.namespace invalid", rulesDoc("ALLOW", `[{when: [{key: source.namespace, values: [Demo]}]}]`),
			[]string{`rule 0 when[0] source.namespace values: "Demo" never matches`, "rule 0 can never match"}, nil},
		{"serviceAccount with two slashes", rulesDoc("ALLOW", `[{from: [{source: {serviceAccounts: [a/b/c]}}]}]`),
			[]string{`serviceAccounts: "a/b/c" never matches: "b/c" is not a valid service account`}, nil},
		{"serviceAccount wildcard", rulesDoc("ALLOW", `[{from: [{source: {serviceAccounts: ["*"]}}]}]`),
			[]string{`serviceAccounts: "demo/*" never matches: "*" is a wildcard only`}, nil},

		// Contradictions inside one source (its fields AND).
		{"namespaces vs exact principal", rulesDoc("ALLOW", `[{from: [{source: {namespaces: [a], principals: [cluster.local/ns/b/sa/x]}}]}]`),
			[]string{"rule 0 can never match: from[0]: no peer identity satisfies principals [cluster.local/ns/b/sa/x] and namespaces [a]"}, nil},
		{"namespaces vs principal prefix", rulesDoc("ALLOW", `[{from: [{source: {namespaces: [a], principals: ["cluster.local/ns/b/*"]}}]}]`),
			[]string{"no peer identity satisfies principals [cluster.local/ns/b/*] and namespaces [a]"}, nil},
		{"namespaces vs principal suffix", rulesDoc("ALLOW", `[{from: [{source: {namespaces: [a], principals: ["*/ns/b/sa/x"]}}]}]`),
			[]string{"no peer identity satisfies"}, nil},
		{"namespaces vs principal partial namespace suffix", rulesDoc("ALLOW", `[{from: [{source: {namespaces: [demo], principals: ["*x/sa/client"]}}]}]`),
			[]string{"no peer identity satisfies"}, nil},
		{"namespace prefix vs principal", rulesDoc("ALLOW", `[{from: [{source: {namespaces: ["fo*"], principals: [cluster.local/ns/bar/sa/x]}}]}]`),
			[]string{"no peer identity satisfies"}, nil},
		{"every principal in another namespace", rulesDoc("ALLOW", `[{from: [{source: {namespaces: [a, b], principals: [cluster.local/ns/c/sa/x, "cluster.local/ns/d/*"]}}]}]`),
			[]string{"rule 0 can never match: from[0]: no peer identity satisfies"}, nil},
		{"principals all excluded by notPrincipals", rulesDoc("ALLOW", `[{from: [{source: {principals: [cluster.local/ns/demo/sa/client], notPrincipals: [cluster.local/ns/demo/sa/client]}}]}]`),
			[]string{"no peer identity satisfies principals [cluster.local/ns/demo/sa/client] and notPrincipals [cluster.local/ns/demo/sa/client]"}, nil},
		{"principal prefix inside a wider notPrincipals prefix", rulesDoc("ALLOW", `[{from: [{source: {principals: ["cluster.local/ns/demo/*"], notPrincipals: ["cluster.local/*"]}}]}]`),
			[]string{"no peer identity satisfies"}, nil},
		{"notPrincipals * with principals", rulesDoc("ALLOW", `[{from: [{source: {principals: ["*/sa/client"], notPrincipals: ["*"]}}]}]`),
			[]string{"no peer identity satisfies"}, nil},
		{"namespaces vs notNamespaces *", rulesDoc("ALLOW", `[{from: [{source: {namespaces: [a], notNamespaces: ["*"]}}]}]`),
			[]string{"no peer identity satisfies namespaces [a] and notNamespaces [*]"}, nil},
		{"serviceAccounts vs namespaces", rulesDoc("ALLOW", `[{from: [{source: {serviceAccounts: [other/sa1], namespaces: [demo]}}]}]`),
			[]string{"no peer identity satisfies"}, nil},
		{"serviceAccounts vs notServiceAccounts", rulesDoc("ALLOW", `[{from: [{source: {serviceAccounts: [client], notServiceAccounts: [demo/client]}}]}]`),
			[]string{"no peer identity satisfies serviceAccounts [demo/client] and notServiceAccounts [demo/client]"}, nil},
		{"ipBlocks inside notIpBlocks", rulesDoc("ALLOW", `[{from: [{source: {ipBlocks: [10.244.1.0/24], notIpBlocks: [10.0.0.0/8]}}]}]`),
			[]string{"no source address satisfies ipBlocks [10.244.1.0/24] and notIpBlocks [10.0.0.0/8]"}, nil},

		// Contradictions inside one operation or condition.
		{"ports cancelled by notPorts", rulesDoc("ALLOW", `[{to: [{operation: {ports: ["80"], notPorts: ["80"]}}]}]`),
			[]string{"rule 0 can never match: to[0]: no port satisfies ports [80] and notPorts [80]"}, nil},
		{"destination.ip values cancelled", rulesDoc("ALLOW", `[{when: [{key: destination.ip, values: [10.244.2.3], notValues: [10.244.2.0/24]}]}]`),
			[]string{"no destination address satisfies destination.ip values [10.244.2.3/32] and destination.ip notValues [10.244.2.0/24]"}, nil},

		// Contradictions across from, to and when (they AND).
		{"from namespace vs when source.namespace", rulesDoc("ALLOW", `[{from: [{source: {namespaces: [a]}}], when: [{key: source.namespace, values: [b]}]}]`),
			[]string{"rule 0 can never match: from[0] and when[0] together: no peer identity satisfies namespaces [a] and source.namespace values [b]"}, nil},
		{"to ports vs when destination.port", rulesDoc("ALLOW", `[{to: [{operation: {ports: ["80"]}}], when: [{key: destination.port, values: ["8080"]}]}]`),
			[]string{"rule 0 can never match: to[0] and when[0] together: no port satisfies ports [80] and destination.port values [8080]"}, nil},
		{"ipBlocks vs when source.ip", rulesDoc("ALLOW", `[{from: [{source: {ipBlocks: [10.0.0.0/8]}}], when: [{key: source.ip, values: [192.168.0.0/16]}]}]`),
			[]string{"no source address satisfies"}, nil},
		{"no choice of entries holds", rulesDoc("ALLOW", `[{from: [{source: {namespaces: [a]}}, {source: {namespaces: [b]}}], when: [{key: source.namespace, values: [c]}]}]`),
			[]string{"rule 0 can never match: no choice of one entry per from, to and when holds at once; for example from[0] and when[0] together"}, nil},

		// Dead entries next to live ones, dead rules next to live ones.
		{"one dead source among live ones", rulesDoc("ALLOW", `[{from: [{source: {ipBlocks: [10.0.0.0/8], notIpBlocks: [10.0.0.0/8]}}, {source: {namespaces: [a]}}]}]`),
			[]string{"rule 0 from[0] can never match: no source address satisfies ipBlocks [10.0.0.0/8] and notIpBlocks [10.0.0.0/8]"},
			[]string{"rule 0 can never match", "no rule can ever match"}},
		{"one dead rule among live ones", rulesDoc("ALLOW", `[{to: [{operation: {ports: ["80"], notPorts: ["80"]}}]}, {to: [{operation: {ports: ["8080"]}}]}]`),
			[]string{"rule 0 can never match"}, []string{"rule 1", "no rule can ever match"}},

		// Whole policies.
		{"DENY without rules", "metadata: {name: p}\nspec: {action: DENY}\n",
			[]string{"demo/p: has no rules, so this DENY policy never matches and denies nothing"}, nil},
		{"DENY whose rules never match", rulesDoc("DENY", `[{from: [{source: {principals: ["spiffe://cluster.local/ns/demo/sa/client"]}}]}]`),
			[]string{"no rule can ever match: this DENY policy denies nothing"}, nil},
		{"DENY whose rules are all HTTP-only", rulesDoc("DENY", `[{to: [{operation: {paths: [/admin]}}]}]`),
			[]string{"rule 0 has only HTTP fields", "no rule is left: this DENY policy denies nothing"}, nil},
		{"DENY with HTTP fields and a dead L4 rest", rulesDoc("DENY", `[{from: [{source: {namespaces: [a], principals: [cluster.local/ns/b/sa/x]}}], to: [{operation: {paths: [/admin]}}]}]`),
			[]string{"its HTTP fields need a waypoint", "rule 0 can never match", "this DENY policy denies nothing"}, nil},
		{"ALLOW with every rule dropped (warned once)", rulesDoc("ALLOW", `[{to: [{operation: {methods: [GET]}}]}]`),
			[]string{"no rule is left: this ALLOW policy denies all traffic"}, []string{"no rule can ever match"}},
		{"ALLOW with one rule dropped and one dead", rulesDoc("ALLOW", `[{to: [{operation: {methods: [GET]}}]}, {to: [{operation: {ports: ["80"], notPorts: ["80"]}}]}]`),
			[]string{"rule 0 uses HTTP fields", "rule 1 can never match", "no rule can ever match: this ALLOW policy denies all traffic"}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, warns := Translate(policy(t, tc.doc), "")
			all := warningText(warns)
			for _, w := range tc.want {
				if !strings.Contains(all, w) {
					t.Errorf("no warning has %q; warnings:\n%s", w, all)
				}
			}
			for _, w := range tc.absent {
				if strings.Contains(all, w) {
					t.Errorf("a warning has %q; warnings:\n%s", w, all)
				}
			}
		})
	}
}

// TestNeverMatchQuiet lists policies that can match: none may get a
// warning, and each has a connection it matches to prove it.
func TestNeverMatchQuiet(t *testing.T) {
	foreign := &identity.SPIFFE{TrustDomain: "example.org", Namespace: "demo", ServiceAccount: "client"}
	mtls := conn(client, clientIP, 8080)
	tests := []struct {
		name    string
		doc     string
		witness authz.Conn
	}{
		{"exact principal", rulesDoc("ALLOW", `[{from: [{source: {principals: [cluster.local/ns/demo/sa/client]}}]}]`), mtls},
		{"principal of another trust domain", rulesDoc("ALLOW", `[{from: [{source: {principals: [example.org/ns/demo/sa/client]}}]}]`), conn(foreign, clientIP, 1)},
		{"principal presence", rulesDoc("ALLOW", `[{from: [{source: {principals: ["*"]}}]}]`), mtls},
		{"principal prefix at a segment", rulesDoc("ALLOW", `[{from: [{source: {principals: ["cluster.local/ns/demo/*"]}}]}]`), mtls},
		{"principal prefix inside ns", rulesDoc("ALLOW", `[{from: [{source: {principals: ["cluster.local/n*"]}}]}]`), mtls},
		{"principal prefix inside sa", rulesDoc("ALLOW", `[{from: [{source: {principals: ["cluster.local/ns/demo/s*"]}}]}]`), mtls},
		{"principal prefix inside the trust domain", rulesDoc("ALLOW", `[{from: [{source: {principals: ["clu*"]}}]}]`), mtls},
		{"principal prefix ending in a slash", rulesDoc("ALLOW", `[{from: [{source: {principals: ["cluster.local/ns/demo/sa/*"]}}]}]`), mtls},
		{"principal suffix /sa/x", rulesDoc("ALLOW", `[{from: [{source: {principals: ["*/sa/client"]}}]}]`), mtls},
		{"principal suffix inside sa", rulesDoc("ALLOW", `[{from: [{source: {principals: ["*ent"]}}]}]`), mtls},
		{"principal suffix inside the word sa", rulesDoc("ALLOW", `[{from: [{source: {principals: ["*a/client"]}}]}]`), mtls},
		{"principal suffix inside the trust domain", rulesDoc("ALLOW", `[{from: [{source: {principals: ["*local/ns/demo/sa/client"]}}]}]`), mtls},
		{"principal suffix of a whole id", rulesDoc("ALLOW", `[{from: [{source: {principals: ["*/ns/demo/sa/client"]}}]}]`), mtls},
		{"namespaces agree with principal", rulesDoc("ALLOW", `[{from: [{source: {namespaces: [demo], principals: [cluster.local/ns/demo/sa/client]}}]}]`), mtls},
		{"namespace prefix agrees with principal", rulesDoc("ALLOW", `[{from: [{source: {namespaces: ["de*"], principals: [cluster.local/ns/demo/sa/client]}}]}]`), mtls},
		{"principal leaves the namespace open", rulesDoc("ALLOW", `[{from: [{source: {namespaces: [demo], principals: ["*/sa/client"]}}]}]`), mtls},
		{"principal pins a namespace suffix that agrees", rulesDoc("ALLOW", `[{from: [{source: {namespaces: [demo], principals: ["*o/sa/client"]}}]}]`), mtls},
		{"one of several namespaces agrees", rulesDoc("ALLOW", `[{from: [{source: {namespaces: [a, demo], principals: [cluster.local/ns/b/sa/x, cluster.local/ns/demo/sa/client]}}]}]`), mtls},
		{"notPrincipals excludes another", rulesDoc("ALLOW", `[{from: [{source: {principals: [cluster.local/ns/demo/sa/client], notPrincipals: [cluster.local/ns/demo/sa/other]}}]}]`), mtls},
		{"principal prefix wider than notPrincipals", rulesDoc("ALLOW", `[{from: [{source: {principals: ["cluster.local/ns/demo/*"], notPrincipals: [cluster.local/ns/demo/sa/other]}}]}]`), mtls},
		{"namespace prefix and suffix", rulesDoc("ALLOW", `[{from: [{source: {namespaces: ["de*"]}}], when: [{key: source.namespace, values: ["*mo"]}]}]`), mtls},
		{"namespace presence and notNamespaces", rulesDoc("ALLOW", `[{from: [{source: {namespaces: ["*"], notNamespaces: [other]}}]}]`), mtls},
		{"only notPrincipals *: plaintext passes", rulesDoc("ALLOW", `[{from: [{source: {notPrincipals: ["*"]}}]}]`), conn(nil, otherIP, 1)},
		{"only notNamespaces: plaintext passes", rulesDoc("ALLOW", `[{from: [{source: {notNamespaces: [demo]}}]}]`), conn(nil, otherIP, 1)},
		{"serviceAccounts", rulesDoc("ALLOW", `[{from: [{source: {serviceAccounts: [client]}}]}]`), mtls},
		{"ports minus some notPorts", rulesDoc("ALLOW", `[{to: [{operation: {ports: ["80", "8080"], notPorts: ["80"]}}]}]`), mtls},
		{"ipBlocks minus a smaller notIpBlocks", rulesDoc("ALLOW", `[{from: [{source: {ipBlocks: [10.244.1.0/24], notIpBlocks: [10.244.1.9]}}]}]`), mtls},
		{"ipBlocks of both families", rulesDoc("ALLOW", `[{from: [{source: {ipBlocks: [10.244.1.0/24, "fd00::/8"], notIpBlocks: ["fd00::/8"]}}]}]`), mtls},
		{"from, to and when that agree", rulesDoc("ALLOW", `[{from: [{source: {namespaces: [demo]}}], to: [{operation: {ports: ["8080"]}}], when: [{key: source.ip, values: [10.244.1.0/24]}, {key: destination.port, values: ["8080", "9090"]}]}]`), mtls},
		{"one of two sources agrees with when", rulesDoc("ALLOW", `[{from: [{source: {namespaces: [a]}}, {source: {namespaces: [demo]}}], when: [{key: source.namespace, values: [demo]}]}]`), mtls},
		{"destination.ip values minus a smaller notValues", rulesDoc("ALLOW", `[{when: [{key: destination.ip, values: [10.244.2.0/24], notValues: [10.244.2.9]}]}]`), mtls},
		{"DENY with an empty rule", rulesDoc("DENY", `[{}]`), mtls},
		{"DENY by principal", rulesDoc("DENY", `[{from: [{source: {principals: [cluster.local/ns/demo/sa/client]}}]}]`), mtls},
		{"DENY by notPrincipals", rulesDoc("DENY", `[{from: [{source: {notPrincipals: [cluster.local/ns/demo/sa/other]}}]}]`), mtls},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, warns := Translate(policy(t, tc.doc), "")
			if len(warns) > 0 {
				t.Errorf("warnings for a policy that can match:\n%s", warningText(warns))
			}
			if !authz.Matches(p, tc.witness) {
				t.Errorf("the witness %+v does not match the policy", tc.witness)
			}
		})
	}
	// The allow-nothing idiom: an ALLOW without rules matches nothing, on
	// purpose, and is not warned about.
	if _, warns := Translate(policy(t, "metadata: {name: p}\nspec: {}\n"), ""); len(warns) > 0 {
		t.Errorf("allow-nothing policy warned: %v", warns)
	}
}

func warningText(ws []Warning) string {
	var lines []string
	for _, w := range ws {
		lines = append(lines, w.String())
	}
	return strings.Join(lines, "\n")
}

// TestNeverMatchSound translates random rules built from a small
// vocabulary and checks that whatever the checks call impossible (a rule,
// or one of its entries) matches none of many connections that cover the
// vocabulary. It is the no-false-positive property, tested.
func TestNeverMatchSound(t *testing.T) {
	vocab := struct{ principals, namespaces, accounts, ips, dstIPs, ports []string }{
		principals: []string{"cluster.local/ns/demo/sa/client", "cluster.local/ns/other/sa/sa1", "spiffe://cluster.local/ns/demo/sa/client",
			"cluster.local/ns/demo/*", "cluster.local/ns/o*", "*/sa/client", "*sa1", "*", "cluster.local/ns/demo", "*/ns/ops/sa/admin",
			"cluster.local/ns/*/sa/client", "c*", "*t", "*o/sa/client", "example.org/*", "*local/ns/demo/sa/sa1"},
		namespaces: []string{"demo", "other", "ops", "de*", "*er", "*", "o*", "*s"},
		accounts:   []string{"client", "other/sa1", "ops/admin", "demo/sa1", "other/client"},
		ips:        []string{"10.244.1.0/24", "10.244.1.2", "10.244.1.9", "10.0.0.0/8", "192.168.0.0/16", "fd00::/8"},
		dstIPs:     []string{"10.244.2.3", "10.244.2.0/24", "10.9.0.0/16", "10.0.0.0/8"},
		ports:      []string{"80", "8080", "1"},
	}
	var ids []*identity.SPIFFE
	for _, td := range []string{"cluster.local", "example.org"} {
		for _, ns := range []string{"demo", "other", "ops", "der"} {
			for _, sa := range []string{"client", "sa1", "admin"} {
				ids = append(ids, &identity.SPIFFE{TrustDomain: td, Namespace: ns, ServiceAccount: sa})
			}
		}
	}
	ids = append(ids, nil)
	var conns []authz.Conn
	for _, id := range ids {
		for _, src := range []string{"10.244.1.2", "10.244.1.9", "10.1.1.1", "192.168.1.1", "172.16.0.1", "fd00::1"} {
			for _, dst := range []string{"10.244.2.3", "10.9.1.1", "10.8.0.1", "10.244.2.4"} {
				for _, port := range []uint16{80, 8080, 1, 443} {
					conns = append(conns, authz.Conn{Src: id, SrcIP: netip.MustParseAddr(src), DstIP: netip.MustParseAddr(dst), DstPort: port})
				}
			}
		}
	}
	rng := rand.New(rand.NewSource(9))
	some := func(vals []string) []string {
		var out []string
		for n := rng.Intn(3); n > 0; n-- {
			out = append(out, vals[rng.Intn(len(vals))])
		}
		return out
	}
	whenKeys := map[string][]string{"source.principal": vocab.principals, "source.namespace": vocab.namespaces,
		"source.ip": vocab.ips, "destination.ip": vocab.dstIPs, "destination.port": vocab.ports}
	keys := []string{"source.principal", "source.namespace", "source.ip", "destination.ip", "destination.port"}
	deadRules, deadItems := 0, 0
	for n := 0; n < 1000; n++ {
		r := &securityv1beta1.Rule{}
		for i := rng.Intn(3); i > 0; i-- {
			r.From = append(r.From, &securityv1beta1.Rule_From{Source: &securityv1beta1.Source{
				Principals: some(vocab.principals), NotPrincipals: some(vocab.principals),
				Namespaces: some(vocab.namespaces), NotNamespaces: some(vocab.namespaces),
				ServiceAccounts: some(vocab.accounts), NotServiceAccounts: some(vocab.accounts),
				IpBlocks: some(vocab.ips), NotIpBlocks: some(vocab.ips),
			}})
		}
		for i := rng.Intn(3); i > 0; i-- {
			r.To = append(r.To, &securityv1beta1.Rule_To{Operation: &securityv1beta1.Operation{Ports: some(vocab.ports), NotPorts: some(vocab.ports)}})
		}
		for i := rng.Intn(3); i > 0; i-- {
			k := keys[rng.Intn(len(keys))]
			r.When = append(r.When, &securityv1beta1.Condition{Key: k, Values: some(whenKeys[k]), NotValues: some(whenKeys[k])})
		}
		clauses, _ := translateRule(r, "demo")
		if ruleNever(clauses) != "" {
			deadRules++
			g := group(clauses)
			for _, c := range conns {
				if authz.Matches(&security.Authorization{Groups: []*security.Group{g}}, c) {
					t.Fatalf("rule called impossible matches %+v (src %v)\nrule: %v\nreason: %s", c, c.Src, r, ruleNever(clauses))
				}
			}
		}
		for _, cl := range clauses {
			for _, it := range cl {
				if conjunctionOf(it).never() == "" {
					continue
				}
				deadItems++
				for _, c := range conns {
					if authz.Matches(&security.Authorization{Groups: []*security.Group{{Rules: []*security.Rules{{Matches: []*security.Match{it.m}}}}}}, c) {
						t.Fatalf("%s called impossible matches %+v (src %v)\nrule: %v\nreason: %s", it.label, c, c.Src, r, conjunctionOf(it).never())
					}
				}
			}
		}
	}
	t.Logf("%d rules and %d entries called impossible", deadRules, deadItems)
	if deadRules < 50 || deadItems < 50 {
		t.Errorf("the vocabulary exercises too little: %d rules, %d entries", deadRules, deadItems)
	}
}

// TestPrincipalPattern pins the reading of principal forms part by part.
func TestPrincipalPattern(t *testing.T) {
	tests := []struct {
		value string
		want  string // td|ns|sa, each exact "=x", prefix "x*", suffix "*x", or "" for any; "!" when impossible
	}{
		{"cluster.local/ns/demo/sa/client", "=cluster.local|=demo|=client"},
		{"*", "||"},
		{"cluster.local/ns/demo/*", "=cluster.local|=demo|"},
		{"cluster.local/ns/de*", "=cluster.local|de*|"},
		{"cluster.local/n*", "=cluster.local||"},
		{"clu*", "clu*||"},
		{"*/sa/client", "||=client"},
		{"*o/sa/client", "|*o|=client"},
		{"*ient", "||*ient"},
		{"*local/ns/demo/sa/client", "*local|=demo|=client"},
		{"spiffe://cluster.local/ns/demo/sa/client", "!"},
		{"cluster.local/ns/demo", "!"},
		{"cluster.local/ns/demo/sa/client/*", "!"},
		{"*/x/ns/demo/sa/client", "!"},
	}
	show := func(m partMatch) string {
		switch {
		case m.hasExact:
			return "=" + m.exact
		case m.prefix != "":
			return m.prefix + "*"
		case m.suffix != "":
			return "*" + m.suffix
		}
		return ""
	}
	for _, tc := range tests {
		p, why := principalPattern(stringMatches([]string{tc.value})[0])
		got := "!"
		if why == "" {
			got = fmt.Sprintf("%s|%s|%s", show(p[partTD]), show(p[partNS]), show(p[partSA]))
		}
		if got != tc.want {
			t.Errorf("%q: %s (%s), want %s", tc.value, got, why, tc.want)
		}
	}
}
