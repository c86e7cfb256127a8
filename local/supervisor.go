package local

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/ambit-mesh/ambit/controlplane/config"
	"github.com/ambit-mesh/ambit/controlplane/filesource"
	"github.com/ambit-mesh/ambit/controlplane/model"
	securityclient "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// Supervisor owns a running local mesh: its namespaces, pod processes and
// state file. It runs in `ambit local run`, which `ambit local up` starts in
// the background.
type Supervisor struct {
	ConfigDir string
	StateDir  string
	Nodes     int
	// ZtunnelWorkers is each ztunnel's --workers (0: ztunnel's default).
	ZtunnelWorkers int
	Logger         *slog.Logger

	self, binDir string
	paths        Paths
	cni          *cni

	mu       sync.Mutex
	state    State
	pods     map[string]*podProc // by namespace/name
	services map[string]*corev1.Service
	vips     *vipAllocator
	wg       sync.WaitGroup
	mesh     *meshParts
}

// podProc is one pod: its spec, status and running process.
type podProc struct {
	spec   *corev1.Pod
	node   NodeStatus
	status *PodStatus // guarded by Supervisor.mu
	cancel context.CancelFunc
	done   chan struct{}
}

// Run builds the mesh, keeps it in line with the config directory, and
// tears it down when ctx is done.
func (s *Supervisor) Run(ctx context.Context) error {
	var err error
	s.self, s.binDir, err = selfBinDir()
	if err != nil {
		return err
	}
	if s.StateDir, err = filepath.Abs(s.StateDir); err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	s.paths = Paths{s.StateDir}
	s.pods = map[string]*podProc{}
	s.services = map[string]*corev1.Service{}
	s.vips = newVIPAllocator(serviceCIDR)
	s.cni = &cni{self: s.self, binDir: s.binDir, dir: s.paths.CNIDir(), stderr: logWriter{s.Logger},
		agentSocket: func(node string) string { return filepath.Join(s.nodeDir(node), "cni.sock") }}
	s.state = State{Supervisor: os.Getpid(), ConfigDir: s.ConfigDir, BinDir: s.binDir, Nodes: []NodeStatus{}, Pods: []PodStatus{}, Services: []ServiceStatus{}}
	for _, d := range []string{s.StateDir, filepath.Join(s.StateDir, "pods"), s.paths.CNIDir()} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("state directory: %w", err)
		}
	}
	start, err := procStartTime(os.Getpid())
	if err != nil {
		return fmt.Errorf("reading own start time: %w", err)
	}
	// Before anything is created or cleaned: another live mesh's
	// namespaces must not be touched.
	lock, held, err := acquireLock(LockPath, lockOwner{PID: os.Getpid(), Start: start, StateDir: s.StateDir})
	if err != nil {
		return err
	}
	if held != nil {
		return fmt.Errorf("another local mesh is running (%s); only one runs per machine", held)
	}
	defer lock.Close() // after teardown: released last
	if err := os.WriteFile(s.paths.PIDFile(), pidFileContent(os.Getpid(), start), 0o644); err != nil {
		return fmt.Errorf("writing pid file: %w", err)
	}
	defer s.teardown()

	if err := s.buildNodes(); err != nil {
		s.fail(err)
		return err
	}
	snap, err := filesource.LoadDir(s.ConfigDir)
	if err != nil {
		err = fmt.Errorf("config %s: %w", s.ConfigDir, err)
		s.fail(err)
		return err
	}
	mesh, err := s.startMesh(ctx, s.state.Nodes)
	if err != nil {
		err = fmt.Errorf("mesh: %w", err)
		s.fail(err)
		return err
	}
	s.mu.Lock()
	s.mesh = mesh
	s.mu.Unlock()
	for _, ns := range snap.Namespaces() {
		s.mesh.setNamespace(ns, false)
	}
	s.waitZtunnels(ctx, 20*time.Second)
	// The controller's first state: every object but pods and services
	// straight from the config, services with their VIPs; pods follow as
	// they get their network, as a kubelet reports them.
	for _, o := range snap.Objects() {
		if k := filesource.KeyOf(o); forController(k.Kind) {
			s.mesh.apply(config.Event{Type: config.Added, Key: k, Object: o})
		}
	}
	for _, svc := range snap.Services() {
		s.ensureService(svc)
	}
	s.mesh.synced()
	for _, pod := range snap.Pods() {
		s.ensurePod(ctx, pod)
	}
	for _, o := range snap.Objects() {
		if gw, ok := o.(*gatewayv1.Gateway); ok && model.IsWaypoint(gw) {
			s.ensureWaypoint(ctx, gw)
		}
	}
	s.update(func() { s.state.Ready = true })
	s.Logger.Info("local mesh up", "nodes", len(s.state.Nodes), "pods", len(s.pods), "services", len(s.services))

	// Follow the directory: the source sends Added for everything first,
	// which ensure* treats as no-ops for what already runs.
	src := filesource.New(s.ConfigDir, s.Logger)
	events := make(chan config.Event, 64)
	srcErr := make(chan error, 1)
	go func() { srcErr <- src.Run(ctx, events) }()
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-srcErr:
			if err != nil {
				s.Logger.Error("config watch stopped; the mesh keeps running as it is", "err", err)
			}
			srcErr = nil
		case ev := <-events:
			s.handle(ctx, ev)
		case <-src.ErrorsChanged():
			s.setConfigErrors(configErrors(src.Errors(), s.ConfigDir))
		}
	}
}

