// Package preflight checks a node and a cluster before Ambit is installed
// (ambit check, in the spirit of `istioctl x precheck`): the kernel
// features the capture rules and ztunnel need, a CNI network config for
// ambit-cni to chain onto, the mesh's ports free on the node, and an API
// server that is reachable, recent enough, free of another istiod and
// writable by the caller. Every probe is injected, so the checks are
// tested on fixtures.
package preflight

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
)

// Status is a check's outcome.
type Status string

const (
	Pass Status = "pass"
	Warn Status = "warn" // works, or cannot be told, but look
	Fail Status = "fail" // install would not work
)

// Result is one line of the report.
type Result struct {
	Check  string
	Status Status
	Detail string
	// Fix says what to do (failures and warnings).
	Fix string
}

// Node is what the node checks read.
type Node struct {
	// Root is the node's file system ("/" as the root; paths without
	// the leading slash: "proc/net/tcp").
	Root fs.FS
	// KernelRelease is uname -r.
	KernelRelease func() (string, error)
	// ReusePort opens a TCP socket with SO_REUSEPORT.
	ReusePort func() error
}

// Options tune Run.
type Options struct {
	// CNIConfDir is the node's CNI config directory (absolute).
	CNIConfDir string
	// Ports must not be listened on in the node's network namespace.
	Ports []int
	// MinKube is the oldest supported Kubernetes minor version (1.MinKube).
	MinKube int
}

// Ports are the mesh's ports: ztunnel's in-pod listeners (15001 outbound,
// 15006 inbound plaintext, 15008 HBONE), the control plane's (15012
// xDS and CA, 15014 monitoring), ztunnel's metrics and readiness (15020,
// 15021), and the node agent's readiness (8000, on the host's network).
var Ports = []int{8000, 15001, 15006, 15008, 15012, 15014, 15020, 15021}

// MinKubeMinor is the oldest Kubernetes minor version supported (1.30):
// the Gateway API CRDs' validation rules need it.
const MinKubeMinor = 30

// DefaultOptions returns the checks' defaults.
func DefaultOptions() Options {
	return Options{CNIConfDir: "/etc/cni/net.d", Ports: Ports, MinKube: MinKubeMinor}
}

// Failed reports whether any result failed.
func Failed(rs []Result) bool {
	return slices.ContainsFunc(rs, func(r Result) bool { return r.Status == Fail })
}

// Print writes the results as a table, then what to do about each
// failure and warning.
func Print(w io.Writer, rs []Result) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CHECK\tRESULT\tDETAIL")
	for _, r := range rs {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", r.Check, strings.ToUpper(string(r.Status)), r.Detail)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	var todo []string
	for _, r := range rs {
		if r.Status != Pass && r.Fix != "" {
			todo = append(todo, fmt.Sprintf("  %s (%s): %s", r.Check, r.Status, r.Fix))
		}
	}
	if len(todo) > 0 {
		fmt.Fprintln(w, "\nWhat to do:")
		for _, t := range todo {
			fmt.Fprintln(w, t)
		}
	}
	fails := 0
	for _, r := range rs {
		if r.Status == Fail {
			fails++
		}
	}
	if fails > 0 {
		_, err := fmt.Fprintf(w, "\n%d of %d checks failed.\n", fails, len(rs))
		return err
	}
	_, err := fmt.Fprintf(w, "\nAll %d checks passed%s.\n", len(rs), warnSuffix(rs))
	return err
}

func warnSuffix(rs []Result) string {
	n := 0
	for _, r := range rs {
		if r.Status == Warn {
			n++
		}
	}
	if n == 0 {
		return ""
	}
	return fmt.Sprintf(" (%d with warnings)", n)
}

