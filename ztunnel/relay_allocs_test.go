package ztunnel

import (
	"runtime"
	"testing"
)

// Allocation gates for the relay's pipe once a connection is set up. They
// count heap allocations of the whole process (the app's end, both
// directions of pipe, the far end, and for HBONE both ends of the tunnel)
// per operation, after a warm-up; counts are deterministic enough to
// assert, timings are not, and nothing here asserts one. The bounds were
// measured and given a little headroom: raise one only with a reason.

// allocsPerOp runs op warm times, then reports the heap allocations per
// call over n calls. It measures a few times and keeps the lowest figure:
// a background allocation (a keepalive PING, a timer, the runtime) can only
// add to a trial, so the minimum is the hot path's own cost.
func allocsPerOp(tb testing.TB, warm, n int, op func() error) float64 {
	tb.Helper()
	for i := 0; i < warm; i++ {
		if err := op(); err != nil {
			tb.Fatal(err)
		}
	}
	best := -1.0
	var ms runtime.MemStats
	for trial := 0; trial < 3; trial++ {
		runtime.GC()
		runtime.ReadMemStats(&ms)
		before := ms.Mallocs
		for i := 0; i < n; i++ {
			if err := op(); err != nil {
				tb.Fatal(err)
			}
		}
		runtime.ReadMemStats(&ms)
		got := float64(ms.Mallocs-before) / float64(n)
		if best < 0 || got < best {
			best = got
		}
	}
	return best
}

// checkRoundTripAllocs measures a 1 KB request/response through setup's
// path and fails above limit.
func checkRoundTripAllocs(t *testing.T, setup pipeSetup, limit float64) {
	t.Helper()
	app := setup(t, farEcho)
	req, resp := make([]byte, 1024), make([]byte, 1024)
	got := allocsPerOp(t, 200, 2000, func() error { return roundTrip(app, req, resp) })
	t.Logf("%.2f allocations per 1 KB round trip", got)
	if got > limit {
		t.Errorf("%.2f allocations per 1 KB round trip through pipe, want at most %v", got, limit)
	}
}

// TestAllocsPipeTCPRoundTrip guards pipe between two TCP connections: a
// 1 KB request and its 1 KB answer through both directions of an open
// pipe (io.Copy, TCP's splice) allocate nothing.
// Measured: 0 per round trip (go1.26, linux/amd64); asserted: 0 (a
// fraction of one allows for a rare background allocation in the best of
// three trials; any per-request allocation shows as 1 or more).
func TestAllocsPipeTCPRoundTrip(t *testing.T) {
	checkRoundTripAllocs(t, pipeTCP, 0.1)
}

// TestAllocsPipeTCPWrite guards the bulk direction of pipe between TCP
// connections: a 64 KiB write copied through to a far end that discards.
// Measured: 0 per write; asserted: 0 (under 0.1, as above).
func TestAllocsPipeTCPWrite(t *testing.T) {
	app := pipeTCP(t, farDiscard)
	buf := make([]byte, 64<<10)
	got := allocsPerOp(t, 100, 1000, func() error { _, err := app.Write(buf); return err })
	t.Logf("%.2f allocations per 64 KiB write", got)
	if got > 0.1 {
		t.Errorf("%.2f allocations per 64 KiB write through pipe, want 0", got)
	}
}

// TestAllocsPipeHBONERoundTrip guards pipe with an HBONE stream on one
// side, per 1 KB request/response: inbound (the server's accepted stream
// piped to a TCP upstream) and outbound (an app's TCP connection piped to
// a pooled client stream). pipe itself adds nothing over the tunnel: the
// 2 measured per round trip are crypto/tls's, one per TLS read on each
// end (its atLeastReader escapes in readFromUntil), as in hbone's
// TestAllocsStreamRoundTrip. Measured: 2; asserted: at most 3.
func TestAllocsPipeHBONERoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup pipeSetup
	}{
		{"inbound", pipeHBONEInbound},
		{"outbound", pipeHBONEOutbound},
	} {
		t.Run(tc.name, func(t *testing.T) { checkRoundTripAllocs(t, tc.setup, 3) })
	}
}
