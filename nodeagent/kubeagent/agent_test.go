package kubeagent_test

// The envtest tier with real network namespaces (root only: it fails, never
// skips, without it): a real kube-apiserver (internal/kubetest), no
// kubelet. The test builds a node namespace with pod namespaces on its
// bridge (natest: each with its IP and a process inside, as a sandbox has),
// creates Pod objects with spec.nodeName and status.podIP matching them,
// and plays ztunnel with the zds package's client. Everything it creates is
// removed when the test ends.

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/nftables"
	"istio.io/istio/pkg/zdsapi"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/ambit-mesh/ambit/internal/kubetest"
	"github.com/ambit-mesh/ambit/nodeagent"
	"github.com/ambit-mesh/ambit/nodeagent/cnievent"
	"github.com/ambit-mesh/ambit/nodeagent/internal/natest"
	"github.com/ambit-mesh/ambit/nodeagent/kubeagent"
	"github.com/ambit-mesh/ambit/nsnet"
	"github.com/ambit-mesh/ambit/nsnet/nstest"
	"github.com/ambit-mesh/ambit/redirect"
	"github.com/ambit-mesh/ambit/zds"
)

const (
	nodeName    = "node-a"
	redirection = "ambient.istio.io/redirection"
	mode        = "istio.io/dataplane-mode"
)

// fakeZtunnel is ztunnel's side of ZDS (zds.Client) recording what the
// agent hands it.
type fakeZtunnel struct {
	mu        sync.Mutex
	netns     map[string]nodeagent.NetnsID // running proxies
	dels      map[string]int
	snapshots int
	lastKeep  map[string]bool
	stop      context.CancelFunc
	done      chan struct{}
}

func (z *fakeZtunnel) AddWorkload(_ context.Context, uid string, _ *zdsapi.WorkloadInfo, netns *os.File) error {
	id, err := nodeagent.NetnsIDOfFile(netns)
	netns.Close()
	if err != nil {
		return err
	}
	z.mu.Lock()
	defer z.mu.Unlock()
	z.netns[uid] = id
	return nil
}

func (z *fakeZtunnel) DelWorkload(_ context.Context, uid string) error {
	z.mu.Lock()
	defer z.mu.Unlock()
	delete(z.netns, uid)
	z.dels[uid]++
	return nil
}

func (z *fakeZtunnel) Reconcile(_ context.Context, keep map[string]bool) error {
	z.mu.Lock()
	defer z.mu.Unlock()
	for uid := range z.netns {
		if !keep[uid] {
			delete(z.netns, uid)
		}
	}
	z.snapshots++
	z.lastKeep = keep
	return nil
}

func (z *fakeZtunnel) proxy(uid types.UID) (nodeagent.NetnsID, bool) {
	z.mu.Lock()
	defer z.mu.Unlock()
	id, ok := z.netns[string(uid)]
	return id, ok
}

