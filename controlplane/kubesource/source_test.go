package kubesource_test

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
	securityv1beta1 "istio.io/api/security/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gwclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"
	"sigs.k8s.io/yaml"

	"github.com/ambit-mesh/ambit/controlplane/config"
	"github.com/ambit-mesh/ambit/controlplane/controller"
	"github.com/ambit-mesh/ambit/controlplane/filesource"
	"github.com/ambit-mesh/ambit/controlplane/kubesource"
	"github.com/ambit-mesh/ambit/controlplane/xds"
	"github.com/ambit-mesh/ambit/internal/kubetest"
)

// recorder is a Publisher that keeps the last set per type URL.
type recorder struct {
	mu   sync.Mutex
	sets map[string]map[string]proto.Message
}

func (r *recorder) Publish(typeURL string, set map[string]proto.Message) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.sets == nil {
		r.sets = map[string]map[string]proto.Message{}
	}
	r.sets[typeURL] = maps.Clone(set)
	return nil
}

func (r *recorder) snapshot() map[string]map[string]proto.Message {
	r.mu.Lock()
	defer r.mu.Unlock()
	return maps.Clone(r.sets)
}

// runController runs the real controller over one source until the test
// ends.
func runController(t *testing.T, src config.Source) (*controller.Controller, *recorder) {
	t.Helper()
	rec := &recorder{}
	c := controller.New(controller.Options{Publisher: rec, Sources: []config.Source{src}, Debounce: 5 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("controller: %v", err)
		}
	})
	select {
	case <-c.Ready():
	case <-time.After(30 * time.Second):
		t.Fatal("controller not ready after 30 s")
	}
	return c, rec
}

// diffSets describes how two published states differ ("" when equal).
func diffSets(file, kube map[string]map[string]proto.Message) string {
	var b strings.Builder
	for _, typeURL := range xds.AmbientTypes() {
		f, k := file[typeURL], kube[typeURL]
		short := typeURL[strings.LastIndex(typeURL, ".")+1:]
		for _, n := range slices.Sorted(maps.Keys(f)) {
			km, ok := k[n]
			switch {
			case !ok:
				fmt.Fprintf(&b, "%s %s: only from the file source\n", short, n)
			case !proto.Equal(f[n], km):
				fmt.Fprintf(&b, "%s %s differs:\n  file: %s\n  kube: %s\n", short, n, prototext.Format(f[n]), prototext.Format(km))
			}
		}
		for _, n := range slices.Sorted(maps.Keys(k)) {
			if _, ok := f[n]; !ok {
				fmt.Fprintf(&b, "%s %s: only from the kube source\n", short, n)
			}
		}
	}
	return b.String()
}

func count(sets map[string]map[string]proto.Message) string {
	var parts []string
	for _, t := range xds.AmbientTypes() {
		parts = append(parts, fmt.Sprintf("%s=%d", t[strings.LastIndex(t, ".")+1:], len(sets[t])))
	}
	return strings.Join(parts, " ")
}

// waitEqual waits until both recorders hold the same resources, and both
// differ from prev (the state before the change under test; nil for the
// first state). It returns the state.
func waitEqual(t *testing.T, what string, file, kube *recorder, prev map[string]map[string]proto.Message) map[string]map[string]proto.Message {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		f, k := file.snapshot(), kube.snapshot()
		d := diffSets(f, k)
		moved := prev == nil || (diffSets(prev, f) != "" && diffSets(prev, k) != "")
		if d == "" && moved && len(f[xds.AddressType]) > 0 {
			t.Logf("%s: equal (%s)", what, count(f))
			return f
		}
		if time.Now().After(deadline) {
			if d == "" {
				t.Fatalf("%s: the published resources did not change", what)
			}
			t.Fatalf("%s: the sources' published resources differ:\n%s", what, d)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// loadManifests loads YAML files with the file source's decoder.
func loadManifests(t *testing.T, files ...string) []config.Object {
	t.Helper()
	dir := t.TempDir()
	for i, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("%02d-%s", i, filepath.Base(f))), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	snap, err := filesource.LoadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	return snap.Objects()
}

// meshManifests are samples/demo and testdata/mesh.yaml.
func meshManifests(t *testing.T) []string {
	t.Helper()
	demo, err := filepath.Glob("../../samples/demo/*.yaml")
	if err != nil || len(demo) == 0 {
		t.Fatalf("samples/demo: %v", err)
	}
	return append(demo, "testdata/mesh.yaml")
}

// kubelet gives every pod the status a kubelet would report and every
// Service a cluster IP, the same way for both sources.
func kubelet(objs []config.Object) {
	pods, svcs := 0, 0
	for _, o := range objs {
		switch o := o.(type) {
		case *corev1.Pod:
			ip := netip.AddrFrom4([4]byte{10, 244, byte(pods / 200), byte(10 + pods%200)}).String()
			o.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}}
			pods++
		case *corev1.Service:
			if o.Spec.ClusterIP == "" {
				o.Spec.ClusterIP = netip.AddrFrom4([4]byte{10, 96, 1, byte(10 + svcs)}).String()
				svcs++
			}
		}
	}
}

