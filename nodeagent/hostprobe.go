package nodeagent

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/redirect"
)

// The host-side probe SNAT, laid out as upstream istio-cni's nftables
// backend (cni/pkg/nftables, hostprobe.golden), in the node's own network
// namespace:
//
//	table inet istio-ambient-nat {
//	  set istio-inpod-probes-v4 { type ipv4_addr }
//	  set istio-inpod-probes-v6 { type ipv6_addr }
//	  chain postrouting {
//	    type nat hook postrouting priority srcnat; policy accept;
//	    meta l4proto tcp meta skuid <kubelet> ip daddr @istio-inpod-probes-v4 counter snat ip to 169.254.7.127
//	    meta l4proto tcp meta skuid <kubelet> ip6 daddr @istio-inpod-probes-v6 counter snat ip6 to fd16:9254:7127:1337:ffff:ffff:ffff:ffff
//	  }
//	}
//
// The sets hold the IPs of the enrolled pods; the in-pod rules (redirect)
// let TCP from the probe address through uncaptured. Only packets a local
// socket sent are matched (meta skuid needs one), so traffic the node
// forwards (kube-proxy, other nodes) is never SNATed.
const (
	HostProbeTable  = "istio-ambient-nat"
	HostProbeSetV4  = "istio-inpod-probes-v4"
	HostProbeSetV6  = "istio-inpod-probes-v6"
	HostProbeChain  = "postrouting"
	hostProbeSocket = 0xffffffff // "no such uid": skuid != it matches any local socket
)

// nftSetIDs guards google/nftables' process-wide set ID counter, which
// AddSet bumps without a lock of its own.
var nftSetIDs sync.Mutex

// HostProbes programs the node side of the kubelet probe exemption.
type HostProbes struct {
	// Netns is the path of the node's network namespace; empty: the
	// caller's (the node agent runs with hostNetwork).
	Netns string
	// KubeletUID, if set, restricts the SNAT to the kubelet's sockets, as
	// upstream's nftables backend; nil: any local socket (upstream's
	// iptables backend, -m owner --socket-exists).
	KubeletUID *uint32
	// SNATv4 and SNATv6 are the probe source addresses; the zero Addr
	// means redirect.DefaultProbeSNATv4/v6. They must match the in-pod
	// rules' (redirect.Config.ProbeSNATv4/v6).
	SNATv4, SNATv6 netip.Addr

	mu sync.Mutex // one batch at a time: element deletes list first
}

func (h *HostProbes) snat4() netip.Addr {
	if h.SNATv4.IsValid() {
		return h.SNATv4
	}
	return netip.MustParseAddr(redirect.DefaultProbeSNATv4)
}

func (h *HostProbes) snat6() netip.Addr {
	if h.SNATv6.IsValid() {
		return h.SNATv6
	}
	return netip.MustParseAddr(redirect.DefaultProbeSNATv6)
}

var (
	probeTable = &nftables.Table{Family: nftables.TableFamilyINet, Name: HostProbeTable}
	probeSet4  = &nftables.Set{Table: probeTable, Name: HostProbeSetV4, KeyType: nftables.TypeIPAddr}
	probeSet6  = &nftables.Set{Table: probeTable, Name: HostProbeSetV6, KeyType: nftables.TypeIP6Addr}
)

// conn opens an nftables connection in the node's namespace; done closes it.
func (h *HostProbes) conn(ctx context.Context) (c *nftables.Conn, done func(), err error) {
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(15 * time.Second)
	}
	opts := []nftables.ConnOption{nftables.AsLasting(), nftables.WithSockOptions(func(c *netlink.Conn) error {
		return c.SetDeadline(deadline)
	})}
	var nsf *os.File
	if h.Netns != "" {
		if nsf, err = os.Open(h.Netns); err != nil {
			return nil, nil, fmt.Errorf("host probe SNAT: %w", err)
		}
		opts = append(opts, nftables.WithNetNSFd(int(nsf.Fd())))
	}
	c, err = nftables.New(opts...)
	if err != nil {
		if nsf != nil {
			nsf.Close()
		}
		return nil, nil, fmt.Errorf("host probe SNAT: opening nftables netlink socket: %w", err)
	}
	return c, func() {
		_ = c.CloseLasting()
		if nsf != nil {
			nsf.Close()
		}
	}, nil
}

