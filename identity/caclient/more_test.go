package caclient

import (
	"context"
	"crypto/x509"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/identity"
	"github.com/ambit-mesh/ambit/identity/identitytest"
)

// fetchFunc is a Fetcher made of a function.
type fetchFunc func(ctx context.Context, id identity.SPIFFE, csrPEM []byte) ([]*x509.Certificate, error)

func (f fetchFunc) Fetch(ctx context.Context, id identity.SPIFFE, csrPEM []byte) ([]*x509.Certificate, error) {
	return f(ctx, id, csrPEM)
}

// TestResponseChecks: what the CA returns is refused unless it is a chain
// for the identity asked and the key sent, ending with its root.
func TestResponseChecks(t *testing.T) {
	ca := identitytest.NewCA(t, "cluster.local")
	other := identitytest.NewCA(t, "cluster.local")
	id := ca.ID("demo", "echo")
	now := time.Now()
	sign := func(a *identitytest.CA, csrPEM []byte, id identity.SPIFFE, ttl time.Duration, at time.Time) []*x509.Certificate {
		csr, err := identity.ParseCSR(csrPEM)
		if err != nil {
			t.Fatal(err)
		}
		chain, err := a.Authority.Issue(csr.PublicKey, id, ttl, at, nil)
		if err != nil {
			t.Fatal(err)
		}
		return chain
	}
	otherKey, _ := identity.NewKey()
	tests := []struct {
		name    string
		respond func(csr []byte) []*x509.Certificate
		wantErr string
		roots   int
	}{
		{"good", func(csr []byte) []*x509.Certificate { return sign(ca, csr, id, time.Hour, now) }, "", 1},
		{"two roots (rotation)", func(csr []byte) []*x509.Certificate {
			return append(sign(ca, csr, id, time.Hour, now), other.Root())
		}, "", 2},
		{"leaf only", func(csr []byte) []*x509.Certificate { return sign(ca, csr, id, time.Hour, now)[:1] }, "want leaf ... root", 0},
		{"nil element", func(csr []byte) []*x509.Certificate {
			return []*x509.Certificate{sign(ca, csr, id, time.Hour, now)[0], nil}
		}, "missing", 0},
		{"no root at the end", func(csr []byte) []*x509.Certificate {
			c := sign(ca, csr, id, time.Hour, now)
			return []*x509.Certificate{c[0], c[0]}
		}, "no root", 0},
		{"root that did not sign the leaf", func(csr []byte) []*x509.Certificate {
			return []*x509.Certificate{sign(ca, csr, id, time.Hour, now)[0], other.Root()}
		}, "unknown authority", 0},
		{"another identity", func(csr []byte) []*x509.Certificate { return sign(ca, csr, ca.ID("demo", "db"), time.Hour, now) }, "asked for " + id.String(), 0},
		{"another key", func(csr []byte) []*x509.Certificate {
			c, err := ca.Authority.Issue(otherKey.Public(), id, time.Hour, now, nil)
			if err != nil {
				t.Fatal(err)
			}
			return c
		}, "another key", 0},
		{"expired", func(csr []byte) []*x509.Certificate { return sign(ca, csr, id, time.Hour, now.Add(-3*time.Hour)) }, "expired", 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clock := &fakeClock{now: now}
			m := NewManager(fetchFunc(func(_ context.Context, _ identity.SPIFFE, csr []byte) ([]*x509.Certificate, error) {
				return tc.respond(csr), nil
			}), clock, nil)
			defer m.Close()
			c, err := m.Get(context.Background(), id)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(c.Bundle.Roots()) != tc.roots || len(c.TLS.Certificate) != 1 {
				t.Errorf("%d roots, TLS chain of %d", len(c.Bundle.Roots()), len(c.TLS.Certificate))
			}
		})
	}
}

