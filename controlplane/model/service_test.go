package model

import (
	"testing"

	"google.golang.org/protobuf/proto"
	"istio.io/istio/pkg/workloadapi"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

func TestAppProtocol(t *testing.T) {
	for _, tc := range []struct {
		name     string
		port     corev1.ServicePort
		expected workloadapi.AppProtocol
	}{
		{"http name", corev1.ServicePort{Name: "http", Port: 80}, workloadapi.AppProtocol_HTTP11},
		{"http prefix", corev1.ServicePort{Name: "http-web", Port: 80}, workloadapi.AppProtocol_HTTP11},
		{"case", corev1.ServicePort{Name: "HTTP2-x", Port: 80}, workloadapi.AppProtocol_HTTP2},
		{"grpc", corev1.ServicePort{Name: "grpc", Port: 9000}, workloadapi.AppProtocol_GRPC},
		{"grpc-web", corev1.ServicePort{Name: "grpc-web", Port: 9000}, workloadapi.AppProtocol_UNKNOWN},
		{"https", corev1.ServicePort{Name: "https", Port: 443}, workloadapi.AppProtocol_TLS},
		{"tls", corev1.ServicePort{Name: "tls-db", Port: 5432}, workloadapi.AppProtocol_TLS},
		{"tcp", corev1.ServicePort{Name: "tcp", Port: 5432}, workloadapi.AppProtocol_TCP},
		{"redis", corev1.ServicePort{Name: "redis", Port: 6379}, workloadapi.AppProtocol_UNKNOWN},
		{"unnamed", corev1.ServicePort{Port: 8080}, workloadapi.AppProtocol_UNKNOWN},
		{"unnamed well-known", corev1.ServicePort{Port: 3306}, workloadapi.AppProtocol_TCP},
		{"named mysql is mysql", corev1.ServicePort{Name: "mysql", Port: 3306}, workloadapi.AppProtocol_UNKNOWN},
		{"udp", corev1.ServicePort{Name: "http", Port: 53, Protocol: corev1.ProtocolUDP}, workloadapi.AppProtocol_UNKNOWN},
		{"appProtocol wins", corev1.ServicePort{Name: "tcp", Port: 80, AppProtocol: ptr.To("http")}, workloadapi.AppProtocol_HTTP11},
		{"h2c", corev1.ServicePort{Name: "tcp", Port: 80, AppProtocol: ptr.To("kubernetes.io/h2c")}, workloadapi.AppProtocol_HTTP2},
		{"ws", corev1.ServicePort{Port: 80, AppProtocol: ptr.To("kubernetes.io/ws")}, workloadapi.AppProtocol_HTTP11},
		{"wss", corev1.ServicePort{Port: 443, AppProtocol: ptr.To("kubernetes.io/wss")}, workloadapi.AppProtocol_TLS},
	} {
		if got := appProtocol(tc.port); got != tc.expected {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.expected)
		}
	}
}

