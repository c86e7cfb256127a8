package model

import (
	"strconv"
	"strings"
	"testing"

	"istio.io/istio/pkg/workloadapi"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

func waypointGW(ns, name, forLabel string, from gatewayv1.FromNamespaces, sel map[string]string) *gatewayv1.Gateway {
	gw := &gatewayv1.Gateway{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{}},
		Spec: gatewayv1.GatewaySpec{GatewayClassName: GatewayClassWaypoint,
			Listeners: []gatewayv1.Listener{{Name: "mesh", Port: 15008, Protocol: "HBONE"}}}}
	if forLabel != "" {
		gw.Labels[LabelWaypointFor] = forLabel
	}
	if from != "" {
		ns := &gatewayv1.RouteNamespaces{From: &from}
		if sel != nil {
			ns.Selector = &metav1.LabelSelector{MatchLabels: sel}
		}
		gw.Spec.Listeners[0].AllowedRoutes = &gatewayv1.AllowedRoutes{Namespaces: ns}
	}
	return gw
}

func waypointPod(ns, gw, ip string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: gw + "-0",
		Labels: map[string]string{LabelGatewayName: gw, LabelTunnel: TunnelHTTP, LabelDataplaneMode: DataplaneNone}},
		Spec:   corev1.PodSpec{ServiceAccountName: gw, NodeName: "node1"},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip}}
}

func nsWith(name string, l map[string]string) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: l}}
}

func svcWith(ns, name string, l map[string]string) *corev1.Service {
	return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: l},
		Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.10", Selector: map[string]string{"app": name},
			Ports: []corev1.ServicePort{{Port: 80}}}}
}

func podWith(ns, name string, l map[string]string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: l},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.244.1.9"}}
}

// TestBindings is the table of use-waypoint shapes: which waypoint a
// Service and a Pod end up with, or why none, with upstream precedence.
func TestBindings(t *testing.T) {
	use := func(name string) map[string]string { return map[string]string{LabelUseWaypoint: name} }
	useIn := func(name, ns string) map[string]string {
		return map[string]string{LabelUseWaypoint: name, LabelUseWaypointNamespace: ns}
	}
	base := func() Inputs {
		return Inputs{
			Gateways: []*gatewayv1.Gateway{
				waypointGW("demo", "waypoint", "", "", nil),
				waypointGW("demo", "wl", WaypointForWorkload, "", nil),
				waypointGW("demo", "both", WaypointForAll, "", nil),
				waypointGW("shared", "open", WaypointForAll, gatewayv1.NamespacesFromAll, nil),
				waypointGW("shared", "picky", "", gatewayv1.NamespacesFromSelector, map[string]string{"team": "a"}),
				waypointGW("demo", "down", "", "", nil), // no pod
				{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "ingress"}, Spec: gatewayv1.GatewaySpec{GatewayClassName: "istio"}},
			},
			Pods: []*corev1.Pod{waypointPod("demo", "waypoint", "10.244.1.50"), waypointPod("demo", "wl", "10.244.1.51"),
				waypointPod("demo", "both", "10.244.1.52"), waypointPod("shared", "open", "10.244.1.53"), waypointPod("shared", "picky", "10.244.1.54")},
		}
	}
	for _, tc := range []struct {
		name                string
		ns                  map[string]string // labels of namespace demo
		svc, pod            map[string]string
		wantSvc, wantPod    string // waypoint namespace/name, "" none
		svcProblem, podProb string // substring of the problem, "" none
	}{
		{name: "no labels"},
		{name: "namespace label binds the service; the pods skip a service waypoint silently", ns: use("waypoint"), wantSvc: "demo/waypoint"},
		{name: "service label", svc: use("waypoint"), wantSvc: "demo/waypoint"},
		{name: "service label wins over namespace", ns: use("waypoint"), svc: use("both"), wantSvc: "demo/both"},
		{name: "service opts out with none", ns: use("waypoint"), svc: use("none")},
		{name: "pod opts out with none", ns: use("both"), pod: use("none"), wantSvc: "demo/both"},
		{name: "namespace all-waypoint binds both", ns: use("both"), wantSvc: "demo/both", wantPod: "demo/both"},
		{name: "workload waypoint: pods yes, service no", svc: use("wl"), pod: use("wl"), wantPod: "demo/wl", svcProblem: "for workload traffic, not service"},
		{name: "namespace workload waypoint: service says why", ns: use("wl"), wantPod: "demo/wl", svcProblem: "not service"},
		{name: "pod's own label to a service waypoint is a problem", pod: use("waypoint"), podProb: "for service traffic, not workload"},
		{name: "unknown waypoint", svc: use("nope"), svcProblem: "demo/nope does not exist"},
		{name: "not a waypoint class", svc: use("ingress"), svcProblem: "does not exist"},
		{name: "not running yet", svc: use("down"), svcProblem: "no running pod"},
		{name: "cross-namespace, listener allows all", svc: useIn("open", "shared"), pod: useIn("open", "shared"), wantSvc: "shared/open", wantPod: "shared/open"},
		{name: "cross-namespace, listener Same by default", svc: useIn("waypoint", "other"), svcProblem: "other/waypoint does not exist"},
		{name: "cross-namespace, selector not matching", svc: useIn("picky", "shared"), svcProblem: "does not allow namespace demo"},
		{name: "cross-namespace, selector matching", ns: map[string]string{"team": "a"}, svc: useIn("picky", "shared"), wantSvc: "shared/picky"},
		{name: "namespace label with namespace of the waypoint", ns: useIn("open", "shared"), wantSvc: "shared/open", wantPod: "shared/open"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := base()
			ns := nsWith("demo", tc.ns)
			in.Namespaces = []*corev1.Namespace{ns, nsWith("shared", nil)}
			svc := svcWith("demo", "echo", tc.svc)
			pod := podWith("demo", "echo-1", tc.pod)
			wps := Waypoints(in)
			check := func(what string, b Binding, want, problem string) {
				t.Helper()
				got := ""
				if b.Waypoint != nil {
					got = b.Waypoint.Key()
				}
				if got != want {
					t.Errorf("%s: waypoint %q, want %q (problem %q)", what, got, want, b.Problem)
				}
				if (problem == "") != (b.Problem == "") || !strings.Contains(b.Problem, problem) {
					t.Errorf("%s: problem %q, want one saying %q", what, b.Problem, problem)
				}
			}
			check("service", ServiceBinding(svc, ns, wps), tc.wantSvc, tc.svcProblem)
			check("pod", PodBinding(pod, ns, wps), tc.wantPod, tc.podProb)
		})
	}
}

