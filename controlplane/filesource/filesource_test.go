package filesource

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	securityv1beta1 "istio.io/api/security/v1beta1"
)

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
  containers:
  - name: main
    image: ambit
    command: [ambit, sample, tcp-echo]
    ports: [{containerPort: 9000}]
    env:
    - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: demo}
spec:
  selector: {app: echo}
  ports:
  - {name: http, port: 8080, targetPort: 8080}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-client, namespace: demo}
spec:
  selector: {matchLabels: {app: echo}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/demo/sa/client], ipBlocks: [10.0.0.0/8]}}]
    to: [{operation: {ports: ["8080"]}}]
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
  rules: [{backendRefs: [{name: echo, port: 8080}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: echo-grpc, namespace: demo}
spec:
  parentRefs: [{group: "", kind: Service, name: echo}]
  rules: [{backendRefs: [{name: echo, port: 8080}]}]
---
apiVersion: ambit.dev/v1alpha1
kind: LocalCluster
metadata: {name: local}
spec: {nodes: 3}
`

func writeFile(t *testing.T, dir, name, data string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestLoadGood(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "all.yaml", goodManifests)
	writeFile(t, dir, "README.md", "not a manifest")
	writeFile(t, dir, ".hidden.yaml", "garbage: [")
	s, err := LoadDir(dir)
	if err != nil {
		t.Fatalf("LoadDir: %v", err)
	}
	if got := s.Len(); got != 10 {
		t.Fatalf("loaded %d objects, want 10", got)
	}
	if ns := s.Namespaces(); len(ns) != 1 || ns[0].Labels["istio.io/dataplane-mode"] != "ambient" {
		t.Errorf("namespace not loaded with its labels: %+v", ns)
	}
	pods := s.Pods()
	if len(pods) != 1 || pods[0].Spec.NodeName != "node1" || pods[0].Spec.Containers[0].Env[0].ValueFrom.FieldRef.FieldPath != "metadata.name" {
		t.Errorf("pod not decoded: %+v", pods)
	}
	if svcs := s.Services(); len(svcs) != 1 || svcs[0].Spec.Ports[0].TargetPort.IntValue() != 8080 {
		t.Errorf("service not decoded: %+v", svcs)
	}
	aps := s.AuthorizationPolicies()
	if len(aps) != 1 || aps[0].Spec.GetAction() != securityv1beta1.AuthorizationPolicy_ALLOW ||
		aps[0].Spec.GetRules()[0].GetFrom()[0].GetSource().GetPrincipals()[0] != "cluster.local/ns/demo/sa/client" {
		t.Errorf("authorization policy not decoded: %+v", aps)
	}
	pas := s.PeerAuthentications()
	if len(pas) != 1 || pas[0].Spec.GetMtls().GetMode() != securityv1beta1.PeerAuthentication_MutualTLS_STRICT ||
		pas[0].Spec.GetPortLevelMtls()[8080].GetMode() != securityv1beta1.PeerAuthentication_MutualTLS_PERMISSIVE {
		t.Errorf("peer authentication (v1beta1) not decoded: %+v", pas)
	}
	if len(s.Gateways()) != 1 || len(s.HTTPRoutes()) != 1 || len(s.GRPCRoutes()) != 1 || len(s.ServiceAccounts()) != 1 {
		t.Errorf("gateway API objects or service account missing")
	}
	if lc, ok := s.LocalCluster(); !ok || lc.Spec.Nodes != 3 {
		t.Errorf("LocalCluster not decoded: %+v", lc)
	}
	if _, line, ok := s.Origin(Key{Kind: "Pod", Namespace: "demo", Name: "client"}); !ok || line != 12 {
		t.Errorf("pod origin line = %d, want 12", line)
	}
}

func TestDefaultNamespace(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "p.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c, command: [sleep, '1']}]}\n")
	s, err := LoadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := s.Get(Key{Kind: "Pod", Namespace: "default", Name: "p"}); !ok {
		t.Fatal("pod without namespace not placed in default")
	}
}

func TestLoadBad(t *testing.T) {
	pod := func(extra string) string {
		return "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  namespace: demo\nspec:\n  containers:\n  - name: c\n    command: [sleep]\n" + extra
	}
	tests := []struct {
		name string
		data string
		want []string // substrings of the one expected error
	}{
		{"syntax error", "apiVersion: v1\nkind: Pod\nmetadata: {name: [\n", []string{"bad.yaml:", "invalid YAML"}},
		{"tab indentation", "apiVersion: v1\nkind: Pod\nmetadata:\n\tname: x\n", []string{"bad.yaml:4:", "invalid YAML"}},
		{"not a mapping", "- a\n- b\n", []string{"bad.yaml:1:", "must be a YAML mapping"}},
		{"missing kind", "apiVersion: v1\nmetadata: {name: x}\n", []string{"bad.yaml:1:", "kind: is required"}},
		{"missing apiVersion", "kind: Pod\nmetadata: {name: x}\n", []string{"apiVersion: is required"}},
		{"unknown kind", "apiVersion: v1\nkind: Deployment\nmetadata: {name: x}\n", []string{"bad.yaml:2:", `unknown kind "Deployment"`, "supported:"}},
		{"kind under wrong apiVersion", "apiVersion: v2\nkind: Pod\nmetadata: {name: x}\n", []string{`unknown kind "Pod" (apiVersion "v2")`}},
		{"unknown top-level field", "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\nspecc: {}\n", []string{"bad.yaml:4: Namespace x: specc: unknown field"}},
		{"unknown nested field", pod("    imagee: busybox\n"), []string{"bad.yaml:10: Pod demo/p: spec.containers[0].imagee: unknown field \"imagee\""}},
		{"unknown field in istio spec", "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: demo}\nspec:\n  rules:\n  - from:\n    - source:\n        principal: [x]\n", []string{"bad.yaml:8: AuthorizationPolicy demo/a: spec.rules[0].from[0].source.principal: unknown field"}},
		{"bad enum in istio spec", "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: demo}\nspec:\n  action: ALOW\n", []string{"bad.yaml:5:", "spec.action: unknown value", "ALLOW, DENY"}},
		{"bad CIDR", "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: demo}\nspec:\n  rules:\n  - from:\n    - source:\n        ipBlocks: [10.0.0.0/33]\n", []string{"bad.yaml:8:", "spec.rules[0].from[0].source.ipBlocks[0]: invalid CIDR"}},
		{"bad policy port", "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: demo}\nspec:\n  rules:\n  - to:\n    - operation:\n        ports: [\"http\"]\n", []string{"spec.rules[0].to[0].operation.ports[0]: must be a port number"}},
		{"empty principal", "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: demo}\nspec:\n  rules:\n  - from:\n    - source:\n        principals: [\"\"]\n", []string{"principals[0]: must not be empty"}},
		{"bad container port", pod("    ports:\n    - containerPort: 70000\n"), []string{"bad.yaml:11: Pod demo/p: spec.containers[0].ports[0].containerPort: must be between 1 and 65535, got 70000"}},
		{"string for int", pod("    ports:\n    - containerPort: eighty\n"), []string{"bad.yaml:11:", "containerPort: expected an integer"}},
		{"bad restart policy", pod("  restartPolicy: Sometimes\n"), []string{"spec.restartPolicy: must be Always, OnFailure or Never"}},
		{"bad clusterIP", "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: demo}\nspec:\n  clusterIP: 10.96.0.300\n  ports: [{port: 80}]\n", []string{"bad.yaml:5: Service demo/s: spec.clusterIP: must be a valid IP address"}},
		{"bad service port", "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: demo}\nspec:\n  ports:\n  - port: 0\n", []string{"bad.yaml:6:", "spec.ports[0].port: must be between 1 and 65535"}},
		{"bad target port", "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: demo}\nspec:\n  ports:\n  - port: 80\n    targetPort: 99999\n", []string{"bad.yaml:7:", "spec.ports[0].targetPort: must be between 1 and 65535"}},
		{"bad label value", "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: x\n  labels:\n    app: \"not ok!\"\n", []string{"bad.yaml:6: Namespace x: metadata.labels[app]: invalid label value"}},
		{"bad label key", "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: x\n  labels:\n    \"-bad\": ok\n", []string{"bad.yaml:6:", "invalid label key"}},
		{"bad name", "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: Demo_NS\n", []string{"bad.yaml:4: Namespace Demo_NS: metadata.name: invalid name"}},
		{"missing name", "apiVersion: v1\nkind: ServiceAccount\nmetadata: {namespace: demo}\n", []string{"metadata.name: is required"}},
		{"namespace on cluster-scoped", "apiVersion: v1\nkind: Namespace\nmetadata: {name: x, namespace: y}\n", []string{"metadata.namespace: must not be set"}},
		{"no containers", "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: []}\n", []string{"spec.containers: at least one container is required"}},
		{"unsupported fieldRef", pod("    env:\n    - name: X\n      valueFrom: {fieldRef: {fieldPath: status.hostIP}}\n"), []string{"spec.containers[0].env[0].valueFrom.fieldRef.fieldPath: unsupported field"}},
		{"duplicate in one file", "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n", []string{"bad.yaml:5: Namespace x: duplicate object: also defined at", "bad.yaml:1"}},
		{"portLevelMtls without selector", "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: a, namespace: demo}\nspec:\n  portLevelMtls:\n    8080: {mode: DISABLE}\n", []string{"bad.yaml:5:", "spec.portLevelMtls: requires a workload selector"}},
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
			msg := errs[0].Error()
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not contain %q", msg, w)
				}
			}
			if !strings.HasPrefix(msg, filepath.Join(dir, "bad.yaml")) {
				t.Errorf("error %q does not start with the file name", msg)
			}
			if _, ok := s.Get(Key{Kind: "Namespace", Name: "good"}); !ok {
				t.Error("a bad file took down a good one")
			}
			if tc.name != "duplicate in one file" && s.Len() != 1 {
				t.Errorf("snapshot has %d objects, want only the good file's", s.Len())
			}
		})
	}
}

func TestDuplicateAcrossFiles(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "a.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n")
	writeFile(t, dir, "b.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: y}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n")
	s, err := LoadDir(dir)
	if err == nil || !strings.Contains(err.Error(), "b.yaml:5: Namespace x: duplicate object: also defined at "+filepath.Join(dir, "a.yaml")+":1") {
		t.Fatalf("want duplicate error naming both places, got %v", err)
	}
	if _, ok := s.Get(Key{Kind: "Namespace", Name: "y"}); ok {
		t.Error("a refused file's other objects were loaded")
	}
}

func TestMissingDir(t *testing.T) {
	_, err := LoadDir(filepath.Join(t.TempDir(), "nope"))
	if err == nil || !strings.Contains(err.Error(), "reading config directory") {
		t.Fatalf("want a clear error for a missing directory, got %v", err)
	}
}

// nextEvents collects events until none arrive for quiet, or max elapses.
func nextEvents(t *testing.T, ch <-chan Event, want int) []Event {
	t.Helper()
	var got []Event
	deadline := time.After(5 * time.Second)
	for len(got) < want {
		select {
		case ev := <-ch:
			got = append(got, ev)
		case <-deadline:
			t.Fatalf("timed out: got %d events %v, want %d", len(got), got, want)
		}
	}
	select {
	case ev := <-ch:
		t.Fatalf("unexpected extra event %v %v", ev.Type, ev.Key)
	case <-time.After(300 * time.Millisecond):
	}
	return got
}

func TestWatch(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "ns.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n")
	src := New(dir, nil)
	src.Debounce = 20 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch := make(chan Event, 16)
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, ch) }()

	evs := nextEvents(t, ch, 1)
	if evs[0].Type != Added || evs[0].Key != (Key{Kind: "Namespace", Name: "a"}) {
		t.Fatalf("initial event = %v %v", evs[0].Type, evs[0].Key)
	}

	// A new file: Added.
	writeFile(t, dir, "sa.yaml", "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: s, namespace: a}\n")
	if evs := nextEvents(t, ch, 1); evs[0].Type != Added || evs[0].Key.Kind != "ServiceAccount" {
		t.Fatalf("want Added ServiceAccount, got %v %v", evs[0].Type, evs[0].Key)
	}

	// A label change: Updated.
	writeFile(t, dir, "ns.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: a, labels: {istio.io/dataplane-mode: ambient}}\n")
	evs = nextEvents(t, ch, 1)
	if evs[0].Type != Updated || evs[0].Object.GetLabels()["istio.io/dataplane-mode"] != "ambient" {
		t.Fatalf("want Updated with the label, got %v %v", evs[0].Type, evs[0].Object.GetLabels())
	}

	// The file turns bad: no events, old objects kept, error reported.
	writeFile(t, dir, "ns.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: a, labels: {x: [}\n")
	nextEvents(t, ch, 0)
	if errs := src.Errors(); len(errs) != 1 || !strings.Contains(errs[0].Error(), "ns.yaml") {
		t.Fatalf("Errors() = %v, want the ns.yaml problem", errs)
	}
	if _, ok := src.Snapshot().Get(Key{Kind: "Namespace", Name: "a"}); !ok {
		t.Fatal("a bad edit removed the file's objects")
	}

	// Fixed with the same content as before: nothing changes, error gone.
	writeFile(t, dir, "ns.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: a, labels: {istio.io/dataplane-mode: ambient}}\n")
	nextEvents(t, ch, 0)
	if errs := src.Errors(); len(errs) != 0 {
		t.Fatalf("Errors() after fix = %v", errs)
	}

	// Moving an object between files is not a delete and add.
	writeFile(t, dir, "both.yaml", "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: s, namespace: a}\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {name: t, namespace: a}\n")
	if err := os.Remove(filepath.Join(dir, "sa.yaml")); err != nil {
		t.Fatal(err)
	}
	evs = nextEvents(t, ch, 1)
	if evs[0].Type != Added || evs[0].Key.Name != "t" {
		t.Fatalf("want only Added t, got %v %v", evs[0].Type, evs[0].Key)
	}

	// Delete a file: Deleted with the last known object.
	if err := os.Remove(filepath.Join(dir, "both.yaml")); err != nil {
		t.Fatal(err)
	}
	evs = nextEvents(t, ch, 2)
	for _, ev := range evs {
		if ev.Type != Deleted || ev.Object == nil {
			t.Fatalf("want Deleted with object, got %v %v", ev.Type, ev.Key)
		}
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}

func FuzzLoad(f *testing.F) {
	f.Add([]byte(goodManifests))
	f.Add([]byte("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c, ports: [{containerPort: 1}]}]}\n"))
	f.Add([]byte("a: &x [*x]\n"))
	f.Add([]byte("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: a}\nspec: {portLevelMtls: {0: {}}}\n"))
	f.Add([]byte("---\n---\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		objs, errs := decodeFile("fuzz.yaml", data)
		if len(errs) == 0 {
			for _, o := range objs {
				if o.obj.GetName() == "" {
					t.Fatalf("accepted an object without a name: %s", data)
				}
			}
		}
		for _, err := range errs {
			if !strings.HasPrefix(err.Error(), "fuzz.yaml") {
				t.Fatalf("error without file name: %v", err)
			}
		}
	})
}