func TestServiceLoadBalancing(t *testing.T) {
	local := corev1.ServiceInternalTrafficPolicyLocal
	zone := &workloadapi.LoadBalancing{RoutingPreference: []workloadapi.LoadBalancing_Scope{
		workloadapi.LoadBalancing_NETWORK, workloadapi.LoadBalancing_REGION, workloadapi.LoadBalancing_ZONE}, Mode: workloadapi.LoadBalancing_FAILOVER}
	node := &workloadapi.LoadBalancing{RoutingPreference: []workloadapi.LoadBalancing_Scope{
		workloadapi.LoadBalancing_NETWORK, workloadapi.LoadBalancing_REGION, workloadapi.LoadBalancing_ZONE,
		workloadapi.LoadBalancing_SUBZONE, workloadapi.LoadBalancing_NODE}, Mode: workloadapi.LoadBalancing_FAILOVER}
	ann := func(v string) map[string]string { return map[string]string{AnnotationTrafficDistribution: v} }
	for _, tc := range []struct {
		name  string
		spec  corev1.ServiceSpec
		ann   map[string]string
		nsAnn map[string]string
		want  *workloadapi.LoadBalancing
	}{
		{"default", corev1.ServiceSpec{}, nil, nil, nil},
		{"internal local", corev1.ServiceSpec{InternalTrafficPolicy: &local}, nil, nil,
			&workloadapi.LoadBalancing{RoutingPreference: []workloadapi.LoadBalancing_Scope{workloadapi.LoadBalancing_NODE}, Mode: workloadapi.LoadBalancing_STRICT}},
		{"internal local beats distribution", corev1.ServiceSpec{InternalTrafficPolicy: &local, TrafficDistribution: ptr.To("PreferClose")}, nil, nil,
			&workloadapi.LoadBalancing{RoutingPreference: []workloadapi.LoadBalancing_Scope{workloadapi.LoadBalancing_NODE}, Mode: workloadapi.LoadBalancing_STRICT}},
		{"PreferClose", corev1.ServiceSpec{TrafficDistribution: ptr.To("PreferClose")}, nil, nil, zone},
		{"PreferSameNode", corev1.ServiceSpec{TrafficDistribution: ptr.To("PreferSameNode")}, nil, nil, node},
		{"field beats annotation", corev1.ServiceSpec{TrafficDistribution: ptr.To("PreferSameZone")}, ann("PreferSameNode"), nil, zone},
		{"service annotation", corev1.ServiceSpec{}, ann("preferclose"), nil, zone},
		{"namespace annotation", corev1.ServiceSpec{}, nil, ann("PreferSameNode"), node},
		{"service annotation beats namespace", corev1.ServiceSpec{}, ann("PreferClose"), ann("PreferSameNode"), zone},
		{"unknown annotation is any", corev1.ServiceSpec{}, ann("Nearby"), ann("PreferSameNode"), nil},
		{"not-ready addresses", corev1.ServiceSpec{PublishNotReadyAddresses: true}, nil, nil,
			&workloadapi.LoadBalancing{HealthPolicy: workloadapi.LoadBalancing_ALLOW_ALL}},
		{"not-ready with zone", corev1.ServiceSpec{PublishNotReadyAddresses: true, TrafficDistribution: ptr.To("PreferClose")}, nil, nil,
			&workloadapi.LoadBalancing{RoutingPreference: zone.RoutingPreference, Mode: zone.Mode, HealthPolicy: workloadapi.LoadBalancing_ALLOW_ALL}},
	} {
		s := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Annotations: tc.ann}, Spec: tc.spec}
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Annotations: tc.nsAnn}}
		if got := serviceLoadBalancing(s, ns); !proto.Equal(got, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestServiceIPFamiliesAndVIPs(t *testing.T) {
	dual := &corev1.Service{Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.1", ClusterIPs: []string{"10.96.0.1", "fd00::1"},
		IPFamilies: []corev1.IPFamily{corev1.IPv4Protocol, corev1.IPv6Protocol}}}
	if f := serviceIPFamilies(dual); f != workloadapi.IPFamilies_DUAL {
		t.Errorf("dual-stack: %v", f)
	}
	if n := len(serviceVIPs(dual, "", false)); n != 2 {
		t.Errorf("dual-stack: %d VIPs, want 2", n)
	}
	if n := len(serviceVIPs(dual, "10.96.9.9", true)); n != 1 {
		t.Errorf("allocated by us: %d VIPs, want 1", n)
	}
	v6 := &corev1.Service{Spec: corev1.ServiceSpec{IPFamilies: []corev1.IPFamily{corev1.IPv6Protocol}}}
	if f := serviceIPFamilies(v6); f != workloadapi.IPFamilies_IPV6_ONLY {
		t.Errorf("v6: %v", f)
	}
	headless := &corev1.Service{Spec: corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone}}
	if n := len(serviceVIPs(headless, "", false)); n != 0 || serviceIPFamilies(headless) != workloadapi.IPFamilies_AUTOMATIC {
		t.Errorf("headless: %d VIPs", n)
	}
}
