package kubesource

import (
	"maps"

	"google.golang.org/protobuf/proto"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambit-mesh/ambit/controlplane/config"
)

// Annotations that are noise to the model.
const (
	// annotationLastApplied is kubectl's copy of the whole object; it can be
	// as large as the object and only kubectl reads it.
	annotationLastApplied = "kubectl.kubernetes.io/last-applied-configuration"
	// annotationTriggerTime changes on every EndpointSlice update.
	annotationTriggerTime = "endpoints.kubernetes.io/last-change-trigger-time"
)

// stripCached is the informers' transform: it drops, before an object
// enters the cache, what nothing in the control plane reads and what costs
// memory (managedFields, kubectl's last-applied copy). It keeps
// resourceVersion: the informer itself compares it.
func stripCached(obj any) (any, error) {
	if m, ok := obj.(metav1.Object); ok {
		m.SetManagedFields(nil)
		dropAnnotations(m, annotationLastApplied)
	}
	return obj, nil
}

// normalize returns the copy of a cached object that the source emits: it
// carries gvk (as the file source's objects do) and none of what changes
// without the object meaning anything new to the model (see the package
// documentation). The cached object is not modified.
func normalize(obj config.Object, gvk schema.GroupVersionKind) config.Object {
	o, ok := obj.DeepCopyObject().(config.Object)
	if !ok {
		return nil
	}
	o.GetObjectKind().SetGroupVersionKind(gvk)
	o.SetResourceVersion("")
	o.SetManagedFields(nil)
	dropAnnotations(o, annotationLastApplied)
	switch t := o.(type) {
	case *corev1.Node:
		// The kubelet refreshes heartbeats every few minutes and the image
		// list on every pull.
		for i := range t.Status.Conditions {
			t.Status.Conditions[i].LastHeartbeatTime = metav1.Time{}
		}
		t.Status.Images = nil
		t.Status.VolumesInUse = nil
		t.Status.VolumesAttached = nil
	case *discoveryv1.EndpointSlice:
		dropAnnotations(t, annotationTriggerTime)
	// Status the control plane (or istiod) writes: never an input.
	case *gatewayv1.Gateway:
		t.Status = gatewayv1.GatewayStatus{}
	case *gatewayv1.HTTPRoute:
		t.Status = gatewayv1.HTTPRouteStatus{}
	case *gatewayv1.GRPCRoute:
		t.Status = gatewayv1.GRPCRouteStatus{}
	case *gatewayv1.TCPRoute:
		t.Status = gatewayv1.TCPRouteStatus{}
	case *securityv1.AuthorizationPolicy:
		proto.Reset(&t.Status)
	case *securityv1.PeerAuthentication:
		proto.Reset(&t.Status)
	}
	return o
}

// dropAnnotations removes annotations from m (nil when none are left, as
// a decoded object without annotations has).
func dropAnnotations(m metav1.Object, names ...string) {
	ann := m.GetAnnotations()
	if len(ann) == 0 {
		return
	}
	changed := false
	for _, n := range names {
		if _, ok := ann[n]; ok {
			if !changed {
				ann = maps.Clone(ann) // never modify a map another copy may share
				changed = true
			}
			delete(ann, n)
		}
	}
	if !changed {
		return
	}
	if len(ann) == 0 {
		ann = nil
	}
	m.SetAnnotations(ann)
}
