package manifests

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// The capabilities each component may add, exactly (everything else is
// dropped), and whether it runs as a non-root user.
var wantSecurity = map[string]struct {
	caps    []string
	nonRoot bool
}{
	ComponentControlPlane: {caps: nil, nonRoot: true},
	ComponentZtunnel:      {caps: []string{"NET_ADMIN", "NET_RAW", "SYS_ADMIN"}},
	ComponentNodeAgent:    {caps: []string{"NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE"}},
}

func render(t *testing.T) []Object {
	t.Helper()
	objs, err := Render(Defaults("v1.2.3"))
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

func podSpecs(t *testing.T, objs []Object) map[string]corev1.PodTemplateSpec {
	t.Helper()
	out := map[string]corev1.PodTemplateSpec{}
	for _, o := range objs {
		switch o.GetKind() {
		case "Deployment":
			var d appsv1.Deployment
			if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(o.Object, &d, true); err != nil {
				t.Fatalf("%s: %v", o.Ref(), err)
			}
			out[o.GetLabels()[ComponentLabel]] = d.Spec.Template
		case "DaemonSet":
			var d appsv1.DaemonSet
			if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(o.Object, &d, true); err != nil {
				t.Fatalf("%s: %v", o.Ref(), err)
			}
			out[o.GetLabels()[ComponentLabel]] = d.Spec.Template
		}
	}
	return out
}

func TestRenderObjects(t *testing.T) {
	objs := render(t)
	var refs []string
	for _, o := range objs {
		refs = append(refs, o.Ref())
		if o.GetLabels()[ManagedByLabel] != ManagedBy || o.GetLabels()[VersionLabel] != "v1.2.3" {
			t.Errorf("%s: labels %v", o.Ref(), o.GetLabels())
		}
		if o.GetKind() != "Namespace" && !strings.HasPrefix(o.GetKind(), "Cluster") && o.GetNamespace() != Namespace {
			t.Errorf("%s: namespace %q, want %s", o.Ref(), o.GetNamespace(), Namespace)
		}
		if len(o.YAML) == 0 || o.Source == "" {
			t.Errorf("%s: no YAML or source", o.Ref())
		}
	}
	want := []string{
		"Namespace istio-system",
		"ServiceAccount istio-system/istiod", "ServiceAccount istio-system/ztunnel", "ServiceAccount istio-system/ambit-node-agent",
		"ClusterRole ambit-controlplane", "ClusterRoleBinding ambit-controlplane", "Role istio-system/ambit-controlplane", "RoleBinding istio-system/ambit-controlplane",
		"ClusterRole ambit-node-agent", "ClusterRoleBinding ambit-node-agent", "Role istio-system/ambit-node-agent", "RoleBinding istio-system/ambit-node-agent",
		"Deployment istio-system/istiod", "Service istio-system/istiod",
		"DaemonSet istio-system/ztunnel",
		"DaemonSet istio-system/ambit-node-agent",
	}
	if !slices.Equal(refs, want) {
		t.Errorf("objects, in apply order:\n got %v\nwant %v", refs, want)
	}
}

// TestContainersAreLocked checks every container: resource requests,
// ALL capabilities dropped and only the listed ones added, not
// privileged, a read-only root, non-root where the component can be.
func TestContainersAreLocked(t *testing.T) {
	pods := podSpecs(t, render(t))
	if len(pods) != len(wantSecurity) {
		t.Fatalf("workloads %d, want %d", len(pods), len(wantSecurity))
	}
	for comp, tmpl := range pods {
		want, ok := wantSecurity[comp]
		if !ok {
			t.Errorf("unexpected component %q", comp)
			continue
		}
		spec := tmpl.Spec
		if len(spec.InitContainers) > 0 {
			t.Errorf("%s: init containers", comp)
		}
		for _, c := range spec.Containers {
			name := comp + "/" + c.Name
			for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
				if q, ok := c.Resources.Requests[r]; !ok || q.IsZero() {
					t.Errorf("%s: no %s request", name, r)
				}
			}
			sc := c.SecurityContext
			if sc == nil || sc.Capabilities == nil {
				t.Errorf("%s: no security context with capabilities", name)
				continue
			}
			if !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
				t.Errorf("%s: drops %v, want [ALL]", name, sc.Capabilities.Drop)
			}
			var added []string
			for _, a := range sc.Capabilities.Add {
				added = append(added, string(a))
			}
			slices.Sort(added)
			if !slices.Equal(added, want.caps) {
				t.Errorf("%s: adds %v, want %v", name, added, want.caps)
			}
			if sc.Privileged == nil || *sc.Privileged {
				t.Errorf("%s: privileged not false", name)
			}
			if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
				t.Errorf("%s: root file system not read-only", name)
			}
			// SYS_ADMIN implies privilege escalation (the API server
			// refuses false with it); everyone else must not escalate.
			wantEscalation := slices.Contains(want.caps, "SYS_ADMIN")
			if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation != wantEscalation {
				t.Errorf("%s: allowPrivilegeEscalation %v, want %v", name, sc.AllowPrivilegeEscalation, wantEscalation)
			}
			nonRoot := sc.RunAsNonRoot != nil && *sc.RunAsNonRoot
			if nonRoot != want.nonRoot {
				t.Errorf("%s: runAsNonRoot %v, want %v", name, nonRoot, want.nonRoot)
			}
			if want.nonRoot && (spec.SecurityContext == nil || spec.SecurityContext.RunAsUser == nil || *spec.SecurityContext.RunAsUser == 0) {
				t.Errorf("%s: non-root component without a non-zero runAsUser", name)
			}
			if c.ImagePullPolicy != corev1.PullIfNotPresent {
				t.Errorf("%s: pull policy %s", name, c.ImagePullPolicy)
			}
		}
		if spec.SecurityContext == nil || spec.SecurityContext.SeccompProfile == nil || spec.SecurityContext.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
			t.Errorf("%s: no RuntimeDefault seccomp profile", comp)
		}
		if spec.HostNetwork != (comp == ComponentNodeAgent) || spec.HostPID != (comp == ComponentNodeAgent) {
			t.Errorf("%s: hostNetwork %v hostPID %v: only the node agent shares the host's", comp, spec.HostNetwork, spec.HostPID)
		}
	}
}

