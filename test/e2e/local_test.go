package e2e

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// copyDir copies the files of src into a new temporary directory.
func copyDir(t *testing.T, src string) string {
	t.Helper()
	dst := t.TempDir()
	entries, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

// hostLinks lists the host's interface names, to prove we never touch them.
func hostLinks(t *testing.T) string {
	t.Helper()
	ifs, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, i := range ifs {
		names = append(names, i.Name)
	}
	return strings.Join(names, ",")
}

// ourNetnsFiles lists /run/netns/ambit-*.
func ourNetnsFiles() []string {
	m, _ := filepath.Glob("/run/netns/ambit-*")
	return m
}

func inode(path string) uint64 {
	var st syscall.Stat_t
	if syscall.Stat(path, &st) != nil {
		return 0
	}
	return st.Ino
}

// liveProcessesIn returns live (not zombie) processes in the namespaces.
func liveProcessesIn(inodes map[uint64]bool) []string {
	entries, _ := os.ReadDir("/proc")
	var out []string
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if !inodes[inode(fmt.Sprintf("/proc/%d/ns/net", pid))] || !alive(pid) {
			continue
		}
		cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		out = append(out, fmt.Sprintf("%d %s", pid, bytes.ReplaceAll(cmd, []byte{0}, []byte{' '})))
	}
	return out
}

// alive reports whether pid runs and is not a zombie (this sandbox's init
// does not reap orphans, so zombies of finished processes linger).
func alive(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(data, ')')
	return i > 0 && i+2 < len(data) && data[i+2] != 'Z'
}

