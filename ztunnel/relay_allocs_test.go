package ztunnel

import (
	"testing"

	"github.com/ambit-mesh/ambit/internal/perftest"
)

// Allocation gates for the relay's pipe once a connection is set up. They
// count heap allocations of the whole process (the app's end, both
// directions of pipe, the far end, and for HBONE both ends of the tunnel)
// per operation, after a warm-up; counts are deterministic enough to
// assert, timings are not, and nothing here asserts one. The bounds were
// measured and given a little headroom: raise one only with a reason.

// checkRoundTripAllocs measures a 1 KB request/response through setup's
// path and fails above limit.
func checkRoundTripAllocs(t *testing.T, setup pipeSetup, limit float64) {
	t.Helper()
	app := setup(t, farEcho)
	req, resp := make([]byte, 1024), make([]byte, 1024)
	got := perftest.AllocsPerOp(t, 200, 2000, func() error { return perftest.RoundTrip(app, req, resp) })
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
	got := perftest.AllocsPerOp(t, 100, 1000, func() error { _, err := app.Write(buf); return err })
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
