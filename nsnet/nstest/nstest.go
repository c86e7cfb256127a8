// Package nstest creates throwaway network namespaces and links for tests.
// Everything it creates is removed when the test ends. Names start with
// "ambtest-" so that they never collide with the local runtime's "ambit-"
// namespaces (which `ambit local down` removes).
package nstest

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// RequireRoot fails the test (never skips) when not root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("this test needs root: it creates network namespaces")
	}
}

func randomSuffix() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Netns creates a named network namespace with lo up and returns its path.
func Netns(t testing.TB) string {
	t.Helper()
	RequireRoot(t)
	name := "ambtest-" + randomSuffix()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		ns, err := netns.NewNamed(name)
		if err == nil {
			ns.Close()
		}
		if serr := netns.Set(orig); serr != nil {
			errc <- serr // leave the thread locked: it dies with this goroutine
			return
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	if err := <-errc; err != nil {
		t.Fatalf("creating netns %s: %v", name, err)
	}
	path := filepath.Join("/run/netns", name)
	t.Cleanup(func() { _ = netns.DeleteNamed(name) })
	h := Handle(t, path)
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
	return path
}

// Handle returns a netlink handle bound to the namespace at path.
func Handle(t testing.TB, path string) *netlink.Handle {
	t.Helper()
	ns, err := netns.GetFromPath(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}

// Veth joins namespaces a and b with a veth pair named eth0 in both, and
// gives them addresses cidrA and cidrB (e.g. "10.99.0.1/24").
func Veth(t testing.TB, a, cidrA, b, cidrB string) {
	t.Helper()
	ha, hb := Handle(t, a), Handle(t, b)
	nsB, err := netns.GetFromPath(b)
	if err != nil {
		t.Fatal(err)
	}
	defer nsB.Close()
	peer := "p" + randomSuffix()
	if err := ha.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: peer}); err != nil {
		t.Fatalf("veth: %v", err)
	}
	p, err := ha.LinkByName(peer)
	if err != nil {
		t.Fatal(err)
	}
	if err := ha.LinkSetNsFd(p, int(nsB)); err != nil {
		t.Fatal(err)
	}
	setup := func(h *netlink.Handle, name, cidr string) {
		l, err := h.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		if name != "eth0" {
			if err := h.LinkSetName(l, "eth0"); err != nil {
				t.Fatal(err)
			}
		}
		addr, err := netlink.ParseAddr(cidr)
		if err != nil {
			t.Fatal(err)
		}
		if err := h.AddrAdd(l, addr); err != nil {
			t.Fatal(fmt.Errorf("address %s: %w", cidr, err))
		}
		if err := h.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
	setup(ha, "eth0", cidrA)
	setup(hb, peer, cidrB)
}

// LAN joins the given namespaces to one bridge (in a namespace of its own)
// and gives each the matching address, e.g. LAN(t, map[string]string{podA:
// "10.77.0.2/24", podB: "10.77.0.3/24"}).
func LAN(t testing.TB, members map[string]string) {
	t.Helper()
	sw := Netns(t)
	hs := Handle(t, sw)
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}
	if err := hs.LinkAdd(br); err != nil {
		t.Fatalf("bridge: %v", err)
	}
	if err := hs.LinkSetUp(br); err != nil {
		t.Fatal(err)
	}
	for ns, cidr := range members {
		port := "p" + randomSuffix()
		peer := "q" + randomSuffix()
		if err := hs.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: port, MasterIndex: br.Attrs().Index}, PeerName: peer}); err != nil {
			t.Fatalf("veth: %v", err)
		}
		pl, err := hs.LinkByName(port)
		if err != nil {
			t.Fatal(err)
		}
		if err := hs.LinkSetUp(pl); err != nil {
			t.Fatal(err)
		}
		ql, err := hs.LinkByName(peer)
		if err != nil {
			t.Fatal(err)
		}
		target, err := netns.GetFromPath(ns)
		if err != nil {
			t.Fatal(err)
		}
		err = hs.LinkSetNsFd(ql, int(target))
		target.Close()
		if err != nil {
			t.Fatal(err)
		}
		h := Handle(t, ns)
		l, err := h.LinkByName(peer)
		if err != nil {
			t.Fatal(err)
		}
		if err := h.LinkSetName(l, "eth0"); err != nil {
			t.Fatal(err)
		}
		addr, err := netlink.ParseAddr(cidr)
		if err != nil {
			t.Fatal(err)
		}
		if err := h.AddrAdd(l, addr); err != nil {
			t.Fatal(err)
		}
		if err := h.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
}

// DefaultRoute gives the namespace a default route out of eth0, as a pod
// has (traffic to addresses nobody answers for is still routable, so that
// capture rules see it).
func DefaultRoute(t testing.TB, ns string) {
	t.Helper()
	h := Handle(t, ns)
	l, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	_, all, _ := net.ParseCIDR("0.0.0.0/0")
	if err := h.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: all, Scope: netlink.SCOPE_LINK}); err != nil {
		t.Fatalf("default route: %v", err)
	}
}
