package nsnet_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/nsnet"
	"github.com/ambit-mesh/ambit/nsnet/nstest"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// TestDial checks every way a dial in a namespace can end: the socket
// lives in the namespace (it reaches what only the namespace can reach,
// with the addresses the namespace gives it), a refusal and an
// unreachable peer come back as the kernel's errors, a context ends a
// dial that gets no answer, and bad arguments are refused before any
// socket exists.
func TestDial(t *testing.T) {
	a, b := nstest.Netns(t), nstest.Netns(t)
	nstest.Veth(t, a, "10.99.0.1/24", b, "10.99.0.2/24")
	transparentReturn(t, a, b, "10.99.0.77", "10.99.0.1")
	l, err := nsnet.Listen(context.Background(), b, "10.99.0.2:7000", nsnet.SocketOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan net.Addr, 16)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted <- c.RemoteAddr()
			c.Close()
		}
	}()
	n, err := nsnet.OpenNetns(a)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()

	for _, tc := range []struct {
		name    string
		network string
		addr    string
		local   net.Addr
		opts    nsnet.SocketOptions
		timeout time.Duration
		wantErr error  // errors.Is
		errText string // substring of the error
		from    string // the accepted connection's source IP
	}{
		{name: "connects", network: "tcp", addr: "10.99.0.2:7000", from: "10.99.0.1"},
		{name: "tcp4 with mark", network: "tcp4", addr: "10.99.0.2:7000", opts: nsnet.SocketOptions{Mark: 0x539}, from: "10.99.0.1"},
		{name: "transparent source", network: "tcp", addr: "10.99.0.2:7000", local: &net.TCPAddr{IP: net.IPv4(10, 99, 0, 77)}, opts: nsnet.SocketOptions{Transparent: true}, from: "10.99.0.77"},
		{name: "foreign source without transparent", network: "tcp", addr: "10.99.0.2:7000", local: &net.TCPAddr{IP: net.IPv4(10, 99, 0, 77)}, wantErr: syscall.EADDRNOTAVAIL},
		{name: "refused", network: "tcp", addr: "10.99.0.2:7001", wantErr: syscall.ECONNREFUSED},
		{name: "no route", network: "tcp", addr: "10.100.0.1:80", wantErr: syscall.ENETUNREACH},
		{name: "no answer: the context ends it", network: "tcp", addr: "10.99.0.3:80", timeout: 200 * time.Millisecond, wantErr: context.DeadlineExceeded},
		{name: "hostname", network: "tcp", addr: "localhost:80", errText: "want IP:port"},
		{name: "udp", network: "udp", addr: "10.99.0.2:7000", errText: "only tcp"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			if tc.timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tc.timeout)
				defer cancel()
			}
			start := time.Now()
			c, err := n.DialFunc(tc.opts, tc.local)(ctx, tc.network, tc.addr)
			if tc.wantErr != nil || tc.errText != "" {
				if err == nil {
					c.Close()
					t.Fatalf("dial %s: connected, want an error", tc.addr)
				}
				if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
					t.Fatalf("dial %s: %v, want %v", tc.addr, err, tc.wantErr)
				}
				if !strings.Contains(err.Error(), tc.errText) {
					t.Fatalf("dial %s: %q, want it to say %q", tc.addr, err, tc.errText)
				}
				if tc.timeout > 0 && time.Since(start) > tc.timeout+time.Second {
					t.Fatalf("dial ended after %v, the context after %v", time.Since(start), tc.timeout)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, ok := c.(*net.TCPConn); !ok {
				t.Fatalf("dial returned %T, want *net.TCPConn (the relay's fast paths need it)", c)
			}
			if got := c.RemoteAddr().String(); got != tc.addr {
				t.Fatalf("RemoteAddr %s, want %s", got, tc.addr)
			}
			la := c.LocalAddr().(*net.TCPAddr).AddrPort()
			if la.Addr() != netip.MustParseAddr(tc.from) || la.Port() == 0 {
				t.Fatalf("LocalAddr %v, want %s:<port>", la, tc.from)
			}
			select {
			case ra := <-accepted:
				if got := ra.(*net.TCPAddr).AddrPort().Addr().String(); got != tc.from {
					t.Fatalf("peer saw %s, want %s", got, tc.from)
				}
			case <-time.After(2 * time.Second):
				t.Fatal("peer accepted nothing")
			}
		})
	}
}

// transparentReturn routes replies to src, a foreign address in a, back
// into a's sockets, as ztunnel's in-pod rules do for spoofed sources: b
// sends them to gw, and a delivers them locally by policy routing.
func transparentReturn(t *testing.T, a, b, src, gw string) {
	t.Helper()
	ha, hb := nstest.Handle(t, a), nstest.Handle(t, b)
	host := &net.IPNet{IP: net.ParseIP(src).To4(), Mask: net.CIDRMask(32, 32)}
	rule := netlink.NewRule()
	rule.Dst, rule.Table, rule.Priority = host, 100, 100
	if err := ha.RuleAdd(rule); err != nil {
		t.Fatalf("rule: %v", err)
	}
	lo, err := ha.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	all := &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
	if err := ha.RouteAdd(&netlink.Route{Table: 100, Type: unix.RTN_LOCAL, Dst: all, LinkIndex: lo.Attrs().Index, Scope: netlink.SCOPE_HOST}); err != nil {
		t.Fatalf("local route: %v", err)
	}
	eth, err := hb.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	if err := hb.RouteAdd(&netlink.Route{Dst: host, Gw: net.ParseIP(gw), LinkIndex: eth.Attrs().Index}); err != nil {
		t.Fatalf("return route: %v", err)
	}
}

// TestNetnsClosed: after Close, work refused, not run in the wrong place.
func TestNetnsClosed(t *testing.T) {
	n, err := nsnet.OpenNetns(nstest.Netns(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	ran := false
	if err := n.Do(func() error { ran = true; return nil }); err == nil || ran {
		t.Fatalf("Do after Close: err %v, ran %v; want an error and nothing run", err, ran)
	}
	if _, err := n.DialFunc(nsnet.SocketOptions{}, nil)(context.Background(), "tcp", "127.0.0.1:1"); err == nil {
		t.Fatal("dial after Close succeeded")
	}
}
