// Package kubeagent is Ambit's node agent on Kubernetes (`ambit node-agent`,
// one pod per node in a DaemonSet, hostNetwork), the counterpart of
// istio-cni's node agent. It
//
//   - keeps the ambit-cni plugin chained last in the node's CNI
//     configuration (its own file, a copy of the primary network's with
//     our plugin, named to sort first; or in the primary file itself), and
//     the plugin binary in the CNI bin directory (nodeagent/cniconf);
//   - watches the pods of its node (field selector spec.nodeName) and all
//     namespaces, and enrolls or releases pods live as their labels and
//     their namespace's say (model.Enrolled, plus kube-system and ztunnel's
//     own pods never), with the shared enrollment of package nodeagent:
//     capture rules in the pod's network namespace, the namespace handed
//     to ztunnel over ZDS, the pod's IPs in the node's probe SNAT set; then
//     the pod annotation ambient.istio.io/redirection: enabled, from which
//     the control plane marks the workload HBONE;
//   - learns a new pod's network namespace from the CNI plugin, before the
//     pod starts; after its own restart, by scanning the host's /proc for
//     the namespace that holds the pod's IP (nodeagent.ScanNetns);
//   - SNATs the kubelet's probes on the host to 169.254.7.127, which the
//     in-pod rules let through (nodeagent.HostProbes).
//
// Fail closed: the CNI plugin fails a pod's sandbox when the agent cannot be
// reached or cannot enroll a pod that belongs in the mesh (also when no
// ztunnel connects within a few seconds: at boot ztunnel starts alongside
// the pods), so such a pod never runs uncaptured; the runtime retries it. The rules live in the pod's namespace, so an agent restart
// does not touch them: traffic keeps going to ztunnel (or waits for one),
// never around it. A starting agent reconciles every pod of the node
// (re-installing rules atomically, handing the namespaces to the ZDS
// snapshot) before it serves ztunnel, the CNI plugin or its readiness.
//
// Uninstall contract: on SIGTERM the agent leaves everything in place (an
// upgrade, a restart, a node shutdown), unless its own DaemonSet is gone
// or being deleted (as istio-cni): then it takes its node out of the mesh,
// in this order: the plugin entry out of the CNI configuration and the
// plugin binary out of the bin directory (new pods start with the
// network's own plugins only), the capture rules out of every pod's
// network namespace on the node (found by scanning the host's /proc, so
// pods enrolled by an earlier run are released too) and the redirection
// annotation off the pods, and last the host probe table (the kubelet's
// probes keep passing while pods are still captured). Uninstalling the
// mesh is the one event that gives pods their direct network back; istio-cni
// leaves them captured, and broken once ztunnel is gone, until each pod is
// restarted. `ambit node-agent --uninstall` does the same at once, without
// the API server (the annotations stay).
package kubeagent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	"github.com/ambit-mesh/ambit/controlplane/model"
	"github.com/ambit-mesh/ambit/nodeagent"
	"github.com/ambit-mesh/ambit/nodeagent/cniconf"
	"github.com/ambit-mesh/ambit/nodeagent/cnievent"
	"github.com/ambit-mesh/ambit/redirect"
	"github.com/ambit-mesh/ambit/zds"
)

// Defaults of Options, as the DaemonSet mounts them.
const (
	DefaultCNIConfDir     = "/etc/cni/net.d"
	DefaultCNIOwnFile     = "01-ambit-cni.conflist"
	DefaultCNIBinDir      = "/opt/cni/bin"
	DefaultCNIPluginSrc   = "/usr/local/bin/ambit-cni"
	DefaultCNIEventSocket = "/var/run/ambit/cni.sock"
	DefaultHostProc       = "/proc"
	DefaultSystemNs       = "istio-system"
	// ztunnelLabel marks ztunnel's pods (in the system namespace), which
	// are never enrolled, as upstream.
	ztunnelLabel = "ztunnel"
)

// DefaultExcludeNamespaces are never enrolled; the CNI plugin does not even
// ask the agent about their pods.
var DefaultExcludeNamespaces = []string{"kube-system"}

