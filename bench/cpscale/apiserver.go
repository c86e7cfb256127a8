package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gwclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/ambit-mesh/ambit/controlplane/config"
	"github.com/ambit-mesh/ambit/controlplane/kubesource"
	"github.com/ambit-mesh/ambit/internal/kubetest"
)

// APIServerSpec is the API server variant's default size (issue 12):
// 10,000 pods and 1,000 services, at the in-process default's density
// (100 pods and 10 services per namespace).
func APIServerSpec() Spec {
	return Spec{Pods: 10000, Services: 1000, Namespaces: 100, Nodes: 100, Waypoints: 5}
}

// APIServerOptions configure the API server backend.
type APIServerOptions struct {
	// Writers is how many goroutines create the mesh (default 32); QPS
	// and Burst bound their client (default 5000 and 10000).
	Writers int
	QPS     float32
	Burst   int
	// Logger receives the Kubernetes source's messages (default: none),
	// Progress the backend's own (default: none).
	Logger, Progress *slog.Logger
}

// NewAPIServerBackend returns the backend that runs a real etcd and
// kube-apiserver (internal/kubetest, started for tb: a test's T, or
// newProcessTB in the benchmark binary), installs the CRDs the control
// plane reads (Istio's and Gateway API's, from the module cache), creates
// the mesh through the API as its owners would (a pod by its creator,
// then its status, spec.nodeName already set, by the kubelet through the
// status subresource), and hands the controller the Kubernetes config
// source (controlplane/kubesource) on the same API server.
func NewAPIServerBackend(tb testing.TB, o APIServerOptions) NewBackend {
	if o.Writers <= 0 {
		o.Writers = 32
	}
	if o.QPS <= 0 {
		o.QPS = 5000
	}
	if o.Burst <= 0 {
		o.Burst = 10000
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Progress == nil {
		o.Progress = slog.New(slog.DiscardHandler)
	}
	return func(ctx context.Context, objs []config.Object) (Backend, error) {
		return newAPIServerBackend(ctx, tb, o, objs)
	}
}

// APIServerBackend is a kube-apiserver holding the mesh, read by the
// Kubernetes config source.
type APIServerBackend struct {
	srv     *kubetest.Server
	kube    kubernetes.Interface // the writers' (protobuf)
	istio   istioclient.Interface
	gateway gwclient.Interface
	source  *kubesource.Source
	setup   Setup
	extra   []config.Object
	pids    map[string]int

	mu   sync.Mutex
	pods map[string]*corev1.Pod // namespace/name -> the version last written
}

// Name implements Backend.
func (b *APIServerBackend) Name() string {
	return "through a real API server (kube-apiserver " + b.setup.Version + " and etcd as separate processes, internal/kubetest; " +
		"the Kubernetes config source controlplane/kubesource, client-go informers)"
}

// Mode implements Backend.
func (b *APIServerBackend) Mode() string { return "apiserver" }

// Source implements Backend.
func (b *APIServerBackend) Source() config.Source { return b.source }

// Extra implements ExtraHolder.
func (b *APIServerBackend) Extra() []config.Object { return b.extra }

// Setup implements SetupReporter.
func (b *APIServerBackend) Setup() *Setup { s := b.setup; return &s }

// Close implements Backend. The processes stop with tb's cleanups.
func (b *APIServerBackend) Close() error { return nil }

// Processes implements ProcessReporter.
func (b *APIServerBackend) Processes() []ProcessSample {
	var out []ProcessSample
	for _, name := range slices.Sorted(maps.Keys(b.pids)) {
		pid := b.pids[name]
		s := ProcessSample{Name: name, PID: pid}
		s.RSSMB, s.HWMMB, _ = procRSS(fmt.Sprint(pid))
		_, _, s.CPUSeconds, _ = procStat(pid)
		out = append(out, s)
	}
	return out
}

// kubetestCall runs f, which calls kubetest with tb, and turns a fatal
// failure of a processTB into an error (a test's T ends the test itself).
func kubetestCall(f func()) (err error) {
	defer func() {
		if r := recover(); r != nil {
			if e, ok := r.(tbFatal); ok {
				err = e
				return
			}
			err = fmt.Errorf("kubetest: %v", r)
		}
	}()
	f()
	return nil
}

func newAPIServerBackend(ctx context.Context, tb testing.TB, o APIServerOptions, objs []config.Object) (*APIServerBackend, error) {
	b := &APIServerBackend{pods: map[string]*corev1.Pod{}}
	t0 := time.Now()
	if err := kubetestCall(func() { b.srv = kubetest.Start(tb, kubetest.Options{}) }); err != nil {
		return nil, err
	}
	b.setup.StartSeconds = since(t0)
	b.pids = childrenNamed("etcd", "kube-apiserver")
	if len(b.pids) != 2 {
		o.Progress.Warn("could not find the etcd and kube-apiserver processes among this process's children", "found", b.pids)
	}
	t1 := time.Now()
	var crds []string
	if err := kubetestCall(func() { crds = b.srv.InstallCRDs(tb, kubetest.MeshCRDs()...) }); err != nil {
		return nil, err
	}
	b.setup.CRDSeconds, b.setup.CRDs = since(t1), len(crds)
	if v, err := b.srv.Client.Discovery().ServerVersion(); err == nil {
		b.setup.Version = v.GitVersion
	}
	o.Progress.Info("API server up", "version", b.setup.Version, "seconds", b.setup.StartSeconds, "crds", len(crds), "crd_seconds", b.setup.CRDSeconds, "pids", b.pids)

	cfg := rest.CopyConfig(b.srv.Config)
	cfg.QPS, cfg.Burst = o.QPS, o.Burst
	rest.AddUserAgent(cfg, "cpscale-writer")
	core := rest.CopyConfig(cfg)
	core.ContentType = "application/vnd.kubernetes.protobuf"
	core.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	var err error
	if b.kube, err = kubernetes.NewForConfig(core); err != nil {
		return nil, fmt.Errorf("apiserver backend: %w", err)
	}
	if b.istio, err = istioclient.NewForConfig(cfg); err != nil {
		return nil, fmt.Errorf("apiserver backend: %w", err)
	}
	if b.gateway, err = gwclient.NewForConfig(cfg); err != nil {
		return nil, fmt.Errorf("apiserver backend: %w", err)
	}
	b.setup.Writers, b.setup.QPS, b.setup.Burst = o.Writers, o.QPS, o.Burst

	if err := b.create(ctx, o, objs); err != nil {
		return nil, err
	}
	if err := b.findExtra(ctx, objs); err != nil {
		return nil, err
	}
	for _, obj := range objs {
		if p, ok := obj.(*corev1.Pod); ok {
			b.pods[p.Namespace+"/"+p.Name] = p
		}
	}
	if b.source, err = kubesource.New(b.srv.Config, kubesource.Options{Logger: o.Logger}); err != nil {
		return nil, fmt.Errorf("apiserver backend: %w", err)
	}
	return b, nil
}

// create writes the mesh in dependency order, each step by parallel
// writers: namespaces; then service accounts (pods need theirs), nodes,
// policies, Gateways and services; then pods and their status. Besides
// the mesh it creates what a cluster would have and the generator leaves
// out: the nodes the pods name (with a Ready status and the pods' host
// IP) and the service accounts the waypoint pods run as.
func (b *APIServerBackend) create(ctx context.Context, o APIServerOptions, objs []config.Object) error {
	start := time.Now()
	var nss, pods, rest []config.Object
	sas := map[string]bool{}
	for _, obj := range objs {
		switch obj := obj.(type) {
		case *corev1.Namespace:
			nss = append(nss, obj)
		case *corev1.Pod:
			pods = append(pods, obj)
		case *corev1.ServiceAccount:
			sas[obj.Namespace+"/"+obj.Name] = true
			rest = append(rest, obj)
		default:
			rest = append(rest, obj)
		}
	}
	nodes := map[string]string{} // name -> host IP
	var extraSAs, extraNodes int
	for _, obj := range pods {
		p := obj.(*corev1.Pod)
		if _, ok := nodes[p.Spec.NodeName]; !ok {
			nodes[p.Spec.NodeName] = p.Status.HostIP
		}
		if sa := p.Namespace + "/" + p.Spec.ServiceAccountName; !sas[sa] {
			sas[sa] = true
			extraSAs++
			rest = append(rest, &corev1.ServiceAccount{TypeMeta: typeMeta("v1", "ServiceAccount"),
				ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: p.Spec.ServiceAccountName}})
		}
	}
	for _, name := range slices.Sorted(maps.Keys(nodes)) {
		extraNodes++
		rest = append(rest, benchNode(name, nodes[name]))
	}
	b.setup.Notes = append(b.setup.Notes, fmt.Sprintf("created besides the mesh's objects: %d Nodes (the pods' spec.nodeName, status Ready, "+
		"InternalIP the pods' hostIP) and %d ServiceAccounts the waypoint pods run as (the ServiceAccount admission plugin requires them)", extraNodes, extraSAs))
	var requests atomic.Int64
	for _, step := range []struct {
		what string
		objs []config.Object
	}{{"namespaces", nss}, {"service accounts, nodes, policies, Gateways, services", rest}, {"pods and their status", pods}} {
		t := time.Now()
		err := parallel(ctx, o.Writers, step.objs, func(ctx context.Context, obj config.Object) error {
			n, err := b.createOne(ctx, obj)
			requests.Add(int64(n))
			return err
		})
		if err != nil {
			return fmt.Errorf("apiserver backend: creating %s: %w", step.what, err)
		}
		o.Progress.Info("created", "what", step.what, "objects", len(step.objs), "seconds", since(t),
			"objects_per_second", float64(len(step.objs))/since(t))
	}
	b.setup.CreateSeconds, b.setup.Objects, b.setup.Requests = since(start), len(nss)+len(rest)+len(pods), int(requests.Load())
	o.Progress.Info("mesh created", "objects", b.setup.Objects, "requests", b.setup.Requests, "seconds", b.setup.CreateSeconds,
		"requests_per_second", float64(b.setup.Requests)/b.setup.CreateSeconds)
	return nil
}