// setConfigErrors records the config source's current problems in the
// state, so that `ambit local status` shows every rejected file. They change
// nothing in the model (a rejected file keeps its previous objects), so the
// state is written without a push.
func (s *Supervisor) setConfigErrors(errs []ConfigError) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if slices.Equal(errs, s.state.ConfigErrors) {
		return
	}
	s.state.ConfigErrors = errs
	if err := writeState(s.StateDir, &s.state); err != nil {
		s.Logger.Error("writing state", "err", err)
	}
}

// forController says which kinds go from the config straight to the
// controller. Pods and Services go through the supervisor, which plays the
// kubelet's part (pod status) and the API server's (service VIPs); the
// LocalCluster settings are the runtime's own.
func forController(kind string) bool {
	switch kind {
	case config.KindPod, config.KindService, "LocalCluster":
		return false
	}
	return true
}

func (s *Supervisor) handle(ctx context.Context, ev config.Event) {
	if forController(ev.Key.Kind) {
		s.mesh.apply(ev)
	}
	switch obj := ev.Object.(type) {
	case *securityclient.PeerAuthentication:
		s.Logger.Info("peer authentication "+ev.Type.String(), "policy", ev.Key.Namespace+"/"+ev.Key.Name)
	case *securityclient.AuthorizationPolicy:
		s.Logger.Info("authorization policy "+ev.Type.String(), "policy", ev.Key.Namespace+"/"+ev.Key.Name)
	case *corev1.Namespace:
		if s.mesh.setNamespace(obj, ev.Type == config.Deleted) {
			s.Logger.Info("namespace changed; reconciling enrollment", "namespace", obj.Name, "labels", obj.Labels)
			s.mu.Lock()
			var inNS []*podProc
			for _, p := range s.pods {
				if p.spec.Namespace == obj.Name {
					inNS = append(inNS, p)
				}
			}
			s.mu.Unlock()
			for _, p := range inNS {
				_ = s.reconcileEnrollment(ctx, p) // logged; the pod keeps running as it was
			}
		}
	case *corev1.Pod:
		if ev.Type == config.Deleted {
			s.Logger.Info("pod deleted from config", "pod", ev.Key.Namespace+"/"+ev.Key.Name)
			s.removePod(ev.Key.Namespace + "/" + ev.Key.Name)
			return
		}
		s.ensurePod(ctx, obj)
	case *corev1.Service:
		if ev.Type == config.Deleted {
			s.removeService(obj)
			return
		}
		s.ensureService(obj)
	case *gatewayv1.Gateway:
		if ev.Type == config.Deleted {
			s.removeWaypoint(ev.Key.Namespace, ev.Key.Name)
			return
		}
		s.ensureWaypoint(ctx, obj)
	}
}

