package filesource

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	securityv1beta1 "istio.io/api/security/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambit-mesh/ambit/controlplane/config"
)

// goodManifests has every supported kind in one multi-document file.
const goodManifests = `apiVersion: v1
kind: Namespace
metadata:
  name: demo
  labels:
    istio.io/dataplane-mode: ambient
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: client, namespace: demo}
---
apiVersion: v1
kind: Pod
metadata:
  name: client
  namespace: demo
  labels: {app: client}
spec:
  nodeName: node1
  serviceAccountName: client
  restartPolicy: OnFailure
  containers:
  - name: main
    image: ambit
    command: [ambit, sample, tcp-echo]
    ports: [{containerPort: 9000, name: tcp-echo, protocol: TCP}]
    env:
    - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    - {name: GREETING, value: hello}
    resources: {limits: {cpu: 100m, memory: 64Mi}}
status:
  podIP: 10.244.1.5
  podIPs: [{ip: 10.244.1.5}, {ip: "fd00::5"}]
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: demo}
spec:
  selector: {app: echo}
  clusterIP: 10.96.0.10
  ports:
  - {name: http, port: 8080, targetPort: 8080}
  - {name: grpc, port: 9090, targetPort: grpc, protocol: TCP}
---
apiVersion: v1
kind: Service
metadata: {name: headless, namespace: demo}
spec:
  clusterIP: None
  selector: {app: echo}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-client, namespace: demo}
spec:
  selector: {matchLabels: {app: echo}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/demo/sa/client], ipBlocks: [10.0.0.0/8, 192.168.1.1]}}]
    to: [{operation: {ports: ["8080"], methods: [GET]}}]
    when: [{key: destination.port, values: ["8080"]}]
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: strict, namespace: demo}
spec:
  selector: {matchLabels: {app: echo}}
  mtls: {mode: STRICT}
  portLevelMtls:
    8080: {mode: PERMISSIVE}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: demo}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: echo, namespace: demo}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 8080}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /api}}]
    timeouts: {request: 5s}
    backendRefs: [{name: echo, port: 8080, weight: 1}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: echo-grpc, namespace: demo}
spec:
  parentRefs: [{group: "", kind: Service, name: echo}]
  rules: [{backendRefs: [{name: echo, port: 9090}]}]
---
apiVersion: ambit.dev/v1alpha1
kind: LocalCluster
metadata: {name: local}
spec: {nodes: 3}
---
`

func writeFile(t *testing.T, dir, name, data string) {
	t.Helper()
	// Write then rename, as editors do, so a watcher never sees half a file.
	tmp := filepath.Join(dir, "."+name+".tmp")
	if err := os.WriteFile(tmp, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		t.Fatal(err)
	}
}

func TestLoadGood(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "all.yaml", goodManifests)
	writeFile(t, dir, "extra.yml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: other}\n")
	// None of these is read.
	writeFile(t, dir, "README.md", "not a manifest")
	writeFile(t, dir, ".hidden.yaml", "garbage: [")
	writeFile(t, dir, "all.yaml~", "garbage: [")
	writeFile(t, dir, "#all.yaml#", "garbage: [")
	writeFile(t, dir, "all.yaml.swp", "garbage: [")
	if err := os.Mkdir(filepath.Join(dir, "sub.yaml"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "sub.yaml"), "x.yaml", "garbage: [")

	s, err := LoadDir(dir)
	if err != nil {
		t.Fatalf("LoadDir: %v", err)
	}
	var keys []string
	for _, o := range s.Objects() {
		keys = append(keys, KeyOf(o).String())
	}
	want := []string{
		"AuthorizationPolicy demo/allow-client",
		"GRPCRoute demo/echo-grpc",
		"Gateway demo/waypoint",
		"HTTPRoute demo/echo",
		"LocalCluster local",
		"Namespace demo",
		"Namespace other",
		"PeerAuthentication demo/strict",
		"Pod demo/client",
		"Service demo/echo",
		"Service demo/headless",
		"ServiceAccount demo/client",
	}
	if !slices.Equal(keys, want) {
		t.Fatalf("Objects() keys =\n%q\nwant\n%q", keys, want)
	}
	if ns := s.Namespaces(); len(ns) != 2 || ns[0].Name != "demo" || ns[0].Labels["istio.io/dataplane-mode"] != "ambient" || ns[1].Name != "other" {
		t.Errorf("namespaces not loaded sorted with their labels: %+v", ns)
	}
	pods := s.Pods()
	if len(pods) != 1 || pods[0].Spec.NodeName != "node1" || pods[0].Spec.Containers[0].Env[0].ValueFrom.FieldRef.FieldPath != "metadata.name" ||
		pods[0].Spec.Containers[0].Resources.Limits.Cpu().MilliValue() != 100 || pods[0].Status.PodIPs[1].IP != "fd00::5" {
		t.Errorf("pod not decoded: %+v", pods)
	}
	if got := pods[0].APIVersion + " " + pods[0].Kind; got != "v1 Pod" {
		t.Errorf("pod type meta = %q", got)
	}
	svcs := s.Services()
	if len(svcs) != 2 || svcs[0].Name != "echo" || svcs[0].Spec.Ports[0].TargetPort.IntValue() != 8080 || svcs[0].Spec.Ports[1].TargetPort.String() != "grpc" || svcs[1].Spec.ClusterIP != "None" {
		t.Errorf("services not decoded: %+v", svcs)
	}
	aps := s.AuthorizationPolicies()
	if len(aps) != 1 || aps[0].Spec.GetAction() != securityv1beta1.AuthorizationPolicy_ALLOW ||
		aps[0].Spec.GetRules()[0].GetFrom()[0].GetSource().GetPrincipals()[0] != "cluster.local/ns/demo/sa/client" ||
		aps[0].Spec.GetRules()[0].GetTo()[0].GetOperation().GetPorts()[0] != "8080" {
		t.Errorf("authorization policy not decoded: %+v", aps)
	}
	pas := s.PeerAuthentications()
	if len(pas) != 1 || pas[0].Spec.GetMtls().GetMode() != securityv1beta1.PeerAuthentication_MutualTLS_STRICT ||
		pas[0].Spec.GetPortLevelMtls()[8080].GetMode() != securityv1beta1.PeerAuthentication_MutualTLS_PERMISSIVE {
		t.Fatalf("peer authentication (v1beta1) not decoded: %+v", pas)
	}
	if pas[0].APIVersion != "security.istio.io/v1" {
		t.Errorf("v1beta1 PeerAuthentication not normalised to v1: apiVersion %q", pas[0].APIVersion)
	}
	gws, hrs, grs := s.Gateways(), s.HTTPRoutes(), s.GRPCRoutes()
	if len(gws) != 1 || gws[0].Spec.GatewayClassName != "istio-waypoint" || gws[0].Spec.Listeners[0].Port != 15008 {
		t.Errorf("gateway not decoded: %+v", gws)
	}
	if len(hrs) != 1 || *hrs[0].Spec.Rules[0].Matches[0].Path.Value != "/api" || *hrs[0].Spec.Rules[0].BackendRefs[0].Port != 8080 {
		t.Errorf("HTTPRoute not decoded: %+v", hrs)
	}
	if len(grs) != 1 || grs[0].Spec.ParentRefs[0].Name != "echo" {
		t.Errorf("GRPCRoute not decoded: %+v", grs)
	}
	if sas := s.ServiceAccounts(); len(sas) != 1 || sas[0].Namespace != "demo" {
		t.Errorf("service account not decoded: %+v", sas)
	}
	if lc, ok := s.LocalCluster(); !ok || lc.Spec.Nodes != 3 {
		t.Errorf("LocalCluster not decoded: %+v", lc)
	}
	if o, ok := s.Get(Key{Kind: "Pod", Namespace: "demo", Name: "client"}); !ok || o.GetName() != "client" {
		t.Errorf("Get(pod) = %v, %v", o, ok)
	}
	if file, line, ok := s.Origin(Key{Kind: "Pod", Namespace: "demo", Name: "client"}); !ok || line != 12 || file != filepath.Join(dir, "all.yaml") {
		t.Errorf("pod origin = %s:%d, want all.yaml:12", file, line)
	}
}

