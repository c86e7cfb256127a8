package model

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"

	"istio.io/istio/pkg/workloadapi"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// Labels and values of waypoints (upstream's).
const (
	GatewayClassWaypoint      = "istio-waypoint"
	LabelWaypointFor          = "istio.io/waypoint-for"
	LabelUseWaypoint          = "istio.io/use-waypoint"
	LabelUseWaypointNamespace = "istio.io/use-waypoint-namespace"
	// LabelGatewayName is on a waypoint's pods and Service: the Gateway
	// they serve.
	LabelGatewayName = "gateway.networking.k8s.io/gateway-name"
	// LabelTunnel "http" marks pods that speak HBONE themselves (waypoints):
	// their WDS workload carries TunnelProtocol HBONE without capture.
	LabelTunnel = "networking.istio.io/tunnel"
	TunnelHTTP  = "http"

	WaypointForService  = "service"
	WaypointForWorkload = "workload"
	WaypointForAll      = "all"
	WaypointForNone     = "none"
	// UseWaypointNone opts an object out of its namespace's waypoint.
	UseWaypointNone = "none"

	// WaypointListenerPort is the port of a waypoint's HBONE listener.
	WaypointListenerPort = 15008
)

// Waypoint is a Gateway of class istio-waypoint, with what the model
// knows of its pods.
type Waypoint struct {
	Namespace, Name string
	For             string // service, workload, all or none
	Hostname        string // of its Service: name.namespace.svc.domain
	// Addresses are the IPs of its running pods: it is usable once it has
	// one (upstream: once Gateway.status.addresses is set).
	Addresses []netip.Addr
	// Problems say why the Gateway is not accepted (no HBONE listener on
	// 15008, an unknown waypoint-for value); a waypoint with problems
	// serves nobody.
	Problems []string

	fromAll  bool            // allowedRoutes.namespaces.from All
	selector labels.Selector // from Selector; nil for Same
}

// Key is the waypoint's namespace/name.
func (w *Waypoint) Key() string { return w.Namespace + "/" + w.Name }

// Usable reports whether traffic can be sent to the waypoint.
func (w *Waypoint) Usable() bool { return len(w.Problems) == 0 && len(w.Addresses) > 0 }

// serves reports whether the waypoint takes the kind of binding (service or
// workload).
func (w *Waypoint) serves(kind string) bool {
	return w.For == kind || w.For == WaypointForAll
}

// admits reports whether objects of namespace ns may use the waypoint
// (its HBONE listener's allowedRoutes; Same by default).
func (w *Waypoint) admits(ns *corev1.Namespace, name string) bool {
	switch {
	case name == w.Namespace || w.fromAll:
		return true
	case w.selector != nil:
		return ns != nil && w.selector.Matches(labels.Set(ns.Labels))
	}
	return false
}

// Address is the waypoint as WDS names it: its Service's hostname and the
// HBONE port.
func (w *Waypoint) Address() *workloadapi.GatewayAddress {
	return &workloadapi.GatewayAddress{
		Destination: &workloadapi.GatewayAddress_Hostname{Hostname: &workloadapi.NamespacedHostname{
			Namespace: w.Namespace, Hostname: w.Hostname}},
		HboneMtlsPort: WaypointListenerPort,
	}
}

// IsWaypoint reports whether a Gateway declares a waypoint.
func IsWaypoint(gw *gatewayv1.Gateway) bool {
	return string(gw.Spec.GatewayClassName) == GatewayClassWaypoint
}

