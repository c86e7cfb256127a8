package redirect

// These tests need root: they build throwaway network namespaces, a "pod"
// and a "peer" joined by a veth pair (nstest removes everything when the
// test ends), program the capture in the pod and check where real TCP and
// UDP connections land.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/nsnet"
	"github.com/ambit-mesh/ambit/nsnet/nstest"
)

const (
	podV4  = "10.99.0.2"
	peerV4 = "10.99.0.1"
	podV6  = "fd00:99::2"
	peerV6 = "fd00:99::1"

	wait = 3 * time.Second // bound of every dial, read and accept
)

type topology struct{ pod, peer string }

// newTopology builds pod and peer namespaces on one veth pair with IPv4
// and IPv6 addresses, and gives the peer the probe SNAT addresses (with
// routes to them in the pod) so it can play the node's kubelet.
func newTopology(t *testing.T) topology {
	t.Helper()
	nstest.RequireRoot(t)
	tp := topology{pod: nstest.Netns(t), peer: nstest.Netns(t)}
	nstest.Veth(t, tp.pod, podV4+"/24", tp.peer, peerV4+"/24")
	addAddr(t, tp.pod, podV6+"/64")
	addAddr(t, tp.peer, peerV6+"/64")
	addAddr(t, tp.peer, DefaultProbeSNATv4+"/32")
	addAddr(t, tp.peer, DefaultProbeSNATv6+"/128")
	h := nstest.Handle(t, tp.pod)
	eth0, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{DefaultProbeSNATv4 + "/32", DefaultProbeSNATv6 + "/128"} {
		if err := h.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Dst: mustCIDR(t, p), Scope: netlink.SCOPE_LINK}); err != nil {
			t.Fatalf("route to %s in pod: %v", p, err)
		}
	}
	return tp
}

func mustCIDR(t *testing.T, s string) *net.IPNet {
	t.Helper()
	_, n, err := net.ParseCIDR(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// addAddr adds an address to eth0 without duplicate address detection, so
// IPv6 addresses are usable at once.
func addAddr(t *testing.T, ns, cidr string) {
	t.Helper()
	h := nstest.Handle(t, ns)
	l, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	a, err := netlink.ParseAddr(cidr)
	if err != nil {
		t.Fatal(err)
	}
	a.Flags = unix.IFA_F_NODAD
	if err := h.AddrAdd(l, a); err != nil {
		t.Fatalf("address %s in %s: %v", cidr, ns, err)
	}
}

// serveTCP answers every connection to a listener in ns with one line:
// "<name> <original destination|-> <remote address>".
func serveTCP(t *testing.T, ns, addr, name string) {
	t.Helper()
	l, err := nsnet.Listen(context.Background(), ns, addr, nsnet.SocketOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(wait))
				orig := "-"
				if o, err := OriginalDst(c.(*net.TCPConn)); err == nil {
					orig = o.String()
				}
				fmt.Fprintf(c, "%s %s %s\n", name, orig, c.RemoteAddr())
			}()
		}
	}()
}

// serveUDP answers every datagram with "<name> - <sender>".
func serveUDP(t *testing.T, ns, addr, name string) {
	t.Helper()
	var pc net.PacketConn
	err := nsnet.Do(ns, func() error {
		var err error
		pc, err = net.ListenPacket("udp", addr)
		return err
	})
	if err != nil {
		t.Fatalf("udp listen %s in %s: %v", addr, ns, err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 512)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo([]byte(fmt.Sprintf("%s - %s\n", name, from)), from)
		}
	}()
}

type dialOpts struct {
	mark        uint32
	local       string        // local address to bind ("ip:port"), with transparent for a foreign one
	transparent bool          // IP_TRANSPARENT / IPV6_TRANSPARENT
	timeout     time.Duration // default wait
}

// reply is what a test server answered.
type reply struct {
	listener, orig, remote string
	from                   string // UDP: the address the answer came from
}

