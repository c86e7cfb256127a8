package filesource

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// Snapshot is an immutable view of every object loaded from a directory.
type Snapshot struct {
	objects map[Key]decoded
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

func (s *Snapshot) sortedKeys() []Key {
	keys := make([]Key, 0, len(s.objects))
	for k := range s.objects {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i].less(keys[j]) })
	return keys
}

// Objects returns every object, sorted by kind, namespace and name.
func (s *Snapshot) Objects() []Object {
	var out []Object
	for _, k := range s.sortedKeys() {
		out = append(out, s.objects[k].obj)
	}
	return out
}

func ofKind[T Object](s *Snapshot, kind string) []T {
	var out []T
	for _, k := range s.sortedKeys() {
		if k.Kind == kind {
			out = append(out, s.objects[k].obj.(T))
		}
	}
	return out
}

func (s *Snapshot) Namespaces() []*corev1.Namespace { return ofKind[*corev1.Namespace](s, "Namespace") }
func (s *Snapshot) ServiceAccounts() []*corev1.ServiceAccount {
	return ofKind[*corev1.ServiceAccount](s, "ServiceAccount")
}
func (s *Snapshot) Pods() []*corev1.Pod         { return ofKind[*corev1.Pod](s, "Pod") }
func (s *Snapshot) Services() []*corev1.Service { return ofKind[*corev1.Service](s, "Service") }
func (s *Snapshot) AuthorizationPolicies() []*securityv1.AuthorizationPolicy {
	return ofKind[*securityv1.AuthorizationPolicy](s, "AuthorizationPolicy")
}
func (s *Snapshot) PeerAuthentications() []*securityv1.PeerAuthentication {
	return ofKind[*securityv1.PeerAuthentication](s, "PeerAuthentication")
}
func (s *Snapshot) Gateways() []*gatewayv1.Gateway { return ofKind[*gatewayv1.Gateway](s, "Gateway") }
func (s *Snapshot) HTTPRoutes() []*gatewayv1.HTTPRoute {
	return ofKind[*gatewayv1.HTTPRoute](s, "HTTPRoute")
}
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

// fileState is what one file contributed, and the digest of the bytes it
// was loaded from.
type fileState struct {
	digest  [32]byte
	objects []decoded
	err     error // the file's current problem; objects are then the last good ones
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
		if e.IsDir() || strings.HasPrefix(name, ".") || strings.HasSuffix(name, "~") || strings.HasPrefix(name, "#") {
			continue
		}
		if ext := filepath.Ext(name); ext == ".yaml" || ext == ".yml" {
			out = append(out, filepath.Join(dir, name))
		}
	}
	sort.Strings(out)
	return out, nil
}

// load reads the directory and computes the new per-file state from the
// previous one: a file that fails keeps its previous objects, and a file
// whose objects collide with another file's is refused as a whole.
func load(dir string, prev map[string]*fileState) (map[string]*fileState, error) {
	files, err := manifestFiles(dir)
	if err != nil {
		return nil, err
	}
	next := map[string]*fileState{}
	var changed []string
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				continue // removed while we read
			}
			st := &fileState{err: &Error{File: f, Msg: err.Error()}}
			if p, ok := prev[f]; ok {
				st.objects, st.digest = p.objects, p.digest
			}
			next[f] = st
			continue
		}
		digest := sha256.Sum256(data)
		if p, ok := prev[f]; ok && p.digest == digest {
			next[f] = p
			continue
		}
		objs, errs := decodeFile(f, data)
		st := &fileState{digest: digest, objects: objs}
		if len(errs) > 0 {
			st.err = errors.Join(errs...)
			st.objects = nil
			if p, ok := prev[f]; ok {
				st.objects = p.objects
			}
		} else {
			changed = append(changed, f)
		}
		next[f] = st
	}
	// Duplicates: inside one file, and across files. A changed file that
	// collides with an unchanged one is refused (the unchanged one wins).
	isChanged := map[string]bool{}
	for _, f := range changed {
		isChanged[f] = true
	}
	owner := map[Key]decoded{}
	for _, pass := range []bool{false, true} { // unchanged files first
		for _, f := range files {
			st := next[f]
			if st == nil || isChanged[f] != pass {
				continue
			}
			var dupErrs []error
			seen := map[Key]decoded{}
			for _, d := range st.objects {
				k := KeyOf(d.obj)
				if other, ok := seen[k]; ok {
					dupErrs = append(dupErrs, dupError(d, other))
					continue
				}
				if other, ok := owner[k]; ok {
					dupErrs = append(dupErrs, dupError(d, other))
					continue
				}
				seen[k] = d
			}
			if len(dupErrs) > 0 && st.err == nil {
				refused := &fileState{digest: st.digest, err: errors.Join(dupErrs...)}
				if p, ok := prev[f]; ok {
					refused.objects = p.objects
				}
				next[f] = refused
				st = refused
				seen = map[Key]decoded{}
				for _, d := range st.objects {
					if _, ok := owner[KeyOf(d.obj)]; !ok {
						seen[KeyOf(d.obj)] = d
					}
				}
			}
			for k, d := range seen {
				owner[k] = d
			}
		}
	}
	return next, nil
}

func dupError(d, other decoded) error {
	k := KeyOf(d.obj)
	return &Error{File: d.file, Line: d.line, Kind: k.Kind, Namespace: k.Namespace, Name: k.Name,
		Msg: fmt.Sprintf("duplicate object: also defined at %s:%d", other.file, other.line)}
}

func snapshotOf(files map[string]*fileState) *Snapshot {
	s := &Snapshot{objects: map[Key]decoded{}}
	names := make([]string, 0, len(files))
	for f := range files {
		names = append(names, f)
	}
	sort.Strings(names)
	for _, f := range names {
		for _, d := range files[f].objects {
			k := KeyOf(d.obj)
			if _, ok := s.objects[k]; !ok {
				s.objects[k] = d
			}
		}
	}
	return s
}

func errorsOf(files map[string]*fileState) []error {
	names := make([]string, 0, len(files))
	for f := range files {
		names = append(names, f)
	}
	sort.Strings(names)
	var out []error
	for _, f := range names {
		if files[f].err != nil {
			out = append(out, files[f].err)
		}
	}
	return out
}

// LoadDir loads every manifest in dir once. The error joins every problem
// (each an *Error, see Errors); the Snapshot holds every object of every
// file that loaded cleanly and is never nil.
func LoadDir(dir string) (*Snapshot, error) {
	files, err := load(dir, nil)
	if err != nil {
		return &Snapshot{objects: map[Key]decoded{}}, err
	}
	return snapshotOf(files), errors.Join(errorsOf(files)...)
}