// Waypoints returns the waypoints declared by the inputs' Gateways, by
// namespace/name, with the addresses of their running pods.
func Waypoints(in Inputs) map[string]*Waypoint {
	domain := in.Domain
	if domain == "" {
		domain = DefaultDomain
	}
	out := map[string]*Waypoint{}
	for _, gw := range in.Gateways {
		if !IsWaypoint(gw) {
			continue
		}
		w := &Waypoint{Namespace: gw.Namespace, Name: gw.Name, For: WaypointForService,
			Hostname: gw.Name + "." + gw.Namespace + ".svc." + domain}
		if v, ok := gw.Labels[LabelWaypointFor]; ok {
			switch v {
			case WaypointForService, WaypointForWorkload, WaypointForAll, WaypointForNone:
				w.For = v
			default:
				w.Problems = append(w.Problems, fmt.Sprintf("label %s=%q: want service, workload, all or none", LabelWaypointFor, v))
			}
		}
		listener := false
		for _, l := range gw.Spec.Listeners {
			if l.Port != WaypointListenerPort || l.Protocol != "HBONE" {
				continue
			}
			listener = true
			if ar := l.AllowedRoutes; ar != nil && ar.Namespaces != nil && ar.Namespaces.From != nil {
				switch *ar.Namespaces.From {
				case gatewayv1.NamespacesFromAll:
					w.fromAll = true
				case gatewayv1.NamespacesFromSelector:
					sel, err := metav1.LabelSelectorAsSelector(ar.Namespaces.Selector)
					if err != nil || ar.Namespaces.Selector == nil {
						w.Problems = append(w.Problems, fmt.Sprintf("listener %s: allowedRoutes selector: %v", l.Name, err))
						continue
					}
					w.selector = sel
				}
			}
		}
		if !listener {
			w.Problems = append(w.Problems, "no listener with port 15008 and protocol HBONE")
		}
		out[w.Key()] = w
	}
	for _, pod := range in.Pods {
		w := out[pod.Namespace+"/"+pod.Labels[LabelGatewayName]]
		if w == nil || pod.Status.Phase != corev1.PodRunning {
			continue
		}
		if ip, err := netip.ParseAddr(pod.Status.PodIP); err == nil {
			w.Addresses = append(w.Addresses, ip)
		}
	}
	for _, w := range out {
		slices.SortFunc(w.Addresses, netip.Addr.Compare)
	}
	return out
}

// Binding is which waypoint an object uses, and why.
type Binding struct {
	Waypoint *Waypoint // nil: none
	// From says where the choice came from: "Service demo/echo",
	// "Namespace demo" ("" when no label applies).
	From string
	// Problem says why a label did not bind (unknown waypoint, not for
	// this kind, not allowed from this namespace, not running yet).
	Problem string
}

// bind resolves a use-waypoint choice: the object's own labels win over
// its namespace's; "none" opts out. kind is WaypointForService or
// WaypointForWorkload.
func bind(kind, ref string, objLabels map[string]string, objNS string, ns *corev1.Namespace, wps map[string]*Waypoint) Binding {
	name, wpNS, from := objLabels[LabelUseWaypoint], objLabels[LabelUseWaypointNamespace], ref
	inherited := false
	if name == "" && ns != nil {
		name, wpNS, from, inherited = ns.Labels[LabelUseWaypoint], ns.Labels[LabelUseWaypointNamespace], "Namespace "+ns.Name, true
	}
	if name == "" || name == UseWaypointNone {
		return Binding{}
	}
	if wpNS == "" {
		wpNS = objNS
	}
	b := Binding{From: from}
	w := wps[wpNS+"/"+name]
	switch {
	case w == nil:
		b.Problem = fmt.Sprintf("waypoint %s/%s does not exist", wpNS, name)
	case len(w.Problems) > 0:
		b.Problem = fmt.Sprintf("waypoint %s is not accepted: %s", w.Key(), strings.Join(w.Problems, "; "))
	case !w.serves(kind):
		if inherited && kind == WaypointForWorkload {
			return Binding{} // upstream: a namespace's service waypoint is silently not the pods'
		}
		b.Problem = fmt.Sprintf("waypoint %s is for %s traffic, not %s", w.Key(), w.For, kind)
	case !w.admits(ns, objNS):
		b.Problem = fmt.Sprintf("waypoint %s does not allow namespace %s (its listener's allowedRoutes)", w.Key(), objNS)
	case len(w.Addresses) == 0:
		b.Problem = fmt.Sprintf("waypoint %s has no running pod yet", w.Key())
	default:
		b.Waypoint = w
	}
	return b
}

// ServiceBinding returns the waypoint a Service uses. A waypoint's own
// Service never uses one.
func ServiceBinding(svc *corev1.Service, ns *corev1.Namespace, wps map[string]*Waypoint) Binding {
	if _, own := svc.Labels[LabelGatewayName]; own {
		return Binding{}
	}
	return bind(WaypointForService, "Service "+svc.Namespace+"/"+svc.Name, svc.Labels, svc.Namespace, ns, wps)
}

// PodBinding returns the waypoint a pod's own address uses. A waypoint's
// pods never use one.
func PodBinding(pod *corev1.Pod, ns *corev1.Namespace, wps map[string]*Waypoint) Binding {
	if _, own := pod.Labels[LabelGatewayName]; own {
		return Binding{}
	}
	return bind(WaypointForWorkload, "Pod "+pod.Namespace+"/"+pod.Name, pod.Labels, pod.Namespace, ns, wps)
}

