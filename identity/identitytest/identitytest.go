// Package identitytest makes throwaway certificate authorities and
// workload certificates for tests.
package identitytest

import (
	"crypto/tls"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/identity"
)

// CA is a test certificate authority.
type CA struct {
	*identity.Authority
	TrustDomain string
}

// NewCA returns a new root CA for trustDomain, valid from a year ago to a
// year ahead (so that IssueAt can make certificates in the past).
func NewCA(t testing.TB, trustDomain string) *CA {
	t.Helper()
	a, err := identity.NewRootAuthority(trustDomain, 2*365*24*time.Hour, time.Now().Add(-365*24*time.Hour))
	if err != nil {
		t.Fatalf("identitytest: %v", err)
	}
	return &CA{Authority: a, TrustDomain: trustDomain}
}

// Bundle returns a bundle holding just this CA's root.
func (c *CA) Bundle() *identity.Bundle {
	b, _ := identity.NewBundle(c.Root()) // a root made by NewRootAuthority is always a CA
	return b
}

// ID returns the identity ns/sa in this CA's trust domain.
func (c *CA) ID(ns, sa string) identity.SPIFFE {
	return identity.SPIFFE{TrustDomain: c.TrustDomain, Namespace: ns, ServiceAccount: sa}
}

// Issue returns a certificate for id valid for ttl from now.
func (c *CA) Issue(t testing.TB, id identity.SPIFFE, ttl time.Duration) *tls.Certificate {
	t.Helper()
	cert, err := c.IssueTLS(id, ttl, time.Now(), nil)
	if err != nil {
		t.Fatalf("identitytest: issuing %s: %v", id, err)
	}
	return cert
}

// IssueAt returns a certificate for id valid from notBefore for ttl.
func (c *CA) IssueAt(t testing.TB, id identity.SPIFFE, notBefore time.Time, ttl time.Duration) *tls.Certificate {
	t.Helper()
	cert, err := c.IssueTLS(id, ttl, notBefore.Add(time.Minute), nil)
	if err != nil {
		t.Fatalf("identitytest: issuing %s: %v", id, err)
	}
	return cert
}