// CheckNode runs the node checks.
func CheckNode(n Node, o Options) []Result {
	var out []Result
	release, relErr := "", errors.New("no probe")
	if n.KernelRelease != nil {
		release, relErr = n.KernelRelease()
	}
	out = append(out, kernelVersion(release, relErr))
	kc := loadKernelConfig(n.Root, release)
	for _, f := range kernelFeatures {
		out = append(out, kc.check(f))
	}
	out = append(out, netnsCheck(n.Root))
	out = append(out, reusePortCheck(n.ReusePort))
	out = append(out, cniConfigCheck(n.Root, o.CNIConfDir))
	out = append(out, portChecks(n.Root, o.Ports)...)
	return out
}

// kernelVersion: nftables NAT chains in the inet family need 5.2.
func kernelVersion(release string, err error) Result {
	r := Result{Check: "kernel version"}
	if err != nil {
		r.Status, r.Detail = Warn, "unknown: "+err.Error()
		return r
	}
	major, minor, ok := parseRelease(release)
	switch {
	case !ok:
		r.Status, r.Detail = Warn, fmt.Sprintf("cannot parse %q", release)
	case major > 5 || major == 5 && minor >= 2:
		r.Status, r.Detail = Pass, release+" (>= 5.2)"
	default:
		r.Status, r.Detail = Fail, release+" (< 5.2)"
		r.Fix = "upgrade the node's kernel to 5.2 or later: the capture rules use NAT chains in an nftables inet table"
	}
	return r
}

func parseRelease(s string) (major, minor int, ok bool) {
	parts := strings.SplitN(s, ".", 3)
	if len(parts) < 2 {
		return 0, 0, false
	}
	major, err1 := strconv.Atoi(parts[0])
	minorStr := parts[1]
	if i := strings.IndexFunc(minorStr, func(r rune) bool { return r < '0' || r > '9' }); i >= 0 {
		minorStr = minorStr[:i]
	}
	minor, err2 := strconv.Atoi(minorStr)
	return major, minor, err1 == nil && err2 == nil
}

// feature is a kernel feature: its config symbol and module (if it can be
// one), whether the mesh needs it, and what uses it.
type feature struct {
	name, config, module string
	required             bool
	why                  string
}

var kernelFeatures = []feature{
	{"nftables", "CONFIG_NF_TABLES", "nf_tables", true, "the capture rules in each pod's network namespace"},
	{"nftables inet family", "CONFIG_NF_TABLES_INET", "", true, "one table for IPv4 and IPv6"},
	{"nftables NAT", "CONFIG_NFT_NAT", "nft_nat", true, "NAT chains for the capture"},
	{"REDIRECT", "CONFIG_NFT_REDIR", "nft_redir", true, "capture to 15001/15006, as Istio 1.24+ (not TPROXY)"},
	{"conntrack marks", "CONFIG_NFT_CT", "nft_ct", true, "ztunnel's return traffic (connmark 0x111)"},
	{"policy routing", "CONFIG_IP_MULTIPLE_TABLES", "", true, "fwmark rule to table 100 in the pod"},
	{"TPROXY", "CONFIG_NFT_TPROXY", "nft_tproxy", false, "not used (REDIRECT instead); informational"},
}

// kernelConfig is what can be learnt of the kernel's build.
type kernelConfig struct {
	config  map[string]string // CONFIG_X -> y|m, from /proc/config.gz or /boot/config-<release>
	source  string
	loaded  map[string]bool // /sys/module
	builtin map[string]bool // modules.builtin
	modules map[string]bool // modules.dep (loadable)
}

