package main

import (
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"net/netip"
	"strconv"

	securityv1beta1 "istio.io/api/security/v1beta1"
	typev1beta1 "istio.io/api/type/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambit-mesh/ambit/controlplane/config"
	"github.com/ambit-mesh/ambit/controlplane/model"
)

// Spec sizes a synthetic mesh.
type Spec struct {
	Pods       int `json:"pods"`       // application pods, spread evenly over the namespaces
	Services   int `json:"services"`   // Services, spread evenly over the namespaces
	Namespaces int `json:"namespaces"` // ambient namespaces (the root namespace comes on top)
	Nodes      int `json:"nodes"`      // nodes the pods are scheduled on, round robin
	// Waypoints is how many namespaces get a waypoint (a Gateway of class
	// istio-waypoint, its pod and its Service) that the namespace's
	// services use; 0 for none.
	Waypoints int `json:"waypoints"`
}

// DefaultSpec is the size the control plane's budget is stated for
// (docs/DESIGN.md §6): 50,000 pods and 5,000 services.
func DefaultSpec() Spec {
	return Spec{Pods: 50000, Services: 5000, Namespaces: 500, Nodes: 100, Waypoints: 5}
}

// Validate reports a spec the generator cannot lay out.
func (s Spec) Validate() error {
	switch {
	case s.Namespaces < 1 || s.Nodes < 1:
		return fmt.Errorf("spec %+v: need at least one namespace and one node", s)
	case s.Pods < s.Namespaces || s.Services < s.Namespaces:
		return fmt.Errorf("spec %+v: need at least one pod and one service per namespace", s)
	case s.Services > s.Pods:
		return fmt.Errorf("spec %+v: more services than pods", s)
	case s.Waypoints > s.Namespaces:
		return fmt.Errorf("spec %+v: more waypoints than namespaces", s)
	case s.Pods+s.Waypoints > 1<<20:
		return fmt.Errorf("spec %+v: at most 2^20 pods (the pod CIDR is 10.0.0.0/9)", s)
	}
	return nil
}

// Mesh is a generated mesh: typed slices of the objects a cluster would
// hold, as their owners (users, the scheduler, the kubelet, the CNI plugin)
// would have written them, status included. Objects carry TypeMeta and no
// server-set metadata (uid, resourceVersion), so that the same objects can
// be created in a real API server.
type Mesh struct {
	Spec                  Spec
	Namespaces            []*corev1.Namespace
	ServiceAccounts       []*corev1.ServiceAccount
	Pods                  []*corev1.Pod // application pods, then waypoint pods
	Services              []*corev1.Service
	AuthorizationPolicies []*securityv1.AuthorizationPolicy
	PeerAuthentications   []*securityv1.PeerAuthentication
	Gateways              []*gatewayv1.Gateway

	// AppPods is how many of Pods are application pods (the rest are
	// waypoints').
	AppPods int
	// nodeBlock is the size of each node's pod address block.
	nodeBlock int
	// perNode counts the pods placed on each node, for fresh addresses.
	perNode []int
}

// Objects returns every object of the mesh in creation order (namespaces
// and service accounts first, pods last), as a source would list them.
func (m *Mesh) Objects() []config.Object {
	var out []config.Object
	for _, o := range m.Namespaces {
		out = append(out, o)
	}
	for _, o := range m.ServiceAccounts {
		out = append(out, o)
	}
	for _, o := range m.PeerAuthentications {
		out = append(out, o)
	}
	for _, o := range m.AuthorizationPolicies {
		out = append(out, o)
	}
	for _, o := range m.Gateways {
		out = append(out, o)
	}
	for _, o := range m.Services {
		out = append(out, o)
	}
	for _, o := range m.Pods {
		out = append(out, o)
	}
	return out
}

// WorkloadNames and ServiceNames are the WDS resource names the control
// plane must serve for the mesh (default cluster and domain).
func (m *Mesh) WorkloadNames() []string {
	out := make([]string, len(m.Pods))
	for i, p := range m.Pods {
		out[i] = model.WorkloadName(model.DefaultCluster, p)
	}
	return out
}