// writeManifests writes objects as one YAML file (what the file source
// reads).
func writeManifests(t *testing.T, dir string, objs []config.Object) {
	t.Helper()
	var docs []string
	for _, o := range objs {
		y, err := yaml.Marshal(o)
		if err != nil {
			t.Fatalf("%s: %v", config.KeyOf(o), err)
		}
		docs = append(docs, string(y))
	}
	tmp := filepath.Join(dir, ".all.yaml.tmp")
	if err := os.WriteFile(tmp, []byte(strings.Join(docs, "---\n")), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "all.yaml")); err != nil {
		t.Fatal(err)
	}
}

type clients struct {
	kube    kubernetes.Interface
	istio   istioclient.Interface
	gateway gwclient.Interface
}

func newClients(t *testing.T, s *kubetest.Server) *clients {
	t.Helper()
	ic, err := istioclient.NewForConfig(s.Config)
	if err != nil {
		t.Fatal(err)
	}
	gc, err := gwclient.NewForConfig(s.Config)
	if err != nil {
		t.Fatal(err)
	}
	return &clients{kube: s.Client, istio: ic, gateway: gc}
}

// kindOrder is the order objects are created in: namespaces, then service
// accounts (pods need theirs), then the rest.
func kindOrder(o config.Object) int {
	switch config.KindOf(o) {
	case config.KindNamespace:
		return 0
	case config.KindServiceAccount:
		return 1
	case config.KindService:
		return 2
	case config.KindPod:
		return 3
	}
	return 4
}

// create makes objs on the API server, as kubectl and a kubelet would: a
// pod's status is set through the status subresource. Each namespace gets
// its "default" service account (no controller manager runs).
func (c *clients) create(t *testing.T, objs []config.Object) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	objs = slices.Clone(objs)
	slices.SortStableFunc(objs, func(a, b config.Object) int { return kindOrder(a) - kindOrder(b) })
	co := metav1.CreateOptions{FieldManager: "test"}
	for _, o := range objs {
		var err error
		switch o := o.(type) {
		case *corev1.Namespace:
			if _, err = c.kube.CoreV1().Namespaces().Create(ctx, o, co); err == nil || apierrors.IsAlreadyExists(err) {
				sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default", Namespace: o.Name}}
				_, err = c.kube.CoreV1().ServiceAccounts(o.Name).Create(ctx, sa, co)
			}
		case *corev1.ServiceAccount:
			_, err = c.kube.CoreV1().ServiceAccounts(o.Namespace).Create(ctx, o, co)
		case *corev1.Service:
			_, err = c.kube.CoreV1().Services(o.Namespace).Create(ctx, o, co)
		case *corev1.Pod:
			var p *corev1.Pod
			if p, err = c.kube.CoreV1().Pods(o.Namespace).Create(ctx, o, co); err == nil {
				p.Status = o.Status
				_, err = c.kube.CoreV1().Pods(o.Namespace).UpdateStatus(ctx, p, metav1.UpdateOptions{})
			}
		case *securityv1.AuthorizationPolicy:
			_, err = c.istio.SecurityV1().AuthorizationPolicies(o.Namespace).Create(ctx, o, co)
		case *securityv1.PeerAuthentication:
			_, err = c.istio.SecurityV1().PeerAuthentications(o.Namespace).Create(ctx, o, co)
		case *gatewayv1.Gateway:
			_, err = c.gateway.GatewayV1().Gateways(o.Namespace).Create(ctx, o, co)
		case *gatewayv1.HTTPRoute:
			_, err = c.gateway.GatewayV1().HTTPRoutes(o.Namespace).Create(ctx, o, co)
		case *gatewayv1.GRPCRoute:
			_, err = c.gateway.GatewayV1().GRPCRoutes(o.Namespace).Create(ctx, o, co)
		case *gatewayv1.TCPRoute:
			_, err = c.gateway.GatewayV1().TCPRoutes(o.Namespace).Create(ctx, o, co)
		default:
			t.Fatalf("create: unexpected %T", o)
		}
		if err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatalf("creating %s: %v", config.KeyOf(o), err)
		}
	}
}