// Options configure the agent.
type Options struct {
	NodeName string
	Client   kubernetes.Interface

	// CNIConfDir is the node's CNI configuration directory; empty: the
	// agent does not manage the CNI configuration (tests).
	CNIConfDir string
	// CNIOwnFile, if set, names the agent's own configuration file in
	// CNIConfDir (cniconf.Installer.OwnFile): a copy of the primary with
	// our plugin, which a network plugin rewriting its own file at boot
	// cannot take our plugin out of. Empty: chained into the primary.
	CNIOwnFile string
	// CNIBinDir and CNIPluginSrc: the plugin binary is copied from
	// CNIPluginSrc into CNIBinDir (skipped when CNIPluginSrc is empty).
	CNIBinDir, CNIPluginSrc string
	// CNIEventSocket is where the agent hears the plugin; the same path
	// must name it on the host (the plugin runs there).
	CNIEventSocket string
	// ExcludeNamespaces are never enrolled (default kube-system).
	ExcludeNamespaces []string
	// ZDSSocket is where ztunnel connects (default /var/run/ztunnel/ztunnel.sock).
	ZDSSocket string
	// HostProc is the host's /proc, scanned for pods' network namespaces
	// (the DaemonSet runs with hostPID, or mounts the host's /proc here).
	HostProc string
	// HostNetns is the path of the node's network namespace, where the
	// probe SNAT goes; empty: the agent's own (hostNetwork).
	HostNetns string
	// KubeletUID restricts the probe SNAT to the kubelet's sockets; nil:
	// found under HostProc, else any local socket.
	KubeletUID *uint32
	// SystemNamespace holds ztunnel (pods labeled app=ztunnel there are
	// never enrolled); default istio-system.
	SystemNamespace string
	// PodName and PodNamespace name the agent's own pod (from the downward
	// API): on exit, the agent uninstalls when its DaemonSet is gone or
	// being deleted. Empty: it never does.
	PodName, PodNamespace string
	// ReadyAddr serves /readyz and /healthz (empty: none).
	ReadyAddr string
	Logger    *slog.Logger
}

