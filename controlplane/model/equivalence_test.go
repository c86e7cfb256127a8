package model

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	securityv1beta1 "istio.io/api/security/v1beta1"
	typev1beta1 "istio.io/api/type/v1beta1"
	securityclient "istio.io/client-go/pkg/apis/security/v1"
	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// world is a random mesh of every kind of input, kept as a config store
// keeps objects (by namespace/name; a change is a new object) and handed
// to the model sorted, as the store lists them.
type world struct {
	r          *rand.Rand
	podNames   int // pod names per namespace
	namespaces map[string]*corev1.Namespace
	pods       map[string]*corev1.Pod
	services   map[string]*corev1.Service
	policies   map[string]*securityclient.AuthorizationPolicy
	pas        map[string]*securityclient.PeerAuthentication
	gateways   map[string]*gatewayv1.Gateway
	clusterIPs map[string]string
	root       string
}

var worldNS = []string{"istio-system", "a", "b", "c"}

func (w *world) pick(s ...string) string { return s[w.r.IntN(len(s))] }
func (w *world) chance(p float64) bool   { return w.r.Float64() < p }

func (w *world) labels(keys ...string) map[string]string {
	out := map[string]string{}
	for _, k := range keys {
		switch k {
		case "app":
			if w.chance(0.8) {
				out["app"] = w.pick("x", "y", "z")
			}
		case "version":
			if w.chance(0.5) {
				out["version"] = w.pick("v1", "v2")
			}
		case LabelGatewayName:
			if w.chance(0.15) {
				out[k] = w.pick("wp", "wp2")
			}
		case LabelUseWaypoint:
			if w.chance(0.35) {
				out[k] = w.pick("wp", "wp", "wp2", "none", "missing")
				if w.chance(0.3) {
					out[LabelUseWaypointNamespace] = w.pick(worldNS...)
				}
			}
		case LabelTunnel:
			if w.chance(0.1) {
				out[k] = TunnelHTTP
			}
		case LabelDataplaneMode:
			if w.chance(0.3) {
				out[k] = w.pick(DataplaneAmbient, DataplaneNone)
			}
		}
	}
	return out
}

func (w *world) newNamespace(name string) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: w.labels(LabelDataplaneMode, LabelUseWaypoint, "app")}}
}

func (w *world) newPod(ns, name string) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name,
			Labels: w.labels("app", "version", LabelGatewayName, LabelUseWaypoint, LabelTunnel, LabelDataplaneMode)},
		Spec: corev1.PodSpec{NodeName: w.pick("n1", "n2"), ServiceAccountName: w.pick("", "default", "sa1"), HostNetwork: w.chance(0.05),
			Containers: []corev1.Container{{Name: "c", Ports: []corev1.ContainerPort{{Name: w.pick("http", "web"), ContainerPort: int32(8000 + w.r.IntN(3))}}}}},
		Status: corev1.PodStatus{PodIP: w.pick("10.0.0.1", "10.0.0.2", "10.0.1.7", "fd00::5", "", "bogus"),
			Phase: corev1.PodPhase(w.pick(string(corev1.PodRunning), string(corev1.PodRunning), string(corev1.PodPending), string(corev1.PodSucceeded), string(corev1.PodFailed)))},
	}
	if w.chance(0.6) {
		p.Annotations = map[string]string{AnnotationRedirection: w.pick("enabled", "disabled")}
	}
	return p
}

func (w *world) newService(ns, name string) *corev1.Service {
	s := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: w.labels(LabelUseWaypoint, LabelGatewayName)},
		Spec: corev1.ServiceSpec{ClusterIP: w.pick("10.96.0.1", "10.96.0.2", "", "None")}}
	switch w.r.IntN(4) {
	case 0:
	case 1:
		s.Spec.Selector = map[string]string{"app": w.pick("x", "y")}
	case 2:
		s.Spec.Selector = map[string]string{"app": w.pick("x", "z"), "version": "v1"}
	case 3:
		s.Spec.Selector = map[string]string{LabelGatewayName: w.pick("wp", "wp2")}
	}
	for range 1 + w.r.IntN(2) {
		s.Spec.Ports = append(s.Spec.Ports, corev1.ServicePort{Port: int32(80 + w.r.IntN(3)),
			Protocol:   corev1.Protocol(w.pick("", "TCP", "UDP")),
			TargetPort: []intstr.IntOrString{intstr.FromInt32(8080), intstr.FromString("http"), intstr.FromString("nope"), {}}[w.r.IntN(4)]})
	}
	return s
}

