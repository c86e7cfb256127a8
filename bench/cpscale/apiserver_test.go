package main

import (
	"context"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// TestAPIServerSmallScale runs the API server variant at a tiny size
// against a real etcd and kube-apiserver (internal/kubetest; it fails when
// the binaries are missing): the mesh is created through the API, the
// Kubernetes source feeds the controller, both clients get the first
// push, each change written through the API reaches both, a new client
// gets everything, and at the end every client holds exactly the model's
// state for the mesh's final state (Run fails otherwise).
func TestAPIServerSmallScale(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd, kube-apiserver, a control plane and a client process")
	}
	begin := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	spec := Spec{Pods: 50, Services: 5, Namespaces: 5, Nodes: 3, Waypoints: 1}
	logs := &lockedBuilder{}
	progress := slog.New(slog.NewTextHandler(logs, nil))
	res, err := Run(ctx, Options{Spec: spec, Changes: 5, Timeout: 15 * time.Second, Progress: progress,
		NewBackend: NewAPIServerBackend(t, APIServerOptions{Writers: 8, Progress: progress})})
	if err != nil {
		t.Fatalf("run: %v\n%s", err, logs.String())
	}
	t.Logf("whole test %s; setup %+v", time.Since(begin).Round(time.Millisecond), *res.Setup)
	if res.Mode != "apiserver" || !strings.Contains(res.Backend, "API server") {
		t.Errorf("backend %q mode %q", res.Backend, res.Mode)
	}
	// 50 pods + the waypoint's; 5 services + the waypoint's + the API
	// server's own default/kubernetes.
	if res.Expected.Workloads != 51 || res.Expected.Services != 7 || res.Expected.Policies == 0 {
		t.Errorf("expected %+v", res.Expected)
	}
	if res.Extra < 2 { // at least default/kubernetes and the namespace default
		t.Errorf("%d extra objects", res.Extra)
	}
	if !res.Verified.OK || !slices.Equal(res.Verified.Clients, []int{0, 1, 2}) || res.Verified.Addresses != 58 {
		t.Errorf("verification %+v", res.Verified)
	}
	if len(res.Changes.Items) != 5 {
		t.Fatalf("%d changes timed, want 5", len(res.Changes.Items))
	}
	for _, it := range res.Changes.Items {
		if len(it.ClientMs) != 2 || it.WriteMs <= 0 {
			t.Errorf("change %+v", it)
		}
	}
	if res.NewClient.Seconds <= 0 || res.FirstPush.Seconds <= 0 || res.FirstPush.SourceSyncedSeconds <= 0 {
		t.Errorf("first push %+v, new client %+v", res.FirstPush, res.NewClient)
	}
	st := res.Setup
	// The mesh's objects, 3 nodes and the waypoint's service account; a
	// request each, and one more per pod and node (the status).
	if st == nil || st.Objects != res.Objects+3+1 || st.Requests != st.Objects+51+3 || st.CRDs == 0 {
		t.Errorf("setup %+v (mesh objects %d)", st, res.Objects)
	}
	seen := map[string]int{}
	for _, p := range res.Processes {
		if p.RSSMB <= 0 || p.PID <= 0 {
			t.Errorf("process sample %+v", p)
		}
		seen[p.Name]++
	}
	if seen["etcd"] != 4 || seen["kube-apiserver"] != 4 {
		t.Errorf("process samples %v", seen)
	}
	if res.Rejections != 0 {
		t.Errorf("%d NACKs", res.Rejections)
	}
	report := render(res, "")
	for _, want := range []string{"Backend: API server", "kube-apiserver", "## Correctness", "the API write itself", "## Targets"} {
		if !strings.Contains(report, want) {
			t.Errorf("report lacks %q", want)
		}
	}
}

// TestDigestSeesContent: the verification's digest changes with any
// resource's content, not only with names.
func TestDigestSeesContent(t *testing.T) {
	m, err := Generate(Spec{Pods: 40, Services: 4, Namespaces: 2, Nodes: 2, Waypoints: 1})
	if err != nil {
		t.Fatal(err)
	}
	base, err := modelDigest(meshInputs(m, nil))
	if err != nil {
		t.Fatal(err)
	}
	again, _ := modelDigest(meshInputs(m, nil))
	if again.addressDigest != base.addressDigest || again.policyDigest != base.policyDigest {
		t.Fatal("the digest is not deterministic")
	}
	ch := m.PodChange(1) // a label: the canonical revision
	after, _ := modelDigest(meshInputs(m, nil))
	if after.addressDigest == base.addressDigest || after.addresses != base.addresses {
		t.Errorf("a change of %s (%s) left the address digest as it was", ch.Workload, ch.What)
	}
	if d := diffHashes(base.hashes, after.hashes); d != "differs "+ch.Workload {
		t.Errorf("diff %q", d)
	}
	// A service port: only the service's resource.
	m.Services[0] = m.Services[0].DeepCopy()
	m.Services[0].Spec.Ports = append(m.Services[0].Spec.Ports, corev1.ServicePort{Name: "extra", Port: 81})
	if svc, _ := modelDigest(meshInputs(m, nil)); svc.addressDigest == after.addressDigest {
		t.Error("a service port left the address digest as it was")
	}
	// A policy's rule.
	m.AuthorizationPolicies[0] = m.AuthorizationPolicies[0].DeepCopy()
	m.AuthorizationPolicies[0].Spec.Rules[0].From[0].Source.Namespaces = []string{"elsewhere"}
	if pol, _ := modelDigest(meshInputs(m, nil)); pol.policyDigest == after.policyDigest {
		t.Error("a policy change left the policy digest as it was")
	}
}

// lockedBuilder is a strings.Builder for loggers on several goroutines.
type lockedBuilder struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuilder) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuilder) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