// benchNode is a node as its kubelet registers it.
func benchNode(name, hostIP string) *corev1.Node {
	n := &corev1.Node{TypeMeta: typeMeta("v1", "Node"),
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
			"topology.kubernetes.io/zone": "zone-" + name[len(name)-1:]}}}
	n.Status = corev1.NodeStatus{
		Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
			LastHeartbeatTime: metav1.Unix(1767225600, 0), LastTransitionTime: metav1.Unix(1767225600, 0)}},
	}
	if hostIP != "" {
		n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: hostIP}, {Type: corev1.NodeHostName, Address: name}}
	}
	return n
}

// createOne writes one object (and the status of a pod or node, as the
// kubelet would); it returns the number of requests.
func (b *APIServerBackend) createOne(ctx context.Context, obj config.Object) (int, error) {
	co := metav1.CreateOptions{FieldManager: "cpscale"}
	var err error
	n := 1
	switch obj := obj.(type) {
	case *corev1.Namespace:
		_, err = b.kube.CoreV1().Namespaces().Create(ctx, obj, co)
	case *corev1.ServiceAccount:
		_, err = b.kube.CoreV1().ServiceAccounts(obj.Namespace).Create(ctx, obj, co)
	case *corev1.Service:
		_, err = b.kube.CoreV1().Services(obj.Namespace).Create(ctx, obj, co)
	case *corev1.Node:
		var nd *corev1.Node
		if nd, err = b.kube.CoreV1().Nodes().Create(ctx, obj, co); err == nil {
			n++
			nd.Status = obj.Status
			_, err = b.kube.CoreV1().Nodes().UpdateStatus(ctx, nd, metav1.UpdateOptions{FieldManager: "cpscale-kubelet"})
		}
	case *corev1.Pod:
		var p *corev1.Pod
		if p, err = b.kube.CoreV1().Pods(obj.Namespace).Create(ctx, obj, co); err == nil {
			n++
			p.Status = obj.Status
			_, err = b.kube.CoreV1().Pods(obj.Namespace).UpdateStatus(ctx, p, metav1.UpdateOptions{FieldManager: "cpscale-kubelet"})
		}
	case *securityv1.AuthorizationPolicy:
		_, err = b.istio.SecurityV1().AuthorizationPolicies(obj.Namespace).Create(ctx, obj, co)
	case *securityv1.PeerAuthentication:
		_, err = b.istio.SecurityV1().PeerAuthentications(obj.Namespace).Create(ctx, obj, co)
	case *gatewayv1.Gateway:
		_, err = b.gateway.GatewayV1().Gateways(obj.Namespace).Create(ctx, obj, co)
	default:
		return 0, fmt.Errorf("unexpected %T %s", obj, config.KeyOf(obj))
	}
	if err != nil {
		return n, fmt.Errorf("%s: %w", config.KeyOf(obj), err)
	}
	return n, nil
}

