package model

// The model as it was before it was made incremental (Build,
// BuildAuthorizations, WaypointReport and their helpers, verbatim but
// renamed): the
// reference the equivalence tests hold Build, BuildAuthorizations and
// Builder to.

import (
	"fmt"
	"hash/fnv"
	"net/netip"
	"sort"
	"strings"

	securityv1beta1 "istio.io/api/security/v1beta1"
	securityclient "istio.io/client-go/pkg/apis/security/v1"
	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/ambit-mesh/ambit/controlplane/authzpolicy"
)

func refBuild(in Inputs) map[string]*workloadapi.Address {
	if in.Cluster == "" {
		in.Cluster = DefaultCluster
	}
	if in.Domain == "" {
		in.Domain = DefaultDomain
	}
	out := map[string]*workloadapi.Address{}
	_, strict := refPeerAuthentication(in)
	wps := Waypoints(in)
	nss := make(map[string]*corev1.Namespace, len(in.Namespaces))
	for _, ns := range in.Namespaces {
		nss[ns.Name] = ns
	}
	type svcInfo struct {
		svc   *corev1.Service
		name  string
		sel   labels.Selector
		ports []*corev1.ServicePort
	}
	var svcs []svcInfo
	for _, s := range in.Services {
		name := ServiceName(s, in.Domain)
		override, overridden := in.ClusterIPs[s.Namespace+"/"+s.Name]
		ws := &workloadapi.Service{Name: s.Name, Namespace: s.Namespace, Hostname: ServiceHostname(s, in.Domain),
			Addresses: serviceVIPs(s, override, overridden), Ports: servicePorts(s), IpFamilies: serviceIPFamilies(s),
			LoadBalancing: serviceLoadBalancing(s, nss[s.Namespace]), Canonical: true}
		if b := ServiceBinding(s, nss[s.Namespace], wps); b.Waypoint != nil {
			ws.Waypoint = b.Waypoint.Address()
		}
		out[name] = &workloadapi.Address{Type: &workloadapi.Address_Service{Service: ws}}
		if len(s.Spec.Selector) > 0 {
			info := svcInfo{svc: s, name: name, sel: labels.SelectorFromSet(s.Spec.Selector)}
			for i := range s.Spec.Ports {
				info.ports = append(info.ports, &s.Spec.Ports[i])
			}
			svcs = append(svcs, info)
		}
	}
	for _, pod := range in.Pods {
		ip, err := netip.ParseAddr(pod.Status.PodIP)
		if err != nil || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
			continue // no address yet, or finished: nothing to route to
		}
		sa := pod.Spec.ServiceAccountName
		if sa == "default" {
			sa = ""
		}
		w := &workloadapi.Workload{
			Uid: WorkloadName(in.Cluster, pod), Name: pod.Name, Namespace: pod.Namespace,
			Addresses: [][]byte{ip.AsSlice()}, ServiceAccount: sa, Node: pod.Spec.NodeName,
			CanonicalName: canonicalName(pod), CanonicalRevision: canonicalRevision(pod),
			WorkloadType: workloadapi.WorkloadType_POD, WorkloadName: pod.Name, ClusterId: in.Cluster,
			Status: workloadapi.WorkloadStatus_HEALTHY,
		}
		if pod.Status.Phase != corev1.PodRunning {
			w.Status = workloadapi.WorkloadStatus_UNHEALTHY
		}
		if pod.Annotations[AnnotationRedirection] == "enabled" || pod.Labels[LabelTunnel] == TunnelHTTP {
			w.TunnelProtocol = workloadapi.TunnelProtocol_HBONE
		}
		if b := PodBinding(pod, nss[pod.Namespace], wps); b.Waypoint != nil {
			w.Waypoint = b.Waypoint.Address()
		}
		if pod.Spec.HostNetwork {
			w.NetworkMode = workloadapi.NetworkMode_HOST_NETWORK
		}
		w.AuthorizationPolicies = append(refSelectedPolicies(in, pod), strict[pod.Namespace+"/"+pod.Name]...)
		for _, s := range svcs {
			if s.svc.Namespace != pod.Namespace || !s.sel.Matches(labels.Set(pod.Labels)) {
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
		out[w.Uid] = &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: w}}
	}
	return out
}

func refSelectedPolicies(in Inputs, pod *corev1.Pod) []string {
	root := in.RootNamespace
	if root == "" {
		root = authzpolicy.DefaultRootNamespace
	}
	var out []string
	for _, p := range in.Policies {
		sel := p.Spec.GetSelector().GetMatchLabels()
		if len(sel) == 0 || (p.Namespace != pod.Namespace && p.Namespace != root) {
			continue
		}
		if labels.SelectorFromSet(sel).Matches(labels.Set(pod.Labels)) {
			out = append(out, p.Namespace+"/"+p.Name)
		}
	}
	sort.Strings(out)
	return out
}

func refBuildAuthorizations(in Inputs) (map[string]*security.Authorization, []authzpolicy.Warning) {
	out, _ := refPeerAuthentication(in)
	var warnings []authzpolicy.Warning
	for _, p := range in.Policies {
		a, w := authzpolicy.Translate(p, in.RootNamespace)
		warnings = append(warnings, w...)
		if a != nil {
			out[p.Namespace+"/"+p.Name] = a
		}
	}
	return out, warnings
}