// ask connects from ns to addr and returns the server's answer line.
func ask(ns, network, addr string, o dialOpts) (reply, error) {
	if o.timeout == 0 {
		o.timeout = wait
	}
	d := net.Dialer{Timeout: o.timeout, Control: func(nw, address string, c syscall.RawConn) error {
		if o.mark != 0 {
			if err := MarkControl(o.mark)(nw, address, c); err != nil {
				return err
			}
		}
		if !o.transparent {
			return nil
		}
		var serr error
		err := c.Control(func(fd uintptr) {
			if strings.HasSuffix(nw, "6") {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1)
			} else {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT, 1)
			}
		})
		return errors.Join(err, serr)
	}}
	if o.local != "" {
		ap := netip.MustParseAddrPort(o.local)
		if strings.HasPrefix(network, "udp") {
			d.LocalAddr = net.UDPAddrFromAddrPort(ap)
		} else {
			d.LocalAddr = net.TCPAddrFromAddrPort(ap)
		}
	}
	var c net.Conn
	err := nsnet.Do(ns, func() error {
		var err error
		c, err = d.Dial(network, addr)
		return err
	})
	if err != nil {
		return reply{}, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(o.timeout))
	if strings.HasPrefix(network, "udp") {
		if _, err := c.Write([]byte("query")); err != nil {
			return reply{}, err
		}
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return reply{}, fmt.Errorf("reading answer from %s: %w", addr, err)
	}
	f := strings.Fields(line)
	if len(f) != 3 {
		return reply{}, fmt.Errorf("malformed answer %q", line)
	}
	return reply{listener: f[0], orig: f[1], remote: f[2], from: c.RemoteAddr().String()}, nil
}

// lands asserts that a connection reaches the listener named want and, when
// orig is set, that the listener saw that original destination.
func lands(t *testing.T, ns, network, addr string, o dialOpts, want, orig string) reply {
	t.Helper()
	r, err := ask(ns, network, addr, o)
	if err != nil {
		t.Fatalf("%s %s from %s: %v (want it to reach %s)", network, addr, filepath.Base(ns), err, want)
	}
	if r.listener != want {
		t.Fatalf("%s %s reached %s, want %s", network, addr, r.listener, want)
	}
	if orig != "" && r.orig != orig {
		t.Fatalf("%s %s reached %s with original destination %s, want %s", network, addr, want, r.orig, orig)
	}
	return r
}

func join(host string, port int) string { return net.JoinHostPort(host, fmt.Sprint(port)) }

// serveAll starts the listeners the capture tests use.
func serveAll(t *testing.T, tp topology) {
	for _, p := range []int{OutboundPort, InboundPort, HBONEPort, 8080, 7777} {
		serveTCP(t, tp.pod, fmt.Sprintf(":%d", p), fmt.Sprintf("pod:%d", p))
	}
	serveTCP(t, tp.pod, join("127.0.0.1", DNSPort), "pod:dns")
	serveTCP(t, tp.pod, join("::1", DNSPort), "pod:dns")
	serveUDP(t, tp.pod, join("127.0.0.1", DNSPort), "pod:dns")
	serveUDP(t, tp.pod, join("::1", DNSPort), "pod:dns")
	serveTCP(t, tp.peer, ":9999", "peer:9999")
	serveTCP(t, tp.peer, ":53", "peer:53")
	serveUDP(t, tp.peer, ":53", "peer:53")
}

// checkDirect asserts that nothing is captured: the state before Install
// and after Remove.
func checkDirect(t *testing.T, tp topology) {
	t.Helper()
	for _, ip := range []string{podV4, podV6} {
		lands(t, tp.peer, "tcp", join(ip, 8080), dialOpts{}, "pod:8080", "")
	}
	for _, ip := range []string{peerV4, peerV6} {
		lands(t, tp.pod, "tcp", join(ip, 9999), dialOpts{}, "peer:9999", "")
		lands(t, tp.pod, "tcp", join(ip, 53), dialOpts{}, "peer:53", "")
		lands(t, tp.pod, "udp", join(ip, 53), dialOpts{}, "peer:53", "")
	}
	// Without table 100 the app's answer to a connection ztunnel opens with
	// the client's address goes out eth0 instead of back to ztunnel.
	for _, c := range [][2]string{{peerV4, podV4}, {peerV6, podV6}} {
		_, err := ask(tp.pod, "tcp", join(c[1], 8080), dialOpts{mark: ZtunnelMark, transparent: true, local: join(c[0], 0), timeout: 1500 * time.Millisecond})
		if err == nil {
			t.Fatalf("spoofed connection from %s to %s succeeded without the capture rules", c[0], c[1])
		}
	}
}

