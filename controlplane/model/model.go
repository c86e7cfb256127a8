// Package model computes the ambient view the control plane serves to
// ztunnels: a Workload for every pod (uid, addresses, identity, node,
// tunnel protocol, services, waypoint) and a Service for every Kubernetes
// Service (VIP, ports, waypoint), as upstream Istio's WDS resources, and
// the waypoints Gateways declare and which objects use them (waypoint.go).
// Build, BuildAuthorizations and WaypointReport compute it all from the
// inputs; a Builder (incremental.go) gives the same results again and
// again as the inputs change, computing only what depends on what changed,
// and says what changed.
package model

import (
	"net/netip"
	"sort"

	securityclient "istio.io/client-go/pkg/apis/security/v1"
	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambit-mesh/ambit/controlplane/authzpolicy"
)

// Annotations and labels of the ambient data plane (as upstream).
const (
	AnnotationRedirection = "ambient.istio.io/redirection" // "enabled" once the pod's capture is in place
	LabelDataplaneMode    = "istio.io/dataplane-mode"
	DataplaneAmbient      = "ambient"
	DataplaneNone         = "none"
	DefaultCluster        = "Kubernetes"
	DefaultDomain         = "cluster.local"
)

// Inputs is what the model is computed from.
type Inputs struct {
	Namespaces []*corev1.Namespace
	Pods       []*corev1.Pod // with status (podIP, phase) and spec.nodeName filled
	Services   []*corev1.Service
	// ClusterIPs overrides spec.clusterIP (local mode allocates VIPs).
	ClusterIPs map[string]string // namespace/name -> VIP
	Cluster    string
	Domain     string
	// Policies are the AuthorizationPolicies; selector policies are named
	// on the workloads they select.
	Policies            []*securityclient.AuthorizationPolicy
	PeerAuthentications []*securityclient.PeerAuthentication
	RootNamespace       string
	// Gateways declare waypoints (class istio-waypoint); others are not
	// the model's.
	Gateways []*gatewayv1.Gateway
}

// WorkloadName is the WDS resource name of a pod (upstream's form).
func WorkloadName(cluster string, pod *corev1.Pod) string {
	return cluster + "//Pod/" + pod.Namespace + "/" + pod.Name
}

// ServiceHostname is a service's cluster-local DNS name.
func ServiceHostname(svc *corev1.Service, domain string) string {
	return svc.Name + "." + svc.Namespace + ".svc." + domain
}

// ServiceName is the WDS resource name of a service: namespace/hostname.
func ServiceName(svc *corev1.Service, domain string) string {
	return svc.Namespace + "/" + ServiceHostname(svc, domain)
}

// Enrolled reports whether a pod belongs in the ambient mesh, as upstream
// istio-cni decides it:
// pod label ambient, or namespace label ambient without pod label none;
// never host-network pods.
func Enrolled(pod *corev1.Pod, ns *corev1.Namespace) bool {
	if pod.Spec.HostNetwork {
		return false
	}
	if _, sidecar := pod.Annotations["sidecar.istio.io/status"]; sidecar {
		return false
	}
	switch pod.Labels[LabelDataplaneMode] {
	case DataplaneAmbient:
		return true
	case DataplaneNone:
		return false
	}
	return ns != nil && ns.Labels[LabelDataplaneMode] == DataplaneAmbient
}

// Build returns every WDS Address resource by name.
func Build(in Inputs) map[string]*workloadapi.Address {
	c := compile(in, Waypoints(in))
	out := map[string]*workloadapi.Address{}
	for _, s := range in.Services {
		name, a, _ := buildService(s, c)
		out[name] = a
	}
	for _, pod := range in.Pods {
		if a := buildWorkload(pod, c, c.pa.forPod(pod), PodBinding(pod, c.nss[pod.Namespace], c.wps)); a != nil {
			out[a.GetWorkload().GetUid()] = a
		}
	}
	return out
}

// compiled is what building derives once from the inputs for all pods and
// services: the defaults applied, namespaces by name, the waypoints, and
// the selector services, policies and PeerAuthentications grouped by
// namespace with their selectors parsed.
type compiled struct {
	cluster, domain, root string
	clusterIPs            map[string]string
	nss                   map[string]*corev1.Namespace
	wps                   map[string]*Waypoint
	// svcs are the services with a selector, and policies the selector
	// policies, by namespace, in input order.
	svcs     map[string][]selectorService
	policies map[string][]selectorPolicy
	pa       *paIndex
}