func TestDefaultNamespace(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "p.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c, command: [sleep, '1']}]}\n")
	s, err := LoadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	o, ok := s.Get(Key{Kind: "Pod", Namespace: "default", Name: "p"})
	if !ok || o.GetNamespace() != "default" {
		t.Fatal("pod without namespace not placed in default")
	}
}

// TestServicePortDefaults: what an API server defaults and the model
// reads is defaulted the same way here.
func TestServicePortDefaults(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "s.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: demo}\nspec:\n  ports:\n  - {name: a, port: 80}\n  - {name: b, port: 81, targetPort: http, protocol: UDP}\n  - {name: c, port: 82, targetPort: 8082}\n")
	s, err := LoadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	svcs := s.Services()
	if len(svcs) != 1 {
		t.Fatalf("%d services", len(svcs))
	}
	for i, want := range []struct {
		protocol corev1.Protocol
		target   string
	}{{corev1.ProtocolTCP, "80"}, {corev1.ProtocolUDP, "http"}, {corev1.ProtocolTCP, "8082"}} {
		p := svcs[0].Spec.Ports[i]
		if p.Protocol != want.protocol || p.TargetPort.String() != want.target {
			t.Errorf("port %s: protocol %q targetPort %s, want %q %s", p.Name, p.Protocol, p.TargetPort.String(), want.protocol, want.target)
		}
	}
}

