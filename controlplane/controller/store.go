package controller

import (
	"bytes"
	"encoding/json"
	"maps"
	"slices"
	"strings"
	"sync"

	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambit-mesh/ambit/controlplane/config"
)

// Store holds the latest version of every config object, by kind and then
// by namespace/name. It is safe for concurrent use; the objects it returns
// are shared and must not be modified.
type Store struct {
	mu      sync.RWMutex
	objects map[string]map[string]config.Object // kind -> "namespace/name" -> object
}

// NewStore returns an empty store.
func NewStore() *Store { return &Store{objects: map[string]map[string]config.Object{}} }

func nsName(k config.Key) string { return k.Namespace + "/" + k.Name }

// Apply records an event and reports whether the store changed: an Added
// or Updated object that equals the stored one (by its JSON form, which is
// what a user wrote or a runtime reported) changes nothing, nor does
// deleting an unknown object.
func (s *Store) Apply(ev config.Event) bool {
	k := ev.Key
	if k.Kind == "" && ev.Object != nil {
		k = config.KeyOf(ev.Object)
	}
	if k.Kind == "" {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	byName := s.objects[k.Kind]
	old, had := byName[nsName(k)]
	if ev.Type == config.Deleted {
		if !had {
			return false
		}
		delete(byName, nsName(k))
		return true
	}
	if ev.Object == nil || (had && sameObject(old, ev.Object)) {
		return false
	}
	if byName == nil {
		byName = map[string]config.Object{}
		s.objects[k.Kind] = byName
	}
	byName[nsName(k)] = ev.Object
	return true
}

func sameObject(a, b config.Object) bool {
	if a == b {
		return true
	}
	ja, errA := json.Marshal(a)
	jb, errB := json.Marshal(b)
	return errA == nil && errB == nil && bytes.Equal(ja, jb)
}

// Get returns the object with key k.
func (s *Store) Get(k config.Key) (config.Object, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	o, ok := s.objects[k.Kind][nsName(k)]
	return o, ok
}

// Len is the number of stored objects.
func (s *Store) Len() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	n := 0
	for _, m := range s.objects {
		n += len(m)
	}
	return n
}

// Kinds returns the kinds that have objects, sorted.
func (s *Store) Kinds() []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []string
	for k, m := range s.objects {
		if len(m) > 0 {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}

// List returns the objects of one kind, sorted by namespace and name.
func (s *Store) List(kind string) []config.Object {
	s.mu.RLock()
	defer s.mu.RUnlock()
	m := s.objects[kind]
	out := make([]config.Object, 0, len(m))
	for _, n := range slices.Sorted(maps.Keys(m)) {
		out = append(out, m[n])
	}
	return out
}

// Dump returns every object by kind and then by "namespace/name" (or
// "name" for cluster-scoped kinds), for the debug endpoint.
func (s *Store) Dump() map[string]map[string]config.Object {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := map[string]map[string]config.Object{}
	for kind, m := range s.objects {
		if len(m) == 0 {
			continue
		}
		d := map[string]config.Object{}
		for n, o := range m {
			d[strings.TrimPrefix(n, "/")] = o
		}
		out[kind] = d
	}
	return out
}

func ofKind[T config.Object](s *Store, kind string) []T {
	objs := s.List(kind)
	out := make([]T, 0, len(objs))
	for _, o := range objs {
		if t, ok := o.(T); ok {
			out = append(out, t)
		}
	}
	return out
}

// Namespaces returns the Namespaces, sorted by name.
func (s *Store) Namespaces() []*corev1.Namespace {
	return ofKind[*corev1.Namespace](s, config.KindNamespace)
}

// ServiceAccounts returns the ServiceAccounts, sorted by namespace and name.
func (s *Store) ServiceAccounts() []*corev1.ServiceAccount {
	return ofKind[*corev1.ServiceAccount](s, config.KindServiceAccount)
}

// Pods returns the Pods, sorted by namespace and name. It implements
// controlplane.PodLister, so the CA's pod index reads the store.
func (s *Store) Pods() []*corev1.Pod { return ofKind[*corev1.Pod](s, config.KindPod) }

// Services returns the Services, sorted by namespace and name.
func (s *Store) Services() []*corev1.Service {
	return ofKind[*corev1.Service](s, config.KindService)
}

// AuthorizationPolicies returns the AuthorizationPolicies.
func (s *Store) AuthorizationPolicies() []*securityv1.AuthorizationPolicy {
	return ofKind[*securityv1.AuthorizationPolicy](s, config.KindAuthorizationPolicy)
}

// PeerAuthentications returns the PeerAuthentications.
func (s *Store) PeerAuthentications() []*securityv1.PeerAuthentication {
	return ofKind[*securityv1.PeerAuthentication](s, config.KindPeerAuthentication)
}

// Gateways returns the Gateway API Gateways (stored for waypoints).
func (s *Store) Gateways() []*gatewayv1.Gateway {
	return ofKind[*gatewayv1.Gateway](s, config.KindGateway)
}

// HTTPRoutes returns the HTTPRoutes (stored for waypoints).
func (s *Store) HTTPRoutes() []*gatewayv1.HTTPRoute {
	return ofKind[*gatewayv1.HTTPRoute](s, config.KindHTTPRoute)
}

// TCPRoutes returns the TCPRoutes (stored for waypoints).
func (s *Store) TCPRoutes() []*gatewayv1.TCPRoute {
	return ofKind[*gatewayv1.TCPRoute](s, config.KindTCPRoute)
}

// GRPCRoutes returns the GRPCRoutes (stored for waypoints).
func (s *Store) GRPCRoutes() []*gatewayv1.GRPCRoute {
	return ofKind[*gatewayv1.GRPCRoute](s, config.KindGRPCRoute)
}

// Nodes returns the Nodes, sorted by name (Kubernetes source only).
func (s *Store) Nodes() []*corev1.Node { return ofKind[*corev1.Node](s, config.KindNode) }

// EndpointSlices returns the EndpointSlices, sorted by namespace and name
// (Kubernetes source only).
func (s *Store) EndpointSlices() []*discoveryv1.EndpointSlice {
	return ofKind[*discoveryv1.EndpointSlice](s, config.KindEndpointSlice)
}
