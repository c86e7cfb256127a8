package redirect

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// maxDuplicates bounds the loops that delete every copy of our rule.
const maxDuplicates = 16

// loIPv6Sysctl tells whether lo has IPv6; read from a thread inside the pod
// namespace it is the pod's (net sysctls follow the reading thread).
const loIPv6Sysctl = "/proc/sys/net/ipv6/conf/lo/disable_ipv6"

func familyName(family int) string {
	if family == netlink.FAMILY_V6 {
		return "IPv6"
	}
	return "IPv4"
}

// routeHandle opens a rtnetlink handle in the current thread's namespace,
// bounded by deadline.
func routeHandle(deadline time.Time) (*netlink.Handle, error) {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("opening rtnetlink socket: %w", err)
	}
	left := time.Until(deadline)
	if left < time.Millisecond {
		h.Close()
		return nil, fmt.Errorf("opening rtnetlink socket: %w", os.ErrDeadlineExceeded)
	}
	if err := h.SetSocketTimeout(left); err != nil {
		h.Close()
		return nil, fmt.Errorf("setting rtnetlink socket timeout: %w", err)
	}
	return h, nil
}

// ourRule is ip rule fwmark 0x111/0xfff pref 32764 lookup 100.
func ourRule(family int) *netlink.Rule {
	r := netlink.NewRule()
	r.Family = family
	r.Mark = ConnMark
	mask := uint32(MarkMask)
	r.Mask = &mask
	r.Priority = RulePriority
	r.Table = RouteTable
	return r
}

func isOurRule(r netlink.Rule) bool {
	return r.Table == RouteTable && r.Priority == RulePriority && r.Mark == ConnMark && r.Mask != nil && *r.Mask == MarkMask && !r.Invert
}

// ourRoute is local 0.0.0.0/0 (or ::/0) dev lo table 100.
func ourRoute(family int, lo netlink.Link) *netlink.Route {
	all := &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
	if family == netlink.FAMILY_V6 {
		all = &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
	}
	return &netlink.Route{LinkIndex: lo.Attrs().Index, Dst: all, Table: RouteTable, Type: unix.RTN_LOCAL, Scope: netlink.SCOPE_HOST}
}

func isOurRoute(r netlink.Route, lo netlink.Link) bool {
	if r.Table != RouteTable || r.Type != unix.RTN_LOCAL || r.LinkIndex != lo.Attrs().Index {
		return false
	}
	if r.Dst == nil {
		return true
	}
	ones, _ := r.Dst.Mask.Size()
	return ones == 0
}

// noFamily reports errors meaning the kernel has no such address family
// (IPv6 compiled out or disabled at boot): then nothing of it can be ours.
func noFamily(err error) bool {
	return errors.Is(err, unix.EAFNOSUPPORT) || errors.Is(err, unix.EPROTONOSUPPORT)
}

func countRules(h *netlink.Handle, family int) (int, error) {
	rules, err := h.RuleList(family)
	if noFamily(err) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("listing %s ip rules: %w", familyName(family), err)
	}
	n := 0
	for _, r := range rules {
		if isOurRule(r) {
			n++
		}
	}
	return n, nil
}

func ourRoutes(h *netlink.Handle, family int, lo netlink.Link) ([]netlink.Route, error) {
	routes, err := h.RouteListFiltered(family, &netlink.Route{Table: RouteTable}, netlink.RT_FILTER_TABLE)
	if noFamily(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listing %s routes in table %d: %w", familyName(family), RouteTable, err)
	}
	var ours []netlink.Route
	for _, r := range routes {
		if isOurRoute(r, lo) {
			ours = append(ours, r)
		}
	}
	return ours, nil
}

func loopback(h *netlink.Handle) (netlink.Link, error) {
	lo, err := h.LinkByName("lo")
	if err != nil {
		return nil, fmt.Errorf("finding lo: %w", err)
	}
	return lo, nil
}

