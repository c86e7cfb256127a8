package redirect

import (
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// ourTables returns every table this package may create, in listing order.
func ourTables() []string { return []string{NatTable, MangleTable, RawTable} }

// chainSpec is one chain of a table with its rules, each a list of
// expressions. Base chains (hook set) only jump to the regular chains.
type chainSpec struct {
	name     string
	hook     *nftables.ChainHook
	priority *nftables.ChainPriority
	typ      nftables.ChainType
	rules    [][]expr.Any
}

type tableSpec struct {
	name   string
	chains []chainSpec
}

// tablesFor builds the rule set for cfg, in upstream's order. The
// expressions are the ones nft itself generates for upstream's rule text,
// so `nft list ruleset` prints the same rules.
func tablesFor(cfg Config) []tableSpec {
	fams := []ipFamily{ipv4}
	if cfg.IPv6 {
		fams = append(fams, ipv6)
	}
	probe := map[ipFamily]netip.Addr{ipv4: cfg.probeV4(), ipv6: cfg.probeV6()}

	var natPre, natOut [][]expr.Any
	for _, name := range cfg.VirtualInterfaces {
		// TCP from a virtual interface is the pod's outbound traffic.
		natPre = append(natPre,
			rule(ifname(expr.MetaKeyIIFNAME, expr.CmpOpEq, name), l4proto(unix.IPPROTO_TCP), counter(), redirectTo(OutboundPort)),
			rule(ifname(expr.MetaKeyIIFNAME, expr.CmpOpEq, name), l4proto(unix.IPPROTO_TCP), counter(), verdict(expr.VerdictReturn)))
	}
	if !cfg.BypassInbound {
		// Kubelet probes, SNATed by the node, reach the app directly.
		for _, f := range fams {
			natPre = append(natPre, rule(l4proto(unix.IPPROTO_TCP), addr(f, src, expr.CmpOpEq, probe[f]), counter(), verdict(expr.VerdictAccept)))
		}
	}
	for _, f := range fams {
		natOut = append(natOut, rule(l4proto(unix.IPPROTO_TCP), addr(f, dst, expr.CmpOpEq, probe[f]), counter(), verdict(expr.VerdictAccept)))
	}
	if !cfg.BypassInbound {
		// Inbound TCP, except HBONE and ztunnel's own, to 15006.
		for _, f := range fams {
			natPre = append(natPre, rule(addr(f, dst, expr.CmpOpNeq, f.loopback()), port(unix.IPPROTO_TCP, dst, expr.CmpOpNeq, HBONEPort),
				mark(expr.CmpOpNeq, ZtunnelMark), counter(), redirectTo(InboundPort)))
		}
	}
	if cfg.DNSCapture {
		// The app's DNS to ztunnel's DNS proxy; ztunnel's own queries pass.
		natOut = append(natOut, rule(ifname(expr.MetaKeyOIFNAME, expr.CmpOpNeq, "lo"), mark(expr.CmpOpNeq, ZtunnelMark),
			port(unix.IPPROTO_UDP, dst, expr.CmpOpEq, DNSDestPort), counter(), redirectTo(DNSPort)))
		for _, f := range fams {
			natOut = append(natOut, rule(addr(f, dst, expr.CmpOpNeq, f.loopback()), port(unix.IPPROTO_TCP, dst, expr.CmpOpEq, DNSDestPort),
				mark(expr.CmpOpNeq, ZtunnelMark), counter(), redirectTo(DNSPort)))
		}
	}
	// The app's side of connections ztunnel opened into the pod is not
	// outbound traffic.
	natOut = append(natOut, rule(l4proto(unix.IPPROTO_TCP), mark(expr.CmpOpEq, ConnMark), counter(), verdict(expr.VerdictAccept)))
	// The pod talking to itself over lo is not captured.
	for _, f := range fams {
		natOut = append(natOut, rule(ifname(expr.MetaKeyOIFNAME, expr.CmpOpEq, "lo"), addr(f, dst, expr.CmpOpNeq, f.loopback()), counter(), verdict(expr.VerdictAccept)))
	}
	// Everything else the app sends over TCP: to 15001.
	for _, f := range fams {
		natOut = append(natOut, rule(l4proto(unix.IPPROTO_TCP), addr(f, dst, expr.CmpOpNeq, f.loopback()), mark(expr.CmpOpNeq, ZtunnelMark),
			counter(), redirectTo(OutboundPort)))
	}

	tables := []tableSpec{
		withBaseChains(NatTable, nftables.ChainTypeNAT, nftables.ChainTypeNAT, nftables.ChainPriorityNATDest, natPre, natOut),
		withBaseChains(MangleTable, nftables.ChainTypeFilter, nftables.ChainTypeRoute, nftables.ChainPriorityMangle,
			[][]expr.Any{rule(mark(expr.CmpOpEq, ZtunnelMark), counter(), setConnMark())},
			[][]expr.Any{rule(connMark(expr.CmpOpEq, ConnMark), counter(), restoreMark())}),
	}
	if cfg.DNSCapture {
		tables = append(tables, withBaseChains(RawTable, nftables.ChainTypeFilter, nftables.ChainTypeFilter, nftables.ChainPriorityRaw,
			[][]expr.Any{rule(port(unix.IPPROTO_UDP, src, expr.CmpOpEq, DNSDestPort), mark(expr.CmpOpNeq, ZtunnelMark), counter(), setZone(DNSConnZone))},
			[][]expr.Any{rule(port(unix.IPPROTO_UDP, dst, expr.CmpOpEq, DNSDestPort), mark(expr.CmpOpEq, ZtunnelMark), counter(), setZone(DNSConnZone))}))
	}
	return tables
}

// withBaseChains lays a table out as upstream does: base chains prerouting
// and output, each only jumping to istio-prerouting / istio-output.
func withBaseChains(table string, preType, outType nftables.ChainType, prio *nftables.ChainPriority, pre, out [][]expr.Any) tableSpec {
	return tableSpec{name: table, chains: []chainSpec{
		{name: PreroutingChain, hook: nftables.ChainHookPrerouting, priority: prio, typ: preType, rules: [][]expr.Any{jump(PreChain)}},
		{name: OutputChain, hook: nftables.ChainHookOutput, priority: prio, typ: outType, rules: [][]expr.Any{jump(OutChain)}},
		{name: PreChain, rules: pre},
		{name: OutChain, rules: out},
	}}
}

// nftConn opens a lasting nftables connection in the current thread's
// network namespace, bounded by deadline.
func nftConn(deadline time.Time) (*nftables.Conn, error) {
	c, err := nftables.New(nftables.AsLasting(), nftables.WithSockOptions(func(c *netlink.Conn) error {
		return c.SetDeadline(deadline)
	}))
	if err != nil {
		return nil, fmt.Errorf("opening nftables netlink socket: %w", err)
	}
	return c, nil
}

// queueDeleteOurs queues "add table" then "delete table" for each of our
// tables: in one batch this removes them whether they exist or not, without
// a racy listing first.
func queueDeleteOurs(c *nftables.Conn) {
	for _, name := range ourTables() {
		t := &nftables.Table{Family: nftables.TableFamilyINet, Name: name}
		c.AddTable(t)
		c.DelTable(t)
	}
}

// replaceTables swaps in the rule set for cfg in one atomic batch.
func replaceTables(deadline time.Time, cfg Config) error {
	c, err := nftConn(deadline)
	if err != nil {
		return err
	}
	defer c.CloseLasting()
	queueDeleteOurs(c)
	accept := nftables.ChainPolicyAccept
	for _, ts := range tablesFor(cfg) {
		t := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: ts.name})
		// Every chain first: a jump must find its target.
		chains := make([]*nftables.Chain, len(ts.chains))
		for i, cs := range ts.chains {
			chains[i] = &nftables.Chain{Name: cs.name, Table: t}
			if cs.hook != nil {
				chains[i].Hooknum, chains[i].Priority, chains[i].Type, chains[i].Policy = cs.hook, cs.priority, cs.typ, &accept
			}
			c.AddChain(chains[i])
		}
		for i, cs := range ts.chains {
			for _, exprs := range cs.rules {
				c.AddRule(&nftables.Rule{Table: t, Chain: chains[i], Exprs: exprs})
			}
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("replacing nftables tables %v (one batch): %w", ourTables(), err)
	}
	return nil
}

