// Package config is the neutral vocabulary between config sources and the
// control plane: what an object is (the upstream Go types: k8s.io/api,
// istio.io/client-go, sigs.k8s.io/gateway-api), how it is named (Key), what
// happened to it (Event) and what a source does (Source). A source (the
// file source, the Kubernetes informer source, or a runtime reporting pod
// status) depends on this package only; the controller consumes it.
package config

import (
	"context"
	"fmt"
	"strings"

	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// Object is any config object: a typed Kubernetes-style object with
// metadata.
type Object interface {
	runtime.Object
	metav1.Object
}

// Kinds of the objects the control plane consumes.
const (
	KindNamespace           = "Namespace"
	KindServiceAccount      = "ServiceAccount"
	KindPod                 = "Pod"
	KindService             = "Service"
	KindAuthorizationPolicy = "AuthorizationPolicy"
	KindPeerAuthentication  = "PeerAuthentication"
	KindGateway             = "Gateway"
	KindHTTPRoute           = "HTTPRoute"
	KindGRPCRoute           = "GRPCRoute"
	KindTCPRoute            = "TCPRoute"
	// Nodes and EndpointSlices come only from a Kubernetes API server (the
	// file source has no such kinds).
	KindNode          = "Node"
	KindEndpointSlice = "EndpointSlice"
)

// Key identifies an object: its kind, namespace (empty for cluster-scoped
// kinds) and name.
type Key struct {
	Kind      string
	Namespace string
	Name      string
}

func (k Key) String() string {
	if k.Namespace == "" {
		return k.Kind + " " + k.Name
	}
	return k.Kind + " " + k.Namespace + "/" + k.Name
}

// Compare orders keys by kind, namespace and name.
func (k Key) Compare(o Key) int {
	if c := strings.Compare(k.Kind, o.Kind); c != 0 {
		return c
	}
	if c := strings.Compare(k.Namespace, o.Namespace); c != 0 {
		return c
	}
	return strings.Compare(k.Name, o.Name)
}

// KindOf returns the kind of an object: the one it carries (TypeMeta), or
// for objects built in code without TypeMeta, the kind of its Go type when
// it is one of the kinds above. It is "" otherwise.
func KindOf(o Object) string {
	if kind := o.GetObjectKind().GroupVersionKind().Kind; kind != "" {
		return kind
	}
	switch o.(type) {
	case *corev1.Namespace:
		return KindNamespace
	case *corev1.ServiceAccount:
		return KindServiceAccount
	case *corev1.Pod:
		return KindPod
	case *corev1.Service:
		return KindService
	case *securityv1.AuthorizationPolicy:
		return KindAuthorizationPolicy
	case *securityv1.PeerAuthentication:
		return KindPeerAuthentication
	case *gatewayv1.Gateway:
		return KindGateway
	case *gatewayv1.HTTPRoute:
		return KindHTTPRoute
	case *gatewayv1.GRPCRoute:
		return KindGRPCRoute
	case *gatewayv1.TCPRoute:
		return KindTCPRoute
	case *corev1.Node:
		return KindNode
	case *discoveryv1.EndpointSlice:
		return KindEndpointSlice
	}
	return ""
}

// KeyOf returns the key of an object (see KindOf for its kind).
func KeyOf(o Object) Key {
	return Key{Kind: KindOf(o), Namespace: o.GetNamespace(), Name: o.GetName()}
}

// EventType says what happened to an object.
type EventType int

// The event types.
const (
	Added EventType = iota + 1
	Updated
	Deleted
)

func (t EventType) String() string {
	switch t {
	case Added:
		return "Added"
	case Updated:
		return "Updated"
	case Deleted:
		return "Deleted"
	}
	return fmt.Sprintf("EventType(%d)", int(t))
}

// Event is one change to a source's objects. For Deleted, Object is the
// last known version (it may be nil when the source no longer has it; Key
// always names the object).
type Event struct {
	Type   EventType
	Key    Key
	Object Object
}

// Source is a config source: Run sends an Added event for every object it
// has, then Added, Updated and Deleted events as they change, until ctx is
// done (then it returns nil) or the source fails.
type Source interface {
	Run(ctx context.Context, out chan<- Event) error
}

// Syncer is implemented by sources that can say when the events for their
// initial objects have all been sent (an informer's HasSynced). Consumers
// use it to avoid serving a partial first state.
type Syncer interface {
	HasSynced() bool
}