func (o *Options) defaults() error {
	if o.NodeName == "" {
		return errors.New("node agent: no node name (--node-name or $NODE_NAME)")
	}
	if o.Client == nil {
		return errors.New("node agent: no Kubernetes client")
	}
	if o.CNIEventSocket == "" {
		o.CNIEventSocket = DefaultCNIEventSocket
	}
	if o.ExcludeNamespaces == nil {
		o.ExcludeNamespaces = DefaultExcludeNamespaces
	}
	if o.ZDSSocket == "" {
		o.ZDSSocket = zds.DefaultSocketPath
	}
	if o.HostProc == "" {
		o.HostProc = DefaultHostProc
	}
	if o.SystemNamespace == "" {
		o.SystemNamespace = DefaultSystemNs
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// podState is what the agent holds for an enrolled pod.
type podState struct {
	uid             types.UID
	namespace, name string
	netns           *os.File // nil: known (enrolled by an earlier run) without its namespace
	netnsID         nodeagent.NetnsID
	ips             []netip.Addr
	state           string // nodeagent.Enabled or Pending: the annotation's value
}

func (p *podState) netnsPath() string {
	if p.netns == nil {
		return ""
	}
	return fmt.Sprintf("/proc/self/fd/%d", p.netns.Fd())
}

// Agent is the node agent of one node.
type Agent struct {
	o      Options
	log    *slog.Logger
	core   *nodeagent.Agent
	probes *nodeagent.HostProbes
	cni    *cniconf.Installer

	podFactory, nsFactory informers.SharedInformerFactory
	pods                  corelisters.PodLister
	nss                   corelisters.NamespaceLister
	queue                 workqueue.TypedRateLimitingInterface[string]

	// mu serializes every change of enrollment (informer and CNI plugin).
	mu       sync.Mutex
	zds      *zds.Server
	enrolled map[types.UID]*podState
	scan     []nodeagent.FoundNetns // the last /proc scan

	ready    atomic.Bool
	dsName   string    // the agent's DaemonSet
	dsUID    types.UID //
	hostNsID nodeagent.NetnsID
}

// New prepares an agent; Run runs it.
func New(o Options) (*Agent, error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	a := &Agent{o: o, log: o.Logger.With("component", "node-agent", "node", o.NodeName), enrolled: map[types.UID]*podState{}}
	a.probes = &nodeagent.HostProbes{Netns: o.HostNetns, KubeletUID: o.KubeletUID}
	if a.probes.KubeletUID == nil {
		if uid, err := nodeagent.KubeletUID(o.HostProc); err == nil {
			a.probes.KubeletUID = &uid
			a.log.Info("probe SNAT limited to the kubelet's sockets", "uid", uid)
		} else {
			a.log.Warn("no kubelet found; the probe SNAT applies to every local socket", "err", err)
		}
	}
	a.core = &nodeagent.Agent{Node: o.NodeName, Probes: a.probes, Logger: o.Logger.With("component", "node-agent")}
	if o.CNIConfDir != "" {
		a.cni = &cniconf.Installer{ConfDir: o.CNIConfDir, BinDir: o.CNIBinDir, PluginSrc: o.CNIPluginSrc, OwnFile: o.CNIOwnFile,
			Plugin: PluginEntry(o), Logger: a.log.With("part", "cni-config")}
	}
	if o.HostNetns != "" {
		id, err := nodeagent.NetnsIDOf(o.HostNetns)
		if err != nil {
			return nil, err
		}
		a.hostNsID = id
	}
	a.podFactory = informers.NewSharedInformerFactoryWithOptions(o.Client, 0,
		informers.WithTweakListOptions(func(lo *metav1.ListOptions) { lo.FieldSelector = "spec.nodeName=" + o.NodeName }))
	a.nsFactory = informers.NewSharedInformerFactory(o.Client, 0)
	a.pods = a.podFactory.Core().V1().Pods().Lister()
	a.nss = a.nsFactory.Core().V1().Namespaces().Lister()
	a.queue = workqueue.NewTypedRateLimitingQueueWithConfig(
		workqueue.NewTypedItemExponentialFailureRateLimiter[string](200*time.Millisecond, 30*time.Second),
		workqueue.TypedRateLimitingQueueConfig[string]{Name: "node-agent-pods"})
	return a, nil
}

// PluginEntry is the plugin's entry in the node's conflist.
func PluginEntry(o Options) map[string]any {
	return map[string]any{"type": cniconf.PluginType, "agentSocket": o.CNIEventSocket, "excludeNamespaces": o.ExcludeNamespaces}
}

// Ready reports whether the agent has reconciled the node's pods, serves
// ztunnel and the CNI plugin, and (if it manages it) has its plugin in the
// CNI configuration.
func (a *Agent) Ready() bool {
	return a.ready.Load() && (a.cni == nil || a.cni.Installed() != "")
}

// Run runs the agent until ctx is done. See the package comment for what
// happens on exit.
// An Agent runs once.
func (a *Agent) Run(ctx context.Context) error {
	// Deferred in this order, they run as: stop the queue and the
	// goroutines, wait for them, then release the namespaces.
	defer a.releaseAll()
	var wg sync.WaitGroup
	defer wg.Wait()
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer a.queue.ShutDown()

	a.findDaemonSet(runCtx)
	// The plugin first: from now on no pod of this node starts unseen.
	if a.cni != nil {
		if _, _, err := a.cni.Install(); err != nil {
			a.log.Warn("CNI plugin entry not installed yet; watching", "err", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := a.cni.Watch(runCtx, 30*time.Second); err != nil {
				a.log.Error("CNI config watch stopped", "err", err)
			}
		}()
	}
	if err := a.probes.Install(runCtx); err != nil {
		return err
	}
	zs, err := zds.NewServer(a.o.ZDSSocket, a.o.Logger.With("node", a.o.NodeName))
	if err != nil {
		return err
	}
	a.mu.Lock()
	a.zds, a.core.ZDS = zs, zs
	a.mu.Unlock()

	if err := a.startInformers(runCtx); err != nil {
		zs.Close()
		return err
	}
	a.reconcileAll(runCtx)

	wg.Add(1)
	go func() { defer wg.Done(); _ = zs.Run(runCtx) }()
	events, err := cnievent.ListenCNI(a.o.CNIEventSocket, a.onCNIEvent, a.log.With("part", "cni-events"))
	if err != nil {
		cancel()
		return err
	}
	wg.Add(3)
	go func() { defer wg.Done(); _ = events.Run(runCtx) }()
	go func() { defer wg.Done(); a.worker(runCtx) }()
	go func() { defer wg.Done(); a.pendingLoop(runCtx) }()
	if a.o.ReadyAddr != "" {
		l, err := net.Listen("tcp", a.o.ReadyAddr)
		if err != nil {
			cancel()
			return fmt.Errorf("readiness endpoint: %w", err)
		}
		hs := &http.Server{Handler: a.healthHandler(), ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = hs.Serve(l) }()
		defer hs.Close()
	}
	a.ready.Store(true)
	a.log.Info("node agent ready", "pods", a.enrolledCount())
	<-ctx.Done()
	a.ready.Store(false)
	cancel()
	a.queue.ShutDown()
	wg.Wait()
	_ = os.Remove(a.o.CNIEventSocket)
	if a.shouldUninstall() {
		a.log.Info("the node agent's DaemonSet is gone: uninstalling from the node")
		ctx, cancel := context.WithTimeout(context.Background(), uninstallTimeout)
		defer cancel()
		if err := Uninstall(ctx, a.o); err != nil {
			a.log.Error("uninstall", "err", err)
		}
		a.unannotateAll(ctx)
	}
	return nil
}

// uninstallTimeout bounds the agent's uninstall on exit (the DaemonSet's
// termination grace period is longer).
const uninstallTimeout = 20 * time.Second

// unannotateAll takes the redirection annotation off every pod the agent
// enrolled (on uninstall, once their rules are gone).
func (a *Agent) unannotateAll(ctx context.Context) {
	a.mu.Lock()
	pods := make([]*corev1.Pod, 0, len(a.enrolled))
	for _, st := range a.enrolled {
		pods = append(pods, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: st.namespace, Name: st.name, UID: st.uid,
			Annotations: map[string]string{model.AnnotationRedirection: st.state}}})
	}
	a.mu.Unlock()
	for _, p := range pods {
		if err := a.annotate(ctx, p, ""); err != nil {
			a.log.Warn("uninstall", "err", err)
		}
	}
}

func (a *Agent) enrolledCount() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.enrolled)
}

