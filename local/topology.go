package local

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// The addressing plan. Every address lives inside namespaces the runtime
// creates; none is ever configured on the host.
const (
	underlayNetns  = NamePrefix + "underlay"
	underlayBridge = "br0"
	maxNodes       = 16
)

var (
	underlayPrefix = netip.MustParsePrefix("172.30.0.0/24")
	serviceCIDR    = netip.MustParsePrefix("10.96.0.0/16")
)

// planNodes returns the nodes of an n-node mesh: node<i> with pod CIDR
// 10.244.<i>.0/24 and underlay address 172.30.0.<10+i>.
func planNodes(n int) ([]NodeStatus, error) {
	if n < 1 || n > maxNodes {
		return nil, fmt.Errorf("nodes: want 1 to %d, got %d", maxNodes, n)
	}
	nodes := make([]NodeStatus, n)
	for i := range nodes {
		idx := i + 1
		nodes[i] = NodeStatus{
			Name:       fmt.Sprintf("node%d", idx),
			Netns:      netnsPath(fmt.Sprintf("%snode%d", NamePrefix, idx)),
			PodCIDR:    fmt.Sprintf("10.244.%d.0/24", idx),
			UnderlayIP: fmt.Sprintf("172.30.0.%d", 10+idx),
		}
	}
	return nodes, nil
}

// createUnderlay creates the underlay namespace and its bridge.
func createUnderlay() error {
	path, err := createNetns(underlayNetns)
	if err != nil {
		return err
	}
	return inNetns(path, func(h *netlink.Handle) error {
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: underlayBridge}}
		if err := h.LinkAdd(br); err != nil {
			return fmt.Errorf("underlay bridge: %w", err)
		}
		// The control plane listens on the bridge's address.
		addr, err := netlink.ParseAddr(fmt.Sprintf("%s/%d", controlPlaneIP, underlayPrefix.Bits()))
		if err != nil {
			return err
		}
		if err := h.AddrAdd(br, addr); err != nil {
			return fmt.Errorf("underlay bridge address: %w", err)
		}
		return h.LinkSetUp(br)
	})
}

// createNode creates a node namespace, wires it to the underlay bridge and
// routes the other nodes' pod CIDRs through their underlay addresses.
func createNode(node NodeStatus, all []NodeStatus) error {
	name := node.Netns[len(netnsDir)+1:]
	if _, err := createNetns(name); err != nil {
		return err
	}
	nodeNS, err := netns.GetFromPath(node.Netns)
	if err != nil {
		return fmt.Errorf("node %s: %w", node.Name, err)
	}
	defer nodeNS.Close()
	peer := "ul-" + node.Name
	err = inNetns(netnsPath(underlayNetns), func(h *netlink.Handle) error {
		br, err := h.LinkByName(underlayBridge)
		if err != nil {
			return err
		}
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: node.Name, MasterIndex: br.Attrs().Index}, PeerName: peer}
		if err := h.LinkAdd(veth); err != nil {
			return fmt.Errorf("veth %s: %w", node.Name, err)
		}
		p, err := h.LinkByName(peer)
		if err != nil {
			return err
		}
		if err := h.LinkSetNsFd(p, int(nodeNS)); err != nil {
			return fmt.Errorf("moving %s into %s: %w", peer, node.Netns, err)
		}
		l, err := h.LinkByName(node.Name)
		if err != nil {
			return err
		}
		return h.LinkSetUp(l)
	})
	if err != nil {
		return fmt.Errorf("node %s underlay link: %w", node.Name, err)
	}
	// The control plane answers pods (waypoints fetch their config and
	// certificate from it, as pods reach istiod on a cluster): the node's
	// pod CIDR routes through the node.
	err = inNetns(netnsPath(underlayNetns), func(h *netlink.Handle) error {
		br, err := h.LinkByName(underlayBridge)
		if err != nil {
			return err
		}
		_, dst, err := net.ParseCIDR(node.PodCIDR)
		if err != nil {
			return err
		}
		return h.RouteAdd(&netlink.Route{LinkIndex: br.Attrs().Index, Dst: dst, Gw: net.ParseIP(node.UnderlayIP)})
	})
	if err != nil {
		return fmt.Errorf("node %s: route to its pods from the underlay: %w", node.Name, err)
	}
	err = inNetns(node.Netns, func(h *netlink.Handle) error {
		l, err := h.LinkByName(peer)
		if err != nil {
			return err
		}
		if err := h.LinkSetName(l, "eth0"); err != nil {
			return err
		}
		addr, err := netlink.ParseAddr(fmt.Sprintf("%s/%d", node.UnderlayIP, underlayPrefix.Bits()))
		if err != nil {
			return err
		}
		if err := h.AddrAdd(l, addr); err != nil {
			return err
		}
		if err := h.LinkSetUp(l); err != nil {
			return err
		}
		for _, other := range all {
			if other.Name == node.Name {
				continue
			}
			_, dst, err := net.ParseCIDR(other.PodCIDR)
			if err != nil {
				return err
			}
			route := &netlink.Route{LinkIndex: l.Attrs().Index, Dst: dst, Gw: net.ParseIP(other.UnderlayIP)}
			if err := h.RouteAdd(route); err != nil {
				return fmt.Errorf("route %s via %s: %w", other.PodCIDR, other.UnderlayIP, err)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("node %s: %w", node.Name, err)
	}
	return setSysctl(node.Netns, "net.ipv4.ip_forward", "1")
}
