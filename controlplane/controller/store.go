package controller

import (
	"bytes"
	"encoding/json"
	"maps"
	"reflect"
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
	// lists keeps each kind's objects sorted for List, kept up to date in
	// place on changes and sorted again only after many additions or
	// deletions (a bulk load sorts once).
	lists map[string]*sortedList
}

// sortedList is one kind's objects sorted by namespace/name; valid is
// false until it is built (again).
type sortedList struct {
	valid bool
	names []string
	objs  []config.Object
	moves int // insertions and deletions since it was built
}

// maxMoves is how many insertions or deletions a sorted list takes in
// place (each moves the slice's tail) before it is left to be sorted
// again on the next List.
const maxMoves = 64

func (l *sortedList) find(name string) (int, bool) { return slices.BinarySearch(l.names, name) }

// NewStore returns an empty store.
func NewStore() *Store {
	return &Store{objects: map[string]map[string]config.Object{}, lists: map[string]*sortedList{}}
}

func nsName(k config.Key) string { return k.Namespace + "/" + k.Name }

// Apply records an event and reports whether the store changed: an Added
// or Updated object that equals the stored one (by its JSON form, which is
// what a user wrote or a runtime reported) changes nothing, nor does
// deleting an unknown object.
func (s *Store) Apply(ev config.Event) bool {
	_, changed := s.apply(ev)
	return changed
}

// apply is Apply, also returning the event's key (its kind filled in from
// the object when the event had none).
func (s *Store) apply(ev config.Event) (config.Key, bool) {
	k := ev.Key
	if k.Kind == "" && ev.Object != nil {
		k = config.KeyOf(ev.Object)
	}
	if k.Kind == "" {
		return k, false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	byName := s.objects[k.Kind]
	name := nsName(k)
	old, had := byName[name]
	l := s.lists[k.Kind]
	if ev.Type == config.Deleted {
		if !had {
			return k, false
		}
		delete(byName, name)
		if l != nil && l.valid {
			if i, ok := l.find(name); ok && l.moves < maxMoves {
				l.names, l.objs = slices.Delete(l.names, i, i+1), slices.Delete(l.objs, i, i+1)
				l.moves++
			} else {
				l.valid = false
			}
		}
		return k, true
	}
	if ev.Object == nil || (had && sameObject(old, ev.Object)) {
		return k, false
	}
	if byName == nil {
		byName = map[string]config.Object{}
		s.objects[k.Kind] = byName
	}
	byName[name] = ev.Object
	if l != nil && l.valid {
		i, found := l.find(name)
		switch {
		case found:
			l.objs[i] = ev.Object
		case l.moves < maxMoves:
			l.names, l.objs = slices.Insert(l.names, i, name), slices.Insert(l.objs, i, ev.Object)
			l.moves++
		default:
			l.valid = false
		}
	}
	return k, true
}

// sameObject reports whether a and b have the same JSON form, with cheaper
// checks first: the same pointer is the same object; different
// resourceVersions (part of the JSON form) differ; deeply equal values
// have the same JSON form.
func sameObject(a, b config.Object) bool {
	if a == b {
		return true
	}
	if a.GetResourceVersion() != b.GetResourceVersion() {
		return false
	}
	if reflect.DeepEqual(a, b) {
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
	if l := s.lists[kind]; l != nil && l.valid {
		out := slices.Clone(l.objs)
		s.mu.RUnlock()
		return out
	}
	s.mu.RUnlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.lists[kind]
	if l == nil {
		l = &sortedList{}
		s.lists[kind] = l
	}
	if !l.valid {
		m := s.objects[kind]
		l.names = slices.Sorted(maps.Keys(m))
		l.objs = make([]config.Object, len(l.names))
		for i, n := range l.names {
			l.objs[i] = m[n]
		}
		l.valid, l.moves = true, 0
	}
	return slices.Clone(l.objs)
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
