// Package cluster is the cluster tier test: Ambit installed by `ambit
// install` on a real single-node Kubernetes (internal/clustertest: a real
// kubelet, containerd and runc, the CNI bridge), from the images `make
// images` builds, and the demo enrolled live, without restarting a pod.
// It needs root and fails (never skips) without it. Run it with
// `make test-cluster`.
package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/ambit-mesh/ambit/internal/clustertest"
	"github.com/ambit-mesh/ambit/samples"
)

const (
	ns          = "demo"
	redirection = "ambient.istio.io/redirection"
	clientID    = "spiffe://cluster.local/ns/demo/sa/client"
	echoID      = "spiffe://cluster.local/ns/demo/sa/echo"
)

// env is what the steps share.
type env struct {
	c        *clustertest.Cluster
	ambit    string // the host's bin/ambit (install, uninstall, clients run in a pod's netns)
	image    string // the ambit image the demo runs
	pods     map[string]types.UID
	echoIPs  []string
	echoVIP  string
	client   string // client pod name
	clientPI int    // client container's host PID
	// restarts are the demo containers' restart counts checkPods expects
	// (a node reboot restarts each once).
	restarts map[string]int32
}

func binDir() string {
	if d := os.Getenv("AMBIT_BIN_DIR"); d != "" {
		return d
	}
	return filepath.Join(clustertest.RepoRoot(), "bin")
}

func TestCluster(t *testing.T) {
	bin := binDir()
	images := []string{filepath.Join(bin, "images", "ambit.tar"), filepath.Join(bin, "images", "ambit-ztunnel.tar")}
	for _, f := range append(slices.Clone(images), filepath.Join(bin, "ambit")) {
		if _, err := os.Stat(f); err != nil {
			t.Fatalf("%v: run make images first (make test-cluster does)", err)
		}
	}
	ver, err := exec.Command(filepath.Join(bin, "ambit"), "version").Output()
	if err != nil {
		t.Fatalf("ambit version: %v", err)
	}
	tag := strings.Fields(strings.TrimSpace(string(ver)))
	e := &env{ambit: filepath.Join(bin, "ambit"), pods: map[string]types.UID{}, restarts: map[string]int32{}}
	// "ambit <version> ..." or just the version.
	e.image = "ambit.local/ambit:" + versionOf(tag)

	t0 := time.Now()
	e.c = clustertest.Start(t, clustertest.Options{AmbitBinDir: bin, Images: images})
	t.Logf("cluster up in %s", time.Since(t0).Round(time.Millisecond))

	// A step that fails stops the test, unless it is one the later steps
	// do not depend on (it cleans up after itself).
	steps := []struct {
		name        string
		fn          func(t *testing.T, e *env)
		independent bool
	}{
		{"install", stepInstall, false},
		{"demo", stepDemo, false},
		{"enroll", stepEnroll, false},
		{"traffic", stepTraffic, false},
		{"l4-authz", stepAuthz, true},
		{"waypoint", stepWaypoint, true},
		{"ztunnel-rollout", stepZtunnelRollout, true},
		{"node-agent-restart", stepNodeAgentRestart, true},
		{"node-reboot", stepNodeReboot, false},
		{"unenroll", stepUnenroll, false},
		{"uninstall", stepUninstall, false},
	}
	for _, s := range steps {
		st := time.Now()
		ok := t.Run(s.name, func(t *testing.T) { s.fn(t, e) })
		t.Logf("step %s: %v in %s", s.name, map[bool]string{true: "PASS", false: "FAIL"}[ok], time.Since(st).Round(time.Millisecond))
		if !ok && !s.independent {
			return
		}
	}
}

func versionOf(fields []string) string {
	for _, f := range fields {
		if f != "ambit" && f != "version" {
			return strings.TrimSuffix(f, ",")
		}
	}
	return ""
}

func ctx(t *testing.T, d time.Duration) context.Context {
	c, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return c
}

// nodeState is what uninstall must leave as install found it.
type nodeState struct {
	conflists map[string]string
	cniBins   []string
	tables    []string
	sockets   []string
}

var beforeInstall nodeState

func readNodeState(c *clustertest.Cluster) nodeState {
	s := nodeState{conflists: map[string]string{}}
	es, _ := os.ReadDir(c.CNIConfDir)
	for _, f := range es {
		b, _ := os.ReadFile(filepath.Join(c.CNIConfDir, f.Name()))
		s.conflists[f.Name()] = string(b)
	}
	es, _ = os.ReadDir(c.CNIBinDir)
	for _, f := range es {
		s.cniBins = append(s.cniBins, f.Name())
	}
	out, _ := exec.Command("nft", "list", "tables").Output()
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		s.tables = append(s.tables, strings.TrimSpace(l))
	}
	sort.Strings(s.tables)
	for _, d := range []string{"/var/run/ztunnel", "/var/run/ambit"} {
		es, _ := os.ReadDir(d)
		for _, f := range es {
			s.sockets = append(s.sockets, filepath.Join(d, f.Name()))
		}
	}
	return s
}