func (w *world) newPolicy(ns, name string) *securityclient.AuthorizationPolicy {
	p := &securityclient.AuthorizationPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	p.Spec.Action = []securityv1beta1.AuthorizationPolicy_Action{securityv1beta1.AuthorizationPolicy_ALLOW, securityv1beta1.AuthorizationPolicy_DENY,
		securityv1beta1.AuthorizationPolicy_AUDIT}[w.r.IntN(3)]
	if w.chance(0.6) {
		p.Spec.Selector = &typev1beta1.WorkloadSelector{MatchLabels: map[string]string{"app": w.pick("x", "y", "z")}}
	}
	if w.chance(0.1) {
		p.Spec.TargetRefs = []*typev1beta1.PolicyTargetReference{{Kind: "Service", Name: "s0"}}
	}
	if w.chance(0.7) {
		p.Spec.Rules = []*securityv1beta1.Rule{{From: []*securityv1beta1.Rule_From{{Source: &securityv1beta1.Source{
			Principals: []string{w.pick("cluster.local/ns/a/sa/sa1", "spiffe://cluster.local/ns/a/sa/x")}}}}}}
	}
	return p
}

func (w *world) newPA(ns, name string) *securityclient.PeerAuthentication {
	mode := func() *securityv1beta1.PeerAuthentication_MutualTLS {
		return &securityv1beta1.PeerAuthentication_MutualTLS{Mode: []securityv1beta1.PeerAuthentication_MutualTLS_Mode{
			securityv1beta1.PeerAuthentication_MutualTLS_UNSET, securityv1beta1.PeerAuthentication_MutualTLS_STRICT,
			securityv1beta1.PeerAuthentication_MutualTLS_PERMISSIVE, securityv1beta1.PeerAuthentication_MutualTLS_DISABLE}[w.r.IntN(4)]}
	}
	p := &securityclient.PeerAuthentication{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	p.Spec.Mtls = mode()
	if w.chance(0.5) {
		p.Spec.Selector = &typev1beta1.WorkloadSelector{MatchLabels: map[string]string{"app": w.pick("x", "y")}}
		if w.chance(0.6) {
			p.Spec.PortLevelMtls = map[uint32]*securityv1beta1.PeerAuthentication_MutualTLS{8080: mode(), 9090: mode()}
		}
	}
	return p
}

func (w *world) newGateway(ns, name string) *gatewayv1.Gateway {
	g := &gatewayv1.Gateway{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: gatewayv1.GatewaySpec{GatewayClassName: GatewayClassWaypoint}}
	if w.chance(0.1) {
		g.Spec.GatewayClassName = "other"
	}
	if w.chance(0.5) {
		g.Labels = map[string]string{LabelWaypointFor: w.pick(WaypointForService, WaypointForWorkload, WaypointForAll, WaypointForAll, WaypointForNone, "bogus")}
	}
	if w.chance(0.9) {
		l := gatewayv1.Listener{Name: "mesh", Port: WaypointListenerPort, Protocol: "HBONE"}
		switch w.r.IntN(4) {
		case 1:
			l.AllowedRoutes = &gatewayv1.AllowedRoutes{Namespaces: &gatewayv1.RouteNamespaces{From: ptr.To(gatewayv1.NamespacesFromAll)}}
		case 2:
			l.AllowedRoutes = &gatewayv1.AllowedRoutes{Namespaces: &gatewayv1.RouteNamespaces{From: ptr.To(gatewayv1.NamespacesFromSelector),
				Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "x"}}}}
		}
		g.Spec.Listeners = append(g.Spec.Listeners, l)
	}
	return g
}

func newWorld(seed uint64) *world { return newWorldSized(seed, 12, 30) }

// newWorldSized is newWorld with podNames pod names per namespace and
// podMutations pod changes.
func newWorldSized(seed uint64, podNames, podMutations int) *world {
	w := &world{podNames: podNames, r: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), namespaces: map[string]*corev1.Namespace{}, pods: map[string]*corev1.Pod{},
		services: map[string]*corev1.Service{}, policies: map[string]*securityclient.AuthorizationPolicy{},
		pas: map[string]*securityclient.PeerAuthentication{}, gateways: map[string]*gatewayv1.Gateway{}}
	if w.chance(0.2) {
		w.root = "a" // a root namespace of its own, with pods in it
	}
	for _, ns := range worldNS {
		if w.chance(0.85) {
			w.namespaces[ns] = w.newNamespace(ns)
		}
	}
	for _, ns := range []string{"a", "b"} { // waypoints with running pods, for bindings
		if w.chance(0.7) {
			w.gateways[ns+"/wp"] = w.newGateway(ns, "wp")
			p := w.newPod(ns, "wp-pod")
			p.Labels = map[string]string{LabelGatewayName: "wp"}
			p.Status.PodIP, p.Status.Phase = "10.0.5."+fmt.Sprint(w.r.IntN(9)+1), corev1.PodRunning
			w.pods[ns+"/wp-pod"] = p
		}
	}
	for range podMutations {
		w.mutatePod()
	}
	for range 12 {
		w.mutateOther()
	}
	if w.chance(0.3) {
		w.clusterIPs = map[string]string{"a/s0": "10.96.9.9", "b/s1": "bogus"}
	}
	return w
}

