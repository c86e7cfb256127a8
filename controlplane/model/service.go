package model

import (
	"net/netip"
	"strings"

	"istio.io/istio/pkg/workloadapi"
	corev1 "k8s.io/api/core/v1"
)

// AnnotationTrafficDistribution is Istio's annotation (on a Service or its
// namespace) for what spec.trafficDistribution says.
const AnnotationTrafficDistribution = "networking.istio.io/traffic-distribution"

// serviceVIPs are a Service's cluster IPs (both families when dual-stack),
// or override when the cluster's allocator is ours (local mode).
func serviceVIPs(s *corev1.Service, override string, overridden bool) []*workloadapi.NetworkAddress {
	ips := s.Spec.ClusterIPs
	if len(ips) == 0 {
		ips = []string{s.Spec.ClusterIP}
	}
	if overridden {
		ips = []string{override}
	}
	var out []*workloadapi.NetworkAddress
	for _, v := range ips {
		if ip, err := netip.ParseAddr(v); err == nil {
			out = append(out, &workloadapi.NetworkAddress{Address: ip.AsSlice()})
		}
	}
	return out
}

// servicePorts are a Service's ports as istiod sends them: every port
// (ztunnel itself carries TCP only), with the application protocol istiod
// infers.
func servicePorts(s *corev1.Service) []*workloadapi.Port {
	out := make([]*workloadapi.Port, 0, len(s.Spec.Ports))
	for _, p := range s.Spec.Ports {
		out = append(out, &workloadapi.Port{ServicePort: uint32(p.Port), TargetPort: uint32(p.TargetPort.IntValue()), AppProtocol: appProtocol(p)})
	}
	return out
}

// appProtocol infers a port's protocol as istiod does: UDP is not an
// application protocol; appProtocol wins over the port name, whose prefix
// up to "-" names it ("http-web", "grpc", "tls-db"); unnamed ports of the
// well-known TCP services (SMTP, DNS, MySQL, MongoDB) are TCP.
func appProtocol(p corev1.ServicePort) workloadapi.AppProtocol {
	if p.Protocol == corev1.ProtocolUDP {
		return workloadapi.AppProtocol_UNKNOWN
	}
	name := p.Name
	if p.AppProtocol != nil {
		name = *p.AppProtocol
		switch name {
		case "kubernetes.io/h2c":
			return workloadapi.AppProtocol_HTTP2
		case "kubernetes.io/ws":
			return workloadapi.AppProtocol_HTTP11
		case "kubernetes.io/wss":
			return workloadapi.AppProtocol_TLS
		}
	}
	if len(name) >= len("grpc-web") && strings.EqualFold(name[:len("grpc-web")], "grpc-web") {
		return workloadapi.AppProtocol_UNKNOWN // grpc-web: no WDS protocol of its own
	}
	if i := strings.IndexByte(name, '-'); i >= 0 {
		name = name[:i]
	}
	switch strings.ToLower(name) {
	case "http":
		return workloadapi.AppProtocol_HTTP11
	case "http2":
		return workloadapi.AppProtocol_HTTP2
	case "grpc":
		return workloadapi.AppProtocol_GRPC
	case "https", "tls":
		return workloadapi.AppProtocol_TLS
	case "tcp":
		return workloadapi.AppProtocol_TCP
	case "udp", "http_proxy", "mongo", "redis", "mysql":
		return workloadapi.AppProtocol_UNKNOWN
	}
	switch p.Port {
	case 25, 53, 3306, 27017:
		return workloadapi.AppProtocol_TCP
	}
	return workloadapi.AppProtocol_UNKNOWN
}

// serviceIPFamilies is spec.ipFamilies in WDS terms.
func serviceIPFamilies(s *corev1.Service) workloadapi.IPFamilies {
	switch {
	case len(s.Spec.IPFamilies) == 2:
		return workloadapi.IPFamilies_DUAL
	case len(s.Spec.IPFamilies) == 1 && s.Spec.IPFamilies[0] == corev1.IPv4Protocol:
		return workloadapi.IPFamilies_IPV4_ONLY
	case len(s.Spec.IPFamilies) == 1:
		return workloadapi.IPFamilies_IPV6_ONLY
	}
	return workloadapi.IPFamilies_AUTOMATIC
}

// serviceLoadBalancing is what istiod makes of internalTrafficPolicy,
// trafficDistribution (the field, else the annotation on the Service, else
// on its namespace) and publishNotReadyAddresses; nil for the default.
func serviceLoadBalancing(s *corev1.Service, ns *corev1.Namespace) *workloadapi.LoadBalancing {
	var lb *workloadapi.LoadBalancing
	if itp := s.Spec.InternalTrafficPolicy; itp != nil && *itp == corev1.ServiceInternalTrafficPolicyLocal {
		lb = &workloadapi.LoadBalancing{RoutingPreference: []workloadapi.LoadBalancing_Scope{workloadapi.LoadBalancing_NODE},
			Mode: workloadapi.LoadBalancing_STRICT}
	} else {
		var nsAnn map[string]string
		if ns != nil {
			nsAnn = ns.Annotations
		}
		switch trafficDistribution(s.Spec.TrafficDistribution, s.Annotations, nsAnn) {
		case corev1.ServiceTrafficDistributionPreferSameZone:
			lb = &workloadapi.LoadBalancing{RoutingPreference: []workloadapi.LoadBalancing_Scope{
				workloadapi.LoadBalancing_NETWORK, workloadapi.LoadBalancing_REGION, workloadapi.LoadBalancing_ZONE},
				Mode: workloadapi.LoadBalancing_FAILOVER}
		case corev1.ServiceTrafficDistributionPreferSameNode:
			lb = &workloadapi.LoadBalancing{RoutingPreference: []workloadapi.LoadBalancing_Scope{
				workloadapi.LoadBalancing_NETWORK, workloadapi.LoadBalancing_REGION, workloadapi.LoadBalancing_ZONE,
				workloadapi.LoadBalancing_SUBZONE, workloadapi.LoadBalancing_NODE},
				Mode: workloadapi.LoadBalancing_FAILOVER}
		}
	}
	if s.Spec.PublishNotReadyAddresses {
		if lb == nil {
			lb = &workloadapi.LoadBalancing{}
		}
		lb.HealthPolicy = workloadapi.LoadBalancing_ALLOW_ALL
	}
	return lb
}

// trafficDistribution resolves the preference: PreferSameZone (also for
// PreferClose), PreferSameNode, or "" for any. The field wins, then the
// Service's annotation, then the namespace's; an unknown annotation value
// means any.
func trafficDistribution(spec *string, svcAnn, nsAnn map[string]string) string {
	norm := func(v string) (string, bool) {
		switch strings.ToLower(v) {
		case strings.ToLower(corev1.ServiceTrafficDistributionPreferClose), strings.ToLower(corev1.ServiceTrafficDistributionPreferSameZone):
			return corev1.ServiceTrafficDistributionPreferSameZone, true
		case strings.ToLower(corev1.ServiceTrafficDistributionPreferSameNode):
			return corev1.ServiceTrafficDistributionPreferSameNode, true
		}
		return "", false
	}
	if spec != nil {
		if v, ok := norm(*spec); ok {
			return v
		}
	}
	for _, ann := range []map[string]string{svcAnn, nsAnn} {
		if v := ann[AnnotationTrafficDistribution]; v != "" {
			d, _ := norm(v)
			return d
		}
	}
	return ""
}
