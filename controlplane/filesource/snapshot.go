package filesource

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// Snapshot is an immutable view of every object loaded from a directory.
// The objects it returns are shared: callers must not modify them.
type Snapshot struct {
	objects map[Key]decoded
	keys    []Key // sorted by kind, namespace, name
}

func newSnapshot(objects map[Key]decoded) *Snapshot {
	if objects == nil {
		objects = map[Key]decoded{}
	}
	keys := slices.Collect(maps.Keys(objects))
	slices.SortFunc(keys, Key.Compare)
	return &Snapshot{objects: objects, keys: keys}
}

// Get returns the object with key k.
func (s *Snapshot) Get(k Key) (Object, bool) {
	d, ok := s.objects[k]
	return d.obj, ok
}

// Origin returns the file and line an object was loaded from.
func (s *Snapshot) Origin(k Key) (file string, line int, ok bool) {
	d, ok := s.objects[k]
	return d.file, d.line, ok
}

// Len is the number of objects.
func (s *Snapshot) Len() int { return len(s.objects) }

// Objects returns every object, sorted by kind, namespace and name.
func (s *Snapshot) Objects() []Object {
	out := make([]Object, 0, len(s.keys))
	for _, k := range s.keys {
		out = append(out, s.objects[k].obj)
	}
	return out
}

// ofKind returns the objects of one kind, sorted by namespace and name.
func ofKind[T Object](s *Snapshot, kind string) []T {
	i, _ := slices.BinarySearchFunc(s.keys, kind, func(k Key, kind string) int { return strings.Compare(k.Kind, kind) })
	var out []T
	for ; i < len(s.keys) && s.keys[i].Kind == kind; i++ {
		if o, ok := s.objects[s.keys[i]].obj.(T); ok {
			out = append(out, o)
		}
	}
	return out
}

// Namespaces returns the Namespaces, sorted by name.
func (s *Snapshot) Namespaces() []*corev1.Namespace {
	return ofKind[*corev1.Namespace](s, "Namespace")
}

// ServiceAccounts returns the ServiceAccounts, sorted by namespace and name.
func (s *Snapshot) ServiceAccounts() []*corev1.ServiceAccount {
	return ofKind[*corev1.ServiceAccount](s, "ServiceAccount")
}

// Pods returns the Pods, sorted by namespace and name.
func (s *Snapshot) Pods() []*corev1.Pod { return ofKind[*corev1.Pod](s, "Pod") }

// Services returns the Services, sorted by namespace and name.
func (s *Snapshot) Services() []*corev1.Service { return ofKind[*corev1.Service](s, "Service") }

// AuthorizationPolicies returns the AuthorizationPolicies (v1 and v1beta1),
// sorted by namespace and name.
func (s *Snapshot) AuthorizationPolicies() []*securityv1.AuthorizationPolicy {
	return ofKind[*securityv1.AuthorizationPolicy](s, "AuthorizationPolicy")
}

// PeerAuthentications returns the PeerAuthentications (v1 and v1beta1),
// sorted by namespace and name.
func (s *Snapshot) PeerAuthentications() []*securityv1.PeerAuthentication {
	return ofKind[*securityv1.PeerAuthentication](s, "PeerAuthentication")
}

// Gateways returns the Gateway API Gateways, sorted by namespace and name.
func (s *Snapshot) Gateways() []*gatewayv1.Gateway { return ofKind[*gatewayv1.Gateway](s, "Gateway") }

// HTTPRoutes returns the HTTPRoutes, sorted by namespace and name.
func (s *Snapshot) HTTPRoutes() []*gatewayv1.HTTPRoute {
	return ofKind[*gatewayv1.HTTPRoute](s, "HTTPRoute")
}

// GRPCRoutes returns the GRPCRoutes, sorted by namespace and name.
func (s *Snapshot) GRPCRoutes() []*gatewayv1.GRPCRoute {
	return ofKind[*gatewayv1.GRPCRoute](s, "GRPCRoute")
}

// LocalCluster returns the local-mode settings, if the directory has them.
func (s *Snapshot) LocalCluster() (*LocalCluster, bool) {
	l := ofKind[*LocalCluster](s, "LocalCluster")
	if len(l) == 0 {
		return nil, false
	}
	return l[0], true
}

// fileState is what the loader knows about one file.
type fileState struct {
	digest    [32]byte  // of the bytes last read; zero when the read failed
	decoded   []decoded // what those bytes decode to, when decodeErr is nil
	decodeErr error     // what is wrong with those bytes (or with reading them)

	accepted       []decoded // the file's objects in force
	acceptedDigest [32]byte  // digest of the bytes accepted came from
	hasAccepted    bool

	err error // the file's current problem: decodeErr or a clash with another file
}