// apiServerService is the API server's own Service (default/kubernetes),
// which every cluster has: the file manifests describe it too, so that
// both sources see the same cluster.
func apiServerService(t *testing.T, c *clients) *corev1.Service {
	t.Helper()
	svc, err := c.kube.CoreV1().Services("default").Get(context.Background(), "kubernetes", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	out := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: svc.Name, Namespace: svc.Namespace, Labels: svc.Labels},
		Spec: corev1.ServiceSpec{ClusterIP: svc.Spec.ClusterIP, Ports: svc.Spec.Ports}}
	out.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("Service"))
	return out
}

func find[T config.Object](objs []config.Object, namespace, name string) T {
	for _, o := range objs {
		if t, ok := o.(T); ok && o.GetNamespace() == namespace && o.GetName() == name {
			return t
		}
	}
	var zero T
	panic(fmt.Sprintf("no %T %s/%s", zero, namespace, name))
}

// TestSameModelFromBothSources loads one set of manifests (samples/demo and
// testdata/mesh.yaml) through the file source and through the API server
// and the kube source, runs the real controller on each and checks that
// they publish the same resources of every type; then it changes and
// deletes objects on both sides and checks again.
func TestSameModelFromBothSources(t *testing.T) {
	start := time.Now()
	srv := kubetest.Start(t, kubetest.Options{})
	crdStart := time.Now()
	srv.InstallCRDs(t, kubetest.MeshCRDs()...)
	t.Logf("API server up in %s, CRDs established in %s", crdStart.Sub(start).Round(time.Millisecond), time.Since(crdStart).Round(time.Millisecond))
	c := newClients(t, srv)

	objs := loadManifests(t, meshManifests(t)...)
	kubelet(objs)
	c.create(t, objs)
	objs = append(objs, apiServerService(t, c))

	// File side.
	dir := t.TempDir()
	writeManifests(t, dir, objs)
	fsrc := filesource.New(dir, nil)
	fsrc.Debounce = 10 * time.Millisecond
	_, fileRec := runController(t, fsrc)
	if errs := fsrc.Errors(); len(errs) > 0 {
		t.Fatalf("file source rejected the generated manifests: %v", errs)
	}

	// Kubernetes side.
	ksrc, err := kubesource.New(srv.Config, kubesource.Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	kctl, kubeRec := runController(t, ksrc)
	if m := ksrc.Missing(); len(m) > 0 {
		t.Fatalf("kinds missing although their CRDs are installed: %v", m)
	}
	state := waitEqual(t, "initial", fileRec, kubeRec, nil)
	if n := len(kctl.Store().List(config.KindEndpointSlice)) + len(kctl.Store().List(config.KindNode)); n != 0 {
		t.Logf("kube source also stores %d nodes and endpoint slices", n)
	}

	// Changes: a policy gains a rule, a pod stops, a Service label binds
	// it elsewhere; then deletes: a pod, a route and a policy.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ap := find[*securityv1.AuthorizationPolicy](objs, "demo", "allow-client")
	ap.Spec.Rules = append(ap.Spec.Rules, &securityv1beta1.Rule{To: []*securityv1beta1.Rule_To{{Operation: &securityv1beta1.Operation{Ports: []string{"9000"}}}}})
	cur, err := c.istio.SecurityV1().AuthorizationPolicies("demo").Get(ctx, "allow-client", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cur.Spec.Rules = ap.Spec.Rules
	if _, err := c.istio.SecurityV1().AuthorizationPolicies("demo").Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod := find[*corev1.Pod](objs, "shop", "echo-v1-b")
	pod.Status.Phase = corev1.PodFailed
	kp, err := c.kube.CoreV1().Pods("shop").Get(ctx, pod.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	kp.Status.Phase = corev1.PodFailed
	if _, err := c.kube.CoreV1().Pods("shop").UpdateStatus(ctx, kp, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	svc := find[*corev1.Service](objs, "demo", "echo")
	svc.Labels = map[string]string{"istio.io/use-waypoint": "none", "team": "demo"}
	patch := []byte(`{"metadata":{"labels":{"istio.io/use-waypoint":"none","team":"demo"}}}`)
	if _, err := c.kube.CoreV1().Services("demo").Patch(ctx, "echo", types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	writeManifests(t, dir, objs)
	state = waitEqual(t, "after updates", fileRec, kubeRec, state)

	deleted := map[config.Key]bool{
		{Kind: config.KindPod, Namespace: "demo", Name: "echo-2"}:                 true,
		{Kind: config.KindHTTPRoute, Namespace: "shop", Name: "api"}:              true,
		{Kind: config.KindAuthorizationPolicy, Namespace: "shop", Name: "api-l7"}: true,
		{Kind: config.KindTCPRoute, Namespace: "shop", Name: "api-tcp"}:           true,
		{Kind: config.KindPeerAuthentication, Namespace: "demo", Name: "default"}: true,
	}
	objs = slices.DeleteFunc(objs, func(o config.Object) bool { return deleted[config.KeyOf(o)] })
	writeManifests(t, dir, objs)
	del := metav1.DeleteOptions{GracePeriodSeconds: new(int64)}
	for _, err := range []error{
		c.kube.CoreV1().Pods("demo").Delete(ctx, "echo-2", del),
		c.gateway.GatewayV1().HTTPRoutes("shop").Delete(ctx, "api", del),
		c.istio.SecurityV1().AuthorizationPolicies("shop").Delete(ctx, "api-l7", del),
		c.gateway.GatewayV1().TCPRoutes("shop").Delete(ctx, "api-tcp", del),
		c.istio.SecurityV1().PeerAuthentications("demo").Delete(ctx, "default", del),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	state = waitEqual(t, "after deletes", fileRec, kubeRec, state)
	for _, name := range []string{"Kubernetes//Pod/demo/echo-2"} {
		if _, ok := state[xds.AddressType][name]; ok {
			t.Errorf("%s still published", name)
		}
	}
	for k := range deleted {
		if _, ok := kctl.Store().Get(k); ok {
			t.Errorf("%s still in the kube controller's store", k)
		}
	}
	t.Logf("total %s", time.Since(start).Round(time.Millisecond))
}

// TestNoRebuildOnMetadataChurn checks that updates which change only what
// the model must not read (resourceVersion, managedFields, status written by
// a controller) reach the store as no-ops: no rebuild.
func TestNoRebuildOnMetadataChurn(t *testing.T) {
	srv := kubetest.Start(t, kubetest.Options{})
	srv.InstallCRDs(t, kubetest.MeshCRDs()...)
	c := newClients(t, srv)
	objs := loadManifests(t, meshManifests(t)...)
	kubelet(objs)
	c.create(t, objs)
	src, err := kubesource.New(srv.Config, kubesource.Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// What only a cluster has: a Node (with the kubelet's heartbeat) and
	// an EndpointSlice.
	node, err := c.kube.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node1",
		Labels: map[string]string{"topology.kubernetes.io/zone": "z1"}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	node.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
		LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now()}}
	if node, err = c.kube.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eps := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Name: "echo-x1", Namespace: "shop",
		Labels:      map[string]string{discoveryv1.LabelServiceName: "echo"},
		Annotations: map[string]string{"endpoints.kubernetes.io/last-change-trigger-time": "2026-01-01T00:00:00Z"}},
		AddressType: discoveryv1.AddressTypeIPv4, Endpoints: []discoveryv1.Endpoint{{Addresses: []string{"10.244.0.11"}}}}
	if eps, err = c.kube.DiscoveryV1().EndpointSlices("shop").Create(ctx, eps, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	ctl, _ := runController(t, src)
	if n := ctl.Store().Nodes(); len(n) != 1 || n[0].Labels["topology.kubernetes.io/zone"] != "z1" || !n[0].Status.Conditions[0].LastHeartbeatTime.IsZero() {
		t.Fatalf("nodes in the store: %+v", n)
	}
	if e := ctl.Store().EndpointSlices(); len(e) != 1 || len(e[0].Annotations) != 0 || e[0].APIVersion != "discovery.k8s.io/v1" {
		t.Fatalf("endpoint slices in the store: %+v", e)
	}
	quiet := func() uint64 {
		// Wait until no build happened for a while.
		last := ctl.Stats().Builds
		for {
			time.Sleep(300 * time.Millisecond)
			if b := ctl.Stats().Builds; b == last {
				return b
			} else {
				last = b
			}
		}
	}
	before := quiet()

	// Server-side apply of the same labels by another manager: only
	// managedFields and resourceVersion change.
	apply := []byte(`{"apiVersion":"v1","kind":"Service","metadata":{"name":"echo","namespace":"shop"},"spec":{"selector":{"app":"echo"}}}`)
	if _, err := c.kube.CoreV1().Services("shop").Patch(ctx, "echo", types.ApplyPatchType, apply, metav1.PatchOptions{FieldManager: "someone-else", Force: new(bool)}); err != nil {
		t.Fatal(err)
	}
	// A controller writes route and Gateway status.
	gw, err := c.gateway.GatewayV1().Gateways("shop").Get(ctx, "waypoint", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	gw.Status.Conditions = []metav1.Condition{{Type: "Accepted", Status: metav1.ConditionTrue, Reason: "Accepted", Message: "by a test", LastTransitionTime: metav1.Now()}}
	if _, err := c.gateway.GatewayV1().Gateways("shop").UpdateStatus(ctx, gw, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	// kubectl annotates its last-applied configuration.
	ann := []byte(`{"metadata":{"annotations":{"kubectl.kubernetes.io/last-applied-configuration":"{}"}}}`)
	if _, err := c.istio.SecurityV1().AuthorizationPolicies("shop").Patch(ctx, "api-l7", types.MergePatchType, ann, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	// The kubelet's heartbeat; the EndpointSlice controller's trigger time.
	node.Status.Conditions[0].LastHeartbeatTime = metav1.NewTime(time.Now().Add(time.Minute))
	if _, err := c.kube.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eps.Annotations["endpoints.kubernetes.io/last-change-trigger-time"] = "2026-01-01T00:01:00Z"
	if _, err := c.kube.DiscoveryV1().EndpointSlices("shop").Update(ctx, eps, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	// Wait for the events to have arrived: a real change after them
	// must then be the only rebuild.
	time.Sleep(time.Second)
	if after := quiet(); after != before {
		t.Errorf("metadata-only updates caused %d rebuilds", after-before)
	}
	lbl := []byte(`{"metadata":{"labels":{"team":"shop"}}}`)
	if _, err := c.kube.CoreV1().Services("shop").Patch(ctx, "echo", types.MergePatchType, lbl, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for ctl.Stats().Builds == before {
		if time.Now().After(deadline) {
			t.Fatal("a label change caused no rebuild")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestMissingCRDs starts the source on an API server without any CRD: it
// syncs at once with those kinds empty, then picks them up once the CRDs
// are installed.
func TestMissingCRDs(t *testing.T) {
	srv := kubetest.Start(t, kubetest.Options{})
	c := newClients(t, srv)
	src, err := kubesource.New(srv.Config, kubesource.Options{Logger: testLogger(t), CRDRecheck: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	ctl, rec := runController(t, src)
	t.Logf("synced without CRDs in %s", time.Since(start).Round(time.Millisecond))
	want := []string{config.KindAuthorizationPolicy, config.KindGRPCRoute, config.KindGateway, config.KindHTTPRoute, config.KindPeerAuthentication, config.KindTCPRoute}
	slices.Sort(want)
	if got := src.Missing(); !slices.Equal(got, want) {
		t.Fatalf("Missing() = %v, want %v", got, want)
	}
	if len(rec.snapshot()[xds.AuthorizationType]) != 0 {
		t.Fatal("policies published without the CRD")
	}

	// Only Istio's CRDs first: the Gateway API kinds stay missing.
	srv.InstallCRDs(t, kubetest.CRDFile{Module: kubetest.IstioModule, Path: kubetest.IstioCRDs,
		Names: []string{"authorizationpolicies.security.istio.io", "peerauthentications.security.istio.io"}})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ap := &securityv1.AuthorizationPolicy{ObjectMeta: metav1.ObjectMeta{Name: "deny-all", Namespace: "default"}}
	ap.Spec.Action = securityv1beta1.AuthorizationPolicy_DENY
	ap.Spec.Rules = []*securityv1beta1.Rule{{}}
	if _, err := c.istio.SecurityV1().AuthorizationPolicies("default").Create(ctx, ap, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, ok := ctl.Store().Get(config.Key{Kind: config.KindAuthorizationPolicy, Namespace: "default", Name: "deny-all"}); ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the AuthorizationPolicy never arrived after its CRD was installed (missing: %v)", src.Missing())
		}
		time.Sleep(50 * time.Millisecond)
	}
	want = []string{config.KindGRPCRoute, config.KindGateway, config.KindHTTPRoute, config.KindTCPRoute}
	if got := src.Missing(); !slices.Equal(got, want) {
		t.Fatalf("Missing() = %v, want %v", got, want)
	}
	if !src.HasSynced() {
		t.Fatal("not synced")
	}
}
