package identity

import (
	"crypto/x509"
	"errors"
	"fmt"
	"time"
)

// MaxChainLen bounds the certificates a peer may present (leaf included).
const MaxChainLen = 8

// Bundle is a set of trusted roots. Holding several lets a mesh rotate its
// root: certificates from the old and the new root verify during the
// overlap. A Bundle is immutable and safe for concurrent use.
type Bundle struct {
	roots []*x509.Certificate
	pool  *x509.CertPool
}

// NewBundle returns a bundle of the given roots, which must be CA
// certificates. Duplicates are dropped.
func NewBundle(roots ...*x509.Certificate) (*Bundle, error) {
	if len(roots) == 0 {
		return nil, errors.New("trust bundle: no roots")
	}
	b := &Bundle{pool: x509.NewCertPool()}
next:
	for i, r := range roots {
		if r == nil {
			return nil, fmt.Errorf("trust bundle: root %d is nil", i)
		}
		if !r.IsCA || !r.BasicConstraintsValid {
			return nil, fmt.Errorf("trust bundle: %q is not a CA certificate", r.Subject.String())
		}
		for _, have := range b.roots {
			if have.Equal(r) {
				continue next
			}
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
func (b *Bundle) Roots() []*x509.Certificate {
	if b == nil {
		return nil
	}
	return append([]*x509.Certificate(nil), b.roots...)
}

// PEM returns the roots in PEM form.
func (b *Bundle) PEM() []byte {
	if b == nil {
		return nil
	}
	return EncodeCerts(b.roots...)
}

// Pool returns the roots as a pool. A nil bundle gives an empty pool (never
// nil, which crypto/x509 would read as "the system roots").
func (b *Bundle) Pool() *x509.CertPool {
	if b == nil {
		return x509.NewCertPool()
	}
	return b.pool.Clone()
}

// Verify checks that chain (leaf first, then any intermediates) chains to
// a root of the bundle at time now, that the leaf is an end-entity
// certificate fit for signing (not a CA), and returns the leaf's SPIFFE id,
// which must be its only URI SAN. The leaf may be used for TLS client or
// server authentication; VerifyFor narrows that.
func (b *Bundle) Verify(chain []*x509.Certificate, now time.Time) (SPIFFE, error) {
	return b.VerifyFor(chain, now, x509.ExtKeyUsageAny)
}

// VerifyFor is Verify for one purpose: x509.ExtKeyUsageClientAuth for a TLS
// client's certificate, x509.ExtKeyUsageServerAuth for a server's.
func (b *Bundle) VerifyFor(chain []*x509.Certificate, now time.Time, usage x509.ExtKeyUsage) (SPIFFE, error) {
	if b == nil || len(b.roots) == 0 {
		return SPIFFE{}, errors.New("no trust bundle")
	}
	if len(chain) == 0 || chain[0] == nil {
		return SPIFFE{}, errors.New("no certificate presented")
	}
	if len(chain) > MaxChainLen {
		return SPIFFE{}, fmt.Errorf("certificate chain of %d certificates, at most %d accepted", len(chain), MaxChainLen)
	}
	leaf := chain[0]
	if err := checkLeafShape(leaf); err != nil {
		return SPIFFE{}, err
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		if c == nil {
			return SPIFFE{}, errors.New("nil certificate in chain")
		}
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots:         b.pool,
		Intermediates: inter,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{usage},
	}); err != nil {
		return SPIFFE{}, fmt.Errorf("certificate verification: %w", err)
	}
	id, err := FromCertificate(leaf)
	if err != nil {
		return SPIFFE{}, fmt.Errorf("peer certificate: %w", err)
	}
	return id, nil
}

// checkLeafShape applies the X.509-SVID rules for a leaf: not a CA, may
// sign (digitalSignature), may not sign certificates or CRLs.
func checkLeafShape(leaf *x509.Certificate) error {
	if leaf.IsCA {
		return fmt.Errorf("certificate %s is a CA certificate, not a workload certificate", describe(leaf))
	}
	if leaf.KeyUsage&(x509.KeyUsageCertSign|x509.KeyUsageCRLSign) != 0 {
		return fmt.Errorf("certificate %s may sign certificates or CRLs, not a workload certificate", describe(leaf))
	}
	if leaf.KeyUsage&x509.KeyUsageDigitalSignature == 0 {
		return fmt.Errorf("certificate %s lacks the digitalSignature key usage", describe(leaf))
	}
	return nil
}

// describe names a certificate in errors: its URI SANs, else its subject.
func describe(c *x509.Certificate) string {
	if len(c.URIs) > 0 {
		return fmt.Sprintf("%v", c.URIs)
	}
	return fmt.Sprintf("%q", c.Subject.String())
}
