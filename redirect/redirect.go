// Package redirect programs traffic capture inside a pod's network
// namespace, with the semantics of upstream Istio's in-pod nftables rules:
// outbound TCP is redirected to ztunnel's port 15001, inbound TCP (except
// HBONE on 15008) to 15006, ztunnel's own sockets (mark 0x539) are exempt,
// and replies to ztunnel's spoofed-source connections are routed back to it
// through a connmark and a local route in table 100.
//
// Everything is done through netlink (github.com/google/nftables,
// github.com/vishvananda/netlink); no nft or iptables binary is run. Only
// the tables, rule and route this package owns are ever touched.
package redirect

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Constants shared with ztunnel and upstream Istio.
const (
	ZtunnelMark   = 0x539 // SO_MARK on every socket ztunnel opens in a pod
	ConnMark      = 0x111 // connmark of connections ztunnel opened into the pod
	MarkMask      = 0xfff
	RouteTable    = 100
	RulePriority  = 32764
	OutboundPort  = 15001
	InboundPort   = 15006
	HBONEPort     = 15008
	DNSPort       = 15053
	ProbeSNATIPv4 = "169.254.7.127"

	NatTable    = "istio-ambient-nat"
	MangleTable = "istio-ambient-mangle"
	RawTable    = "istio-ambient-raw"
	PreChain    = "istio-prerouting"
	OutChain    = "istio-output"
)

// Annotations that change the rules for a pod (as upstream).
const (
	AnnotationBypassInbound = "ambient.istio.io/bypass-inbound-capture"
	AnnotationDNSCapture    = "ambient.istio.io/dns-capture"
)

// Config selects variants of the rule set.
type Config struct {
	// DNSCapture redirects DNS (UDP and TCP port 53) to ztunnel's 15053.
	DNSCapture bool
	// BypassInbound leaves inbound traffic alone (outbound is still captured).
	BypassInbound bool
}

// ConfigForPod applies a pod's annotations to the defaults.
func ConfigForPod(annotations map[string]string, defaults Config) Config {
	c := defaults
	if annotations[AnnotationBypassInbound] == "true" {
		c.BypassInbound = true
	}
	switch annotations[AnnotationDNSCapture] {
	case "true":
		c.DNSCapture = true
	case "false":
		c.DNSCapture = false
	}
	return c
}

func ourTables() []string { return []string{NatTable, MangleTable, RawTable} }

// Install programs the rules in the namespace at netnsPath, replacing any
// earlier version of our tables in one atomic batch. It is idempotent.
func Install(ctx context.Context, netnsPath string, cfg Config) error {
	ns, err := vnetns.GetFromPath(netnsPath)
	if err != nil {
		return fmt.Errorf("redirect: opening netns %s: %w", netnsPath, err)
	}
	defer ns.Close()
	nft, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		return fmt.Errorf("redirect: nftables in %s: %w", netnsPath, err)
	}
	defer nft.CloseLasting()
	if err := deleteOurTables(nft); err != nil {
		return fmt.Errorf("redirect: %s: %w", netnsPath, err)
	}
	addRules(nft, cfg)
	if err := nft.Flush(); err != nil {
		return fmt.Errorf("redirect: installing nftables rules in %s: %w", netnsPath, err)
	}
	if err := installRouting(ns); err != nil {
		return fmt.Errorf("redirect: routing in %s: %w", netnsPath, err)
	}
	return nil
}

// Remove deletes our tables, the fwmark rule and the table-100 route from
// the namespace. It is idempotent; a namespace that is gone is not an error.
func Remove(ctx context.Context, netnsPath string) error {
	ns, err := vnetns.GetFromPath(netnsPath)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("redirect: opening netns %s: %w", netnsPath, err)
	}
	defer ns.Close()
	nft, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		return fmt.Errorf("redirect: nftables in %s: %w", netnsPath, err)
	}
	defer nft.CloseLasting()
	if err := deleteOurTables(nft); err != nil {
		return fmt.Errorf("redirect: %s: %w", netnsPath, err)
	}
	if err := nft.Flush(); err != nil {
		return fmt.Errorf("redirect: removing nftables rules in %s: %w", netnsPath, err)
	}
	if err := removeRouting(ns); err != nil {
		return fmt.Errorf("redirect: routing in %s: %w", netnsPath, err)
	}
	return nil
}

// State is what of ours is installed in a namespace.
type State struct {
	Tables []string // our nftables tables present
	Rule   bool     // the fwmark rule to table 100
	Route  bool     // the local default route in table 100
}

// Installed reports whether the full capture is in place.
func (s State) Installed() bool { return len(s.Tables) >= 2 && s.Rule && s.Route }

