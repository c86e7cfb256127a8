package kubestatus_test

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	securityv1beta1 "istio.io/api/security/v1beta1"
	typev1beta1 "istio.io/api/type/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gwclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/ambit-mesh/ambit/controlplane/config"
	"github.com/ambit-mesh/ambit/controlplane/controller"
	"github.com/ambit-mesh/ambit/controlplane/kubesource"
	"github.com/ambit-mesh/ambit/controlplane/kubestatus"
	"github.com/ambit-mesh/ambit/internal/kubetest"
)

type nopPublisher struct{}

func (nopPublisher) Publish(string, map[string]proto.Message) error { return nil }

// replica is one control-plane replica: kube source, controller and
// status writer.
type replica struct {
	ctl    *controller.Controller
	w      *kubestatus.Writer
	stopW  context.CancelFunc
	wDone  chan struct{}
	cancel context.CancelFunc
	done   chan struct{}
}

func startReplica(t *testing.T, srv *kubetest.Server, id string) *replica {
	t.Helper()
	logger := testLogger(t).With("replica", id)
	src, err := kubesource.New(srv.Config, kubesource.Options{Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	w, err := kubestatus.New(srv.Config, kubestatus.Options{Logger: logger, Identity: id,
		LeaseDuration: 2 * time.Second, RenewDeadline: 1500 * time.Millisecond, RetryPeriod: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	r := &replica{w: w, wDone: make(chan struct{}), done: make(chan struct{})}
	r.ctl = controller.New(controller.Options{Publisher: nopPublisher{}, Sources: []config.Source{src}, OnStatus: w.OnStatus,
		Debounce: 5 * time.Millisecond, Logger: logger})
	w.SetObjects(r.ctl.Store())
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() {
		defer close(r.done)
		if err := r.ctl.Run(ctx); err != nil {
			t.Errorf("controller %s: %v", id, err)
		}
	}()
	wctx, stopW := context.WithCancel(ctx)
	r.stopW = stopW
	go func() {
		defer close(r.wDone)
		if err := w.Run(wctx); err != nil {
			t.Errorf("writer %s: %v", id, err)
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-r.wDone
		<-r.done
	})
	return r
}

// stopWriter stops the replica's status writer (it releases the Lease).
func (r *replica) stopWriter() {
	r.stopW()
	<-r.wDone
}

// setup starts an API server with the mesh CRDs and a namespace with a
// waypoint (Gateway, Service, running pod), a Service bound to it, a route
// with a missing backend and a Gateway of another class.
func setup(t *testing.T) (*kubetest.Server, gwclient.Interface) {
	t.Helper()
	srv := kubetest.Start(t, kubetest.Options{})
	srv.InstallCRDs(t, kubetest.MeshCRDs()...)
	gw, err := gwclient.NewForConfig(srv.Config)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	must := func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	kube := srv.Client
	for _, ns := range []string{"istio-system", "shop"} {
		if err := srv.EnsureServiceAccount(ctx, ns, "default"); err != nil {
			t.Fatal(err)
		}
	}
	must(kube.CoreV1().Namespaces().Update(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop",
		Labels: map[string]string{"istio.io/dataplane-mode": "ambient", "istio.io/use-waypoint": "waypoint"}}}, metav1.UpdateOptions{}))
	must(kube.CoreV1().Services("shop").Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "waypoint",
		Labels: map[string]string{"gateway.networking.k8s.io/gateway-name": "waypoint"}},
		Spec: corev1.ServiceSpec{ClusterIP: "10.96.5.5", Selector: map[string]string{"gateway.networking.k8s.io/gateway-name": "waypoint"},
			Ports: []corev1.ServicePort{{Name: "mesh", Port: 15008}}}}, metav1.CreateOptions{}))
	must(kube.CoreV1().Services("shop").Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "echo"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "echo"},
			Ports: []corev1.ServicePort{{Name: "http", Port: 8080, TargetPort: intstr.FromInt32(8080)}}}}, metav1.CreateOptions{}))
	runPod(t, srv, "shop", "waypoint-1", "10.244.0.5", map[string]string{"gateway.networking.k8s.io/gateway-name": "waypoint"})
	runPod(t, srv, "shop", "echo-1", "10.244.0.6", map[string]string{"app": "echo"})
	must(gw.GatewayV1().Gateways("shop").Create(ctx, &gatewayv1.Gateway{ObjectMeta: metav1.ObjectMeta{Name: "waypoint"},
		Spec: gatewayv1.GatewaySpec{GatewayClassName: "istio-waypoint",
			Listeners: []gatewayv1.Listener{{Name: "mesh", Port: 15008, Protocol: "HBONE"}}}}, metav1.CreateOptions{}))
	must(gw.GatewayV1().Gateways("shop").Create(ctx, &gatewayv1.Gateway{ObjectMeta: metav1.ObjectMeta{Name: "ingress"},
		Spec: gatewayv1.GatewaySpec{GatewayClassName: "someone-else",
			Listeners: []gatewayv1.Listener{{Name: "http", Port: 80, Protocol: "HTTP"}}}}, metav1.CreateOptions{}))
	parent := gatewayv1.ParentReference{Group: ptr.To(gatewayv1.Group("")), Kind: ptr.To(gatewayv1.Kind("Service")), Name: "echo", Port: ptr.To(gatewayv1.PortNumber(8080))}
	must(gw.GatewayV1().HTTPRoutes("shop").Create(ctx, &gatewayv1.HTTPRoute{ObjectMeta: metav1.ObjectMeta{Name: "echo"},
		Spec: gatewayv1.HTTPRouteSpec{CommonRouteSpec: gatewayv1.CommonRouteSpec{ParentRefs: []gatewayv1.ParentReference{parent}},
			Rules: []gatewayv1.HTTPRouteRule{{BackendRefs: []gatewayv1.HTTPBackendRef{{BackendRef: gatewayv1.BackendRef{
				BackendObjectReference: gatewayv1.BackendObjectReference{Name: "no-such-service", Port: ptr.To(gatewayv1.PortNumber(8080))}}}}}}}},
		metav1.CreateOptions{}))
	ic, err := istioclient.NewForConfig(srv.Config)
	if err != nil {
		t.Fatal(err)
	}
	for name, set := range map[string]func(*securityv1beta1.AuthorizationPolicy){
		"l4": func(s *securityv1beta1.AuthorizationPolicy) {
			s.Rules = []*securityv1beta1.Rule{{From: []*securityv1beta1.Rule_From{{Source: &securityv1beta1.Source{
				Principals: []string{"cluster.local/ns/shop/sa/client"}}}}}}
		},
		"http": func(s *securityv1beta1.AuthorizationPolicy) {
			s.Rules = []*securityv1beta1.Rule{{To: []*securityv1beta1.Rule_To{{Operation: &securityv1beta1.Operation{
				Methods: []string{"GET"}}}}}}
		},
		"audit": func(s *securityv1beta1.AuthorizationPolicy) { s.Action = securityv1beta1.AuthorizationPolicy_AUDIT },
		"at-waypoint": func(s *securityv1beta1.AuthorizationPolicy) {
			s.TargetRefs = []*typev1beta1.PolicyTargetReference{{Kind: "Gateway", Group: "gateway.networking.k8s.io", Name: "waypoint"}}
		},
		"at-service": func(s *securityv1beta1.AuthorizationPolicy) {
			s.TargetRefs = []*typev1beta1.PolicyTargetReference{{Kind: "Service", Name: "unbound"}}
		},
	} {
		p := &securityv1.AuthorizationPolicy{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "shop"}}
		set(&p.Spec)
		must(ic.SecurityV1().AuthorizationPolicies("shop").Create(ctx, p, metav1.CreateOptions{}))
	}
	must(kube.CoreV1().Services("shop").Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "unbound",
		Labels: map[string]string{"istio.io/use-waypoint": "none"}},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "unbound"}, Ports: []corev1.ServicePort{{Name: "tcp", Port: 9000}}}}, metav1.CreateOptions{}))
	return srv, gw
}

