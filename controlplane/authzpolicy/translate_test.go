package authzpolicy

import (
	"net/netip"
	"strings"
	"testing"

	securityclient "istio.io/client-go/pkg/apis/security/v1"
	"istio.io/istio/pkg/workloadapi/security"
	"sigs.k8s.io/yaml"

	"github.com/ambit-mesh/ambit/authz"
	"github.com/ambit-mesh/ambit/identity"
)

func policy(t *testing.T, doc string) *securityclient.AuthorizationPolicy {
	t.Helper()
	ap := &securityclient.AuthorizationPolicy{}
	if err := yaml.Unmarshal([]byte(doc), ap); err != nil {
		t.Fatalf("policy YAML: %v\n%s", err, doc)
	}
	if ap.Namespace == "" {
		ap.Namespace = "demo"
	}
	return ap
}

var (
	client   = &identity.SPIFFE{TrustDomain: "cluster.local", Namespace: "demo", ServiceAccount: "client"}
	other    = &identity.SPIFFE{TrustDomain: "cluster.local", Namespace: "other", ServiceAccount: "sa1"}
	admin    = &identity.SPIFFE{TrustDomain: "cluster.local", Namespace: "ops", ServiceAccount: "admin"}
	podIP    = netip.MustParseAddr("10.244.2.3")
	clientIP = netip.MustParseAddr("10.244.1.2")
	otherIP  = netip.MustParseAddr("10.244.1.9")
)

func conn(src *identity.SPIFFE, srcIP netip.Addr, port uint16) authz.Conn {
	return authz.Conn{Src: src, SrcIP: srcIP, DstIP: podIP, DstPort: port}
}

const (
	denyAll     = "metadata: {name: deny-all}\nspec: {}\n"
	allowClient = "metadata: {name: allow-client}\nspec:\n  action: ALLOW\n  rules:\n  - from: [{source: {principals: [cluster.local/ns/demo/sa/client]}}]\n    to: [{operation: {ports: [\"8080\"]}}]\n"
)