func startZtunnel(t *testing.T, sock string) *fakeZtunnel {
	z := &fakeZtunnel{netns: map[string]nodeagent.NetnsID{}, dels: map[string]int{}, done: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	z.stop = cancel
	c := zds.NewClient(sock, z, nil)
	go func() { defer close(z.done); _ = c.Run(ctx) }()
	t.Cleanup(z.close)
	return z
}

func (z *fakeZtunnel) close() { z.stop(); <-z.done }

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// syncBuffer collects the agents' logs, shown if the test fails (or with
// AGENT_LOGS=1).
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

type cluster struct {
	t    *testing.T
	srv  *kubetest.Server
	ctx  context.Context
	opts kubeagent.Options
}

func (c *cluster) pod(ns, name string, labels map[string]string, ip string) *corev1.Pod {
	c.t.Helper()
	p, err := c.srv.Client.CoreV1().Pods(ns).Create(c.ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels},
		Spec:       corev1.PodSpec{NodeName: nodeName, Containers: []corev1.Container{{Name: "main", Image: "example.invalid/none"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		c.t.Fatal(err)
	}
	if ip != "" {
		p = c.setIP(p, ip)
	}
	return p
}

// setIP reports the pod running at ip, as its kubelet would.
func (c *cluster) setIP(p *corev1.Pod, ip string) *corev1.Pod {
	c.t.Helper()
	p.Status.Phase, p.Status.PodIP, p.Status.PodIPs = corev1.PodRunning, ip, []corev1.PodIP{{IP: ip}}
	p, err := c.srv.Client.CoreV1().Pods(p.Namespace).UpdateStatus(c.ctx, p, metav1.UpdateOptions{})
	if err != nil {
		c.t.Fatal(err)
	}
	return p
}

func (c *cluster) get(p *corev1.Pod) *corev1.Pod {
	c.t.Helper()
	q, err := c.srv.Client.CoreV1().Pods(p.Namespace).Get(c.ctx, p.Name, metav1.GetOptions{})
	if err != nil {
		c.t.Fatal(err)
	}
	return q
}

func (c *cluster) annotation(p *corev1.Pod) string { return c.get(p).Annotations[redirection] }

// label sets (value "" removes) a label on a namespace or pod.
func (c *cluster) label(ns, pod, key, value string) {
	c.t.Helper()
	var v any
	if value != "" {
		v = value
	}
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"labels": map[string]any{key: v}}})
	var err error
	if pod == "" {
		_, err = c.srv.Client.CoreV1().Namespaces().Patch(c.ctx, ns, types.MergePatchType, patch, metav1.PatchOptions{})
	} else {
		_, err = c.srv.Client.CoreV1().Pods(ns).Patch(c.ctx, pod, types.MergePatchType, patch, metav1.PatchOptions{})
	}
	if err != nil {
		c.t.Fatal(err)
	}
}

// startAgent runs an agent until the returned stop is called, and waits
// until it is ready.
func (c *cluster) startAgent() (stop func()) {
	c.t.Helper()
	a, err := kubeagent.New(c.opts)
	if err != nil {
		c.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	deadline := time.Now().Add(30 * time.Second)
	for !a.Ready() {
		select {
		case err := <-done:
			cancel()
			c.t.Fatalf("agent stopped before it was ready: %v", err)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			cancel()
			c.t.Fatal("agent not ready in 30 s")
		}
	}
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			c.t.Errorf("agent: %v", err)
		}
	}
	c.t.Cleanup(stop)
	return stop
}