func TestWorkloadWiring(t *testing.T) {
	objs, err := Render(Values{
		Version: "v9", AmbitImage: "reg.example/a:v9", ZtunnelImage: "reg.example/z:v9", ImagePullPolicy: "Never",
		TrustDomain: "example.org", ClusterID: "c1", ControlPlaneReplicas: 2, CNIConfDir: "/etc/cni/multus/net.d", CNIBinDir: "/home/kubernetes/bin",
	})
	if err != nil {
		t.Fatal(err)
	}
	pods := podSpecs(t, objs)
	cp, zt, na := pods[ComponentControlPlane].Spec, pods[ComponentZtunnel].Spec, pods[ComponentNodeAgent].Spec

	if cp.Containers[0].Image != "reg.example/a:v9" || na.Containers[0].Image != "reg.example/a:v9" || zt.Containers[0].Image != "reg.example/z:v9" {
		t.Errorf("images: cp %s, node agent %s, ztunnel %s", cp.Containers[0].Image, na.Containers[0].Image, zt.Containers[0].Image)
	}
	for _, want := range []string{"controlplane", "--trust-domain=example.org", "--cluster-id=c1", "--trusted-node-accounts=istio-system/ztunnel", "--root-cert=/etc/cacerts/cert-chain.pem"} {
		if !slices.Contains(cp.Containers[0].Args, want) {
			t.Errorf("control plane args %v lack %s", cp.Containers[0].Args, want)
		}
	}
	if cp.ServiceAccountName != "istiod" || zt.ServiceAccountName != "ztunnel" || na.ServiceAccountName != "ambit-node-agent" {
		t.Errorf("service accounts %s %s %s", cp.ServiceAccountName, zt.ServiceAccountName, na.ServiceAccountName)
	}

	// ztunnel: no API token, the projected istio-ca token, the root, the
	// ZDS directory, Istio's control plane address.
	if zt.AutomountServiceAccountToken == nil || *zt.AutomountServiceAccountToken {
		t.Error("ztunnel mounts the API token")
	}
	var audience string
	for _, v := range zt.Volumes {
		if v.Projected != nil {
			for _, s := range v.Projected.Sources {
				if s.ServiceAccountToken != nil {
					audience = s.ServiceAccountToken.Audience
				}
			}
		}
	}
	if audience != "istio-ca" {
		t.Errorf("ztunnel token audience %q", audience)
	}
	for _, want := range []string{"--control-plane=istiod.istio-system.svc:15012", "--token-file=/var/run/secrets/tokens/istio-token", "--zds-socket=/var/run/ztunnel/ztunnel.sock"} {
		if !slices.Contains(zt.Containers[0].Args, want) {
			t.Errorf("ztunnel args %v lack %s", zt.Containers[0].Args, want)
		}
	}
	mounts := func(s corev1.PodSpec) map[string]string {
		m := map[string]string{}
		for _, vm := range s.Containers[0].VolumeMounts {
			m[vm.MountPath] = vm.Name
		}
		return m
	}
	hostPaths := func(s corev1.PodSpec) map[string]string {
		m := map[string]string{}
		for _, v := range s.Volumes {
			if v.HostPath != nil {
				m[v.Name] = v.HostPath.Path
			}
		}
		return m
	}
	zm, zh := mounts(zt), hostPaths(zt)
	if zh[zm["/var/run/ztunnel"]] != "/var/run/ztunnel" {
		t.Errorf("ztunnel does not mount the host's /var/run/ztunnel: %v %v", zm, zh)
	}
	if len(zh) != 1 {
		t.Errorf("ztunnel mounts host paths %v, want only /var/run/ztunnel", zh)
	}
	// The node agent: host directories at the same paths inside.
	nm, nh := mounts(na), hostPaths(na)
	for _, p := range []string{"/etc/cni/multus/net.d", "/home/kubernetes/bin", "/var/run/netns", "/var/run/ztunnel", "/var/run/ambit"} {
		if nh[nm[p]] != p {
			t.Errorf("node agent: %s is not the host's %s (mounts %v, host paths %v)", p, p, nm, nh)
		}
	}
	for _, want := range []string{"node-agent", "--node-name=$(NODE_NAME)", "--cni-conf-dir=/etc/cni/multus/net.d", "--cni-bin-dir=/home/kubernetes/bin", "--zds-socket=/var/run/ztunnel/ztunnel.sock"} {
		if !slices.Contains(na.Containers[0].Args, want) {
			t.Errorf("node agent args %v lack %s", na.Containers[0].Args, want)
		}
	}
	env := map[string]string{}
	for _, e := range na.Containers[0].Env {
		if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
			env[e.Name] = e.ValueFrom.FieldRef.FieldPath
		}
	}
	if env["NODE_NAME"] != "spec.nodeName" {
		t.Errorf("node agent NODE_NAME from %q", env["NODE_NAME"])
	}
	for _, o := range objs {
		if o.GetKind() == "Deployment" {
			if r, _, _ := unstructuredInt(o.Object, "spec", "replicas"); r != 2 {
				t.Errorf("replicas %d", r)
			}
		}
	}
}

