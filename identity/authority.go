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
	key, err := NewKey()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
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

// Root returns the last certificate of the chain.
func (a *Authority) Root() *x509.Certificate { return a.Chain[len(a.Chain)-1] }

func randomSerial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return n
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
	if ttl <= 0 {
		return nil, errors.New("certificate lifetime must be positive")
	}
	notAfter := now.Add(ttl)
	if notAfter.After(a.Cert.NotAfter) {
		notAfter = a.Cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		NotBefore:             now.Add(-time.Minute), // tolerate small clock skew
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		URIs:                  []*url.URL{id.URL()},
	}
	if opts != nil {
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
func TLSCertificate(chain []*x509.Certificate, key *ecdsa.PrivateKey) *tls.Certificate {
	c := &tls.Certificate{PrivateKey: key, Leaf: chain[0]}
	for i, cert := range chain {
		if i > 0 && i == len(chain)-1 && cert.IsCA && isSelfSigned(cert) {
			break
		}
		c.Certificate = append(c.Certificate, cert.Raw)
	}
	return c
}

func isSelfSigned(c *x509.Certificate) bool {
	return c.CheckSignatureFrom(c) == nil
}