// policyIs checks an AuthorizationPolicy's condition of our types, as
// "Type=Status/Reason".
func policyIs(t *testing.T, srv *kubetest.Server, name, want string) func() (bool, string) {
	ic, err := istioclient.NewForConfig(srv.Config)
	if err != nil {
		t.Fatal(err)
	}
	return func() (bool, string) {
		p, err := ic.SecurityV1().AuthorizationPolicies("shop").Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		var got []string
		for _, c := range p.Status.GetConditions() {
			if c.GetType() == "ZtunnelAccepted" || c.GetType() == "WaypointAccepted" {
				got = append(got, c.GetType()+"="+c.GetStatus()+"/"+c.GetReason())
				if c.GetObservedGeneration() != p.Generation || c.GetMessage() == "" || c.GetLastTransitionTime() == nil {
					return false, fmt.Sprintf("condition %v: generation, message or time missing", c)
				}
			}
		}
		return len(got) == 1 && got[0] == want, fmt.Sprint(got)
	}
}

// runPod creates a pod and reports it running, as a kubelet would.
func runPod(t *testing.T, srv *kubetest.Server, ns, name, ip string, labels map[string]string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	p, err := srv.Client.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Spec: corev1.PodSpec{NodeName: "node1", Containers: []corev1.Container{{Name: "c", Image: "ambit"}}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}}
	if _, err := srv.Client.CoreV1().Pods(ns).UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func eventually(t *testing.T, what string, timeout time.Duration, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s; last: %s", what, state)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func condState(conds []metav1.Condition, typ string) string {
	c := meta.FindStatusCondition(conds, typ)
	if c == nil {
		return "none"
	}
	return string(c.Status) + "/" + c.Reason
}