// loHasIPv6 reports whether IPv6 is enabled on lo in the current thread's
// namespace (upstream skips the ::/0 route otherwise).
func loHasIPv6() (bool, error) {
	b, err := os.ReadFile(loIPv6Sysctl)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil // no IPv6 in this kernel
	}
	if err != nil {
		return false, fmt.Errorf("reading %s: %w", loIPv6Sysctl, err)
	}
	return strings.TrimSpace(string(b)) != "1", nil
}

// installRouting makes the fwmark rules and local routes match cfg.
func installRouting(deadline time.Time, cfg Config) error {
	h, err := routeHandle(deadline)
	if err != nil {
		return err
	}
	defer h.Close()
	lo, err := loopback(h)
	if err != nil {
		return err
	}
	if err := ensureRule(h, netlink.FAMILY_V4); err != nil {
		return err
	}
	if err := ensureRoute(h, netlink.FAMILY_V4, lo); err != nil {
		return err
	}
	if !cfg.IPv6 {
		return removeFamily(h, netlink.FAMILY_V6, lo)
	}
	if err := ensureRule(h, netlink.FAMILY_V6); err != nil {
		return err
	}
	v6, err := loHasIPv6()
	if err != nil {
		return err
	}
	if !v6 {
		return nil // nothing can be routed to ::/0 on lo; upstream skips it too
	}
	return ensureRoute(h, netlink.FAMILY_V6, lo)
}

func ensureRule(h *netlink.Handle, family int) error {
	n, err := countRules(h, family)
	if err != nil {
		return err
	}
	if n > 0 {
		return nil
	}
	if err := h.RuleAdd(ourRule(family)); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("adding %s ip rule fwmark %#x/%#x pref %d lookup %d: %w", familyName(family), ConnMark, MarkMask, RulePriority, RouteTable, err)
	}
	return nil
}

func ensureRoute(h *netlink.Handle, family int, lo netlink.Link) error {
	r := ourRoute(family, lo)
	if err := h.RouteReplace(r); err != nil {
		return fmt.Errorf("adding route local %s dev lo table %d: %w", r.Dst, RouteTable, err)
	}
	return nil
}

// removeRouting deletes every copy of our rule and our routes, both families.
func removeRouting(deadline time.Time) error {
	h, err := routeHandle(deadline)
	if err != nil {
		return err
	}
	defer h.Close()
	lo, err := loopback(h)
	if err != nil {
		return err
	}
	return errors.Join(removeFamily(h, netlink.FAMILY_V4, lo), removeFamily(h, netlink.FAMILY_V6, lo))
}

func removeFamily(h *netlink.Handle, family int, lo netlink.Link) error {
	n, err := countRules(h, family)
	if err != nil {
		return err
	}
	for range min(n, maxDuplicates) {
		if err := h.RuleDel(ourRule(family)); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("deleting %s ip rule fwmark %#x/%#x pref %d lookup %d: %w", familyName(family), ConnMark, MarkMask, RulePriority, RouteTable, err)
		}
	}
	routes, err := ourRoutes(h, family, lo)
	if err != nil {
		return err
	}
	for _, r := range routes {
		if err := h.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("deleting route local %s dev lo table %d: %w", r.Dst, RouteTable, err)
		}
	}
	return nil
}

// inspectRouting fills in the routing part of st.
func inspectRouting(deadline time.Time, st *State) error {
	h, err := routeHandle(deadline)
	if err != nil {
		return err
	}
	defer h.Close()
	lo, err := loopback(h)
	if err != nil {
		return err
	}
	for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		n, err := countRules(h, family)
		if err != nil {
			return err
		}
		routes, err := ourRoutes(h, family, lo)
		if err != nil {
			return err
		}
		if family == netlink.FAMILY_V4 {
			st.RuleV4, st.RouteV4 = n > 0, len(routes) > 0
		} else {
			st.RuleV6, st.RouteV6 = n > 0, len(routes) > 0
		}
	}
	return nil
}
