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
	// Name says what the backend is, for the report.
	Name() string
	// Source is the config source the controller runs. It must send the
	// initial objects and implement config.Syncer, so that the first push
	// is the whole mesh.
	Source() config.Source
	// Update replaces one object; it returns once the backend has taken
	// it (the time from its call to the clients is what is measured).
	Update(ctx context.Context, obj config.Object) error
	// Close releases the backend.
	Close() error
}

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