func gatewayIs(t *testing.T, gw gwclient.Interface, programmed string) func() (bool, string) {
	return func() (bool, string) {
		g, err := gw.GatewayV1().Gateways("shop").Get(context.Background(), "waypoint", metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		var addrs []string
		for _, a := range g.Status.Addresses {
			addrs = append(addrs, string(ptr.Deref(a.Type, ""))+"="+a.Value)
		}
		state := "Accepted " + condState(g.Status.Conditions, "Accepted") + ", Programmed " + condState(g.Status.Conditions, "Programmed") +
			", addresses " + strings.Join(addrs, ",")
		want := "Accepted True/Accepted, Programmed " + programmed + ", addresses IPAddress=10.96.5.5,Hostname=waypoint.shop.svc.cluster.local"
		c := meta.FindStatusCondition(g.Status.Conditions, "Programmed")
		return state == want && c != nil && c.ObservedGeneration == g.Generation, state
	}
}

func routeIs(gw gwclient.Interface, resolved string) func() (bool, string) {
	return func() (bool, string) {
		r, err := gw.GatewayV1().HTTPRoutes("shop").Get(context.Background(), "echo", metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		var states []string
		ok := false
		for _, p := range r.Status.Parents {
			s := string(p.ControllerName) + ": Accepted " + condState(p.Conditions, "Accepted") + ", ResolvedRefs " + condState(p.Conditions, "ResolvedRefs")
			states = append(states, s)
			if p.ControllerName == kubestatus.DefaultControllerName && p.ParentRef.Name == "echo" &&
				condState(p.Conditions, "Accepted") == "True/Accepted" && condState(p.Conditions, "ResolvedRefs") == resolved {
				ok = true
			}
		}
		return ok, strings.Join(states, "; ")
	}
}

// TestStatusWriteBack: a waypoint Gateway gets Accepted, Programmed and its
// addresses; a route with a missing backend gets ResolvedRefs False; other
// controllers' route status and Gateways of other classes are left alone;
// writing status causes no rebuild and no rewrite.
func TestStatusWriteBack(t *testing.T) {
	start := time.Now()
	srv, gw := setup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// Another controller's entry in the route's status must survive.
	r, err := gw.GatewayV1().HTTPRoutes("shop").Get(ctx, "echo", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	r.Status.Parents = []gatewayv1.RouteParentStatus{{ParentRef: r.Spec.ParentRefs[0], ControllerName: "example.com/other",
		Conditions: []metav1.Condition{{Type: "Accepted", Status: "False", Reason: "NotAllowedByListeners", Message: "not mine", LastTransitionTime: metav1.Now()}}}}
	if _, err := gw.GatewayV1().HTTPRoutes("shop").UpdateStatus(ctx, r, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Logf("setup %s", time.Since(start).Round(time.Millisecond))

	rep := startReplica(t, srv, "only")
	eventually(t, "the waypoint Gateway programmed", 20*time.Second, gatewayIs(t, gw, "True/Programmed"))
	eventually(t, "the route's missing backend reported", 20*time.Second, routeIs(gw, "False/BackendNotFound"))
	for _, tc := range []struct{ name, want string }{
		{"l4", "ZtunnelAccepted=True/Accepted"},
		{"http", "ZtunnelAccepted=True/UnsupportedValue"},
		{"audit", "ZtunnelAccepted=False/UnsupportedValue"},
		{"at-waypoint", "WaypointAccepted=True/Accepted"},
		{"at-service", "WaypointAccepted=False/AncestorNotBound"},
	} {
		eventually(t, "policy "+tc.name+" "+tc.want, 20*time.Second, policyIs(t, srv, tc.name, tc.want))
	}
	t.Logf("status written %s after the start", time.Since(start).Round(time.Millisecond))
	r, err = gw.GatewayV1().HTTPRoutes("shop").Get(ctx, "echo", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Status.Parents) != 2 || r.Status.Parents[0].ControllerName != "example.com/other" {
		t.Errorf("route parents: %+v", r.Status.Parents)
	}
	other, err := gw.GatewayV1().Gateways("shop").Get(ctx, "ingress", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if c := meta.FindStatusCondition(other.Status.Conditions, "Accepted"); c != nil && c.Status != metav1.ConditionUnknown {
		t.Errorf("a Gateway of another class got status: %+v", other.Status.Conditions)
	}

	// Quiet: our own writes change no model input, so no rebuild and no
	// further write.
	time.Sleep(500 * time.Millisecond)
	builds, writes := rep.ctl.Stats().Builds, rep.w.Stats().Writes
	time.Sleep(time.Second)
	if b, w := rep.ctl.Stats().Builds, rep.w.Stats().Writes; b != builds || w != writes {
		t.Errorf("not quiet after writing status: builds %d -> %d, writes %d -> %d", builds, b, writes, w)
	}

	// The route's backend appears; the waypoint's pod goes away.
	if _, err := srv.Client.CoreV1().Services("shop").Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "no-such-service"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "echo"}, Ports: []corev1.ServicePort{{Name: "http", Port: 8080}}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the route's backend resolved", 20*time.Second, routeIs(gw, "True/ResolvedRefs"))
	if err := srv.Client.CoreV1().Pods("shop").Delete(ctx, "waypoint-1", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the waypoint no longer programmed (addresses kept)", 20*time.Second, gatewayIs(t, gw, "False/NoResources"))
	if st := rep.w.Stats(); st.Errors != 0 {
		t.Errorf("write errors: %+v", st)
	}
	t.Logf("stats %+v, total %s", rep.w.Stats(), time.Since(start).Round(time.Millisecond))
}

// TestLeaderElection: of two replicas, one writes status; when it stops,
// the other takes the Lease over and writes.
func TestLeaderElection(t *testing.T) {
	srv, gw := setup(t)
	a, b := startReplica(t, srv, "replica-a"), startReplica(t, srv, "replica-b")
	leaderOf := func() (string, string) {
		l, err := srv.Client.CoordinationV1().Leases(kubestatus.DefaultNamespace).Get(context.Background(), kubestatus.DefaultLeaseName, metav1.GetOptions{})
		if err != nil {
			return "", err.Error()
		}
		return ptr.Deref(l.Spec.HolderIdentity, ""), ""
	}
	var leader, follower *replica
	eventually(t, "one leader", 20*time.Second, func() (bool, string) {
		id, errText := leaderOf()
		switch {
		case id == "replica-a" && a.w.IsLeader() && !b.w.IsLeader():
			leader, follower = a, b
		case id == "replica-b" && b.w.IsLeader() && !a.w.IsLeader():
			leader, follower = b, a
		default:
			return false, "lease holder " + id + errText
		}
		return true, ""
	})
	t.Logf("leader %s", leader.w.Identity())
	eventually(t, "the waypoint Gateway programmed", 20*time.Second, gatewayIs(t, gw, "True/Programmed"))
	eventually(t, "the route's missing backend reported", 20*time.Second, routeIs(gw, "False/BackendNotFound"))
	if leader.w.Stats().Writes == 0 {
		t.Errorf("the leader wrote nothing: %+v", leader.w.Stats())
	}
	if st := follower.w.Stats(); st != (kubestatus.Stats{}) {
		t.Errorf("the follower touched status: %+v", st)
	}
	// Both serve: both controllers build and publish the model.
	for _, r := range []*replica{a, b} {
		select {
		case <-r.ctl.Ready():
		case <-time.After(20 * time.Second):
			t.Fatalf("replica %s published nothing", r.w.Identity())
		}
	}

	stopped := time.Now()
	leader.stopWriter()
	leaderWrites := leader.w.Stats().Writes
	eventually(t, "the follower leads", 10*time.Second, func() (bool, string) {
		id, errText := leaderOf()
		return id == follower.w.Identity() && follower.w.IsLeader(), "lease holder " + id + errText
	})
	t.Logf("takeover after %s", time.Since(stopped).Round(time.Millisecond))
	// The new leader re-checks everything (already right) and writes what
	// changes from now on.
	eventually(t, "the new leader checked every object", 10*time.Second, func() (bool, string) {
		st := follower.w.Stats()
		return st.Unchanged >= 2, ""
	})
	if err := srv.Client.CoreV1().Pods("shop").Delete(context.Background(), "waypoint-1", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the new leader's write", 20*time.Second, gatewayIs(t, gw, "False/NoResources"))
	if follower.w.Stats().Writes == 0 {
		t.Errorf("the new leader wrote nothing: %+v", follower.w.Stats())
	}
	if w := leader.w.Stats().Writes; w != leaderWrites || leader.w.IsLeader() {
		t.Errorf("the stopped replica still writes (%d -> %d) or leads (%v)", leaderWrites, w, leader.w.IsLeader())
	}
}

// testLogger logs to the test's log until its cleanups are done.
func testLogger(t *testing.T) *slog.Logger {
	w := &testWriter{t: t}
	t.Cleanup(func() {
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	})
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type testWriter struct {
	t    *testing.T
	mu   sync.Mutex
	done bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}
