// Package clustertest runs a real single-node Kubernetes for the cluster
// tier tests (test/cluster): etcd and kube-apiserver (internal/kubetest),
// kube-controller-manager and kube-scheduler on loopback, and a node made
// of a real kubelet, Debian's containerd and runc, and the reference CNI
// bridge and host-local plugins, all built from the Go module proxy
// (hack/k8s-testbins.sh) or installed from Debian (containerd, runc).
//
// Everything the node needs lives in test-owned places: containerd's root,
// state and socket under /var/lib/ambit-clustertest and
// /run/ambit-clustertest, the kubelet's root directory and pod logs there
// too, and a CNI configuration directory of its own (the node agent is
// pointed at it). Pods sit on bridge ambitct0 (10.88.0.0/24, gateway
// 10.88.0.1), with routes through the gateway to the service range
// (10.96.0.0/16) and to 169.254.7.127 (the node agent's SNAT address for
// the kubelet's probes, which a default route would cover), and no default
// route and no NAT: they reach nothing but each other and this machine.
//
// There is no kube-proxy and no CoreDNS. The harness stands in for the two
// only where the mesh's own components need them: a DNS server on
// 10.88.0.1:53 (the kubelet's clusterDNS) answers <svc>.<ns>.svc.cluster.local
// with the Service's ClusterIP and nothing else (it never forwards), and
// the ClusterIPs of default/kubernetes and of the Services in istio-system
// are DNATed (nftables table ip ambit-clustertest, host prerouting and
// output) to a TCP forwarder in the test process on 10.88.0.1, which
// connects to the API server on loopback or to the Service's ready
// endpoint. Every other ClusterIP routes nowhere (the same table rejects
// it, and anything the pods send that would leave the bridge): from an
// enrolled pod only ztunnel makes it work, which is what the tests
// assert.
//
// Teardown always runs (t.Cleanup), also when the test fails: the kubelet,
// the pod containers, their shims and containerd stopped by their own
// PIDs, mounts under the state directories and the pods' network
// namespaces unmounted, the kubepods cgroups removed, the bridge deleted,
// net.ipv4.ip_forward restored, the nftables tables and host directories
// created meanwhile removed, and the state directories deleted. It then
// compares the host with the snapshot taken before Start and fails the
// test on any difference.
package clustertest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/ambit-mesh/ambit/internal/kubetest"
)

// The node's fixed names and addresses.
const (
	NodeName    = "localhost"
	Bridge      = "ambitct0"
	PodCIDR     = "10.88.0.0/24"
	Gateway     = "10.88.0.1"
	ServiceCIDR = "10.96.0.0/16" // kubetest's --service-cluster-ip-range
	PauseImage  = "registry.k8s.io/pause:3.10.1"
	// ProbeSNATAddr is where the node agent SNATs the kubelet's probes of
	// enrolled pods to (upstream's 169.254.7.127): pods route it to the
	// host, as a default route would.
	ProbeSNATAddr = "169.254.7.127"
	// NATTable is the host nftables table (family ip) of the service
	// stand-in.
	NATTable = "ambit-clustertest"

	StateRoot = "/var/lib/ambit-clustertest"
	RunRoot   = "/run/ambit-clustertest"
)

// Host directories other software creates that teardown removes when they
// were not there before (the node agent's and ztunnel's hostPath volumes,
// containerd's shim socket directory).
var hostDirs = []string{"/var/run/ztunnel", "/var/run/ambit", "/run/containerd/s", "/run/containerd"}

// nft tables teardown deletes when they were not there before: the
// stand-in's and the node agent's host probe table.
var ownedTables = []string{"ip " + NATTable, "inet istio-ambient-nat"}

// Options tune Start.
type Options struct {
	// AmbitBinDir holds imgbuild and the CNI plugins bridge, host-local
	// and loopback (make build / make images put them in bin/). Default
	// $AMBIT_BIN_DIR, else the repository's bin/.
	AmbitBinDir string
	// Images are docker-archive tarballs imported into containerd's k8s.io
	// namespace.
	Images []string
	// LogDir keeps every component's log (default $AMBIT_CLUSTER_LOG_DIR,
	// else a test temporary directory).
	LogDir string
}

// Cluster is a running single-node cluster.
type Cluster struct {
	API        *kubetest.Server
	Client     kubernetes.Interface
	Kubeconfig string
	// K8sBinDir holds etcd, kube-apiserver, ..., kubelet and kubectl.
	K8sBinDir string
	// CNIConfDir and CNIBinDir are the node's (containerd's) CNI
	// directories, to hand to the node agent.
	CNIConfDir, CNIBinDir string
	// ContainerdSock is containerd's socket (ctr --address).
	ContainerdSock string
	LogDir         string

	t      testing.TB
	before HostState
	// netnsMounted: Start made /run/netns a shared mount (as iproute2's
	// ip netns add does); teardown undoes it.
	netnsMounted bool
	// varMounted: Start bind-mounted /var onto itself, shared.
	varMounted bool
	// netnsLeft: teardown left /run/netns mounted, for others' namespaces.
	netnsLeft bool
	procs     map[string]*exec.Cmd
	svc       *serviceStandIn
	dns       *dnsServer
	// containerdCfg and kubeletCA, to start them again (RebootNode).
	containerdCfg, kubeletCA string
}