// TestLoadBad checks that each kind of bad input is refused with one error
// whose text (after the directory) is exactly, or starts with, want; and
// that it does not stop another file from loading.
func TestLoadBad(t *testing.T) {
	pod := func(extra string) string {
		return "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  namespace: demo\nspec:\n  containers:\n  - name: c\n    command: [sleep]\n" + extra
	}
	svc := func(spec string) string {
		return "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: demo}\nspec:\n" + spec
	}
	ap := func(spec string) string {
		return "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: demo}\nspec:\n" + spec
	}
	tests := []struct {
		name  string
		data  string
		want  string // the error after "<dir>/": exactly, or as a prefix when prefix is set
		exact bool
	}{
		// YAML itself.
		{name: "syntax error", data: "apiVersion: v1\nkind: Pod\nmetadata: {name: [\n",
			want: "bad.yaml:3: invalid YAML: did not find expected node content", exact: true},
		{name: "tab indentation", data: "apiVersion: v1\nkind: Pod\nmetadata:\n\tname: x\n",
			want: "bad.yaml:4: invalid YAML: found character that cannot start any token", exact: true},
		{name: "syntax error in a later document", data: "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\nkind: [\n",
			want: "bad.yaml:5: invalid YAML:"},
		{name: "syntax error inside a flow mapping", data: "apiVersion: v1\nkind: Namespace\nmetadata: {name: a, labels: {x: [}\n",
			want: "bad.yaml:3: invalid YAML: did not find expected node content", exact: true},
		{name: "syntax error after a block", data: "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n  - b\n",
			want: "bad.yaml:5: invalid YAML: did not find expected key", exact: true},
		{name: "bad indentation", data: "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n labels: {}\n",
			want: "bad.yaml:5: invalid YAML: did not find expected key", exact: true},
		{name: "control character", data: "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\x01\n",
			want: "bad.yaml:4: invalid YAML: control characters are not allowed", exact: true},
		{name: "not a mapping", data: "- a\n- b\n",
			want: "bad.yaml:1: a manifest must be a YAML mapping with apiVersion, kind and metadata", exact: true},
		{name: "duplicate key", data: "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: x\n  name: y\n",
			want: `bad.yaml:5: Namespace x: metadata.name: duplicate key "name" (first at line 4)`, exact: true},
		{name: "merge key", data: "apiVersion: v1\nkind: Namespace\nmetadata:\n  <<: {name: x}\n",
			want: "bad.yaml:4: Namespace: metadata: YAML merge keys (<<) are not supported", exact: true},

		// apiVersion and kind.
		{name: "missing kind", data: "apiVersion: v1\nmetadata: {name: x}\n",
			want: "bad.yaml:1: kind: is required", exact: true},
		{name: "missing apiVersion", data: "kind: Pod\nmetadata: {name: x}\n",
			want: "bad.yaml:1: Pod x: apiVersion: is required", exact: true},
		{name: "kind not a string", data: "apiVersion: v1\nkind: [Pod]\nmetadata: {name: x}\n",
			want: "bad.yaml:2: kind: must be a non-empty string", exact: true},
		{name: "unknown kind", data: "apiVersion: x/v1\nkind: Foo\nmetadata: {name: x, namespace: demo}\n",
			want: "bad.yaml:2: Foo demo/x: kind: unknown kind Foo (apiVersion x/v1); supported: Namespace (v1), ServiceAccount (v1), Pod (v1), Service (v1), AuthorizationPolicy (security.istio.io/v1, security.istio.io/v1beta1), PeerAuthentication (security.istio.io/v1, security.istio.io/v1beta1), Gateway (gateway.networking.k8s.io/v1), HTTPRoute (gateway.networking.k8s.io/v1), GRPCRoute (gateway.networking.k8s.io/v1), TCPRoute (gateway.networking.k8s.io/v1, gateway.networking.k8s.io/v1alpha2), LocalCluster (ambit.dev/v1alpha1)", exact: true},
		{name: "kind under a wrong apiVersion", data: "apiVersion: v2\nkind: Pod\nmetadata: {name: x}\n",
			want: "bad.yaml:2: Pod x: kind: unknown kind Pod (apiVersion v2); supported: "},

		// Unknown fields, at every depth.
		{name: "unknown top-level field", data: "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\nspecc: {}\n",
			want: `bad.yaml:4: Namespace x: specc: unknown field "specc"`, exact: true},
		{name: "unknown metadata field", data: "apiVersion: v1\nkind: Namespace\nmetadata: {name: x, label: {a: b}}\n",
			want: `bad.yaml:3: Namespace x: metadata.label: unknown field "label"`, exact: true},
		{name: "unknown field nested in a pod", data: pod("    imagee: busybox\n"),
			want: `bad.yaml:10: Pod demo/p: spec.containers[0].imagee: unknown field "imagee"`, exact: true},
		{name: "field in the wrong case", data: pod("    Image: busybox\n"),
			want: `bad.yaml:10: Pod demo/p: spec.containers[0].Image: unknown field "Image"`, exact: true},
		{name: "unknown field nested in an Istio spec", data: ap("  rules:\n  - from:\n    - source:\n        principal: [x]\n"),
			want: `bad.yaml:8: AuthorizationPolicy demo/a: spec.rules[0].from[0].source.principal: unknown field "principal"`, exact: true},
		{name: "unknown field at the top of an Istio spec", data: ap("  rule: []\n"),
			want: `bad.yaml:5: AuthorizationPolicy demo/a: spec.rule: unknown field "rule"`, exact: true},
		{name: "unknown field in a PeerAuthentication", data: "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {name: a, namespace: demo}\nspec:\n  mtls: {mod: STRICT}\n",
			want: `bad.yaml:5: PeerAuthentication demo/a: spec.mtls.mod: unknown field "mod"`, exact: true},
		{name: "unknown field in a Gateway listener", data: "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: g, namespace: demo}\nspec:\n  gatewayClassName: istio-waypoint\n  listeners:\n  - name: mesh\n    port: 15008\n    protocol: HBONE\n    portt: 1\n",
			want: `bad.yaml:10: Gateway demo/g: spec.listeners[0].portt: unknown field "portt"`, exact: true},

		// Types.
		{name: "string for an integer", data: pod("    ports:\n    - containerPort: eighty\n"),
			want: `bad.yaml:11: Pod demo/p: spec.containers[0].ports[0].containerPort: expected an integer, got the string "eighty"`, exact: true},
		{name: "integer overflow", data: pod("    ports:\n    - containerPort: 3000000000\n"),
			want: `bad.yaml:11: Pod demo/p: spec.containers[0].ports[0].containerPort: integer 3000000000 out of range (int32)`, exact: true},
		{name: "list for a string", data: pod("    image: [a]\n"),
			want: `bad.yaml:10: Pod demo/p: spec.containers[0].image: expected a string, got a list`, exact: true},
		{name: "bad IntOrString", data: svc("  ports:\n  - port: 80\n    targetPort: true\n"),
			want: `bad.yaml:7: Service demo/s: spec.ports[0].targetPort: invalid value the boolean true: `},
		{name: "bad quantity", data: pod("    resources: {limits: {cpu: lots}}\n"),
			want: `bad.yaml:10: Pod demo/p: spec.containers[0].resources.limits[cpu]: invalid value the string "lots": `},
		{name: "bad enum in an Istio spec", data: ap("  action: ALOW\n"),
			want: `bad.yaml:5: AuthorizationPolicy demo/a: spec.action: unknown value the string "ALOW"; want one of ALLOW, DENY, AUDIT, CUSTOM`, exact: true},
		{name: "numeric enum out of range", data: ap("  action: 9\n"),
			want: `bad.yaml:5: AuthorizationPolicy demo/a: spec.action: unknown value the number 9; want one of`},
		{name: "bad integer map key in an Istio spec", data: "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: a, namespace: demo}\nspec:\n  selector: {matchLabels: {app: x}}\n  portLevelMtls:\n    http: {mode: STRICT}\n",
			want: `bad.yaml:7: PeerAuthentication demo/a: spec.portLevelMtls[http]: invalid key "http": want a uint32`, exact: true},

		// Values: names, labels, namespaces.
		{name: "bad name", data: "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: Demo_NS\n",
			want: `bad.yaml:4: Namespace Demo_NS: metadata.name: invalid name "Demo_NS": `},
		{name: "bad namespace", data: "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: sa\n  namespace: my.ns\n",
			want: `bad.yaml:5: ServiceAccount my.ns/sa: metadata.namespace: invalid namespace "my.ns": `},
		{name: "missing name", data: "apiVersion: v1\nkind: ServiceAccount\nmetadata: {namespace: demo}\n",
			want: "bad.yaml:3: ServiceAccount: metadata.name: is required", exact: true},
		{name: "namespace on a cluster-scoped kind", data: "apiVersion: v1\nkind: Namespace\nmetadata: {name: x, namespace: y}\n",
			want: "bad.yaml:3: Namespace x: metadata.namespace: must not be set: Namespace is cluster-scoped", exact: true},
		{name: "bad label value", data: "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: x\n  labels:\n    app: \"not ok!\"\n",
			want: `bad.yaml:6: Namespace x: metadata.labels[app]: invalid label value "not ok!": `},
		{name: "bad label key", data: "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: x\n  labels:\n    \"-bad\": ok\n",
			want: `bad.yaml:6: Namespace x: metadata.labels[-bad]: invalid label key "-bad": `},
		{name: "label value not a string", data: "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: x\n  labels:\n    version: 1.0\n",
			want: `bad.yaml:6: Namespace x: metadata.labels[version]: expected a string, got the number 1.0`, exact: true},

		// Pods.
		{name: "the brief's example", data: "# demo\napiVersion: v1\nkind: Pod\nmetadata:\n  name: client\n  namespace: demo\nspec:\n  containers:\n  - name: main\n    command: [sleep, \"1\"]\n    ports:\n    - name: http\n      protocol: TCP\n      containerPort: 70000\n",
			want: "bad.yaml:14: Pod demo/client: spec.containers[0].ports[0].containerPort: must be between 1 and 65535, got 70000", exact: true},
		{name: "no containers", data: "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: []}\n",
			want: "bad.yaml:4: Pod default/p: spec.containers: at least one container is required", exact: true},
		{name: "container without a name", data: "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - command: [sleep]\n",
			want: "bad.yaml:6: Pod default/p: spec.containers[0].name: is required", exact: true},
		{name: "bad restart policy", data: pod("  restartPolicy: Sometimes\n"),
			want: `bad.yaml:10: Pod demo/p: spec.restartPolicy: must be Always, OnFailure or Never, got "Sometimes"`, exact: true},
		{name: "bad env name", data: pod("    env:\n    - name: 1X\n      value: a\n"),
			want: `bad.yaml:11: Pod demo/p: spec.containers[0].env[0].name: `},
		{name: "bad pod IP", data: pod("status:\n  podIP: 10.0.0.256\n"),
			want: `bad.yaml:11: Pod demo/p: status.podIP: invalid IP address "10.0.0.256"`, exact: true},
		{name: "bad pod phase", data: pod("status:\n  podIP: 10.0.0.2\n  phase: Started\n"),
			want: `bad.yaml:12: Pod demo/p: status.phase: must be Pending, Running, Succeeded, Failed or Unknown, got "Started"`, exact: true},
		{name: "bad container protocol", data: pod("    ports:\n    - containerPort: 80\n      protocol: HTTP\n"),
			want: `bad.yaml:12: Pod demo/p: spec.containers[0].ports[0].protocol: must be TCP, UDP or SCTP, got "HTTP"`, exact: true},
		{name: "unsupported fieldRef", data: pod("    env:\n    - name: X\n      valueFrom: {fieldRef: {fieldPath: status.hostIP}}\n"),
			want: `bad.yaml:12: Pod demo/p: spec.containers[0].env[0].valueFrom.fieldRef.fieldPath: unsupported field "status.hostIP"`},

		// Services.
		{name: "bad clusterIP", data: svc("  clusterIP: 10.96.0.300\n  ports: [{port: 80}]\n"),
			want: `bad.yaml:5: Service demo/s: spec.clusterIP: must be a valid IP address or None, got "10.96.0.300"`, exact: true},
		{name: "clusterIPs disagree", data: svc("  clusterIP: 10.96.0.1\n  clusterIPs: [10.96.0.2]\n  ports: [{port: 80}]\n"),
			want: `bad.yaml:6: Service demo/s: spec.clusterIPs[0]: must equal spec.clusterIP "10.96.0.1", got "10.96.0.2"`, exact: true},
		{name: "bad service port", data: svc("  ports:\n  - port: 0\n"),
			want: "bad.yaml:6: Service demo/s: spec.ports[0].port: must be between 1 and 65535, got 0", exact: true},
		{name: "service port too big", data: svc("  ports:\n  - port: 65536\n"),
			want: "bad.yaml:6: Service demo/s: spec.ports[0].port: must be between 1 and 65535, got 65536", exact: true},
		{name: "bad service protocol", data: svc("  ports:\n  - port: 80\n    protocol: tcp\n"),
			want: `bad.yaml:7: Service demo/s: spec.ports[0].protocol: must be TCP, UDP or SCTP, got "tcp"`, exact: true},
		{name: "bad target port number", data: svc("  ports:\n  - port: 80\n    targetPort: 99999\n"),
			want: "bad.yaml:7: Service demo/s: spec.ports[0].targetPort: must be between 1 and 65535, got 99999", exact: true},
		{name: "bad target port name", data: svc("  ports:\n  - port: 80\n    targetPort: http_port\n"),
			want: `bad.yaml:7: Service demo/s: spec.ports[0].targetPort: must be a port number or an IANA port name, got "http_port": `},
		{name: "unnamed port", data: svc("  ports:\n  - {name: a, port: 80}\n  - port: 81\n"),
			want: "bad.yaml:7: Service demo/s: spec.ports[1].name: is required when a Service has more than one port", exact: true},
		{name: "bad selector", data: svc("  selector: {app: \"a b\"}\n  ports: [{port: 80}]\n"),
			want: `bad.yaml:5: Service demo/s: spec.selector[app]: invalid label value "a b": `},

		// Istio and Gateway API structure.
		{name: "bad CIDR", data: ap("  rules:\n  - from:\n    - source:\n        ipBlocks: [10.0.0.0/33]\n"),
			want: `bad.yaml:8: AuthorizationPolicy demo/a: spec.rules[0].from[0].source.ipBlocks[0]: invalid CIDR "10.0.0.0/33"`, exact: true},
		{name: "bad policy port", data: ap("  rules:\n  - to:\n    - operation:\n        ports: [\"http\"]\n"),
			want: `bad.yaml:8: AuthorizationPolicy demo/a: spec.rules[0].to[0].operation.ports[0]: must be a port number between 1 and 65535, got "http"`, exact: true},
		{name: "policy port zero", data: ap("  rules:\n  - to:\n    - operation:\n        ports:\n        - \"80\"\n        - \"0\"\n"),
			want: `bad.yaml:10: AuthorizationPolicy demo/a: spec.rules[0].to[0].operation.ports[1]: must be a port number between 1 and 65535, got "0"`, exact: true},
		{name: "empty principal", data: ap("  rules:\n  - from:\n    - source:\n        principals: [\"\"]\n"),
			want: `bad.yaml:8: AuthorizationPolicy demo/a: spec.rules[0].from[0].source.principals[0]: must not be empty`, exact: true},
		{name: "bad policy selector label", data: ap("  selector:\n    matchLabels:\n      app: \"!\"\n"),
			want: `bad.yaml:7: AuthorizationPolicy demo/a: spec.selector.matchLabels[app]: invalid label value "!": `},
		{name: "portLevelMtls without selector", data: "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: a, namespace: demo}\nspec:\n  portLevelMtls:\n    8080: {mode: DISABLE}\n",
			want: "bad.yaml:5: PeerAuthentication demo/a: spec.portLevelMtls: requires a workload selector", exact: true},
		{name: "gateway listener port", data: "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: g, namespace: demo}\nspec:\n  gatewayClassName: istio-waypoint\n  listeners:\n  - name: mesh\n    port: 0\n    protocol: HBONE\n",
			want: "bad.yaml:8: Gateway demo/g: spec.listeners[0].port: must be between 1 and 65535, got 0", exact: true},
		{name: "route backend without name", data: "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: demo}\nspec:\n  rules:\n  - backendRefs:\n    - port: 80\n",
			want: "bad.yaml:7: HTTPRoute demo/r: spec.rules[0].backendRefs[0].name: is required", exact: true},

		// Duplicates.
		{name: "duplicate in one file", data: "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: x\n",
			want: "bad.yaml:8: Namespace x: metadata.name: duplicate object: also defined at "},
		{name: "v1 and v1beta1 of one policy", data: ap("  action: DENY\n") + "---\napiVersion: security.istio.io/v1beta1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: demo}\n",
			want: "bad.yaml:9: AuthorizationPolicy demo/a: metadata.name: duplicate object: also defined at "},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			writeFile(t, dir, "bad.yaml", tc.data)
			writeFile(t, dir, "good.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: good}\n")
			s, err := LoadDir(dir)
			if err == nil {
				t.Fatal("LoadDir accepted bad input")
			}
			errs := Errors(err)
			if len(errs) != 1 {
				t.Fatalf("got %d errors, want 1: %v", len(errs), err)
			}
			msg, ok := strings.CutPrefix(errs[0].Error(), dir+string(filepath.Separator))
			if !ok {
				t.Fatalf("error %q does not start with the file's path", errs[0].Error())
			}
			if tc.exact && msg != tc.want {
				t.Errorf("error\n got %q\nwant %q", msg, tc.want)
			}
			if !tc.exact && !strings.HasPrefix(msg, tc.want) {
				t.Errorf("error\n got %q\nwant prefix %q", msg, tc.want)
			}
			if _, ok := s.Get(Key{Kind: "Namespace", Name: "good"}); !ok {
				t.Error("a bad file stopped a good one from loading")
			}
			if n := s.Len(); n != 1 {
				t.Errorf("snapshot has %d objects, want only the good file's", n)
			}
		})
	}
}

