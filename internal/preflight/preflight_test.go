package preflight

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"strings"
	"testing"
	"testing/fstest"
)

func gz(s string) []byte {
	var b bytes.Buffer
	w := gzip.NewWriter(&b)
	w.Write([]byte(s))
	w.Close()
	return b.Bytes()
}

const fullConfig = `CONFIG_NET_NS=y
CONFIG_NF_TABLES=y
CONFIG_NF_TABLES_INET=y
CONFIG_NFT_NAT=m
CONFIG_NFT_REDIR=y
CONFIG_NFT_CT=y
CONFIG_IP_MULTIPLE_TABLES=y
CONFIG_NFT_TPROXY=m
`

// A /proc/net/tcp with 127.0.0.1:15000 and 0.0.0.0:15001 listening and an
// established connection on 15006.
const procNetTCP = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:3A98 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 00000000:3A99 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 100 0 0 10 0
   2: 0100007F:3A9E 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0000000000000000 20 4 30 10 -1
`

// tcp6: [::]:15021 listening.
const procNetTCP6 = `  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:3AAD 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4 1 0000000000000000 100 0 0 10 0
`

func statusOf(rs []Result, check string) (Result, bool) {
	for _, r := range rs {
		if r.Check == check {
			return r, true
		}
	}
	return Result{}, false
}

func TestKernelVersion(t *testing.T) {
	for _, tc := range []struct {
		release string
		err     error
		want    Status
	}{
		{"6.18.44-fc-v1045", nil, Pass},
		{"5.2.0", nil, Pass},
		{"5.10.0-28-amd64", nil, Pass},
		{"5.1.21", nil, Fail},
		{"4.19.0", nil, Fail},
		{"garbage", nil, Warn},
		{"", errors.New("uname failed"), Warn},
	} {
		if got := kernelVersion(tc.release, tc.err); got.Status != tc.want {
			t.Errorf("%q: %s (%s), want %s", tc.release, got.Status, got.Detail, tc.want)
		}
	}
}

func TestKernelFeatures(t *testing.T) {
	const rel = "6.1.0"
	for _, tc := range []struct {
		name string
		fs   fstest.MapFS
		want map[string]Status // check -> status
	}{
		{
			name: "config.gz: y and m pass, TPROXY optional",
			fs:   fstest.MapFS{"proc/config.gz": {Data: gz(fullConfig)}},
			want: map[string]Status{"kernel: nftables": Pass, "kernel: nftables NAT": Pass, "kernel: REDIRECT": Pass, "kernel: TPROXY": Pass, "kernel: policy routing": Pass},
		},
		{
			name: "boot config without REDIRECT or TPROXY",
			fs:   fstest.MapFS{"boot/config-" + rel: {Data: []byte(strings.ReplaceAll(strings.ReplaceAll(fullConfig, "CONFIG_NFT_REDIR=y\n", ""), "CONFIG_NFT_TPROXY=m\n", "# CONFIG_NFT_TPROXY is not set\n"))}},
			want: map[string]Status{"kernel: nftables": Pass, "kernel: REDIRECT": Fail, "kernel: TPROXY": Warn},
		},
		{
			name: "a loaded module beats a config that says nothing",
			fs:   fstest.MapFS{"proc/config.gz": {Data: gz("CONFIG_NF_TABLES=y\n")}, "sys/module/nft_redir": {Mode: 0o555 | 1<<31}},
			want: map[string]Status{"kernel: REDIRECT": Pass, "kernel: conntrack marks": Fail},
		},
		{
			name: "modules.builtin and modules.dep",
			fs: fstest.MapFS{
				"lib/modules/" + rel + "/modules.builtin": {Data: []byte("kernel/net/netfilter/nf_tables.ko\nkernel/net/netfilter/nft_ct.ko\n")},
				"lib/modules/" + rel + "/modules.dep":     {Data: []byte("kernel/net/netfilter/nft_redir.ko.xz: kernel/net/netfilter/nf_tables.ko\nkernel/net/netfilter/nft_nat.ko:\n")},
			},
			want: map[string]Status{"kernel: nftables": Pass, "kernel: conntrack marks": Pass, "kernel: REDIRECT": Pass, "kernel: nftables NAT": Pass, "kernel: TPROXY": Warn,
				// no config, no module: cannot tell
				"kernel: policy routing": Warn},
		},
		{
			name: "nothing to read: warnings, not failures",
			fs:   fstest.MapFS{},
			want: map[string]Status{"kernel: nftables": Warn, "kernel: REDIRECT": Warn, "kernel: policy routing": Warn},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			kc := loadKernelConfig(tc.fs, rel)
			var rs []Result
			for _, f := range kernelFeatures {
				rs = append(rs, kc.check(f))
			}
			for check, want := range tc.want {
				r, ok := statusOf(rs, check)
				if !ok {
					t.Fatalf("no %s", check)
				}
				if r.Status != want {
					t.Errorf("%s: %s (%s), want %s", check, r.Status, r.Detail, want)
				}
				if r.Status == Fail && r.Fix == "" {
					t.Errorf("%s fails without saying what to do", check)
				}
			}
		})
	}
}

func TestCNIConfig(t *testing.T) {
	for _, tc := range []struct {
		name   string
		fs     fstest.MapFS
		want   Status
		detail string
	}{
		{"no directory", fstest.MapFS{}, Fail, "does not exist"},
		{"empty", fstest.MapFS{"etc/cni/net.d/README": {Data: []byte("x")}}, Fail, "no *.conf"},
		{"first by name", fstest.MapFS{
			"etc/cni/net.d/20-other.conf":       {Data: []byte("{}")},
			"etc/cni/net.d/10-flannel.conflist": {Data: []byte("{}")},
		}, Pass, "10-flannel.conflist"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := cniConfigCheck(tc.fs, "/etc/cni/net.d")
			if r.Status != tc.want || !strings.Contains(r.Detail, tc.detail) {
				t.Errorf("%s %q, want %s containing %q", r.Status, r.Detail, tc.want, tc.detail)
			}
		})
	}
}

func TestPorts(t *testing.T) {
	fs := fstest.MapFS{"proc/net/tcp": {Data: []byte(procNetTCP)}, "proc/net/tcp6": {Data: []byte(procNetTCP6)}}
	rs := portChecks(fs, []int{15000, 15001, 15006, 15008, 15021})
	want := map[string]Status{"port 15000": Fail, "port 15001": Fail, "port 15006": Pass, "port 15008": Pass, "port 15021": Fail}
	for check, st := range want {
		r, _ := statusOf(rs, check)
		if r.Status != st {
			t.Errorf("%s: %s (%s), want %s", check, r.Status, r.Detail, st)
		}
	}
	if r, _ := statusOf(rs, "port 15000"); !strings.Contains(r.Detail, "127.0.0.1:15000") {
		t.Errorf("detail %q", r.Detail)
	}
	if r, _ := statusOf(rs, "port 15021"); !strings.Contains(r.Detail, "[::]:15021") {
		t.Errorf("detail %q", r.Detail)
	}
	if rs := portChecks(fstest.MapFS{}, []int{15001}); rs[0].Status != Warn {
		t.Errorf("unreadable /proc/net/tcp: %s", rs[0].Status)
	}
}

func TestCheckNode(t *testing.T) {
	node := Node{
		Root: fstest.MapFS{
			"proc/config.gz":              {Data: gz(fullConfig)},
			"proc/self/ns/net":            {Data: nil},
			"proc/net/tcp":                {Data: []byte(procNetTCP)},
			"etc/cni/net.d/10-x.conflist": {Data: []byte("{}")},
		},
		KernelRelease: func() (string, error) { return "6.1.0", nil },
		ReusePort:     func() error { return nil },
	}
	rs := CheckNode(node, DefaultOptions())
	if r, _ := statusOf(rs, "port 15001"); r.Status != Fail {
		t.Errorf("port 15001: %s", r.Status)
	}
	for _, r := range rs {
		if r.Check != "port 15001" && r.Status != Pass {
			t.Errorf("%s: %s (%s)", r.Check, r.Status, r.Detail)
		}
	}
	node.ReusePort = func() error { return errors.New("ENOPROTOOPT") }
	node.Root.(fstest.MapFS)["proc/net/tcp"] = &fstest.MapFile{Data: []byte(strings.SplitN(procNetTCP, "\n", 2)[0] + "\n")}
	rs = CheckNode(node, DefaultOptions())
	if r, _ := statusOf(rs, "SO_REUSEPORT"); r.Status != Fail || r.Fix == "" {
		t.Errorf("SO_REUSEPORT: %+v", r)
	}
	var out bytes.Buffer
	if err := Print(&out, rs); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"CHECK", "SO_REUSEPORT", "FAIL", "What to do:", "1 of "} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, out.String())
		}
	}
	if !Failed(rs) {
		t.Error("Failed is false")
	}
}

type fakeCluster struct {
	version     string
	versionErr  error
	found, ours bool
	istiodErr   error
	denied      map[string]bool // resource
}

func (f fakeCluster) ServerVersion(context.Context) (string, error) { return f.version, f.versionErr }
func (f fakeCluster) Istiod(context.Context) (bool, bool, error)    { return f.found, f.ours, f.istiodErr }
func (f fakeCluster) CanI(_ context.Context, _, _, resource string) (bool, error) {
	return !f.denied[resource], nil
}

func TestCheckCluster(t *testing.T) {
	for _, tc := range []struct {
		name string
		c    fakeCluster
		want map[string]Status
		n    int // results
	}{
		{"fine", fakeCluster{version: "v1.36.3"}, map[string]Status{"API server": Pass, "Kubernetes version": Pass, "no other istiod": Pass, "permission: create customresourcedefinitions": Pass}, 6},
		{"unreachable stops there", fakeCluster{versionErr: errors.New("connection refused")}, map[string]Status{"API server": Fail}, 1},
		{"too old", fakeCluster{version: "v1.29.4"}, map[string]Status{"Kubernetes version": Fail}, 6},
		{"Istio installed", fakeCluster{version: "v1.31.0", found: true}, map[string]Status{"no other istiod": Fail}, 6},
		{"ours (upgrade)", fakeCluster{version: "v1.31.0", found: true, ours: true}, map[string]Status{"no other istiod": Pass}, 6},
		{"not an admin", fakeCluster{version: "v1.31.0", denied: map[string]bool{"clusterroles": true}}, map[string]Status{"permission: create clusterroles": Fail, "permission: create daemonsets": Pass}, 6},
		{"odd version", fakeCluster{version: "weird"}, map[string]Status{"Kubernetes version": Warn}, 6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rs := CheckCluster(context.Background(), tc.c, "https://127.0.0.1:6443", DefaultOptions())
			if len(rs) != tc.n {
				t.Errorf("%d results, want %d: %+v", len(rs), tc.n, rs)
			}
			for check, want := range tc.want {
				r, ok := statusOf(rs, check)
				if !ok || r.Status != want {
					t.Errorf("%s: %+v, want %s", check, r, want)
				}
				if r.Status == Fail && r.Fix == "" {
					t.Errorf("%s fails without saying what to do", check)
				}
			}
		})
	}
}

func TestLocalNodeProbes(t *testing.T) {
	n := LocalNode()
	if rel, err := n.KernelRelease(); err != nil || rel == "" {
		t.Errorf("uname: %q %v", rel, err)
	}
	if err := n.ReusePort(); err != nil {
		t.Errorf("SO_REUSEPORT: %v", err)
	}
}