// Install creates the table, its sets and the SNAT rules, idempotently and
// in one atomic batch: the sets keep their elements (a restarted agent
// does not interrupt probes of pods already enrolled), the chain's rules
// are replaced.
func (h *HostProbes) Install(ctx context.Context) error {
	if !h.snat4().Is4() || !h.snat6().Is6() || h.snat6().Is4In6() {
		return fmt.Errorf("host probe SNAT: bad probe addresses %s, %s", h.snat4(), h.snat6())
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	c, done, err := h.conn(ctx)
	if err != nil {
		return err
	}
	defer done()
	c.AddTable(probeTable)
	s4, s6 := *probeSet4, *probeSet6
	nftSetIDs.Lock()
	err = errors.Join(c.AddSet(&s4, nil), c.AddSet(&s6, nil))
	nftSetIDs.Unlock()
	if err != nil {
		return fmt.Errorf("host probe SNAT: %w", err)
	}
	accept := nftables.ChainPolicyAccept
	ch := c.AddChain(&nftables.Chain{Name: HostProbeChain, Table: probeTable, Hooknum: nftables.ChainHookPostrouting,
		Priority: nftables.ChainPriorityNATSource, Type: nftables.ChainTypeNAT, Policy: &accept})
	c.FlushChain(ch)
	c.AddRule(&nftables.Rule{Table: probeTable, Chain: ch, Exprs: h.snatRule(&s4, unix.NFPROTO_IPV4, 16, h.snat4())})
	c.AddRule(&nftables.Rule{Table: probeTable, Chain: ch, Exprs: h.snatRule(&s6, unix.NFPROTO_IPV6, 24, h.snat6())})
	if err := c.Flush(); err != nil {
		return fmt.Errorf("host probe SNAT: installing table inet %s: %w", HostProbeTable, err)
	}
	return nil
}

// snatRule: meta l4proto tcp meta skuid <uid> ip daddr @set counter snat to addr.
func (h *HostProbes) snatRule(set *nftables.Set, family byte, daddrOffset uint32, to netip.Addr) []expr.Any {
	uidOp, uid := expr.CmpOpNeq, uint32(hostProbeSocket)
	if h.KubeletUID != nil {
		uidOp, uid = expr.CmpOpEq, *h.KubeletUID
	}
	b := to.AsSlice()
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		// No socket (a forwarded packet): the load fails, no match.
		&expr.Meta{Key: expr.MetaKeySKUID, Register: 1},
		&expr.Cmp{Op: uidOp, Register: 1, Data: binaryutil.NativeEndian.PutUint32(uid)},
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{family}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: daddrOffset, Len: uint32(len(b))},
		&expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID},
		&expr.Counter{},
		&expr.Immediate{Register: 1, Data: b},
		&expr.NAT{Type: expr.NATTypeSourceNAT, Family: uint32(family), RegAddrMin: 1},
	}
}

// Uninstall deletes the table (a missing one is fine).
func (h *HostProbes) Uninstall(ctx context.Context) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	c, done, err := h.conn(ctx)
	if err != nil {
		return err
	}
	defer done()
	c.AddTable(probeTable)
	c.DelTable(probeTable)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("host probe SNAT: deleting table inet %s: %w", HostProbeTable, err)
	}
	return nil
}

func splitFamilies(ips []netip.Addr) (v4, v6 []nftables.SetElement) {
	for _, ip := range ips {
		ip = ip.Unmap()
		if ip.Is4() {
			v4 = append(v4, nftables.SetElement{Key: ip.AsSlice()})
		} else if ip.Is6() {
			v6 = append(v6, nftables.SetElement{Key: ip.AsSlice()})
		}
	}
	return v4, v6
}

// AddPodIPs adds the addresses to the probe sets (already present ones are
// fine). Install must have run.
func (h *HostProbes) AddPodIPs(ctx context.Context, ips []netip.Addr) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	c, done, err := h.conn(ctx)
	if err != nil {
		return err
	}
	defer done()
	return changeElements(c, ips, true)
}

// RemovePodIPs removes the addresses from the probe sets; absent ones (or
// an absent table) are fine.
func (h *HostProbes) RemovePodIPs(ctx context.Context, ips []netip.Addr) error {
	return h.removeWhere(ctx, func(ip netip.Addr) bool {
		return slices.ContainsFunc(ips, func(g netip.Addr) bool { return g.Unmap() == ip })
	})
}

