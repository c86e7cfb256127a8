package filesource

import (
	"sort"
	"strings"

	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// Object is any object this source loads.
type Object interface {
	runtime.Object
	metav1.Object
}

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

func (k Key) less(o Key) bool {
	if k.Kind != o.Kind {
		return k.Kind < o.Kind
	}
	if k.Namespace != o.Namespace {
		return k.Namespace < o.Namespace
	}
	return k.Name < o.Name
}

// KeyOf returns the key of a loaded object.
func KeyOf(o Object) Key {
	return Key{Kind: o.GetObjectKind().GroupVersionKind().Kind, Namespace: o.GetNamespace(), Name: o.GetName()}
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
	apiVersions []string // accepted apiVersions; the first is canonical
	namespaced  bool
	newObject   func() Object
	validate    func(v *validator, o Object)
}

// kinds lists every supported kind. It is built per call so that nothing at
// package level is mutable.
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
		{"LocalCluster", []string{"ambit.dev/v1alpha1"}, false, func() Object { return &LocalCluster{} }, validateLocalCluster},
	}
}

func lookupKind(apiVersion, kind string) (kindInfo, bool) {
	for _, k := range kinds() {
		if k.kind != kind {
			continue
		}
		for _, v := range k.apiVersions {
			if v == apiVersion {
				return k, true
			}
		}
	}
	return kindInfo{}, false
}

func supportedKinds() string {
	var s []string
	for _, k := range kinds() {
		s = append(s, k.kind+" ("+strings.Join(k.apiVersions, ", ")+")")
	}
	sort.Strings(s)
	return strings.Join(s, "; ")
}