// HostState is what teardown must leave as it found.
type HostState struct {
	IPForward string
	Links     []string
	NFTables  []string
	Netns     []string
	Mounts    []string
	Cgroups   []string
	Dirs      map[string]bool
}

// Snapshot reads the host state.
func Snapshot() HostState {
	var s HostState
	b, _ := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
	s.IPForward = strings.TrimSpace(string(b))
	if ifs, err := net.Interfaces(); err == nil {
		for _, i := range ifs {
			s.Links = append(s.Links, i.Name)
		}
	}
	s.NFTables = nftTables()
	if es, err := os.ReadDir("/run/netns"); err == nil {
		for _, e := range es {
			s.Netns = append(s.Netns, e.Name())
		}
	}
	s.Mounts = mountPoints()
	ctrls, _ := os.ReadDir("/sys/fs/cgroup")
	for _, c := range ctrls {
		sub, _ := os.ReadDir(filepath.Join("/sys/fs/cgroup", c.Name()))
		for _, d := range sub {
			if d.IsDir() {
				s.Cgroups = append(s.Cgroups, c.Name()+"/"+d.Name())
			}
		}
	}
	s.Dirs = map[string]bool{}
	for _, d := range append(slices.Clone(hostDirs), StateRoot, RunRoot) {
		_, err := os.Stat(d)
		s.Dirs[d] = err == nil
	}
	sort.Strings(s.Links)
	sort.Strings(s.NFTables)
	sort.Strings(s.Netns)
	sort.Strings(s.Cgroups)
	return s
}

// Diff lists what differs between two snapshots.
func (s HostState) Diff(after HostState) []string {
	var d []string
	if s.IPForward != after.IPForward {
		d = append(d, fmt.Sprintf("net.ipv4.ip_forward %s, was %s", after.IPForward, s.IPForward))
	}
	list := func(what string, a, b []string) {
		for _, x := range b {
			if !slices.Contains(a, x) {
				d = append(d, what+" left behind: "+x)
			}
		}
		for _, x := range a {
			if !slices.Contains(b, x) {
				d = append(d, what+" gone: "+x)
			}
		}
	}
	list("link", s.Links, after.Links)
	list("nftables table", s.NFTables, after.NFTables)
	list("/run/netns entry", s.Netns, after.Netns)
	list("mount", s.Mounts, after.Mounts)
	list("cgroup", s.Cgroups, after.Cgroups)
	for dir, was := range s.Dirs {
		if after.Dirs[dir] != was {
			d = append(d, fmt.Sprintf("directory %s: exists=%v, was %v", dir, after.Dirs[dir], was))
		}
	}
	sort.Strings(d)
	return d
}

func nftTables() []string {
	out, err := exec.Command("nft", "list", "tables").Output()
	if err != nil {
		return nil
	}
	var ts []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if t, ok := strings.CutPrefix(strings.TrimSpace(l), "table "); ok {
			ts = append(ts, t)
		}
	}
	return ts
}

func mountPoints() []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var ms []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) > 4 {
			ms = append(ms, fs[4])
		}
	}
	sort.Strings(ms)
	return ms
}

// RepoRoot is the repository's root directory.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// K8sBinDir returns the directory of the Kubernetes binaries the node
// needs, building the missing ones with hack/k8s-testbins.sh.
func K8sBinDir(t testing.TB) string {
	t.Helper()
	comps := "kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl"
	if d := os.Getenv("AMBIT_K8S_BIN_DIR"); d != "" {
		ok := true
		for _, c := range append(strings.Fields(comps), "etcd") {
			if _, err := os.Stat(filepath.Join(d, c)); err != nil {
				ok = false
			}
		}
		if ok {
			return d
		}
	}
	cmd := exec.Command("bash", filepath.Join(RepoRoot(), "hack", "k8s-testbins.sh"))
	cmd.Env = append(os.Environ(), "COMPONENTS="+comps)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("clustertest: hack/k8s-testbins.sh: %v\n%s", err, stderr.String())
	}
	return strings.TrimSpace(string(out))
}