// Retain removes every address that is not in keep from the probe sets
// (after a restart, the pods that went away meanwhile).
func (h *HostProbes) Retain(ctx context.Context, keep []netip.Addr) error {
	return h.removeWhere(ctx, func(ip netip.Addr) bool {
		return !slices.ContainsFunc(keep, func(k netip.Addr) bool { return k.Unmap() == ip })
	})
}

// removeWhere deletes the addresses in the probe sets that drop selects.
func (h *HostProbes) removeWhere(ctx context.Context, drop func(netip.Addr) bool) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	c, done, err := h.conn(ctx)
	if err != nil {
		return err
	}
	defer done()
	have, err := elements(c)
	if err != nil {
		return err
	}
	var gone []netip.Addr
	for _, ip := range have {
		if drop(ip) {
			gone = append(gone, ip)
		}
	}
	return changeElements(c, gone, false)
}

// changeElements adds (or deletes) the addresses to (from) the probe sets
// of their family, in one batch.
func changeElements(c *nftables.Conn, ips []netip.Addr, add bool) error {
	v4, v6 := splitFamilies(ips)
	if len(v4)+len(v6) == 0 {
		return nil
	}
	change, verb := c.SetDeleteElements, "removing"
	if add {
		change, verb = c.SetAddElements, "adding"
	}
	for _, fam := range []struct {
		set   *nftables.Set
		elems []nftables.SetElement
	}{{probeSet4, v4}, {probeSet6, v6}} {
		if len(fam.elems) > 0 {
			if err := change(fam.set, fam.elems); err != nil {
				return fmt.Errorf("host probe SNAT: %s %v: %w", verb, ips, err)
			}
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("host probe SNAT: %s %v: %w", verb, ips, err)
	}
	return nil
}

// PodIPs lists the addresses in the probe sets (none without the table).
func (h *HostProbes) PodIPs(ctx context.Context) ([]netip.Addr, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	c, done, err := h.conn(ctx)
	if err != nil {
		return nil, err
	}
	defer done()
	return elements(c)
}

// elements lists both sets; a missing table or set holds nothing.
func elements(c *nftables.Conn) ([]netip.Addr, error) {
	var out []netip.Addr
	for _, s := range []*nftables.Set{probeSet4, probeSet6} {
		els, err := c.GetSetElements(s)
		if err != nil {
			if errors.Is(err, unix.ENOENT) || strings.Contains(err.Error(), "no such file or directory") {
				continue
			}
			return nil, fmt.Errorf("host probe SNAT: listing set %s: %w", s.Name, err)
		}
		for _, e := range els {
			if ip, ok := netip.AddrFromSlice(e.Key); ok {
				out = append(out, ip.Unmap())
			}
		}
	}
	return out, nil
}

// kubeletProcesses are the names (/proc/<pid>/comm) of the processes that
// run a kubelet, and whether their command line must mention "kubelet"
// (k3s embeds it without saying so), as upstream.
var kubeletProcesses = []struct {
	comm         string
	needsKubelet bool
}{{"kubelet", true}, {"kubelite", true}, {"k3s", false}}

// KubeletUID finds the real user id of the node's kubelet under procDir
// (the host's /proc), for HostProbes.KubeletUID.
func KubeletUID(procDir string) (uint32, error) {
	entries, err := os.ReadDir(procDir)
	if err != nil {
		return 0, fmt.Errorf("finding the kubelet: %w", err)
	}
	for _, kp := range kubeletProcesses {
		for _, e := range entries {
			if _, err := strconv.Atoi(e.Name()); err != nil {
				continue
			}
			dir := filepath.Join(procDir, e.Name())
			comm, err := os.ReadFile(filepath.Join(dir, "comm"))
			if err != nil || strings.TrimSpace(string(comm)) != kp.comm {
				continue
			}
			if kp.needsKubelet {
				cmdline, err := os.ReadFile(filepath.Join(dir, "cmdline"))
				if err != nil || !bytes.Contains(bytes.ToLower(cmdline), []byte("kubelet")) {
					continue
				}
			}
			if uid, ok := realUID(filepath.Join(dir, "status")); ok {
				return uid, nil
			}
		}
	}
	return 0, fmt.Errorf("no kubelet process under %s", procDir)
}

func realUID(statusFile string) (uint32, bool) {
	f, err := os.Open(statusFile)
	if err != nil {
		return 0, false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "Uid:"); ok {
			fields := strings.Fields(rest)
			if len(fields) == 0 {
				return 0, false
			}
			uid, err := strconv.ParseUint(fields[0], 10, 32)
			return uint32(uid), err == nil
		}
	}
	return 0, false
}
