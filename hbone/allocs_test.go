package hbone

import (
	"io"
	"testing"

	"github.com/ambit-mesh/ambit/internal/perftest"
)

// Allocation gates for the hot path. They count heap allocations of the
// whole process (client, server, their connection goroutines and the test's
// own handler) per operation on an already open stream, after a warm-up.
// Counts are deterministic enough to assert; timings are not, and nothing
// here asserts one. The bounds were measured and given a little headroom:
// raise one only with a reason, and lower it when the data path gets
// leaner.

// TestAllocsStreamRoundTrip guards the request/response hot path on an
// open HBONE stream: a 1 KB client Write, the server handler's Read and
// Write of the echo, the client's ReadFull, with both connections' read
// loops, flow-control credit (WINDOW_UPDATE) and TLS records in between.
// Measured: 2 allocations per round trip (go1.26, linux/amd64), both in
// crypto/tls, one per TLS read on each end (readFromUntil's atLeastReader
// escapes): hbone's own code allocates nothing here. Asserted: at most 3.
func TestAllocsStreamRoundTrip(t *testing.T) {
	const limit = 3
	e, k := handlerEnv(t, streamEcho)
	c := openStream(t, e, k)
	req, resp := make([]byte, 1024), make([]byte, 1024)
	got := perftest.AllocsPerOp(t, 200, 2000, func() error { return perftest.RoundTrip(c, req, resp) })
	t.Logf("%.2f allocations per 1 KB round trip", got)
	if got > limit {
		t.Errorf("%.2f allocations per 1 KB round trip on an open stream, want at most %d", got, limit)
	}
}

// TestAllocsStreamWrite guards the bulk send path: a 64 KiB Write on an
// open stream (DATA frames, waiting for credit) to a server handler that
// reads the stream out with WriteTo into io.Discard; the server's work
// runs concurrently, so its share is counted within a few writes.
// Measured: 2 allocations per write; asserted: at most 3.
func TestAllocsStreamWrite(t *testing.T) {
	const limit = 3
	e, k := handlerEnv(t, streamDiscard)
	c := openStream(t, e, k)
	buf := make([]byte, 64<<10)
	got := perftest.AllocsPerOp(t, 100, 1000, func() error { _, err := c.Write(buf); return err })
	t.Logf("%.2f allocations per 64 KiB write", got)
	if got > limit {
		t.Errorf("%.2f allocations per 64 KiB write on an open stream, want at most %d", got, limit)
	}
	c.CloseWrite()
	io.Copy(io.Discard, c)
}

// TestAllocsStreamRead guards the bulk receive path: the client's 64 KiB
// ReadFull from a server handler that writes 64 KiB blocks.
// Measured: 2 allocations per read; asserted: at most 3.
func TestAllocsStreamRead(t *testing.T) {
	const limit = 3
	e, k := handlerEnv(t, streamSource)
	c := openStream(t, e, k)
	buf := make([]byte, 64<<10)
	got := perftest.AllocsPerOp(t, 100, 1000, func() error { _, err := io.ReadFull(c, buf); return err })
	t.Logf("%.2f allocations per 64 KiB read", got)
	if got > limit {
		t.Errorf("%.2f allocations per 64 KiB read on an open stream, want at most %d", got, limit)
	}
}