// Start brings the control plane and the node up and registers their
// teardown. It fails the test if anything does not come up.
func Start(t *testing.T, o Options) *Cluster {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("clustertest: the cluster tier needs root (it runs containerd, the kubelet and pods)")
	}
	for _, b := range []string{"containerd", "runc", "ctr", "nft", "ip", "nsenter"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Fatalf("clustertest: %s not found (apt-get install -y containerd runc nftables iproute2 util-linux): %v", b, err)
		}
	}
	if _, err := os.Stat(StateRoot); err == nil {
		t.Fatalf("clustertest: %s exists: another cluster test runs, or one was killed before its teardown (remove it by hand after checking)", StateRoot)
	}
	if _, err := net.InterfaceByName(Bridge); err == nil {
		t.Fatalf("clustertest: link %s exists: another cluster test runs, or one was killed before its teardown", Bridge)
	}
	if o.AmbitBinDir == "" {
		o.AmbitBinDir = os.Getenv("AMBIT_BIN_DIR")
	}
	if o.AmbitBinDir == "" {
		o.AmbitBinDir = filepath.Join(RepoRoot(), "bin")
	}
	for _, b := range []string{"imgbuild", "bridge", "host-local", "loopback"} {
		if _, err := os.Stat(filepath.Join(o.AmbitBinDir, b)); err != nil {
			t.Fatalf("clustertest: %v (make images builds imgbuild, make build the CNI plugins)", err)
		}
	}
	if o.LogDir == "" {
		o.LogDir = os.Getenv("AMBIT_CLUSTER_LOG_DIR")
	}
	if o.LogDir == "" {
		o.LogDir = t.TempDir()
	}
	if err := os.MkdirAll(o.LogDir, 0o755); err != nil {
		t.Fatal(err)
	}
	bins := K8sBinDir(t)
	t.Setenv("AMBIT_K8S_BIN_DIR", bins) // kubetest.BinDir

	c := &Cluster{
		t: t, K8sBinDir: bins, LogDir: o.LogDir, procs: map[string]*exec.Cmd{},
		CNIConfDir:     filepath.Join(StateRoot, "cni", "net.d"),
		CNIBinDir:      filepath.Join(StateRoot, "cni", "bin"),
		ContainerdSock: filepath.Join(RunRoot, "containerd.sock"),
	}
	c.before = Snapshot()
	t.Logf("clustertest: logs in %s", c.LogDir)
	t0 := time.Now()

	// The control plane first: kubetest registers its own cleanup, which
	// runs after the node's (cleanups run last-registered first).
	kubeletCA, kubeletClient, err := newKubeletClientPKI(o.LogDir)
	if err != nil {
		t.Fatal(err)
	}
	c.API = kubetest.Start(t, kubetest.Options{ExtraArgs: []string{
		"--kubelet-preferred-address-types=Hostname",
		"--kubelet-client-certificate=" + kubeletClient.cert, "--kubelet-client-key=" + kubeletClient.key,
	}})
	c.Client = c.API.Client
	c.Kubeconfig = c.API.Kubeconfig(t)
	t.Cleanup(c.teardown)
	t.Logf("clustertest: apiserver ready after %s", time.Since(t0).Round(time.Millisecond))

	c.start("kube-controller-manager", filepath.Join(bins, "kube-controller-manager"),
		"--kubeconfig="+c.Kubeconfig, "--bind-address=127.0.0.1", "--secure-port="+freePort(t),
		"--leader-elect=false", "--use-service-account-credentials=false",
		"--service-account-private-key-file="+filepath.Join(c.API.Dir, "sa.key"),
		"--root-ca-file="+filepath.Join(c.API.Dir, "ca.crt"))
	c.start("kube-scheduler", filepath.Join(bins, "kube-scheduler"),
		"--kubeconfig="+c.Kubeconfig, "--bind-address=127.0.0.1", "--secure-port="+freePort(t), "--leader-elect=false")

	// The bridge exists before the first pod, with the gateway address the
	// DNS server and the service forwarder listen on.
	for _, args := range [][]string{
		{"link", "add", Bridge, "type", "bridge"},
		{"addr", "add", Gateway + "/24", "dev", Bridge},
		{"link", "set", Bridge, "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("clustertest: ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	if c.dns, err = startDNS(Gateway + ":53"); err != nil {
		t.Fatalf("clustertest: DNS stand-in: %v", err)
	}
	apiAddr := strings.TrimPrefix(c.API.URL, "https://")
	if c.svc, err = startServiceStandIn(c.Client, apiAddr, Gateway, filepath.Join(o.LogDir, "services.log"), c.dns); err != nil {
		t.Fatalf("clustertest: service stand-in: %v", err)
	}

	c.shareNetnsDir(t)
	c.startContainerd(t, o)
	c.importImages(t, o)
	c.kubeletCA = kubeletCA
	c.startKubelet(t, kubeletCA)
	t.Logf("clustertest: node %s Ready after %s", NodeName, time.Since(t0).Round(time.Millisecond))
	return c
}

// RebootNode stands in for a node that loses power and boots again. At
// once, with SIGKILL: the kubelet, every process in the pods' cgroups,
// the shims and containerd. Then what a boot does not find again: the
// pods' network namespaces (their mounts in /run/netns go, and with the
// last process each namespace), every mount under the kubelet's and
// containerd's directories (tmpfs volumes, root filesystems), containerd's
// state under RunRoot, the files in /var/run/ztunnel and /var/run/ambit
// (tmpfs /run), the kubepods cgroups, and the host nftables tables the
// product made (kernel state: the node agent's probe table). What is on
// disk stays, as after a real boot: the CNI configuration (the node
// agent's plugin entry in it included), the CNI binaries, containerd's
// images and metadata, the kubelet's root directory. Then containerd and
// the kubelet start again, and the kubelet brings back the node's pods as
// after a boot: new sandboxes, the CNI plugins run for each, containers
// restarted. atBoot, if not nil, runs before containerd starts (what a
// boot script would do). It returns once the node is Ready again (its pods
// may not be).
func (c *Cluster) RebootNode(t *testing.T, atBoot func()) {
	t.Helper()
	kill := func(name string) {
		if p := c.procs[name]; p != nil {
			delete(c.procs, name)
			_ = p.Process.Kill()
			_ = p.Wait()
		}
	}
	kill("kubelet")
	for range 20 {
		pids := podPIDs()
		if len(pids) == 0 {
			break
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, pid := range shimPIDs(c.ContainerdSock) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	kill("containerd")
	if left := podPIDs(); len(left) > 0 {
		t.Fatalf("clustertest: reboot: pod processes survive SIGKILL: %v", left)
	}

	ms := mountPoints()
	sort.Sort(sort.Reverse(sort.StringSlice(ms)))
	for _, m := range ms {
		if strings.HasPrefix(m, StateRoot+"/") || strings.HasPrefix(m, RunRoot+"/") {
			if err := syscall.Unmount(m, syscall.MNT_DETACH); err != nil {
				t.Logf("clustertest: reboot: umount %s: %v", m, err)
			}
		}
	}
	c.removeNetns()
	// A killed pod's namespace can outlive its processes for minutes (TCP
	// sockets orphaned mid-close keep it), and its veth with it; a boot
	// finds neither.
	deleteBridgePorts()
	if err := os.RemoveAll(RunRoot); err != nil {
		t.Fatalf("clustertest: reboot: %v", err)
	}
	if err := os.MkdirAll(RunRoot, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"/var/run/ztunnel", "/var/run/ambit"} {
		es, _ := os.ReadDir(d)
		for _, e := range es {
			_ = os.RemoveAll(filepath.Join(d, e.Name()))
		}
	}
	c.removeCgroups(t)
	for _, tb := range nftTables() {
		if tb != "ip "+NATTable && slices.Contains(ownedTables, tb) && !slices.Contains(c.before.NFTables, tb) {
			f := strings.Fields(tb)
			if out, err := exec.Command("nft", "delete", "table", f[0], f[1]).CombinedOutput(); err != nil {
				t.Fatalf("clustertest: reboot: nft delete table %s: %v: %s", tb, err, out)
			}
		}
	}

	if atBoot != nil {
		atBoot()
	}
	c.runContainerd(t)
	c.startKubelet(t, c.kubeletCA)
}

// deleteBridgePorts deletes the links enslaved to the pods' bridge (the
// host ends of the pods' veths, which takes the pod ends with them).
func deleteBridgePorts() {
	out, _ := exec.Command("ip", "-o", "link", "show", "master", Bridge).Output()
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
		_ = exec.Command("ip", "link", "del", name).Run()
	}
}

// podPIDs lists the processes in the kubelet's pod cgroups (cgroup v2, or
// the pids hierarchy of v1).
func podPIDs() []int {
	var pids []int
	for _, root := range []string{"/sys/fs/cgroup/kubepods", "/sys/fs/cgroup/pids/kubepods", "/sys/fs/cgroup/unified/kubepods"} {
		_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() || d.Name() != "cgroup.procs" {
				return nil
			}
			b, _ := os.ReadFile(p)
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil && !slices.Contains(pids, pid) {
					pids = append(pids, pid)
				}
			}
			return nil
		})
	}
	return pids
}

