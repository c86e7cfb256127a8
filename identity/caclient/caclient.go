// Package caclient keeps workload certificates fresh: one certificate per
// identity, fetched from the CA (Istio's IstioCertificateService, acting
// for workloads through ImpersonatedIdentity when the caller is a node
// proxy), refreshed at half-life, retried with exponential backoff from
// 500 ms to 150 s, with at most 8 requests in flight.
package caclient

import (
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/structpb"
	securityapi "istio.io/api/security/v1alpha1"

	"github.com/ambit-mesh/ambit/identity"
)

// Limits, as upstream ztunnel.
const (
	MaxInFlight    = 8
	InitialBackoff = 500 * time.Millisecond
	MaxBackoff     = 150 * time.Second
	// MinRefresh is the shortest wait before renewing a certificate, so
	// that a CA handing out certificates already past half-life (short
	// lifetimes, clock skew) is not asked again in a tight loop.
	MinRefresh = time.Second
	// FetchTimeout bounds one request to the CA, so that a hung request
	// cannot hold one of the MaxInFlight slots for ever.
	FetchTimeout = 30 * time.Second
)

// ErrClosed is returned by Get after Close.
var ErrClosed = errors.New("certificate manager closed")

// Fetcher obtains a signed chain (leaf first, root last) for a CSR.
type Fetcher interface {
	Fetch(ctx context.Context, id identity.SPIFFE, csrPEM []byte) ([]*x509.Certificate, error)
}

// Clock is time, injectable for tests.
type Clock interface {
	Now() time.Time
	After(d time.Duration) <-chan time.Time
}

type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// Cert is a workload certificate ready for TLS, and the trust bundle that
// came with it.
type Cert struct {
	ID     identity.SPIFFE
	TLS    *tls.Certificate
	Leaf   *x509.Certificate
	Bundle *identity.Bundle
}

// RefreshAt is when a certificate should be renewed: half way through its
// life.
func RefreshAt(leaf *x509.Certificate) time.Time {
	return leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore) / 2)
}

// Backoff is the wait after the n-th consecutive failure (n >= 1).
func Backoff(n int) time.Duration {
	d := InitialBackoff
	for i := 1; i < n && d < MaxBackoff; i++ {
		d *= 2
	}
	return min(d, MaxBackoff)
}

// Manager keeps one certificate per identity.
type Manager struct {
	fetcher Fetcher
	clock   Clock
	logger  *slog.Logger
	sem     chan struct{}

	mu      sync.Mutex
	entries map[identity.SPIFFE]*entry
	ctx     context.Context
	cancel  context.CancelFunc
}

type entry struct {
	mu      sync.Mutex
	cert    *Cert
	err     error
	settled chan struct{} // closed after the first attempt, success or not
	cancel  context.CancelFunc
}