func refPeerAuthentication(in Inputs) (map[string]*security.Authorization, map[string][]string) {
	root := in.RootNamespace
	if root == "" {
		root = authzpolicy.DefaultRootNamespace
	}
	var mesh *securityclient.PeerAuthentication
	nsWide := map[string]*securityclient.PeerAuthentication{}
	var selectorPAs []*securityclient.PeerAuthentication
	for _, pa := range in.PeerAuthentications {
		switch {
		case len(pa.Spec.GetSelector().GetMatchLabels()) > 0:
			selectorPAs = append(selectorPAs, pa)
		case pa.Namespace == root:
			mesh = pa
		default:
			nsWide[pa.Namespace] = pa
		}
	}
	sort.Slice(selectorPAs, func(i, j int) bool {
		return selectorPAs[i].Namespace+"/"+selectorPAs[i].Name < selectorPAs[j].Namespace+"/"+selectorPAs[j].Name
	})
	policies := map[string]*security.Authorization{}
	attach := map[string][]string{}
	staticKey := root + "/" + StaticStrictPolicy
	for _, pod := range in.Pods {
		mode := modeUnset
		var ports map[uint32]*securityv1beta1.PeerAuthentication_MutualTLS
		for _, pa := range selectorPAs {
			if pa.Namespace == pod.Namespace && labels.SelectorFromSet(pa.Spec.GetSelector().GetMatchLabels()).Matches(labels.Set(pod.Labels)) {
				mode, ports = modeOf(pa.Spec.GetMtls()), pa.Spec.GetPortLevelMtls()
				break
			}
		}
		if mode == modeUnset {
			if pa := nsWide[pod.Namespace]; pa != nil {
				mode = modeOf(pa.Spec.GetMtls())
			}
		}
		if mode == modeUnset && mesh != nil {
			mode = modeOf(mesh.Spec.GetMtls())
		}
		key := pod.Namespace + "/" + pod.Name
		if len(ports) == 0 {
			if mode == modeStrict {
				policies[staticKey] = &security.Authorization{Name: StaticStrictPolicy, Namespace: root, Scope: security.Scope_WORKLOAD_SELECTOR,
					Action: security.Action_DENY, Groups: []*security.Group{{Rules: []*security.Rules{{Matches: []*security.Match{denyPlaintext()}}}}}}
				attach[key] = append(attach[key], staticKey)
			}
			continue
		}
		// Port-level exceptions: one policy for this workload.
		m := denyPlaintext()
		var portList []uint32
		for p := range ports {
			portList = append(portList, p)
		}
		sort.Slice(portList, func(i, j int) bool { return portList[i] < portList[j] })
		for _, p := range portList {
			pm := modeOf(ports[p])
			switch {
			case mode == modeStrict && pm == modePermissive:
				m.NotDestinationPorts = append(m.NotDestinationPorts, p)
			case mode != modeStrict && pm == modeStrict:
				m.DestinationPorts = append(m.DestinationPorts, p)
			}
		}
		if mode != modeStrict && len(m.DestinationPorts) == 0 {
			continue // permissive everywhere
		}
		h := fnv.New32a()
		h.Write([]byte(key))
		name := fmt.Sprintf("istio_converted_strict_%s_%08x", pod.Name, h.Sum32())
		policies[pod.Namespace+"/"+name] = &security.Authorization{Name: name, Namespace: pod.Namespace, Scope: security.Scope_WORKLOAD_SELECTOR,
			Action: security.Action_DENY, Groups: []*security.Group{{Rules: []*security.Rules{{Matches: []*security.Match{m}}}}}}
		attach[key] = append(attach[key], pod.Namespace+"/"+name)
	}
	return policies, attach
}

// refWaypointReport is WaypointReport as it was: it summarises waypoints and bindings for status displays.
func refWaypointReport(in Inputs) ([]WaypointStatus, []BindingProblem) {
	wps := Waypoints(in)
	nss := map[string]*corev1.Namespace{}
	for _, ns := range in.Namespaces {
		nss[ns.Name] = ns
	}
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
	for _, gw := range in.Gateways {
		if !IsWaypoint(gw) {
			st[gw.Namespace+"/"+gw.Name] = &WaypointStatus{Namespace: gw.Namespace, Name: gw.Name, For: "-",
				Reason: fmt.Sprintf("gatewayClassName %q is not served by Ambit (only %s): ignored", gw.Spec.GatewayClassName, GatewayClassWaypoint)}
		}
	}
	var problems []BindingProblem
	for _, svc := range in.Services {
		b := ServiceBinding(svc, nss[svc.Namespace], wps)
		if b.Waypoint != nil {
			s := st[b.Waypoint.Key()]
			s.Services = append(s.Services, svc.Namespace+"/"+svc.Name)
		} else if b.Problem != "" {
			problems = append(problems, BindingProblem{Object: "Service " + svc.Namespace + "/" + svc.Name, From: b.From, Problem: b.Problem})
		}
	}
	for _, pod := range in.Pods {
		b := PodBinding(pod, nss[pod.Namespace], wps)
		if b.Waypoint != nil {
			s := st[b.Waypoint.Key()]
			s.Workloads = append(s.Workloads, pod.Namespace+"/"+pod.Name)
		} else if b.Problem != "" {
			problems = append(problems, BindingProblem{Object: "Pod " + pod.Namespace + "/" + pod.Name, From: b.From, Problem: b.Problem})
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