// parallel runs fn on every object with n goroutines; it stops at the
// first error and returns it.
func parallel(ctx context.Context, n int, objs []config.Object, fn func(context.Context, config.Object) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	work := make(chan config.Object)
	var wg sync.WaitGroup
	for range min(n, len(objs)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for obj := range work {
				if err := fn(ctx, obj); err != nil {
					cancel(err)
				}
			}
		}()
	}
feed:
	for _, obj := range objs {
		select {
		case work <- obj:
		case <-ctx.Done():
			break feed
		}
	}
	close(work)
	wg.Wait()
	if err := context.Cause(ctx); err != nil {
		return err
	}
	return nil
}

// findExtra lists the API server's namespaces, services and pods and
// keeps those that are not the mesh's (its own namespaces and Service
// default/kubernetes): the control plane serves them too. It also checks
// that every pod of the mesh is there.
func (b *APIServerBackend) findExtra(ctx context.Context, objs []config.Object) error {
	mesh := map[config.Key]bool{}
	for _, o := range objs {
		mesh[config.KeyOf(o)] = true
	}
	lo := metav1.ListOptions{ResourceVersion: "0"}
	nss, err := b.kube.CoreV1().Namespaces().List(ctx, lo)
	if err != nil {
		return fmt.Errorf("apiserver backend: listing namespaces: %w", err)
	}
	svcs, err := b.kube.CoreV1().Services("").List(ctx, lo)
	if err != nil {
		return fmt.Errorf("apiserver backend: listing services: %w", err)
	}
	pods, err := b.kube.CoreV1().Pods("").List(ctx, lo)
	if err != nil {
		return fmt.Errorf("apiserver backend: listing pods: %w", err)
	}
	seenPods := 0
	add := func(o config.Object, kind string) {
		o.GetObjectKind().SetGroupVersionKind(schema.GroupVersionKind{Version: "v1", Kind: kind})
		if mesh[config.KeyOf(o)] {
			if kind == "Pod" {
				seenPods++
			}
			return
		}
		o.SetManagedFields(nil)
		b.extra = append(b.extra, o)
	}
	for i := range nss.Items {
		add(&nss.Items[i], "Namespace")
	}
	for i := range svcs.Items {
		add(&svcs.Items[i], "Service")
	}
	for i := range pods.Items {
		add(&pods.Items[i], "Pod")
	}
	want := 0
	for _, o := range objs {
		if _, ok := o.(*corev1.Pod); ok {
			want++
		}
	}
	if seenPods != want {
		return fmt.Errorf("apiserver backend: %d of the mesh's %d pods listed", seenPods, want)
	}
	return nil
}