// WaypointStatus is what a waypoint Gateway's status says (upstream's
// conditions), and what it serves.
type WaypointStatus struct {
	Namespace  string   `json:"namespace"`
	Name       string   `json:"name"`
	For        string   `json:"for"`
	Addresses  []string `json:"addresses"`
	Accepted   bool     `json:"accepted"`
	Programmed bool     `json:"programmed"`
	Reason     string   `json:"reason,omitempty"` // when not programmed or not accepted
	Services   []string `json:"services"`         // namespace/name bound to it
	Workloads  []string `json:"workloads"`        // namespace/name bound to it
}

// BindingProblem is an object whose use-waypoint label did not bind.
type BindingProblem struct {
	Object  string `json:"object"` // "Service demo/echo", "Pod demo/echo-1"
	From    string `json:"from"`
	Problem string `json:"problem"`
}

// WaypointReport summarises waypoints and bindings for status displays.
func WaypointReport(in Inputs) ([]WaypointStatus, []BindingProblem) {
	wps := Waypoints(in)
	nss := map[string]*corev1.Namespace{}
	for _, ns := range in.Namespaces {
		nss[ns.Name] = ns
	}
	var svcs, pods []objectBinding
	for _, svc := range in.Services {
		if b := ServiceBinding(svc, nss[svc.Namespace], wps); b.Waypoint != nil || b.Problem != "" {
			svcs = append(svcs, objectBinding{svc.Namespace + "/" + svc.Name, b})
		}
	}
	for _, pod := range in.Pods {
		if b := PodBinding(pod, nss[pod.Namespace], wps); b.Waypoint != nil || b.Problem != "" {
			pods = append(pods, objectBinding{pod.Namespace + "/" + pod.Name, b})
		}
	}
	return report(wps, in.Gateways, svcs, pods)
}

// objectBinding is the binding of a service or pod (namespace/name) that
// binds or fails to.
type objectBinding struct {
	key string
	b   Binding
}

// report is WaypointReport from the waypoints, the Gateways, and the
// bindings of services and of pods (in the order their names are listed).
func report(wps map[string]*Waypoint, gateways []*gatewayv1.Gateway, svcs, pods []objectBinding) ([]WaypointStatus, []BindingProblem) {
	st := map[string]*WaypointStatus{}
	for k, w := range wps {
		s := &WaypointStatus{Namespace: w.Namespace, Name: w.Name, For: w.For, Accepted: len(w.Problems) == 0}
		for _, a := range w.Addresses {
			s.Addresses = append(s.Addresses, a.String())
		}
		s.Programmed = s.Accepted && len(w.Addresses) > 0
		switch {
		case !s.Accepted:
			s.Reason = strings.Join(w.Problems, "; ")
		case !s.Programmed:
			s.Reason = "no running waypoint pod yet"
		}
		st[k] = s
	}
	// Other Gateways are not Ambit's: say so, rather than ignore them in
	// silence.
	for _, gw := range gateways {
		if !IsWaypoint(gw) {
			st[gw.Namespace+"/"+gw.Name] = &WaypointStatus{Namespace: gw.Namespace, Name: gw.Name, For: "-",
				Reason: fmt.Sprintf("gatewayClassName %q is not served by Ambit (only %s): ignored", gw.Spec.GatewayClassName, GatewayClassWaypoint)}
		}
	}
	var problems []BindingProblem
	for _, x := range svcs {
		if x.b.Waypoint != nil {
			s := st[x.b.Waypoint.Key()]
			s.Services = append(s.Services, x.key)
		} else if x.b.Problem != "" {
			problems = append(problems, BindingProblem{Object: "Service " + x.key, From: x.b.From, Problem: x.b.Problem})
		}
	}
	for _, x := range pods {
		if x.b.Waypoint != nil {
			s := st[x.b.Waypoint.Key()]
			s.Workloads = append(s.Workloads, x.key)
		} else if x.b.Problem != "" {
			problems = append(problems, BindingProblem{Object: "Pod " + x.key, From: x.b.From, Problem: x.b.Problem})
		}
	}
	out := make([]WaypointStatus, 0, len(st))
	for _, s := range st {
		out = append(out, *s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Namespace+"/"+out[i].Name < out[j].Namespace+"/"+out[j].Name })
	sort.Slice(problems, func(i, j int) bool { return problems[i].Object < problems[j].Object })
	return out, problems
}
