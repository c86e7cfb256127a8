package nodeagent

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NetnsID identifies a network namespace: the device and inode of its
// nsfs file, the same for every path and descriptor that refers to it.
type NetnsID struct{ Dev, Ino uint64 }

// NetnsIDOf returns the identity of the namespace that path (a
// /proc/<pid>/ns/net link, a bind mount under /run/netns, a descriptor
// under /proc/self/fd) refers to.
func NetnsIDOf(path string) (NetnsID, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return NetnsID{}, fmt.Errorf("netns %s: %w", path, err)
	}
	return NetnsID{Dev: uint64(st.Dev), Ino: st.Ino}, nil // Dev is narrower on some architectures
}

// NetnsIDOfFile is NetnsIDOf for an open namespace.
func NetnsIDOfFile(f *os.File) (NetnsID, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return NetnsID{}, fmt.Errorf("netns %s: %w", f.Name(), err)
	}
	return NetnsID{Dev: uint64(st.Dev), Ino: st.Ino}, nil
}

// FoundNetns is a network namespace that ScanNetns found a process in.
type FoundNetns struct {
	ID   NetnsID
	Path string       // <procDir>/<pid>/ns/net of one process inside
	IPs  []netip.Addr // its interfaces' addresses, loopback excluded
	// PodUIDs are the Kubernetes pod UIDs in the cgroup paths of the
	// processes inside (the kubelet's kubepods hierarchy, cgroupfs or
	// systemd driver): one for a pod's sandbox, none for other processes.
	PodUIDs []string
}

// ScanNetns lists the network namespaces of the processes under procDir
// (the host's /proc), each once (by inode), with the addresses of their
// interfaces; the caller's own namespace and skip are left out. This is how
// the node agent finds a running pod's namespace by the pod's IP after it
// restarted (as istio-cni does): a pod's sandbox process lives in it. A
// namespace that only a bind mount holds (no process inside) is not
// found; on Kubernetes that is a sandbox whose CNI ADD has not finished,
// whose pod is not running yet. Processes that exit meanwhile are skipped.
func ScanNetns(procDir string, skip ...NetnsID) ([]FoundNetns, error) {
	entries, err := os.ReadDir(procDir)
	if err != nil {
		return nil, fmt.Errorf("scanning network namespaces: %w", err)
	}
	if own, err := NetnsIDOf("/proc/thread-self/ns/net"); err == nil {
		skip = append(skip, own)
	}
	skipped := map[NetnsID]bool{}
	for _, id := range skip {
		skipped[id] = true
	}
	index := map[NetnsID]int{} // into out
	var out []FoundNetns
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		path := filepath.Join(procDir, e.Name(), "ns", "net")
		id, err := NetnsIDOf(path)
		if err != nil || skipped[id] {
			continue
		}
		i, seen := index[id]
		if !seen {
			ips, err := netnsAddrs(path, id)
			if err != nil {
				skipped[id] = true // the process went away, or the namespace with it
				continue
			}
			i = len(out)
			index[id] = i
			out = append(out, FoundNetns{ID: id, Path: path, IPs: ips})
		}
		if uid := cgroupPodUID(filepath.Join(procDir, e.Name(), "cgroup")); uid != "" && !slices.Contains(out[i].PodUIDs, uid) {
			out[i].PodUIDs = append(out[i].PodUIDs, uid)
		}
	}
	return out, nil
}

// podUIDRE finds a pod UID in a kubepods cgroup path: ".../pod<uid>/..."
// (cgroupfs) or "...-pod<uid with _>.slice/..." (systemd).
var podUIDRE = regexp.MustCompile(`pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})`)

// cgroupPodUID returns the pod UID of the process whose cgroup file this
// is, or "".
func cgroupPodUID(cgroupFile string) string {
	data, err := os.ReadFile(cgroupFile)
	if err != nil || !bytes.Contains(data, []byte("kubepods")) {
		return ""
	}
	for line := range bytes.SplitSeq(data, []byte("\n")) {
		if !bytes.Contains(line, []byte("kubepods")) {
			continue
		}
		if m := podUIDRE.FindSubmatch(line); m != nil {
			return strings.ReplaceAll(string(m[1]), "_", "-")
		}
	}
	return ""
}

// netnsAddrs lists the non-loopback addresses in the namespace at path,
// checking that path still refers to namespace id once it is open (a pid
// may have been reused).
func netnsAddrs(path string, id NetnsID) ([]netip.Addr, error) {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(ns), &st); err != nil {
		return nil, err
	}
	if (NetnsID{Dev: uint64(st.Dev), Ino: st.Ino}) != id {
		return nil, errors.New("the process changed namespace")
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	addrs, err := h.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, err
	}
	var ips []netip.Addr
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		if ip.IsLoopback() || ip.IsLinkLocalUnicast() {
			continue
		}
		ips = append(ips, ip)
	}
	return ips, nil
}

// ErrNetnsNotFound is returned by FindNetns when no namespace holds the IPs.
var ErrNetnsNotFound = errors.New("no network namespace holds the pod's IPs")

// FindNetns returns the one namespace among found that holds every address
// of ips and, if its processes' cgroups name a pod, names only the pod uid
// (a stale status IP, after a reboot, may be another pod's now). None is
// ErrNetnsNotFound; more than one is an error too: the agent must never
// pick a namespace that might belong to another pod.
func FindNetns(found []FoundNetns, ips []netip.Addr, uid string) (FoundNetns, error) {
	if len(ips) == 0 {
		return FoundNetns{}, errors.New("finding a pod's network namespace: the pod has no IP")
	}
	var match []FoundNetns
	for _, f := range found {
		if uid != "" && len(f.PodUIDs) > 0 && !slices.Equal(f.PodUIDs, []string{uid}) {
			continue
		}
		all := true
		for _, ip := range ips {
			if !slices.Contains(f.IPs, ip.Unmap()) {
				all = false
				break
			}
		}
		if all {
			match = append(match, f)
		}
	}
	switch len(match) {
	case 0:
		return FoundNetns{}, fmt.Errorf("%w (%v)", ErrNetnsNotFound, ips)
	case 1:
		return match[0], nil
	}
	paths := make([]string, len(match))
	for i, m := range match {
		paths[i] = m.Path
	}
	return FoundNetns{}, fmt.Errorf("finding a pod's network namespace: %d namespaces hold %v (%v); taking none", len(match), ips, paths)
}
