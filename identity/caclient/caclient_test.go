package caclient

import (
	"context"
	"crypto/x509"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/identity"
	"github.com/ambit-mesh/ambit/identity/identitytest"
)

// fakeClock advances only when told to.
type fakeClock struct {
	mu      sync.Mutex
	now     time.Time
	waiters []waiter
}

type waiter struct {
	at time.Time
	ch chan time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }

func (c *fakeClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan time.Time, 1)
	c.waiters = append(c.waiters, waiter{c.now.Add(d), ch})
	return ch
}

// pending returns the durations from now of the timers waiting.
func (c *fakeClock) pending() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []time.Duration
	for _, w := range c.waiters {
		out = append(out, w.at.Sub(c.now))
	}
	return out
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	var keep []waiter
	for _, w := range c.waiters {
		if !w.at.After(c.now) {
			w.ch <- c.now
		} else {
			keep = append(keep, w)
		}
	}
	c.waiters = keep
	c.mu.Unlock()
}

// fakeCA signs CSRs with a test CA, failing while fail > 0.
type fakeCA struct {
	ca    *identitytest.CA
	clock *fakeClock
	ttl   time.Duration
	fail  atomic.Int32
	calls atomic.Int32
	// block, when set, makes Fetch wait for it to close.
	block      chan struct{}
	inFlight   atomic.Int32
	maxFlight  atomic.Int32
	wrongIdent bool
}

func (f *fakeCA) Fetch(ctx context.Context, id identity.SPIFFE, csrPEM []byte) ([]*x509.Certificate, error) {
	f.calls.Add(1)
	n := f.inFlight.Add(1)
	defer f.inFlight.Add(-1)
	for {
		m := f.maxFlight.Load()
		if n <= m || f.maxFlight.CompareAndSwap(m, n) {
			break
		}
	}
	if f.block != nil {
		select {
		case <-f.block:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if f.fail.Load() > 0 {
		f.fail.Add(-1)
		return nil, errors.New("CA unavailable")
	}
	csr, err := identity.ParseCSR(csrPEM)
	if err != nil {
		return nil, err
	}
	if f.wrongIdent {
		id.ServiceAccount = "someone-else"
	}
	return f.ca.Authority.Issue(csr.PublicKey, id, f.ttl, f.clock.Now(), nil)
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestBackoff(t *testing.T) {
	want := []time.Duration{500 * time.Millisecond, time.Second, 2 * time.Second, 4 * time.Second}
	for i, w := range want {
		if got := Backoff(i + 1); got != w {
			t.Errorf("Backoff(%d) = %s, want %s", i+1, got, w)
		}
	}
	if got := Backoff(30); got != 150*time.Second {
		t.Errorf("Backoff(30) = %s, want the 150s cap", got)
	}
}

func TestRefreshAtHalfLife(t *testing.T) {
	ca := identitytest.NewCA(t, "cluster.local")
	clock := &fakeClock{now: time.Now()}
	f := &fakeCA{ca: ca, clock: clock, ttl: 24 * time.Hour}
	m := NewManager(f, clock, nil)
	defer m.Close()
	id := ca.ID("demo", "echo")
	c1, err := m.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if c1.ID != id || c1.TLS == nil || c1.Bundle == nil {
		t.Fatalf("cert = %+v", c1)
	}
	// The refresh timer is set for half-life (the leaf starts a minute early
	// for clock skew, so half of 24h01m, less the minute already passed).
	waitUntil(t, "refresh timer", func() bool { return len(clock.pending()) == 1 })
	want := RefreshAt(c1.Leaf).Sub(clock.Now())
	if got := clock.pending()[0]; got != want || got < 11*time.Hour || got > 12*time.Hour {
		t.Fatalf("refresh in %s, want %s (about 12h)", got, want)
	}
	clock.Advance(want - time.Second)
	time.Sleep(20 * time.Millisecond)
	if f.calls.Load() != 1 {
		t.Fatalf("refreshed before half-life: %d calls", f.calls.Load())
	}
	clock.Advance(time.Second)
	waitUntil(t, "refresh", func() bool { return f.calls.Load() == 2 })
	waitUntil(t, "new cert", func() bool {
		c, err := m.Get(context.Background(), id)
		return err == nil && c.Leaf.SerialNumber.Cmp(c1.Leaf.SerialNumber) != 0
	})
}

func TestRetryWithBackoff(t *testing.T) {
	ca := identitytest.NewCA(t, "cluster.local")
	clock := &fakeClock{now: time.Now()}
	f := &fakeCA{ca: ca, clock: clock, ttl: time.Hour}
	f.fail.Store(3)
	m := NewManager(f, clock, nil)
	defer m.Close()
	id := ca.ID("demo", "echo")
	if _, err := m.Get(context.Background(), id); err == nil {
		t.Fatal("first Get succeeded though the CA fails")
	}
	for i, want := range []time.Duration{500 * time.Millisecond, time.Second, 2 * time.Second} {
		waitUntil(t, "retry timer", func() bool { return len(clock.pending()) == 1 })
		if got := clock.pending()[0]; got != want {
			t.Fatalf("retry %d after %s, want %s", i+1, got, want)
		}
		clock.Advance(want)
	}
	waitUntil(t, "success", func() bool { _, err := m.Get(context.Background(), id); return err == nil })
	if f.calls.Load() != 4 {
		t.Errorf("%d fetches, want 4", f.calls.Load())
	}
}

func TestAtMostEightInFlight(t *testing.T) {
	ca := identitytest.NewCA(t, "cluster.local")
	clock := &fakeClock{now: time.Now()}
	f := &fakeCA{ca: ca, clock: clock, ttl: time.Hour, block: make(chan struct{})}
	m := NewManager(f, clock, nil)
	defer m.Close()
	for i := 0; i < 20; i++ {
		m.Prefetch(ca.ID("demo", "sa"+string(rune('a'+i))))
	}
	waitUntil(t, "8 in flight", func() bool { return f.inFlight.Load() == MaxInFlight })
	time.Sleep(20 * time.Millisecond)
	if got := f.maxFlight.Load(); got != MaxInFlight {
		t.Fatalf("max in flight %d, want %d", got, MaxInFlight)
	}
	close(f.block)
	for i := 0; i < 20; i++ {
		if _, err := m.Get(context.Background(), ca.ID("demo", "sa"+string(rune('a'+i)))); err != nil {
			t.Fatal(err)
		}
	}
	if f.calls.Load() != 20 {
		t.Errorf("%d fetches, want 20 (one per identity)", f.calls.Load())
	}
}

func TestRejectsWrongIdentityFromCA(t *testing.T) {
	ca := identitytest.NewCA(t, "cluster.local")
	clock := &fakeClock{now: time.Now()}
	m := NewManager(&fakeCA{ca: ca, clock: clock, ttl: time.Hour, wrongIdent: true}, clock, nil)
	defer m.Close()
	_, err := m.Get(context.Background(), ca.ID("demo", "echo"))
	if err == nil || !strings.Contains(err.Error(), "asked for spiffe://cluster.local/ns/demo/sa/echo") {
		t.Fatalf("err = %v", err)
	}
}
