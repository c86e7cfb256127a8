package local

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/ambit-mesh/ambit/controlplane"
	"github.com/ambit-mesh/ambit/controlplane/ca"
	"github.com/ambit-mesh/ambit/controlplane/config"
	"github.com/ambit-mesh/ambit/controlplane/controller"
	"github.com/ambit-mesh/ambit/controlplane/model"
	"github.com/ambit-mesh/ambit/identity"
	"github.com/ambit-mesh/ambit/nodeagent"
	"github.com/ambit-mesh/ambit/nodeagent/cnievent"
	"github.com/ambit-mesh/ambit/nsnet"
	"github.com/ambit-mesh/ambit/zds"
)

// The control plane listens on the underlay, where every node reaches it.
const (
	controlPlaneIP   = "172.30.0.1"
	controlPlanePort = 15012
	// controlPlaneHTTPPort serves the control plane's /ready, /metrics and
	// /debug endpoints on the underlay, as `ambit controlplane --http` does.
	controlPlaneHTTPPort = 15014
)

// meshParts are the mesh components the supervisor runs: the control plane
// (controlplane.ControlPlane, in this process, serving CA and xDS on the
// underlay), one node agent per node (in this process, as a kubelet's CNI
// hook would call it) and one ztunnel process per node, inside the node's
// namespace.
type meshParts struct {
	s      *Supervisor
	logger *slog.Logger
	cp     *controlplane.ControlPlane
	agents map[string]*nodeagent.Agent
	zdss   map[string]*zds.Server
	// synced releases the controller's first publish once the initial
	// config (services, policies) is in.
	synced func()

	mu         sync.Mutex
	namespaces map[string]*corev1.Namespace
	published  map[string]bool // pods published to the controller, by namespace/name
}

func (s *Supervisor) nodeDir(node string) string { return filepath.Join(s.StateDir, "nodes", node) }

// ZtunnelLog is the log file of a node's ztunnel.
func (p Paths) ZtunnelLog(node string) string { return filepath.Join(p.Dir, "ztunnel-"+node+".log") }

// startMesh brings up the control plane, node agents and ztunnels.
func (s *Supervisor) startMesh(ctx context.Context, nodes []NodeStatus) (*meshParts, error) {
	m := &meshParts{s: s, logger: s.Logger, agents: map[string]*nodeagent.Agent{}, zdss: map[string]*zds.Server{},
		namespaces: map[string]*corev1.Namespace{}, published: map[string]bool{}}
	td := identity.DefaultTrustDomain
	auth, _, err := ca.LoadOrCreate(filepath.Join(s.StateDir, "ca"), td, time.Now())
	if err != nil {
		return nil, err
	}
	// The same control plane `ambit controlplane` runs; here the supervisor
	// feeds its controller (config events, and pod status as a kubelet
	// reports it) instead of a source of its own.
	m.cp, err = controlplane.New(ctx, controlplane.Options{Authority: auth, TrustDomain: td, ServingCertTTL: 24 * time.Hour,
		OnWarnings: s.setPolicyWarnings, OnStatus: s.setL7Status, Logger: s.Logger})
	if err != nil {
		return nil, err
	}
	m.synced = m.cp.Controller.Sync()
	go func() {
		if err := m.cp.Run(ctx); err != nil {
			s.Logger.Error("controller stopped", "err", err)
		}
	}()
	l, err := nsnet.Listen(ctx, netnsPath(underlayNetns), fmt.Sprintf("%s:%d", controlPlaneIP, controlPlanePort), nsnet.SocketOptions{})
	if err != nil {
		return nil, fmt.Errorf("control plane: %w", err)
	}
	go func() { _ = m.cp.Serve(l) }()
	hl, err := nsnet.Listen(ctx, netnsPath(underlayNetns), fmt.Sprintf("%s:%d", controlPlaneIP, controlPlaneHTTPPort), nsnet.SocketOptions{})
	if err != nil {
		return nil, fmt.Errorf("control plane HTTP endpoint: %w", err)
	}
	hs := &http.Server{Handler: m.cp.HTTPHandler(), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = hs.Serve(hl) }()
	go func() { <-ctx.Done(); _ = hs.Close() }()
	s.Logger.Info("control plane up", "addr", l.Addr().String(), "http", hl.Addr().String())

	for _, n := range nodes {
		dir := s.nodeDir(n.Name)
		cred, err := ca.IssueNodeCredential(auth, td, n.Name, 7*24*time.Hour, time.Now())
		if err != nil {
			return nil, err
		}
		if err := ca.WriteCredential(dir, cred, auth.Root()); err != nil {
			return nil, err
		}
		zs, err := zds.NewServer(filepath.Join(dir, "ztunnel.sock"), s.Logger.With("component", "node-agent", "node", n.Name))
		if err != nil {
			return nil, err
		}
		go func() { _ = zs.Run(ctx) }()
		m.zdss[n.Name] = zs
		// The chained ambit-cni plugin reports each new pod here, and
		// waits for it to be enrolled before the pod may start.
		events, err := cnievent.ListenCNI(filepath.Join(dir, "cni.sock"), s.onCNIEvent, s.Logger.With("component", "node-agent", "node", n.Name))
		if err != nil {
			return nil, err
		}
		go func() { _ = events.Run(ctx) }()
		m.agents[n.Name] = &nodeagent.Agent{Node: n.Name, ZDS: zs, Logger: s.Logger.With("component", "node-agent")}
		s.wg.Add(1)
		go func() { defer s.wg.Done(); s.runZtunnel(ctx, n, dir) }()
	}
	return m, nil
}

