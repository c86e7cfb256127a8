package controller

import (
	"context"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	securityv1beta1 "istio.io/api/security/v1beta1"
	typev1beta1 "istio.io/api/type/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambit-mesh/ambit/controlplane/config"
	"github.com/ambit-mesh/ambit/controlplane/xds"
)

// recorder is a Publisher that keeps the last set per type and counts
// publishes.
type recorder struct {
	mu    sync.Mutex
	sets  map[string]map[string]proto.Message
	calls int
}

func (r *recorder) Publish(typeURL string, set map[string]proto.Message) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.sets == nil {
		r.sets = map[string]map[string]proto.Message{}
	}
	r.sets[typeURL] = set
	r.calls++
	return nil
}

func (r *recorder) names(typeURL string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Sorted(maps.Keys(r.sets[typeURL]))
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.calls
}

func ns(name string, ambient bool) *corev1.Namespace {
	n := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if ambient {
		n.Labels = map[string]string{"istio.io/dataplane-mode": "ambient"}
	}
	return n
}

func pod(name, ip string, phase corev1.PodPhase) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "demo", Labels: map[string]string{"app": name}},
		Spec:   corev1.PodSpec{NodeName: "node1", Containers: []corev1.Container{{Name: "c"}}},
		Status: corev1.PodStatus{PodIP: ip, Phase: phase}}
}

func svc(name, vip string) *corev1.Service {
	return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "demo"},
		Spec: corev1.ServiceSpec{ClusterIP: vip, Selector: map[string]string{"app": name}, Ports: []corev1.ServicePort{{Port: 80}}}}
}

func policy(name string) *securityv1.AuthorizationPolicy {
	return &securityv1.AuthorizationPolicy{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "demo"},
		Spec: securityv1beta1.AuthorizationPolicy{Selector: &typev1beta1.WorkloadSelector{MatchLabels: map[string]string{"app": "echo"}}}}
}

func strict() *securityv1.PeerAuthentication {
	return &securityv1.PeerAuthentication{ObjectMeta: metav1.ObjectMeta{Name: "default", Namespace: "demo"},
		Spec: securityv1beta1.PeerAuthentication{Mtls: &securityv1beta1.PeerAuthentication_MutualTLS{Mode: securityv1beta1.PeerAuthentication_MutualTLS_STRICT}}}
}

func add(o config.Object) config.Event {
	return config.Event{Type: config.Added, Key: config.KeyOf(o), Object: o}
}
func upd(o config.Object) config.Event {
	return config.Event{Type: config.Updated, Key: config.KeyOf(o), Object: o}
}
func del(o config.Object) config.Event {
	return config.Event{Type: config.Deleted, Key: config.KeyOf(o)}
}

