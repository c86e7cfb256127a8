package local

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"github.com/ambit-mesh/ambit/nsnet"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// netnsDir is where named network namespaces live (as with `ip netns`).
const netnsDir = "/run/netns"

// NamePrefix starts the name of every network namespace the runtime creates.
const NamePrefix = "ambit-"

func netnsPath(name string) string { return filepath.Join(netnsDir, name) }

// createNetns creates the named network namespace name, with lo up, and
// returns its path. It fails if one of that name exists.
func createNetns(name string) (string, error) {
	if _, err := os.Stat(netnsPath(name)); err == nil {
		return "", fmt.Errorf("network namespace %s already exists", name)
	}
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return "", fmt.Errorf("creating netns %s: reading current netns: %w", name, err)
	}
	defer orig.Close()
	ns, err := netns.NewNamed(name) // switches this thread into it
	if ns.IsOpen() {
		ns.Close()
	}
	if rerr := netns.Set(orig); rerr != nil {
		// The thread is stuck in the wrong namespace: never unlock it, so
		// the runtime discards it when this goroutine ends.
		return "", fmt.Errorf("creating netns %s: restoring the original netns: %w", name, rerr)
	}
	runtime.UnlockOSThread()
	if err != nil {
		return "", fmt.Errorf("creating netns %s: %w", name, err)
	}
	if err := inNetns(netnsPath(name), func(h *netlink.Handle) error {
		lo, err := h.LinkByName("lo")
		if err != nil {
			return err
		}
		return h.LinkSetUp(lo)
	}); err != nil {
		return "", fmt.Errorf("bringing up lo in %s: %w", name, err)
	}
	return netnsPath(name), nil
}

// deleteNetns removes a named network namespace; a missing one is fine.
func deleteNetns(name string) error {
	err := netns.DeleteNamed(name)
	if err != nil && !errors.Is(err, os.ErrNotExist) && !errors.Is(err, syscall.EINVAL) {
		return fmt.Errorf("deleting netns %s: %w", name, err)
	}
	_ = os.Remove(netnsPath(name))
	return nil
}

// inNetns calls fn with a netlink handle bound to the namespace at path.
func inNetns(path string, fn func(h *netlink.Handle) error) error {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("opening netns %s: %w", path, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("netlink handle in %s: %w", path, err)
	}
	defer h.Close()
	return fn(h)
}

// setSysctl writes a /proc/sys value inside the namespace at path.
func setSysctl(path, key, value string) error {
	return nsnet.Do(path, func() error {
		p := filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/"))
		if err := os.WriteFile(p, []byte(value), 0o644); err != nil {
			return fmt.Errorf("sysctl %s=%s in %s: %w", key, value, path, err)
		}
		return nil
	})
}

// ourNetns lists the names of existing namespaces the runtime created.
func ourNetns() ([]string, error) {
	entries, err := os.ReadDir(netnsDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), NamePrefix) {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// netnsInode identifies a namespace file by its inode.
func netnsInode(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

// processesIn returns the PIDs of processes whose network namespace is one
// of the given inodes.
func processesIn(inodes map[uint64]bool) []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		var st unix.Stat_t
		if unix.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &st) != nil {
			continue
		}
		if inodes[st.Ino] {
			pids = append(pids, pid)
		}
	}
	return pids
}