// mutatePod adds, changes or deletes one pod.
func (w *world) mutatePod() PodChange {
	ns := w.pick(worldNS...)
	name := fmt.Sprintf("p%d", w.r.IntN(w.podNames))
	key := ns + "/" + name
	old := w.pods[key]
	switch {
	case old != nil && w.chance(0.15):
		delete(w.pods, key)
		return PodChange{Key: key}
	case old != nil && w.chance(0.7):
		p := old.DeepCopy()
		switch w.r.IntN(5) {
		case 0:
			p.Status.PodIP = w.pick("10.0.0.3", "10.0.0.4", "", "10.0.2.2")
		case 1:
			p.Labels = w.labels("app", "version", LabelGatewayName, LabelUseWaypoint)
		case 2:
			p.Status.Phase = corev1.PodPhase(w.pick(string(corev1.PodRunning), string(corev1.PodSucceeded), string(corev1.PodPending)))
		case 3:
			p.Annotations = map[string]string{AnnotationRedirection: "enabled"}
		case 4:
			p.Spec.NodeName = "n3"
		}
		w.pods[key] = p
		return PodChange{Key: key, Pod: p}
	}
	p := w.newPod(ns, name)
	w.pods[key] = p
	return PodChange{Key: key, Pod: p}
}

// mutateOther adds, changes or deletes an object other than a pod.
func (w *world) mutateOther() {
	ns := w.pick(worldNS...)
	switch w.r.IntN(6) {
	case 0:
		if w.chance(0.2) {
			delete(w.namespaces, ns)
		} else {
			w.namespaces[ns] = w.newNamespace(ns)
		}
	case 1:
		name := fmt.Sprintf("s%d", w.r.IntN(4))
		if w.chance(0.2) {
			delete(w.services, ns+"/"+name)
		} else {
			w.services[ns+"/"+name] = w.newService(ns, name)
		}
	case 2:
		name := fmt.Sprintf("ap%d", w.r.IntN(3))
		if w.chance(0.2) {
			delete(w.policies, ns+"/"+name)
		} else {
			w.policies[ns+"/"+name] = w.newPolicy(ns, name)
		}
	case 3:
		name := w.pick("default", "pa1", "pa2")
		if w.chance(0.2) {
			delete(w.pas, ns+"/"+name)
		} else {
			w.pas[ns+"/"+name] = w.newPA(ns, name)
		}
	case 4:
		name := w.pick("wp", "wp2")
		if w.chance(0.2) {
			delete(w.gateways, ns+"/"+name)
		} else {
			w.gateways[ns+"/"+name] = w.newGateway(ns, name)
		}
	case 5:
		// A waypoint's pod in particular.
		name := w.pick("wp", "wp2")
		p := w.newPod(ns, name+"-pod")
		p.Labels = map[string]string{LabelGatewayName: name}
		p.Status.PodIP, p.Status.Phase = w.pick("10.0.5.1", "10.0.5.2", ""), corev1.PodRunning
		w.pods[ns+"/"+p.Name] = p
	}
}

func boolCount(b bool) int {
	if b {
		return 1
	}
	return 0
}

func sorted[T any](m map[string]T) []T {
	out := make([]T, 0, len(m))
	for _, k := range slices.Sorted(maps.Keys(m)) {
		out = append(out, m[k])
	}
	return out
}

func (w *world) inputs() Inputs {
	return Inputs{Namespaces: sorted(w.namespaces), Pods: sorted(w.pods), Services: sorted(w.services), Policies: sorted(w.policies),
		PeerAuthentications: sorted(w.pas), Gateways: sorted(w.gateways), ClusterIPs: w.clusterIPs, RootNamespace: w.root}
}