func TestCapture(t *testing.T) {
	tp := newTopology(t)
	serveAll(t, tp)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	before := threadNetns(t)

	t.Run("before Install traffic is direct", func(t *testing.T) { checkDirect(t, tp) })

	cfg := Config{DNSCapture: true, IPv6: true}
	for i := range 2 {
		if err := Install(ctx, tp.pod, cfg); err != nil {
			t.Fatalf("Install #%d: %v", i+1, err)
		}
	}
	st, err := Inspect(ctx, tp.pod)
	want := State{Tables: []string{NatTable, MangleTable, RawTable}, Rules: 24, RuleV4: true, RuleV6: true, RouteV4: true, RouteV6: true}
	if err != nil || !equalState(st, want) || !st.Installed() {
		t.Fatalf("after Install twice: %+v, %v; want %+v", st, err, want)
	}
	assertOneRulePerFamily(t, tp.pod)

	t.Run("outbound to 15001 with original destination", func(t *testing.T) {
		lands(t, tp.pod, "tcp", join(peerV4, 9999), dialOpts{}, "pod:15001", join(peerV4, 9999))
		lands(t, tp.pod, "tcp", join(peerV6, 9999), dialOpts{}, "pod:15001", join(peerV6, 9999))
		// Any port, even one the peer does not listen on.
		lands(t, tp.pod, "tcp", join(peerV4, 80), dialOpts{}, "pod:15001", join(peerV4, 80))
	})
	t.Run("inbound to 15006 with original destination", func(t *testing.T) {
		lands(t, tp.peer, "tcp", join(podV4, 8080), dialOpts{}, "pod:15006", join(podV4, 8080))
		lands(t, tp.peer, "tcp", join(podV6, 8080), dialOpts{}, "pod:15006", join(podV6, 8080))
	})
	t.Run("HBONE port 15008 is not redirected", func(t *testing.T) {
		lands(t, tp.peer, "tcp", join(podV4, HBONEPort), dialOpts{}, fmt.Sprintf("pod:%d", HBONEPort), "")
		lands(t, tp.peer, "tcp", join(podV6, HBONEPort), dialOpts{}, fmt.Sprintf("pod:%d", HBONEPort), "")
	})
	t.Run("ztunnel's marked sockets are not redirected", func(t *testing.T) {
		lands(t, tp.pod, "tcp", join(peerV4, 9999), dialOpts{mark: ZtunnelMark}, "peer:9999", "")
		lands(t, tp.pod, "tcp", join(peerV6, 9999), dialOpts{mark: ZtunnelMark}, "peer:9999", "")
		// Only the low 12 bits count, as upstream.
		lands(t, tp.pod, "tcp", join(peerV4, 9999), dialOpts{mark: 0x7000 | ZtunnelMark}, "peer:9999", "")
		lands(t, tp.pod, "tcp", join(peerV4, 9999), dialOpts{mark: 0x538}, "pod:15001", "")
	})
	t.Run("pod to itself is not captured", func(t *testing.T) {
		for _, ip := range []string{podV4, podV6, "127.0.0.1", "::1"} {
			lands(t, tp.pod, "tcp", join(ip, 7777), dialOpts{}, "pod:7777", "")
		}
	})
	t.Run("node probes from the SNAT address reach the app", func(t *testing.T) {
		r := lands(t, tp.peer, "tcp", join(podV4, 8080), dialOpts{local: join(DefaultProbeSNATv4, 0)}, "pod:8080", "")
		if !strings.HasPrefix(r.remote, DefaultProbeSNATv4+":") {
			t.Fatalf("probe arrived from %s", r.remote)
		}
		lands(t, tp.peer, "tcp", join(podV6, 8080), dialOpts{local: join(DefaultProbeSNATv6, 0)}, "pod:8080", "")
	})
	t.Run("DNS to 15053", func(t *testing.T) {
		for _, ip := range []string{peerV4, peerV6} {
			lands(t, tp.pod, "tcp", join(ip, 53), dialOpts{}, "pod:dns", join(ip, 53))
			r := lands(t, tp.pod, "udp", join(ip, 53), dialOpts{}, "pod:dns", "")
			if r.from != join(ip, 53) {
				t.Fatalf("DNS answer came from %s, want %s (conntrack restores the source)", r.from, join(ip, 53))
			}
		}
	})
	t.Run("ztunnel's own DNS queries reach the resolver and get answers", func(t *testing.T) {
		for _, ip := range []string{peerV4, peerV6} {
			lands(t, tp.pod, "udp", join(ip, 53), dialOpts{mark: ZtunnelMark}, "peer:53", "")
			lands(t, tp.pod, "tcp", join(ip, 53), dialOpts{mark: ZtunnelMark}, "peer:53", "")
		}
	})
	t.Run("replies to ztunnel's spoofed connections return through table 100", func(t *testing.T) {
		for _, c := range [][2]string{{peerV4, podV4}, {peerV6, podV6}} {
			r := lands(t, tp.pod, "tcp", join(c[1], 8080), dialOpts{mark: ZtunnelMark, transparent: true, local: join(c[0], 0)}, "pod:8080", "")
			if host, _, _ := net.SplitHostPort(r.remote); host != c[0] {
				t.Fatalf("app saw the connection from %s, want the client address %s", r.remote, c[0])
			}
		}
	})

	if err := Remove(ctx, tp.pod); err != nil {
		t.Fatal(err)
	}
	if err := Remove(ctx, tp.pod); err != nil {
		t.Fatalf("second Remove: %v", err)
	}
	st, err = Inspect(ctx, tp.pod)
	if err != nil || !st.Clean() {
		t.Fatalf("after Remove: %+v %v", st, err)
	}
	t.Run("after Remove traffic is direct again", func(t *testing.T) { checkDirect(t, tp) })

	if after := threadNetns(t); after.differs(before) {
		t.Fatalf("threads left in another network namespace: before %v, after %v", before, after)
	}
}

