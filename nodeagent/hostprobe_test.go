package nodeagent

// These tests need root (they fail, never skip, without it): they build a
// node namespace with a pod namespace on its bridge (natest), program the
// pod's capture and the node's probe SNAT, and check where real TCP
// connections from the node land. Everything is removed when the test
// ends.

import (
	"context"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/google/nftables"

	"github.com/ambit-mesh/ambit/nodeagent/internal/natest"
	"github.com/ambit-mesh/ambit/nsnet"
	"github.com/ambit-mesh/ambit/redirect"
)

// listen accepts on addr inside netns and reports each peer address.
func listen(t *testing.T, netns, addr string) <-chan netip.Addr {
	t.Helper()
	l, err := nsnet.Listen(context.Background(), netns, addr, nsnet.SocketOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	peers := make(chan netip.Addr, 16)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			peers <- c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
			c.Close()
		}
	}()
	return peers
}

// landing dials addr from netns and says which listener took the
// connection ("app" or "ztunnel") and from what source.
func landing(t *testing.T, netns, addr string, app, ztunnel <-chan netip.Addr) (string, netip.Addr) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	c, err := nsnet.DialFunc(netns, nsnet.SocketOptions{}, nil)(ctx, "tcp", addr)
	if err != nil {
		t.Fatalf("dial %s from the node: %v", addr, err)
	}
	defer c.Close()
	select {
	case src := <-app:
		return "app", src
	case src := <-ztunnel:
		return "ztunnel", src
	case <-ctx.Done():
		t.Fatalf("nobody accepted the connection to %s", addr)
	}
	return "", netip.Addr{}
}

func TestHostProbeSNAT(t *testing.T) {
	node := natest.NewNode(t, "10.213.0.1/24")
	pod := node.Pod(t, "10.213.0.5")
	app := listen(t, pod.Netns, "0.0.0.0:8080")
	zt := listen(t, pod.Netns, "0.0.0.0:15006")
	ctx := context.Background()
	if err := redirect.Install(ctx, pod.Netns, redirect.Config{}); err != nil {
		t.Fatal(err)
	}
	target := "10.213.0.5:8080"
	if got, src := landing(t, node.Netns, target, app, zt); got != "ztunnel" || src != netip.MustParseAddr("10.213.0.1") {
		t.Fatalf("without the probe SNAT a connection from the node reached %s from %s, want ztunnel's 15006 from the node", got, src)
	}

	probeAddr := netip.MustParseAddr(redirect.DefaultProbeSNATv4)
	other := uint32(4242)
	hp := &HostProbes{Netns: node.Netns, KubeletUID: &other}
	t.Cleanup(func() { _ = hp.Uninstall(context.Background()) })
	if err := hp.Install(ctx); err != nil {
		t.Fatal(err)
	}
	if err := hp.AddPodIPs(ctx, []netip.Addr{pod.IP}); err != nil {
		t.Fatal(err)
	}
	if got, _ := landing(t, node.Netns, target, app, zt); got != "ztunnel" {
		t.Fatalf("a socket of another uid than the kubelet's was SNATed: reached %s", got)
	}

	// Our own uid plays the kubelet; then any local socket.
	self := uint32(os.Getuid())
	for _, uid := range []*uint32{&self, nil} {
		hp.KubeletUID = uid
		if err := hp.Install(ctx); err != nil { // reinstall keeps the set's elements
			t.Fatal(err)
		}
		if got, src := landing(t, node.Netns, target, app, zt); got != "app" || src != probeAddr {
			t.Fatalf("kubelet uid %v: a probe from the node reached %s from %s, want the app from %s", uid, got, src, probeAddr)
		}
	}
	if ips, err := hp.PodIPs(ctx); err != nil || !slices.Equal(ips, []netip.Addr{pod.IP}) {
		t.Fatalf("PodIPs = %v, %v", ips, err)
	}

	// Add is idempotent, IPv6 goes to its own set, Retain drops the rest.
	v6 := netip.MustParseAddr("fd00:213::5")
	if err := hp.AddPodIPs(ctx, []netip.Addr{pod.IP, v6, netip.MustParseAddr("10.213.0.9")}); err != nil {
		t.Fatal(err)
	}
	if err := hp.Retain(ctx, []netip.Addr{pod.IP, v6}); err != nil {
		t.Fatal(err)
	}
	if ips, _ := hp.PodIPs(ctx); !slices.Equal(ips, []netip.Addr{pod.IP, v6}) {
		t.Fatalf("after Retain: %v", ips)
	}
	if err := hp.RemovePodIPs(ctx, []netip.Addr{pod.IP, netip.MustParseAddr("10.213.0.77")}); err != nil {
		t.Fatal(err)
	}
	if got, _ := landing(t, node.Netns, target, app, zt); got != "ztunnel" {
		t.Fatalf("a pod removed from the probe set still gets SNATed probes: reached %s", got)
	}

	if err := hp.Uninstall(ctx); err != nil {
		t.Fatal(err)
	}
	if err := hp.Uninstall(ctx); err != nil {
		t.Fatalf("second Uninstall: %v", err)
	}
	nf, err := os.Open(node.Netns)
	if err != nil {
		t.Fatal(err)
	}
	defer nf.Close()
	c, err := nftables.New(nftables.WithNetNSFd(int(nf.Fd())))
	if err != nil {
		t.Fatal(err)
	}
	tables, err := c.ListTables()
	if err != nil {
		t.Fatal(err)
	}
	if len(tables) != 0 {
		t.Fatalf("tables left in the node after Uninstall: %v", tables[0].Name)
	}
	if ips, err := hp.PodIPs(ctx); err != nil || len(ips) != 0 {
		t.Fatalf("PodIPs without the table = %v, %v", ips, err)
	}
}