// deleteTables removes our tables in one batch.
func deleteTables(deadline time.Time) error {
	c, err := nftConn(deadline)
	if err != nil {
		return err
	}
	defer c.CloseLasting()
	queueDeleteOurs(c)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("deleting nftables tables %v: %w", ourTables(), err)
	}
	return nil
}

// inspectTables reports which of our tables exist and how many rules they
// hold.
func inspectTables(deadline time.Time) (State, error) {
	var st State
	c, err := nftConn(deadline)
	if err != nil {
		return st, err
	}
	defer c.CloseLasting()
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return st, fmt.Errorf("listing nftables tables: %w", err)
	}
	for _, name := range ourTables() {
		if slices.ContainsFunc(tables, func(t *nftables.Table) bool { return t.Name == name }) {
			st.Tables = append(st.Tables, name)
		}
	}
	if len(st.Tables) == 0 {
		return st, nil
	}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return st, fmt.Errorf("listing nftables chains: %w", err)
	}
	for _, ch := range chains {
		if !slices.Contains(st.Tables, ch.Table.Name) {
			continue
		}
		rules, err := c.GetRules(ch.Table, ch)
		if err != nil {
			return st, fmt.Errorf("listing rules of chain %s in table %s: %w", ch.Name, ch.Table.Name, err)
		}
		st.Rules += len(rules)
	}
	return st, nil
}