// logWriter sends CNI plugin diagnostics to the log.
type logWriter struct{ l *slog.Logger }

func (w logWriter) Write(p []byte) (int, error) {
	w.l.Info("cni plugin", "stderr", string(p))
	return len(p), nil
}

// update changes the state under the lock and writes the state file.
func (s *Supervisor) update(fn func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fn()
	s.state.Pods = s.state.Pods[:0]
	for _, p := range s.pods {
		s.state.Pods = append(s.state.Pods, *p.status)
	}
	sort.Slice(s.state.Pods, func(i, j int) bool {
		a, b := s.state.Pods[i], s.state.Pods[j]
		return a.Namespace+"/"+a.Name < b.Namespace+"/"+b.Name
	})
	if err := writeState(s.StateDir, &s.state); err != nil {
		s.Logger.Error("writing state", "err", err)
	}
	s.publishPods()
}

// waitZtunnels waits until every node's ztunnel has connected to its
// node agent.
func (s *Supervisor) waitZtunnels(ctx context.Context, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for _, zs := range s.mesh.zdss {
		for zs.Connected() == 0 && time.Now().Before(deadline) && ctx.Err() == nil {
			time.Sleep(20 * time.Millisecond)
		}
	}
}

func (s *Supervisor) fail(err error) {
	s.Logger.Error("local mesh failed", "err", err)
	s.update(func() { s.state.Error = err.Error() })
}

func (s *Supervisor) buildNodes() error {
	nodes, err := planNodes(s.Nodes)
	if err != nil {
		return err
	}
	if err := createUnderlay(); err != nil {
		return fmt.Errorf("underlay: %w", err)
	}
	for _, n := range nodes {
		if err := createNode(n, nodes); err != nil {
			return err
		}
		s.Logger.Info("node up", "node", n.Name, "podCIDR", n.PodCIDR, "underlayIP", n.UnderlayIP)
	}
	s.update(func() { s.state.Nodes = nodes })
	return nil
}

func (s *Supervisor) ensureService(svc *corev1.Service) {
	key := svc.Namespace + "/" + svc.Name
	s.mu.Lock()
	old, ok := s.services[key]
	s.mu.Unlock()
	if ok && sameJSON(old, svc) {
		return
	}
	s.update(func() {
		s.vips.release(svc.Namespace, svc.Name)
		vip, err := s.vips.allocate(svc)
		if err != nil {
			s.Logger.Error("service", "service", key, "err", err)
			return
		}
		s.services[key] = svc
		// As an API server would: the published Service carries its VIP.
		pub := svc.DeepCopy()
		if vip.IsValid() {
			pub.Spec.ClusterIP = vip.String()
		}
		s.mesh.apply(config.Event{Type: config.Updated, Key: config.KeyOf(pub), Object: pub})
		st := serviceStatus(svc, vip)
		s.state.Services = replaceService(s.state.Services, st)
		s.Logger.Info("service", "service", key, "clusterIP", st.ClusterIP)
	})
}

func (s *Supervisor) removeService(svc *corev1.Service) {
	key := svc.Namespace + "/" + svc.Name
	s.update(func() {
		delete(s.services, key)
		s.vips.release(svc.Namespace, svc.Name)
		s.mesh.apply(config.Event{Type: config.Deleted, Key: config.Key{Kind: config.KindService, Namespace: svc.Namespace, Name: svc.Name}})
		var out []ServiceStatus
		for _, st := range s.state.Services {
			if st.Namespace != svc.Namespace || st.Name != svc.Name {
				out = append(out, st)
			}
		}
		s.state.Services = out
	})
}

func replaceService(list []ServiceStatus, st ServiceStatus) []ServiceStatus {
	out := []ServiceStatus{st}
	for _, o := range list {
		if o.Namespace != st.Namespace || o.Name != st.Name {
			out = append(out, o)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Namespace+"/"+out[i].Name < out[j].Namespace+"/"+out[j].Name })
	return out
}