// stop shuts the control plane down.
func (m *meshParts) stop() {
	if m != nil && m.cp != nil {
		m.cp.Stop(false)
	}
}

// apply hands a config event to the controller.
func (m *meshParts) apply(ev config.Event) {
	if m != nil && m.cp != nil {
		m.cp.Controller.Apply(ev)
	}
}

// Restart backoff of a node's ztunnel: the wait after a crash doubles
// from ztunnelBackoffMin to ztunnelBackoffMax, and starts again from the
// minimum once a run has stayed up for ztunnelHealthyAfter.
const (
	ztunnelBackoffMin   = 200 * time.Millisecond
	ztunnelBackoffMax   = 10 * time.Second
	ztunnelHealthyAfter = 3 * time.Second
	// ztunnelStopTimeout bounds a ztunnel's drain when the mesh goes down.
	ztunnelStopTimeout = 10 * time.Second
)

// restartBackoff is the wait before restarting a process that exited.
type restartBackoff struct {
	min, max, healthyAfter time.Duration
	next                   time.Duration
}

// after returns the wait before the next start, given how long the run
// that just ended lasted.
func (b *restartBackoff) after(ran time.Duration) time.Duration {
	if b.next == 0 || ran >= b.healthyAfter {
		b.next = b.min
	}
	d := b.next
	b.next = min(2*b.next, b.max)
	return d
}

// runZtunnel runs a node's ztunnel inside the node namespace until ctx is
// done, restarting it if it exits (with backoff). A ztunnel told to stop
// with SIGTERM says so on a pipe before it closes anything: its
// replacement starts at once, binds every pod's listeners next to the old
// ones (SO_REUSEPORT), and the old one hands over and drains in the
// background, so that no new connection is refused (as upstream, SO_REUSEPORT hand-off).
func (s *Supervisor) runZtunnel(ctx context.Context, n NodeStatus, dir string) {
	backoff := restartBackoff{min: ztunnelBackoffMin, max: ztunnelBackoffMax, healthyAfter: ztunnelHealthyAfter}
	var draining sync.WaitGroup
	defer draining.Wait()
	for ctx.Err() == nil {
		zp, err := s.startZtunnel(n, dir)
		if err != nil {
			s.Logger.Error("starting ztunnel", "node", n.Name, "err", err)
			return
		}
		s.Logger.Info("ztunnel started", "node", n.Name, "pid", zp.cmd.Process.Pid)
		select {
		case err := <-zp.exited:
			d := backoff.after(time.Since(zp.started))
			s.Logger.Warn("ztunnel exited; restarting", "node", n.Name, "err", err, "ran", time.Since(zp.started).Round(time.Millisecond), "backoff", d)
			select {
			case <-time.After(d):
			case <-ctx.Done():
				return
			}
		case <-zp.draining:
			s.Logger.Info("ztunnel draining; starting its replacement", "node", n.Name, "pid", zp.cmd.Process.Pid)
			draining.Add(1)
			go func() {
				defer draining.Done()
				select {
				case err := <-zp.exited:
					s.Logger.Info("drained ztunnel exited", "node", n.Name, "pid", zp.cmd.Process.Pid, "err", err)
				case <-ctx.Done():
					zp.stop()
				}
			}()
		case <-ctx.Done():
			zp.stop()
			return
		}
	}
}