// ServiceNames: see WorkloadNames.
func (m *Mesh) ServiceNames() []string {
	out := make([]string, len(m.Services))
	for i, s := range m.Services {
		out[i] = model.ServiceName(s, model.DefaultDomain)
	}
	return out
}

// RootNamespace is where the mesh-wide policies live.
const RootNamespace = "istio-system"

// Address plan: pods in 10.0.0.0/9, each node a block of it; service VIPs
// in 10.96.0.0/12 as kubeadm's default service CIDR.
var (
	podBase = netip.MustParseAddr("10.0.0.0")
	vipBase = netip.MustParseAddr("10.96.0.0")
)

func addrAt(base netip.Addr, off int) netip.Addr {
	b := base.As4()
	v := binary.BigEndian.Uint32(b[:]) + uint32(off)
	binary.BigEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

func nsName(i int) string   { return fmt.Sprintf("ns-%04d", i) }
func nodeName(i int) string { return fmt.Sprintf("node-%03d", i) }

// Generate lays out a mesh of the spec's size, deterministically (the same
// spec gives the same objects):
//
//   - Namespaces ns-0000... labelled istio.io/dataplane-mode=ambient, plus
//     the root namespace istio-system.
//   - per namespace, Services/Namespaces apps "app-<k>": a ServiceAccount
//     and a Service selecting app=app-<k> (ports http 80 -> named port
//     "http", grpc 9090), and the namespace's pods spread over the apps
//     (labels app, version, pod-template-hash), each with spec.nodeName
//     (round robin over the nodes), phase Running, status.podIP from its
//     node's block and the redirection annotation the CNI plugin sets
//     (ambient.istio.io/redirection=enabled).
//   - a mesh-wide STRICT PeerAuthentication; every 50th namespace
//     PERMISSIVE; every 100th namespace a selector PeerAuthentication with
//     a port-level exception (which becomes per-pod policies).
//   - an ALLOW-from-own-namespace AuthorizationPolicy in every 10th
//     namespace, a selector ALLOW for app-0 in every 25th, and one global
//     DENY in the root namespace.
//   - Spec.Waypoints namespaces (spread out) with a waypoint Gateway, its
//     pod and Service, and the namespace label istio.io/use-waypoint.
func Generate(s Spec) (*Mesh, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	m := &Mesh{Spec: s, AppPods: s.Pods, perNode: make([]int, s.Nodes)}
	perNodeMax := (s.Pods+s.Waypoints)/s.Nodes + 2
	m.nodeBlock = 4
	for m.nodeBlock < 2*perNodeMax+2 { // room for fresh addresses on IP changes
		m.nodeBlock *= 2
	}
	if s.Nodes*m.nodeBlock > 1<<23 {
		return nil, fmt.Errorf("spec %+v: the pod blocks do not fit 10.0.0.0/9", s)
	}
	waypointNS := map[int]bool{}
	for i := range s.Waypoints {
		waypointNS[i*s.Namespaces/s.Waypoints] = true
	}
	m.Namespaces = append(m.Namespaces, &corev1.Namespace{TypeMeta: typeMeta("v1", "Namespace"),
		ObjectMeta: metav1.ObjectMeta{Name: RootNamespace, Labels: map[string]string{"kubernetes.io/metadata.name": RootNamespace}}})
	m.PeerAuthentications = append(m.PeerAuthentications, &securityv1.PeerAuthentication{TypeMeta: typeMeta("security.istio.io/v1", "PeerAuthentication"),
		ObjectMeta: metav1.ObjectMeta{Namespace: RootNamespace, Name: "default"},
		Spec:       securityv1beta1.PeerAuthentication{Mtls: &securityv1beta1.PeerAuthentication_MutualTLS{Mode: securityv1beta1.PeerAuthentication_MutualTLS_STRICT}}})
	m.AuthorizationPolicies = append(m.AuthorizationPolicies, &securityv1.AuthorizationPolicy{TypeMeta: typeMeta("security.istio.io/v1", "AuthorizationPolicy"),
		ObjectMeta: metav1.ObjectMeta{Namespace: RootNamespace, Name: "deny-quarantined"},
		Spec: securityv1beta1.AuthorizationPolicy{Action: securityv1beta1.AuthorizationPolicy_DENY,
			Rules: []*securityv1beta1.Rule{{From: []*securityv1beta1.Rule_From{{Source: &securityv1beta1.Source{Namespaces: []string{"quarantine"}}}}}}}})

	svcIdx, podIdx := 0, 0
	for n := range s.Namespaces {
		ns := nsName(n)
		labels := map[string]string{model.LabelDataplaneMode: model.DataplaneAmbient, "kubernetes.io/metadata.name": ns, "team": fmt.Sprintf("team-%d", n%20)}
		if waypointNS[n] {
			labels[model.LabelUseWaypoint] = "waypoint"
		}
		m.Namespaces = append(m.Namespaces, &corev1.Namespace{TypeMeta: typeMeta("v1", "Namespace"), ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: labels}})
		apps := s.Services/s.Namespaces + boolInt(n < s.Services%s.Namespaces)
		pods := s.Pods/s.Namespaces + boolInt(n < s.Pods%s.Namespaces)
		for k := range apps {
			app := fmt.Sprintf("app-%d", k)
			m.ServiceAccounts = append(m.ServiceAccounts, &corev1.ServiceAccount{TypeMeta: typeMeta("v1", "ServiceAccount"),
				ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: app, Labels: map[string]string{"app": app}}})
			m.Services = append(m.Services, &corev1.Service{TypeMeta: typeMeta("v1", "Service"),
				ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: app, Labels: map[string]string{"app": app}},
				Spec: corev1.ServiceSpec{
					Type: corev1.ServiceTypeClusterIP, ClusterIP: addrAt(vipBase, 10+svcIdx).String(),
					ClusterIPs: []string{addrAt(vipBase, 10+svcIdx).String()},
					Selector:   map[string]string{"app": app},
					Ports: []corev1.ServicePort{
						{Name: "http", Port: 80, TargetPort: intstr.FromString("http"), Protocol: corev1.ProtocolTCP, AppProtocol: ptr.To("http")},
						{Name: "grpc", Port: 9090, TargetPort: intstr.FromInt32(9090), Protocol: corev1.ProtocolTCP, AppProtocol: ptr.To("grpc")},
					},
					SessionAffinity: corev1.ServiceAffinityNone, IPFamilies: []corev1.IPFamily{corev1.IPv4Protocol},
				}})
			svcIdx++
		}
		for j := range pods {
			k := j % apps
			m.Pods = append(m.Pods, m.appPod(ns, fmt.Sprintf("app-%d", k), j/apps, podIdx))
			podIdx++
		}
		switch {
		case n%100 == 99:
			m.PeerAuthentications = append(m.PeerAuthentications, &securityv1.PeerAuthentication{TypeMeta: typeMeta("security.istio.io/v1", "PeerAuthentication"),
				ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "app-0-metrics"},
				Spec: securityv1beta1.PeerAuthentication{Selector: &typev1beta1.WorkloadSelector{MatchLabels: map[string]string{"app": "app-0"}},
					Mtls:          &securityv1beta1.PeerAuthentication_MutualTLS{Mode: securityv1beta1.PeerAuthentication_MutualTLS_STRICT},
					PortLevelMtls: map[uint32]*securityv1beta1.PeerAuthentication_MutualTLS{15090: {Mode: securityv1beta1.PeerAuthentication_MutualTLS_PERMISSIVE}}}})
		case n%50 == 49:
			m.PeerAuthentications = append(m.PeerAuthentications, &securityv1.PeerAuthentication{TypeMeta: typeMeta("security.istio.io/v1", "PeerAuthentication"),
				ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "default"},
				Spec:       securityv1beta1.PeerAuthentication{Mtls: &securityv1beta1.PeerAuthentication_MutualTLS{Mode: securityv1beta1.PeerAuthentication_MutualTLS_PERMISSIVE}}})
		}
		if n%10 == 0 {
			m.AuthorizationPolicies = append(m.AuthorizationPolicies, &securityv1.AuthorizationPolicy{TypeMeta: typeMeta("security.istio.io/v1", "AuthorizationPolicy"),
				ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "allow-same-namespace"},
				Spec: securityv1beta1.AuthorizationPolicy{Action: securityv1beta1.AuthorizationPolicy_ALLOW,
					Rules: []*securityv1beta1.Rule{{From: []*securityv1beta1.Rule_From{{Source: &securityv1beta1.Source{Namespaces: []string{ns}}}}}}}})
		}
		if n%25 == 0 {
			m.AuthorizationPolicies = append(m.AuthorizationPolicies, &securityv1.AuthorizationPolicy{TypeMeta: typeMeta("security.istio.io/v1", "AuthorizationPolicy"),
				ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "app-0-callers"},
				Spec: securityv1beta1.AuthorizationPolicy{Selector: &typev1beta1.WorkloadSelector{MatchLabels: map[string]string{"app": "app-0"}},
					Action: securityv1beta1.AuthorizationPolicy_ALLOW,
					Rules: []*securityv1beta1.Rule{{
						From: []*securityv1beta1.Rule_From{{Source: &securityv1beta1.Source{Principals: []string{"cluster.local/ns/" + ns + "/sa/app-1"}}}},
						To:   []*securityv1beta1.Rule_To{{Operation: &securityv1beta1.Operation{Ports: []string{"8080", "9090"}}}},
					}}}})
		}
	}
	// Waypoints: a Gateway, its pod and its Service per chosen namespace.
	for n := range s.Namespaces {
		if !waypointNS[n] {
			continue
		}
		ns := nsName(n)
		m.Gateways = append(m.Gateways, &gatewayv1.Gateway{TypeMeta: typeMeta("gateway.networking.k8s.io/v1", "Gateway"),
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "waypoint", Labels: map[string]string{model.LabelWaypointFor: model.WaypointForService}},
			Spec: gatewayv1.GatewaySpec{GatewayClassName: model.GatewayClassWaypoint,
				Listeners: []gatewayv1.Listener{{Name: "mesh", Port: model.WaypointListenerPort, Protocol: "HBONE"}}}})
		wl := map[string]string{model.LabelGatewayName: "waypoint", model.LabelDataplaneMode: model.DataplaneNone, model.LabelTunnel: model.TunnelHTTP,
			"gateway.istio.io/managed": "istio.io-mesh-controller"}
		p := m.pod(ns, "waypoint-5d8f7c9b4-x2x7q", "waypoint", wl, nil, podIdx)
		p.Spec.Containers[0].Name = "istio-proxy"
		m.Pods = append(m.Pods, p)
		podIdx++
		m.Services = append(m.Services, &corev1.Service{TypeMeta: typeMeta("v1", "Service"),
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "waypoint", Labels: map[string]string{model.LabelGatewayName: "waypoint"}},
			Spec: corev1.ServiceSpec{ClusterIP: addrAt(vipBase, 10+svcIdx).String(), Selector: map[string]string{model.LabelGatewayName: "waypoint"},
				ClusterIPs: []string{addrAt(vipBase, 10+svcIdx).String()}, IPFamilies: []corev1.IPFamily{corev1.IPv4Protocol},
				Ports: []corev1.ServicePort{
					{Name: "mesh", Port: model.WaypointListenerPort, TargetPort: intstr.FromInt32(model.WaypointListenerPort), Protocol: corev1.ProtocolTCP},
					{Name: "status-port", Port: 15021, TargetPort: intstr.FromInt32(15021), Protocol: corev1.ProtocolTCP},
				}}})
		svcIdx++
	}
	return m, nil
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