type selectorService struct {
	svc   *corev1.Service
	name  string
	sel   labels.Selector
	ports []*corev1.ServicePort
}

type selectorPolicy struct {
	policy *securityclient.AuthorizationPolicy
	key    string // namespace/name
	sel    labels.Selector
}

// compile prepares the inputs; wps are their waypoints (Waypoints(in)).
func compile(in Inputs, wps map[string]*Waypoint) *compiled {
	c := &compiled{cluster: in.Cluster, domain: in.Domain, root: in.RootNamespace, clusterIPs: in.ClusterIPs, wps: wps,
		nss: make(map[string]*corev1.Namespace, len(in.Namespaces)), svcs: map[string][]selectorService{}, policies: map[string][]selectorPolicy{}}
	if c.cluster == "" {
		c.cluster = DefaultCluster
	}
	if c.domain == "" {
		c.domain = DefaultDomain
	}
	if c.root == "" {
		c.root = authzpolicy.DefaultRootNamespace
	}
	for _, ns := range in.Namespaces {
		c.nss[ns.Name] = ns
	}
	for _, s := range in.Services {
		if len(s.Spec.Selector) == 0 {
			continue
		}
		info := selectorService{svc: s, name: ServiceName(s, c.domain), sel: labels.SelectorFromSet(s.Spec.Selector)}
		for i := range s.Spec.Ports {
			info.ports = append(info.ports, &s.Spec.Ports[i])
		}
		c.svcs[s.Namespace] = append(c.svcs[s.Namespace], info)
	}
	for _, p := range in.Policies {
		if sel := p.Spec.GetSelector().GetMatchLabels(); len(sel) > 0 {
			c.policies[p.Namespace] = append(c.policies[p.Namespace], selectorPolicy{policy: p, key: p.Namespace + "/" + p.Name, sel: labels.SelectorFromSet(sel)})
		}
	}
	c.pa = newPAIndex(in.PeerAuthentications, c.root)
	return c
}

// buildService returns a Service's resource name and resource, and the
// Service's waypoint binding.
func buildService(s *corev1.Service, c *compiled) (string, *workloadapi.Address, Binding) {
	override, overridden := c.clusterIPs[s.Namespace+"/"+s.Name]
	// A Kubernetes Service is canonical for its hostname, as istiod says.
	ws := &workloadapi.Service{Name: s.Name, Namespace: s.Namespace, Hostname: ServiceHostname(s, c.domain),
		Addresses: serviceVIPs(s, override, overridden), Ports: servicePorts(s), IpFamilies: serviceIPFamilies(s),
		LoadBalancing: serviceLoadBalancing(s, c.nss[s.Namespace]), Canonical: true}
	b := ServiceBinding(s, c.nss[s.Namespace], c.wps)
	if b.Waypoint != nil {
		ws.Waypoint = b.Waypoint.Address()
	}
	return ServiceName(s, c.domain), &workloadapi.Address{Type: &workloadapi.Address_Service{Service: ws}}, b
}

// buildWorkload returns a pod's resource, or nil when the pod is not a
// workload (no address yet, or finished); pa is what PeerAuthentications
// make of it, bind its waypoint binding (PodBinding).
func buildWorkload(pod *corev1.Pod, c *compiled, pa podPA, bind Binding) *workloadapi.Address {
	ip, err := netip.ParseAddr(pod.Status.PodIP)
	if err != nil || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		return nil // no address yet, or finished: nothing to route to
	}
	sa := pod.Spec.ServiceAccountName
	if sa == "default" {
		sa = ""
	}
	w := &workloadapi.Workload{
		Uid: WorkloadName(c.cluster, pod), Name: pod.Name, Namespace: pod.Namespace,
		Addresses: [][]byte{ip.AsSlice()}, ServiceAccount: sa, Node: pod.Spec.NodeName,
		CanonicalName: canonicalName(pod), CanonicalRevision: canonicalRevision(pod),
		WorkloadType: workloadapi.WorkloadType_POD, WorkloadName: pod.Name, ClusterId: c.cluster,
		Status: workloadapi.WorkloadStatus_HEALTHY,
	}
	if pod.Status.Phase != corev1.PodRunning {
		w.Status = workloadapi.WorkloadStatus_UNHEALTHY
	}
	if pod.Annotations[AnnotationRedirection] == "enabled" || pod.Labels[LabelTunnel] == TunnelHTTP {
		w.TunnelProtocol = workloadapi.TunnelProtocol_HBONE
	}
	if bind.Waypoint != nil {
		w.Waypoint = bind.Waypoint.Address()
	}
	if pod.Spec.HostNetwork {
		w.NetworkMode = workloadapi.NetworkMode_HOST_NETWORK
	}
	w.AuthorizationPolicies = append(selectedPolicies(c, pod), pa.attach...)
	for _, s := range c.svcs[pod.Namespace] {
		if !s.sel.Matches(labels.Set(pod.Labels)) {
			continue
		}
		pl := &workloadapi.PortList{}
		for _, p := range s.ports {
			target, ok := targetPort(pod, p)
			if !ok {
				continue // a named target port this pod does not have, as istiod
			}
			pl.Ports = append(pl.Ports, &workloadapi.Port{ServicePort: uint32(p.Port), TargetPort: uint32(target)})
		}
		if w.Services == nil {
			w.Services = map[string]*workloadapi.PortList{}
		}
		w.Services[s.name] = pl
	}
	return &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: w}}
}

