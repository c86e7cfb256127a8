package local

import (
	"context"
	"fmt"
	"path/filepath"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambit-mesh/ambit/controlplane/model"
)

// The local runtime plays the part of upstream's waypoint deployment
// controller: each waypoint Gateway runs as a pod of its own (its
// service account named after the Gateway, not captured, speaking HBONE
// itself) behind a Service of its name, as a Kubernetes Deployment and
// Service would.

// waypointObjects returns the pod and service a waypoint Gateway runs as.
func (s *Supervisor) waypointObjects(gw *gatewayv1.Gateway) (*corev1.Pod, *corev1.Service) {
	s.mu.Lock()
	node := s.state.Nodes[0].Name
	s.mu.Unlock()
	labels := map[string]string{
		model.LabelGatewayName:     gw.Name,
		model.LabelDataplaneMode:   model.DataplaneNone,
		model.LabelTunnel:          model.TunnelHTTP,
		"gateway.istio.io/managed": "istio.io-mesh-controller",
	}
	pod := &corev1.Pod{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{Namespace: gw.Namespace, Name: gw.Name, Labels: labels},
		Spec: corev1.PodSpec{
			NodeName:           node,
			ServiceAccountName: gw.Name,
			Containers: []corev1.Container{{
				Name: "istio-proxy",
				Command: []string{s.self, "waypoint", "run", "--namespace", gw.Namespace, "--name", gw.Name, "--node", node,
					"--control-plane", fmt.Sprintf("%s:%d", controlPlaneIP, controlPlanePort),
					"--credential-dir", filepath.Join(s.nodeDir(node)), "--log-format", "json"},
			}},
		},
	}
	svc := &corev1.Service{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Service"},
		ObjectMeta: metav1.ObjectMeta{Namespace: gw.Namespace, Name: gw.Name, Labels: map[string]string{model.LabelGatewayName: gw.Name}},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{model.LabelGatewayName: gw.Name},
			Ports: []corev1.ServicePort{
				{Name: "mesh", Port: model.WaypointListenerPort, TargetPort: intstr.FromInt32(model.WaypointListenerPort), Protocol: corev1.ProtocolTCP},
				{Name: "status-port", Port: 15021, TargetPort: intstr.FromInt32(15021), Protocol: corev1.ProtocolTCP},
			},
		},
	}
	return pod, svc
}

// ensureWaypoint starts (or updates) the pod and service of a waypoint
// Gateway; a Gateway of another class is not the runtime's.
func (s *Supervisor) ensureWaypoint(ctx context.Context, gw *gatewayv1.Gateway) {
	if !model.IsWaypoint(gw) {
		s.removeWaypoint(gw.Namespace, gw.Name)
		return
	}
	pod, svc := s.waypointObjects(gw)
	s.Logger.Info("waypoint", "gateway", gw.Namespace+"/"+gw.Name, "node", pod.Spec.NodeName)
	s.ensureService(svc)
	s.ensurePod(ctx, pod)
}

// removeWaypoint stops a waypoint Gateway's pod and service, if it has
// them.
func (s *Supervisor) removeWaypoint(namespace, name string) {
	key := namespace + "/" + name
	s.mu.Lock()
	p, hasPod := s.pods[key]
	svc, hasSvc := s.services[key]
	s.mu.Unlock()
	if hasPod && p.spec.Labels[model.LabelGatewayName] == name {
		s.removePod(key)
	}
	if hasSvc && svc.Labels[model.LabelGatewayName] == name {
		s.removeService(svc)
	}
}