func TestScanNetns(t *testing.T) {
	node := natest.NewNode(t, "10.213.1.1/24")
	a := node.Pod(t, "10.213.1.5")
	b := node.Pod(t, "10.213.1.6")
	// A second process in a's namespace: still one namespace.
	natest.StartIn(t, a.Netns, "sleep", "3600")
	found, err := ScanNetns("/proc")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []*natest.Pod{a, b} {
		want, err := NetnsIDOf(p.Netns)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, f := range found {
			if f.ID == want {
				n++
			}
		}
		if n != 1 {
			t.Errorf("netns of %s found %d times, want once", p.IP, n)
		}
		f, err := FindNetns(found, []netip.Addr{p.IP}, "")
		if err != nil {
			t.Fatalf("FindNetns(%s): %v", p.IP, err)
		}
		if f.ID != want {
			t.Errorf("FindNetns(%s) = %s, not the pod's", p.IP, f.Path)
		}
		if got, err := NetnsIDOf(f.Path); err != nil || got != want {
			t.Errorf("path %s of the found netns: %v, %v", f.Path, got, err)
		}
	}
	// The node's own namespace has no process: not found, like a sandbox
	// whose CNI ADD has not finished.
	if _, err := FindNetns(found, []netip.Addr{netip.MustParseAddr("10.213.1.1")}, ""); err == nil {
		t.Error("found a namespace without a process in it")
	}
	if _, err := FindNetns(found, []netip.Addr{netip.MustParseAddr("10.213.1.99")}, ""); err == nil {
		t.Error("found a namespace for an unknown IP")
	}
	// Two namespaces claiming one IP: neither is taken.
	dup := []FoundNetns{{Path: "x", IPs: []netip.Addr{a.IP}}, {Path: "y", IPs: []netip.Addr{a.IP}}}
	if _, err := FindNetns(dup, []netip.Addr{a.IP}, ""); err == nil {
		t.Error("an ambiguous IP picked a namespace")
	}
	if _, err := ScanNetns(filepath.Join(t.TempDir(), "none")); err == nil {
		t.Error("a missing proc dir is no error")
	}
}