func TestEvaluate(t *testing.T) {
	tests := []struct {
		name       string
		policies   []string
		conn       authz.Conn
		allow      bool
		wantPolicy string
		wantReason string
	}{
		// No policy, empty policies.
		{"no policy allows", nil, conn(client, clientIP, 8080), true, "", "no ALLOW policy"},
		{"allow-nothing (spec {}) denies", []string{denyAll}, conn(client, clientIP, 8080), false, "", "none allowed"},
		{"allow with empty rule allows all", []string{"metadata: {name: a}\nspec: {rules: [{}]}\n"}, conn(nil, otherIP, 1), true, "demo/a", ""},
		{"deny with no rules is a no-op", []string{"metadata: {name: d}\nspec: {action: DENY}\n"}, conn(client, clientIP, 8080), true, "", ""},
		{"deny with empty rule denies all", []string{"metadata: {name: d}\nspec: {action: DENY, rules: [{}]}\n"}, conn(client, clientIP, 8080), false, "demo/d", "explicitly denied by: demo/d"},
		// The L4 policy task.
		{"task: client on 8080 allowed", []string{denyAll, allowClient}, conn(client, clientIP, 8080), true, "demo/allow-client", ""},
		{"task: client on 9090 denied", []string{denyAll, allowClient}, conn(client, clientIP, 9090), false, "", "none allowed"},
		{"task: other SA denied", []string{denyAll, allowClient}, conn(other, otherIP, 8080), false, "", "none allowed"},
		{"task: plaintext denied", []string{denyAll, allowClient}, conn(nil, otherIP, 8080), false, "", ""},
		// principals forms.
		{"principal exact", []string{"metadata: {name: p}\nspec:\n  rules: [{from: [{source: {principals: [cluster.local/ns/demo/sa/client]}}]}]\n"}, conn(client, clientIP, 1), true, "demo/p", ""},
		{"principal prefix", []string{"metadata: {name: p}\nspec:\n  rules: [{from: [{source: {principals: [cluster.local/ns/demo/*]}}]}]\n"}, conn(client, clientIP, 1), true, "demo/p", ""},
		{"principal prefix other ns", []string{"metadata: {name: p}\nspec:\n  rules: [{from: [{source: {principals: [cluster.local/ns/demo/*]}}]}]\n"}, conn(other, otherIP, 1), false, "", ""},
		{"principal suffix", []string{"metadata: {name: p}\nspec:\n  rules: [{from: [{source: {principals: [\"*/sa/client\"]}}]}]\n"}, conn(client, clientIP, 1), true, "demo/p", ""},
		{"principal presence allows any mTLS", []string{"metadata: {name: p}\nspec:\n  rules: [{from: [{source: {principals: [\"*\"]}}]}]\n"}, conn(other, otherIP, 1), true, "demo/p", ""},
		{"principal presence refuses plaintext", []string{"metadata: {name: p}\nspec:\n  rules: [{from: [{source: {principals: [\"*\"]}}]}]\n"}, conn(nil, otherIP, 1), false, "", ""},
		// spiffe:// values are kept as written, as upstream: they never match.
		{"spiffe:// prefix never matches", []string{"metadata: {name: p}\nspec:\n  rules: [{from: [{source: {principals: [spiffe://cluster.local/ns/demo/sa/client]}}]}]\n"}, conn(client, clientIP, 1), false, "", ""},
		{"spiffe:// prefix never matches in when", []string{"metadata: {name: p}\nspec:\n  rules: [{when: [{key: source.principal, values: [spiffe://cluster.local/ns/demo/sa/client]}]}]\n"}, conn(client, clientIP, 1), false, "", ""},
		{"spiffe:// notPrincipals excludes nobody", []string{"metadata: {name: d}\nspec:\n  action: DENY\n  rules: [{from: [{source: {notPrincipals: [spiffe://cluster.local/ns/demo/sa/client]}}]}]\n"}, conn(client, clientIP, 1), false, "demo/d", "explicitly denied"},
		{"notPrincipals excludes", []string{"metadata: {name: p}\nspec:\n  rules: [{from: [{source: {notPrincipals: [cluster.local/ns/demo/sa/client]}}]}]\n"}, conn(client, clientIP, 1), false, "", ""},
		{"notPrincipals lets others in", []string{"metadata: {name: p}\nspec:\n  rules: [{from: [{source: {notPrincipals: [cluster.local/ns/demo/sa/client]}}]}]\n"}, conn(other, otherIP, 1), true, "demo/p", ""},
		// namespaces.
		{"namespaces match", []string{"metadata: {name: nsm}\nspec:\n  rules: [{from: [{source: {namespaces: [other]}}]}]\n"}, conn(other, otherIP, 1), true, "demo/nsm", ""},
		{"namespaces miss", []string{"metadata: {name: n}\nspec:\n  rules: [{from: [{source: {namespaces: [other]}}]}]\n"}, conn(client, clientIP, 1), false, "", ""},
		{"namespaces need an identity", []string{"metadata: {name: n}\nspec:\n  rules: [{from: [{source: {namespaces: [\"*\"]}}]}]\n"}, conn(nil, otherIP, 1), false, "", ""},
		{"notNamespaces", []string{"metadata: {name: n}\nspec:\n  rules: [{from: [{source: {notNamespaces: [other]}}]}]\n"}, conn(other, otherIP, 1), false, "", ""},
		// serviceAccounts.
		{"serviceAccounts bare name is the policy's namespace", []string{"metadata: {name: s}\nspec:\n  rules: [{from: [{source: {serviceAccounts: [client]}}]}]\n"}, conn(client, clientIP, 1), true, "demo/s", ""},
		{"serviceAccounts ns/sa", []string{"metadata: {name: s}\nspec:\n  rules: [{from: [{source: {serviceAccounts: [other/sa1]}}]}]\n"}, conn(other, otherIP, 1), true, "demo/s", ""},
		{"serviceAccounts miss", []string{"metadata: {name: s}\nspec:\n  rules: [{from: [{source: {serviceAccounts: [other/sa1]}}]}]\n"}, conn(client, clientIP, 1), false, "", ""},
		{"notServiceAccounts", []string{"metadata: {name: s}\nspec:\n  rules: [{from: [{source: {notServiceAccounts: [client]}}]}]\n"}, conn(client, clientIP, 1), false, "", ""},
		// ipBlocks.
		{"ipBlocks CIDR", []string{"metadata: {name: i}\nspec:\n  rules: [{from: [{source: {ipBlocks: [10.244.1.0/24]}}]}]\n"}, conn(nil, otherIP, 1), true, "demo/i", ""},
		{"ipBlocks single IP", []string{"metadata: {name: i}\nspec:\n  rules: [{from: [{source: {ipBlocks: [10.244.1.2]}}]}]\n"}, conn(nil, otherIP, 1), false, "", ""},
		{"notIpBlocks", []string{"metadata: {name: i}\nspec:\n  rules: [{from: [{source: {notIpBlocks: [10.244.1.9]}}]}]\n"}, conn(nil, otherIP, 1), false, "", ""},
		// ports.
		{"ports", []string{"metadata: {name: o}\nspec:\n  rules: [{to: [{operation: {ports: [\"80\", \"8080\"]}}]}]\n"}, conn(nil, otherIP, 8080), true, "demo/o", ""},
		{"notPorts", []string{"metadata: {name: o}\nspec:\n  rules: [{to: [{operation: {notPorts: [\"8080\"]}}]}]\n"}, conn(nil, otherIP, 8080), false, "", ""},
		// when conditions.
		{"when source.ip", []string{"metadata: {name: w}\nspec:\n  rules: [{when: [{key: source.ip, values: [10.244.1.0/24]}]}]\n"}, conn(nil, clientIP, 1), true, "demo/w", ""},
		{"when destination.port notValues", []string{"metadata: {name: w}\nspec:\n  rules: [{when: [{key: destination.port, notValues: [\"1\"]}]}]\n"}, conn(nil, clientIP, 1), false, "", ""},
		{"when source.namespace", []string{"metadata: {name: w}\nspec:\n  rules: [{when: [{key: source.namespace, values: [demo]}]}]\n"}, conn(client, clientIP, 1), true, "demo/w", ""},
		{"when destination.ip", []string{"metadata: {name: w}\nspec:\n  rules: [{when: [{key: destination.ip, values: [10.244.2.0/24]}]}]\n"}, conn(client, clientIP, 1), true, "demo/w", ""},
		{"when source.principal", []string{"metadata: {name: w}\nspec:\n  rules: [{when: [{key: source.principal, values: [cluster.local/ns/ops/sa/admin]}]}]\n"}, conn(admin, clientIP, 1), true, "demo/w", ""},
		// AND across from/to/when, OR across rules and list items.
		{"from AND to: both must hold", []string{"metadata: {name: x}\nspec:\n  rules: [{from: [{source: {namespaces: [demo]}}], to: [{operation: {ports: [\"80\"]}}]}]\n"}, conn(client, clientIP, 8080), false, "", ""},
		{"two from items OR", []string{"metadata: {name: x}\nspec:\n  rules: [{from: [{source: {namespaces: [nope]}}, {source: {namespaces: [other]}}]}]\n"}, conn(other, otherIP, 1), true, "demo/x", ""},
		{"two rules OR", []string{"metadata: {name: x}\nspec:\n  rules: [{from: [{source: {namespaces: [nope]}}]}, {to: [{operation: {ports: [\"1\"]}}]}]\n"}, conn(other, otherIP, 1), true, "demo/x", ""},
		{"fields inside a source AND", []string{"metadata: {name: x}\nspec:\n  rules: [{from: [{source: {namespaces: [demo], ipBlocks: [10.9.9.9]}}]}]\n"}, conn(client, clientIP, 1), false, "", ""},
		// DENY over ALLOW.
		{"deny wins over allow", []string{allowClient, "metadata: {name: deny-client}\nspec:\n  action: DENY\n  rules: [{from: [{source: {principals: [cluster.local/ns/demo/sa/client]}}]}]\n"}, conn(client, clientIP, 8080), false, "demo/deny-client", "explicitly denied by: demo/deny-client"},
		{"deny not matching, allow matching", []string{allowClient, "metadata: {name: deny-other}\nspec:\n  action: DENY\n  rules: [{from: [{source: {namespaces: [other]}}]}]\n"}, conn(client, clientIP, 8080), true, "demo/allow-client", ""},
		// dry run.
		{"dry-run deny only notes", []string{"metadata: {name: dr, annotations: {istio.io/dry-run: \"true\"}}\nspec: {action: DENY, rules: [{}]}\n"}, conn(client, clientIP, 1), true, "", ""},
		{"dry-run allow is not counted", []string{"metadata: {name: dr, annotations: {istio.io/dry-run: \"true\"}}\nspec: {rules: [{from: [{source: {namespaces: [nope]}}]}]}\n"}, conn(client, clientIP, 1), true, "", "no ALLOW policy"},
		// L7 fields without a waypoint.
		{"ALLOW with L7 rule dropped: denies all", []string{"metadata: {name: l7}\nspec:\n  rules: [{to: [{operation: {methods: [GET]}}]}]\n"}, conn(client, clientIP, 8080), false, "", "none allowed"},
		{"ALLOW keeps its L4-only rules", []string{"metadata: {name: l7}\nspec:\n  rules: [{to: [{operation: {methods: [GET]}}]}, {to: [{operation: {ports: [\"8080\"]}}]}]\n"}, conn(client, clientIP, 8080), true, "demo/l7", ""},
		{"DENY loses only its L7 parts (broader)", []string{"metadata: {name: l7}\nspec:\n  action: DENY\n  rules: [{from: [{source: {namespaces: [demo]}}], to: [{operation: {paths: [/admin]}}]}]\n"}, conn(client, clientIP, 8080), false, "demo/l7", ""},
		{"DENY with only L7 is a no-op", []string{"metadata: {name: l7}\nspec:\n  action: DENY\n  rules: [{to: [{operation: {paths: [/admin]}}]}]\n"}, conn(client, clientIP, 8080), true, "", ""},
		{"DENY with an L7 when key ignores it", []string{"metadata: {name: l7}\nspec:\n  action: DENY\n  rules: [{from: [{source: {namespaces: [demo]}}], when: [{key: \"request.headers[x]\", values: [abc]}]}]\n"}, conn(client, clientIP, 8080), false, "demo/l7", ""},
		{"ALLOW with requestPrincipals dropped", []string{"metadata: {name: l7}\nspec:\n  rules: [{from: [{source: {requestPrincipals: [\"*\"]}}]}]\n"}, conn(client, clientIP, 8080), false, "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var ps []*security.Authorization
			for _, doc := range tc.policies {
				p, _ := Translate(policy(t, doc), "")
				if p != nil {
					ps = append(ps, p)
				}
			}
			d := authz.Evaluate(ps, tc.conn)
			if d.Allow != tc.allow {
				t.Fatalf("allow = %v (%s), want %v", d.Allow, d.Reason, tc.allow)
			}
			if tc.wantPolicy != "" && d.Policy != tc.wantPolicy {
				t.Errorf("policy = %q, want %q", d.Policy, tc.wantPolicy)
			}
			if tc.wantReason != "" && !strings.Contains(d.Reason, tc.wantReason) {
				t.Errorf("reason = %q, want %q", d.Reason, tc.wantReason)
			}
		})
	}
}

