// Package redirect programs and removes the traffic capture inside one pod
// network namespace, with the semantics of upstream Istio's in-pod nftables
// backend (istio-cni, ambient mode):
//
//   - TCP the pod sends is redirected to ztunnel's outbound listener (15001),
//     TCP arriving at the pod to its plaintext inbound listener (15006),
//     except HBONE on 15008, which reaches ztunnel's 15008 listener as is;
//   - with DNS capture, DNS (UDP and TCP port 53) goes to ztunnel's DNS proxy
//     on 127.0.0.1:15053, and ztunnel's own upstream queries use conntrack
//     zone 1;
//   - ztunnel's own sockets carry mark 0x539 and are never redirected;
//   - replies to the connections ztunnel opens into the pod with the client's
//     address as source get connmark 0x111 and are routed back to ztunnel by
//     an fwmark rule (pref 32764) to table 100, which holds a local default
//     route on lo;
//   - kubelet probes, SNATed by the node to 169.254.7.127, pass untouched, and
//     the pod talking to itself over lo is not captured.
//
// The rules live in the inet tables istio-ambient-nat, istio-ambient-mangle
// and (DNS) istio-ambient-raw, laid out as upstream: base chains prerouting
// and output jump to istio-prerouting and istio-output. Install replaces all
// of them in one atomic nftables batch; nothing else in the namespace is
// touched. Everything goes through netlink (github.com/google/nftables,
// github.com/vishvananda/netlink); no nft, ip or iptables binary is run.
package redirect

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ambit-mesh/ambit/nsnet"
)

// Marks, ports and routing constants shared with ztunnel and upstream Istio.
const (
	ZtunnelMark  = 0x539 // SO_MARK on every socket ztunnel opens in a pod (upstream InpodMark)
	ConnMark     = 0x111 // connmark of connections ztunnel opened into the pod (upstream InpodTProxyMark)
	MarkMask     = 0xfff // mask applied to both marks
	RouteTable   = 100   // policy routing table holding the local default route
	RulePriority = 32764 // preference of the fwmark rule pointing to RouteTable

	OutboundPort = 15001 // ztunnel outbound capture
	InboundPort  = 15006 // ztunnel inbound plaintext capture
	HBONEPort    = 15008 // ztunnel inbound HBONE; never redirected
	DNSPort      = 15053 // ztunnel DNS proxy (127.0.0.1 and ::1)
	DNSDestPort  = 53    // DNS port captured with Config.DNSCapture
	DNSConnZone  = 1     // conntrack zone of ztunnel's own DNS queries

	// Default source addresses the node gives kubelet health probes.
	DefaultProbeSNATv4 = "169.254.7.127"
	DefaultProbeSNATv6 = "fd16:9254:7127:1337:ffff:ffff:ffff:ffff"
)

// Our nftables tables and chains (family inet).
const (
	NatTable    = "istio-ambient-nat"
	MangleTable = "istio-ambient-mangle"
	RawTable    = "istio-ambient-raw"

	PreroutingChain = "prerouting"       // base chain, hook prerouting
	OutputChain     = "output"           // base chain, hook output
	PreChain        = "istio-prerouting" // regular chain the prerouting base chain jumps to
	OutChain        = "istio-output"     // regular chain the output base chain jumps to
)

// Pod annotations that change the rules (same names and meaning as upstream).
const (
	// AnnotationBypassInbound "true" leaves inbound traffic alone (upstream
	// "ingress mode"); outbound is still captured.
	AnnotationBypassInbound = "ambient.istio.io/bypass-inbound-capture"
	// AnnotationDNSCapture "true"/"false" turns DNS capture on or off for
	// the pod, overriding the node default.
	AnnotationDNSCapture = "ambient.istio.io/dns-capture"
	// AnnotationVirtualInterfaces is a comma-separated list of interfaces
	// (KubeVirt, VMs, Docker-in-Docker) whose incoming TCP is outbound
	// traffic of the pod: it is redirected to 15001.
	AnnotationVirtualInterfaces = "istio.io/reroute-virtual-interfaces"
)