// releaseAll closes the agent's namespace descriptors (on exit; the pods
// stay enrolled).
func (a *Agent) releaseAll() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, st := range a.enrolled {
		if st.netns != nil {
			st.netns.Close()
		}
	}
	a.enrolled = map[types.UID]*podState{}
}

func (a *Agent) healthHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !a.Ready() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	return mux
}

func (a *Agent) startInformers(ctx context.Context) error {
	podInf := a.podFactory.Core().V1().Pods().Informer()
	nsInf := a.nsFactory.Core().V1().Namespaces().Informer()
	enqueue := func(obj any) {
		if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
			a.queue.Add(key)
		}
	}
	if _, err := podInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: enqueue, UpdateFunc: func(_, obj any) { enqueue(obj) }, DeleteFunc: enqueue,
	}); err != nil {
		return err
	}
	nsChanged := func(obj any) {
		ns, ok := obj.(*corev1.Namespace)
		if !ok {
			if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				ns, _ = d.Obj.(*corev1.Namespace)
			}
		}
		if ns == nil {
			return
		}
		pods, _ := a.pods.Pods(ns.Name).List(labels.Everything())
		for _, p := range pods {
			a.queue.Add(p.Namespace + "/" + p.Name)
		}
	}
	if _, err := nsInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: nsChanged, DeleteFunc: nsChanged,
		UpdateFunc: func(old, obj any) {
			o, _ := old.(*corev1.Namespace)
			n, _ := obj.(*corev1.Namespace)
			if o == nil || n == nil || !maps.Equal(o.Labels, n.Labels) {
				nsChanged(obj)
			}
		},
	}); err != nil {
		return err
	}
	a.podFactory.Start(ctx.Done())
	a.nsFactory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), podInf.HasSynced, nsInf.HasSynced) {
		return errors.New("node agent: pod and namespace watches did not sync")
	}
	return nil
}

// reconcileAll brings every pod of the node to its wanted state (at
// start), with one scan of /proc for all of them, then drops from the
// probe set the addresses of pods that are gone.
func (a *Agent) reconcileAll(ctx context.Context) {
	a.mu.Lock()
	a.rescanLocked()
	a.mu.Unlock()
	pods, _ := a.pods.List(labels.Everything())
	for _, p := range pods {
		key := p.Namespace + "/" + p.Name
		if err := a.reconcile(ctx, key); err != nil {
			a.log.Warn("reconciling a pod at start", "pod", key, "err", err)
			a.queue.AddRateLimited(key)
		}
	}
	a.mu.Lock()
	var keep []netip.Addr
	for _, st := range a.enrolled {
		keep = append(keep, st.ips...)
	}
	a.mu.Unlock()
	if err := a.probes.Retain(ctx, keep); err != nil {
		a.log.Warn("cleaning the probe set", "err", err)
	}
}

func (a *Agent) worker(ctx context.Context) {
	for {
		key, quit := a.queue.Get()
		if quit {
			return
		}
		err := a.reconcile(ctx, key)
		switch {
		case err == nil:
			a.queue.Forget(key)
		case ctx.Err() != nil:
		case a.queue.NumRequeues(key) < 15:
			a.log.Warn("reconciling a pod; will retry", "pod", key, "err", err)
			a.queue.AddRateLimited(key)
		default:
			a.log.Error("reconciling a pod; giving up until it changes", "pod", key, "err", err)
			a.queue.Forget(key)
		}
		a.queue.Done(key)
	}
}