func loadKernelConfig(root fs.FS, release string) kernelConfig {
	kc := kernelConfig{loaded: map[string]bool{}, builtin: map[string]bool{}, modules: map[string]bool{}}
	if root == nil {
		return kc
	}
	if data, err := fs.ReadFile(root, "proc/config.gz"); err == nil {
		if zr, err := gzip.NewReader(bytes.NewReader(data)); err == nil {
			if plain, err := io.ReadAll(zr); err == nil {
				kc.config, kc.source = parseConfig(plain), "/proc/config.gz"
			}
		}
	}
	if kc.config == nil && release != "" {
		if data, err := fs.ReadFile(root, "boot/config-"+release); err == nil {
			kc.config, kc.source = parseConfig(data), "/boot/config-"+release
		}
	}
	if ents, err := fs.ReadDir(root, "sys/module"); err == nil {
		for _, e := range ents {
			kc.loaded[e.Name()] = true
		}
	}
	if release != "" {
		for file, set := range map[string]map[string]bool{"modules.builtin": kc.builtin, "modules.dep": kc.modules} {
			data, err := fs.ReadFile(root, "lib/modules/"+release+"/"+file)
			if err != nil {
				continue
			}
			sc := bufio.NewScanner(bytes.NewReader(data))
			for sc.Scan() {
				p, _, _ := strings.Cut(sc.Text(), ":")
				base := path.Base(strings.TrimSpace(p))
				if name, _, ok := strings.Cut(base, ".ko"); ok {
					set[strings.ReplaceAll(name, "-", "_")] = true
				}
			}
		}
	}
	return kc
}

func parseConfig(data []byte) map[string]string {
	m := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		k, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), "=")
		if ok && strings.HasPrefix(k, "CONFIG_") {
			m[k] = v
		}
	}
	return m
}

func (kc kernelConfig) check(f feature) Result {
	r := Result{Check: "kernel: " + f.name}
	missing := func(detail string) Result {
		if f.required {
			r.Status, r.Detail = Fail, detail
			r.Fix = fmt.Sprintf("use a kernel with %s (%s): it is needed for %s", f.config, f.moduleOr(), f.why)
		} else {
			r.Status, r.Detail = Warn, detail+"; "+f.why
		}
		return r
	}
	switch {
	case f.module != "" && kc.loaded[f.module]:
		r.Status, r.Detail = Pass, "module "+f.module+" loaded"
	case kc.config != nil && kc.config[f.config] == "y":
		r.Status, r.Detail = Pass, f.config+"=y ("+kc.source+")"
	case kc.config != nil && kc.config[f.config] == "m":
		r.Status, r.Detail = Pass, f.config+"=m, loaded on first use ("+kc.source+")"
	case f.module != "" && kc.builtin[f.module]:
		r.Status, r.Detail = Pass, f.module+" built in (modules.builtin)"
	case f.module != "" && kc.modules[f.module]:
		r.Status, r.Detail = Pass, "module "+f.module+" available (modules.dep), loaded on first use"
	case kc.config != nil:
		return missing(f.config + " not set (" + kc.source + ")")
	case len(kc.builtin)+len(kc.modules) > 0 && f.module != "":
		return missing("module " + f.module + " neither built in nor available")
	default:
		r.Status, r.Detail = Warn, "cannot tell: no /proc/config.gz, /boot/config-<release> or /lib/modules"
		if f.required {
			r.Fix = fmt.Sprintf("make sure the kernel has %s (%s), needed for %s", f.config, f.moduleOr(), f.why)
		}
	}
	return r
}

func (f feature) moduleOr() string {
	if f.module == "" {
		return "built in"
	}
	return "module " + f.module
}

func netnsCheck(root fs.FS) Result {
	r := Result{Check: "network namespaces"}
	if root == nil {
		r.Status, r.Detail = Warn, "cannot tell"
		return r
	}
	if _, err := fs.Stat(root, "proc/self/ns/net"); err != nil {
		r.Status, r.Detail = Fail, "/proc/self/ns/net: "+err.Error()
		r.Fix = "use a kernel with CONFIG_NET_NS: ztunnel serves each pod inside the pod's network namespace"
		return r
	}
	r.Status, r.Detail = Pass, "/proc/self/ns/net"
	return r
}

func reusePortCheck(probe func() error) Result {
	r := Result{Check: "SO_REUSEPORT"}
	if probe == nil {
		r.Status, r.Detail = Warn, "cannot tell"
		return r
	}
	if err := probe(); err != nil {
		r.Status, r.Detail = Fail, err.Error()
		r.Fix = "use a kernel with SO_REUSEPORT (3.9+): a new ztunnel binds its listeners next to the old one's during an upgrade"
		return r
	}
	r.Status, r.Detail = Pass, "a listener can share its port"
	return r
}

