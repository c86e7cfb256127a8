package rbac_test

import (
	"net/http"
	"net/netip"
	"slices"
	"testing"

	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	"google.golang.org/protobuf/proto"

	"github.com/ambit-mesh/ambit/controlplane/l7authz"
	"github.com/ambit-mesh/ambit/waypoint/rbac"
)

// FuzzCompileEvaluate: arbitrary bytes as an RBAC, compiled under its own
// action's names (enforced and dry-run) and a mismatched one, then
// evaluated: never panics, and an unknown result never allows.
func FuzzCompileEvaluate(f *testing.F) {
	out := l7authz.Build(meshPolicies(), "istio-system")
	names := make([]string, 0, len(out.RBAC))
	for n := range out.RBAC {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		b, err := proto.Marshal(out.RBAC[n])
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, "GET", "/public", "echo.demo", "1", "cluster.local/ns/demo/sa/client", uint16(80))
	}
	f.Add([]byte{}, "POST", "/admin?x", "", "", "", uint16(0))
	f.Fuzz(func(t *testing.T, data []byte, method, path, host, header, principal string, port uint16) {
		x := &rbacv3.RBAC{}
		if err := proto.Unmarshal(data, x); err != nil {
			return
		}
		svc := echoTargets[2]
		a := rbac.Attributes{
			Principal:       principal,
			DirectRemoteIP:  netip.AddrFrom4([4]byte{10, 0, 0, byte(port)}),
			RemoteIP:        netip.AddrFrom16([16]byte{15: byte(port >> 8)}),
			DestinationIP:   netip.MustParseAddr("10.96.0.1"),
			DestinationPort: port,
			Method:          method,
			Path:            path,
			Host:            host,
			Header:          http.Header{"X-Debug": {header}, "x-user": {header, header}},
			SNI:             host,
		}
		// Mismatched action: an error, no engine.
		if e, _, err := rbac.Compile(map[string]*rbacv3.RBAC{l7authz.ResourceName(svc, rbacv3.RBAC_ALLOW): x}); (err == nil) != (x.GetAction() == rbacv3.RBAC_ALLOW) || (err != nil && e != nil) {
			t.Fatalf("Compile with the ALLOW name, action %v: %v, %v", x.GetAction(), e, err)
		}
		rbacs := map[string]*rbacv3.RBAC{
			l7authz.ResourceName(svc, x.GetAction()):       x,
			l7authz.DryRunResourceName(svc, x.GetAction()): x,
		}
		e, _, err := rbac.Compile(rbacs)
		if err != nil {
			if x.GetAction() == rbacv3.RBAC_ALLOW || x.GetAction() == rbacv3.RBAC_DENY {
				t.Fatalf("Compile: %v", err)
			}
			return
		}
		d := e.Evaluate(echoTargets, a)
		if d.Unknown && d.Allowed {
			t.Fatalf("unknown allowed: %+v", d)
		}
		if !d.Allowed && x.GetAction() == rbacv3.RBAC_DENY && d.Policy == "" {
			t.Fatalf("denied by no policy: %+v", d)
		}
		if d.DryRun == nil || d.DryRun.Allowed != d.Allowed || d.DryRun.Policy != d.Policy {
			t.Fatalf("the same RBAC as dry run decides differently: %+v", d)
		}
	})
}