// sameSet reports how two resource sets differ ("" when they do not).
func sameSet[M proto.Message](got, want map[string]M) string {
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(want)) {
		g, ok := got[k]
		if !ok {
			fmt.Fprintf(&b, "missing %s; ", k)
		} else if !proto.Equal(g, want[k]) {
			fmt.Fprintf(&b, "%s differs:\n got  %v\n want %v\n", k, g, want[k])
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			fmt.Fprintf(&b, "extra %s; ", k)
		}
	}
	return b.String()
}

func warningTexts(in Inputs) []string {
	_, ws := refBuildAuthorizations(in)
	out := make([]string, len(ws))
	for i, w := range ws {
		out[i] = w.String()
	}
	return out
}

// TestBuildMatchesReference: Build and BuildAuthorizations give what the
// model gave before it was restructured, on random meshes.
func TestBuildMatchesReference(t *testing.T) {
	seen := map[string]int{}
	for seed := range uint64(300) {
		in := newWorld(seed).inputs()
		addrs := Build(in)
		if d := sameSet(addrs, refBuild(in)); d != "" {
			t.Fatalf("seed %d: Build: %s", seed, d)
		}
		for _, a := range addrs {
			if w := a.GetWorkload(); w != nil {
				seen["workload"]++
				seen["workload with waypoint"] += boolCount(w.GetWaypoint() != nil)
				seen["workload with services"] += min(1, len(w.GetServices()))
				seen["workload with policies"] += min(1, len(w.GetAuthorizationPolicies()))
			} else {
				seen["service with waypoint"] += boolCount(a.GetService().GetWaypoint() != nil)
			}
		}
		if gs, gp := WaypointReport(in); true {
			ws, wp := refWaypointReport(in)
			if !reflect.DeepEqual(gs, ws) || !reflect.DeepEqual(gp, wp) {
				t.Fatalf("seed %d: WaypointReport\n%v %v\nwant\n%v %v", seed, gs, gp, ws, wp)
			}
			seen["waypoint status"] += len(gs)
			seen["binding problem"] += len(gp)
		}
		got, gw := BuildAuthorizations(in)
		for k := range got {
			switch {
			case strings.Contains(k, "istio_converted_strict_"):
				seen["port-level policy"]++
			case strings.HasSuffix(k, StaticStrictPolicy):
				seen["static strict policy"]++
			}
		}
		want, ww := refBuildAuthorizations(in)
		if d := sameSet(got, want); d != "" {
			t.Fatalf("seed %d: BuildAuthorizations: %s", seed, d)
		}
		if len(gw) != len(ww) {
			t.Fatalf("seed %d: %d warnings, want %d", seed, len(gw), len(ww))
		}
		for i := range gw {
			if gw[i] != ww[i] {
				t.Fatalf("seed %d: warning %d %v, want %v", seed, i, gw[i], ww[i])
			}
		}
	}
	// The random meshes must reach every part of the model.
	for _, k := range []string{"workload", "workload with waypoint", "workload with services", "workload with policies",
		"service with waypoint", "port-level policy", "static strict policy", "waypoint status", "binding problem"} {
		if seen[k] == 0 {
			t.Errorf("no %s in any random mesh", k)
		}
	}
	t.Logf("covered: %v", seen)
}

