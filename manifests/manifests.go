// Package manifests holds Ambit's Kubernetes install: the YAML templates
// in templates/ (our own: namespace, service accounts, least-privilege
// RBAC, the control plane Deployment and Service, the ztunnel and node
// agent DaemonSets) and the upstream CRDs in crds/.
//
// The CRDs are not copies kept in this repository: hack/crds.sh (make
// manifests) extracts them from the Go module cache, from the istio.io/istio
// and sigs.k8s.io/gateway-api versions go.mod requires, into crds/, which
// is gitignored and embedded here. A binary built before `make manifests`
// carries none (EmbeddedCRDs reports ErrNoCRDs); LoadCRDs reads a
// directory instead.
package manifests

import (
	"bufio"
	"bytes"
	"embed"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/template"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/validation"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// Namespace is the control plane's namespace: Istio's, so that
// Istio-compatible clients find istiod.istio-system.svc.
const Namespace = "istio-system"

// Labels every object carries.
const (
	ManagedByLabel = "app.kubernetes.io/managed-by"
	ManagedBy      = "ambit"
	ComponentLabel = "app.kubernetes.io/component"
	VersionLabel   = "app.kubernetes.io/version"
)

// Components, as the app.kubernetes.io/component label.
const (
	ComponentControlPlane = "controlplane"
	ComponentZtunnel      = "ztunnel"
	ComponentNodeAgent    = "node-agent"
)

//go:embed templates/*.yaml
var templates embed.FS

// crds holds what hack/crds.sh generated (only .gitignore without it).
//
//go:embed all:crds
var crds embed.FS

// Values parameterise the templates.
type Values struct {
	// Version labels every object (app.kubernetes.io/version).
	Version string
	// AmbitImage runs the control plane and the node agent (it also holds
	// ambit-cni); ZtunnelImage runs ztunnel.
	AmbitImage, ZtunnelImage string
	// ImagePullPolicy of every container (IfNotPresent for images
	// imported with ctr).
	ImagePullPolicy string
	TrustDomain     string
	ClusterID       string
	// ControlPlaneReplicas of the control plane Deployment (replicas all
	// serve; the one holding the status Lease writes status).
	ControlPlaneReplicas int
	// CNIConfDir and CNIBinDir are the node's CNI directories.
	CNIConfDir, CNIBinDir string
}

// DefaultHub is the image repository prefix `make images` tags with.
const DefaultHub = "ambit.local"

// Images returns the image references for hub and tag.
func Images(hub, tag string) (ambit, ztunnel string) {
	hub = strings.TrimSuffix(hub, "/")
	return hub + "/ambit:" + tag, hub + "/ambit-ztunnel:" + tag
}

// Defaults returns the values for version (also the image tag).
func Defaults(version string) Values {
	a, z := Images(DefaultHub, version)
	return Values{
		Version: version, AmbitImage: a, ZtunnelImage: z, ImagePullPolicy: "IfNotPresent",
		TrustDomain: "cluster.local", ClusterID: "Kubernetes", ControlPlaneReplicas: 1,
		CNIConfDir: "/etc/cni/net.d", CNIBinDir: "/opt/cni/bin",
	}
}

// Validate reports values the templates cannot take.
func (v Values) Validate() error {
	var errs []error
	if msgs := validation.IsValidLabelValue(v.Version); v.Version == "" || len(msgs) > 0 {
		errs = append(errs, fmt.Errorf("version %q is not a valid label value: %s", v.Version, strings.Join(msgs, "; ")))
	}
	for name, img := range map[string]string{"ambit image": v.AmbitImage, "ztunnel image": v.ZtunnelImage} {
		if img == "" || strings.ContainsAny(img, " \t\n\"'") {
			errs = append(errs, fmt.Errorf("%s %q is not an image reference", name, img))
		}
	}
	if !slices.Contains([]string{"Always", "IfNotPresent", "Never"}, v.ImagePullPolicy) {
		errs = append(errs, fmt.Errorf("image pull policy %q: want Always, IfNotPresent or Never", v.ImagePullPolicy))
	}
	if msgs := validation.IsDNS1123Subdomain(v.TrustDomain); len(msgs) > 0 {
		errs = append(errs, fmt.Errorf("trust domain %q: %s", v.TrustDomain, strings.Join(msgs, "; ")))
	}
	if v.ClusterID == "" || strings.ContainsAny(v.ClusterID, " \t\n\"'") {
		errs = append(errs, fmt.Errorf("cluster id %q", v.ClusterID))
	}
	if v.ControlPlaneReplicas < 1 {
		errs = append(errs, fmt.Errorf("control plane replicas %d: want at least 1", v.ControlPlaneReplicas))
	}
	for name, d := range map[string]string{"CNI conf dir": v.CNIConfDir, "CNI bin dir": v.CNIBinDir} {
		if !filepath.IsAbs(d) || filepath.Clean(d) != d || strings.ContainsAny(d, " \t\n\"'") {
			errs = append(errs, fmt.Errorf("%s %q: want a clean absolute path", name, d))
		}
	}
	return errors.Join(errs...)
}

// Object is one manifest: the object, and its YAML as written (the
// template's rendering, comments kept, or the upstream CRD document).
type Object struct {
	*unstructured.Unstructured
	YAML []byte
	// Source names the file it came from.
	Source string
}

// Ref names the object for people: Kind namespace/name.
func (o Object) Ref() string {
	if ns := o.GetNamespace(); ns != "" {
		return o.GetKind() + " " + ns + "/" + o.GetName()
	}
	return o.GetKind() + " " + o.GetName()
}

// Render returns the install's objects (without CRDs) in apply order: the
// templates' order, file by file.
func Render(v Values) ([]Object, error) {
	if err := v.Validate(); err != nil {
		return nil, err
	}
	data := struct {
		Values
		Namespace string
	}{v, Namespace}
	funcs := template.FuncMap{
		"quote":  strconv.Quote,
		"indent": indent,
		"labels": func(component string) string {
			s := ManagedByLabel + ": " + ManagedBy + "\napp.kubernetes.io/part-of: ambit\n" + VersionLabel + ": " + strconv.Quote(v.Version)
			if component != "" {
				s += "\n" + ComponentLabel + ": " + component
			}
			return s
		},
	}
	names, err := fs.Glob(templates, "templates/*.yaml")
	if err != nil {
		return nil, err
	}
	slices.Sort(names)
	var out []Object
	for _, name := range names {
		src, err := templates.ReadFile(name)
		if err != nil {
			return nil, err
		}
		t, err := template.New(name).Option("missingkey=error").Funcs(funcs).Parse(string(src))
		if err != nil {
			return nil, err
		}
		var buf bytes.Buffer
		if err := t.Execute(&buf, data); err != nil {
			return nil, err
		}
		objs, err := Parse(name, buf.Bytes())
		if err != nil {
			return nil, err
		}
		out = append(out, objs...)
	}
	seen := map[string]bool{}
	for _, o := range out {
		if seen[o.Ref()] {
			return nil, fmt.Errorf("%s: %s twice", o.Source, o.Ref())
		}
		seen[o.Ref()] = true
	}
	return out, nil
}

func indent(n int, s string) string {
	pad := strings.Repeat(" ", n)
	return pad + strings.ReplaceAll(s, "\n", "\n"+pad)
}

// Parse splits a multi-document YAML file into objects, skipping empty
// documents (comments only).
func Parse(source string, data []byte) ([]Object, error) {
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var out []Object
	for i := 1; ; i++ {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%s: document %d: %w", source, i, err)
		}
		js, err := yaml.YAMLToJSON(doc)
		if err != nil {
			return nil, fmt.Errorf("%s: document %d: %w", source, i, err)
		}
		if bytes.Equal(bytes.TrimSpace(js), []byte("null")) {
			continue
		}
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(js); err != nil {
			return nil, fmt.Errorf("%s: document %d: %w", source, i, err)
		}
		if u.GetName() == "" {
			return nil, fmt.Errorf("%s: document %d: %s without a name", source, i, u.GetKind())
		}
		out = append(out, Object{Unstructured: u, YAML: bytes.TrimSpace(doc), Source: source})
	}
}