func typeMeta(apiVersion, kind string) metav1.TypeMeta {
	return metav1.TypeMeta{APIVersion: apiVersion, Kind: kind}
}

// appPod is replica r of an app: a Deployment's pod as the kubelet reports
// it once running in an ambient namespace.
func (m *Mesh) appPod(ns, app string, r, idx int) *corev1.Pod {
	h := fnv.New32a()
	h.Write([]byte(ns + "/" + app))
	hash := fmt.Sprintf("%08x", h.Sum32())[:6] // one ReplicaSet per app
	name := fmt.Sprintf("%s-%s-%05d", app, hash, r)
	labels := map[string]string{"app": app, "version": "v1", "pod-template-hash": hash}
	ann := map[string]string{model.AnnotationRedirection: "enabled", "kubectl.kubernetes.io/default-container": app}
	return m.pod(ns, name, app, labels, ann, idx)
}

// pod places pod idx on its node and gives it the next address of the
// node's block.
func (m *Mesh) pod(ns, name, sa string, labels, ann map[string]string, idx int) *corev1.Pod {
	node := idx % m.Spec.Nodes
	ip := m.freshIP(node)
	running := metav1.Unix(1767225600, 0) // 2026-01-01
	return &corev1.Pod{
		TypeMeta: typeMeta("v1", "Pod"),
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels, Annotations: ann,
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: sa + "-" + labels["pod-template-hash"],
				UID: "00000000-0000-0000-0000-000000000000", Controller: ptr.To(true), BlockOwnerDeletion: ptr.To(true)}}},
		Spec: corev1.PodSpec{
			NodeName: nodeName(node), ServiceAccountName: sa,
			Containers: []corev1.Container{{
				Name: sa, Image: "registry.example/" + sa + ":1.0",
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP},
					{Name: "grpc", ContainerPort: 9090, Protocol: corev1.ProtocolTCP}},
				Env: []corev1.EnvVar{{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}}},
				Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"),
					corev1.ResourceMemory: resource.MustParse("128Mi")}},
				ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromString("http")}}},
			}},
			RestartPolicy: corev1.RestartPolicyAlways, DNSPolicy: corev1.DNSClusterFirst,
			TerminationGracePeriodSeconds: ptr.To[int64](30),
		},
		Status: corev1.PodStatus{
			Phase: corev1.PodRunning, PodIP: ip.String(), PodIPs: []corev1.PodIP{{IP: ip.String()}},
			HostIP:    addrAt(netip.MustParseAddr("192.168.0.0"), 10+node).String(),
			StartTime: &running,
			Conditions: []corev1.PodCondition{
				{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: running},
				{Type: corev1.ContainersReady, Status: corev1.ConditionTrue, LastTransitionTime: running},
				{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: running},
			},
			ContainerStatuses: []corev1.ContainerStatus{{Name: sa, Ready: true, Started: ptr.To(true), Image: "registry.example/" + sa + ":1.0",
				State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: running}}}},
			QOSClass: corev1.PodQOSBurstable,
		},
	}
}