func sameJSON(a, b any) bool {
	ja, errA := json.Marshal(a)
	jb, errB := json.Marshal(b)
	return errA == nil && errB == nil && string(ja) == string(jb)
}

// ensurePod creates the pod, or recreates it when its spec changed.
func (s *Supervisor) ensurePod(ctx context.Context, pod *corev1.Pod) {
	key := pod.Namespace + "/" + pod.Name
	s.mu.Lock()
	old, ok := s.pods[key]
	s.mu.Unlock()
	if ok {
		if sameJSON(old.spec, pod) {
			return
		}
		s.Logger.Info("pod changed in config; recreating", "pod", key)
		s.removePod(key)
	}
	s.mu.Lock()
	perNode := map[string]int{}
	for _, p := range s.pods {
		perNode[p.node.Name]++
	}
	nodes := s.state.Nodes
	s.mu.Unlock()

	st := &PodStatus{Namespace: pod.Namespace, Name: pod.Name, UID: newUID(), Phase: "Pending",
		ServiceAccount: serviceAccount(pod), Log: s.paths.PodLog(pod.Namespace, pod.Name)}
	p := &podProc{spec: pod, status: st, done: make(chan struct{})}
	nodeName, err := placePod(pod, nodes, perNode)
	if err != nil {
		close(p.done)
		s.update(func() { st.Phase, st.Message = "Failed", err.Error(); s.pods[key] = p })
		s.Logger.Error("pod", "pod", key, "err", err)
		return
	}
	for _, n := range nodes {
		if n.Name == nodeName {
			p.node = n
		}
	}
	st.Node = nodeName
	s.update(func() { s.pods[key] = p })

	if err := s.startNetwork(ctx, p); err != nil {
		close(p.done)
		s.update(func() { st.Phase, st.Message = "Failed", err.Error() })
		s.Logger.Error("pod network", "pod", key, "err", err)
		return
	}
	argv, err := podArgv(pod)
	if err == nil {
		st.Env, err = podEnv(pod, st, s.binDir)
	}
	if err != nil {
		close(p.done)
		s.update(func() { st.Phase, st.Message = "Failed", err.Error() })
		s.Logger.Error("pod", "pod", key, "err", err)
		return
	}
	pctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	p.cancel = cancel
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer close(p.done)
		s.runPod(pctx, p, argv)
	}()
}

// startNetwork creates the pod's namespace and attaches it with CNI. A
// host-network pod shares its node's namespace instead.
func (s *Supervisor) startNetwork(ctx context.Context, p *podProc) error {
	st := p.status
	if p.spec.Spec.HostNetwork {
		s.update(func() { st.Netns, st.IP = p.node.Netns, p.node.UnderlayIP })
		return nil
	}
	path, err := createNetns(podNetnsName(st.Namespace, st.Name))
	if err != nil {
		return err
	}
	s.update(func() { st.Netns = path })
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	ip, err := s.cni.add(cctx, p.node, st)
	if err != nil {
		return err
	}
	if _, err := netip.ParseAddr(ip); err != nil {
		return fmt.Errorf("CNI gave pod %s/%s a bad IP %q", st.Namespace, st.Name, ip)
	}
	s.update(func() { st.IP = ip })
	s.Logger.Info("pod network", "pod", st.Namespace+"/"+st.Name, "node", p.node.Name, "ip", ip, "netns", path)
	return nil
}

