package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/nsnet"
	"github.com/ambit-mesh/ambit/nsnet/nstest"
)

// standaloneConfig is what a kubelet and an API server would have reported:
// pods with node, IP and phase, a service with its VIP.
const standaloneConfig = `apiVersion: v1
kind: Namespace
metadata:
  name: demo
  labels: {istio.io/dataplane-mode: ambient}
---
apiVersion: v1
kind: Pod
metadata:
  name: echo-1
  namespace: demo
  labels: {app: echo}
  annotations: {ambient.istio.io/redirection: enabled}
spec:
  nodeName: node1
  serviceAccountName: echo
  containers:
  - name: echo
    image: ambit
    command: [ambit, sample, echo, --port, "8080"]
status:
  phase: Running
  podIP: %s
---
apiVersion: v1
kind: Service
metadata:
  name: echo
  namespace: demo
spec:
  clusterIP: 10.96.0.20
  selector: {app: echo}
  ports:
  - {name: http, port: 8080, targetPort: 8080}
`

// startIn starts the ambit binary inside a network namespace; the process
// is killed by PID when the test ends.
func startIn(t *testing.T, netns, logPath string, args ...string) *exec.Cmd {
	t.Helper()
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(binDir, "ambit")
	cmd := exec.Command(bin, append([]string{"local", "nsexec", "--die-with-parent", netns, "--", bin}, args...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		logf.Close()
		if t.Failed() {
			if b, err := os.ReadFile(logPath); err == nil {
				t.Logf("%s:\n%s", filepath.Base(logPath), lastLines(string(b), 40))
			}
		}
	})
	return cmd
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// nsGet fetches a URL from inside a network namespace.
func nsGet(netns, url string) ([]byte, int, error) {
	c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DialContext: nsnet.DialFunc(netns, nsnet.SocketOptions{}, nil)}}
	resp, err := c.Get(url)
	if err != nil {
		return nil, 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return b, resp.StatusCode, err
}

// configDump is the part of ztunnel's /config_dump this test reads.
type configDump struct {
	Workloads []struct {
		Name      string   `json:"name"`
		Namespace string   `json:"namespace"`
		Addresses []string `json:"addresses"`
		Node      string   `json:"node"`
		Identity  string   `json:"identity"`
		Protocol  string   `json:"protocol"`
	} `json:"workloads"`
	Services []struct {
		Name string   `json:"name"`
		VIPs []string `json:"vips"`
	} `json:"services"`
}

func (d *configDump) workloadIP(name string) string {
	for _, w := range d.Workloads {
		if w.Name == name && len(w.Addresses) > 0 {
			return w.Addresses[0]
		}
	}
	return ""
}

func (d *configDump) serviceVIP(name string) string {
	for _, s := range d.Services {
		if s.Name == name && len(s.VIPs) > 0 {
			return s.VIPs[0]
		}
	}
	return ""
}

