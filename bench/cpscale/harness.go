package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/stats"

	"github.com/ambit-mesh/ambit/controlplane/config"
	"github.com/ambit-mesh/ambit/controlplane/controller"
	"github.com/ambit-mesh/ambit/controlplane/model"
	"github.com/ambit-mesh/ambit/controlplane/xds"
)

// Options configure a run.
type Options struct {
	Spec Spec
	// Changes is how many single-pod changes to time.
	Changes int
	// NewBackend makes the config backend (default NewMemoryBackend).
	NewBackend NewBackend
	// Logger receives the control plane's own logs (default: none);
	// Progress the harness's (default: none).
	Logger, Progress *slog.Logger
	// Timeout bounds each wait: the first push, one change, the new
	// client's first push (default 2 minutes).
	Timeout time.Duration
	// MaxResponseBytes, if set, bounds the server's delta responses
	// instead of its default (xds.DefaultMaxResponseBytes).
	MaxResponseBytes int
	// Profile, if set, is called as each phase ("first-push", "changes")
	// starts; the function it returns as the phase ends (for pprof).
	Profile func(phase string) (stop func())
}

func (o Options) profile(phase string) func() {
	if o.Profile == nil {
		return func() {}
	}
	return o.Profile(phase)
}

// Result is the raw record of a run (the .json beside the report).
type Result struct {
	Started time.Time `json:"started"`
	Elapsed float64   `json:"elapsed_seconds"`
	Host    Host      `json:"host"`
	Spec    Spec      `json:"spec"`
	Backend string    `json:"backend"`
	Mode    string    `json:"mode"`
	// Objects is how many config objects the mesh has; Extra how many the
	// backend holds besides (an API server's own namespaces and Service);
	// Expected what the clients must hold.
	Objects         int      `json:"objects"`
	Extra           int      `json:"extra_objects"`
	Expected        Expected `json:"expected"`
	GenerateSeconds float64  `json:"generate_seconds"`
	// Baseline is the process after generating the mesh, before the
	// control plane started: mostly the config objects themselves, which
	// the controller's store shares (as it would an informer's cache).
	Baseline  Memory    `json:"baseline_memory"`
	FirstPush FirstPush `json:"first_push"`
	Changes   Changes   `json:"changes"`
	NewClient NewClient `json:"new_client"`
	// Memory is the process at the end; its HWM the peak over the run.
	Memory           Memory   `json:"memory"`
	MaxMessage       Messages `json:"messages"`
	Builds           uint64   `json:"builds"`
	LastBuildMs      float64  `json:"last_build_ms"`
	Rejections       uint64   `json:"rejections"`
	ClientCPUSeconds float64  `json:"client_process_cpu_seconds"`
	// Setup is how the backend was filled (API server backend only).
	Setup *Setup `json:"setup,omitempty"`
	// Processes are the backend's other processes (etcd, kube-apiserver),
	// sampled as the control plane starts, after the first push, after
	// the changes and at the end.
	Processes []ProcessSample `json:"other_processes,omitempty"`
	// Verified: the clients' final state against the model built from
	// the mesh's final state.
	Verified Verification `json:"verified"`
}

// Host describes the machine.
type Host struct {
	CPUs      int    `json:"cpus"`
	LoadAvg   string `json:"loadavg_at_start"`
	LoadEnd   string `json:"loadavg_at_end"`
	GoVersion string `json:"go_version"`
	GOMAXPROC int    `json:"gomaxprocs"`
}

// Expected is what a client holds after a full push.
type Expected struct {
	Workloads   int    `json:"workloads"`
	Services    int    `json:"services"`
	Policies    int    `json:"policies"`
	WorkloadSum uint64 `json:"-"`
	ServiceSum  uint64 `json:"-"`
}

func (e Expected) heldBy(ev clientEvent) bool {
	return ev.Workloads == e.Workloads && ev.Services == e.Services && ev.Policies == e.Policies &&
		ev.WorkloadSum == e.WorkloadSum && ev.ServiceSum == e.ServiceSum
}