// Clean reports whether nothing of ours is left.
func (s State) Clean() bool { return len(s.Tables) == 0 && !s.Rule && !s.Route }

// Inspect reports what of ours is installed in the namespace.
func Inspect(ctx context.Context, netnsPath string) (State, error) {
	var st State
	ns, err := vnetns.GetFromPath(netnsPath)
	if err != nil {
		return st, fmt.Errorf("redirect: opening netns %s: %w", netnsPath, err)
	}
	defer ns.Close()
	nft, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		return st, err
	}
	defer nft.CloseLasting()
	tables, err := nft.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return st, fmt.Errorf("redirect: listing tables in %s: %w", netnsPath, err)
	}
	for _, t := range tables {
		for _, ours := range ourTables() {
			if t.Name == ours {
				st.Tables = append(st.Tables, t.Name)
			}
		}
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return st, err
	}
	defer h.Close()
	st.Rule, err = hasRule(h)
	if err != nil {
		return st, err
	}
	routes, err := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: RouteTable}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return st, err
	}
	st.Route = len(routes) > 0
	return st, nil
}

func deleteOurTables(nft *nftables.Conn) error {
	tables, err := nft.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return fmt.Errorf("listing nftables tables: %w", err)
	}
	for _, t := range tables {
		for _, ours := range ourTables() {
			if t.Name == ours {
				nft.DelTable(t)
			}
		}
	}
	return nil
}

func ourRule() *netlink.Rule {
	r := netlink.NewRule()
	r.Mark = ConnMark
	mask := uint32(MarkMask)
	r.Mask = &mask
	r.Priority = RulePriority
	r.Table = RouteTable
	r.Family = netlink.FAMILY_V4
	return r
}

func hasRule(h *netlink.Handle) (bool, error) {
	rules, err := h.RuleList(netlink.FAMILY_V4)
	if err != nil {
		return false, err
	}
	for _, r := range rules {
		if r.Table == RouteTable && r.Priority == RulePriority && r.Mark == ConnMark {
			return true, nil
		}
	}
	return false, nil
}

func localRoute(lo netlink.Link) *netlink.Route {
	_, all, _ := net.ParseCIDR("0.0.0.0/0")
	return &netlink.Route{LinkIndex: lo.Attrs().Index, Dst: all, Table: RouteTable, Type: unix.RTN_LOCAL, Scope: netlink.SCOPE_HOST}
}

func installRouting(ns vnetns.NsHandle) error {
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return err
	}
	defer h.Close()
	if ok, err := hasRule(h); err != nil {
		return err
	} else if !ok {
		if err := h.RuleAdd(ourRule()); err != nil {
			return fmt.Errorf("adding fwmark rule: %w", err)
		}
	}
	lo, err := h.LinkByName("lo")
	if err != nil {
		return err
	}
	if err := h.RouteReplace(localRoute(lo)); err != nil {
		return fmt.Errorf("adding local route in table %d: %w", RouteTable, err)
	}
	return nil
}

func removeRouting(ns vnetns.NsHandle) error {
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return err
	}
	defer h.Close()
	for {
		ok, err := hasRule(h)
		if err != nil {
			return err
		}
		if !ok {
			break
		}
		if err := h.RuleDel(ourRule()); err != nil {
			return fmt.Errorf("deleting fwmark rule: %w", err)
		}
	}
	routes, err := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: RouteTable}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return err
	}
	for _, r := range routes {
		if err := h.RouteDel(&r); err != nil {
			return fmt.Errorf("deleting route in table %d: %w", RouteTable, err)
		}
	}
	return nil
}

// --- rule building -------------------------------------------------------

func native32(v uint32) []byte { return binaryutil.NativeEndian.PutUint32(v) }

// ipv4 matches IPv4 packets (our tables are inet; address matches need it).
func ipv4() []expr.Any {
	return []expr.Any{&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1}, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}}}
}

func l4(proto byte) []expr.Any {
	return []expr.Any{&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1}, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}}}
}

// ip4Addr matches the source (offset 12) or destination (16) address.
func ip4Addr(offset uint32, op expr.CmpOp, addr string) []expr.Any {
	a := netip.MustParseAddr(addr).As4()
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4},
		&expr.Cmp{Op: op, Register: 1, Data: a[:]},
	}
}

func dport(op expr.CmpOp, port uint16) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: op, Register: 1, Data: binaryutil.BigEndian.PutUint16(port)},
	}
}

// markIs matches meta mark & MarkMask against v.
func markIs(op expr.CmpOp, v uint32) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: native32(MarkMask), Xor: native32(0)},
		&expr.Cmp{Op: op, Register: 1, Data: native32(v)},
	}
}

func ctMarkIs(v uint32) []expr.Any {
	return []expr.Any{
		&expr.Ct{Key: expr.CtKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: native32(MarkMask), Xor: native32(0)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: native32(v)},
	}
}