func TestWaypointAccepted(t *testing.T) {
	bad := waypointGW("demo", "bad", "everything", "", nil)
	nolistener := waypointGW("demo", "nol", "", "", nil)
	nolistener.Spec.Listeners[0].Port = 8080
	wps := Waypoints(Inputs{Gateways: []*gatewayv1.Gateway{bad, nolistener}})
	if p := strings.Join(wps["demo/bad"].Problems, ";"); !strings.Contains(p, `istio.io/waypoint-for="everything"`) {
		t.Errorf("bad waypoint-for: problems %q", p)
	}
	if p := strings.Join(wps["demo/nol"].Problems, ";"); !strings.Contains(p, "no listener with port 15008") {
		t.Errorf("no HBONE listener: problems %q", p)
	}
	st, _ := WaypointReport(Inputs{Gateways: []*gatewayv1.Gateway{bad}})
	if len(st) != 1 || st[0].Accepted || st[0].Programmed || st[0].Reason == "" {
		t.Errorf("status of a rejected waypoint: %+v", st)
	}
	other := &gatewayv1.Gateway{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "ingress"}, Spec: gatewayv1.GatewaySpec{GatewayClassName: "nginx"}}
	st, _ = WaypointReport(Inputs{Gateways: []*gatewayv1.Gateway{other}})
	if len(st) != 1 || st[0].Accepted || !strings.Contains(st[0].Reason, `gatewayClassName "nginx" is not served by Ambit`) {
		t.Errorf("status of a Gateway of another class: %+v", st)
	}
}

// TestBuildWaypoints: the WDS resources name the waypoint by its
// Service's hostname and the HBONE port; a waypoint's own pods speak
// HBONE without capture and never use a waypoint themselves.
func TestBuildWaypoints(t *testing.T) {
	in := Inputs{
		Namespaces: []*corev1.Namespace{nsWith("demo", map[string]string{LabelUseWaypoint: "waypoint"})},
		Gateways:   []*gatewayv1.Gateway{waypointGW("demo", "waypoint", WaypointForAll, "", nil)},
		Pods:       []*corev1.Pod{waypointPod("demo", "waypoint", "10.244.1.50"), podWith("demo", "echo-1", map[string]string{"app": "echo"})},
		Services: []*corev1.Service{svcWith("demo", "echo", nil),
			svcWith("demo", "waypoint", map[string]string{LabelGatewayName: "waypoint"})},
	}
	in.Services[1].Spec.Selector = map[string]string{LabelGatewayName: "waypoint"}
	in.Services[1].Spec.ClusterIP = "10.96.0.11"
	out := Build(in)
	want := "demo/waypoint.demo.svc.cluster.local:15008"
	addr := func(gw *workloadapi.GatewayAddress) string {
		if gw == nil {
			return ""
		}
		h := gw.GetHostname()
		return h.GetNamespace() + "/" + h.GetHostname() + ":" + strconv.Itoa(int(gw.GetHboneMtlsPort()))
	}
	if got := addr(out["demo/echo.demo.svc.cluster.local"].GetService().GetWaypoint()); got != want {
		t.Errorf("echo service waypoint %q, want %q", got, want)
	}
	if got := addr(out["demo/waypoint.demo.svc.cluster.local"].GetService().GetWaypoint()); got != "" {
		t.Errorf("the waypoint's own service uses waypoint %q", got)
	}
	echo := out["Kubernetes//Pod/demo/echo-1"].GetWorkload()
	if got := addr(echo.GetWaypoint()); got != want {
		t.Errorf("echo-1 workload waypoint %q, want %q", got, want)
	}
	wp := out["Kubernetes//Pod/demo/waypoint-0"].GetWorkload()
	if wp.GetWaypoint() != nil {
		t.Errorf("the waypoint's pod uses a waypoint: %v", wp.GetWaypoint())
	}
	if wp.GetTunnelProtocol() != workloadapi.TunnelProtocol_HBONE {
		t.Errorf("waypoint pod tunnel %v, want HBONE", wp.GetTunnelProtocol())
	}
	if _, ok := wp.GetServices()["demo/waypoint.demo.svc.cluster.local"]; !ok {
		t.Errorf("waypoint pod is not an endpoint of its service: %v", wp.GetServices())
	}
}