// runPod runs the pod's process, restarting it as restartPolicy says,
// until ctx is done.
func (s *Supervisor) runPod(ctx context.Context, p *podProc, argv []string) {
	st := p.status
	key := st.Namespace + "/" + st.Name
	policy := p.spec.Spec.RestartPolicy
	if policy == "" {
		policy = corev1.RestartPolicyAlways
	}
	backoff := time.Second
	for {
		started := time.Now()
		code, err := s.runOnce(ctx, p, argv)
		if ctx.Err() != nil {
			return
		}
		msg := fmt.Sprintf("exited with code %d", code)
		if err != nil {
			msg = err.Error()
		}
		restart := policy == corev1.RestartPolicyAlways || (policy == corev1.RestartPolicyOnFailure && (code != 0 || err != nil))
		if !restart {
			phase := "Succeeded"
			if code != 0 || err != nil {
				phase = "Failed"
			}
			s.update(func() { st.Phase, st.Message, st.PID = phase, msg, 0 })
			s.Logger.Info("pod finished", "pod", key, "phase", phase, "detail", msg)
			return
		}
		if time.Since(started) > 10*time.Second {
			backoff = time.Second
		}
		s.update(func() { st.Message, st.PID = msg+"; restarting in "+backoff.String(), 0; st.Restarts++ })
		s.Logger.Warn("pod exited; restarting", "pod", key, "detail", msg, "backoff", backoff)
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}

// runOnce starts the pod's process in its namespace and waits for it to
// end, or kills it (SIGTERM, then SIGKILL after 5 s) when ctx is done.
func (s *Supervisor) runOnce(ctx context.Context, p *podProc, argv []string) (int, error) {
	st := p.status
	logf, err := os.OpenFile(st.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return -1, fmt.Errorf("pod log: %w", err)
	}
	defer logf.Close()
	cmd := exec.Command(s.self, append([]string{"local", "nsexec", "--die-with-parent", st.Netns, "--"}, argv...)...)
	cmd.Env, cmd.Stdout, cmd.Stderr, cmd.Dir = st.Env, logf, logf, "/"
	// Own process group, so the whole pod can be signalled; and killed if
	// the supervisor dies without cleaning up.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return -1, fmt.Errorf("starting %v: %w", argv, err)
	}
	s.update(func() { st.Phase, st.PID, st.Message = "Running", cmd.Process.Pid, "" })
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	select {
	case err := <-waited:
		return exitCode(err)
	case <-ctx.Done():
	}
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
	select {
	case err := <-waited:
		return exitCode(err)
	case <-time.After(5 * time.Second):
	}
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	return exitCode(<-waited)
}

func exitCode(err error) (int, error) {
	if err == nil {
		return 0, nil
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), nil
	}
	return -1, err
}

// removePod stops the pod's process and removes its network.
func (s *Supervisor) removePod(key string) {
	s.mu.Lock()
	p, ok := s.pods[key]
	s.mu.Unlock()
	if !ok {
		return
	}
	if p.cancel != nil {
		p.cancel()
	}
	<-p.done
	st := p.status
	if st.Redirection != "" && s.mesh != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := s.mesh.agents[p.node.Name].Unenroll(ctx, nodeagentPod(p)); err != nil {
			s.Logger.Warn("pod unenrollment", "pod", key, "err", err)
		}
		cancel()
	}
	if st.Netns != "" && !p.spec.Spec.HostNetwork {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if err := s.cni.del(ctx, p.node, st); err != nil {
			s.Logger.Warn("pod network teardown", "pod", key, "err", err)
		}
		cancel()
		if err := deleteNetns(filepath.Base(st.Netns)); err != nil {
			s.Logger.Warn("pod network teardown", "pod", key, "err", err)
		}
	}
	s.update(func() { delete(s.pods, key) })
}

// teardown removes every pod, node and the underlay.
func (s *Supervisor) teardown() {
	s.mu.Lock()
	keys := make([]string, 0, len(s.pods))
	for k := range s.pods {
		keys = append(keys, k)
	}
	s.mu.Unlock()
	var wg sync.WaitGroup
	for _, k := range keys {
		wg.Add(1)
		go func() { defer wg.Done(); s.removePod(k) }()
	}
	wg.Wait()
	s.mesh.stop()
	s.wg.Wait()
	if err := removeNamespaces(s.Logger); err != nil {
		s.Logger.Warn("teardown", "err", err)
	}
	_ = os.Remove(s.paths.PIDFile())
	s.Logger.Info("local mesh down")
}