func oifLo() []expr.Any {
	name := make([]byte, 16)
	copy(name, "lo")
	return []expr.Any{&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1}, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: name}}
}

func accept() []expr.Any { return []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}} }

func redirectTo(port uint16) []expr.Any {
	return []expr.Any{
		&expr.Immediate{Register: 1, Data: binaryutil.BigEndian.PutUint16(port)},
		&expr.Redir{RegisterProtoMin: 1},
	}
}

func rule(nft *nftables.Conn, t *nftables.Table, c *nftables.Chain, parts ...[]expr.Any) {
	var exprs []expr.Any
	for _, p := range parts {
		exprs = append(exprs, p...)
	}
	nft.AddRule(&nftables.Rule{Table: t, Chain: c, Exprs: exprs})
}

func addRules(nft *nftables.Conn, cfg Config) {
	policy := nftables.ChainPolicyAccept
	mangle := nft.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: MangleTable})
	manglePre := nft.AddChain(&nftables.Chain{Name: PreChain, Table: mangle, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityMangle, Policy: &policy})
	mangleOut := nft.AddChain(&nftables.Chain{Name: OutChain, Table: mangle, Type: nftables.ChainTypeRoute, Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityMangle, Policy: &policy})
	// Packets of ztunnel's connections into the pod: remember in the connmark.
	rule(nft, mangle, manglePre, markIs(expr.CmpOpEq, ZtunnelMark), []expr.Any{
		&expr.Ct{Key: expr.CtKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: native32(^uint32(MarkMask)), Xor: native32(ConnMark)},
		&expr.Ct{Key: expr.CtKeyMARK, Register: 1, SourceRegister: true},
	})
	// The app's replies on those connections: restore the mark, so the
	// fwmark rule routes them back to ztunnel through table 100.
	rule(nft, mangle, mangleOut, ctMarkIs(ConnMark), []expr.Any{
		&expr.Ct{Key: expr.CtKeyMARK, Register: 1},
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1, SourceRegister: true},
	})

	nat := nft.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: NatTable})
	natPre := nft.AddChain(&nftables.Chain{Name: PreChain, Table: nat, Type: nftables.ChainTypeNAT, Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest, Policy: &policy})
	natOut := nft.AddChain(&nftables.Chain{Name: OutChain, Table: nat, Type: nftables.ChainTypeNAT, Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityNATDest, Policy: &policy})
	if !cfg.BypassInbound {
		// Health probes SNATed by the node are let through untouched.
		rule(nft, nat, natPre, ipv4(), l4(unix.IPPROTO_TCP), ip4Addr(12, expr.CmpOpEq, ProbeSNATIPv4), accept())
		// Inbound TCP, except HBONE and ztunnel's own: to 15006.
		rule(nft, nat, natPre, ipv4(), l4(unix.IPPROTO_TCP), ip4Addr(16, expr.CmpOpNeq, "127.0.0.1"), dport(expr.CmpOpNeq, HBONEPort), markIs(expr.CmpOpNeq, ZtunnelMark), redirectTo(InboundPort))
	}
	rule(nft, nat, natOut, ipv4(), l4(unix.IPPROTO_TCP), ip4Addr(16, expr.CmpOpEq, ProbeSNATIPv4), accept())
	if cfg.DNSCapture {
		name := make([]byte, 16)
		copy(name, "lo")
		rule(nft, nat, natOut, ipv4(), l4(unix.IPPROTO_UDP), []expr.Any{&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1}, &expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: name}}, dport(expr.CmpOpEq, 53), markIs(expr.CmpOpNeq, ZtunnelMark), redirectTo(DNSPort))
		rule(nft, nat, natOut, ipv4(), l4(unix.IPPROTO_TCP), ip4Addr(16, expr.CmpOpNeq, "127.0.0.1"), dport(expr.CmpOpEq, 53), markIs(expr.CmpOpNeq, ZtunnelMark), redirectTo(DNSPort))
	}
	// Replies of connections ztunnel opened into the pod: not outbound.
	rule(nft, nat, natOut, l4(unix.IPPROTO_TCP), markIs(expr.CmpOpEq, ConnMark), accept())
	// The pod talking to itself over lo is not captured.
	rule(nft, nat, natOut, ipv4(), ip4Addr(16, expr.CmpOpNeq, "127.0.0.1"), oifLo(), accept())
	// Everything else the app sends over TCP: to 15001.
	rule(nft, nat, natOut, ipv4(), l4(unix.IPPROTO_TCP), ip4Addr(16, expr.CmpOpNeq, "127.0.0.1"), markIs(expr.CmpOpNeq, ZtunnelMark), redirectTo(OutboundPort))
}