// FirstPush is the cold start: the clients are connected, then the
// controller starts with the whole mesh in its source.
type FirstPush struct {
	// SourceSyncedSeconds: the source had sent every object; ReadySeconds:
	// the controller's first build and publish were done.
	SourceSyncedSeconds float64 `json:"source_synced_seconds"`
	ReadySeconds        float64 `json:"ready_seconds"`
	// BuildMs is the first build's own duration (controller stats).
	BuildMs float64 `json:"build_ms"`
	// ClientSeconds: each client held every workload, service and policy;
	// Seconds is the later one.
	ClientSeconds []float64 `json:"client_seconds"`
	Seconds       float64   `json:"seconds"`
	// Messages is how many responses each client had received by then.
	Messages []int `json:"messages"`
	// CPUSeconds is the control plane's CPU from the start to Seconds.
	CPUSeconds float64 `json:"cpu_seconds"`
	Memory     Memory  `json:"memory"`
}

// NewClient is a third client connecting to the warm control plane after
// the changes, as a ztunnel of a new node would.
type NewClient struct {
	Seconds    float64 `json:"seconds"`
	Messages   int     `json:"messages"`
	CPUSeconds float64 `json:"cpu_seconds"`
}

// Changes are the single-pod changes, one at a time.
type Changes struct {
	Items []ChangeItem `json:"items"`
	// Over the latency to the later client of each change.
	P50Ms  float64 `json:"p50_ms"`
	P99Ms  float64 `json:"p99_ms"`
	MaxMs  float64 `json:"max_ms"`
	MeanMs float64 `json:"mean_ms"`
	// CPUSecondsPerChange is the control plane's CPU over the whole
	// phase divided by the number of changes.
	CPUSecondsPerChange float64 `json:"cpu_seconds_per_change"`
	Builds              uint64  `json:"builds"`
	// BuildMs is each change's build duration (controller stats).
	BuildMsP50 float64 `json:"build_ms_p50"`
	BuildMsMax float64 `json:"build_ms_max"`
	// WriteMs is the backend's Update call (not part of the latency).
	WriteMsP50 float64 `json:"write_ms_p50"`
	WriteMsMax float64 `json:"write_ms_max"`
}

// ChangeItem is one change: per client, from the return of the
// backend's Update (for the API server, the write's response) to receipt;
// WriteMs is the Update call itself.
type ChangeItem struct {
	What     string    `json:"what"`
	Workload string    `json:"workload"`
	WriteMs  float64   `json:"write_ms"`
	ClientMs []float64 `json:"client_ms"`
	Ms       float64   `json:"ms"`
	BuildMs  float64   `json:"build_ms"`
}

// Messages are the responses' sizes.
type Messages struct {
	// ServerMaxBytes is the largest message the server sent (gRPC's own
	// count: the encoded payload, before framing), over the run.
	ServerMaxBytes int   `json:"server_max_bytes"`
	ServerMessages int64 `json:"server_messages"`
	// ClientMaxBytes is the largest response each client received.
	ClientMaxBytes []int `json:"client_max_bytes"`
	// FirstPushResponses is how many address responses client 0's first
	// push took.
	FirstPushAddressResponses int `json:"first_push_address_responses"`
}

// sizeStats records the size of every message the gRPC server sends.
type sizeStats struct {
	max, count atomic.Int64
}

func (s *sizeStats) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }
func (s *sizeStats) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context {
	return ctx
}
func (s *sizeStats) HandleConn(context.Context, stats.ConnStats) {}
func (s *sizeStats) HandleRPC(_ context.Context, st stats.RPCStats) {
	if p, ok := st.(*stats.OutPayload); ok {
		s.count.Add(1)
		for {
			cur := s.max.Load()
			if int64(p.Length) <= cur || s.max.CompareAndSwap(cur, int64(p.Length)) {
				return
			}
		}
	}
}

// anyNode admits every caller: the benchmark's clients connect in
// plaintext over loopback (the control plane's TLS and client
// certificates are not what is measured).
type anyNode struct{}

func (anyNode) NodeOf(context.Context) (string, error) { return "bench", nil }

func since(t time.Time) float64 { return time.Since(t).Seconds() }