func TestManyErrorsInOneFile(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "bad.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec:\n  clusterIP: nope\n  ports:\n  - {name: a, port: 0}\n  - {name: b, port: 80, protocol: ICMP}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: ok}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c, imagee: x}]}\n")
	s, err := LoadDir(dir)
	errs := Errors(err)
	var got []string
	for _, e := range errs {
		got = append(got, fmt.Sprintf("%d %s %s", e.Line, e.Kind, e.Field))
	}
	want := []string{"5 Service spec.clusterIP", "7 Service spec.ports[0].port", "8 Service spec.ports[1].protocol", "17 Pod spec.containers[0].imagee"}
	if !slices.Equal(got, want) {
		t.Errorf("errors = %q, want %q (%v)", got, want, err)
	}
	if s.Len() != 0 {
		t.Errorf("a file with errors contributed %d objects", s.Len())
	}
	var e *Error
	if !errors.As(err, &e) || e.File != filepath.Join(dir, "bad.yaml") {
		t.Errorf("errors.As(*Error) = %v", e)
	}
}

func TestDuplicateAcrossFiles(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "a.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n")
	writeFile(t, dir, "b.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: y}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n")
	s, err := LoadDir(dir)
	want := filepath.Join(dir, "b.yaml") + ":7: Namespace x: metadata.name: duplicate object: also defined at " + filepath.Join(dir, "a.yaml") + ":3"
	if err == nil || err.Error() != want {
		t.Fatalf("got error %v\nwant %s", err, want)
	}
	if _, ok := s.Get(Key{Kind: "Namespace", Name: "x"}); !ok {
		t.Error("the first file's object was not loaded")
	}
	if _, ok := s.Get(Key{Kind: "Namespace", Name: "y"}); ok {
		t.Error("a refused file's other objects were loaded")
	}
}