// removeNetns unmounts and removes the pods' network namespaces the
// runtime bind-mounted in /run/netns.
func (c *Cluster) removeNetns() {
	es, err := os.ReadDir("/run/netns")
	if err != nil {
		return
	}
	for _, e := range es {
		if strings.HasPrefix(e.Name(), "cni-") && !slices.Contains(c.before.Netns, e.Name()) {
			p := filepath.Join("/run/netns", e.Name())
			_ = syscall.Unmount(p, syscall.MNT_DETACH)
			_ = os.Remove(p)
		}
	}
}

// removeCgroups removes the kubelet's cgroups, in every hierarchy.
func (c *Cluster) removeCgroups(t testing.TB) {
	ctrls, _ := os.ReadDir("/sys/fs/cgroup")
	for _, ctl := range ctrls {
		if slices.Contains(c.before.Cgroups, ctl.Name()+"/kubepods") {
			continue
		}
		removeCgroupTree(t, filepath.Join("/sys/fs/cgroup", ctl.Name(), "kubepods"))
	}
}

// shareNetnsDir makes /run/netns a shared mount point, as `ip netns add`
// does: the node agent mounts it with HostToContainer propagation, which
// the runtime refuses on a private mount (this machine's / is private; a
// systemd host's is shared).
func (c *Cluster) shareNetnsDir(t *testing.T) {
	t.Helper()
	if err := os.MkdirAll("/run/netns", 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("", "/run/netns", "none", syscall.MS_SHARED|syscall.MS_REC, ""); err != nil {
		if err := syscall.Mount("/run/netns", "/run/netns", "none", syscall.MS_BIND|syscall.MS_REC, ""); err != nil {
			t.Fatalf("clustertest: bind-mount /run/netns: %v", err)
		}
		c.netnsMounted = true
		if err := syscall.Mount("", "/run/netns", "none", syscall.MS_SHARED|syscall.MS_REC, ""); err != nil {
			t.Fatalf("clustertest: make /run/netns shared: %v", err)
		}
	}
	// containerd 1.6 checks the propagation of the mount holding the
	// hostPath as written, /var/run/netns, without following the /var/run
	// symlink: here that is /, private. A shared bind mount of /var onto
	// itself satisfies it (the bind the container gets resolves to the
	// shared /run/netns above).
	if !sharedOrSlave(mountHolding("/var/run/netns")) {
		if err := syscall.Mount("/var", "/var", "none", syscall.MS_BIND|syscall.MS_REC, ""); err != nil {
			t.Fatalf("clustertest: bind-mount /var: %v", err)
		}
		c.varMounted = true
		if err := syscall.Mount("", "/var", "none", syscall.MS_SHARED, ""); err != nil {
			t.Fatalf("clustertest: make /var shared: %v", err)
		}
	}
}

// mountHolding returns the mountinfo line of the mount whose mount point
// is the longest prefix of path, as written.
func mountHolding(path string) string {
	b, _ := os.ReadFile("/proc/self/mountinfo")
	best, bestLine := "", ""
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 5 {
			continue
		}
		mp := f[4]
		if (path == mp || strings.HasPrefix(path, strings.TrimSuffix(mp, "/")+"/")) && len(mp) >= len(best) {
			best, bestLine = mp, l
		}
	}
	return bestLine
}