// TestStandaloneControlPlane runs `ambit controlplane --config DIR` and one
// `ambit ztunnel` pointed at it, outside `ambit local`, each in a network
// namespace of its own joined by a veth pair: the ztunnel receives the
// workloads and services of the directory, and an edit of the directory
// reaches it.
func TestStandaloneControlPlane(t *testing.T) {
	cpNS, ztNS := nstest.Netns(t), nstest.Netns(t)
	nstest.Veth(t, cpNS, "192.168.250.1/24", ztNS, "192.168.250.2/24")
	dir := t.TempDir()
	configDir, stateDir, credDir := filepath.Join(dir, "config"), filepath.Join(dir, "state"), filepath.Join(dir, "cred")
	if err := os.MkdirAll(configDir, 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(name, content string) {
		t.Helper()
		// Write and rename, as editors do, so the watcher never reads half a file.
		tmp := filepath.Join(configDir, "."+name+".tmp")
		if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(configDir, name)); err != nil {
			t.Fatal(err)
		}
	}
	write("demo.yaml", fmt.Sprintf(standaloneConfig, "10.244.1.5"))

	// The node credential comes from the CA's key in the state directory,
	// which the control plane then loads.
	mustAmbit(t, 30*time.Second, "controlplane", "node-credential", "--state-dir", stateDir, "--node", "node1", "--out", credDir)
	startIn(t, cpNS, filepath.Join(dir, "controlplane.log"), "controlplane", "--config", configDir, "--state-dir", stateDir,
		"--listen", "192.168.250.1:15012", "--http", "127.0.0.1:15014")
	eventually(t, 20*time.Second, "control plane ready", func() bool {
		_, code, err := nsGet(cpNS, "http://127.0.0.1:15014/ready")
		return err == nil && code == http.StatusOK
	})
	startIn(t, ztNS, filepath.Join(dir, "ztunnel.log"), "ztunnel", "--node", "node1", "--control-plane", "192.168.250.1:15012",
		"--credential-dir", credDir, "--zds-socket", filepath.Join(dir, "ztunnel.sock"),
		"--admin", "127.0.0.1:15000", "--readiness", "127.0.0.1:15021", "--metrics", "127.0.0.1:15020")

	dump := func() *configDump {
		b, code, err := nsGet(ztNS, "http://127.0.0.1:15000/config_dump")
		if err != nil || code != http.StatusOK {
			return nil
		}
		var d configDump
		if json.Unmarshal(b, &d) != nil {
			return nil
		}
		return &d
	}
	var d *configDump
	eventually(t, 20*time.Second, "the ztunnel has the workload and the service", func() bool {
		d = dump()
		return d != nil && d.workloadIP("echo-1") == "10.244.1.5" && d.serviceVIP("echo") == "10.96.0.20"
	})
	for _, w := range d.Workloads {
		if w.Name == "echo-1" && (w.Node != "node1" || w.Identity != "spiffe://cluster.local/ns/demo/sa/echo" || w.Protocol != "HBONE") {
			t.Errorf("workload echo-1: %+v", w)
		}
	}

	// The control plane says what it sent to whom, and counts it.
	b, _, err := nsGet(cpNS, "http://127.0.0.1:15014/debug/proxies")
	if err != nil {
		t.Fatal(err)
	}
	var proxies []struct {
		Node string                       `json:"node"`
		Sent map[string]map[string]string `json:"sent"`
	}
	if err := json.Unmarshal(b, &proxies); err != nil {
		t.Fatalf("/debug/proxies: %v\n%s", err, b)
	}
	const addressType = "type.googleapis.com/istio.workload.Address"
	if len(proxies) == 0 || proxies[0].Node != "ztunnel~node1" || proxies[0].Sent[addressType]["Kubernetes//Pod/demo/echo-1"] == "" {
		t.Errorf("/debug/proxies:\n%s", b)
	}
	b, _, err = nsGet(cpNS, "http://127.0.0.1:15014/debug/store")
	if err != nil {
		t.Fatal(err)
	}
	var store map[string]map[string]json.RawMessage
	if err := json.Unmarshal(b, &store); err != nil {
		t.Fatalf("/debug/store: %v\n%s", err, b)
	}
	if store["Pod"]["demo/echo-1"] == nil || store["Service"]["demo/echo"] == nil || store["Namespace"]["demo"] == nil {
		t.Errorf("/debug/store lacks objects: kinds %v", mapKeys(store))
	}
	b, _, err = nsGet(cpNS, "http://127.0.0.1:15014/metrics")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"ambit_controlplane_xds_connected_proxies 1", "ambit_controlplane_xds_pushes_total", "ambit_controlplane_config_errors 0"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}

	// Edits reach the ztunnel: a new service, and a pod that moved.
	start := time.Now()
	write("extra.yaml", `apiVersion: v1
kind: Service
metadata: {name: extra, namespace: demo}
spec:
  clusterIP: 10.96.0.30
  selector: {app: echo}
  ports: [{port: 9090}]
`)
	write("demo.yaml", fmt.Sprintf(standaloneConfig, "10.244.1.6"))
	eventually(t, 5*time.Second, "the edit reaches the ztunnel", func() bool {
		d = dump()
		return d != nil && d.workloadIP("echo-1") == "10.244.1.6" && d.serviceVIP("extra") == "10.96.0.30"
	})
	t.Logf("edit reached the ztunnel in %s", time.Since(start).Round(time.Millisecond))

	// A rejected file changes nothing and is counted.
	write("bad.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: bad, namespace: demo}\nspec: {bogus: 1}\n")
	eventually(t, 5*time.Second, "the rejected file counted", func() bool {
		b, _, err := nsGet(cpNS, "http://127.0.0.1:15014/metrics")
		return err == nil && strings.Contains(string(b), "ambit_controlplane_config_errors 1")
	})
	if d = dump(); d == nil || d.workloadIP("echo-1") != "10.244.1.6" || d.serviceVIP("extra") != "10.96.0.30" {
		t.Error("a rejected file changed what the ztunnel has")
	}
}

func mapKeys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// eventually polls cond until it holds, and fails the test after timeout.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