func rules(t *testing.T, netns string) redirect.State {
	t.Helper()
	st, err := redirect.Inspect(context.Background(), netns)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func probeSet(t *testing.T, netns string) []netip.Addr {
	t.Helper()
	ips, err := (&nodeagent.HostProbes{Netns: netns}).PodIPs(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return ips
}

// dialFrom connects from netns to addr and returns the source address the
// listener l saw.
func dialFrom(t *testing.T, netns, addr string, l <-chan netip.Addr) netip.Addr {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	conn, err := nsnet.DialFunc(netns, nsnet.SocketOptions{}, nil)(ctx, "tcp", addr)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer conn.Close()
	select {
	case src := <-l:
		return src
	case <-ctx.Done():
		t.Fatalf("the app did not get the connection to %s", addr)
	}
	return netip.Addr{}
}

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

func TestNodeAgent(t *testing.T) {
	nstest.RequireRoot(t)
	srv := kubetest.Start(t, kubetest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	node := natest.NewNode(t, "10.213.3.1/24")
	echoNs := node.Pod(t, "10.213.3.10")
	noneNs := node.Pod(t, "10.213.3.11")
	webNs := node.Pod(t, "10.213.3.12")
	app := listen(t, echoNs.Netns, "0.0.0.0:8080")
	for _, ns := range []string{"demo", "plain"} {
		if err := srv.EnsureServiceAccount(ctx, ns, "default"); err != nil {
			t.Fatal(err)
		}
	}

	dir := t.TempDir()
	var logs syncBuffer
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("AGENT_LOGS") != "" {
			t.Logf("agent logs:\n%s", logs.b.String())
		}
	})
	self := uint32(os.Getuid()) // plays the kubelet
	c := &cluster{t: t, srv: srv, ctx: ctx, opts: kubeagent.Options{
		NodeName: nodeName, Client: srv.Client,
		ZDSSocket: dir + "/ztunnel.sock", CNIEventSocket: dir + "/cni.sock",
		HostNetns: node.Netns, KubeletUID: &self,
		Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}}
	t.Cleanup(func() { _ = kubeagent.Uninstall(context.Background(), c.opts) })

	echo := c.pod("demo", "echo", nil, "10.213.3.10")
	optOut := c.pod("demo", "opted-out", map[string]string{mode: "none"}, "10.213.3.11")
	web := c.pod("plain", "web", nil, "10.213.3.12")
	zt := startZtunnel(t, c.opts.ZDSSocket)
	stop := c.startAgent()

	untouched := func(what string, p *corev1.Pod, netns string) {
		t.Helper()
		if st := rules(t, netns); !st.Clean() {
			t.Errorf("%s: rules in its netns: %+v", what, st)
		}
		if a := c.annotation(p); a != "" {
			t.Errorf("%s: annotated %q", what, a)
		}
		if _, ok := zt.proxy(p.UID); ok {
			t.Errorf("%s: handed to ztunnel", what)
		}
	}
	for _, p := range []struct {
		pod   *corev1.Pod
		netns string
	}{{echo, echoNs.Netns}, {optOut, noneNs.Netns}, {web, webNs.Netns}} {
		untouched("before any ambient label: "+p.pod.Name, p.pod, p.netns)
	}

	// Label the namespace: echo is enrolled live, the opted-out pod and
	// the other namespace's are not.
	c.label("demo", "", mode, "ambient")
	echoID, _ := nodeagent.NetnsIDOf(echoNs.Netns)
	eventually(t, "echo enrolled", func() bool {
		id, ok := zt.proxy(echo.UID)
		return rules(t, echoNs.Netns).Installed() && c.annotation(echo) == "enabled" && ok && id == echoID
	})
	if !slices.Contains(probeSet(t, node.Netns), echoNs.IP) {
		t.Errorf("echo's IP is not in the probe set: %v", probeSet(t, node.Netns))
	}
	// The kubelet's probe reaches the app through the capture, from the
	// probe address.
	if src := dialFrom(t, node.Netns, "10.213.3.10:8080", app); src != netip.MustParseAddr(redirect.DefaultProbeSNATv4) {
		t.Errorf("a probe from the node reached the app from %s, want %s", src, redirect.DefaultProbeSNATv4)
	}
	untouched("dataplane-mode=none", optOut, noneNs.Netns)
	untouched("non-ambient namespace", web, webNs.Netns)

	// Restart the agent: it finds echo's netns by scanning, the rules are
	// never gone, ztunnel keeps the pod, the annotation is not touched.
	rv := c.get(echo).ResourceVersion
	snaps := func() int { zt.mu.Lock(); defer zt.mu.Unlock(); return zt.snapshots }
	before := snaps()
	gapStop, gapDone := make(chan struct{}), make(chan string, 1)
	go func() {
		n := 0
		for {
			select {
			case <-gapStop:
				gapDone <- ""
				return
			default:
			}
			st, err := redirect.Inspect(context.Background(), echoNs.Netns)
			if err != nil || !st.Installed() {
				gapDone <- "rules missing after " + time.Duration(n).String()
				return
			}
			n++
			time.Sleep(5 * time.Millisecond)
		}
	}()
	stop()
	stop = c.startAgent()
	eventually(t, "ztunnel's snapshot from the new agent", func() bool {
		zt.mu.Lock()
		defer zt.mu.Unlock()
		return zt.snapshots > before && zt.lastKeep[string(echo.UID)]
	})
	close(gapStop)
	if gap := <-gapDone; gap != "" {
		t.Fatalf("a gap in echo's capture during the restart: %s", gap)
	}
	if id, ok := zt.proxy(echo.UID); !ok || id != echoID {
		t.Errorf("after the restart ztunnel has echo %v with netns %v, want %v", ok, id, echoID)
	}
	zt.mu.Lock()
	dels := zt.dels[string(echo.UID)]
	zt.mu.Unlock()
	if dels != 0 {
		t.Errorf("the restart deleted echo from ztunnel %d times", dels)
	}
	if got := c.get(echo); got.ResourceVersion != rv || got.Annotations[redirection] != "enabled" {
		t.Errorf("the restart touched echo's pod: resourceVersion %s -> %s, annotation %q", rv, got.ResourceVersion, got.Annotations[redirection])
	}
	if !slices.Contains(probeSet(t, node.Netns), echoNs.IP) {
		t.Errorf("echo's IP left the probe set: %v", probeSet(t, node.Netns))
	}
	untouched("dataplane-mode=none, after the restart", optOut, noneNs.Netns)

	// A new pod, reported by the CNI plugin before it starts (no IP in its
	// status yet): enrolled before the plugin returns.
	freshNs := node.Pod(t, "10.213.3.20")
	fresh := c.pod("demo", "fresh", nil, "")
	ev := cnievent.CNIEvent{Namespace: "demo", Name: "fresh", UID: string(fresh.UID), Netns: freshNs.Netns, IPs: []string{"10.213.3.20"}}
	if err := cnievent.Notify(ctx, c.opts.CNIEventSocket, ev); err != nil {
		t.Fatalf("CNI ADD of an ambient pod: %v", err)
	}
	freshID, _ := nodeagent.NetnsIDOf(freshNs.Netns)
	if id, ok := zt.proxy(fresh.UID); !rules(t, freshNs.Netns).Installed() || c.annotation(fresh) != "enabled" || !ok || id != freshID {
		t.Fatalf("the CNI plugin returned before the pod was enrolled: rules %+v, annotation %q, ztunnel %v", rules(t, freshNs.Netns), c.annotation(fresh), ok)
	}
	fresh = c.setIP(c.get(fresh), "10.213.3.20")

	// A pod of a namespace that is not ambient starts untouched; an unknown
	// pod does not start.
	webEv := cnievent.CNIEvent{Namespace: "plain", Name: "web", UID: string(web.UID), Netns: webNs.Netns, IPs: []string{"10.213.3.12"}}
	if err := cnievent.Notify(ctx, c.opts.CNIEventSocket, webEv); err != nil {
		t.Errorf("CNI ADD of a non-ambient pod: %v", err)
	}
	untouched("non-ambient namespace, after its CNI ADD", web, webNs.Netns)
	ghost := cnievent.CNIEvent{Namespace: "demo", Name: "ghost", Netns: freshNs.Netns}
	if err := cnievent.Notify(ctx, c.opts.CNIEventSocket, ghost); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Errorf("CNI ADD of a pod the API server does not know: %v", err)
	}

	// Fail closed: with no ztunnel, a new ambient pod may not start, and
	// nothing of it stays behind.
	zt.close()
	time.Sleep(300 * time.Millisecond) // the agent sees the connection end
	blockedNs := node.Pod(t, "10.213.3.21")
	blocked := c.pod("demo", "blocked", nil, "")
	bev := cnievent.CNIEvent{Namespace: "demo", Name: "blocked", UID: string(blocked.UID), Netns: blockedNs.Netns, IPs: []string{"10.213.3.21"}}
	if err := cnievent.Notify(ctx, c.opts.CNIEventSocket, bev); err == nil || !strings.Contains(err.Error(), "no ztunnel") {
		t.Fatalf("an ambient pod was let start with no ztunnel: %v", err)
	}
	if st := rules(t, blockedNs.Netns); !st.Clean() {
		t.Errorf("rules left in a pod that may not start: %+v", st)
	}
	if a := c.annotation(blocked); a != "" {
		t.Errorf("a pod that may not start is annotated %q", a)
	}
	if slices.Contains(probeSet(t, node.Netns), blockedNs.IP) {
		t.Error("a pod that may not start is in the probe set")
	}
	// A running pod enrolled live meanwhile is captured at once, marked
	// pending, and enabled once a ztunnel takes it.
	lateNs := node.Pod(t, "10.213.3.22")
	late := c.pod("demo", "late", nil, "10.213.3.22")
	eventually(t, "late enrolled, pending", func() bool {
		return rules(t, lateNs.Netns).Installed() && c.annotation(late) == "pending"
	})
	// At boot a pod's sandbox may come before ztunnel: its CNI ADD waits
	// (ztunnelWait) for a ztunnel, and starts captured once one connects.
	// The next ztunnel gets the enrolled pods, not the refused one.
	bootNs := node.Pod(t, "10.213.3.23")
	boot := c.pod("demo", "boot", nil, "")
	bootEv := cnievent.CNIEvent{Namespace: "demo", Name: "boot", UID: string(boot.UID), Netns: bootNs.Netns, IPs: []string{"10.213.3.23"}}
	bootErr := make(chan error, 1)
	go func() { bootErr <- cnievent.Notify(ctx, c.opts.CNIEventSocket, bootEv) }()
	time.Sleep(time.Second)
	zt = startZtunnel(t, c.opts.ZDSSocket)
	if err := <-bootErr; err != nil {
		t.Errorf("a pod whose CNI ADD came a second before ztunnel did not start: %v", err)
	}
	eventually(t, "the new ztunnel's snapshot", func() bool {
		_, e := zt.proxy(echo.UID)
		_, f := zt.proxy(fresh.UID)
		_, l := zt.proxy(late.UID)
		_, b := zt.proxy(boot.UID)
		return e && f && l && b && c.annotation(late) == "enabled" && c.annotation(boot) == "enabled" && rules(t, bootNs.Netns).Installed()
	})
	if _, ok := zt.proxy(blocked.UID); ok {
		t.Error("the refused pod went to the next ztunnel")
	}

	// A pod label opts a pod of another namespace in; deleting an enrolled
	// pod tells ztunnel and drops its IP from the probe set.
	c.label("plain", "web", mode, "ambient")
	eventually(t, "web enrolled by its pod label", func() bool {
		_, ok := zt.proxy(web.UID)
		return ok && rules(t, webNs.Netns).Installed() && c.annotation(web) == "enabled"
	})
	if err := srv.Client.CoreV1().Pods("plain").Delete(ctx, "web", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a deleted pod gone from ztunnel and the probe set", func() bool {
		_, ok := zt.proxy(web.UID)
		return !ok && !slices.Contains(probeSet(t, node.Netns), webNs.IP)
	})

	// Unlabel the namespace: rules gone, annotations removed, ztunnel told.
	c.label("demo", "", mode, "")
	eventually(t, "demo's pods released", func() bool {
		_, e := zt.proxy(echo.UID)
		_, f := zt.proxy(fresh.UID)
		_, l := zt.proxy(late.UID)
		_, b := zt.proxy(boot.UID)
		return !e && !f && !l && !b && rules(t, echoNs.Netns).Clean() && rules(t, freshNs.Netns).Clean() && rules(t, lateNs.Netns).Clean() &&
			rules(t, bootNs.Netns).Clean() && c.annotation(echo) == "" && c.annotation(fresh) == "" && c.annotation(late) == "" && c.annotation(boot) == ""
	})
	if ips := probeSet(t, node.Netns); len(ips) != 0 {
		t.Errorf("probe set after every pod left: %v", ips)
	}
	untouched("dataplane-mode=none, at the end", optOut, noneNs.Netns)
	stop()
	_, err := srv.Client.CoreV1().Pods("plain").Get(ctx, "web", metav1.GetOptions{})
	if !apierrors.IsNotFound(err) {
		t.Errorf("web still exists: %v", err)
	}
}