// run starts a controller with a fast debounce and returns it with its
// recorder.
func run(t *testing.T, opts Options) (*Controller, *recorder) {
	t.Helper()
	rec := &recorder{}
	opts.Publisher = rec
	if opts.Debounce == 0 {
		opts.Debounce = 5 * time.Millisecond
	}
	c := New(opts)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return c, rec
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// settle waits until the controller has built after the last change.
func settle(t *testing.T, c *Controller) {
	t.Helper()
	before := c.Stats().Builds
	start := time.Now()
	eventually(t, "a build", func() bool {
		st := c.Stats()
		return st.Builds > before || (st.LastBuild.After(start.Add(-time.Millisecond)) && st.Builds > 0)
	})
	// One more quiet period: nothing else pending.
	time.Sleep(20 * time.Millisecond)
}

func TestControllerPublishes(t *testing.T) {
	const echo = "Kubernetes//Pod/demo/echo"
	const client = "Kubernetes//Pod/demo/client"
	const echoSvc = "demo/echo.demo.svc.cluster.local"
	for _, tc := range []struct {
		name      string
		events    []config.Event
		addresses []string
		authz     []string
	}{
		{"empty", nil, []string{}, []string{}},
		{"pod with status is a workload", []config.Event{add(ns("demo", true)), add(pod("echo", "10.0.0.2", corev1.PodRunning))},
			[]string{echo}, []string{}},
		{"pod without IP is not", []config.Event{add(pod("echo", "", corev1.PodPending))}, []string{}, []string{}},
		{"status arrives as an update", []config.Event{add(pod("echo", "", corev1.PodPending)), upd(pod("echo", "10.0.0.2", corev1.PodRunning))},
			[]string{echo}, []string{}},
		{"finished pod is dropped", []config.Event{add(pod("echo", "10.0.0.2", corev1.PodRunning)), upd(pod("echo", "10.0.0.2", corev1.PodSucceeded))},
			[]string{}, []string{}},
		{"service and its pods", []config.Event{add(svc("echo", "10.96.0.20")), add(pod("echo", "10.0.0.2", corev1.PodRunning)), add(pod("client", "10.0.0.3", corev1.PodRunning))},
			[]string{client, echo, echoSvc}, []string{}},
		{"deleted pod is removed", []config.Event{add(pod("echo", "10.0.0.2", corev1.PodRunning)), add(pod("client", "10.0.0.3", corev1.PodRunning)), del(pod("client", "", ""))},
			[]string{echo}, []string{}},
		{"deleted service is removed", []config.Event{add(svc("echo", "10.96.0.20")), del(svc("echo", ""))}, []string{}, []string{}},
		{"policy", []config.Event{add(policy("allow-nothing")), add(pod("echo", "10.0.0.2", corev1.PodRunning))},
			[]string{echo}, []string{"demo/allow-nothing"}},
		{"deleted policy is removed", []config.Event{add(policy("a")), add(policy("b")), del(policy("a"))}, []string{}, []string{"demo/b"}},
		{"strict peer authentication", []config.Event{add(strict()), add(pod("echo", "10.0.0.2", corev1.PodRunning))},
			[]string{echo}, []string{"istio-system/istio_converted_static_strict"}},
		{"waypoint objects are stored, not published", []config.Event{
			add(&gatewayv1.Gateway{ObjectMeta: metav1.ObjectMeta{Name: "wp", Namespace: "demo"}}),
			add(&gatewayv1.HTTPRoute{ObjectMeta: metav1.ObjectMeta{Name: "r", Namespace: "demo"}}),
			add(&gatewayv1.GRPCRoute{ObjectMeta: metav1.ObjectMeta{Name: "g", Namespace: "demo"}}),
		}, []string{}, []string{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, rec := run(t, Options{})
			for _, ev := range tc.events {
				c.Apply(ev)
			}
			settle(t, c)
			if got := rec.names(xds.AddressType); !slices.Equal(got, tc.addresses) && (len(got) != 0 || len(tc.addresses) != 0) {
				t.Errorf("addresses %v, want %v", got, tc.addresses)
			}
			if got := rec.names(xds.AuthorizationType); !slices.Equal(got, tc.authz) && (len(got) != 0 || len(tc.authz) != 0) {
				t.Errorf("authorizations %v, want %v", got, tc.authz)
			}
		})
	}
}

func TestStore(t *testing.T) {
	s := NewStore()
	for _, tc := range []struct {
		ev      config.Event
		changed bool
	}{
		{add(ns("demo", false)), true},
		{add(ns("demo", false)), false}, // the same object again
		{upd(ns("demo", true)), true},
		{upd(ns("demo", true)), false},
		{del(ns("other", false)), false}, // unknown
		{add(&gatewayv1.Gateway{ObjectMeta: metav1.ObjectMeta{Name: "wp", Namespace: "demo"}}), true},
		{del(ns("demo", false)), true},
	} {
		if got := s.Apply(tc.ev); got != tc.changed {
			t.Errorf("%v %v: changed %v, want %v", tc.ev.Type, tc.ev.Key, got, tc.changed)
		}
	}
	if got := s.Kinds(); !slices.Equal(got, []string{"Gateway"}) {
		t.Errorf("kinds %v", got)
	}
	if len(s.Gateways()) != 1 || len(s.Namespaces()) != 0 {
		t.Errorf("gateways %d namespaces %d", len(s.Gateways()), len(s.Namespaces()))
	}
	if d := s.Dump(); d["Gateway"]["demo/wp"] == nil {
		t.Errorf("dump %v", d)
	}
}

// TestDebounce: a burst of changes is one build; a change that changes
// nothing is no build.
func TestDebounce(t *testing.T) {
	c, rec := run(t, Options{Debounce: 30 * time.Millisecond})
	settle(t, c) // the initial, empty state
	first := c.Stats().Builds
	for i := range 20 {
		c.Apply(upd(pod("echo", "10.0.0."+string(rune('2'+i%8)), corev1.PodRunning)))
	}
	settle(t, c)
	if n := c.Stats().Builds - first; n != 1 {
		t.Errorf("%d builds for one burst, want 1", n)
	}
	calls := rec.count()
	c.Apply(upd(pod("echo", "10.0.0."+string(rune('2'+19%8)), corev1.PodRunning))) // unchanged
	time.Sleep(80 * time.Millisecond)
	if rec.count() != calls {
		t.Error("an unchanged object caused a publish")
	}
}

// TestSyncHoldsFirstPublish: nothing is published until every Sync
// function has been called, so proxies never get a partial first state.
func TestSyncHoldsFirstPublish(t *testing.T) {
	rec := &recorder{}
	c := New(Options{Publisher: rec, Debounce: 5 * time.Millisecond})
	synced := c.Sync()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go c.Run(ctx)
	c.Apply(add(policy("p")))
	time.Sleep(50 * time.Millisecond)
	if rec.count() != 0 {
		t.Fatal("published before synced")
	}
	select {
	case <-c.Ready():
		t.Fatal("ready before synced")
	default:
	}
	c.Apply(add(pod("echo", "10.0.0.2", corev1.PodRunning)))
	synced()
	<-c.Ready()
	if got := rec.names(xds.AddressType); !slices.Equal(got, []string{"Kubernetes//Pod/demo/echo"}) {
		t.Errorf("first state %v", got)
	}
	if got := rec.names(xds.AuthorizationType); !slices.Equal(got, []string{"demo/p"}) {
		t.Errorf("first policies %v", got)
	}
}

// fakeSource sends its objects, then reports synced.
type fakeSource struct {
	objs   []config.Object
	synced chan struct{}
	mu     sync.Mutex
	done   bool
}

func (f *fakeSource) Run(ctx context.Context, out chan<- config.Event) error {
	for _, o := range f.objs {
		out <- add(o)
	}
	<-f.synced
	f.mu.Lock()
	f.done = true
	f.mu.Unlock()
	<-ctx.Done()
	return nil
}

func (f *fakeSource) HasSynced() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.done
}