func TestKubeletUID(t *testing.T) {
	proc := t.TempDir()
	write := func(pid, comm, cmdline, uid string) {
		d := filepath.Join(proc, pid)
		os.MkdirAll(d, 0o755)
		os.WriteFile(filepath.Join(d, "comm"), []byte(comm+"\n"), 0o644)
		os.WriteFile(filepath.Join(d, "cmdline"), []byte(cmdline), 0o644)
		os.WriteFile(filepath.Join(d, "status"), []byte("Name:\t"+comm+"\nUid:\t"+uid+"\t"+uid+"\t0\t0\n"), 0o644)
	}
	if _, err := KubeletUID(proc); err == nil {
		t.Error("found a kubelet in an empty /proc")
	}
	write("10", "kubelet", "/usr/local/bin/notit\x00--foo", "5") // comm matches, cmdline does not
	write("11", "k3s", "k3s\x00agent", "7")
	if uid, err := KubeletUID(proc); err != nil || uid != 7 {
		t.Errorf("k3s: %d, %v", uid, err)
	}
	write("12", "kubelet", "/usr/bin/kubelet\x00--config=/var/lib/kubelet/config.yaml", "1001")
	if uid, err := KubeletUID(proc); err != nil || uid != 1001 {
		t.Errorf("kubelet: %d, %v (a real kubelet is preferred to k3s)", uid, err)
	}
}

// TestFindNetnsByPod: a namespace whose processes' cgroups name a pod is
// only that pod's, whatever IP another pod's stale status claims.
func TestFindNetnsByPod(t *testing.T) {
	ip := netip.MustParseAddr("10.213.9.5")
	const a, b = "11111111-2222-3333-4444-555555555555", "66666666-7777-8888-9999-000000000000"
	found := []FoundNetns{{Path: "/proc/1/ns/net", IPs: []netip.Addr{ip}, PodUIDs: []string{b}}}
	if _, err := FindNetns(found, []netip.Addr{ip}, a); err == nil {
		t.Error("pod a got pod b's namespace by IP")
	}
	if f, err := FindNetns(found, []netip.Addr{ip}, b); err != nil || f.Path != "/proc/1/ns/net" {
		t.Errorf("pod b: %v, %v", f, err)
	}
	found[0].PodUIDs = nil // not a pod's cgroup (a test, another runtime): by IP
	if _, err := FindNetns(found, []netip.Addr{ip}, a); err != nil {
		t.Errorf("by IP: %v", err)
	}
	found[0].PodUIDs = []string{a, b}
	if _, err := FindNetns(found, []netip.Addr{ip}, a); err == nil {
		t.Error("a namespace of two pods was taken")
	}
	if _, err := FindNetns(found, nil, a); err == nil {
		t.Error("a pod without IPs found a namespace")
	}
}

func TestCgroupPodUID(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct{ name, data, want string }{
		{"cgroupfs v1", "12:memory:/kubepods/besteffort/pod0b5d7a6e-1c2d-4e5f-8a9b-0c1d2e3f4a5b/4f1e2d3c\n1:name=systemd:/kubepods/besteffort/pod0b5d7a6e-1c2d-4e5f-8a9b-0c1d2e3f4a5b/4f1e2d3c\n",
			"0b5d7a6e-1c2d-4e5f-8a9b-0c1d2e3f4a5b"},
		{"systemd v2", "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0b5d7a6e_1c2d_4e5f_8a9b_0c1d2e3f4a5b.slice/cri-containerd-abc.scope\n",
			"0b5d7a6e-1c2d-4e5f-8a9b-0c1d2e3f4a5b"},
		{"from another cgroup namespace", "0::/../../kubepods/pod0b5d7a6e-1c2d-4e5f-8a9b-0c1d2e3f4a5b/abc\n", "0b5d7a6e-1c2d-4e5f-8a9b-0c1d2e3f4a5b"},
		{"not a pod", "0::/user.slice/user-0.slice/session-1.scope\n", ""},
		{"garbage", "kubepods pod-not-a-uid", ""},
	} {
		p := filepath.Join(dir, tc.name)
		os.WriteFile(p, []byte(tc.data), 0o644)
		if got := cgroupPodUID(p); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
	if got := cgroupPodUID(filepath.Join(dir, "missing")); got != "" {
		t.Errorf("missing file: %q", got)
	}
}