// TestInstallAndUninstall: the agent keeps its plugin in the node's CNI
// config and its probe table in the node's netns across restarts, and
// takes them out when (and only when) its DaemonSet is deleted.
func TestInstallAndUninstall(t *testing.T) {
	nstest.RequireRoot(t)
	srv := kubetest.Start(t, kubetest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	node := natest.NewNode(t, "10.213.4.1/24")
	dir := t.TempDir()
	confDir, binDir := dir+"/net.d", dir+"/bin"
	os.MkdirAll(confDir, 0o755)
	conflist := confDir + "/10-flannel.conflist"
	os.WriteFile(conflist, []byte(`{"cniVersion":"0.3.1","name":"cbr0","plugins":[{"type":"flannel"},{"type":"portmap"}]}`), 0o644)
	src := dir + "/ambit-cni"
	os.WriteFile(src, []byte("#!/bin/true\n"), 0o755)

	const ns, dsName = "istio-system", "ambit-node-agent"
	if err := srv.EnsureServiceAccount(ctx, ns, "default"); err != nil {
		t.Fatal(err)
	}
	labels := map[string]string{"app": dsName}
	ds, err := srv.Client.AppsV1().DaemonSets(ns).Create(ctx, &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Name: dsName},
		Spec: appsv1.DaemonSetSpec{Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{HostNetwork: true, Containers: []corev1.Container{{Name: "agent", Image: "example.invalid/ambit"}}}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	yes := true
	_, err = srv.Client.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: dsName + "-x1", Labels: labels, OwnerReferences: []metav1.OwnerReference{{
			APIVersion: "apps/v1", Kind: "DaemonSet", Name: dsName, UID: ds.UID, Controller: &yes}}},
		Spec: corev1.PodSpec{NodeName: nodeName, HostNetwork: true, Containers: []corev1.Container{{Name: "agent", Image: "example.invalid/ambit"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var logs syncBuffer
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("AGENT_LOGS") != "" {
			t.Logf("agent logs:\n%s", logs.b.String())
		}
	})
	self := uint32(os.Getuid())
	c := &cluster{t: t, srv: srv, ctx: ctx, opts: kubeagent.Options{
		NodeName: nodeName, Client: srv.Client, ZDSSocket: dir + "/ztunnel.sock", CNIEventSocket: dir + "/cni.sock",
		CNIConfDir: confDir, CNIBinDir: binDir, CNIPluginSrc: src,
		HostNetns: node.Netns, KubeletUID: &self, PodName: dsName + "-x1", PodNamespace: ns,
		Logger: slog.New(slog.NewTextHandler(&logs, nil)),
	}}
	t.Cleanup(func() { _ = kubeagent.Uninstall(context.Background(), c.opts) })

	type installed struct{ entry, binary, table bool }
	state := func() installed {
		var s installed
		var l struct{ Plugins []map[string]any }
		data, _ := os.ReadFile(conflist)
		if json.Unmarshal(data, &l) == nil && len(l.Plugins) > 0 {
			last := l.Plugins[len(l.Plugins)-1]
			s.entry = last["type"] == "ambit-cni" && last["agentSocket"] == c.opts.CNIEventSocket
		}
		_, err := os.Stat(binDir + "/ambit-cni")
		s.binary = err == nil
		_, err = (&nodeagent.HostProbes{Netns: node.Netns}).PodIPs(ctx)
		s.table = err == nil && tableExists(t, node.Netns, nodeagent.HostProbeTable)
		return s
	}
	all := installed{true, true, true}

	stop := c.startAgent() // ready only once the entry is in
	if got := state(); got != all {
		t.Fatalf("a ready agent has installed %+v", got)
	}
	stop() // a restart or an upgrade: the DaemonSet is still there
	if got := state(); got != all {
		t.Fatalf("after the agent stopped with its DaemonSet in place: %+v, want everything kept", got)
	}
	stop = c.startAgent()
	if err := srv.Client.AppsV1().DaemonSets(ns).Delete(ctx, dsName, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	stop()
	if got := state(); got != (installed{}) {
		t.Fatalf("after the DaemonSet was deleted the agent left %+v", got)
	}
	var l struct{ Plugins []map[string]any }
	data, _ := os.ReadFile(conflist)
	if err := json.Unmarshal(data, &l); err != nil || len(l.Plugins) != 2 {
		t.Errorf("the network's own plugins after uninstall: %s", data)
	}
	if err := kubeagent.Uninstall(ctx, c.opts); err != nil {
		t.Errorf("a second uninstall: %v", err)
	}
}

func tableExists(t *testing.T, netns, name string) bool {
	t.Helper()
	f, err := os.Open(netns)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	conn, err := nftables.New(nftables.WithNetNSFd(int(f.Fd())))
	if err != nil {
		t.Fatal(err)
	}
	tables, err := conn.ListTables()
	if err != nil {
		t.Fatal(err)
	}
	for _, tb := range tables {
		if tb.Name == name {
			return true
		}
	}
	return false
}