// ztunnelProc is one run of a node's ztunnel.
type ztunnelProc struct {
	cmd      *exec.Cmd
	started  time.Time
	exited   chan error    // receives the exit once
	draining chan struct{} // closed when the ztunnel says it drains
}

// stop ends a ztunnel when the mesh goes down: SIGINT (no hand-off to
// wait for), then SIGKILL after ztunnelStopTimeout.
func (zp *ztunnelProc) stop() {
	_ = syscall.Kill(zp.cmd.Process.Pid, syscall.SIGINT)
	select {
	case <-zp.exited:
	case <-time.After(ztunnelStopTimeout):
		_ = syscall.Kill(-zp.cmd.Process.Pid, syscall.SIGKILL)
		<-zp.exited
	}
}

func (s *Supervisor) startZtunnel(n NodeStatus, dir string) (*ztunnelProc, error) {
	logf, err := os.OpenFile(s.paths.ZtunnelLog(n.Name), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("ztunnel log: %w", err)
	}
	// The ztunnel writes "draining" on fd 3 when it starts to drain.
	pr, pw, err := os.Pipe()
	if err != nil {
		logf.Close()
		return nil, fmt.Errorf("ztunnel drain pipe: %w", err)
	}
	// ambit-ztunnel is `ambit ztunnel` in a binary of its own, which
	// links only the data plane.
	cmd := exec.Command(s.self, "local", "nsexec", "--die-with-parent", n.Netns, "--", filepath.Join(s.binDir, "ambit-ztunnel"),
		"--node", n.Name, "--control-plane", fmt.Sprintf("%s:%d", controlPlaneIP, controlPlanePort),
		"--credential-dir", dir, "--zds-socket", filepath.Join(dir, "ztunnel.sock"),
		"--admin", "127.0.0.1:15000", "--readiness", ":15021", "--log-format", "json", "--drain-notify-fd", "3")
	cmd.Stdout, cmd.Stderr, cmd.Dir = logf, logf, "/"
	cmd.ExtraFiles = []*os.File{pw}
	cmd.Env = []string{"PATH=" + s.binDir + ":/usr/sbin:/usr/bin:/sbin:/bin"}
	if s.ZtunnelWorkers > 0 {
		cmd.Args = append(cmd.Args, "--workers", strconv.Itoa(s.ZtunnelWorkers))
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	err = cmd.Start()
	pw.Close()
	if err != nil {
		logf.Close()
		pr.Close()
		return nil, err
	}
	zp := &ztunnelProc{cmd: cmd, started: time.Now(), exited: make(chan error, 1), draining: make(chan struct{})}
	go func() {
		defer pr.Close()
		line, _ := bufio.NewReader(pr).ReadString('\n')
		if strings.TrimSpace(line) == "draining" {
			close(zp.draining)
		}
	}()
	go func() {
		err := cmd.Wait()
		logf.Close()
		zp.exited <- err
	}()
	return zp, nil
}

// setNamespace records a namespace and returns whether its labels changed.
func (m *meshParts) setNamespace(ns *corev1.Namespace, deleted bool) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	old := m.namespaces[ns.Name]
	if deleted {
		delete(m.namespaces, ns.Name)
		return old != nil
	}
	m.namespaces[ns.Name] = ns
	if old == nil {
		return true
	}
	a, _ := json.Marshal(old.Labels)
	b, _ := json.Marshal(ns.Labels)
	return string(a) != string(b)
}

func (m *meshParts) namespace(name string) *corev1.Namespace {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.namespaces[name]
}