func stepInstall(t *testing.T, e *env) {
	beforeInstall = readNodeState(e.c)
	args := []string{"install", "--kubeconfig", e.c.Kubeconfig, "--image-pull-policy", "Never",
		"--cni-conf-dir", e.c.CNIConfDir, "--cni-bin-dir", e.c.CNIBinDir, "--timeout", "3m"}
	cmd := exec.CommandContext(ctx(t, 4*time.Minute), e.ambit, args...)
	out, err := cmd.CombinedOutput()
	t.Logf("ambit %s:\n%s", strings.Join(args, " "), out)
	if err != nil {
		dumpIstioSystem(t, e)
		t.Fatalf("ambit install: %v", err)
	}
	// The node agent wrote its own conflist, sorting first, with the
	// network's plugins and ours last; the network's file is untouched.
	b, err := os.ReadFile(filepath.Join(e.c.CNIConfDir, ownConflist))
	if err != nil || !strings.Contains(string(b), `"ambit-cni"`) || !strings.Contains(string(b), `"bridge"`) {
		t.Fatalf("%s after install (%v):\n%s", ownConflist, err, b)
	}
	if now := readNodeState(e.c).conflists[primaryConflist]; now != beforeInstall.conflists[primaryConflist] {
		t.Errorf("install rewrote the network's %s:\n%s", primaryConflist, now)
	}
}

// The network's conflist (the harness's bridge) and the node agent's own.
const (
	primaryConflist = "10-clustertest.conflist"
	ownConflist     = "01-ambit-cni.conflist"
)

func dumpIstioSystem(t *testing.T, e *env) {
	c := ctx(t, 30*time.Second)
	out, _ := e.c.Kubectl(c, "get", "pods", "-A", "-o", "wide")
	t.Logf("pods:\n%s", out)
	for _, sel := range []string{"app=istiod", "app=ztunnel", "app=ambit-node-agent"} {
		out, _ := e.c.Kubectl(c, "logs", "-n", "istio-system", "-l", sel, "--tail=30", "--all-containers")
		t.Logf("logs %s:\n%s", sel, out)
	}
	out, _ = e.c.Kubectl(c, "get", "events", "-A", "--sort-by=.lastTimestamp")
	t.Logf("events:\n%s", lastLines(out, 40))
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

const demoYAML = `apiVersion: v1
kind: Namespace
metadata:
  name: demo
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: client, namespace: demo}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: echo, namespace: demo}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo, namespace: demo}
spec:
  replicas: 2
  selector: {matchLabels: {app: echo}}
  template:
    metadata: {labels: {app: echo}}
    spec:
      serviceAccountName: echo
      terminationGracePeriodSeconds: 2
      containers:
      - name: echo
        image: IMAGE
        imagePullPolicy: Never
        command: [/usr/local/bin/ambit, sample, echo, --port, "8080"]
        env:
        - name: POD_NAME
          valueFrom: {fieldRef: {fieldPath: metadata.name}}
        ports: [{containerPort: 8080, name: http}]
        readinessProbe: {httpGet: {path: /, port: 8080}, periodSeconds: 2, failureThreshold: 1}
        livenessProbe: {tcpSocket: {port: 8080}, periodSeconds: 2, failureThreshold: 3}
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: demo}
spec:
  selector: {app: echo}
  ports: [{name: http, port: 8080, targetPort: 8080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: client, namespace: demo}
spec:
  replicas: 1
  selector: {matchLabels: {app: client}}
  template:
    metadata: {labels: {app: client}}
    spec:
      serviceAccountName: client
      terminationGracePeriodSeconds: 2
      containers:
      - name: client
        image: IMAGE
        imagePullPolicy: Never
        command: [/usr/local/bin/ambit, sample, tcp-echo, --port, "9000"]
        env:
        - name: POD_NAME
          valueFrom: {fieldRef: {fieldPath: metadata.name}}
        ports: [{containerPort: 9000, name: tcp-echo}]
        readinessProbe: {tcpSocket: {port: 9000}, periodSeconds: 2, failureThreshold: 1}
        livenessProbe: {tcpSocket: {port: 9000}, periodSeconds: 2, failureThreshold: 3}
`

func apply(t *testing.T, e *env, yaml string) {
	t.Helper()
	cmd := exec.CommandContext(ctx(t, time.Minute), filepath.Join(e.c.K8sBinDir, "kubectl"), "--kubeconfig", e.c.Kubeconfig, "apply", "-f", "-")
	cmd.Stdin = strings.NewReader(yaml)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("kubectl apply: %v: %s", err, out)
	}
}