func TestMissingDir(t *testing.T) {
	s, err := LoadDir(filepath.Join(t.TempDir(), "nope"))
	if err == nil || !strings.Contains(err.Error(), "reading config directory") {
		t.Fatalf("want a clear error for a missing directory, got %v", err)
	}
	if s == nil || s.Len() != 0 {
		t.Fatalf("snapshot = %v, want empty and non-nil", s)
	}
}

func TestErrorText(t *testing.T) {
	tests := []struct {
		e    Error
		want string
	}{
		{Error{File: "a.yaml", Line: 3, Kind: "Pod", Namespace: "demo", Name: "p", Field: "spec", Msg: "bad"}, "a.yaml:3: Pod demo/p: spec: bad"},
		{Error{File: "a.yaml", Line: 3, Kind: "Namespace", Name: "n", Msg: "bad"}, "a.yaml:3: Namespace n: bad"},
		{Error{File: "a.yaml", Kind: "Pod", Namespace: "demo", Field: "metadata.name", Msg: "is required"}, "a.yaml: Pod: metadata.name: is required"},
		{Error{File: "a.yaml", Line: 1, Msg: "invalid YAML: x"}, "a.yaml:1: invalid YAML: x"},
	}
	for _, tc := range tests {
		if got := tc.e.Error(); got != tc.want {
			t.Errorf("Error() = %q, want %q", got, tc.want)
		}
	}
}