func equalState(a, b State) bool {
	return strings.Join(a.Tables, ",") == strings.Join(b.Tables, ",") && a.Rules == b.Rules &&
		a.RuleV4 == b.RuleV4 && a.RuleV6 == b.RuleV6 && a.RouteV4 == b.RouteV4 && a.RouteV6 == b.RouteV6
}

// assertOneRulePerFamily checks that repeated Installs did not stack rules.
func assertOneRulePerFamily(t *testing.T, ns string) {
	t.Helper()
	h := nstest.Handle(t, ns)
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		n, err := countRules(h, fam)
		if err != nil || n != 1 {
			t.Fatalf("%s fwmark rules: %d (%v), want 1", familyName(fam), n, err)
		}
	}
}

// threadSet is the set of network namespaces the process's threads are in.
type threadSet map[string]bool

func (s threadSet) differs(o threadSet) bool {
	for ns := range s {
		if !o[ns] {
			return true
		}
	}
	return false
}

func threadNetns(t *testing.T) threadSet {
	t.Helper()
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	set := threadSet{}
	for _, task := range tasks {
		if link, err := os.Readlink(filepath.Join("/proc/self/task", task.Name(), "ns/net")); err == nil {
			set[link] = true
		}
	}
	return set
}

func TestConfigVariants(t *testing.T) {
	tp := newTopology(t)
	serveAll(t, tp)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	t.Run("bypass inbound capture", func(t *testing.T) {
		if err := Install(ctx, tp.pod, Config{BypassInbound: true}); err != nil {
			t.Fatal(err)
		}
		lands(t, tp.peer, "tcp", join(podV4, 8080), dialOpts{}, "pod:8080", "")
		lands(t, tp.pod, "tcp", join(peerV4, 9999), dialOpts{}, "pod:15001", join(peerV4, 9999))
	})
	t.Run("IPv4 only leaves IPv6 alone", func(t *testing.T) {
		if err := Install(ctx, tp.pod, Config{}); err != nil {
			t.Fatal(err)
		}
		lands(t, tp.peer, "tcp", join(podV4, 8080), dialOpts{}, "pod:15006", join(podV4, 8080))
		lands(t, tp.peer, "tcp", join(podV6, 8080), dialOpts{}, "pod:8080", "")
		lands(t, tp.pod, "tcp", join(peerV6, 9999), dialOpts{}, "peer:9999", "")
		// Without DNS capture DNS goes to the resolver.
		lands(t, tp.pod, "udp", join(peerV4, 53), dialOpts{}, "peer:53", "")
	})
	t.Run("reinstall converges to the new config", func(t *testing.T) {
		if err := Install(ctx, tp.pod, Config{DNSCapture: true, IPv6: true}); err != nil {
			t.Fatal(err)
		}
		if err := Install(ctx, tp.pod, Config{}); err != nil {
			t.Fatal(err)
		}
		st, err := Inspect(ctx, tp.pod)
		want := State{Tables: []string{NatTable, MangleTable}, Rules: 12, RuleV4: true, RouteV4: true}
		if err != nil || !equalState(st, want) {
			t.Fatalf("after DNS+IPv6 then plain Install: %+v %v, want %+v", st, err, want)
		}
	})
	t.Run("virtual interfaces are outbound", func(t *testing.T) {
		// A second link into the pod, as a VM's tap would be.
		vethPair(t, tp.pod, "vm0", "10.98.0.2/24", tp.peer, "vmpeer", "10.98.0.1/24")
		if err := Install(ctx, tp.pod, Config{VirtualInterfaces: []string{"vm0"}}); err != nil {
			t.Fatal(err)
		}
		lands(t, tp.peer, "tcp", "10.98.0.2:8080", dialOpts{}, "pod:15001", "10.98.0.2:8080")
		lands(t, tp.peer, "tcp", join(podV4, 8080), dialOpts{}, "pod:15006", join(podV4, 8080))
	})
	t.Run("custom probe SNAT address", func(t *testing.T) {
		if err := Install(ctx, tp.pod, Config{ProbeSNATv4: netip.MustParseAddr(peerV4)}); err != nil {
			t.Fatal(err)
		}
		lands(t, tp.peer, "tcp", join(podV4, 8080), dialOpts{}, "pod:8080", "")
		lands(t, tp.peer, "tcp", join(podV4, 8080), dialOpts{local: join(DefaultProbeSNATv4, 0)}, "pod:15006", "")
	})
	if err := Remove(ctx, tp.pod); err != nil {
		t.Fatal(err)
	}
}

