package kubetest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/dynamic"
)

// CRDFile names a file of CustomResourceDefinitions inside a Go module: the
// CRDs come from the upstream releases at the exact versions go.mod
// requires, read from the module cache, never from copies in this
// repository.
type CRDFile struct {
	Module string // e.g. "istio.io/istio"
	Path   string // inside the module
	// Names, if set, are the CRDs of the file to install (e.g.
	// "httproutes.gateway.networking.k8s.io"); empty: all of them.
	Names []string
}

// Upstream CRD files.
const (
	IstioModule   = "istio.io/istio"
	GatewayModule = "sigs.k8s.io/gateway-api"
	// IstioCRDs holds every Istio CRD (the base chart's).
	IstioCRDs = "manifests/charts/base/files/crd-all.gen.yaml"
)

// GatewayCRD returns the path of one Gateway API CRD file of a release
// channel ("standard" or "experimental"), e.g. GatewayCRD("standard",
// "httproutes").
func GatewayCRD(channel, resource string) string {
	return "config/crd/" + channel + "/gateway.networking.k8s.io_" + resource + ".yaml"
}

// MeshCRDs are the CRDs the control plane reads: Istio's, and Gateway
// API's experimental channel. The Go types (sigs.k8s.io/gateway-api/apis)
// hold the experimental fields too, and the file source accepts them; the
// standard channel's CRDs would prune some (HTTPRoute rules' retry, for
// one), and serve TCPRoute only as v1 while Istio's docs write v1alpha2.
func MeshCRDs() []CRDFile {
	var out []CRDFile
	out = append(out, CRDFile{Module: IstioModule, Path: IstioCRDs})
	for _, r := range []string{"gatewayclasses", "gateways", "httproutes", "grpcroutes", "referencegrants", "tcproutes"} {
		out = append(out, CRDFile{Module: GatewayModule, Path: GatewayCRD("experimental", r)})
	}
	return out
}

// ModuleDir returns the module cache directory of module at the version
// the main module requires (go list -m). It fails the test if the module
// is not required or not downloaded.
func ModuleDir(t testing.TB, module string) string {
	t.Helper()
	cmd := exec.Command("go", "list", "-m", "-json", module)
	cmd.Dir = repoRoot(t)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("kubetest: go list -m %s: %v\n%s", module, err, stderr.String())
	}
	var m struct{ Path, Version, Dir string }
	if err := json.Unmarshal(out, &m); err != nil {
		t.Fatalf("kubetest: go list -m %s: %v", module, err)
	}
	if m.Dir == "" {
		t.Fatalf("kubetest: module %s@%s is not in the module cache: run `go mod download %s`", module, m.Version, module)
	}
	return m.Dir
}

// CRDFilePath returns the absolute path of f, failing the test with a
// clear message if the module or the file is absent.
func CRDFilePath(t testing.TB, f CRDFile) string {
	t.Helper()
	p := filepath.Join(ModuleDir(t, f.Module), filepath.FromSlash(f.Path))
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("kubetest: CRD file %s not found in module %s (the upstream layout changed?): %v", f.Path, f.Module, err)
	}
	return p
}

var crdResource = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// InstallCRDs creates the CRDs of files (skipping those that exist) and
// waits until every one is Established. It returns their names.
func (s *Server) InstallCRDs(t testing.TB, files ...CRDFile) []string {
	t.Helper()
	dc, err := dynamic.NewForConfig(s.Config)
	if err != nil {
		t.Fatalf("kubetest: dynamic client: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var names []string
	for _, f := range files {
		path := CRDFilePath(t, f)
		crds, err := readCRDs(path)
		if err != nil {
			t.Fatalf("kubetest: %s: %v", path, err)
		}
		found := 0
		for _, crd := range crds {
			if len(f.Names) > 0 && !slices.Contains(f.Names, crd.GetName()) {
				continue
			}
			found++
			_, err := dc.Resource(crdResource).Create(ctx, crd, metav1.CreateOptions{})
			if err != nil && !apierrors.IsAlreadyExists(err) {
				t.Fatalf("kubetest: creating CRD %s from %s: %v", crd.GetName(), path, err)
			}
			names = append(names, crd.GetName())
		}
		if len(f.Names) > 0 && found != len(f.Names) {
			t.Fatalf("kubetest: %s holds %d of the CRDs %v", path, found, f.Names)
		}
	}
	for _, n := range names {
		if err := waitEstablished(ctx, dc, n); err != nil {
			t.Fatalf("kubetest: CRD %s: %v", n, err)
		}
	}
	return names
}

// readCRDs returns the CustomResourceDefinition documents of a YAML file.
func readCRDs(path string) ([]*unstructured.Unstructured, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	var out []*unstructured.Unstructured
	for {
		var obj map[string]any
		if err := dec.Decode(&obj); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return nil, err
		}
		u := &unstructured.Unstructured{Object: obj}
		if obj == nil || u.GetKind() != "CustomResourceDefinition" {
			continue
		}
		out = append(out, u)
	}
	if len(out) == 0 {
		return nil, errors.New("no CustomResourceDefinition in the file")
	}
	return out, nil
}

func waitEstablished(ctx context.Context, dc dynamic.Interface, name string) error {
	for {
		u, err := dc.Resource(crdResource).Get(ctx, name, metav1.GetOptions{})
		if err == nil {
			conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
			for _, c := range conds {
				m, _ := c.(map[string]any)
				if m["type"] == "Established" && m["status"] == "True" {
					return nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not Established: %w (last error: %v)", ctx.Err(), err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}