func demoPods(t *testing.T, e *env) []corev1.Pod {
	t.Helper()
	pl, err := e.c.Client.CoreV1().Pods(ns).List(ctx(t, 10*time.Second), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return pl.Items
}

func podReady(p corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// waitFor polls cond until it holds or d passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(d)
	var last string
	for {
		ok, why := cond()
		if ok {
			return
		}
		last = why
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after %s: %s", what, d, last)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func stepDemo(t *testing.T, e *env) {
	apply(t, e, strings.ReplaceAll(demoYAML, "IMAGE", e.image))
	waitFor(t, 90*time.Second, "demo pods ready", func() (bool, string) {
		ps := demoPods(t, e)
		if len(ps) != 3 {
			return false, fmt.Sprintf("%d pods", len(ps))
		}
		for _, p := range ps {
			if !podReady(p) {
				return false, p.Name + " not ready: " + string(p.Status.Phase)
			}
		}
		return true, ""
	})
	for _, p := range demoPods(t, e) {
		e.pods[p.Name] = p.UID
	}
	e.refresh(t)
	svc, err := e.c.Client.CoreV1().Services(ns).Get(ctx(t, 10*time.Second), "echo", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	e.echoVIP = svc.Spec.ClusterIP
	t.Logf("client %s, echo pods %v, echo VIP %s", e.client, e.echoIPs, e.echoVIP)

	// Before enrollment: pod IPs work in plaintext, the VIP routes nowhere
	// (no kube-proxy).
	if s := runClient(t, e, "http://"+e.echoIPs[0]+":8080/", 3); s.Errors != 0 {
		t.Fatalf("plaintext pod IP before enrollment: %+v", s)
	}
	if s := runClient(t, e, "http://"+e.echoVIP+":8080/", 1, "--timeout", "1s"); s.Errors != 1 {
		t.Fatalf("the VIP answered before enrollment (is something proxying services?): %+v", s)
	}
}

// refresh reads the demo pods' IPs and the client container's PID.
func (e *env) refresh(t *testing.T) {
	t.Helper()
	e.echoIPs = nil
	for _, p := range demoPods(t, e) {
		switch p.Labels["app"] {
		case "echo":
			e.echoIPs = append(e.echoIPs, p.Status.PodIP)
		case "client":
			e.client = p.Name
			pid, err := e.c.ContainerPID(p.Status.ContainerStatuses[0].ContainerID)
			if err != nil {
				t.Fatal(err)
			}
			e.clientPI = pid
		}
	}
}

// runClient runs `ambit sample client` in the client pod (kubectl exec).
func runClient(t *testing.T, e *env, url string, n int, extra ...string) samples.Summary {
	t.Helper()
	args := append([]string{"exec", "-n", ns, e.client, "-c", "client", "--", "/usr/local/bin/ambit", "sample", "client", url,
		"-n", strconv.Itoa(n), "-o", "json"}, extra...)
	out, _ := e.c.Kubectl(ctx(t, 2*time.Minute), args...)
	return parseSummary(t, out)
}

func parseSummary(t *testing.T, out string) samples.Summary {
	t.Helper()
	var s samples.Summary
	i := strings.Index(out, "{")
	if i < 0 {
		t.Fatalf("client printed no summary: %s", out)
	}
	dec := json.NewDecoder(strings.NewReader(out[i:]))
	if err := dec.Decode(&s); err != nil {
		t.Fatalf("client summary: %v: %s", err, out)
	}
	return s
}

// checkPods asserts the demo pods are the same pods, ready, never
// restarted.
func checkPods(t *testing.T, e *env) {
	t.Helper()
	var ps []corev1.Pod
	for _, p := range demoPods(t, e) {
		if p.Labels["app"] != "" { // not the waypoint's
			ps = append(ps, p)
		}
	}
	if len(ps) != len(e.pods) {
		t.Errorf("%d demo pods, want %d", len(ps), len(e.pods))
	}
	for _, p := range ps {
		if e.pods[p.Name] != p.UID {
			t.Errorf("pod %s (uid %s) is not one of the original pods", p.Name, p.UID)
		}
		if !podReady(p) {
			t.Errorf("pod %s not ready", p.Name)
		}
		for _, cs := range p.Status.ContainerStatuses {
			if want := e.restarts[p.Name+"/"+cs.Name]; cs.RestartCount != want {
				t.Errorf("pod %s container %s restarted %d times, want %d", p.Name, cs.Name, cs.RestartCount, want)
			}
		}
	}
}

func setLabel(t *testing.T, e *env, value string) {
	t.Helper()
	args := []string{"label", "namespace", ns, "--overwrite", "istio.io/dataplane-mode=" + value}
	if value == "" {
		args = []string{"label", "namespace", ns, "istio.io/dataplane-mode-"}
	}
	if _, err := e.c.Kubectl(ctx(t, 30*time.Second), args...); err != nil {
		t.Fatal(err)
	}
}

func stepEnroll(t *testing.T, e *env) {
	t0 := time.Now()
	enroll(t, e)
	t.Logf("all demo pods captured %s after the label", time.Since(t0).Round(time.Millisecond))
	checkPods(t, e)
}

// enroll labels the demo namespace and waits for every demo pod to be
// annotated, then checks the rules are in each pod's netns.
func enroll(t *testing.T, e *env) {
	t.Helper()
	setLabel(t, e, "ambient")
	waitFor(t, 30*time.Second, "demo pods annotated "+redirection, func() (bool, string) {
		for _, p := range demoPods(t, e) {
			if p.Labels["app"] != "" && p.Annotations[redirection] != "enabled" {
				return false, p.Name + " not annotated"
			}
		}
		return true, ""
	})
	for _, p := range demoPods(t, e) {
		if rs := podRuleset(t, e, p); p.Labels["app"] != "" && !strings.Contains(rs, "table") {
			t.Errorf("pod %s: no nftables rules in its netns after enrollment", p.Name)
		}
	}
}

// released fails unless no demo pod is annotated or has rules in its netns.
func released(t *testing.T, e *env) (bool, string) {
	for _, p := range demoPods(t, e) {
		if _, ok := p.Annotations[redirection]; ok {
			return false, p.Name + " still annotated"
		}
		if rs := podRuleset(t, e, p); rs != "" {
			return false, p.Name + " still has rules:\n" + rs
		}
	}
	return true, ""
}

func podRuleset(t *testing.T, e *env, p corev1.Pod) string {
	t.Helper()
	pid, err := e.c.ContainerPID(p.Status.ContainerStatuses[0].ContainerID)
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("nsenter", "--net=/proc/"+strconv.Itoa(pid)+"/ns/net", "nft", "list", "ruleset").CombinedOutput()
	if err != nil {
		t.Fatalf("nsenter nft list ruleset for %s: %v: %s", p.Name, err, out)
	}
	return strings.TrimSpace(string(out))
}

// ztunnelLog returns the log lines of the current ztunnel pods.
func ztunnelLog(t *testing.T, e *env) []string {
	t.Helper()
	out, _ := e.c.Kubectl(ctx(t, 30*time.Second), "logs", "-n", "istio-system", "-l", "app=ztunnel", "--tail=-1")
	return strings.Split(out, "\n")
}

// logHas reports whether a log line (text key=value or JSON) has every
// key with its value.
func logHas(line string, kv ...string) bool {
	for i := 0; i+1 < len(kv); i += 2 {
		k, v := kv[i], kv[i+1]
		if !strings.Contains(line, k+"="+v) && !strings.Contains(line, k+`="`+v+`"`) && !strings.Contains(line, `"`+k+`":"`+v+`"`) {
			return false
		}
	}
	return true
}

func stepTraffic(t *testing.T, e *env) {
	for _, ip := range e.echoIPs {
		if s := runClient(t, e, "http://"+ip+":8080/", 5); s.Errors != 0 || s.Codes["200"] != 5 {
			t.Errorf("pod IP %s through the mesh: %+v", ip, s)
		}
	}
	s := runClient(t, e, "http://"+e.echoVIP+":8080/", 10)
	if s.Errors != 0 || s.Codes["200"] != 10 {
		t.Errorf("service VIP %s through ztunnel: %+v", e.echoVIP, s)
	}
	t.Logf("VIP: pods %v", s.Pods)
	waitFor(t, 15*time.Second, "ztunnel access log with both identities", func() (bool, string) {
		var in, out int
		for _, l := range ztunnelLog(t, e) {
			if !logHas(l, "msg", "connection complete", "src.identity", clientID, "dst.identity", echoID) {
				continue
			}
			switch {
			case logHas(l, "direction", "inbound"):
				in++
			case logHas(l, "direction", "outbound"):
				out++
			}
		}
		return in >= 3 && out >= 3, fmt.Sprintf("%d inbound and %d outbound entries %s -> %s", in, out, clientID, echoID)
	})
	// Probes keep passing: wait a few probe periods, then check.
	time.Sleep(6 * time.Second)
	checkPods(t, e)
}

const denyPolicy = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-client, namespace: demo}
spec:
  selector: {matchLabels: {app: echo}}
  action: DENY
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/demo/sa/client"]}
`

func stepAuthz(t *testing.T, e *env) {
	t0 := time.Now()
	apply(t, e, denyPolicy)
	waitFor(t, 30*time.Second, "DENY policy enforced", func() (bool, string) {
		s := runClient(t, e, "http://"+e.echoIPs[0]+":8080/", 1, "--timeout", "2s")
		return s.Errors == 1, fmt.Sprintf("%+v", s.Codes)
	})
	t.Logf("denied %s after apply", time.Since(t0).Round(time.Millisecond))
	if s := runClient(t, e, "http://"+e.echoVIP+":8080/", 5, "--timeout", "2s"); s.Errors != 5 {
		t.Errorf("VIP with the DENY policy: %d of 5 failed, want all: %+v", s.Errors, s.Codes)
	}
	if _, err := e.c.Kubectl(ctx(t, 30*time.Second), "delete", "-n", ns, "authorizationpolicy", "deny-client"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "traffic back after the policy is deleted", func() (bool, string) {
		s := runClient(t, e, "http://"+e.echoVIP+":8080/", 3, "--timeout", "2s")
		return s.Errors == 0, fmt.Sprintf("%+v", s.Codes)
	})
	checkPods(t, e)
}

// bgClient runs `ambit sample client` (the host's binary) in the client
// pod's network namespace, where its connections are captured exactly as
// the pod's own: a new connection every interval until stopped.
type bgClient struct {
	cmd *exec.Cmd
	out strings.Builder
}

func startBgClient(t *testing.T, e *env, url string, interval time.Duration) *bgClient {
	t.Helper()
	b := &bgClient{}
	b.cmd = exec.Command("nsenter", "--net=/proc/"+strconv.Itoa(e.clientPI)+"/ns/net", e.ambit, "sample", "client", url,
		"-n", "100000", "--interval", interval.String(), "--new-conn-per-request", "--timeout", "2s", "-o", "json")
	b.cmd.Stdout = &b.out
	b.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := b.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if b.cmd.ProcessState == nil {
			_ = b.cmd.Process.Kill()
			_ = b.cmd.Wait()
		}
	})
	return b
}

func (b *bgClient) stop(t *testing.T) samples.Summary {
	t.Helper()
	_ = b.cmd.Process.Signal(syscall.SIGINT)
	_ = b.cmd.Wait()
	return parseSummary(t, b.out.String())
}

func failures(s samples.Summary) map[string]int {
	m := map[string]int{}
	for _, r := range s.Results {
		if r.Err != "" || r.Code == "error" || strings.HasPrefix(r.Code, "5") {
			msg := r.Err
			if i := strings.LastIndex(msg, ": "); i >= 0 {
				msg = msg[i+2:]
			}
			m[msg]++
		}
	}
	return m
}

func rollout(t *testing.T, e *env, ds string) {
	t.Helper()
	if _, err := e.c.Kubectl(ctx(t, 30*time.Second), "rollout", "restart", "-n", "istio-system", "daemonset/"+ds); err != nil {
		t.Fatal(err)
	}
	if out, err := e.c.Kubectl(ctx(t, 3*time.Minute), "rollout", "status", "-n", "istio-system", "daemonset/"+ds, "--timeout=150s"); err != nil {
		dumpIstioSystem(t, e)
		t.Fatalf("rollout of %s: %v\n%s", ds, err, out)
	}
}

func stepZtunnelRollout(t *testing.T, e *env) {
	b := startBgClient(t, e, "http://"+e.echoVIP+":8080/", 50*time.Millisecond)
	time.Sleep(2 * time.Second)
	t0 := time.Now()
	rollout(t, e, "ztunnel")
	t.Logf("ztunnel rolled out in %s", time.Since(t0).Round(time.Millisecond))
	time.Sleep(3 * time.Second)
	s := b.stop(t)
	t.Logf("during the ztunnel rollout: %d connections, %d refused or failed %v", s.Requests, s.Errors, failures(s))
	if s.Requests < 20 {
		t.Fatalf("the client made only %d requests", s.Requests)
	}
	if s.Errors != 0 {
		t.Errorf("%d of %d new connections failed while ztunnel rolled (target 0): %v", s.Errors, s.Requests, failures(s))
	}
	// The new ztunnel serves.
	if s := runClient(t, e, "http://"+e.echoVIP+":8080/", 5); s.Errors != 0 {
		t.Errorf("after the rollout: %+v", s)
	}
	checkPods(t, e)
}

// capture runs tcpdump on the pods' bridge: pod-to-pod traffic (not to or
// from the node, and not the kubelet's SNATed probes).
type capture struct {
	cmd  *exec.Cmd
	file string
}

func startCapture(t *testing.T) *capture {
	t.Helper()
	c := &capture{file: filepath.Join(t.TempDir(), "bridge.pcap")}
	c.cmd = exec.Command("tcpdump", "-i", clustertest.Bridge, "-nn", "-U", "-w", c.file,
		"tcp and not host "+clustertest.Gateway+" and not host 169.254.7.127")
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := c.cmd.Start(); err != nil {
		t.Fatalf("tcpdump: %v", err)
	}
	t.Cleanup(func() {
		if c.cmd.ProcessState == nil {
			_ = c.cmd.Process.Kill()
			_ = c.cmd.Wait()
		}
	})
	time.Sleep(time.Second)
	return c
}

// stop returns the number of captured packets to or from port 8080 (the
// app's plaintext) and 15008 (HBONE).
func (c *capture) stop(t *testing.T) (plain, hbone int) {
	t.Helper()
	_ = c.cmd.Process.Signal(syscall.SIGINT)
	_ = c.cmd.Wait()
	out, err := exec.Command("tcpdump", "-nn", "-r", c.file).Output()
	if err != nil {
		t.Fatalf("tcpdump -r: %v", err)
	}
	for _, l := range strings.Split(string(out), "\n") {
		switch {
		case strings.Contains(l, ".8080 ") || strings.Contains(l, ".8080:"):
			plain++
		case strings.Contains(l, ".15008 ") || strings.Contains(l, ".15008:"):
			hbone++
		}
	}
	return plain, hbone
}

func stepNodeAgentRestart(t *testing.T, e *env) {
	cap := startCapture(t)
	b := startBgClient(t, e, "http://"+e.echoVIP+":8080/", 50*time.Millisecond)
	time.Sleep(2 * time.Second)
	t0 := time.Now()
	rollout(t, e, "ambit-node-agent")
	t.Logf("node agent rolled out in %s", time.Since(t0).Round(time.Millisecond))
	time.Sleep(3 * time.Second)
	s := b.stop(t)
	plain, hbone := cap.stop(t)
	t.Logf("during the node agent restart: %d connections, %d failed %v; on the bridge %d HBONE packets, %d plaintext app packets", s.Requests, s.Errors, failures(s), hbone, plain)
	if plain != 0 {
		t.Errorf("%d plaintext packets to or from the app port between pods while the node agent restarted", plain)
	}
	if hbone == 0 {
		t.Errorf("no HBONE packets captured (is the capture working?)")
	}
	if s.Errors != 0 {
		t.Errorf("%d of %d connections failed while the node agent restarted", s.Errors, s.Requests)
	}
	for _, p := range demoPods(t, e) {
		if p.Annotations[redirection] != "enabled" {
			t.Errorf("pod %s lost its %s annotation", p.Name, redirection)
		}
	}
	checkPods(t, e)
}

// talkerYAML is a client that talks to the echo Service from the moment
// its container starts, a new connection every 50 ms: started outside the
// mesh, its first connections would cross the bridge in plaintext.
const talkerYAML = `apiVersion: apps/v1
kind: Deployment
metadata: {name: talker, namespace: demo}
spec:
  replicas: 1
  selector: {matchLabels: {app: talker}}
  template:
    metadata: {labels: {app: talker}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: talker
        image: IMAGE
        imagePullPolicy: Never
        command: [/usr/local/bin/ambit, sample, client, "http://VIP:8080/", -n, "100000000", --interval, 50ms,
                  --new-conn-per-request, --timeout, 1s]
`

// stepNodeReboot cuts the node's power (clustertest.RebootNode: every
// process killed, what a boot clears cleared, the CNI configuration on
// disk kept, then rewritten by the network plugin at boot) while a talker
// pod opens connections from its start, and
// asserts that no enrolled pod's traffic crossed the bridge in plaintext
// while the node came back: every pod ambient wants started captured (the
// CNI plugin fails a sandbox until the node agent and a ztunnel take it),
// annotated, with its rules, and the mesh serves again.
func stepNodeReboot(t *testing.T, e *env) {
	apply(t, e, strings.NewReplacer("IMAGE", e.image, "VIP", e.echoVIP).Replace(talkerYAML))
	deleteTalker := func() {
		c, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_, _ = e.c.Kubectl(c, "delete", "deployment", "-n", ns, "talker", "--wait=true", "--timeout=50s")
		for c.Err() == nil {
			ps, err := e.c.Client.CoreV1().Pods(ns).List(c, metav1.ListOptions{LabelSelector: "app=talker"})
			if err == nil && len(ps.Items) == 0 {
				return
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	t.Cleanup(deleteTalker)
	waitFor(t, 60*time.Second, "talker captured", func() (bool, string) {
		ps, _ := e.c.Client.CoreV1().Pods(ns).List(ctx(t, 10*time.Second), metav1.ListOptions{LabelSelector: "app=talker"})
		if len(ps.Items) != 1 || ps.Items[0].Annotations[redirection] != "enabled" || ps.Items[0].Status.Phase != corev1.PodRunning {
			return false, fmt.Sprintf("%d talker pods", len(ps.Items))
		}
		return true, ""
	})
	// The containers that run now: each must be replaced by a new one.
	pl, err := e.c.Client.CoreV1().Pods("").List(ctx(t, 10*time.Second), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	oldContainer := map[types.UID]string{}
	for _, p := range pl.Items {
		if len(p.Status.ContainerStatuses) > 0 {
			oldContainer[p.UID] = p.Status.ContainerStatuses[0].ContainerID
		}
	}
	cap := startCapture(t)
	time.Sleep(time.Second)
	t0 := time.Now()
	// At boot the network plugin writes its config again, as Calico's
	// and Cilium's installers do (the same network, its own formatting):
	// an entry chained into that file would be gone until the node agent
	// is back.
	e.c.RebootNode(t, func() {
		p := filepath.Join(e.c.CNIConfDir, primaryConflist)
		var conf any
		if b, err := os.ReadFile(p); err != nil || json.Unmarshal(b, &conf) != nil {
			t.Errorf("reading %s at boot: %v", p, err)
			return
		}
		b, _ := json.Marshal(conf)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Error(err)
		}
		// The network's doing: uninstall must leave this version.
		beforeInstall.conflists[primaryConflist] = string(b)
	})
	t.Logf("node Ready %s after the power cut", time.Since(t0).Round(time.Millisecond))

	// Every pod of the node comes back ready; those ambient wants are
	// captured.
	waitFor(t, 4*time.Minute, "every pod back after the reboot", func() (bool, string) {
		pl, err := e.c.Client.CoreV1().Pods("").List(ctx(t, 10*time.Second), metav1.ListOptions{})
		if err != nil {
			return false, err.Error()
		}
		for _, p := range pl.Items {
			if len(p.Status.ContainerStatuses) == 0 || p.Status.ContainerStatuses[0].ContainerID == oldContainer[p.UID] {
				return false, p.Namespace + "/" + p.Name + " not restarted yet"
			}
			if p.Labels["app"] == "talker" {
				if p.Status.Phase != corev1.PodRunning {
					return false, "talker not running"
				}
			} else if !podReady(p) {
				return false, p.Namespace + "/" + p.Name + " not ready"
			}
			if p.Namespace == ns && p.Labels["app"] != "" && p.Annotations[redirection] != "enabled" {
				return false, p.Name + " not annotated enabled"
			}
		}
		return true, ""
	})
	t.Logf("every pod ready again %s after the power cut", time.Since(t0).Round(time.Millisecond))
	for _, p := range demoPods(t, e) {
		if p.Labels["app"] == "" {
			continue // the waypoint's
		}
		if rs := podRuleset(t, e, p); !strings.Contains(rs, "table") {
			t.Errorf("pod %s: no capture rules in its netns after the reboot", p.Name)
		}
		for _, cs := range p.Status.ContainerStatuses {
			e.restarts[p.Name+"/"+cs.Name] = cs.RestartCount
		}
	}
	// Each demo pod was captured through the CNI plugin, before its
	// containers started (not found running by the agent afterwards).
	agentLog, _ := e.c.Kubectl(ctx(t, 30*time.Second), "logs", "-n", "istio-system", "-l", "app=ambit-node-agent", "--tail=-1")
	held := strings.Count(agentLog, "no ztunnel connection")
	for _, p := range demoPods(t, e) {
		if p.Labels["app"] == "" {
			continue
		}
		found := false
		for _, l := range strings.Split(agentLog, "\n") {
			if strings.Contains(l, "pod captured before it starts") && logHas(l, "pod", ns+"/"+p.Name) {
				found = true
			}
		}
		if !found {
			t.Errorf("pod %s was not captured by the CNI plugin before it started after the reboot:\n%s", p.Name, lastLines(agentLog, 30))
		}
	}
	t.Logf("the node agent held %d sandboxes back until a ztunnel connected", held)
	time.Sleep(3 * time.Second)
	plain, hbone := cap.stop(t)
	logs, _ := e.c.Kubectl(ctx(t, 30*time.Second), "logs", "-n", ns, "deployment/talker", "--tail=-1")
	ok, failed := 0, 0
	for _, l := range strings.Split(logs, "\n") {
		switch {
		case strings.Contains(l, " 200 pod="):
			ok++
		case strings.HasPrefix(l, "#"):
			failed++
		}
	}
	t.Logf("during the reboot: on the bridge %d HBONE packets, %d plaintext app packets; the restarted talker: %d requests answered, %d failed (the mesh not back yet)", hbone, plain, ok, failed)
	if plain != 0 {
		t.Errorf("%d plaintext packets to or from the app port between pods while the node booted", plain)
	}
	if ok == 0 {
		t.Errorf("the restarted talker got no answer:\n%s", lastLines(logs, 20))
	}
	e.refresh(t)
	if s := runClient(t, e, "http://"+e.echoVIP+":8080/", 5); s.Errors != 0 {
		t.Errorf("the echo VIP after the reboot: %+v", s)
	}
	deleteTalker()
	checkPods(t, e)
}

func stepUnenroll(t *testing.T, e *env) {
	t0 := time.Now()
	setLabel(t, e, "")
	waitFor(t, 30*time.Second, "demo pods released", func() (bool, string) { return released(t, e) })
	t.Logf("released, no rules left in any pod netns, %s after the unlabel", time.Since(t0).Round(time.Millisecond))
	if s := runClient(t, e, "http://"+e.echoIPs[0]+":8080/", 3); s.Errors != 0 {
		t.Errorf("plaintext pod IP after unenrollment: %+v", s)
	}
	checkPods(t, e)
}

// stepUninstall uninstalls with the demo enrolled: the node agent
// releases its pods on the way out (no rules, no annotation, plaintext
// works) and the node is as install found it.
func stepUninstall(t *testing.T, e *env) {
	enroll(t, e)
	args := []string{"uninstall", "--kubeconfig", e.c.Kubeconfig, "--timeout", "2m"}
	out, err := exec.CommandContext(ctx(t, 3*time.Minute), e.ambit, args...).CombinedOutput()
	t.Logf("ambit %s:\n%s", strings.Join(args, " "), out)
	if err != nil {
		t.Fatalf("ambit uninstall: %v", err)
	}
	if ok, why := released(t, e); !ok {
		t.Errorf("a demo pod enrolled at uninstall was not released: %s", why)
	}
	if strings.Contains(string(out), "warning") {
		t.Errorf("ambit uninstall warned")
	}
	after := readNodeState(e.c)
	for name, b := range beforeInstall.conflists {
		if after.conflists[name] != b {
			t.Errorf("CNI config %s after uninstall:\n%s\nwas:\n%s", name, after.conflists[name], b)
		}
	}
	for name := range after.conflists {
		if _, ok := beforeInstall.conflists[name]; !ok {
			t.Errorf("CNI config %s left by uninstall", name)
		}
	}
	if !slices.Equal(beforeInstall.cniBins, after.cniBins) {
		t.Errorf("CNI bin dir after uninstall %v, was %v", after.cniBins, beforeInstall.cniBins)
	}
	if !slices.Equal(beforeInstall.tables, after.tables) {
		t.Errorf("host nftables tables after uninstall %v, was %v", after.tables, beforeInstall.tables)
	}
	if len(after.sockets) != len(beforeInstall.sockets) {
		t.Errorf("files left in the host's /var/run/ztunnel and /var/run/ambit: %v (were %v)", after.sockets, beforeInstall.sockets)
	}
	for _, d := range []string{"/var/run/ztunnel", "/var/run/ambit"} {
		if _, err := os.Stat(d); err == nil {
			t.Logf("note: %s is left on the host (a hostPath DirectoryOrCreate volume; the kubelet created it)", d)
		}
	}
	// The demo still works, in plaintext, without the mesh.
	if s := runClient(t, e, "http://"+e.echoIPs[0]+":8080/", 3); s.Errors != 0 {
		t.Errorf("plaintext pod IP after uninstall: %+v", s)
	}
	checkPods(t, e)
}

// waypointYAML is a waypoint Gateway (the control plane deploys its
// ServiceAccount, Service and Deployment, controlplane/kubewaypoint) and
// an HTTPRoute on the echo Service that only a waypoint can apply.
const waypointYAML = `apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: demo}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: echo, namespace: demo}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 8080}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /teapot}}]
    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /status/418}}}]
    backendRefs: [{name: echo, port: 8080}]
  - backendRefs: [{name: echo, port: 8080}]