// cniConfigCheck wants a network config for ambit-cni to chain onto: the
// runtime uses the first file (by name) of the directory.
func cniConfigCheck(root fs.FS, dir string) Result {
	r := Result{Check: "CNI config"}
	if root == nil || dir == "" {
		r.Status, r.Detail = Warn, "cannot tell"
		return r
	}
	ents, err := fs.ReadDir(root, strings.TrimPrefix(dir, "/"))
	if err != nil {
		r.Status, r.Detail = Fail, dir+": "+errText(err)
		r.Fix = "install the cluster's pod network (its CNI plugin writes a config into " + dir + ") first: ambit-cni chains onto it; or pass --cni-conf-dir"
		return r
	}
	var confs []string
	for _, e := range ents {
		if e.IsDir() {
			continue
		}
		switch path.Ext(e.Name()) {
		case ".conf", ".conflist", ".json":
			confs = append(confs, e.Name())
		}
	}
	if len(confs) == 0 {
		r.Status, r.Detail = Fail, "no *.conf, *.conflist or *.json in "+dir
		r.Fix = "install the cluster's pod network (CNI) first: ambit-cni chains onto its config"
		return r
	}
	slices.Sort(confs)
	r.Status, r.Detail = Pass, fmt.Sprintf("%s (the runtime uses it; %d in %s)", confs[0], len(confs), dir)
	return r
}

func errText(err error) string {
	if errors.Is(err, fs.ErrNotExist) {
		return "does not exist"
	}
	return err.Error()
}

// portChecks reads the node's listening TCP sockets (/proc/net/tcp and
// tcp6, state 0A) and fails the mesh's ports that are taken.
func portChecks(root fs.FS, ports []int) []Result {
	listening := map[int][]string{}
	readable := false
	if root != nil {
		for _, f := range []string{"proc/net/tcp", "proc/net/tcp6"} {
			data, err := fs.ReadFile(root, f)
			if err != nil {
				continue
			}
			readable = true
			for addr, port := range parseListeners(data) {
				listening[port] = append(listening[port], addr)
			}
		}
	}
	var out []Result
	for _, p := range ports {
		r := Result{Check: fmt.Sprintf("port %d", p)}
		switch addrs := listening[p]; {
		case !readable:
			r.Status, r.Detail = Warn, "cannot tell: /proc/net/tcp unreadable"
		case len(addrs) > 0:
			slices.Sort(addrs)
			r.Status, r.Detail = Fail, "in use: listening on "+strings.Join(addrs, ", ")
			r.Fix = fmt.Sprintf("stop what listens on %d on this node (ss -ltnp 'sport = :%d'): the mesh uses it", p, p)
		default:
			r.Status, r.Detail = Pass, "free"
		}
		out = append(out, r)
	}
	return out
}