// Update implements Backend for pods: the labels that differ from the
// version last written are merge-patched (metadata, as a user or a
// controller would), a new pod IP is merge-patched into the status
// subresource (as the kubelet would). Each is one request; Update
// returns with its response.
func (b *APIServerBackend) Update(ctx context.Context, obj config.Object) error {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return fmt.Errorf("apiserver backend: updating %s: only pods", config.KeyOf(obj))
	}
	key := p.Namespace + "/" + p.Name
	b.mu.Lock()
	old := b.pods[key]
	b.mu.Unlock()
	if old == nil {
		return fmt.Errorf("apiserver backend: updating %s: not created", key)
	}
	pods := b.kube.CoreV1().Pods(p.Namespace)
	po := metav1.PatchOptions{FieldManager: "cpscale"}
	wrote := false
	if !maps.Equal(old.Labels, p.Labels) {
		labels := map[string]any{}
		for k, v := range p.Labels {
			if ov, ok := old.Labels[k]; !ok || ov != v {
				labels[k] = v
			}
		}
		for k := range old.Labels {
			if _, ok := p.Labels[k]; !ok {
				labels[k] = nil
			}
		}
		patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"labels": labels}})
		if _, err := pods.Patch(ctx, p.Name, types.MergePatchType, patch, po); err != nil {
			return fmt.Errorf("apiserver backend: patching the labels of %s: %w", key, err)
		}
		wrote = true
	}
	if old.Status.PodIP != p.Status.PodIP || !slices.Equal(old.Status.PodIPs, p.Status.PodIPs) {
		patch, _ := json.Marshal(map[string]any{"status": map[string]any{"podIP": p.Status.PodIP, "podIPs": p.Status.PodIPs}})
		po := po
		po.FieldManager = "cpscale-kubelet"
		if _, err := pods.Patch(ctx, p.Name, types.MergePatchType, patch, po, "status"); err != nil {
			return fmt.Errorf("apiserver backend: patching the status of %s: %w", key, err)
		}
		wrote = true
	}
	if !wrote {
		return fmt.Errorf("apiserver backend: updating %s: no change in labels or pod IPs", key)
	}
	b.mu.Lock()
	b.pods[key] = p
	b.mu.Unlock()
	return nil
}