// watcher runs a Source on dir and collects its events.
type watcher struct {
	t    *testing.T
	dir  string
	src  *Source
	ch   chan Event
	done chan error
}

func startWatch(t *testing.T, dir string) *watcher {
	t.Helper()
	src := New(dir, nil)
	src.Debounce = 20 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	w := &watcher{t: t, dir: dir, src: src, ch: make(chan Event, 64), done: make(chan error, 1)}
	go func() { w.done <- src.Run(ctx, w.ch) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-w.done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Run did not return after cancel")
		}
	})
	return w
}

// next collects exactly want events (each wait bounded) and checks that no
// more follow within a quiet period. It returns them as "Type Key" strings.
func (w *watcher) next(want int) []string {
	w.t.Helper()
	var got []string
	deadline := time.After(5 * time.Second)
	for len(got) < want {
		select {
		case ev := <-w.ch:
			if ev.Object == nil || KeyOf(ev.Object) != ev.Key {
				w.t.Fatalf("event %v %v has object %v", ev.Type, ev.Key, ev.Object)
			}
			got = append(got, ev.Type.String()+" "+ev.Key.String())
		case err := <-w.done:
			w.t.Fatalf("Run returned early: %v", err)
		case <-deadline:
			w.t.Fatalf("timed out: got events %q, want %d", got, want)
		}
	}
	select {
	case ev := <-w.ch:
		w.t.Fatalf("unexpected extra event %v %v after %q", ev.Type, ev.Key, got)
	case <-time.After(250 * time.Millisecond):
	}
	return got
}

func (w *watcher) expect(want ...string) {
	w.t.Helper()
	if got := w.next(len(want)); !slices.Equal(got, want) {
		w.t.Fatalf("events = %q, want %q", got, want)
	}
}

// waitUntil polls cond for up to five seconds.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
	}
}

// write writes a file and waits until the Source has reloaded after it.
func (w *watcher) write(name, data string) {
	w.t.Helper()
	before := w.src.Snapshot()
	writeFile(w.t, w.dir, name, data)
	waitUntil(w.t, "the source reloads", func() bool { return w.src.Snapshot() != before })
}