// parseListeners returns the listening sockets of a /proc/net/tcp{,6}
// table as address -> port.
func parseListeners(data []byte) map[string]int {
	out := map[string]int{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for first := true; sc.Scan(); first = false {
		if first {
			continue // header
		}
		f := strings.Fields(sc.Text())
		if len(f) < 4 || f[3] != "0A" {
			continue
		}
		hexAddr, hexPort, ok := strings.Cut(f[1], ":")
		if !ok {
			continue
		}
		port, err := strconv.ParseUint(hexPort, 16, 16)
		if err != nil {
			continue
		}
		out[decodeAddr(hexAddr)+":"+strconv.Itoa(int(port))] = int(port)
	}
	return out
}

// decodeAddr turns /proc/net/tcp's address (host-order 32-bit words in
// hex) into text; it is only shown to people.
func decodeAddr(h string) string {
	b := make([]byte, 0, 16)
	for i := 0; i+8 <= len(h); i += 8 {
		w, err := strconv.ParseUint(h[i:i+8], 16, 32)
		if err != nil {
			return h
		}
		b = append(b, byte(w), byte(w>>8), byte(w>>16), byte(w>>24))
	}
	switch len(b) {
	case 4:
		return fmt.Sprintf("%d.%d.%d.%d", b[0], b[1], b[2], b[3])
	case 16:
		if bytes.Equal(b, make([]byte, 16)) {
			return "[::]"
		}
		var parts []string
		for i := 0; i < 16; i += 2 {
			parts = append(parts, strconv.FormatUint(uint64(b[i])<<8|uint64(b[i+1]), 16))
		}
		return "[" + strings.Join(parts, ":") + "]"
	}
	return h
}

// Cluster is what the cluster checks ask the API server.
type Cluster interface {
	// ServerVersion is the API server's version (e.g. "v1.36.3").
	ServerVersion(ctx context.Context) (string, error)
	// Istiod reports whether Service istio-system/istiod exists, and
	// whether Ambit installed it.
	Istiod(ctx context.Context) (found, ours bool, err error)
	// CanI asks whether the caller may do verb on group/resource
	// (cluster-wide).
	CanI(ctx context.Context, verb, group, resource string) (bool, error)
}

// CheckCluster runs the cluster checks; server names it in messages.
func CheckCluster(ctx context.Context, c Cluster, server string, o Options) []Result {
	r := Result{Check: "API server"}
	v, err := c.ServerVersion(ctx)
	if err != nil {
		r.Status, r.Detail = Fail, fmt.Sprintf("%s: %v", server, err)
		r.Fix = "check --kubeconfig and --context (or $KUBECONFIG): the install talks to this API server"
		return []Result{r}
	}
	r.Status, r.Detail = Pass, server+" reachable"
	out := []Result{r}
	out = append(out, kubeVersion(v, o.MinKube))
	ist := Result{Check: "no other istiod"}
	switch found, ours, err := c.Istiod(ctx); {
	case err != nil:
		ist.Status, ist.Detail = Warn, "cannot tell: "+err.Error()
	case found && !ours:
		ist.Status, ist.Detail = Fail, "Service istio-system/istiod exists and was not installed by ambit"
		ist.Fix = "Istio (or another istiod) is installed: uninstall it first (istioctl uninstall --purge), or use another cluster"
	case found:
		ist.Status, ist.Detail = Pass, "istiod is Ambit's (install upgrades it)"
	default:
		ist.Status, ist.Detail = Pass, "none"
	}
	out = append(out, ist)
	for _, p := range []struct{ verb, group, resource string }{
		{"create", "apiextensions.k8s.io", "customresourcedefinitions"},
		{"create", "rbac.authorization.k8s.io", "clusterroles"},
		{"create", "apps", "daemonsets"},
	} {
		res := Result{Check: "permission: " + p.verb + " " + p.resource}
		ok, err := c.CanI(ctx, p.verb, p.group, p.resource)
		switch {
		case err != nil:
			res.Status, res.Detail = Warn, "cannot tell: "+err.Error()
		case !ok:
			res.Status, res.Detail = Fail, "denied"
			res.Fix = "install as a cluster administrator (cluster-admin): the install creates CRDs, cluster roles and DaemonSets"
		default:
			res.Status, res.Detail = Pass, "allowed"
		}
		out = append(out, res)
	}
	return out
}

func kubeVersion(v string, minMinor int) Result {
	r := Result{Check: "Kubernetes version"}
	major, minor, ok := parseRelease(strings.TrimPrefix(v, "v"))
	switch {
	case !ok:
		r.Status, r.Detail = Warn, fmt.Sprintf("cannot parse %q", v)
	case major > 1 || major == 1 && minor >= minMinor:
		r.Status, r.Detail = Pass, fmt.Sprintf("%s (>= 1.%d)", v, minMinor)
	default:
		r.Status, r.Detail = Fail, fmt.Sprintf("%s (< 1.%d)", v, minMinor)
		r.Fix = fmt.Sprintf("upgrade the cluster to Kubernetes 1.%d or later", minMinor)
	}
	return r
}