func TestLocalModeDemo(t *testing.T) {
	if left := ourNetnsFiles(); len(left) > 0 {
		t.Logf("leftover namespaces from an earlier run (up must clean them): %v", left)
	}
	linksBefore := hostLinks(t)
	stateDir := filepath.Join(t.TempDir(), "state")
	cfg := copyDir(t, filepath.Join(repoRoot(), "samples", "demo"))
	t.Cleanup(func() { _, _ = ambit(t, 60*time.Second, "local", "down", "--state-dir", stateDir) })

	out := mustAmbit(t, 90*time.Second, "local", "up", "-f", cfg, "--state-dir", stateDir)
	t.Logf("up: %s", out)

	st := readStatus(t, stateDir)
	if len(st.Nodes) != 2 || st.Nodes[0].Name != "node1" || st.Nodes[1].PodCIDR != "10.244.2.0/24" {
		t.Fatalf("nodes = %+v", st.Nodes)
	}
	wantNode := map[string]string{"client": "node1", "echo-1": "node1", "echo-2": "node2", "banner": "node2"}
	for _, p := range st.Pods {
		if p.Phase != "Running" {
			t.Errorf("pod %s/%s phase %s, want Running", p.Namespace, p.Name, p.Phase)
		}
		if wantNode[p.Name] != p.Node {
			t.Errorf("pod %s on %s, want %s", p.Name, p.Node, wantNode[p.Name])
		}
		cidr := "10.244.1."
		if p.Node == "node2" {
			cidr = "10.244.2."
		}
		if !strings.HasPrefix(p.IP, cidr) {
			t.Errorf("pod %s IP %s not in its node's CIDR", p.Name, p.IP)
		}
		if _, err := os.Stat(p.Netns); err != nil {
			t.Errorf("pod %s netns %s: %v", p.Name, p.Netns, err)
		}
	}
	if len(st.Pods) != 4 {
		t.Fatalf("got %d pods, want 4", len(st.Pods))
	}
	var echoSvc bool
	for _, s := range st.Services {
		if s.Name == "echo" && strings.HasPrefix(s.ClusterIP, "10.96.") && len(s.Ports) == 1 && s.Ports[0].Port == 8080 && s.Ports[0].TargetPort == "8080" {
			echoSvc = true
		}
	}
	if !echoSvc {
		t.Errorf("service echo not recorded with a VIP and port 8080: %+v", st.Services)
	}

	clientIP := st.podIP(t, "demo", "client")
	checkEcho := func(t *testing.T, st *status) {
		t.Helper()
		for _, target := range []string{"echo-1", "echo-2"} { // same node, other node
			ip := st.podIP(t, "demo", target)
			sum, err := sampleClient(t, stateDir, "demo/client", "http://"+ip+":8080/", 5)
			if err != nil {
				t.Fatalf("client -> %s: %v", target, err)
			}
			if sum.Codes["200"] != 5 || sum.Pods[target] != 5 {
				t.Errorf("client -> %s (%s): codes %v pods %v, want 5x200 from %s", target, ip, sum.Codes, sum.Pods, target)
			}
			if sum.Sources[clientIP] != 5 {
				t.Errorf("client -> %s: echo saw sources %v, want the client's pod IP %s", target, sum.Sources, clientIP)
			}
		}
	}
	t.Run("pod IP traffic", func(t *testing.T) { checkEcho(t, st) })

	t.Run("server-first banner", func(t *testing.T) {
		sum, err := sampleClient(t, stateDir, "client", "banner://"+st.podIP(t, "demo", "banner")+":2525", 3)
		if err != nil || sum.Codes["ok"] != 3 || sum.Pods["banner"] != 3 {
			t.Fatalf("banner: %+v %v", sum, err)
		}
	})

	t.Run("exec propagates exit codes and the pod's env", func(t *testing.T) {
		_, err := ambit(t, 10*time.Second, "local", "exec", "--state-dir", stateDir, "demo/echo-1", "--", "sh", "-c", "test \"$POD_NAME\" = echo-1 && exit 3")
		var ee *exec.ExitError
		if !asExit(err, &ee) || ee.ExitCode() != 3 {
			t.Fatalf("exit code: %v, want 3", err)
		}
		if out, err := ambit(t, 10*time.Second, "local", "exec", "--state-dir", stateDir, "demo/nope", "--", "true"); err == nil || !strings.Contains(out, `no pod "demo/nope"`) {
			t.Fatalf("exec into a missing pod: %v %s", err, out)
		}
	})

	t.Run("config changes add and remove pods", func(t *testing.T) {
		extra := "apiVersion: v1\nkind: Pod\nmetadata: {name: extra, namespace: demo}\nspec:\n  containers:\n  - name: c\n    command: [ambit, sample, tcp-echo]\n"
		if err := os.WriteFile(filepath.Join(cfg, "extra.yaml"), []byte(extra), 0o644); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 20*time.Second, "pod extra running", func() bool {
			for _, p := range readStatus(t, stateDir).Pods {
				if p.Name == "extra" && p.Phase == "Running" {
					return true
				}
			}
			return false
		})
		os.Remove(filepath.Join(cfg, "extra.yaml"))
		waitFor(t, 20*time.Second, "pod extra gone", func() bool {
			for _, p := range readStatus(t, stateDir).Pods {
				if p.Name == "extra" {
					return false
				}
			}
			_, err := os.Stat("/run/netns/ambit-pod-demo-extra")
			return os.IsNotExist(err)
		})
	})

	t.Run("a second mesh is refused and cannot take this one down", func(t *testing.T) {
		other := filepath.Join(t.TempDir(), "other-state")
		for _, args := range [][]string{
			{"local", "up", "-f", cfg, "--state-dir", other},
			{"local", "down", "--state-dir", other},
		} {
			out, err := ambit(t, 30*time.Second, args...)
			if err == nil || !strings.Contains(out, "another local mesh is running") || !strings.Contains(out, stateDir) {
				t.Errorf("ambit %s with a mesh running elsewhere: %v\n%s", strings.Join(args, " "), err, out)
			}
		}
		if _, err := os.Stat(other); !os.IsNotExist(err) {
			t.Errorf("refused up created %s: %v", other, err)
		}
		checkEcho(t, readStatus(t, stateDir))
	})

	t.Run("up recovers after the supervisor is killed", func(t *testing.T) {
		pid := supervisorPID(t, stateDir)
		if pid <= 1 {
			t.Fatalf("no supervisor PID in %s", stateDir)
		}
		var children []int // pods and ztunnels
		for _, p := range []string{"client", "echo-1", "echo-2", "banner"} {
			children = append(children, podPID(t, stateDir, "demo", p))
		}
		children = append(children, ztunnelPID(t, "node1"), ztunnelPID(t, "node2"))
		for _, c := range children {
			if c <= 1 || !alive(c) {
				t.Fatalf("pod and ztunnel PIDs before the kill: %v, want all running", children)
			}
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatalf("kill -9 supervisor %d: %v", pid, err)
		}
		waitFor(t, 10*time.Second, "supervisor dead", func() bool { return !alive(pid) })
		// The kernel kills them with their supervisor (parent-death signal);
		// up and down would also find them by their network namespace.
		waitFor(t, 5*time.Second, "pods and ztunnels to die with the supervisor", func() bool {
			for _, c := range children {
				if alive(c) {
					return false
				}
			}
			return true
		})
		out := mustAmbit(t, 90*time.Second, "local", "up", "-f", cfg, "--state-dir", stateDir)
		if !strings.Contains(out, "cleaning up a previous run") {
			t.Errorf("up after a crash did not say it cleaned up: %s", out)
		}
		checkEcho(t, readStatus(t, stateDir))
	})

	t.Run("down leaves nothing", func(t *testing.T) {
		inodes := map[uint64]bool{}
		for _, f := range ourNetnsFiles() {
			inodes[inode(f)] = true
		}
		if len(inodes) != 7 { // underlay, 2 nodes, 4 pods
			t.Errorf("before down: %d namespaces of ours, want 7", len(inodes))
		}
		pid := supervisorPID(t, stateDir)
		mustAmbit(t, 60*time.Second, "local", "down", "--state-dir", stateDir)
		if left := ourNetnsFiles(); len(left) > 0 {
			t.Errorf("namespaces left after down: %v", left)
		}
		if procs := liveProcessesIn(inodes); len(procs) > 0 {
			t.Errorf("processes left in our namespaces after down: %v", procs)
		}
		if pid > 0 && alive(pid) {
			t.Errorf("supervisor %d still running after down", pid)
		}
		if _, err := os.Stat(stateDir); !os.IsNotExist(err) {
			t.Errorf("state directory left after down: %v", err)
		}
		if f, err := os.Open("/run/ambit-local.lock"); err == nil {
			if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
				t.Errorf("mesh lock still held after down: %v", err)
			}
			f.Close()
		}
		if after := hostLinks(t); after != linksBefore {
			t.Errorf("host interfaces changed: before %s, after %s", linksBefore, after)
		}
		// down is idempotent.
		mustAmbit(t, 30*time.Second, "local", "down", "--state-dir", stateDir)
	})
}