// Run generates the mesh, serves it with the real controller and xDS
// server on a loopback gRPC listener, and times two delta ADS clients.
func Run(ctx context.Context, o Options) (*Result, error) {
	if o.NewBackend == nil {
		o.NewBackend = NewMemoryBackend
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Progress == nil {
		o.Progress = slog.New(slog.DiscardHandler)
	}
	if o.Timeout <= 0 {
		o.Timeout = 2 * time.Minute
	}
	began := time.Now()
	res := &Result{Started: began.UTC(), Spec: o.Spec,
		Host: Host{CPUs: runtime.NumCPU(), LoadAvg: loadAverage(), GoVersion: runtime.Version(), GOMAXPROC: runtime.GOMAXPROCS(0)}}
	mesh, err := Generate(o.Spec)
	if err != nil {
		return nil, err
	}
	objs := mesh.Objects()
	res.Objects = len(objs)
	res.GenerateSeconds = since(began)
	o.Progress.Info("mesh generated", "objects", len(objs), "pods", len(mesh.Pods), "services", len(mesh.Services), "seconds", res.GenerateSeconds)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	backend, err := o.NewBackend(ctx, objs)
	if err != nil {
		return nil, fmt.Errorf("backend: %w", err)
	}
	defer backend.Close()
	res.Backend, res.Mode = backend.Name(), backend.Mode()
	var extra []config.Object
	if h, ok := backend.(ExtraHolder); ok {
		extra = h.Extra()
	}
	res.Extra = len(extra)
	res.Expected = expected(mesh, extra)
	if r, ok := backend.(SetupReporter); ok {
		res.Setup = r.Setup()
	}
	sample := func(when string) {
		if r, ok := backend.(ProcessReporter); ok {
			for _, p := range r.Processes() {
				p.When = when
				res.Processes = append(res.Processes, p)
			}
		}
	}

	srv := xds.New(ctx, o.Logger.With("component", "xds"), xds.AmbientTypes()...)
	if o.MaxResponseBytes > 0 {
		srv.SetMaxResponseBytes(o.MaxResponseBytes)
	}
	sizes := &sizeStats{}
	// As controlplane.New, without TLS.
	g := grpc.NewServer(grpc.StreamInterceptor(xds.StreamAuth(anyNode{})), grpc.StatsHandler(sizes), grpc.MaxRecvMsgSize(1<<20))
	srv.Register(g)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	go func() { _ = g.Serve(l) }()
	defer g.Stop()
	clients, err := startClients(ctx, l.Addr().String())
	if err != nil {
		return nil, err
	}
	stopped := false
	defer func() {
		if !stopped {
			_, _ = clients.stop()
		}
	}()
	clients.expect(res.Expected)
	for id := range 2 {
		if err := clients.command("connect %d", id); err != nil {
			return nil, err
		}
	}
	if err := waitFor(ctx, o.Timeout, "two clients connected", func() bool { return srv.Stats().Connected == 2 }); err != nil {
		return nil, err
	}
	// Let the streams' first (empty) answers go out before the clock starts.
	_ = waitFor(ctx, time.Second, "the clients' first answers", func() bool {
		for _, p := range srv.Proxies() {
			if len(p.Nonce) < 2 {
				return false
			}
		}
		return true
	})

	// The mesh's objects and the generator's garbage: what is there before
	// the control plane does anything.
	runtime.GC()
	debug.FreeOSMemory()
	if !resetPeakRSS() {
		o.Progress.Warn("could not reset VmHWM; the peak includes generating the mesh")
	}
	res.Baseline = readMemory()

	ctrl := controller.New(controller.Options{Publisher: srv, Sources: []config.Source{backend.Source()}, Logger: o.Logger.With("component", "controller")})
	endProfile := o.profile("first-push")
	defer func() {
		if endProfile != nil {
			endProfile()
		}
	}()
	sample(phaseStart)
	cpu0, start := cpuSeconds(), time.Now()
	runErr := make(chan error, 1)
	go func() { runErr <- ctrl.Run(ctx) }()
	var syncedAt, readyAt atomic.Int64
	if s, ok := backend.Source().(config.Syncer); ok {
		go func() {
			for ctx.Err() == nil && !s.HasSynced() {
				time.Sleep(time.Millisecond)
			}
			syncedAt.Store(time.Now().UnixNano())
			o.Progress.Info("source synced", "seconds", since(start))
		}()
	}
	go func() {
		select {
		case <-ctrl.Ready():
			readyAt.Store(time.Now().UnixNano())
			o.Progress.Info("controller ready", "seconds", since(start))
		case <-ctx.Done():
		}
	}()
	o.Progress.Info("controller started; waiting for the first push")
	full := func(ids ...int) func(map[int]*clientView) bool {
		return func(v map[int]*clientView) bool {
			for _, id := range ids {
				if v[id] == nil || v[id].fullAt == 0 {
					return false
				}
			}
			return true
		}
	}
	if err := clients.wait(ctx, o.Timeout, "the first push to both clients", full(0, 1)); err != nil {
		return nil, fmt.Errorf("first push: %w", err)
	}
	fp := &res.FirstPush
	fp.CPUSeconds = cpuSeconds() - cpu0
	endProfile()
	endProfile = nil
	for id := range 2 {
		v := clients.snapshot(id)
		fp.ClientSeconds = append(fp.ClientSeconds, float64(v.fullAt-start.UnixNano())/1e9)
		fp.Messages = append(fp.Messages, v.fullMessages)
	}
	fp.Seconds = slices.Max(fp.ClientSeconds)
	fp.SourceSyncedSeconds = sinceStart(start, syncedAt.Load())
	fp.ReadySeconds = sinceStart(start, readyAt.Load())
	fp.BuildMs = float64(ctrl.Stats().LastDuration.Microseconds()) / 1000
	fp.Memory = readMemory()
	sample(phaseFirstPush)
	res.MaxMessage.FirstPushAddressResponses = clients.snapshot(0).fullAddressMessages
	o.Progress.Info("first push", "seconds", fp.Seconds, "cpu", fp.CPUSeconds, "rss_mb", fp.Memory.RSSMB)

	if err := runChanges(ctx, o, mesh, backend, clients, ctrl, &res.Changes); err != nil {
		return nil, err
	}
	sample(phaseChanges)

	// A new node's ztunnel joins.
	cpu1, t1 := cpuSeconds(), time.Now()
	if err := clients.command("connect %d", 2); err != nil {
		return nil, err
	}
	if err := clients.wait(ctx, o.Timeout, "the first push to a new client", full(2)); err != nil {
		return nil, fmt.Errorf("new client: %w", err)
	}
	v := clients.snapshot(2)
	res.NewClient = NewClient{Seconds: float64(v.fullAt-t1.UnixNano()) / 1e9, Messages: v.fullMessages, CPUSeconds: cpuSeconds() - cpu1}
	o.Progress.Info("new client", "seconds", res.NewClient.Seconds)

	res.Memory = readMemory()
	sample(phaseEnd)
	// Last, outside every figure: what the three clients hold, content
	// included, against the model of the mesh's final state.
	if res.Verified, err = verify(ctx, o.Timeout, clients, []int{0, 1, 2}, meshInputs(mesh, extra)); err != nil {
		return nil, err
	}
	o.Progress.Info("verified", "clients", 3, "addresses", res.Verified.Addresses, "policies", res.Verified.Policies)
	if err := clients.command("close %d", 2); err != nil {
		return nil, err
	}
	st := ctrl.Stats()
	res.Builds, res.LastBuildMs = st.Builds, float64(st.LastDuration.Microseconds())/1000
	res.Rejections = srv.Stats().Rejections
	res.MaxMessage.ServerMaxBytes, res.MaxMessage.ServerMessages = int(sizes.max.Load()), sizes.count.Load()
	for id := range 3 {
		res.MaxMessage.ClientMaxBytes = append(res.MaxMessage.ClientMaxBytes, clients.snapshot(id).maxSize)
	}
	stopped = true
	res.ClientCPUSeconds, err = clients.stop()
	if err != nil {
		o.Progress.Warn("client process", "err", err)
	}
	cancel()
	if err := <-runErr; err != nil && !errors.Is(err, context.Canceled) {
		return nil, fmt.Errorf("controller: %w", err)
	}
	res.Elapsed = since(began)
	res.Host.LoadEnd = loadAverage()
	return res, nil
}

// runChanges applies o.Changes single-pod changes one at a time, each
// timed until both clients hold it.
func runChanges(ctx context.Context, o Options, mesh *Mesh, backend Backend, clients *clientProcess, ctrl *controller.Controller, out *Changes) error {
	defer o.profile("changes")()
	builds0, cpu0 := ctrl.Stats().Builds, cpuSeconds()
	var lat, builds, writes []float64
	for i := range o.Changes {
		ch := mesh.PodChange(i)
		before := ctrl.Stats().Builds
		t0 := time.Now()
		if err := backend.Update(ctx, ch.Pod); err != nil {
			return fmt.Errorf("change %d: %w", i, err)
		}
		// Timed from the write's return; a receipt counts from its call
		// (an API server may deliver the watch event first).
		t1 := time.Now()
		from, at := t0.UnixNano(), t1.UnixNano()
		arrived := func(v map[int]*clientView) bool {
			for id := range 2 {
				it, ok := v[id].byName[ch.Workload]
				if !ok || it.t < from || it.IP != ch.IP || it.Rev != ch.Revision {
					return false
				}
			}
			return true
		}
		if err := clients.wait(ctx, o.Timeout, fmt.Sprintf("change %d (%s of %s)", i, ch.What, ch.Workload), arrived); err != nil {
			return err
		}
		item := ChangeItem{What: ch.What, Workload: ch.Workload, WriteMs: float64(at-from) / 1e6}
		clients.mu.Lock()
		for id := range 2 {
			ms := float64(clients.clients[id].byName[ch.Workload].t-at) / 1e6
			item.ClientMs = append(item.ClientMs, ms)
		}
		clients.mu.Unlock()
		item.Ms = slices.Max(item.ClientMs)
		// The build that carried it has published; its duration is
		// recorded once it ends (it may still be computing status).
		_ = waitFor(ctx, time.Second, "the build's end", func() bool { return ctrl.Stats().Builds > before })
		item.BuildMs = float64(ctrl.Stats().LastDuration.Microseconds()) / 1000
		out.Items = append(out.Items, item)
		lat = append(lat, item.Ms)
		builds = append(builds, item.BuildMs)
		writes = append(writes, item.WriteMs)
		if (i+1)%25 == 0 {
			o.Progress.Info("changes", "done", i+1, "last_ms", item.Ms)
		}
	}
	if len(lat) == 0 {
		return nil
	}
	out.CPUSecondsPerChange = (cpuSeconds() - cpu0) / float64(len(lat))
	out.Builds = ctrl.Stats().Builds - builds0
	out.P50Ms, out.P99Ms, out.MaxMs = quantile(lat, 0.50), quantile(lat, 0.99), slices.Max(lat)
	var sum float64
	for _, v := range lat {
		sum += v
	}
	out.MeanMs = sum / float64(len(lat))
	out.BuildMsP50, out.BuildMsMax = quantile(builds, 0.5), slices.Max(builds)
	out.WriteMsP50, out.WriteMsMax = quantile(writes, 0.5), slices.Max(writes)
	return nil
}

// quantile is the nearest-rank quantile q of v.
func quantile(v []float64, q float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	i := int(q*float64(len(s))+0.999999) - 1
	return s[min(max(i, 0), len(s)-1)]
}

func sinceStart(start time.Time, ns int64) float64 {
	if ns == 0 {
		return 0
	}
	return float64(ns-start.UnixNano()) / 1e9
}

// waitFor polls cond every millisecond until it holds or timeout passes.
func waitFor(ctx context.Context, timeout time.Duration, what string, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %v waiting for %s", timeout, what)
		}
		if ctx.Err() != nil {
			return fmt.Errorf("waiting for %s: %w", what, ctx.Err())
		}
		time.Sleep(time.Millisecond)
	}
	return nil
}

// expected is what the control plane must serve for the mesh and the
// backend's extra objects: every pod (all run and have an address) and
// every service, and the policies the model derives (computed here,
// before the clock starts, with the model's own function).
func expected(m *Mesh, extra []config.Object) Expected {
	in := meshInputs(m, extra)
	e := Expected{Workloads: len(in.Pods), Services: len(in.Services)}
	for _, p := range in.Pods {
		e.WorkloadSum += nameSum(model.WorkloadName(model.DefaultCluster, p))
	}
	for _, s := range in.Services {
		e.ServiceSum += nameSum(model.ServiceName(s, model.DefaultDomain))
	}
	authz, _ := model.BuildAuthorizations(in)
	e.Policies = len(authz)
	return e
}

// isClientProcess reports whether this process was started as the client
// process, and runs it if so.
func isClientProcess() bool {
	addr := os.Getenv(clientEnv)
	if addr == "" {
		return false
	}
	if err := runClientProcess(addr, os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "cpscale client:", err)
		os.Exit(1)
	}
	return true
}
