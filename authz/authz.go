// Package authz evaluates L4 authorization for a connection at its
// destination, in ztunnel's order and with upstream ztunnel's semantics
// (istio/ztunnel src/rbac.rs), over istio.security.Authorization resources
// as the control plane sends them. ztunnel and `ambit authz check` share it,
// so what the CLI explains is what the data path does. Translation from
// AuthorizationPolicy is the control plane's (controlplane/authzpolicy).
package authz

import (
	"net/netip"
	"strings"

	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"

	"github.com/ambit-mesh/ambit/identity"
)

// Conn is what authorization knows about a connection at the destination.
type Conn struct {
	Src     *identity.SPIFFE // the peer's identity; nil for plaintext
	SrcIP   netip.Addr
	DstIP   netip.Addr
	DstPort uint16 // the real target port, not 15008
}

// Decision is the outcome of an evaluation, with its reason.
type Decision struct {
	Allow  bool
	Policy string // namespace/name of the deciding policy, if any
	Reason string
	// DryRun lists dry-run policies that would have denied.
	DryRun []string
}

// Select returns the policies that apply to a workload: global ones, its
// namespace's, and the selector policies named in its WDS entry.
func Select(all []*security.Authorization, w *workloadapi.Workload) []*security.Authorization {
	selected := map[string]bool{}
	for _, k := range w.GetAuthorizationPolicies() {
		selected[k] = true
	}
	var out []*security.Authorization
	for _, p := range all {
		switch p.GetScope() {
		case security.Scope_GLOBAL:
			out = append(out, p)
		case security.Scope_NAMESPACE:
			if p.GetNamespace() == w.GetNamespace() {
				out = append(out, p)
			}
		case security.Scope_WORKLOAD_SELECTOR:
			if selected[p.GetNamespace()+"/"+p.GetName()] {
				out = append(out, p)
			}
		}
	}
	return out
}

// Evaluate decides a connection in ztunnel's order: dry-run DENYs are only
// noted; any DENY match denies; with no ALLOW policy the connection is
// allowed; otherwise an ALLOW must match.
func Evaluate(policies []*security.Authorization, c Conn) Decision {
	var d Decision
	for _, p := range policies {
		if p.GetAction() == security.Action_DENY && Matches(p, c) {
			if p.GetDryRun() {
				d.DryRun = append(d.DryRun, key(p))
				continue
			}
			d.Policy, d.Reason = key(p), "explicitly denied by: "+key(p)
			return d
		}
	}
	allows := 0
	for _, p := range policies {
		if p.GetAction() != security.Action_ALLOW || p.GetDryRun() {
			continue
		}
		allows++
		if Matches(p, c) {
			d.Allow, d.Policy, d.Reason = true, key(p), "allowed by: "+key(p)
			return d
		}
	}
	if allows == 0 {
		d.Allow, d.Reason = true, "no ALLOW policy applies"
		return d
	}
	d.Reason = "allow policies exist, but none allowed"
	return d
}

func key(p *security.Authorization) string { return p.GetNamespace() + "/" + p.GetName() }

// Matches reports whether a policy's rules match a connection, whatever
// its action: any group; a group: every clause; a clause: any match.
func Matches(p *security.Authorization, c Conn) bool {
	for _, g := range p.GetGroups() {
		if groupMatches(g, c) {
			return true
		}
	}
	return false
}

func groupMatches(g *security.Group, c Conn) bool {
	for _, clause := range g.GetRules() {
		ok := false
		for _, m := range clause.GetMatches() {
			if matchMatches(m, c) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	return true
}

func matchMatches(m *security.Match, c Conn) bool {
	principal, ns := "", ""
	if c.Src != nil {
		principal = strings.TrimPrefix(c.Src.String(), "spiffe://")
		ns = c.Src.Namespace
	}
	has := c.Src != nil
	if len(m.GetPrincipals()) > 0 && (!has || !anyString(m.GetPrincipals(), principal)) {
		return false
	}
	if has && anyString(m.GetNotPrincipals(), principal) {
		return false
	}
	if len(m.GetNamespaces()) > 0 && (!has || !anyString(m.GetNamespaces(), ns)) {
		return false
	}
	if has && anyString(m.GetNotNamespaces(), ns) {
		return false
	}
	if len(m.GetServiceAccounts()) > 0 && (!has || !anySA(m.GetServiceAccounts(), c.Src)) {
		return false
	}
	if has && anySA(m.GetNotServiceAccounts(), c.Src) {
		return false
	}
	if len(m.GetSourceIps()) > 0 && !anyAddr(m.GetSourceIps(), c.SrcIP) {
		return false
	}
	if anyAddr(m.GetNotSourceIps(), c.SrcIP) {
		return false
	}
	if len(m.GetDestinationIps()) > 0 && !anyAddr(m.GetDestinationIps(), c.DstIP) {
		return false
	}
	if anyAddr(m.GetNotDestinationIps(), c.DstIP) {
		return false
	}
	if len(m.GetDestinationPorts()) > 0 && !anyPort(m.GetDestinationPorts(), c.DstPort) {
		return false
	}
	if anyPort(m.GetNotDestinationPorts(), c.DstPort) {
		return false
	}
	return true
}

func anyString(ms []*security.StringMatch, v string) bool {
	for _, m := range ms {
		switch t := m.GetMatchType().(type) {
		case *security.StringMatch_Exact:
			if v == t.Exact {
				return true
			}
		case *security.StringMatch_Prefix:
			if strings.HasPrefix(v, t.Prefix) {
				return true
			}
		case *security.StringMatch_Suffix:
			if strings.HasSuffix(v, t.Suffix) {
				return true
			}
		case *security.StringMatch_Presence:
			if v != "" {
				return true
			}
		}
	}
	return false
}

func anySA(ms []*security.ServiceAccountMatch, id *identity.SPIFFE) bool {
	for _, m := range ms {
		if m.GetNamespace() == id.Namespace && m.GetServiceAccount() == id.ServiceAccount {
			return true
		}
	}
	return false
}

func anyAddr(as []*security.Address, ip netip.Addr) bool {
	if !ip.IsValid() {
		return false
	}
	for _, a := range as {
		addr, ok := netip.AddrFromSlice(a.GetAddress())
		if !ok {
			continue
		}
		if p, err := addr.Unmap().Prefix(int(a.GetLength())); err == nil && p.Contains(ip.Unmap()) {
			return true
		}
	}
	return false
}

func anyPort(ps []uint32, port uint16) bool {
	for _, p := range ps {
		if p == uint32(port) {
			return true
		}
	}
	return false
}