func TestLocalUpRejectsBadConfig(t *testing.T) {
	stateDir := filepath.Join(t.TempDir(), "state")
	cfg := copyDir(t, filepath.Join(repoRoot(), "samples", "demo"))
	bad := "apiVersion: v1\nkind: Pod\nmetadata: {name: bad, namespace: demo}\nspec:\n  containers:\n  - name: c\n    command: [x]\n    ports: [{containerPort: 99999}]\n"
	if err := os.WriteFile(filepath.Join(cfg, "bad.yaml"), []byte(bad), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := ambit(t, 30*time.Second, "local", "up", "-f", cfg, "--state-dir", stateDir)
	if err == nil {
		ambit(t, 60*time.Second, "local", "down", "--state-dir", stateDir)
		t.Fatal("up accepted an invalid config")
	}
	want := "bad.yaml:8: Pod demo/bad: spec.containers[0].ports[0].containerPort: must be between 1 and 65535, got 99999"
	if !strings.Contains(out, want) {
		t.Errorf("up error does not say what and where:\n%s\nwant %q", out, want)
	}
	if left := ourNetnsFiles(); len(left) > 0 {
		t.Errorf("a rejected config still created namespaces: %v", left)
	}
	if out, err := ambit(t, 10*time.Second, "local", "status", "--state-dir", stateDir); err == nil || !strings.Contains(out, "no local mesh is running") {
		t.Errorf("status without a mesh: %v %s", err, out)
	}
}

// supervisorPID reads the supervisor's PID from its pid file ("PID
// STARTTIME"); 0 if there is none.
func supervisorPID(t *testing.T, stateDir string) int {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(stateDir, "supervisor.pid"))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(data))
	if len(f) != 2 {
		t.Fatalf("pid file %q: want \"PID STARTTIME\"", data)
	}
	pid, err := strconv.Atoi(f[0])
	if err != nil {
		t.Fatalf("pid file %q: %v", data, err)
	}
	return pid
}

func asExit(err error, target **exec.ExitError) bool {
	ee, ok := err.(*exec.ExitError)
	if ok {
		*target = ee
	}
	return ok
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