// TestBuilderMatchesBuild: after every change of a random sequence (pod
// changes through UpdatePods, others through Build), the builder holds
// what a full build of the same inputs gives, and its deltas, applied in
// order, reproduce it.
func TestBuilderMatchesBuild(t *testing.T) {
	var podPath, fallbacks int
	for seed := range uint64(120) {
		w := newWorld(seed)
		b := NewBuilder()
		addrs := map[string]*workloadapi.Address{}
		authz := map[string]*security.Authorization{}
		apply := func(d Delta) {
			for _, k := range d.RemovedAddresses {
				delete(addrs, k)
			}
			maps.Copy(addrs, d.Addresses)
			for _, k := range d.RemovedAuthorizations {
				delete(authz, k)
			}
			maps.Copy(authz, d.Authorizations)
		}
		d, warnings := b.Build(w.inputs())
		apply(d)
		for step := range 60 {
			var what string
			in := w.inputs()
			switch {
			case step > 0 && w.chance(0.75):
				var chs []PodChange
				for range 1 + w.r.IntN(3) {
					chs = append(chs, w.mutatePod())
				}
				in = w.inputs()
				var keys []string
				for _, ch := range chs {
					keys = append(keys, ch.Key)
				}
				what = fmt.Sprintf("pods %v", keys)
				if d, ok := b.UpdatePods(chs); ok {
					podPath++
					apply(d)
					break
				}
				fallbacks++
				d, warnings = b.Build(in)
				apply(d)
			case step > 0:
				w.mutateOther()
				in = w.inputs()
				what = "other"
				d, warnings = b.Build(in)
				apply(d)
			default:
				what = "first"
			}
			wantAddr, wantAuthz := refBuild(in), map[string]*security.Authorization{}
			wantAuthz, _ = refBuildAuthorizations(in)
			if diff := sameSet(b.Addresses(), wantAddr); diff != "" {
				t.Fatalf("seed %d step %d (%s): addresses: %s", seed, step, what, diff)
			}
			if diff := sameSet(addrs, wantAddr); diff != "" {
				t.Fatalf("seed %d step %d (%s): addresses from deltas: %s", seed, step, what, diff)
			}
			if diff := sameSet(b.Authorizations(), wantAuthz); diff != "" {
				t.Fatalf("seed %d step %d (%s): authorizations: %s", seed, step, what, diff)
			}
			if diff := sameSet(authz, wantAuthz); diff != "" {
				t.Fatalf("seed %d step %d (%s): authorizations from deltas: %s", seed, step, what, diff)
			}
			gs, gp := b.WaypointReport()
			if ws, wp := refWaypointReport(in); !reflect.DeepEqual(gs, ws) || !reflect.DeepEqual(gp, wp) {
				t.Fatalf("seed %d step %d (%s): WaypointReport\n%v %v\nwant\n%v %v", seed, step, what, gs, gp, ws, wp)
			}
			var texts []string
			for _, x := range warnings {
				texts = append(texts, x.String())
			}
			if want := warningTexts(in); !slices.Equal(texts, want) && (len(texts) > 0 || len(want) > 0) {
				t.Fatalf("seed %d step %d: warnings %q, want %q", seed, step, texts, want)
			}
		}
	}
	if podPath == 0 || fallbacks == 0 {
		t.Errorf("pod path taken %d times, full build instead %d times: both must be exercised", podPath, fallbacks)
	}
	t.Logf("pod path %d times, fallback to Build %d times", podPath, fallbacks)
}

// TestBuilderReuses: a change to one pod computes only that pod again, and
// a delta names only what changed.
// TestBuilderMatchesBuildAtScale: with thousands of pods the Builder
// computes them on every CPU; the result is still Build's.
func TestBuilderMatchesBuildAtScale(t *testing.T) {
	for seed := range uint64(4) {
		w := newWorldSized(seed, 600, 4000)
		in := w.inputs()
		if len(in.Pods) < 1000 {
			t.Fatalf("seed %d: only %d pods", seed, len(in.Pods))
		}
		b := NewBuilder()
		b.Build(in)
		wantAuthz, _ := refBuildAuthorizations(in)
		if diff := sameSet(b.Addresses(), refBuild(in)); diff != "" {
			t.Fatalf("seed %d (%d pods): addresses: %s", seed, len(in.Pods), diff)
		}
		if diff := sameSet(b.Authorizations(), wantAuthz); diff != "" {
			t.Fatalf("seed %d (%d pods): authorizations: %s", seed, len(in.Pods), diff)
		}
	}
}

func TestBuilderReuses(t *testing.T) {
	w := newWorld(7)
	b := NewBuilder()
	b.Build(w.inputs())
	before := maps.Clone(b.Addresses())
	d, _ := b.Build(w.inputs()) // the same inputs
	if !d.Empty() {
		t.Errorf("a build of the same inputs changed %v", d)
	}
	for k, v := range b.Addresses() {
		if before[k] != v {
			t.Errorf("%s computed again", k)
		}
	}
	// A plain pod (no waypoint's) changes: one resource in the delta.
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "b", Name: "plain", Labels: map[string]string{"app": "x"}},
		Status: corev1.PodStatus{PodIP: "10.1.0.1", Phase: corev1.PodRunning}}
	w.pods["b/plain"] = p
	d, ok := b.UpdatePods([]PodChange{{Key: "b/plain", Pod: p}})
	if !ok || len(d.Addresses) != 1 || d.Addresses["Kubernetes//Pod/b/plain"] == nil || len(d.RemovedAddresses) != 0 {
		t.Fatalf("delta %v ok %v", d, ok)
	}
	d, ok = b.UpdatePods([]PodChange{{Key: "b/plain"}})
	if !ok || !slices.Equal(d.RemovedAddresses, []string{"Kubernetes//Pod/b/plain"}) {
		t.Fatalf("delete: delta %v ok %v", d, ok)
	}
	if _, ok := NewBuilder().UpdatePods(nil); ok {
		t.Error("UpdatePods before any Build succeeded")
	}
}