// maxVirtualInterfaces bounds the rule set (two rules per interface).
const maxVirtualInterfaces = 64

// opTimeout bounds every netlink exchange when the context has no deadline.
const opTimeout = 15 * time.Second

// Config selects the variant of the rule set for one pod. The zero value is
// upstream's default without DNS capture and without IPv6.
type Config struct {
	// DNSCapture redirects the pod's DNS (UDP and TCP port 53) to ztunnel's
	// DNS proxy on port 15053 and adds the raw table that puts ztunnel's
	// own upstream queries in conntrack zone 1.
	DNSCapture bool
	// BypassInbound leaves inbound traffic alone (no 15006 redirect and no
	// probe exemption); outbound is still captured.
	BypassInbound bool
	// IPv6 captures IPv6 too: ip6 rules, the IPv6 fwmark rule, and the ::/0
	// local route in table 100 when lo has IPv6. Set it when the pod has an
	// IPv6 address. When false, IPv6 rules, rule and route of ours are
	// removed.
	IPv6 bool
	// VirtualInterfaces lists interfaces whose incoming TCP is redirected to
	// the outbound port 15001, as if the pod had sent it.
	VirtualInterfaces []string
	// ProbeSNATv4 and ProbeSNATv6 are the source addresses the node's
	// probe SNAT uses; the zero Addr means DefaultProbeSNATv4/v6.
	ProbeSNATv4, ProbeSNATv6 netip.Addr
}

// ConfigForPod applies a pod's annotations to the node defaults. Boolean
// annotations take the values strconv.ParseBool accepts; other values are
// ignored, as upstream does. Invalid interface names are dropped.
func ConfigForPod(annotations map[string]string, defaults Config) Config {
	c := defaults
	c.VirtualInterfaces = slices.Clone(defaults.VirtualInterfaces)
	if v, ok := boolAnnotation(annotations, AnnotationBypassInbound); ok {
		c.BypassInbound = v
	}
	if v, ok := boolAnnotation(annotations, AnnotationDNSCapture); ok {
		c.DNSCapture = v
	}
	if list, ok := annotations[AnnotationVirtualInterfaces]; ok {
		c.VirtualInterfaces = nil
		for name := range strings.SplitSeq(list, ",") {
			name = strings.TrimSpace(name)
			if validIfName(name) && !slices.Contains(c.VirtualInterfaces, name) && len(c.VirtualInterfaces) < maxVirtualInterfaces {
				c.VirtualInterfaces = append(c.VirtualInterfaces, name)
			}
		}
	}
	return c
}

func boolAnnotation(annotations map[string]string, name string) (value, ok bool) {
	s, present := annotations[name]
	if !present {
		return false, false
	}
	v, err := strconv.ParseBool(s)
	if err != nil {
		return false, false
	}
	return v, true
}

// validIfName reports whether name is a valid Linux interface name.
func validIfName(name string) bool {
	if name == "" || len(name) >= 16 || name == "." || name == ".." {
		return false
	}
	return !strings.ContainsAny(name, "/: \t\n\v\f\r\x00")
}

func (c Config) probeV4() netip.Addr {
	if c.ProbeSNATv4.IsValid() {
		return c.ProbeSNATv4
	}
	return netip.MustParseAddr(DefaultProbeSNATv4)
}

func (c Config) probeV6() netip.Addr {
	if c.ProbeSNATv6.IsValid() {
		return c.ProbeSNATv6
	}
	return netip.MustParseAddr(DefaultProbeSNATv6)
}

func (c Config) validate() error {
	if c.ProbeSNATv4.IsValid() && !c.ProbeSNATv4.Is4() {
		return fmt.Errorf("probe SNAT address %s is not IPv4", c.ProbeSNATv4)
	}
	if c.ProbeSNATv6.IsValid() && (!c.ProbeSNATv6.Is6() || c.ProbeSNATv6.Is4In6()) {
		return fmt.Errorf("probe SNAT address %s is not IPv6", c.ProbeSNATv6)
	}
	if len(c.VirtualInterfaces) > maxVirtualInterfaces {
		return fmt.Errorf("%d virtual interfaces, at most %d", len(c.VirtualInterfaces), maxVirtualInterfaces)
	}
	for _, name := range c.VirtualInterfaces {
		if !validIfName(name) {
			return fmt.Errorf("invalid virtual interface name %q", name)
		}
	}
	return nil
}