func unstructuredInt(obj map[string]any, path ...string) (int64, bool, error) {
	var cur any = obj
	for _, p := range path {
		m, ok := cur.(map[string]any)
		if !ok {
			return 0, false, nil
		}
		cur = m[p]
	}
	n, ok := cur.(int64)
	return n, ok, nil
}

func TestValidate(t *testing.T) {
	ok := Defaults("dev")
	for name, mut := range map[string]func(*Values){
		"version not a label": func(v *Values) { v.Version = "1.0+build/x" },
		"empty version":       func(v *Values) { v.Version = "" },
		"image with a quote":  func(v *Values) { v.AmbitImage = `a"b` },
		"no ztunnel image":    func(v *Values) { v.ZtunnelImage = "" },
		"pull policy":         func(v *Values) { v.ImagePullPolicy = "Sometimes" },
		"trust domain":        func(v *Values) { v.TrustDomain = "Not A Domain" },
		"no replicas":         func(v *Values) { v.ControlPlaneReplicas = 0 },
		"relative CNI dir":    func(v *Values) { v.CNIConfDir = "etc/cni" },
		"unclean CNI bin dir": func(v *Values) { v.CNIBinDir = "/opt/cni/../bin" },
		"cluster id":          func(v *Values) { v.ClusterID = "a b" },
	} {
		t.Run(name, func(t *testing.T) {
			v := ok
			mut(&v)
			if err := v.Validate(); err == nil {
				t.Error("valid")
			}
			if _, err := Render(v); err == nil {
				t.Error("rendered")
			}
		})
	}
	if err := ok.Validate(); err != nil {
		t.Errorf("defaults: %v", err)
	}
}