// targetPort resolves a service port's target on one pod (named ports are
// per pod); false when the pod has no port of the name.
func targetPort(pod *corev1.Pod, p *corev1.ServicePort) (int, bool) {
	if p.TargetPort.StrVal != "" {
		for _, c := range pod.Spec.Containers {
			for _, cp := range c.Ports {
				if cp.Name == p.TargetPort.StrVal {
					return int(cp.ContainerPort), true
				}
			}
		}
		return 0, false
	}
	if n := p.TargetPort.IntValue(); n != 0 {
		return n, true
	}
	return int(p.Port), true
}

func canonicalName(pod *corev1.Pod) string {
	for _, k := range []string{"service.istio.io/canonical-name", "app.kubernetes.io/name", "app"} {
		if v := pod.Labels[k]; v != "" {
			return v
		}
	}
	return pod.Name
}

func canonicalRevision(pod *corev1.Pod) string {
	for _, k := range []string{"service.istio.io/canonical-revision", "app.kubernetes.io/version", "version"} {
		if v := pod.Labels[k]; v != "" {
			return v
		}
	}
	return "latest"
}

// Names returns the resource names of a set, sorted.
func Names(set map[string]*workloadapi.Address) []string {
	out := make([]string, 0, len(set))
	for k := range set {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// selectedPolicies names the selector policies that apply to a pod: those
// of its namespace, and those of the root namespace, whose labels match.
func selectedPolicies(c *compiled, pod *corev1.Pod) []string {
	var out []string
	for _, p := range c.policies[pod.Namespace] {
		if p.sel.Matches(labels.Set(pod.Labels)) {
			out = append(out, p.key)
		}
	}
	if pod.Namespace != c.root {
		for _, p := range c.policies[c.root] {
			if p.sel.Matches(labels.Set(pod.Labels)) {
				out = append(out, p.key)
			}
		}
	}
	sort.Strings(out)
	return out
}

// BuildAuthorizations translates the policies for ztunnel, by resource
// name (namespace/name), with the warnings users should see.
func BuildAuthorizations(in Inputs) (map[string]*security.Authorization, []authzpolicy.Warning) {
	root := in.RootNamespace
	if root == "" {
		root = authzpolicy.DefaultRootNamespace
	}
	x := newPAIndex(in.PeerAuthentications, root)
	out := map[string]*security.Authorization{}
	for _, pod := range in.Pods {
		x.forPod(pod).addTo(out, x)
	}
	user, warnings := translatePolicies(in.Policies, in.RootNamespace)
	for k, a := range user {
		out[k] = a
	}
	return out, warnings
}

// translatePolicies translates the AuthorizationPolicies ztunnel takes,
// by namespace/name, with every policy's warnings in input order.
func translatePolicies(policies []*securityclient.AuthorizationPolicy, root string) (map[string]*security.Authorization, []authzpolicy.Warning) {
	out := map[string]*security.Authorization{}
	var warnings []authzpolicy.Warning
	for _, p := range policies {
		a, w := authzpolicy.Translate(p, root)
		warnings = append(warnings, w...)
		if a != nil {
			out[p.Namespace+"/"+p.Name] = a
		}
	}
	return out, warnings
}