func sharedOrSlave(mountinfoLine string) bool {
	f := strings.Fields(mountinfoLine)
	for i := 6; i < len(f) && f[i] != "-"; i++ {
		if strings.HasPrefix(f[i], "shared:") || strings.HasPrefix(f[i], "master:") {
			return true
		}
	}
	return false
}

func freePort(t testing.TB) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
}

func (c *Cluster) start(name, bin string, args ...string) {
	c.t.Helper()
	logf, err := os.Create(filepath.Join(c.LogDir, name+".log"))
	if err != nil {
		c.t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		c.t.Fatalf("clustertest: start %s: %v", name, err)
	}
	c.procs[name] = cmd
}

// stop ends one process it started, by its PID: SIGTERM, then SIGKILL
// after grace.
func (c *Cluster) stop(name string, grace time.Duration) {
	p := c.procs[name]
	if p == nil {
		return
	}
	delete(c.procs, name)
	_ = p.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = p.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(grace):
		_ = p.Process.Kill()
		<-done
	}
}

// Tail returns the last n lines of a component's log (kubelet,
// containerd, kube-controller-manager, kube-scheduler, services).
func (c *Cluster) Tail(name string, n int) string {
	b, _ := os.ReadFile(filepath.Join(c.LogDir, name+".log"))
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func (c *Cluster) startContainerd(t *testing.T, o Options) {
	t.Helper()
	for _, d := range []string{StateRoot, RunRoot, c.CNIConfDir, c.CNIBinDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []string{"bridge", "host-local", "loopback"} {
		b, err := os.ReadFile(filepath.Join(o.AmbitBinDir, p))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(c.CNIBinDir, p), b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	conflist := fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "clustertest",
 "plugins": [{"type": "bridge", "bridge": %q, "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "dataDir": %q, "ranges": [[{"subnet": %q, "gateway": %q}]],
            "routes": [{"dst": %q}, {"dst": %q}]}}]}
`, Bridge, filepath.Join(StateRoot, "cni", "ipam"), PodCIDR, Gateway, ServiceCIDR, ProbeSNATAddr+"/32")
	if err := os.WriteFile(filepath.Join(c.CNIConfDir, "10-clustertest.conflist"), []byte(conflist), 0o644); err != nil {
		t.Fatal(err)
	}
	def, err := exec.Command("containerd", "config", "default").Output()
	if err != nil {
		t.Fatalf("clustertest: containerd config default: %v", err)
	}
	cfg := string(def)
	for _, r := range [][2]string{
		{`root = "/var/lib/containerd"`, `root = "` + filepath.Join(StateRoot, "containerd") + `"`},
		{`state = "/run/containerd"`, `state = "` + filepath.Join(RunRoot, "containerd") + `"`},
		{`address = "/run/containerd/containerd.sock"`, `address = "` + c.ContainerdSock + `"`},
		{`path = "/opt/containerd"`, `path = "` + filepath.Join(StateRoot, "opt") + `"`},
		{`bin_dir = "/opt/cni/bin"`, `bin_dir = "` + c.CNIBinDir + `"`},
		{`conf_dir = "/etc/cni/net.d"`, `conf_dir = "` + c.CNIConfDir + `"`},
		{`restrict_oom_score_adj = false`, `restrict_oom_score_adj = true`},
		{`Root = ""`, `Root = "` + filepath.Join(RunRoot, "runc") + `"`},
	} {
		if !strings.Contains(cfg, r[0]) {
			t.Fatalf("clustertest: containerd's default config has no %s", r[0])
		}
		cfg = strings.ReplaceAll(cfg, r[0], r[1])
	}
	cfg = regexpReplaceLine(cfg, "sandbox_image = ", `    sandbox_image = "`+PauseImage+`"`)
	cfgFile := filepath.Join(StateRoot, "containerd.toml")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	c.containerdCfg = cfgFile
	c.runContainerd(t)
}

// runContainerd starts containerd with its configuration and waits for it
// to answer.
func (c *Cluster) runContainerd(t *testing.T) {
	t.Helper()
	c.start("containerd", "containerd", "--config", c.containerdCfg)
	deadline := time.Now().Add(20 * time.Second)
	for {
		if err := exec.Command("ctr", "--address", c.ContainerdSock, "version").Run(); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("clustertest: containerd not up:\n%s", c.Tail("containerd", 30))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func regexpReplaceLine(s, contains, with string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		if strings.Contains(l, contains) {
			lines[i] = with
		}
	}
	return strings.Join(lines, "\n")
}

// Ctr runs ctr against the node's containerd (namespace k8s.io).
func (c *Cluster) Ctr(args ...string) (string, error) {
	out, err := exec.Command("ctr", append([]string{"--address", c.ContainerdSock, "-n", "k8s.io"}, args...)...).CombinedOutput()
	return string(out), err
}

func (c *Cluster) importImages(t *testing.T, o Options) {
	t.Helper()
	// The pause image: built here, tagged as the kubelet asks.
	dir := filepath.Join(StateRoot, "pause")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	build := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", filepath.Join(dir, "pause"), "./internal/clustertest/pause")
	build.Dir = RepoRoot()
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("clustertest: building pause: %v\n%s", err, out)
	}
	tar := filepath.Join(dir, "pause.tar")
	if out, err := exec.Command(filepath.Join(o.AmbitBinDir, "imgbuild"), "-ref", PauseImage, "-out", tar, filepath.Join(dir, "pause")+"=/pause").CombinedOutput(); err != nil {
		t.Fatalf("clustertest: pause image: %v\n%s", err, out)
	}
	for _, img := range append([]string{tar}, o.Images...) {
		if out, err := c.Ctr("images", "import", img); err != nil {
			t.Fatalf("clustertest: ctr images import %s: %v\n%s", img, err, out)
		}
	}
}

func (c *Cluster) startKubelet(t *testing.T, clientCA string) {
	t.Helper()
	kdir := filepath.Join(StateRoot, "kubelet-conf")
	if err := os.MkdirAll(kdir, 0o755); err != nil {
		t.Fatal(err)
	}
	resolv := filepath.Join(kdir, "resolv.conf")
	if err := os.WriteFile(resolv, []byte("nameserver "+Gateway+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: %s
authentication: {anonymous: {enabled: false}, webhook: {enabled: true}, x509: {clientCAFile: %q}}
authorization: {mode: AlwaysAllow}
containerRuntimeEndpoint: unix://%s
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
hairpinMode: none
imageGCHighThresholdPercent: 100
evictionHard: {}
clusterDNS: [%s]
clusterDomain: cluster.local
resolvConf: %q
podLogsDir: %q
`, freePort(t), clientCA, c.ContainerdSock, Gateway, resolv, filepath.Join(StateRoot, "pod-logs"))
	cfgFile := filepath.Join(kdir, "kubelet.yaml")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	c.start("kubelet", filepath.Join(c.K8sBinDir, "kubelet"), "--config="+cfgFile, "--kubeconfig="+c.Kubeconfig,
		"--hostname-override="+NodeName, "--node-ip="+Gateway, "--root-dir="+filepath.Join(StateRoot, "kubelet"))
	ctx := context.Background()
	deadline := time.Now().Add(60 * time.Second)
	for {
		n, err := c.Client.CoreV1().Nodes().Get(ctx, NodeName, metav1.GetOptions{})
		if err == nil {
			for _, cond := range n.Status.Conditions {
				if cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue {
					return
				}
			}
		}
		if p := c.procs["kubelet"]; p != nil && p.ProcessState != nil {
			t.Fatalf("clustertest: kubelet exited:\n%s", c.Tail("kubelet", 40))
		}
		if time.Now().After(deadline) {
			t.Fatalf("clustertest: node not Ready after 60 s:\n%s", c.Tail("kubelet", 40))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// teardown undoes everything Start did, whatever state it got to.
func (c *Cluster) teardown() {
	t := c.t
	t0 := time.Now()
	if t.Failed() {
		for _, n := range []string{"kubelet", "containerd", "services"} {
			t.Logf("clustertest: %s log tail:\n%s", n, c.Tail(n, 25))
		}
	}
	c.stop("kubelet", 10*time.Second)
	// Pod containers, then their shims (found by our containerd's socket
	// in their command line), then containerd.
	if _, err := os.Stat(c.ContainerdSock); err == nil {
		out, _ := c.Ctr("containers", "ls", "-q")
		ids := strings.Fields(out)
		for _, id := range ids {
			_, _ = c.Ctr("tasks", "kill", "-s", "KILL", id)
		}
		if len(ids) > 0 {
			time.Sleep(300 * time.Millisecond)
		}
		for _, id := range ids {
			_, _ = c.Ctr("tasks", "rm", "-f", id)
			_, _ = c.Ctr("containers", "rm", id)
		}
	}
	for _, pid := range shimPIDs(c.ContainerdSock) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	c.stop("containerd", 10*time.Second)
	c.stop("kube-scheduler", 5*time.Second)
	c.stop("kube-controller-manager", 5*time.Second)
	if c.svc != nil {
		c.svc.close()
	}
	if c.dns != nil {
		c.dns.close()
	}

	// Mounts under the state directories (the kubelet's root directory,
	// volumes, container root filesystems), deepest first, and the pod
	// network namespaces the runtime bind-mounted in /run/netns.
	ms := mountPoints()
	sort.Sort(sort.Reverse(sort.StringSlice(ms)))
	for _, m := range ms {
		if strings.HasPrefix(m, StateRoot+"/") || m == StateRoot || strings.HasPrefix(m, RunRoot+"/") || m == RunRoot {
			if err := syscall.Unmount(m, syscall.MNT_DETACH); err != nil {
				t.Logf("clustertest: umount %s: %v", m, err)
			}
		}
	}
	c.removeNetns()
	if c.netnsMounted {
		// Only when nobody else added a namespace meanwhile: detaching the
		// mount would hide theirs.
		var others []string
		es, _ := os.ReadDir("/run/netns")
		for _, e := range es {
			if !slices.Contains(c.before.Netns, e.Name()) {
				others = append(others, e.Name())
			}
		}
		if len(others) == 0 {
			if err := syscall.Unmount("/run/netns", syscall.MNT_DETACH); err != nil {
				t.Logf("clustertest: umount /run/netns: %v", err)
			}
		} else {
			t.Logf("clustertest: leaving the shared mount on /run/netns (as ip netns add leaves it): other network namespaces appeared there meanwhile: %v", others)
			c.netnsLeft = true
		}
	}
	if c.varMounted {
		if err := syscall.Unmount("/var", syscall.MNT_DETACH); err != nil {
			t.Logf("clustertest: umount /var: %v", err)
		}
	}
	c.removeCgroups(t)
	// nftables tables we (the stand-in) or the product (the node agent's
	// probe SNAT) made, and iptables-nft tables that only the kubelet's
	// KUBE-* chains filled.
	for _, tb := range nftTables() {
		if slices.Contains(c.before.NFTables, tb) {
			continue
		}
		if slices.Contains(ownedTables, tb) || onlyKubeChains(tb) {
			if out, err := exec.Command("nft", "delete", "table", strings.Fields(tb)[0], strings.Fields(tb)[1]).CombinedOutput(); err != nil {
				t.Logf("clustertest: nft delete table %s: %v: %s", tb, err, out)
			}
		}
	}
	deleteBridgePorts()
	_ = exec.Command("ip", "link", "del", Bridge).Run()
	if c.before.IPForward != "" {
		_ = os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte(c.before.IPForward+"\n"), 0o644)
	}
	for _, d := range []string{StateRoot, RunRoot} {
		if err := os.RemoveAll(d); err != nil {
			t.Logf("clustertest: remove %s: %v", d, err)
		}
	}
	for _, d := range hostDirs {
		if !c.before.Dirs[d] {
			_ = os.RemoveAll(d)
		}
	}
	// The kernel removes a dead pod's veth a little after its namespace.
	var diff []string
	for deadline := time.Now().Add(5 * time.Second); ; {
		if diff = c.before.Diff(Snapshot()); len(diff) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	for _, d := range diff {
		if ours(d) && !(c.netnsLeft && d == "mount left behind: /run/netns") {
			t.Errorf("clustertest: teardown: %s", d)
		} else {
			t.Logf("clustertest: host changed meanwhile, not by this test: %s", d)
		}
	}
	t.Logf("clustertest: teardown took %s", time.Since(t0).Round(time.Millisecond))
}

// ours reports whether a difference Diff found is one this harness (or
// what it runs) can have made; others come from whatever else runs on the
// machine (another test's network namespaces, say).
func ours(d string) bool {
	if strings.HasSuffix(d, ": /run/netns") {
		return true
	}
	for _, s := range []string{StateRoot, RunRoot, "cni-", Bridge, "veth", "kubepods", "nftables", "ip_forward", "directory "} {
		if strings.Contains(d, s) {
			return true
		}
	}
	return false
}

func removeCgroupTree(t testing.TB, root string) {
	if _, err := os.Stat(root); err != nil {
		return
	}
	var dirs []string
	_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	sort.Sort(sort.Reverse(sort.StringSlice(dirs)))
	for _, d := range dirs {
		var err error
		for i := 0; i < 20; i++ {
			if err = syscall.Rmdir(d); err == nil || os.IsNotExist(err) {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil && !os.IsNotExist(err) {
			t.Logf("clustertest: rmdir %s: %v", d, err)
		}
	}
}

// onlyKubeChains reports whether an iptables-nft table (ip/ip6 filter,
// nat, mangle) holds nothing but built-in and KUBE-* chains, all of them
// empty of rules but jumps to KUBE-* chains.
func onlyKubeChains(table string) bool {
	f := strings.Fields(table)
	if len(f) != 2 || (f[0] != "ip" && f[0] != "ip6") || !slices.Contains([]string{"filter", "nat", "mangle"}, f[1]) {
		return false
	}
	out, err := exec.Command("nft", "list", "table", f[0], f[1]).Output()
	if err != nil {
		return false
	}
	for _, l := range strings.Split(string(out), "\n") {
		l = strings.TrimSpace(l)
		switch {
		case l == "" || l == "}" || strings.HasPrefix(l, "table ") || strings.HasPrefix(l, "type ") || strings.HasPrefix(l, "policy "):
		case strings.HasPrefix(l, "chain "):
			name := strings.TrimSuffix(strings.TrimPrefix(l, "chain "), " {")
			if !strings.HasPrefix(name, "KUBE-") && strings.ToUpper(name) != name {
				return false
			}
			if !strings.HasPrefix(name, "KUBE-") && !slices.Contains([]string{"INPUT", "OUTPUT", "FORWARD", "PREROUTING", "POSTROUTING"}, name) {
				return false
			}
		case strings.Contains(l, "KUBE-"):
		default:
			return false
		}
	}
	return true
}

// shimPIDs finds the containerd shims our containerd started: their
// command line names its socket.
func shimPIDs(sock string) []int {
	es, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range es {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if len(args) > 0 && strings.HasPrefix(filepath.Base(args[0]), "containerd-shim") && slices.Contains(args, sock) {
			pids = append(pids, pid)
		}
	}
	return pids
}

type certFiles struct{ cert, key string }

// newKubeletClientPKI makes the CA the kubelet trusts for client
// certificates and the certificate the API server presents to it (logs,
// exec, port-forward).
func newKubeletClientPKI(dir string) (caFile string, client certFiles, err error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", client, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "clustertest-kubelet-client-ca"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return "", client, err
	}
	caCert, _ := x509.ParseCertificate(caDER)
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", client, err
	}
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "kube-apiserver-kubelet-client", Organization: []string{"system:masters"}},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, caCert, &k.PublicKey, caKey)
	if err != nil {
		return "", client, err
	}
	kd, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		return "", client, err
	}
	caFile = filepath.Join(dir, "kubelet-client-ca.crt")
	client = certFiles{filepath.Join(dir, "apiserver-kubelet-client.crt"), filepath.Join(dir, "apiserver-kubelet-client.key")}
	for p, data := range map[string][]byte{
		caFile:      pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		client.cert: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		client.key:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kd}),
	} {
		if err := os.WriteFile(p, data, 0o600); err != nil {
			return "", client, err
		}
	}
	return caFile, client, nil
}

// Kubectl runs the built kubectl with the admin kubeconfig.
func (c *Cluster) Kubectl(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(c.K8sBinDir, "kubectl"), append([]string{"--kubeconfig", c.Kubeconfig}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// ContainerPID returns the host PID of a running container
// ("containerd://ID" as in a pod's containerStatuses, or the bare ID).
func (c *Cluster) ContainerPID(containerID string) (int, error) {
	id := strings.TrimPrefix(containerID, "containerd://")
	out, err := c.Ctr("tasks", "ls")
	if err != nil {
		return 0, fmt.Errorf("ctr tasks ls: %v: %s", err, out)
	}
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) >= 3 && f[0] == id && f[2] == "RUNNING" {
			return strconv.Atoi(f[1])
		}
	}
	return 0, fmt.Errorf("no running task %s", id)
}
