package filesource

import (
	"reflect"
	"slices"
	"strings"

	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambit-mesh/ambit/controlplane/config"
)

// Object is any object this source loads (config.Object).
type Object = config.Object

// Key identifies an object (config.Key).
type Key = config.Key

// KeyOf returns the key of an object. Loaded objects carry their kind; for
// others (built in code, without TypeMeta) it is taken from the Go type.
func KeyOf(o Object) Key {
	k := config.KeyOf(o)
	if k.Kind == "" {
		t := reflect.TypeOf(o)
		for _, info := range kinds() {
			if reflect.TypeOf(info.newObject()) == t {
				k.Kind = info.kind
				break
			}
		}
	}
	return k
}

// LocalCluster (apiVersion ambit.dev/v1alpha1) configures the local-mode
// runtime from inside the manifest directory. Only the local runtime reads it.
type LocalCluster struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              LocalClusterSpec `json:"spec"`
}

// LocalClusterSpec is the spec of a LocalCluster.
type LocalClusterSpec struct {
	// Nodes is the number of nodes (1-16).
	Nodes int `json:"nodes,omitempty"`
}

// DeepCopyObject implements runtime.Object.
func (c *LocalCluster) DeepCopyObject() runtime.Object {
	out := *c
	c.ObjectMeta.DeepCopyInto(&out.ObjectMeta)
	return &out
}

// kindInfo describes one supported kind.
type kindInfo struct {
	kind        string
	apiVersions []string // accepted apiVersions; the first is canonical and the one objects carry
	namespaced  bool
	newObject   func() Object
	validate    func(v *validator, o Object)
}

// kinds lists every supported kind. It is built per call so that nothing at
// package level is mutable. security.istio.io/v1beta1 objects decode into the
// v1 Go types: upstream both versions share one spec and status type.
func kinds() []kindInfo {
	return []kindInfo{
		{"Namespace", []string{"v1"}, false, func() Object { return &corev1.Namespace{} }, validateNamespace},
		{"ServiceAccount", []string{"v1"}, true, func() Object { return &corev1.ServiceAccount{} }, validateServiceAccount},
		{"Pod", []string{"v1"}, true, func() Object { return &corev1.Pod{} }, validatePod},
		{"Service", []string{"v1"}, true, func() Object { return &corev1.Service{} }, validateService},
		{"AuthorizationPolicy", []string{"security.istio.io/v1", "security.istio.io/v1beta1"}, true, func() Object { return &securityv1.AuthorizationPolicy{} }, validateAuthorizationPolicy},
		{"PeerAuthentication", []string{"security.istio.io/v1", "security.istio.io/v1beta1"}, true, func() Object { return &securityv1.PeerAuthentication{} }, validatePeerAuthentication},
		{"Gateway", []string{"gateway.networking.k8s.io/v1"}, true, func() Object { return &gatewayv1.Gateway{} }, validateGateway},
		{"HTTPRoute", []string{"gateway.networking.k8s.io/v1"}, true, func() Object { return &gatewayv1.HTTPRoute{} }, validateHTTPRoute},
		{"GRPCRoute", []string{"gateway.networking.k8s.io/v1"}, true, func() Object { return &gatewayv1.GRPCRoute{} }, validateGRPCRoute},
		// TCPRoute: Istio's docs write v1alpha2; its schema is v1's.
		{"TCPRoute", []string{"gateway.networking.k8s.io/v1", "gateway.networking.k8s.io/v1alpha2"}, true, func() Object { return &gatewayv1.TCPRoute{} }, validateTCPRoute},
		{"LocalCluster", []string{"ambit.dev/v1alpha1"}, false, func() Object { return &LocalCluster{} }, validateLocalCluster},
	}
}

// gvk is the canonical group, version and kind of the kind.
func (k kindInfo) gvk() schema.GroupVersionKind {
	return schema.FromAPIVersionAndKind(k.apiVersions[0], k.kind)
}

func (d *decoder) lookupKind(apiVersion, kind string) (kindInfo, bool) {
	for _, k := range d.kinds {
		if k.kind == kind && slices.Contains(k.apiVersions, apiVersion) {
			return k, true
		}
	}
	return kindInfo{}, false
}

func (d *decoder) supportedKinds() string {
	s := make([]string, 0, len(d.kinds))
	for _, k := range d.kinds {
		s = append(s, k.kind+" ("+strings.Join(k.apiVersions, ", ")+")")
	}
	return strings.Join(s, ", ")
}