// pendingLoop turns pods enrolled while no ztunnel was connected into
// enabled ones once a ztunnel has taken the snapshot that carried them.
func (a *Agent) pendingLoop(ctx context.Context) {
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if a.zds.Connected() == 0 {
			continue
		}
		a.mu.Lock()
		for _, st := range a.enrolled {
			if st.state == nodeagent.Pending {
				st.state = nodeagent.Enabled
				a.queue.Add(st.namespace + "/" + st.name)
			}
		}
		a.mu.Unlock()
	}
}

// wants reports whether the pod belongs in the mesh (ns may be nil).
func (a *Agent) wants(pod *corev1.Pod, ns *corev1.Namespace) bool {
	if pod.Spec.NodeName != a.o.NodeName || slices.Contains(a.o.ExcludeNamespaces, pod.Namespace) {
		return false
	}
	if pod.Namespace == a.o.SystemNamespace && pod.Labels["app"] == ztunnelLabel {
		return false
	}
	return model.Enrolled(pod, ns)
}

func (a *Agent) namespace(ctx context.Context, name string, live bool) (*corev1.Namespace, error) {
	ns, err := a.nss.Get(name)
	if err == nil || !apierrors.IsNotFound(err) || !live {
		if apierrors.IsNotFound(err) {
			return nil, nil
		}
		return ns, err
	}
	ns, err = a.o.Client.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	return ns, err
}

func terminated(pod *corev1.Pod) bool {
	return pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed
}

func podIPs(pod *corev1.Pod) []netip.Addr {
	var out []netip.Addr
	for _, ip := range pod.Status.PodIPs {
		if a, err := netip.ParseAddr(ip.IP); err == nil {
			out = append(out, a.Unmap())
		}
	}
	if len(out) == 0 && pod.Status.PodIP != "" {
		if a, err := netip.ParseAddr(pod.Status.PodIP); err == nil {
			out = append(out, a.Unmap())
		}
	}
	return out
}

func corePod(pod *corev1.Pod, st *podState) nodeagent.Pod {
	p := nodeagent.Pod{UID: string(pod.UID), Namespace: pod.Namespace, Name: pod.Name,
		ServiceAccount: pod.Spec.ServiceAccountName, Annotations: pod.Annotations}
	if st != nil {
		p.Netns, p.IPs = st.netnsPath(), st.ips
	}
	return p
}

// reconcile brings one pod (by namespace/name) to its wanted state.
func (a *Agent) reconcile(ctx context.Context, key string) error {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	pod, err := a.pods.Pods(ns).Get(name)
	if apierrors.IsNotFound(err) {
		for _, st := range a.enrolled {
			if st.namespace == ns && st.name == name {
				a.forgetLocked(ctx, st)
			}
		}
		return nil
	}
	if err != nil {
		return err
	}
	for _, st := range a.enrolled {
		if st.namespace == ns && st.name == name && st.uid != pod.UID {
			a.forgetLocked(ctx, st) // an earlier pod of that name
		}
	}
	st := a.enrolled[pod.UID]
	if terminated(pod) {
		if st != nil {
			a.forgetLocked(ctx, st)
		}
		return nil
	}
	nsObj, err := a.namespace(ctx, pod.Namespace, false)
	if err != nil {
		return err
	}
	want := a.wants(pod, nsObj)
	annotated := pod.Annotations[model.AnnotationRedirection]
	switch {
	case want && (st == nil || st.netns == nil):
		ips := podIPs(pod)
		if len(ips) == 0 {
			return nil // not networked yet: the CNI plugin will tell
		}
		f, err := a.findNetnsLocked(ips, pod.UID)
		if err != nil {
			if annotated == "" {
				return fmt.Errorf("pod %s: %w", key, err)
			}
			if st == nil {
				// Enrolled by an earlier run of the agent, but its namespace
				// is not found now (not running?): ztunnel keeps the pod.
				if kerr := a.core.Keep(ctx, corePod(pod, nil)); kerr != nil {
					return kerr
				}
				a.enrolled[pod.UID] = &podState{uid: pod.UID, namespace: ns, name: name, ips: ips, state: annotated}
				a.log.Warn("pod enrolled before, its network namespace not found; ztunnel keeps it", "pod", key, "err", err)
			}
			return nil
		}
		if _, err := a.enrollLocked(ctx, pod, f, ips, true); err != nil {
			return err
		}
		return a.annotate(ctx, pod, a.enrolled[pod.UID].state)
	case want:
		return a.annotate(ctx, pod, st.state)
	case st != nil:
		if err := a.unenrollLocked(ctx, pod, st); err != nil {
			return err
		}
		return a.annotate(ctx, pod, "")
	case annotated != "":
		// Enrolled by an earlier run, and no longer wanted: find its rules.
		if ips := podIPs(pod); len(ips) > 0 {
			if f, err := a.findNetnsLocked(ips, pod.UID); err == nil {
				tmp := &podState{uid: pod.UID, namespace: ns, name: name, netns: f, ips: ips}
				if err := a.unenrollLocked(ctx, pod, tmp); err != nil {
					return err
				}
			} else {
				_ = a.core.Unenroll(ctx, nodeagent.Pod{UID: string(pod.UID), Namespace: ns, Name: name, IPs: ips})
			}
		}
		return a.annotate(ctx, pod, "")
	}
	return nil
}

