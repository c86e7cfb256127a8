package identity

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"time"
)

// Authority signs workload certificates with a CA key. The control plane's
// CA service wraps one; tests use one directly (see identitytest).
type Authority struct {
	Cert *x509.Certificate // the signing certificate (a root, or an intermediate)
	Key  crypto.Signer
	// Chain is what follows the leaf in an issued chain, ending with the root.
	Chain []*x509.Certificate
}

// NewRootAuthority creates a self-signed ECDSA P-256 root for trustDomain.
func NewRootAuthority(trustDomain string, validity time.Duration, now time.Time) (*Authority, error) {
	if err := ValidateTrustDomain(trustDomain); err != nil {
		return nil, err
	}
	if validity <= 0 {
		return nil, errors.New("root validity must be positive")
	}
	key, err := NewKey()
	if err != nil {
		return nil, err
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{trustDomain}, CommonName: "Ambit root CA"},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(validity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		URIs:                  []*url.URL{{Scheme: "spiffe", Host: trustDomain}},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("creating root certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &Authority{Cert: cert, Key: key, Chain: []*x509.Certificate{cert}}, nil
}

// Root returns the last certificate of the chain (nil if there is none).
func (a *Authority) Root() *x509.Certificate {
	if a == nil || len(a.Chain) == 0 {
		return nil
	}
	return a.Chain[len(a.Chain)-1]
}

// Check verifies that the authority is usable at now: Chain starts with
// Cert and ends with a self-signed root, each certificate is a CA that
// signed the one before it, Key is Cert's key, and Cert is valid at now.
func (a *Authority) Check(now time.Time) error {
	if a == nil || a.Cert == nil || a.Key == nil || len(a.Chain) == 0 {
		return errors.New("authority: certificate, key and chain required")
	}
	if !a.Chain[0].Equal(a.Cert) {
		return errors.New("authority: chain does not start with the signing certificate")
	}
	if !publicKeysEqual(a.Cert.PublicKey, a.Key.Public()) {
		return errors.New("authority: key does not match the signing certificate")
	}
	for i, c := range a.Chain {
		if c == nil || !c.IsCA || !c.BasicConstraintsValid {
			return fmt.Errorf("authority: chain element %d is not a CA certificate", i)
		}
		if c.KeyUsage != 0 && c.KeyUsage&x509.KeyUsageCertSign == 0 {
			return fmt.Errorf("authority: chain element %d %q may not sign certificates", i, c.Subject.String())
		}
		parent := c
		if i+1 < len(a.Chain) {
			parent = a.Chain[i+1]
		}
		if err := c.CheckSignatureFrom(parent); err != nil {
			return fmt.Errorf("authority: chain element %d %q is not signed by the next one: %w", i, c.Subject.String(), err)
		}
	}
	if now.Before(a.Cert.NotBefore) || !now.Before(a.Cert.NotAfter) {
		return fmt.Errorf("authority: signing certificate valid from %s to %s, not at %s", a.Cert.NotBefore.UTC(), a.Cert.NotAfter.UTC(), now.UTC())
	}
	return nil
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	e, ok := a.(equaler)
	return ok && e.Equal(b)
}

func randomSerial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("certificate serial: %w", err)
	}
	return n.Add(n, big.NewInt(1)), nil // never zero
}

// LeafOptions adds to what Issue puts in a certificate.
type LeafOptions struct {
	// Extensions are extra extensions, e.g. the node-proxy extension.
	Extensions []pkix.Extension
}

// Issue signs a leaf for id over pub, valid from now for ttl (never past
// the signing certificate). The only SAN is the SPIFFE URI, whatever the
// request asked for. It returns the chain, leaf first and root last.
func (a *Authority) Issue(pub crypto.PublicKey, id SPIFFE, ttl time.Duration, now time.Time, opts *LeafOptions) ([]*x509.Certificate, error) {
	if err := id.Validate(); err != nil {
		return nil, err
	}
	if a == nil || a.Cert == nil || a.Key == nil {
		return nil, errors.New("authority has no signing certificate or key")
	}
	if pub == nil {
		return nil, errors.New("no public key to certify")
	}
	if ttl <= 0 {
		return nil, errors.New("certificate lifetime must be positive")
	}
	if now.Before(a.Cert.NotBefore) || !now.Before(a.Cert.NotAfter) {
		return nil, fmt.Errorf("signing certificate is valid from %s to %s, not now (%s)", a.Cert.NotBefore.UTC(), a.Cert.NotAfter.UTC(), now.UTC())
	}
	notAfter := now.Add(ttl)
	if notAfter.After(a.Cert.NotAfter) {
		notAfter = a.Cert.NotAfter
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		NotBefore:             now.Add(-time.Minute), // tolerate small clock skew
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		URIs:                  []*url.URL{id.URL()},
	}
	if opts != nil {
		for _, ext := range opts.Extensions {
			// Standard certificate extensions (SANs, key usage, basic
			// constraints, ...) are the CA's to set, never a caller's.
			if len(ext.Id) >= 3 && ext.Id[0] == 2 && ext.Id[1] == 5 && ext.Id[2] == 29 {
				return nil, fmt.Errorf("extension %s may not be set by the caller", ext.Id)
			}
		}
		tmpl.ExtraExtensions = opts.Extensions
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.Cert, pub, a.Key)
	if err != nil {
		return nil, fmt.Errorf("signing certificate for %s: %w", id, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return append([]*x509.Certificate{leaf}, a.Chain...), nil
}

// IssueTLS creates a key and a certificate for id, ready for crypto/tls.
func (a *Authority) IssueTLS(id SPIFFE, ttl time.Duration, now time.Time, opts *LeafOptions) (*tls.Certificate, error) {
	key, err := NewKey()
	if err != nil {
		return nil, err
	}
	chain, err := a.Issue(key.Public(), id, ttl, now, opts)
	if err != nil {
		return nil, err
	}
	return TLSCertificate(chain, key), nil
}

// TLSCertificate assembles a tls.Certificate from a chain (leaf first; the
// root is left out, peers have it) and its key.
// Every trailing self-signed root is left out (a chain may end with several
// during a root rotation). An empty chain gives a certificate with no
// certificates, which a peer refuses.
func TLSCertificate(chain []*x509.Certificate, key *ecdsa.PrivateKey) *tls.Certificate {
	c := &tls.Certificate{PrivateKey: key}
	if len(chain) == 0 {
		return c
	}
	c.Leaf = chain[0]
	end := len(chain)
	for end > 1 && chain[end-1].IsCA && isSelfSigned(chain[end-1]) {
		end--
	}
	for _, cert := range chain[:end] {
		c.Certificate = append(c.Certificate, cert.Raw)
	}
	return c
}

func isSelfSigned(c *x509.Certificate) bool {
	return c.CheckSignatureFrom(c) == nil
}