func TestSourceSync(t *testing.T) {
	src := &fakeSource{objs: []config.Object{pod("echo", "10.0.0.2", corev1.PodRunning), policy("p")}, synced: make(chan struct{})}
	c, rec := run(t, Options{Sources: []config.Source{src}})
	time.Sleep(40 * time.Millisecond)
	if rec.count() != 0 {
		t.Fatal("published before the source synced")
	}
	close(src.synced)
	select {
	case <-c.Ready():
	case <-time.After(3 * time.Second):
		t.Fatal("not ready after the source synced")
	}
	if got := rec.names(xds.AddressType); len(got) != 1 {
		t.Errorf("addresses %v", got)
	}
}

func TestWarnings(t *testing.T) {
	var mu sync.Mutex
	var got [][]string
	c, _ := run(t, Options{OnWarnings: func(w []string) { mu.Lock(); got = append(got, w); mu.Unlock() }})
	p := policy("spiffe")
	p.Spec.Rules = []*securityv1beta1.Rule{{From: []*securityv1beta1.Rule_From{{Source: &securityv1beta1.Source{Principals: []string{"spiffe://cluster.local/ns/demo/sa/client"}}}}}}
	c.Apply(add(p))
	eventually(t, "a warning", func() bool { return len(c.Warnings()) > 0 })
	c.Apply(del(p))
	eventually(t, "no warning", func() bool { return len(c.Warnings()) == 0 })
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 2 || len(got[0]) == 0 || len(got[1]) != 0 {
		t.Errorf("OnWarnings calls %q", got)
	}
}