// enrollLocked enrolls the pod in the namespace open as f (which the agent
// keeps) and records it; an earlier namespace of the pod is released. The
// state is Pending when no ztunnel is connected, unless keepEnabled and
// the pod was enabled before (a restarted agent does not flip it: the
// ztunnel that reconnects gets it in its snapshot).
func (a *Agent) enrollLocked(ctx context.Context, pod *corev1.Pod, f *os.File, ips []netip.Addr, keepEnabled bool) (string, error) {
	id, err := nodeagent.NetnsIDOfFile(f)
	if err != nil {
		f.Close()
		return "", err
	}
	st := &podState{uid: pod.UID, namespace: pod.Namespace, name: pod.Name, netns: f, netnsID: id, ips: ips}
	state, err := a.core.Enroll(ctx, corePod(pod, st))
	if err != nil {
		f.Close()
		return "", err
	}
	if keepEnabled && state == nodeagent.Pending && pod.Annotations[model.AnnotationRedirection] == nodeagent.Enabled {
		state = nodeagent.Enabled
	}
	st.state = state
	if old := a.enrolled[pod.UID]; old != nil {
		if old.netns != nil {
			old.netns.Close()
		}
		var gone []netip.Addr
		for _, ip := range old.ips {
			if !slices.Contains(ips, ip) {
				gone = append(gone, ip)
			}
		}
		if len(gone) > 0 {
			_ = a.probes.RemovePodIPs(ctx, gone)
		}
	}
	a.enrolled[pod.UID] = st
	return state, nil
}

// unenrollLocked releases the pod: rules out, ztunnel told, probe set.
func (a *Agent) unenrollLocked(ctx context.Context, pod *corev1.Pod, st *podState) error {
	err := a.core.Unenroll(ctx, corePod(pod, st))
	if st.netns != nil {
		st.netns.Close()
	}
	delete(a.enrolled, st.uid)
	return err
}

// forgetLocked drops a pod that is gone (or terminated): ztunnel and the
// probe set are told; its namespace goes with it.
func (a *Agent) forgetLocked(ctx context.Context, st *podState) {
	if err := a.zds.DelWorkload(ctx, string(st.uid)); err != nil {
		a.log.Warn("telling ztunnel a pod is gone", "pod", st.namespace+"/"+st.name, "err", err)
	}
	if len(st.ips) > 0 {
		if err := a.probes.RemovePodIPs(ctx, st.ips); err != nil {
			a.log.Warn("probe set", "err", err)
		}
	}
	if st.netns != nil {
		st.netns.Close()
	}
	delete(a.enrolled, st.uid)
	a.log.Info("pod gone", "pod", st.namespace+"/"+st.name, "uid", st.uid)
}

func (a *Agent) rescanLocked() {
	found, err := nodeagent.ScanNetns(a.o.HostProc, a.hostNsID)
	if err != nil {
		a.log.Warn("scanning network namespaces", "err", err)
		return
	}
	a.scan = found
}

// findNetnsLocked opens the namespace holding ips, from the last scan or a
// fresh one; a namespace another enrolled pod holds is never taken.
func (a *Agent) findNetnsLocked(ips []netip.Addr, uid types.UID) (*os.File, error) {
	try := func() (*os.File, error) {
		found, err := nodeagent.FindNetns(a.scan, ips, string(uid))
		if err != nil {
			return nil, err
		}
		for _, st := range a.enrolled {
			if st.uid != uid && st.netns != nil && st.netnsID == found.ID {
				return nil, fmt.Errorf("the namespace holding %v is pod %s/%s's", ips, st.namespace, st.name)
			}
		}
		f, err := os.Open(found.Path)
		if err != nil {
			return nil, err
		}
		if id, err := nodeagent.NetnsIDOfFile(f); err != nil || id != found.ID {
			f.Close()
			return nil, errors.New("the process left the namespace")
		}
		return f, nil
	}
	if f, err := try(); err == nil {
		return f, nil
	}
	a.rescanLocked()
	return try()
}

