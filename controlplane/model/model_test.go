package model

import (
	"net/netip"
	"testing"

	"istio.io/istio/pkg/workloadapi"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

func ns(name string, lbl map[string]string) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: lbl}}
}

func pod(name string, lbl, ann map[string]string, ip string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: name, Labels: lbl, Annotations: ann},
		Spec: corev1.PodSpec{NodeName: "node1", ServiceAccountName: "echo",
			Containers: []corev1.Container{{Name: "c", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 9090}}}}},
		Status: corev1.PodStatus{PodIP: ip, Phase: corev1.PodRunning},
	}
}

func TestEnrolled(t *testing.T) {
	amb := ns("demo", map[string]string{LabelDataplaneMode: "ambient"})
	plain := ns("demo", nil)
	hostNet := pod("h", nil, nil, "10.0.0.9")
	hostNet.Spec.HostNetwork = true
	tests := []struct {
		name string
		pod  *corev1.Pod
		ns   *corev1.Namespace
		want bool
	}{
		{"namespace label", pod("a", nil, nil, ""), amb, true},
		{"pod opts out", pod("a", map[string]string{LabelDataplaneMode: "none"}, nil, ""), amb, false},
		{"pod opts in anywhere", pod("a", map[string]string{LabelDataplaneMode: "ambient"}, nil, ""), plain, true},
		{"plain namespace", pod("a", nil, nil, ""), plain, false},
		{"host network never", hostNet, amb, false},
		{"sidecar wins", pod("a", nil, map[string]string{"sidecar.istio.io/status": "{}"}, ""), amb, false},
		{"unknown namespace", pod("a", nil, nil, ""), nil, false},
	}
	for _, tc := range tests {
		if got := Enrolled(tc.pod, tc.ns); got != tc.want {
			t.Errorf("%s: Enrolled = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestBuild(t *testing.T) {
	redirected := pod("echo-1", map[string]string{"app": "echo"}, map[string]string{AnnotationRedirection: "enabled"}, "10.244.1.3")
	plain := pod("echo-2", map[string]string{"app": "echo"}, nil, "10.244.2.3")
	noIP := pod("pending", map[string]string{"app": "echo"}, nil, "")
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "echo"}, Spec: corev1.ServiceSpec{
		Selector: map[string]string{"app": "echo"},
		Ports: []corev1.ServicePort{
			{Name: "http", Port: 8080, TargetPort: intstr.FromInt32(8080)},
			{Name: "named", Port: 80, TargetPort: intstr.FromString("http")},
			{Name: "udp", Port: 53, Protocol: corev1.ProtocolUDP},
		}}}
	out := Build(Inputs{Pods: []*corev1.Pod{redirected, plain, noIP}, Services: []*corev1.Service{svc}, ClusterIPs: map[string]string{"demo/echo": "10.96.0.20"}})
	if len(out) != 3 {
		t.Fatalf("got %d resources %v, want 2 workloads and 1 service", len(out), Names(out))
	}
	w1 := out["Kubernetes//Pod/demo/echo-1"].GetWorkload()
	if w1 == nil || w1.GetTunnelProtocol() != workloadapi.TunnelProtocol_HBONE || w1.GetServiceAccount() != "echo" || w1.GetNode() != "node1" {
		t.Fatalf("echo-1 = %v", w1)
	}
	if ip, _ := netip.AddrFromSlice(w1.GetAddresses()[0]); ip.String() != "10.244.1.3" {
		t.Errorf("echo-1 address %v", ip)
	}
	pl := w1.GetServices()["demo/echo.demo.svc.cluster.local"]
	if pl == nil || len(pl.GetPorts()) != 3 || pl.GetPorts()[1].GetTargetPort() != 9090 {
		t.Errorf("echo-1 services %v (named port must resolve per pod)", w1.GetServices())
	}
	if w2 := out["Kubernetes//Pod/demo/echo-2"].GetWorkload(); w2.GetTunnelProtocol() != workloadapi.TunnelProtocol_NONE {
		t.Errorf("a pod without redirection must be NONE: %v", w2)
	}
	s := out["demo/echo.demo.svc.cluster.local"].GetService()
	// Every port, as istiod sends them (ztunnel carries TCP only).
	if s == nil || len(s.GetAddresses()) != 1 || len(s.GetPorts()) != 3 || s.GetPorts()[1].GetTargetPort() != 0 || !s.GetCanonical() ||
		s.GetPorts()[0].GetAppProtocol() != workloadapi.AppProtocol_HTTP11 || s.GetPorts()[2].GetAppProtocol() != workloadapi.AppProtocol_UNKNOWN {
		t.Fatalf("service = %v", s)
	}
	if ip, _ := netip.AddrFromSlice(s.GetAddresses()[0].GetAddress()); ip.String() != "10.96.0.20" {
		t.Errorf("VIP %v", ip)
	}
}