func TestWatch(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "ns.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n")
	writeFile(t, dir, "broken.yaml", "kind: [\n")
	w := startWatch(t, dir)
	w.expect("Added Namespace a")
	if errs := w.src.Errors(); len(errs) != 1 || !strings.Contains(errs[0].Error(), "broken.yaml:1: invalid YAML") {
		t.Fatalf("Errors() = %v, want the broken.yaml problem", errs)
	}
	if err := os.Remove(filepath.Join(dir, "broken.yaml")); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the broken file's error goes", func() bool { return len(w.src.Errors()) == 0 })
	w.expect()

	// A new file: Added.
	writeFile(t, dir, "sa.yaml", "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: s, namespace: a}\n")
	w.expect("Added ServiceAccount a/s")

	// An edit that changes only labels: Updated, with the new object.
	writeFile(t, dir, "ns.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: a, labels: {istio.io/dataplane-mode: ambient}}\n")
	w.expect("Updated Namespace a")
	if o, _ := w.src.Snapshot().Get(Key{Kind: "Namespace", Name: "a"}); o.GetLabels()["istio.io/dataplane-mode"] != "ambient" {
		t.Fatalf("snapshot has labels %v", o.GetLabels())
	}

	// An edit that changes nothing the objects say: no event.
	w.write("ns.yaml", "# the same, reformatted\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n  labels:\n    istio.io/dataplane-mode: ambient\n")
	w.expect()

	// The file turns invalid: no deletion, old objects kept, error reported.
	w.write("ns.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: a, labels: {x: [}\n")
	w.expect()
	if errs := w.src.Errors(); len(errs) != 1 || !strings.Contains(errs[0].Error(), "ns.yaml:3: invalid YAML") {
		t.Fatalf("Errors() = %v, want the ns.yaml problem", errs)
	}
	if _, ok := w.src.Snapshot().Get(Key{Kind: "Namespace", Name: "a"}); !ok {
		t.Fatal("a bad edit removed the file's objects")
	}
	// Invalid in another way (a value, not the syntax): still nothing.
	w.write("ns.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: a, labels: {x: \"y z\"}}\n")
	w.expect()
	if errs := w.src.Errors(); len(errs) != 1 || !strings.Contains(errs[0].Error(), "metadata.labels[x]") {
		t.Fatalf("Errors() = %v, want the label problem", errs)
	}

	// Fixed with the content it had before: nothing changes, error gone.
	w.write("ns.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: a, labels: {istio.io/dataplane-mode: ambient}}\n")
	w.expect()
	if errs := w.src.Errors(); len(errs) != 0 {
		t.Fatalf("Errors() after fix = %v", errs)
	}
	// Fixed with new content: Updated.
	writeFile(t, dir, "ns.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: a, labels: {istio.io/dataplane-mode: none}}\n")
	w.expect("Updated Namespace a")

	// Moving an object to another file is an update, not a delete and add
	// (whether or not a reload sees the moment it is in both files).
	writeFile(t, dir, "sa2.yaml", "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: s, namespace: a}\n")
	writeFile(t, dir, "sa.yaml", "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: t, namespace: a}\n")
	w.expect("Updated ServiceAccount a/s", "Added ServiceAccount a/t")
	if file, _, _ := w.src.Snapshot().Origin(Key{Kind: "ServiceAccount", Namespace: "a", Name: "s"}); filepath.Base(file) != "sa2.yaml" {
		t.Fatalf("moved object's origin = %s", file)
	}

	// Delete a file: Deleted with the last known object.
	if err := os.Remove(filepath.Join(dir, "sa.yaml")); err != nil {
		t.Fatal(err)
	}
	w.expect("Deleted ServiceAccount a/t")
	if errs := w.src.Errors(); len(errs) != 0 {
		t.Fatalf("Errors() = %v", errs)
	}
}

// TestErrorsChanged: ErrorsChanged signals each change to Errors (a file
// rejected, its problem changed, fixed, removed while broken, the directory
// gone) and stays quiet on reloads that leave Errors as they were.
func TestErrorsChanged(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "ns.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n")
	w := startWatch(t, dir)
	w.expect("Added Namespace a")
	changed := w.src.ErrorsChanged()
	quiet := func(what string) {
		t.Helper()
		select {
		case <-changed:
			t.Fatalf("ErrorsChanged signalled after %s; Errors() = %v", what, w.src.Errors())
		case <-time.After(250 * time.Millisecond):
		}
	}
	// signalled waits for a signal after which Errors satisfies ok.
	signalled := func(what string, ok func([]error) bool) {
		t.Helper()
		deadline := time.After(5 * time.Second)
		for {
			select {
			case <-changed:
				if ok(w.src.Errors()) {
					return
				}
			case <-deadline:
				t.Fatalf("no ErrorsChanged signal for %s; Errors() = %v", what, w.src.Errors())
			}
		}
	}
	one := func(want string) func([]error) bool {
		return func(errs []error) bool { return len(errs) == 1 && strings.Contains(errs[0].Error(), want) }
	}
	none := func(errs []error) bool { return len(errs) == 0 }
	quiet("a clean first load")

	writeFile(t, dir, "bad.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: b}\nspec: {bogus: 1}\n")
	signalled("a rejected file", one("bad.yaml:4: Namespace b: spec.bogus: unknown field"))
	w.write("bad.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: b}\nspec: {bogus: 1}\n# the same problem\n")
	quiet("a reload with the same problem")
	writeFile(t, dir, "bad.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: b}\nspec: {}\nstatus: {bogus: 1}\n")
	signalled("another problem in the file", one("bad.yaml:5: Namespace b: status.bogus: unknown field"))
	writeFile(t, dir, "bad.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: b}\n")
	signalled("the fix", none)
	w.expect("Added Namespace b")
	quiet("the fix")

	writeFile(t, dir, "bad.yaml", "kind: [\n")
	signalled("a broken file", one("bad.yaml:1: invalid YAML"))
	if err := os.Remove(filepath.Join(dir, "bad.yaml")); err != nil {
		t.Fatal(err)
	}
	signalled("the removal of the broken file", none)
	w.expect("Deleted Namespace b")

	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	signalled("the directory's removal", one("reading config directory"))
	w.expect() // an unreadable directory keeps the loaded objects
}

// TestWatchDuplicateResolves: a file refused because another file has the
// same object is accepted once the other file lets go of it, without being
// touched itself.
func TestWatchDuplicateResolves(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "b.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: x, labels: {from: b}}\n")
	w := startWatch(t, dir)
	w.expect("Added Namespace x")

	// a.yaml sorts first but arrives later: the loaded b.yaml keeps x.
	w.write("a.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: x, labels: {from: a}}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: y}\n")
	w.expect()
	errs := w.src.Errors()
	if len(errs) != 1 || !strings.Contains(errs[0].Error(), "a.yaml:3: Namespace x: metadata.name: duplicate object: also defined at "+filepath.Join(dir, "b.yaml")+":3") {
		t.Fatalf("Errors() = %v, want the duplicate", errs)
	}

	// b.yaml lets go of x: a.yaml's version of x and its y come in.
	writeFile(t, dir, "b.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: z}\n")
	w.expect("Updated Namespace x", "Added Namespace y", "Added Namespace z")
	if o, _ := w.src.Snapshot().Get(Key{Kind: "Namespace", Name: "x"}); o.GetLabels()["from"] != "a" {
		t.Fatalf("x has labels %v, want a.yaml's", o.GetLabels())
	}
	if errs := w.src.Errors(); len(errs) != 0 {
		t.Fatalf("Errors() = %v", errs)
	}

	// Deleting every file deletes every object.
	for _, f := range []string{"a.yaml", "b.yaml"} {
		if err := os.Remove(filepath.Join(dir, f)); err != nil {
			t.Fatal(err)
		}
	}
	got := w.next(3) // one reload or two, in either order
	slices.Sort(got)
	if want := []string{"Deleted Namespace x", "Deleted Namespace y", "Deleted Namespace z"}; !slices.Equal(got, want) {
		t.Fatalf("events = %q, want %q", got, want)
	}
	if n := w.src.Snapshot().Len(); n != 0 {
		t.Fatalf("snapshot has %d objects after deleting every file", n)
	}
}

