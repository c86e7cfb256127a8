package main

import (
	"context"
	"fmt"
	"sync/atomic"

	"github.com/ambit-mesh/ambit/controlplane/config"
)

// Backend is where the benchmark's objects live and how the control plane
// learns of them. The in-process variant (MemoryBackend) is a config.Source
// fed from memory; a variant through a real kube-apiserver creates the
// objects there and hands the controller the Kubernetes config source.
type Backend interface {
	// Name says what the backend is, for the report; Mode is its short
	// name ("memory", "apiserver").
	Name() string
	Mode() string
	// Source is the config source the controller runs. It must send the
	// initial objects and implement config.Syncer, so that the first push
	// is the whole mesh.
	Source() config.Source
	// Update replaces one object; it returns once the backend has taken
	// it (for an API server, with the write's response). The time from
	// its return to the clients is what is measured; the call itself is
	// recorded apart.
	Update(ctx context.Context, obj config.Object) error
	// Close releases the backend.
	Close() error
}

// ExtraHolder is a backend whose config holds objects besides the
// mesh's (an API server's own namespaces and its Service
// default/kubernetes): the control plane serves them too.
type ExtraHolder interface {
	Extra() []config.Object
}

// SetupReporter is a backend that says how it was filled.
type SetupReporter interface {
	Setup() *Setup
}

// ProcessReporter is a backend that runs other processes (etcd,
// kube-apiserver); Processes samples them now.
type ProcessReporter interface {
	Processes() []ProcessSample
}

// Setup is how a backend was filled before the control plane started.
type Setup struct {
	// StartSeconds: the API server was ready; CRDSeconds: the CRDs were
	// installed and Established; CreateSeconds: every object was written
	// (Requests writes, by Writers goroutines at client QPS/Burst).
	StartSeconds  float64  `json:"start_seconds"`
	CRDSeconds    float64  `json:"crd_seconds"`
	CRDs          int      `json:"crds"`
	CreateSeconds float64  `json:"create_seconds"`
	Objects       int      `json:"objects"`
	Requests      int      `json:"requests"`
	Writers       int      `json:"writers"`
	QPS           float32  `json:"qps"`
	Burst         int      `json:"burst"`
	Version       string   `json:"server_version"`
	Notes         []string `json:"notes,omitempty"`
}

// ProcessSample is one reading of another process.
type ProcessSample struct {
	Name string `json:"name"`
	PID  int    `json:"pid"`
	// When: phaseStart, phaseFirstPush, phaseChanges or phaseEnd.
	When  string  `json:"when"`
	RSSMB float64 `json:"rss_mb"`
	HWMMB float64 `json:"hwm_mb"`
	// CPUSeconds is the process's user+system CPU since it started.
	CPUSeconds float64 `json:"cpu_seconds"`
}

// When the backend's processes are sampled.
const (
	phaseStart     = "control plane start"
	phaseFirstPush = "first push"
	phaseChanges   = "changes done"
	phaseEnd       = "end"
)

// NewBackend makes a backend holding objs as its initial state.
type NewBackend func(ctx context.Context, objs []config.Object) (Backend, error)

// NewMemoryBackend is the in-process backend: no API server, the objects
// go straight from memory to the controller's store as a source's events.
func NewMemoryBackend(_ context.Context, objs []config.Object) (Backend, error) {
	return &MemoryBackend{objs: objs, updates: make(chan config.Event, 1024)}, nil
}

// MemoryBackend is a config.Source and config.Syncer over objects in
// memory: Run sends every initial object as Added, reports synced, then
// sends what Update is given.
type MemoryBackend struct {
	objs    []config.Object
	updates chan config.Event
	synced  atomic.Bool
	running atomic.Bool
}

// Name implements Backend.
func (b *MemoryBackend) Name() string { return "in process (memory config source, no API server)" }

// Mode implements Backend.
func (b *MemoryBackend) Mode() string { return "memory" }

// Source implements Backend.
func (b *MemoryBackend) Source() config.Source { return b }

// HasSynced implements config.Syncer.
func (b *MemoryBackend) HasSynced() bool { return b.synced.Load() }

// Run implements config.Source.
func (b *MemoryBackend) Run(ctx context.Context, out chan<- config.Event) error {
	if !b.running.CompareAndSwap(false, true) {
		return fmt.Errorf("memory backend: Run called twice")
	}
	for _, o := range b.objs {
		select {
		case out <- config.Event{Type: config.Added, Key: config.KeyOf(o), Object: o}:
		case <-ctx.Done():
			return nil
		}
	}
	b.synced.Store(true)
	for {
		select {
		case ev := <-b.updates:
			select {
			case out <- ev:
			case <-ctx.Done():
				return nil
			}
		case <-ctx.Done():
			return nil
		}
	}
}

// Update implements Backend.
func (b *MemoryBackend) Update(ctx context.Context, obj config.Object) error {
	select {
	case b.updates <- config.Event{Type: config.Updated, Key: config.KeyOf(obj), Object: obj}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("memory backend: update %s: %w", config.KeyOf(obj), ctx.Err())
	}
}

// Close implements Backend.
func (b *MemoryBackend) Close() error { return nil }
