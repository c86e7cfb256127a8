package main

import (
	"context"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"
)

// TestMain lets the test binary serve as the client process, as the
// benchmark binary does.
func TestMain(m *testing.M) {
	if isClientProcess() {
		return
	}
	os.Exit(m.Run())
}

// TestSmallScale runs the benchmark's whole path at a small size: every
// workload, service and policy reaches both clients (Run checks the names
// by digest before it reports a first push), each change reaches both, a
// new client gets everything, and the first push is split into responses
// within the server's bound (set small here).
func TestSmallScale(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a control plane and a client process")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	spec := Spec{Pods: 2000, Services: 200, Namespaces: 20, Nodes: 10, Waypoints: 2}
	var logs strings.Builder
	// A small bound, so that the first push is split as a large mesh's is.
	const bound = 256 << 10
	res, err := Run(ctx, Options{Spec: spec, Changes: 10, Timeout: 20 * time.Second, MaxResponseBytes: bound,
		Progress: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatalf("run: %v\n%s", err, logs.String())
	}
	if res.Expected.Workloads != 2002 || res.Expected.Services != 202 || res.Expected.Policies == 0 {
		t.Errorf("expected %+v", res.Expected)
	}
	if len(res.FirstPush.ClientSeconds) != 2 || res.FirstPush.Seconds <= 0 {
		t.Errorf("first push %+v", res.FirstPush)
	}
	if len(res.Changes.Items) != 10 {
		t.Fatalf("%d changes timed, want 10", len(res.Changes.Items))
	}
	for _, it := range res.Changes.Items {
		if len(it.ClientMs) != 2 || it.Ms < 0 {
			t.Errorf("change %+v", it)
		}
	}
	if res.NewClient.Seconds <= 0 {
		t.Errorf("new client %+v", res.NewClient)
	}
	if res.MaxMessage.ServerMaxBytes == 0 || res.MaxMessage.ServerMaxBytes > bound {
		t.Errorf("largest message %d, over the bound %d", res.MaxMessage.ServerMaxBytes, bound)
	}
	if res.MaxMessage.FirstPushAddressResponses < 2 {
		t.Errorf("the first push came in %d address responses: not split", res.MaxMessage.FirstPushAddressResponses)
	}
	if res.Rejections != 0 {
		t.Errorf("%d NACKs", res.Rejections)
	}
	if !res.Verified.OK || len(res.Verified.Clients) != 3 {
		t.Errorf("verification %+v", res.Verified)
	}
	if res.Mode != "memory" || res.Extra != 0 || res.Setup != nil || len(res.Processes) != 0 {
		t.Errorf("mode %q extra %d setup %v processes %v", res.Mode, res.Extra, res.Setup, res.Processes)
	}
	if res.Memory.RSSMB <= 0 || res.FirstPush.CPUSeconds <= 0 {
		t.Errorf("no measurements: memory %+v cpu %v", res.Memory, res.FirstPush.CPUSeconds)
	}
	report := render(res, "")
	for _, want := range []string{"## Targets", "first full push", "p99"} {
		if !strings.Contains(report, want) {
			t.Errorf("report lacks %q", want)
		}
	}
}

// TestGenerate: the generator is deterministic and lays out what its
// spec says.
func TestGenerate(t *testing.T) {
	spec := Spec{Pods: 1000, Services: 100, Namespaces: 10, Nodes: 7, Waypoints: 1}
	a, err := Generate(spec)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := Generate(spec)
	if len(a.Pods) != 1001 || len(a.Services) != 101 || len(a.Namespaces) != 11 || len(a.Gateways) != 1 {
		t.Fatalf("pods %d services %d namespaces %d gateways %d", len(a.Pods), len(a.Services), len(a.Namespaces), len(a.Gateways))
	}
	ips := map[string]bool{}
	for i, p := range a.Pods {
		if p.Name != b.Pods[i].Name || p.Status.PodIP != b.Pods[i].Status.PodIP {
			t.Fatalf("pod %d differs between runs", i)
		}
		if ips[p.Status.PodIP] {
			t.Fatalf("address %s twice", p.Status.PodIP)
		}
		ips[p.Status.PodIP] = true
	}
	names := map[string]bool{}
	for _, n := range a.WorkloadNames() {
		if names[n] {
			t.Fatalf("workload %s twice", n)
		}
		names[n] = true
	}
	ch := a.PodChange(0)
	if ch.IP == "" || ips[ch.IP] {
		t.Errorf("an IP change must give an unused address, got %q", ch.IP)
	}
	if ch2 := a.PodChange(1); ch2.Revision != "v3" {
		t.Errorf("label change revision %q", ch2.Revision)
	}
	if err := (Spec{Pods: 10, Services: 20, Namespaces: 1, Nodes: 1}).Validate(); err == nil {
		t.Error("more services than pods accepted")
	}
}