// freshIP returns the next unused address of a node's block.
func (m *Mesh) freshIP(node int) netip.Addr {
	m.perNode[node]++
	if m.perNode[node] >= m.nodeBlock-1 {
		m.perNode[node] = 1 // wrap: long runs of IP changes reuse old addresses
	}
	return addrAt(podBase, node*m.nodeBlock+m.perNode[node])
}

// Change is one single-pod change and how to recognise it at a client.
type Change struct {
	Pod *corev1.Pod // the new version (a modified copy)
	// Workload is the WDS resource name that must change.
	Workload string
	// What names the change ("pod IP", "label version").
	What string
	// IP and Revision are what the client must then see: the workload's
	// address and its canonical revision.
	IP, Revision string
}

// PodChange returns change i of a run: pods are taken across namespaces
// (a large stride over the application pods), and changes alternate
// between a new pod IP (as a pod recreated with the same name would get)
// and a new value of the label "version" (which moves the workload's
// canonical revision). The mesh records the new version as current.
func (m *Mesh) PodChange(i int) Change {
	idx := (i*7919 + 13) % m.AppPods
	old := m.Pods[idx]
	p := old.DeepCopy()
	ch := Change{Pod: p, Workload: model.WorkloadName(model.DefaultCluster, p)}
	if i%2 == 0 {
		var node int
		fmt.Sscanf(p.Spec.NodeName, "node-%d", &node)
		ip := m.freshIP(node).String()
		p.Status.PodIP, p.Status.PodIPs = ip, []corev1.PodIP{{IP: ip}}
		ch.What = "pod IP"
	} else {
		p.Labels = copyMap(p.Labels)
		p.Labels["version"] = "v" + strconv.Itoa(i+2)
		ch.What = "label version"
	}
	ch.IP, ch.Revision = p.Status.PodIP, p.Labels["version"]
	m.Pods[idx] = p
	return ch
}

func copyMap(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}
