package identity

import (
	"crypto/x509"
	"errors"
	"fmt"
	"time"
)

// Bundle is a set of trusted roots. Holding several lets a mesh rotate its
// root: certificates from the old and the new root verify during the
// overlap.
type Bundle struct {
	roots []*x509.Certificate
	pool  *x509.CertPool
}

// NewBundle returns a bundle of the given roots, which must be CA
// certificates.
func NewBundle(roots ...*x509.Certificate) (*Bundle, error) {
	if len(roots) == 0 {
		return nil, errors.New("trust bundle: no roots")
	}
	b := &Bundle{pool: x509.NewCertPool()}
	for _, r := range roots {
		if !r.IsCA {
			return nil, fmt.Errorf("trust bundle: %q is not a CA certificate", r.Subject.String())
		}
		b.roots = append(b.roots, r)
		b.pool.AddCert(r)
	}
	return b, nil
}

// ParseBundle reads a bundle from PEM.
func ParseBundle(pemBytes []byte) (*Bundle, error) {
	certs, err := ParseCerts(pemBytes)
	if err != nil {
		return nil, fmt.Errorf("trust bundle: %w", err)
	}
	return NewBundle(certs...)
}

// Roots returns the roots.
func (b *Bundle) Roots() []*x509.Certificate { return append([]*x509.Certificate(nil), b.roots...) }

// PEM returns the roots in PEM form.
func (b *Bundle) PEM() []byte { return EncodeCerts(b.roots...) }

// Pool returns the roots as a pool.
func (b *Bundle) Pool() *x509.CertPool { return b.pool }

// Verify checks that chain (leaf first, then any intermediates) chains to
// a root of the bundle at time now, and returns the leaf's SPIFFE id.
func (b *Bundle) Verify(chain []*x509.Certificate, now time.Time) (SPIFFE, error) {
	if b == nil {
		return SPIFFE{}, errors.New("no trust bundle")
	}
	if len(chain) == 0 {
		return SPIFFE{}, errors.New("no certificate presented")
	}
	leaf := chain[0]
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots:         b.pool,
		Intermediates: inter,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}); err != nil {
		return SPIFFE{}, fmt.Errorf("certificate verification: %w", err)
	}
	id, err := FromCertificate(leaf)
	if err != nil {
		return SPIFFE{}, fmt.Errorf("peer certificate: %w", err)
	}
	return id, nil
}