// --- expressions -----------------------------------------------------------

type ipFamily uint8

const (
	ipv4 ipFamily = unix.NFPROTO_IPV4
	ipv6 ipFamily = unix.NFPROTO_IPV6
)

func (f ipFamily) loopback() netip.Addr {
	if f == ipv6 {
		return netip.IPv6Loopback()
	}
	return netip.AddrFrom4([4]byte{127, 0, 0, 1})
}

type direction bool

const (
	src direction = false
	dst direction = true
)

func rule(parts ...[]expr.Any) []expr.Any { return slices.Concat(parts...) }

func native32(v uint32) []byte { return binaryutil.NativeEndian.PutUint32(v) }

// l4proto: meta l4proto <proto>.
func l4proto(proto byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
	}
}

// addr: ip|ip6 saddr|daddr ==|!= a (with the nfproto check nft adds in
// inet tables).
func addr(f ipFamily, d direction, op expr.CmpOp, a netip.Addr) []expr.Any {
	var offset uint32
	switch {
	case f == ipv4 && d == src:
		offset = 12
	case f == ipv4 && d == dst:
		offset = 16
	case f == ipv6 && d == src:
		offset = 8
	default:
		offset = 24
	}
	b := a.AsSlice()
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{byte(f)}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: uint32(len(b))},
		&expr.Cmp{Op: op, Register: 1, Data: b},
	}
}

// port: tcp|udp sport|dport ==|!= p.
func port(proto byte, d direction, op expr.CmpOp, p uint16) []expr.Any {
	var offset uint32
	if d == dst {
		offset = 2
	}
	return append(l4proto(proto),
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: offset, Len: 2},
		&expr.Cmp{Op: op, Register: 1, Data: binaryutil.BigEndian.PutUint16(p)},
	)
}

// mark: meta mark & 0xfff ==|!= v.
func mark(op expr.CmpOp, v uint32) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: native32(MarkMask), Xor: native32(0)},
		&expr.Cmp{Op: op, Register: 1, Data: native32(v)},
	}
}

// connMark: ct mark & 0xfff ==|!= v.
func connMark(op expr.CmpOp, v uint32) []expr.Any {
	return []expr.Any{
		&expr.Ct{Key: expr.CtKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: native32(MarkMask), Xor: native32(0)},
		&expr.Cmp{Op: op, Register: 1, Data: native32(v)},
	}
}

// ifname: iifname|oifname ==|!= name.
func ifname(key expr.MetaKey, op expr.CmpOp, name string) []expr.Any {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: op, Register: 1, Data: b},
	}
}

func counter() []expr.Any { return []expr.Any{&expr.Counter{}} }

func verdict(k expr.VerdictKind) []expr.Any { return []expr.Any{&expr.Verdict{Kind: k}} }

func jump(chain string) []expr.Any {
	return []expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: chain}}
}

// redirectTo: redirect to :p.
func redirectTo(p uint16) []expr.Any {
	return []expr.Any{
		&expr.Immediate{Register: 1, Data: binaryutil.BigEndian.PutUint16(p)},
		&expr.Redir{RegisterProtoMin: 1, RegisterProtoMax: 1, Flags: unix.NF_NAT_RANGE_PROTO_SPECIFIED},
	}
}

// setConnMark: ct mark set ct mark & ~0xfff | 0x111.
func setConnMark() []expr.Any {
	return []expr.Any{
		&expr.Ct{Key: expr.CtKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: native32(^uint32(MarkMask)), Xor: native32(ConnMark)},
		&expr.Ct{Key: expr.CtKeyMARK, Register: 1, SourceRegister: true},
	}
}

// restoreMark: meta mark set ct mark.
func restoreMark() []expr.Any {
	return []expr.Any{
		&expr.Ct{Key: expr.CtKeyMARK, Register: 1},
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1, SourceRegister: true},
	}
}

// setZone: ct zone set z.
func setZone(z uint16) []expr.Any {
	return []expr.Any{
		&expr.Immediate{Register: 1, Data: binaryutil.NativeEndian.PutUint16(z)},
		&expr.Ct{Key: expr.CtKeyZONE, Register: 1, SourceRegister: true},
	}
}