// TestShortLivedNoTightLoop: a certificate already past half-life when it
// arrives is renewed after MinRefresh, not at once in a loop.
func TestShortLivedNoTightLoop(t *testing.T) {
	ca := identitytest.NewCA(t, "cluster.local")
	clock := &fakeClock{now: time.Now()}
	f := &fakeCA{ca: ca, clock: clock, ttl: 30 * time.Second} // starts 1 min early: past half-life
	m := NewManager(f, clock, nil)
	defer m.Close()
	if _, err := m.Get(context.Background(), ca.ID("demo", "echo")); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "refresh timer", func() bool { return len(clock.pending()) == 1 })
	if got := clock.pending()[0]; got != MinRefresh {
		t.Fatalf("refresh in %s, want %s", got, MinRefresh)
	}
	time.Sleep(20 * time.Millisecond)
	if f.calls.Load() != 1 {
		t.Fatalf("%d fetches without the clock moving", f.calls.Load())
	}
}

// TestRefreshFailureKeepsCert: while renewals fail the current certificate
// is served until it expires; then Get reports the failure.
func TestRefreshFailureKeepsCert(t *testing.T) {
	ca := identitytest.NewCA(t, "cluster.local")
	clock := &fakeClock{now: time.Now()}
	f := &fakeCA{ca: ca, clock: clock, ttl: time.Hour}
	m := NewManager(f, clock, nil)
	defer m.Close()
	id := ca.ID("demo", "echo")
	first, err := m.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	f.fail.Store(1 << 20)
	waitUntil(t, "refresh timer", func() bool { return len(clock.pending()) == 1 })
	clock.Advance(clock.pending()[0])
	waitUntil(t, "failed refresh", func() bool { return f.calls.Load() == 2 && len(clock.pending()) == 1 })
	if got := clock.pending()[0]; got != InitialBackoff {
		t.Errorf("retry in %s, want %s", got, InitialBackoff)
	}
	if c, err := m.Get(context.Background(), id); err != nil || c != first {
		t.Fatalf("during failed renewals: %v, %v", c, err)
	}
	clock.Advance(first.Leaf.NotAfter.Sub(clock.Now()) + time.Second)
	waitUntil(t, "expiry reported", func() bool {
		_, err := m.Get(context.Background(), id)
		return err != nil && strings.Contains(err.Error(), "CA unavailable")
	})
}

func TestForgetAndClose(t *testing.T) {
	ca := identitytest.NewCA(t, "cluster.local")
	clock := &fakeClock{now: time.Now()}
	f := &fakeCA{ca: ca, clock: clock, ttl: time.Hour}
	m := NewManager(f, clock, nil)
	id := ca.ID("demo", "echo")
	if _, err := m.Get(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "refresh timer", func() bool { return len(clock.pending()) == 1 })
	m.Forget(id)
	clock.Advance(2 * time.Hour)
	time.Sleep(20 * time.Millisecond)
	if f.calls.Load() != 1 {
		t.Errorf("forgotten identity refreshed: %d fetches", f.calls.Load())
	}
	if _, err := m.Get(context.Background(), id); err != nil || f.calls.Load() != 2 {
		t.Errorf("Get after Forget: %v, %d fetches", err, f.calls.Load())
	}
	m.Close()
	if _, err := m.Get(context.Background(), ca.ID("demo", "other")); !errors.Is(err, ErrClosed) {
		t.Errorf("Get after Close: %v", err)
	}
}

// TestGetHonoursContext: a caller waiting for a first fetch that hangs
// gets its context's error, and the hung fetch holds no slot for ever.
func TestGetHonoursContext(t *testing.T) {
	ca := identitytest.NewCA(t, "cluster.local")
	clock := &fakeClock{now: time.Now()}
	f := &fakeCA{ca: ca, clock: clock, ttl: time.Hour, block: make(chan struct{})}
	m := NewManager(f, clock, nil)
	defer m.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := m.Get(ctx, ca.ID("demo", "echo")); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v", err)
	}
	var deadline time.Time
	m2 := NewManager(fetchFunc(func(ctx context.Context, _ identity.SPIFFE, _ []byte) ([]*x509.Certificate, error) {
		deadline, _ = ctx.Deadline()
		return nil, errors.New("no")
	}), clock, nil)
	defer m2.Close()
	_, _ = m2.Get(context.Background(), ca.ID("demo", "echo"))
	if d := time.Until(deadline); d <= 0 || d > FetchTimeout {
		t.Errorf("fetch deadline in %s, want within %s", d, FetchTimeout)
	}
	close(f.block)
}
