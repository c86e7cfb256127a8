// Package controlplane assembles Ambit's control plane: the controller
// (config store -> model -> xDS), the delta xDS server and the CA on one
// TLS gRPC server, and the HTTP endpoints for readiness, metrics and debug
// dumps. `ambit controlplane` and the local runtime both run it.
package controlplane

import (
	corev1 "k8s.io/api/core/v1"
)

// PodLister returns the pods currently known (controller.Store).
type PodLister interface {
	Pods() []*corev1.Pod
}

// PodIndex answers the CA's question "does a running pod with this service
// account live on this node?" from the pods the controller stores.
type PodIndex struct {
	// Snapshot returns the current pods; it is called per question so that
	// config changes apply at once.
	Snapshot func() PodLister
}

// HasPod implements ca.PodIndex.
func (x PodIndex) HasPod(node, namespace, serviceAccount string) bool {
	for _, p := range x.Snapshot().Pods() {
		if p.Spec.NodeName != node || p.Namespace != namespace {
			continue
		}
		if p.Status.Phase == corev1.PodFailed || p.Status.Phase == corev1.PodSucceeded {
			continue
		}
		sa := p.Spec.ServiceAccountName
		if sa == "" {
			sa = "default"
		}
		if sa == serviceAccount {
			return true
		}
	}
	return false
}