// vethPair joins a and b with a veth pair named nameA / nameB.
func vethPair(t *testing.T, a, nameA, cidrA, b, nameB, cidrB string) {
	t.Helper()
	ha, hb := nstest.Handle(t, a), nstest.Handle(t, b)
	if err := ha.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: nameA}, PeerName: nameB}); err != nil {
		t.Fatalf("veth %s: %v", nameA, err)
	}
	peer, err := ha.LinkByName(nameB)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(b)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := ha.LinkSetNsFd(peer, int(f.Fd())); err != nil {
		t.Fatal(err)
	}
	for _, side := range []struct {
		h          *netlink.Handle
		name, cidr string
	}{{ha, nameA, cidrA}, {hb, nameB, cidrB}} {
		l, err := side.h.LinkByName(side.name)
		if err != nil {
			t.Fatal(err)
		}
		addr, err := netlink.ParseAddr(side.cidr)
		if err != nil {
			t.Fatal(err)
		}
		if err := side.h.AddrAdd(l, addr); err != nil {
			t.Fatal(err)
		}
		if err := side.h.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
}

// TestLeavesOthersAlone checks that Install and Remove touch only what is
// ours: another table, another ip rule and other routes in table 100 stay.
func TestLeavesOthersAlone(t *testing.T) {
	nstest.RequireRoot(t)
	pod := nstest.Netns(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// Someone else's nftables table, with a chain and a rule.
	err := nsnet.Do(pod, func() error {
		c, err := nftables.New()
		if err != nil {
			return err
		}
		tbl := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: "someone-else"})
		ch := c.AddChain(&nftables.Chain{Name: "output", Table: tbl, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityFilter})
		c.AddRule(&nftables.Rule{Table: tbl, Chain: ch, Exprs: []expr.Any{&expr.Counter{}}})
		return c.Flush()
	})
	if err != nil {
		t.Fatalf("foreign table: %v", err)
	}
	h := nstest.Handle(t, pod)
	foreignRule := netlink.NewRule()
	foreignRule.Mark, foreignRule.Table, foreignRule.Priority = 0x222, 200, 1000
	if err := h.RuleAdd(foreignRule); err != nil {
		t.Fatal(err)
	}
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	foreignRoute := &netlink.Route{Dst: mustCIDR(t, "192.0.2.0/24"), Table: RouteTable, Type: unix.RTN_UNREACHABLE}
	if err := h.RouteAdd(foreignRoute); err != nil {
		t.Fatal(err)
	}
	foreignLocal := &netlink.Route{LinkIndex: lo.Attrs().Index, Dst: mustCIDR(t, "198.51.100.0/24"), Table: RouteTable, Type: unix.RTN_LOCAL, Scope: netlink.SCOPE_HOST}
	if err := h.RouteAdd(foreignLocal); err != nil {
		t.Fatal(err)
	}

	check := func(when string) {
		t.Helper()
		var found bool
		err := nsnet.Do(pod, func() error {
			c, err := nftables.New()
			if err != nil {
				return err
			}
			tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
			if err != nil {
				return err
			}
			for _, tb := range tables {
				if tb.Name != "someone-else" {
					continue
				}
				rules, err := c.GetRules(tb, &nftables.Chain{Name: "output", Table: tb})
				if err != nil {
					return err
				}
				found = len(rules) == 1
			}
			return nil
		})
		if err != nil || !found {
			t.Fatalf("%s: the foreign table or its rule is gone (%v)", when, err)
		}
		rules, err := h.RuleList(netlink.FAMILY_V4)
		if err != nil {
			t.Fatal(err)
		}
		var ruleFound bool
		for _, r := range rules {
			ruleFound = ruleFound || (r.Mark == 0x222 && r.Table == 200 && r.Priority == 1000)
		}
		routes, err := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: RouteTable}, netlink.RT_FILTER_TABLE)
		if err != nil {
			t.Fatal(err)
		}
		var unreachable, local bool
		for _, r := range routes {
			unreachable = unreachable || r.Type == unix.RTN_UNREACHABLE && r.Dst.String() == "192.0.2.0/24"
			local = local || r.Type == unix.RTN_LOCAL && r.Dst.String() == "198.51.100.0/24"
		}
		if !ruleFound || !unreachable || !local {
			t.Fatalf("%s: foreign rule %v, routes in table %d: unreachable %v, local %v", when, ruleFound, RouteTable, unreachable, local)
		}
	}

	if err := Install(ctx, pod, Config{DNSCapture: true, IPv6: true}); err != nil {
		t.Fatal(err)
	}
	check("after Install")
	st, err := Inspect(ctx, pod)
	if err != nil || st.Rules != 24 || len(st.Tables) != 3 {
		t.Fatalf("Inspect counts what is not ours: %+v %v", st, err)
	}
	if err := Remove(ctx, pod); err != nil {
		t.Fatal(err)
	}
	check("after Remove")
	if st, err := Inspect(ctx, pod); err != nil || !st.Clean() {
		t.Fatalf("after Remove: %+v %v", st, err)
	}
}

