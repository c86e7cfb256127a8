// Package natest builds a node and its pods out of throwaway network
// namespaces for the node agent's tests (root only): the node is a
// namespace holding a bridge, each pod a namespace on that bridge with an
// address, a default route through the node and a process inside (as a
// pod's sandbox has), so the agent finds it by scanning /proc. Everything
// is removed when the test ends.
package natest

import (
	"crypto/rand"
	"encoding/hex"
	"net"
	"net/netip"
	"os/exec"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/ambit-mesh/ambit/nsnet"
	"github.com/ambit-mesh/ambit/nsnet/nstest"
)

// Node is the node's namespace with a bridge "br0" holding the gateway
// address of the pod subnet.
type Node struct {
	Netns   string
	Gateway netip.Prefix
	h       *netlink.Handle
	br      netlink.Link
}

// NewNode creates the node namespace with the bridge at gateway (e.g.
// "10.213.0.1/24").
func NewNode(t testing.TB, gateway string) *Node {
	t.Helper()
	nstest.RequireRoot(t)
	n := &Node{Netns: nstest.Netns(t), Gateway: netip.MustParsePrefix(gateway)}
	n.h = nstest.Handle(t, n.Netns)
	if err := n.h.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}); err != nil {
		t.Fatalf("bridge: %v", err)
	}
	br, err := n.h.LinkByName("br0")
	if err != nil {
		t.Fatal(err)
	}
	n.br = br
	addr, _ := netlink.ParseAddr(gateway)
	if err := n.h.AddrAdd(br, addr); err != nil {
		t.Fatalf("bridge address: %v", err)
	}
	if err := n.h.LinkSetUp(br); err != nil {
		t.Fatal(err)
	}
	return n
}

// Pod is a pod's namespace on the node's bridge.
type Pod struct {
	Netns string
	IP    netip.Addr
	// Pause is the process in the namespace (killed when the test ends).
	Pause *exec.Cmd
}

func suffix() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Pod creates a pod namespace with eth0 at ip on the node's subnet, a
// default route via the node and a process inside.
func (n *Node) Pod(t testing.TB, ip string) *Pod {
	t.Helper()
	p := &Pod{Netns: nstest.Netns(t), IP: netip.MustParseAddr(ip)}
	hp := nstest.Handle(t, p.Netns)
	peer := "v" + suffix()
	if err := hp.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: peer}); err != nil {
		t.Fatalf("veth: %v", err)
	}
	pl, err := hp.LinkByName(peer)
	if err != nil {
		t.Fatal(err)
	}
	nodeNs, err := netns.GetFromPath(n.Netns)
	if err != nil {
		t.Fatal(err)
	}
	err = hp.LinkSetNsFd(pl, int(nodeNs))
	nodeNs.Close()
	if err != nil {
		t.Fatal(err)
	}
	nl, err := n.h.LinkByName(peer)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.h.LinkSetMaster(nl, n.br); err != nil {
		t.Fatal(err)
	}
	if err := n.h.LinkSetUp(nl); err != nil {
		t.Fatal(err)
	}
	eth0, err := hp.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: p.IP.AsSlice(), Mask: net.CIDRMask(n.Gateway.Bits(), 32)}}
	if err := hp.AddrAdd(eth0, addr); err != nil {
		t.Fatalf("pod address: %v", err)
	}
	if err := hp.LinkSetUp(eth0); err != nil {
		t.Fatal(err)
	}
	if err := hp.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: n.Gateway.Addr().AsSlice()}); err != nil {
		t.Fatalf("pod default route: %v", err)
	}
	p.Pause = StartIn(t, p.Netns, "sleep", "3600")
	return p
}

// StartIn starts a command inside the namespace at path (the thread that
// forks is inside it, so the child is too) and kills it when the test
// ends.
func StartIn(t testing.TB, path string, argv ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	if err := nsnet.Do(path, cmd.Start); err != nil {
		t.Fatalf("starting %v in %s: %v", argv, path, err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return cmd
}
