// Command cpscale is Ambit's control-plane scale benchmark (`make
// bench-cp`). In one process and without an API server, it generates a
// synthetic mesh (by default 50,000 pods in 500 ambient namespaces on 100
// nodes, 5,000 services, service accounts, a few AuthorizationPolicies and
// PeerAuthentications, a few waypoints), feeds it through a config source
// into the real controller, which publishes to the real delta xDS server on
// a loopback gRPC listener, and times two delta ADS clients subscribed as
// ztunnels subscribe (they run in a child process, this binary re-run, so
// that their work is not counted as the control plane's):
//
//   - the first full push to both clients (cold start), and to a third
//     client joining later;
//   - single-pod changes (IP, label), one at a time, from the source's
//     update to both clients: p50 and p99;
//   - the control plane's CPU (getrusage) and memory (VmRSS, VmHWM), and
//     the largest xDS message (against gRPC's 4 MiB default limit).
//
// It writes a markdown report and the raw JSON to -out (or the report to
// stdout). The mesh generator (Generate) and the config backend (Backend)
// are separate so that the same objects can be fed through a real
// kube-apiserver and the Kubernetes config source instead: -backend
// apiserver (`make bench-cp-apiserver`; by default 10,000 pods and 1,000
// services) starts etcd and kube-apiserver (internal/kubetest; the
// binaries from $AMBIT_K8S_BIN_DIR or hack/k8s-testbins.sh), installs the
// CRDs, creates the mesh through the API with parallel writers, and runs
// the controller on controlplane/kubesource; the changes are then API
// writes, timed from their response.
//
// Last, outside every figure, the clients' final state is checked against
// the model built from the mesh's final state, content included; a
// difference fails the run.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"syscall"
	"time"
)

func main() {
	if isClientProcess() {
		return
	}
	spec := DefaultSpec()
	var o Options
	var outDir, note, cpuProfile, memProfile, backend string
	var verbose bool
	var limit time.Duration
	var ao APIServerOptions
	var qps float64
	flag.StringVar(&backend, "backend", "memory", "memory (in process, no API server) or apiserver (a real kube-apiserver and the Kubernetes config source; default size 10,000 pods, 1,000 services)")
	flag.IntVar(&ao.Writers, "writers", 32, "apiserver: parallel writers creating the mesh")
	flag.Float64Var(&qps, "qps", 5000, "apiserver: the writers' client QPS (burst twice that)")
	flag.DurationVar(&limit, "limit", 0, "bound the whole run (default: none for memory, 9m for apiserver)")
	flag.IntVar(&spec.Pods, "pods", spec.Pods, "application pods")
	flag.IntVar(&spec.Services, "services", spec.Services, "services")
	flag.IntVar(&spec.Namespaces, "namespaces", spec.Namespaces, "ambient namespaces")
	flag.IntVar(&spec.Nodes, "nodes", spec.Nodes, "nodes")
	flag.IntVar(&spec.Waypoints, "waypoints", spec.Waypoints, "namespaces with a waypoint")
	flag.IntVar(&o.Changes, "changes", 100, "single-pod changes to time")
	flag.DurationVar(&o.Timeout, "timeout", 2*time.Minute, "longest wait for a push")
	flag.StringVar(&outDir, "out", "", "directory for cpscale[-apiserver]-<UTC time>.md and .json (empty: the report to stdout)")
	flag.StringVar(&note, "note", "", "a paragraph for the report (what this run is about)")
	flag.StringVar(&cpuProfile, "cpuprofile", "", "write CPU profiles of the phases to <this>-first-push.pprof and <this>-changes.pprof")
	flag.StringVar(&memProfile, "memprofile", "", "write a heap profile at the end to this file")
	flag.BoolVar(&verbose, "v", false, "log the control plane's info messages to stderr")
	flag.Parse()
	ao.QPS, ao.Burst = float32(qps), int(2*qps)
	tb := newProcessTB()
	exit := func(code int) {
		tb.cleanup()
		os.Exit(code)
	}
	prefix := "cpscale-"
	switch backend {
	case "memory":
	case "apiserver":
		// The variant's own defaults, under the flags given.
		def, given := APIServerSpec(), spec
		spec = def
		flag.Visit(func(f *flag.Flag) {
			switch f.Name {
			case "pods":
				spec.Pods = given.Pods
			case "services":
				spec.Services = given.Services
			case "namespaces":
				spec.Namespaces = given.Namespaces
			case "nodes":
				spec.Nodes = given.Nodes
			case "waypoints":
				spec.Waypoints = given.Waypoints
			}
		})
		if limit == 0 {
			limit = 9 * time.Minute
		}
		prefix = "cpscale-apiserver-"
	default:
		fmt.Fprintf(os.Stderr, "cpscale: -backend %q: want memory or apiserver\n", backend)
		os.Exit(2)
	}
	o.Spec = spec
	o.Progress = slog.New(slog.NewTextHandler(os.Stderr, nil))
	if verbose {
		o.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
		ao.Logger = o.Logger.With("component", "kubesource")
	}
	if backend == "apiserver" {
		ao.Progress = o.Progress
		o.NewBackend = NewAPIServerBackend(tb, ao)
	}
	if cpuProfile != "" {
		o.Profile = func(phase string) func() {
			f, err := os.Create(cpuProfile + "-" + phase + ".pprof")
			if err != nil {
				o.Progress.Error("cpu profile", "err", err)
				return func() {}
			}
			if err := pprof.StartCPUProfile(f); err != nil {
				o.Progress.Error("cpu profile", "err", err)
				f.Close()
				return func() {}
			}
			return func() { pprof.StopCPUProfile(); f.Close() }
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if limit > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeoutCause(ctx, limit, fmt.Errorf("the run took longer than -limit %v", limit))
		defer cancel()
	}
	res, err := Run(ctx, o)
	tb.cleanup() // the API server and etcd, if any: they are measured no more
	if err != nil {
		fmt.Fprintln(os.Stderr, "cpscale:", err)
		exit(1)
	}
	if memProfile != "" {
		if err := writeHeapProfile(memProfile); err != nil {
			fmt.Fprintln(os.Stderr, "cpscale:", err)
		}
	}
	report := render(res, note)
	if outDir == "" {
		fmt.Print(report)
		return
	}
	if err := write(outDir, prefix, res, report); err != nil {
		fmt.Fprintln(os.Stderr, "cpscale:", err)
		exit(1)
	}
}

func writeHeapProfile(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("heap profile: %w", err)
	}
	defer f.Close()
	if err := pprof.WriteHeapProfile(f); err != nil {
		return fmt.Errorf("heap profile: %w", err)
	}
	return nil
}

// write puts the report and the raw results in dir as
// <prefix><UTC time>.md and .json.
func write(dir, prefix string, res *Result, report string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("results: %w", err)
	}
	base := filepath.Join(dir, prefix+res.Started.Format("2006-01-02T15-04-05Z"))
	raw, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return fmt.Errorf("results: %w", err)
	}
	if err := os.WriteFile(base+".json", append(raw, '\n'), 0o644); err != nil {
		return fmt.Errorf("results: %w", err)
	}
	if err := os.WriteFile(base+".md", []byte(report), 0o644); err != nil {
		return fmt.Errorf("results: %w", err)
	}
	fmt.Println("wrote", base+".md", "and", base+".json")
	return nil
}