// podObject is a pod as a kubelet reports it: its spec with the node
// chosen, and a status with IP and phase, and the redirection annotation
// once its traffic is captured. The caller holds s.mu.
func podObject(p *podProc) *corev1.Pod {
	pod := p.spec.DeepCopy()
	pod.Spec.NodeName = p.status.Node
	pod.Status.PodIP = p.status.IP
	switch p.status.Phase {
	case "Running":
		pod.Status.Phase = corev1.PodRunning
	case "Succeeded":
		pod.Status.Phase = corev1.PodSucceeded
	case "Failed":
		pod.Status.Phase = corev1.PodFailed
	default:
		pod.Status.Phase = corev1.PodPending
	}
	if p.status.Redirection != "" {
		if pod.Annotations == nil {
			pod.Annotations = map[string]string{}
		}
		pod.Annotations[model.AnnotationRedirection] = p.status.Redirection
	}
	return pod
}

// publishPods reports every pod's status to the controller, and the
// removal of pods that are gone, as a kubelet updates the API server. The
// controller's store drops reports that change nothing. The caller holds
// s.mu.
func (s *Supervisor) publishPods() {
	m := s.mesh
	if m == nil || m.cp == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for key, p := range s.pods {
		pod := podObject(p)
		ty := config.Updated
		if !m.published[key] {
			ty, m.published[key] = config.Added, true
		}
		m.apply(config.Event{Type: ty, Key: config.KeyOf(pod), Object: pod})
	}
	for key := range m.published {
		if _, ok := s.pods[key]; !ok {
			delete(m.published, key)
			ns, name, _ := strings.Cut(key, "/")
			m.apply(config.Event{Type: config.Deleted, Key: config.Key{Kind: config.KindPod, Namespace: ns, Name: name}})
		}
	}
}

// setPolicyWarnings records the controller's policy warnings in the state,
// for `ambit local status`.
func (s *Supervisor) setPolicyWarnings(texts []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.state.PolicyWarnings = texts
	if err := writeState(s.StateDir, &s.state); err != nil {
		s.Logger.Error("writing state", "err", err)
	}
}

// setL7Status records waypoint, binding and route status for `ambit local
// status`.
func (s *Supervisor) setL7Status(st controller.Status) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.state.Waypoints, s.state.BindingProblems, s.state.Routes = st.Waypoints, st.BindingProblems, st.Routes
	if err := writeState(s.StateDir, &s.state); err != nil {
		s.Logger.Error("writing state", "err", err)
	}
}

// onCNIEvent enrolls a pod the CNI plugin just networked, if it belongs
// in the mesh; an error keeps the pod from starting.
func (s *Supervisor) onCNIEvent(ctx context.Context, ev cnievent.CNIEvent) error {
	s.mu.Lock()
	var p *podProc
	for _, q := range s.pods {
		if q.status.UID == ev.UID {
			p = q
		}
	}
	s.mu.Unlock()
	if p == nil {
		return fmt.Errorf("unknown pod %s/%s (uid %s)", ev.Namespace, ev.Name, ev.UID)
	}
	return s.reconcileEnrollment(ctx, p)
}

// reconcileEnrollment enrolls or removes a pod as its labels and its
// namespace's say, live, without restarting it.
func (s *Supervisor) reconcileEnrollment(ctx context.Context, p *podProc) error {
	if s.mesh == nil || p.status.Netns == "" || p.spec.Spec.HostNetwork {
		return nil
	}
	want := model.Enrolled(p.spec, s.mesh.namespace(p.spec.Namespace))
	agent := s.mesh.agents[p.node.Name]
	ap := nodeagentPod(p)
	s.mu.Lock()
	have := p.status.Redirection != ""
	s.mu.Unlock()
	switch {
	case want && !have:
		state, err := agent.Enroll(ctx, ap)
		if err != nil {
			s.Logger.Error("enrollment", "pod", ap.Namespace+"/"+ap.Name, "err", err)
			return err
		}
		s.update(func() { p.status.Redirection = state })
	case !want && have:
		if err := agent.Unenroll(ctx, ap); err != nil {
			s.Logger.Error("unenrollment", "pod", ap.Namespace+"/"+ap.Name, "err", err)
		}
		s.update(func() { p.status.Redirection = "" })
	}
	return nil
}

func nodeagentPod(p *podProc) nodeagent.Pod {
	return nodeagent.Pod{UID: p.status.UID, Namespace: p.spec.Namespace, Name: p.spec.Name,
		ServiceAccount: serviceAccount(p.spec), Netns: p.status.Netns, Annotations: p.spec.Annotations}
}