func TestImages(t *testing.T) {
	a, z := Images("reg.example/mesh/", "v1")
	if a != "reg.example/mesh/ambit:v1" || z != "reg.example/mesh/ambit-ztunnel:v1" {
		t.Errorf("%s %s", a, z)
	}
}

func TestParse(t *testing.T) {
	for name, tc := range map[string]struct {
		in      string
		kinds   []string
		wantErr bool
	}{
		"comments only between": {in: "# a\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\n# only a comment\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: b}\n", kinds: []string{"ConfigMap", "Secret"}},
		"empty":                 {in: "", kinds: nil},
		"no name":               {in: "apiVersion: v1\nkind: ConfigMap\n", wantErr: true},
		"bad YAML":              {in: "apiVersion: v1\nkind: [\n", wantErr: true},
	} {
		t.Run(name, func(t *testing.T) {
			objs, err := Parse("test.yaml", []byte(tc.in))
			if (err != nil) != tc.wantErr {
				t.Fatalf("err %v", err)
			}
			var kinds []string
			for _, o := range objs {
				kinds = append(kinds, o.GetKind())
			}
			if !slices.Equal(kinds, tc.kinds) {
				t.Errorf("kinds %v, want %v", kinds, tc.kinds)
			}
		})
	}
}

const crdDoc = `apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: %s
`

func TestLoadCRDs(t *testing.T) {
	dir := t.TempDir()
	write := func(name, data string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("a.yaml", strings.ReplaceAll(crdDoc, "%s", "as.example.com")+"---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: skipped}\n")
	write("b.yaml", strings.ReplaceAll(crdDoc, "%s", "bs.example.com"))
	write("notes.txt", "not yaml")
	objs, err := LoadCRDs(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(objs) != 2 || objs[0].GetName() != "as.example.com" || objs[1].GetName() != "bs.example.com" {
		t.Errorf("CRDs %v", objs)
	}
	write("c.yaml", strings.ReplaceAll(crdDoc, "%s", "as.example.com"))
	if _, err := LoadCRDs(dir); err == nil {
		t.Error("a CRD in two files loaded")
	}
	if _, err := LoadCRDs(t.TempDir()); err == nil {
		t.Error("an empty directory gave CRDs")
	}
	// The embedded set is either what make manifests generated, or none.
	embedded, err := EmbeddedCRDs()
	if err != nil && !errors.Is(err, ErrNoCRDs) {
		t.Fatal(err)
	}
	for _, o := range embedded {
		if o.GetKind() != "CustomResourceDefinition" {
			t.Errorf("embedded %s", o.Ref())
		}
	}
}