`

// nsClient runs `ambit sample client` once in the client pod's netns and
// returns the summary with every result (the source the echo saw).
func nsClient(t *testing.T, e *env, url string, n int) samples.Summary {
	t.Helper()
	out, _ := exec.CommandContext(ctx(t, time.Minute), "nsenter", "--net=/proc/"+strconv.Itoa(e.clientPI)+"/ns/net", e.ambit, "sample", "client", url,
		"-n", strconv.Itoa(n), "--timeout", "2s", "-o", "json").Output()
	return parseSummary(t, string(out))
}

func stepWaypoint(t *testing.T, e *env) {
	t0 := time.Now()
	apply(t, e, waypointYAML)
	t.Cleanup(func() {
		c := ctx(t, time.Minute)
		_, _ = e.c.Kubectl(c, "label", "namespace", ns, "istio.io/use-waypoint-")
		_, _ = e.c.Kubectl(c, "delete", "-n", ns, "httproute/echo", "gateway/waypoint", "--wait=true")
		waitFor(t, time.Minute, "waypoint pods gone", func() (bool, string) {
			n := len(demoPods(t, e))
			return n == len(e.pods), fmt.Sprintf("%d demo pods", n)
		})
	})
	var wpIP string
	waitFor(t, 90*time.Second, "the waypoint's pod ready", func() (bool, string) {
		for _, p := range demoPods(t, e) {
			if p.Labels["gateway.networking.k8s.io/gateway-name"] == "waypoint" && podReady(p) {
				wpIP = p.Status.PodIP
				return true, ""
			}
		}
		return false, "not ready"
	})
	t.Logf("waypoint deployed by the control plane and ready %s after the Gateway", time.Since(t0).Round(time.Millisecond))
	t0 = time.Now()
	if _, err := e.c.Kubectl(ctx(t, 30*time.Second), "label", "namespace", ns, "--overwrite", "istio.io/use-waypoint=waypoint"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "VIP traffic through the waypoint, /teapot rewritten by the HTTPRoute", func() (bool, string) {
		s := nsClient(t, e, "http://"+e.echoVIP+":8080/teapot", 1)
		// Only the waypoint applies the HTTPRoute's rewrite.
		return s.Codes["418"] == 1, fmt.Sprintf("codes %v", s.Codes)
	})
	t.Logf("VIP traffic goes through the waypoint (%s) %s after the label", wpIP, time.Since(t0).Round(time.Millisecond))
	s := nsClient(t, e, "http://"+e.echoVIP+":8080/", 10)
	if s.Errors != 0 || s.Codes["200"] != 10 {
		t.Errorf("through the waypoint: %+v", s)
	}
	t.Logf("sources the echo pods saw through the waypoint: %v (waypoint %s)", s.Sources, wpIP)
	checkPods(t, e)
}
