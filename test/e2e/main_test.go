// Package e2e holds Ambit's end-to-end tests. They drive the real ambit
// binary as a user would, in real network namespaces, with the real CNI
// plugins and real clients. They need root and fail (never skip) without
// it.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// binDir holds ambit, ambit-ztunnel, ambit-cni and the CNI plugins (AMBIT_BIN_DIR, or
// built into a temporary directory by TestMain).
var binDir string

func TestMain(m *testing.M) {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "e2e tests need root (they create network namespaces); run them with sudo or through ./scripts/test.sh")
		os.Exit(1)
	}
	// Local meshes use machine-wide names: runs of these tests queue.
	unlock, err := e2eLock(8 * time.Minute)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := run(m)
	unlock()
	os.Exit(code)
}

// e2eLockPath serializes e2e runs on one machine (the file stays, empty).
const e2eLockPath = "/run/ambit-e2e.lock"

// e2eLock waits up to timeout for the machine-wide e2e lock.
func e2eLock(timeout time.Duration) (unlock func(), err error) {
	f, err := os.OpenFile(e2eLockPath, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("e2e lock: %w", err)
	}
	deadline := time.Now().Add(timeout)
	for said := false; ; {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if err != syscall.EWOULDBLOCK {
			f.Close()
			return nil, fmt.Errorf("e2e lock %s: %w", e2eLockPath, err)
		}
		if time.Now().After(deadline) {
			f.Close()
			return nil, fmt.Errorf("e2e lock %s: another e2e run held it for over %s", e2eLockPath, timeout)
		}
		if !said {
			fmt.Fprintf(os.Stderr, "waiting for another e2e run to finish (lock %s)\n", e2eLockPath)
			said = true
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func run(m *testing.M) int {
	binDir = os.Getenv("AMBIT_BIN_DIR")
	if binDir == "" {
		dir, err := os.MkdirTemp("", "ambit-e2e-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		cmd := exec.Command("make", "-C", repoRoot(), "build", "BIN="+dir)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "building binaries:", err)
			return 1
		}
		binDir = dir
	}
	return m.Run()
}

func repoRoot() string {
	wd, _ := os.Getwd()
	return filepath.Clean(filepath.Join(wd, "..", ".."))
}

// ambit runs the ambit binary with a timeout and returns its output.
func ambit(t *testing.T, timeout time.Duration, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "ambit"), args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("ambit %s: timed out after %s", strings.Join(args, " "), timeout)
	}
	return out.String(), err
}

// mustAmbit is ambit that fails the test on error.
func mustAmbit(t *testing.T, timeout time.Duration, args ...string) string {
	t.Helper()
	out, err := ambit(t, timeout, args...)
	if err != nil {
		t.Fatalf("ambit %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// status is the shape of `ambit local status -o json`.
type status struct {
	Nodes []struct {
		Name    string `json:"name"`
		Netns   string `json:"netns"`
		PodCIDR string `json:"podCIDR"`
	} `json:"nodes"`
	Pods []struct {
		Namespace string `json:"namespace"`
		Name      string `json:"name"`
		Node      string `json:"node"`
		IP        string `json:"ip"`
		Netns     string `json:"netns"`
		Phase     string `json:"phase"`
	} `json:"pods"`
	Services []struct {
		Namespace string `json:"namespace"`
		Name      string `json:"name"`
		ClusterIP string `json:"clusterIP"`
		Ports     []struct {
			Name       string `json:"name"`
			Port       int    `json:"port"`
			TargetPort string `json:"targetPort"`
			Protocol   string `json:"protocol"`
		} `json:"ports"`
	} `json:"services"`
}

func readStatus(t *testing.T, stateDir string) *status {
	t.Helper()
	out := mustAmbit(t, 10*time.Second, "local", "status", "-o", "json", "--state-dir", stateDir)
	var st status
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status -o json is not JSON: %v\n%s", err, out)
	}
	return &st
}

func (s *status) podIP(t *testing.T, ns, name string) string {
	t.Helper()
	for _, p := range s.Pods {
		if p.Namespace == ns && p.Name == name {
			return p.IP
		}
	}
	t.Fatalf("pod %s/%s not in status", ns, name)
	return ""
}

// clientSummary is the part of `ambit sample client -o json` tests read.
type clientSummary struct {
	Requests int            `json:"requests"`
	Errors   int            `json:"errors"`
	Codes    map[string]int `json:"codes"`
	Pods     map[string]int `json:"pods"`
	Sources  map[string]int `json:"sources"`
}

// sampleClient runs `ambit sample client` inside a pod.
func sampleClient(t *testing.T, stateDir, pod, url string, n int) (*clientSummary, error) {
	t.Helper()
	out, err := ambit(t, 60*time.Second, "local", "exec", "--state-dir", stateDir, pod, "--",
		"ambit", "sample", "client", url, "-n", fmt.Sprint(n), "-o", "json", "--timeout", "5s")
	var sum clientSummary
	// The summary is followed by the CLI's error line when requests failed.
	if i := strings.Index(out, "{"); i >= 0 && json.NewDecoder(strings.NewReader(out[i:])).Decode(&sum) == nil {
		return &sum, err
	}
	return nil, fmt.Errorf("client in %s: %v\n%s", pod, err, out)
}
