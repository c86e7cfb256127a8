package main

import (
	"fmt"
	"os"
	"sync"
	"testing"
)

// processTB is the testing.TB the benchmark binary gives internal/kubetest
// (which is written for tests): Fatal and Fatalf panic with a tbFatal,
// which the backend turns into an error; Cleanup and TempDir register what
// cleanup runs, last first, as a test's end would. Methods kubetest does
// not call are not implemented (the embedded nil TB panics, which the
// backend reports too).
type processTB struct {
	testing.TB

	mu       sync.Mutex
	cleanups []func()
}

// tbFatal is a processTB's fatal failure.
type tbFatal struct{ msg string }

func (e tbFatal) Error() string { return e.msg }

func newProcessTB() *processTB { return &processTB{} }

func (t *processTB) Helper()      {}
func (t *processTB) Name() string { return "cpscale" }

func (t *processTB) Cleanup(f func()) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.cleanups = append(t.cleanups, f)
}

func (t *processTB) TempDir() string {
	d, err := os.MkdirTemp("", "cpscale-kubetest-")
	if err != nil {
		t.Fatalf("temp dir: %v", err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(d) })
	return d
}

func (t *processTB) Log(args ...any)                 { fmt.Fprintln(os.Stderr, args...) }
func (t *processTB) Logf(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) }
func (t *processTB) Fatal(args ...any)               { panic(tbFatal{fmt.Sprint(args...)}) }
func (t *processTB) Fatalf(format string, args ...any) {
	panic(tbFatal{fmt.Sprintf(format, args...)})
}

// cleanup runs the registered cleanups, last first.
func (t *processTB) cleanup() {
	t.mu.Lock()
	fs := t.cleanups
	t.cleanups = nil
	t.mu.Unlock()
	for i := len(fs) - 1; i >= 0; i-- {
		fs[i]()
	}
}