func TestWatchRescan(t *testing.T) {
	// Without file system events (Debounce far beyond the test), the
	// periodic rescan still finds changes.
	dir := t.TempDir()
	src := New(dir, nil)
	src.Debounce, src.Rescan = time.Hour, 50*time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ch := make(chan Event, 4)
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, ch) }()
	writeFile(t, dir, "ns.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n")
	select {
	case ev := <-ch:
		if ev.Type != Added || ev.Key != (Key{Kind: "Namespace", Name: "a"}) {
			t.Fatalf("event %v %v", ev.Type, ev.Key)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("rescan did not pick up the new file")
	}
	if err := src.Run(ctx, ch); err == nil || !strings.Contains(err.Error(), "already running") {
		t.Errorf("second concurrent Run = %v", err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return")
	}
}

// TestHasSynced: the source says it synced once the initial objects were
// all sent, and not before (the controller holds its first push until then).
func TestHasSynced(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "ns.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: b}\n")
	src := New(dir, nil)
	var _ config.Syncer = src
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ch := make(chan Event) // unbuffered: Run blocks on each send
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, ch) }()
	<-ch
	if src.HasSynced() {
		t.Fatal("synced with an initial event still to send")
	}
	<-ch
	deadline := time.Now().Add(5 * time.Second)
	for !src.HasSynced() {
		if time.Now().After(deadline) {
			t.Fatal("not synced after every initial event")
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if src.HasSynced() {
		t.Error("still synced after Run returned")
	}
}

func TestRunMissingDir(t *testing.T) {
	src := New(filepath.Join(t.TempDir(), "nope"), nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := src.Run(ctx, make(chan Event, 1)); err == nil {
		t.Fatal("Run on a missing directory succeeded")
	}
}

func TestEventTypeString(t *testing.T) {
	for ty, want := range map[EventType]string{Added: "Added", Updated: "Updated", Deleted: "Deleted", 0: "EventType(0)"} {
		if got := ty.String(); got != want {
			t.Errorf("%d.String() = %q, want %q", int(ty), got, want)
		}
	}
}

func BenchmarkLoad(b *testing.B) {
	dir := b.TempDir()
	var sb strings.Builder
	for i := range 1000 {
		fmt.Fprintf(&sb, "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p%d\n  namespace: demo\n  labels: {app: a%d}\nspec:\n  nodeName: node1\n  serviceAccountName: sa\n  containers:\n  - name: main\n    command: [ambit, sample, echo]\n    ports: [{containerPort: 8080, name: http}]\n    env: [{name: A, value: b}]\n---\n", i, i%10)
		fmt.Fprintf(&sb, "apiVersion: v1\nkind: Service\nmetadata: {name: s%d, namespace: demo}\nspec:\n  selector: {app: a%d}\n  ports: [{name: http, port: 80, targetPort: http}]\n---\n", i, i%10)
	}
	if err := os.WriteFile(filepath.Join(dir, "big.yaml"), []byte(sb.String()), 0o644); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(sb.Len()))
	for b.Loop() {
		s, err := LoadDir(dir)
		if err != nil || s.Len() != 2000 {
			b.Fatalf("LoadDir: %d objects, %v", s.Len(), err)
		}
	}
}

func FuzzLoad(f *testing.F) {
	f.Add([]byte(goodManifests))
	f.Add([]byte("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c, ports: [{containerPort: 1}]}]}\n"))
	f.Add([]byte("a: &x [*x]\n"))
	f.Add([]byte("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: a}\nspec: {portLevelMtls: {0: {}}}\n"))
	f.Add([]byte("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a}\nspec: {action: 1, rules: [{to: [{operation: {ports: ['0x10']}}]}]}\n"))
	f.Add([]byte("apiVersion: v1\nkind: Service\nmetadata: {name: s, <<: {namespace: x}}\nspec: {ports: [{port: !!int '80', targetPort: 1e3}]}\n"))
	f.Add([]byte("---\n---\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		objs, errs := newDecoder().decodeFile("fuzz.yaml", data)
		if len(errs) == 0 {
			for _, o := range objs {
				if o.obj.GetName() == "" {
					t.Fatalf("accepted an object without a name: %q", data)
				}
				if k := KeyOf(o.obj); k.Kind == "" {
					t.Fatalf("accepted an object without a kind: %q", data)
				}
			}
		}
		for _, err := range errs {
			var e *Error
			if !errors.As(err, &e) || e.File != "fuzz.yaml" || !strings.HasPrefix(err.Error(), "fuzz.yaml") {
				t.Fatalf("error without file name: %v", err)
			}
		}
	})
}

func TestKeyOfWithoutTypeMeta(t *testing.T) {
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "demo"}}
	if got, want := KeyOf(pod), (Key{Kind: "Pod", Namespace: "demo", Name: "p"}); got != want {
		t.Errorf("KeyOf = %v, want %v", got, want)
	}
	ap := &securityv1.AuthorizationPolicy{ObjectMeta: metav1.ObjectMeta{Name: "a", Namespace: "demo"}}
	if got := KeyOf(ap).Kind; got != "AuthorizationPolicy" {
		t.Errorf("KeyOf(AuthorizationPolicy).Kind = %q", got)
	}
}