// stable reports whether the file's objects in force stay as they were:
// its bytes are the ones already accepted, or it is broken and keeps its
// previous objects. Stable files win clashes with changed ones.
func (st *fileState) stable() bool {
	return st.decodeErr != nil || (st.hasAccepted && st.acceptedDigest == st.digest)
}

// manifestFiles lists the files of dir the loader reads: *.yaml and *.yml,
// not hidden, not editor temporaries. Sub-directories are not read.
func manifestFiles(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("reading config directory: %w", err)
	}
	var out []string
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || strings.HasPrefix(name, ".") || strings.HasPrefix(name, "#") || strings.HasSuffix(name, "~") {
			continue
		}
		if ext := filepath.Ext(name); ext == ".yaml" || ext == ".yml" {
			out = append(out, filepath.Join(dir, name))
		}
	}
	sort.Strings(out)
	return out, nil
}

// load reads the directory and computes the new per-file state and the
// snapshot from the previous state (nil for a first load). Files whose bytes
// did not change are not decoded again. A file that fails keeps its previous
// objects; a file whose objects clash with another file's is refused as a
// whole (keeping its previous objects), stable files winning over changed
// ones and otherwise the first file by name.
func load(dir string, prev map[string]*fileState, dec *decoder) (map[string]*fileState, *Snapshot, error) {
	files, err := manifestFiles(dir)
	if err != nil {
		return nil, nil, err
	}
	next := make(map[string]*fileState, len(files))
	for _, f := range files {
		st := &fileState{}
		p := prev[f]
		if p != nil {
			st.accepted, st.acceptedDigest, st.hasAccepted = p.accepted, p.acceptedDigest, p.hasAccepted
		}
		data, err := os.ReadFile(f)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			continue // removed since we listed the directory
		case err != nil:
			st.decodeErr = &Error{File: f, Msg: fmt.Sprintf("cannot read: %v", err)}
		default:
			st.digest = sha256.Sum256(data)
			if p != nil && p.digest == st.digest && p.digest != ([32]byte{}) {
				st.decoded, st.decodeErr = p.decoded, p.decodeErr
			} else {
				objs, errs := dec.decodeFile(f, data)
				st.decoded, st.decodeErr = objs, errors.Join(errs...)
			}
		}
		next[f] = st
	}

	owner := map[Key]decoded{}
	// keep claims what is not yet owned from objs, silently: the clash was
	// reported when the other file's objects were refused, or this file is
	// already reported as broken.
	keep := func(objs []decoded) []decoded {
		var out []decoded
		for _, d := range objs {
			if k := KeyOf(d.obj); !hasKey(owner, k) {
				owner[k] = d
				out = append(out, d)
			}
		}
		return out
	}
	for _, stablePass := range []bool{true, false} {
		for _, f := range files {
			st := next[f]
			if st == nil || st.stable() != stablePass {
				continue
			}
			if st.decodeErr != nil {
				st.err = st.decodeErr
				st.accepted = keep(st.accepted)
				continue
			}
			var clashes []error
			for _, d := range st.decoded {
				if other, ok := owner[KeyOf(d.obj)]; ok {
					clashes = append(clashes, dupError(d, other))
				}
			}
			if len(clashes) > 0 {
				st.err = errors.Join(clashes...)
				st.accepted = keep(st.accepted)
				continue
			}
			st.err = nil
			st.accepted, st.acceptedDigest, st.hasAccepted = keep(st.decoded), st.digest, true
		}
	}
	return next, newSnapshot(owner), nil
}

func hasKey(m map[Key]decoded, k Key) bool {
	_, ok := m[k]
	return ok
}

func dupError(d, other decoded) error {
	k := KeyOf(d.obj)
	return &Error{File: d.file, Line: d.nameLine, Kind: k.Kind, Namespace: k.Namespace, Name: k.Name, Field: "metadata.name",
		Msg: fmt.Sprintf("duplicate object: also defined at %s:%d", other.file, other.nameLine)}
}

func errorsOf(files map[string]*fileState) []error {
	var out []error
	for _, f := range slices.Sorted(maps.Keys(files)) {
		if err := files[f].err; err != nil {
			out = append(out, err)
		}
	}
	return out
}

// LoadDir loads every manifest in dir once. The error joins every problem
// (each an *Error, see Errors); the Snapshot holds every object of every
// file that loaded cleanly and is never nil. When the directory itself
// cannot be read the error says so and the Snapshot is empty.
func LoadDir(dir string) (*Snapshot, error) {
	files, snap, err := load(dir, nil, newDecoder())
	if err != nil {
		return newSnapshot(nil), err
	}
	return snap, errors.Join(errorsOf(files)...)
}