// annotate sets (or, with "", removes) the redirection annotation. The
// patch names the pod's UID, so a newer pod of the same name is never
// touched.
func (a *Agent) annotate(ctx context.Context, pod *corev1.Pod, value string) error {
	cur, has := pod.Annotations[model.AnnotationRedirection]
	if (value == "" && !has) || (value != "" && cur == value) {
		return nil
	}
	var v any
	if value != "" {
		v = value
	}
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{
		"uid":         pod.UID,
		"annotations": map[string]any{model.AnnotationRedirection: v},
	}})
	_, err := a.o.Client.CoreV1().Pods(pod.Namespace).Patch(ctx, pod.Name, types.MergePatchType, patch, metav1.PatchOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("annotating pod %s/%s %s=%q: %w", pod.Namespace, pod.Name, model.AnnotationRedirection, value, err)
	}
	return nil
}

// ztunnelWait is how long a new pod's CNI event waits for a ztunnel to
// connect before its sandbox fails (inside cnievent.NotifyTimeout).
const ztunnelWait = 5 * time.Second

// awaitZtunnel returns once a ztunnel is connected and has its snapshot,
// or after d, or when ctx is done.
func (a *Agent) awaitZtunnel(ctx context.Context, d time.Duration) {
	if a.zds.Connected() > 0 {
		return
	}
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for a.zds.Connected() == 0 {
		select {
		case <-ctx.Done():
			return
		case <-deadline.C:
			return
		case <-tick.C:
		}
	}
}