func TestRemoveOnCleanNetns(t *testing.T) {
	nstest.RequireRoot(t)
	pod := nstest.Netns(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := Remove(ctx, pod); err != nil {
		t.Fatalf("Remove on a clean namespace: %v", err)
	}
	if st, err := Inspect(ctx, pod); err != nil || !st.Clean() || st.Installed() {
		t.Fatalf("Inspect on a clean namespace: %+v %v", st, err)
	}
}

func TestMissingNetns(t *testing.T) {
	nstest.RequireRoot(t)
	ctx := context.Background()
	path := "/run/netns/ambtest-does-not-exist"
	if err := Remove(ctx, path); err != nil {
		t.Fatalf("Remove on a missing namespace: %v", err)
	}
	if err := Install(ctx, path, Config{}); err == nil || !strings.Contains(err.Error(), path) || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Install on a missing namespace: %v", err)
	}
	if _, err := Inspect(ctx, path); err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("Inspect on a missing namespace: %v", err)
	}
	// A file that is not a namespace.
	notNS := filepath.Join(t.TempDir(), "netns")
	if err := os.WriteFile(notNS, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := Install(ctx, notNS, Config{}); err == nil || !strings.Contains(err.Error(), notNS) {
		t.Fatalf("Install on a file that is not a netns: %v", err)
	}
	if err := Remove(ctx, notNS); err == nil {
		t.Fatal("Remove on a file that is not a netns succeeded")
	}
}