// ErrNoCRDs means the binary was built without the generated CRDs.
var ErrNoCRDs = errors.New("this binary carries no CRDs: it was built before `make manifests` (hack/crds.sh); rebuild after it, or point --crds at a directory of CRD YAML")

// EmbeddedCRDs returns the CRDs generated into crds/ when the binary was
// built, or ErrNoCRDs.
func EmbeddedCRDs() ([]Object, error) {
	sub, err := fs.Sub(crds, "crds")
	if err != nil {
		return nil, err
	}
	objs, err := loadCRDs(sub, "crds/")
	if err == nil && len(objs) == 0 {
		return nil, ErrNoCRDs
	}
	return objs, err
}

// LoadCRDs returns the CustomResourceDefinitions of the *.yaml files of
// dir (other kinds of objects in them are skipped).
func LoadCRDs(dir string) ([]Object, error) {
	objs, err := loadCRDs(os.DirFS(dir), dir+"/")
	if err == nil && len(objs) == 0 {
		return nil, fmt.Errorf("no CustomResourceDefinition in %s/*.yaml", dir)
	}
	return objs, err
}

func loadCRDs(fsys fs.FS, prefix string) ([]Object, error) {
	names, err := fs.Glob(fsys, "*.yaml")
	if err != nil {
		return nil, err
	}
	slices.Sort(names)
	var out []Object
	seen := map[string]string{}
	for _, name := range names {
		data, err := fs.ReadFile(fsys, name)
		if err != nil {
			return nil, err
		}
		objs, err := Parse(prefix+name, data)
		if err != nil {
			return nil, err
		}
		for _, o := range objs {
			if o.GetKind() != "CustomResourceDefinition" {
				continue
			}
			if prev, ok := seen[o.GetName()]; ok {
				return nil, fmt.Errorf("CRD %s in both %s and %s", o.GetName(), prev, o.Source)
			}
			seen[o.GetName()] = o.Source
			out = append(out, o)
		}
	}
	return out, nil
}

// WriteYAML writes objects as one multi-document YAML stream.
func WriteYAML(w io.Writer, objs []Object) error {
	for _, o := range objs {
		if _, err := fmt.Fprintf(w, "---\n# Source: %s\n%s\n", o.Source, o.YAML); err != nil {
			return err
		}
	}
	return nil
}