func TestTranslateScopesAndSkips(t *testing.T) {
	tests := []struct {
		doc       string
		ns        string
		wantNil   bool
		wantScope security.Scope
		wantWarn  string
	}{
		{"metadata: {name: a}\nspec: {}\n", "istio-system", false, security.Scope_GLOBAL, ""},
		{"metadata: {name: a}\nspec: {}\n", "demo", false, security.Scope_NAMESPACE, ""},
		{"metadata: {name: a}\nspec: {selector: {matchLabels: {app: echo}}}\n", "demo", false, security.Scope_WORKLOAD_SELECTOR, ""},
		{"metadata: {name: a}\nspec: {targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]}\n", "demo", true, 0, "enforced by a waypoint"},
		{"metadata: {name: a}\nspec: {action: CUSTOM, provider: {name: ext}}\n", "demo", true, 0, "does not support the CUSTOM action"},
		{"metadata: {name: a}\nspec: {action: AUDIT}\n", "demo", true, 0, "does not support the AUDIT action"},
		{"metadata: {name: a}\nspec: {rules: [{to: [{operation: {methods: [GET]}}]}]}\n", "demo", false, security.Scope_NAMESPACE, "denies all traffic"},
	}
	for _, tc := range tests {
		ap := policy(t, tc.doc)
		ap.Namespace = tc.ns
		p, warns := Translate(ap, "")
		if (p == nil) != tc.wantNil {
			t.Errorf("%s: nil = %v", tc.doc, p == nil)
			continue
		}
		if p != nil && p.GetScope() != tc.wantScope {
			t.Errorf("%s: scope %v, want %v", tc.doc, p.GetScope(), tc.wantScope)
		}
		if tc.wantWarn != "" {
			found := false
			for _, w := range warns {
				found = found || strings.Contains(w.String(), tc.wantWarn)
			}
			if !found {
				t.Errorf("%s: warnings %v lack %q", tc.doc, warns, tc.wantWarn)
			}
		}
	}
}