func TestCanceledContext(t *testing.T) {
	nstest.RequireRoot(t)
	pod := nstest.Netns(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := Install(ctx, pod, Config{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("Install with a canceled context: %v", err)
	}
	if st, err := Inspect(context.Background(), pod); err != nil || !st.Clean() {
		t.Fatalf("a canceled Install changed the namespace: %+v %v", st, err)
	}
}

func TestOriginalDstWithoutRedirect(t *testing.T) {
	nstest.RequireRoot(t)
	ns := nstest.Netns(t) // no rules: conntrack does not track anything here
	serveTCP(t, ns, "127.0.0.1:7000", "plain")
	r, err := ask(ns, "tcp", "127.0.0.1:7000", dialOpts{})
	if err != nil || r.orig != "-" {
		t.Fatalf("un-redirected connection: %+v %v, want no original destination", r, err)
	}
	if _, err := OriginalDst(nil); err == nil {
		t.Fatal("OriginalDst(nil) succeeded")
	}
}

func TestMarkControl(t *testing.T) {
	nstest.RequireRoot(t) // SO_MARK needs CAP_NET_ADMIN
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	lc := net.ListenConfig{Control: MarkControl(ZtunnelMark)}
	ml, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ml.Close()
	raw, err := ml.(*net.TCPListener).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var got int
	var gerr error
	raw.Control(func(fd uintptr) { got, gerr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK) })
	if gerr != nil || got != ZtunnelMark {
		t.Fatalf("SO_MARK = %#x (%v), want %#x", got, gerr, ZtunnelMark)
	}
	d := net.Dialer{Timeout: wait, Control: MarkControl(0xffffffff)}
	c, err := d.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatalf("dial with mark 0xffffffff: %v", err)
	}
	c.Close()
}

// TestIPv6DisabledOnLo: with IPv6 off on the pod's lo there is no ::/0
// local route to add (upstream skips it too); the rest installs.
func TestIPv6DisabledOnLo(t *testing.T) {
	nstest.RequireRoot(t)
	pod := nstest.Netns(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := nsnet.Do(pod, func() error { return os.WriteFile(loIPv6Sysctl, []byte("1"), 0o644) }); err != nil {
		t.Fatalf("disabling IPv6 on lo in the pod: %v", err)
	}
	if err := Install(ctx, pod, Config{IPv6: true}); err != nil {
		t.Fatal(err)
	}
	st, err := Inspect(ctx, pod)
	want := State{Tables: []string{NatTable, MangleTable}, Rules: 12 + 5, RuleV4: true, RuleV6: true, RouteV4: true} // 5 ip6 rules: probe x2, 15006, lo, 15001
	if err != nil || !equalState(st, want) {
		t.Fatalf("Install with IPv6 off on lo: %+v %v, want %+v", st, err, want)
	}
	// The host's own lo is untouched by the sysctl write above.
	if b, err := os.ReadFile(loIPv6Sysctl); err == nil && strings.TrimSpace(string(b)) == "1" {
		t.Fatal("the sysctl write reached the test process's own namespace")
	}
	if err := Remove(ctx, pod); err != nil {
		t.Fatal(err)
	}
	if st, err := Inspect(ctx, pod); err != nil || !st.Clean() {
		t.Fatalf("after Remove: %+v %v", st, err)
	}
}