// onCNIEvent enrolls a pod the CNI plugin just networked, before it
// starts, if it belongs in the mesh. An error keeps the pod from starting:
// the pod is unknown, its namespace cannot be opened, enrollment failed,
// or no ztunnel is connected to take it (as upstream: "no ztunnel
// connection").
func (a *Agent) onCNIEvent(ctx context.Context, ev cnievent.CNIEvent) error {
	ctx, cancel := context.WithTimeout(ctx, cnievent.NotifyTimeout-2*time.Second)
	defer cancel()
	if slices.Contains(a.o.ExcludeNamespaces, ev.Namespace) {
		return nil
	}
	pod, err := a.pods.Pods(ev.Namespace).Get(ev.Name)
	if err != nil || (ev.UID != "" && string(pod.UID) != ev.UID) {
		// The watch may lag behind a pod just scheduled.
		pod, err = a.o.Client.CoreV1().Pods(ev.Namespace).Get(ctx, ev.Name, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("pod %s/%s: %w", ev.Namespace, ev.Name, err)
		}
	}
	if ev.UID != "" && string(pod.UID) != ev.UID {
		return fmt.Errorf("pod %s/%s has uid %s, the runtime's has %s", ev.Namespace, ev.Name, pod.UID, ev.UID)
	}
	nsObj, err := a.namespace(ctx, pod.Namespace, true)
	if err != nil {
		return fmt.Errorf("namespace of pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	if a.wants(pod, nsObj) {
		// A pod that belongs in the mesh waits a little for a ztunnel (at
		// boot, ztunnel starts with the pods) rather than failing its
		// sandbox at once into the runtime's retry backoff.
		a.awaitZtunnel(ctx, ztunnelWait)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.wants(pod, nsObj) {
		if st := a.enrolled[pod.UID]; st != nil {
			a.forgetLocked(ctx, st) // a new sandbox of a pod no longer wanted
		}
		return nil
	}
	var ips []netip.Addr
	for _, s := range ev.IPs {
		if ip, err := netip.ParseAddr(s); err == nil {
			ips = append(ips, ip.Unmap())
		}
	}
	if len(ips) == 0 {
		ips = podIPs(pod)
	}
	f, err := a.openEventNetns(ev.Netns)
	if err != nil {
		var ferr error
		if f, ferr = a.findNetnsLocked(ips, pod.UID); ferr != nil {
			return fmt.Errorf("pod %s/%s: network namespace: %w (and by IP: %v)", pod.Namespace, pod.Name, err, ferr)
		}
	}
	state, err := a.enrollLocked(ctx, pod, f, ips, false)
	if err != nil {
		return err
	}
	fail := func(err error) error {
		if st := a.enrolled[pod.UID]; st != nil {
			if uerr := a.unenrollLocked(ctx, pod, st); uerr != nil {
				a.log.Warn("releasing a pod that may not start", "pod", pod.Namespace+"/"+pod.Name, "err", uerr)
			}
		}
		return err
	}
	if state != nodeagent.Enabled {
		return fail(fmt.Errorf("pod %s/%s: no ztunnel connection", pod.Namespace, pod.Name))
	}
	if err := a.annotate(ctx, pod, nodeagent.Enabled); err != nil {
		return fail(err)
	}
	a.log.Info("pod captured before it starts", "pod", pod.Namespace+"/"+pod.Name, "uid", pod.UID, "source", "cni")
	return nil
}

// openEventNetns opens the namespace the runtime named (a bind mount under
// /var/run/netns, usually). If the agent's container does not see that
// path, it is looked up in the host's mount namespace through
// <host-proc>/1/root (hostPID).
func (a *Agent) openEventNetns(path string) (*os.File, error) {
	f, err := os.Open(path)
	if err == nil || !filepath.IsAbs(path) {
		return f, err
	}
	if g, herr := os.Open(filepath.Join(a.o.HostProc, "1", "root", path)); herr == nil {
		return g, nil
	}
	return nil, err
}

// findDaemonSet remembers the DaemonSet that owns the agent's pod.
func (a *Agent) findDaemonSet(ctx context.Context) {
	if a.o.PodName == "" || a.o.PodNamespace == "" {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	pod, err := a.o.Client.CoreV1().Pods(a.o.PodNamespace).Get(ctx, a.o.PodName, metav1.GetOptions{})
	if err != nil {
		a.log.Warn("finding the agent's own pod (it will not uninstall on exit)", "err", err)
		return
	}
	if ref := metav1.GetControllerOf(pod); ref != nil && ref.Kind == "DaemonSet" {
		a.dsName, a.dsUID = ref.Name, ref.UID
	}
}

// shouldUninstall reports whether the agent's DaemonSet is gone or being
// deleted. Any doubt (no DaemonSet known, API errors) keeps the install.
func (a *Agent) shouldUninstall() bool {
	if a.dsName == "" {
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ds, err := a.o.Client.AppsV1().DaemonSets(a.o.PodNamespace).Get(ctx, a.dsName, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return true
	case err != nil:
		a.log.Warn("checking the DaemonSet on exit; leaving the install in place", "err", err)
		return false
	case ds.UID != a.dsUID:
		return false // replaced by a new one
	}
	return ds.DeletionTimestamp != nil
}

// Uninstall removes the agent from the node: the plugin entry from every
// CNI configuration file and the plugin binary, the capture rules from
// every pod's network namespace (ReleasePods), then the host probe table.
// It needs no API server.
func Uninstall(ctx context.Context, o Options) error {
	var errs []error
	if o.CNIConfDir != "" {
		in := &cniconf.Installer{ConfDir: o.CNIConfDir, BinDir: o.CNIBinDir, OwnFile: o.CNIOwnFile, Logger: o.Logger}
		if _, err := in.Uninstall(); err != nil {
			errs = append(errs, err)
		}
	}
	if o.HostProc != "" {
		if _, err := ReleasePods(ctx, o.HostProc, o.Logger); err != nil {
			errs = append(errs, err)
		}
	}
	hp := &nodeagent.HostProbes{Netns: o.HostNetns}
	if err := hp.Uninstall(ctx); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// ReleasePods removes the capture rules from every pod network namespace
// a process under hostProc (the host's /proc) is in, and returns how many
// held rules. Only pods' namespaces are touched: those whose processes sit
// in the kubelet's kubepods cgroups (nodeagent.ScanNetns).
func ReleasePods(ctx context.Context, hostProc string, log *slog.Logger) (int, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	found, err := nodeagent.ScanNetns(hostProc)
	if err != nil {
		return 0, fmt.Errorf("releasing pods: %w", err)
	}
	var errs []error
	n := 0
	for _, f := range found {
		if len(f.PodUIDs) == 0 {
			continue
		}
		st, err := redirect.Inspect(ctx, f.Path)
		if err != nil || st.Clean() {
			continue // gone meanwhile, or never captured
		}
		if err := redirect.Remove(ctx, f.Path); err != nil {
			errs = append(errs, fmt.Errorf("releasing pod %v (%v): %w", f.PodUIDs, f.IPs, err))
			continue
		}
		n++
		log.Info("pod released: capture rules removed", "pod_uid", f.PodUIDs[0], "ips", f.IPs)
	}
	return n, errors.Join(errs...)
}