// Install programs the capture in the network namespace at netnsPath: our
// three tables are replaced in one atomic nftables batch (an earlier
// version, with any config, is gone in the same step), then the fwmark rule
// and table-100 routes are made to match cfg. It is idempotent. The routing
// goes first because on its own it is inert (only packets of ztunnel's
// connections carry mark 0x111). If Install fails part way, calling it again
// or Remove converges.
func Install(ctx context.Context, netnsPath string, cfg Config) error {
	if err := cfg.validate(); err != nil {
		return fmt.Errorf("redirect: install in netns %s: %w", netnsPath, err)
	}
	err := inNetns(ctx, netnsPath, func(deadline time.Time) error {
		if err := installRouting(deadline, cfg); err != nil {
			return err
		}
		return replaceTables(deadline, cfg)
	})
	if err != nil {
		return fmt.Errorf("redirect: install in netns %s: %w", netnsPath, err)
	}
	return nil
}

// Remove deletes our tables (in one batch, first, so capture stops at once),
// then the fwmark rules and our table-100 routes. It is idempotent, leaves
// everything that is not ours alone, and a namespace that no longer exists
// is not an error (the pod is gone, and its rules with it).
func Remove(ctx context.Context, netnsPath string) error {
	if _, err := os.Stat(netnsPath); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	err := inNetns(ctx, netnsPath, func(deadline time.Time) error {
		if err := deleteTables(deadline); err != nil {
			return err
		}
		return removeRouting(deadline)
	})
	if err != nil {
		return fmt.Errorf("redirect: remove from netns %s: %w", netnsPath, err)
	}
	return nil
}

// State is what of ours is present in a namespace.
type State struct {
	Tables  []string // our nftables tables, in the order NatTable, MangleTable, RawTable
	Rules   int      // rules in our tables, base-chain jumps included
	RuleV4  bool     // ip rule fwmark 0x111/0xfff pref 32764 lookup 100
	RuleV6  bool     // the same for IPv6
	RouteV4 bool     // local 0.0.0.0/0 dev lo table 100
	RouteV6 bool     // local ::/0 dev lo table 100
}

// Installed reports whether the IPv4 capture is complete: nat and mangle
// tables, fwmark rule and local route.
func (s State) Installed() bool {
	return slices.Contains(s.Tables, NatTable) && slices.Contains(s.Tables, MangleTable) && s.RuleV4 && s.RouteV4
}

// Clean reports whether nothing of ours is left.
func (s State) Clean() bool {
	return len(s.Tables) == 0 && s.Rules == 0 && !s.RuleV4 && !s.RuleV6 && !s.RouteV4 && !s.RouteV6
}

// Inspect reports what of ours is installed in the namespace at netnsPath.
func Inspect(ctx context.Context, netnsPath string) (State, error) {
	var st State
	err := inNetns(ctx, netnsPath, func(deadline time.Time) error {
		var err error
		if st, err = inspectTables(deadline); err != nil {
			return err
		}
		return inspectRouting(deadline, &st)
	})
	if err != nil {
		return State{}, fmt.Errorf("redirect: inspect netns %s: %w", netnsPath, err)
	}
	return st, nil
}

// inNetns runs fn on a locked OS thread inside the namespace at path; every
// netlink socket fn opens belongs to that namespace. A thread that cannot
// return to its own namespace is never unlocked, so it dies with its
// goroutine (nsnet.Do). fn gets the deadline for its netlink exchanges.
func inNetns(ctx context.Context, path string, fn func(deadline time.Time) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(opTimeout)
	}
	return nsnet.Do(path, func() error { return fn(deadline) })
}