// NewManager returns a manager using fetcher. clock may be nil.
func NewManager(fetcher Fetcher, clock Clock, logger *slog.Logger) *Manager {
	if clock == nil {
		clock = realClock{}
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Manager{fetcher: fetcher, clock: clock, logger: logger, sem: make(chan struct{}, MaxInFlight),
		entries: map[identity.SPIFFE]*entry{}, ctx: ctx, cancel: cancel}
}

// Close stops every refresh.
func (m *Manager) Close() { m.cancel() }

// Get returns a valid certificate for id, fetching it first if needed.
// After a failed first fetch it returns that error while retries go on in
// the background.
func (m *Manager) Get(ctx context.Context, id identity.SPIFFE) (*Cert, error) {
	if m.ctx.Err() != nil {
		return nil, fmt.Errorf("certificate for %s: %w", id, ErrClosed)
	}
	e := m.entry(id)
	select {
	case <-e.settled:
	case <-ctx.Done():
		return nil, fmt.Errorf("certificate for %s: %w", id, ctx.Err())
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.cert != nil && m.clock.Now().Before(e.cert.Leaf.NotAfter) {
		return e.cert, nil
	}
	if e.err != nil {
		return nil, fmt.Errorf("certificate for %s: %w", id, e.err)
	}
	if m.ctx.Err() != nil {
		return nil, fmt.Errorf("certificate for %s: %w", id, ErrClosed)
	}
	return nil, fmt.Errorf("certificate for %s: expired and not yet renewed", id)
}

// Prefetch starts fetching id without waiting.
func (m *Manager) Prefetch(id identity.SPIFFE) { m.entry(id) }

// Forget stops refreshing id and drops its certificate.
func (m *Manager) Forget(id identity.SPIFFE) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if e, ok := m.entries[id]; ok {
		e.cancel()
		delete(m.entries, id)
	}
}

func (m *Manager) entry(id identity.SPIFFE) *entry {
	m.mu.Lock()
	defer m.mu.Unlock()
	if e, ok := m.entries[id]; ok {
		return e
	}
	ctx, cancel := context.WithCancel(m.ctx)
	e := &entry{settled: make(chan struct{}), cancel: cancel}
	m.entries[id] = e
	go m.run(ctx, id, e)
	return e
}

// run fetches and refreshes one identity until ctx is done.
func (m *Manager) run(ctx context.Context, id identity.SPIFFE, e *entry) {
	failures := 0
	settle := sync.OnceFunc(func() { close(e.settled) })
	defer settle()
	for {
		cert, err := m.fetch(ctx, id)
		if ctx.Err() != nil {
			return
		}
		var wait time.Duration
		e.mu.Lock()
		if err != nil {
			failures++
			e.err = err
			wait = Backoff(failures)
			m.logger.Warn("certificate fetch failed", "identity", id.String(), "attempt", failures, "retryIn", wait, "err", err)
		} else {
			failures = 0
			e.cert, e.err = cert, nil
			wait = max(RefreshAt(cert.Leaf).Sub(m.clock.Now()), MinRefresh)
			m.logger.Info("certificate ready", "identity", id.String(), "notAfter", cert.Leaf.NotAfter, "refreshIn", wait)
		}
		e.mu.Unlock()
		settle()
		select {
		case <-ctx.Done():
			return
		case <-m.clock.After(wait):
		}
	}
}

func (m *Manager) fetch(ctx context.Context, id identity.SPIFFE) (*Cert, error) {
	select {
	case m.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	defer func() { <-m.sem }()
	key, err := identity.NewKey()
	if err != nil {
		return nil, err
	}
	csr, err := identity.NewCSR(key, id)
	if err != nil {
		return nil, err
	}
	fctx, cancel := context.WithTimeout(ctx, FetchTimeout)
	defer cancel()
	chain, err := m.fetcher.Fetch(fctx, id, csr)
	if err != nil {
		return nil, err
	}
	return checkChain(id, chain, key, m.clock.Now())
}

// checkChain verifies what the CA returned: the leaf is for id and our key,
// and chains to the root at the end of the chain, which becomes the trust
// bundle for data-plane TLS.
func checkChain(id identity.SPIFFE, chain []*x509.Certificate, key *ecdsa.PrivateKey, now time.Time) (*Cert, error) {
	if len(chain) < 2 {
		return nil, fmt.Errorf("CA returned %d certificates, want leaf ... root", len(chain))
	}
	for i, c := range chain {
		if c == nil {
			return nil, fmt.Errorf("CA response: certificate %d is missing", i)
		}
	}
	leaf := chain[0]
	if !key.PublicKey.Equal(leaf.PublicKey) {
		return nil, errors.New("CA returned a certificate for another key")
	}
	// Trailing self-signed CA certificates are the roots (several during a
	// root rotation); what precedes them is the leaf and intermediates.
	split := len(chain)
	for split > 1 && chain[split-1].IsCA && chain[split-1].CheckSignatureFrom(chain[split-1]) == nil {
		split--
	}
	if split == len(chain) {
		return nil, errors.New("CA response: no root at the end of the chain")
	}
	bundle, err := identity.NewBundle(chain[split:]...)
	if err != nil {
		return nil, fmt.Errorf("CA response: %w", err)
	}
	got, err := bundle.VerifyFor(chain[:split], now, x509.ExtKeyUsageClientAuth)
	if err != nil {
		return nil, fmt.Errorf("CA response: %w", err)
	}
	if got != id {
		return nil, fmt.Errorf("CA returned a certificate for %s, asked for %s", got, id)
	}
	// The leaf serves both HBONE sides.
	if _, err := bundle.VerifyFor(chain[:split], now, x509.ExtKeyUsageServerAuth); err != nil {
		return nil, fmt.Errorf("CA response: %w", err)
	}
	return &Cert{ID: id, TLS: identity.TLSCertificate(chain[:split], key), Leaf: leaf, Bundle: bundle}, nil
}

// ImpersonatedIdentityKey is the request metadata key with which a node
// proxy asks for a workload's identity (as Istio's ztunnel).
const ImpersonatedIdentityKey = "ImpersonatedIdentity"

// GRPCFetcher fetches from an IstioCertificateService.
type GRPCFetcher struct {
	Client securityapi.IstioCertificateServiceClient
	// Impersonate sets ImpersonatedIdentity: the caller is a node proxy
	// asking for a workload's identity.
	Impersonate bool
	// TTL is the requested lifetime (0: the CA's default).
	TTL time.Duration
}

// Fetch implements Fetcher.
func (f *GRPCFetcher) Fetch(ctx context.Context, id identity.SPIFFE, csrPEM []byte) ([]*x509.Certificate, error) {
	req := &securityapi.IstioCertificateRequest{Csr: string(csrPEM), ValidityDuration: int64(f.TTL / time.Second)}
	if f.Impersonate {
		md, err := structpb.NewStruct(map[string]any{ImpersonatedIdentityKey: id.String()})
		if err != nil {
			return nil, err
		}
		req.Metadata = md
	}
	resp, err := f.Client.CreateCertificate(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("CreateCertificate for %s: %w", id, err)
	}
	var chain []*x509.Certificate
	for i, p := range resp.GetCertChain() {
		certs, err := identity.ParseCerts([]byte(p))
		if err != nil {
			return nil, fmt.Errorf("CreateCertificate for %s: chain element %d: %w", id, i, err)
		}
		chain = append(chain, certs...)
	}
	return chain, nil
}
