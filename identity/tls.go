package identity

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"time"
)

// HBONE's TLS profile: TLS 1.3 only, ALPN h2, no SNI, no session resumption,
// mutual authentication with SPIFFE identities. Chains are verified by our
// own code against the current bundle (never by hostname), so the bundle
// and certificates can rotate under a live listener. Session tickets are
// off on both sides, so every connection runs the full verification.

// CertFunc returns the certificate to present (called per handshake).
type CertFunc func() (*tls.Certificate, error)

// BundleFunc returns the trust bundle in force (called per handshake).
type BundleFunc func() *Bundle

// StaticCert is a CertFunc that always returns c.
func StaticCert(c *tls.Certificate) CertFunc {
	return func() (*tls.Certificate, error) { return c, nil }
}

// StaticBundle is a BundleFunc that always returns b.
func StaticBundle(b *Bundle) BundleFunc { return func() *Bundle { return b } }

// ServerTLSConfig is the HBONE server side: it requires a client
// certificate that chains to the bundle, is fit for client authentication,
// and whose SPIFFE trust domain is trustDomain. The client's identity is not
// checked here: authorization policy decides what it may do (read it with
// PeerIdentity). now may be nil (time.Now).
func ServerTLSConfig(cert CertFunc, bundle BundleFunc, trustDomain string, now func() time.Time) *tls.Config {
	if now == nil {
		now = time.Now
	}
	return &tls.Config{
		MinVersion:             tls.VersionTLS13,
		MaxVersion:             tls.VersionTLS13,
		NextProtos:             []string{"h2"},
		ClientAuth:             tls.RequireAnyClientCert, // verified below, against the live bundle
		SessionTicketsDisabled: true,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			c, err := cert()
			if err != nil {
				return nil, fmt.Errorf("server certificate: %w", err)
			}
			if c == nil || len(c.Certificate) == 0 {
				return nil, errors.New("server certificate: none available")
			}
			return c, nil
		},
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			id, err := verifyRaw(raw, bundle(), now(), x509.ExtKeyUsageClientAuth)
			if err != nil {
				return fmt.Errorf("client certificate: %w", err)
			}
			if id.TrustDomain != trustDomain {
				return fmt.Errorf("client certificate: identity %s is from trust domain %q, want %q", id, id.TrustDomain, trustDomain)
			}
			return nil
		},
	}
}

// ClientTLSConfig is the HBONE client side: it presents cert (sends no SNI)
// and accepts the server only if its chain verifies against the bundle, is
// fit for server authentication, and its SPIFFE id is one of expected. An
// empty expected list accepts no server. now may be nil (time.Now).
func ClientTLSConfig(cert CertFunc, bundle BundleFunc, expected []SPIFFE, now func() time.Time) *tls.Config {
	if now == nil {
		now = time.Now
	}
	want := append([]SPIFFE(nil), expected...)
	return &tls.Config{
		MinVersion:             tls.VersionTLS13,
		MaxVersion:             tls.VersionTLS13,
		NextProtos:             []string{"h2"},
		ServerName:             "",   // no SNI: identities, not names, are checked
		InsecureSkipVerify:     true, // no hostname checks: VerifyPeerCertificate checks chain and SAN
		SessionTicketsDisabled: true,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			c, err := cert()
			if err != nil {
				return nil, fmt.Errorf("client certificate: %w", err)
			}
			if c == nil {
				// crypto/tls needs a non-nil value; an empty one sends no
				// certificate and the server refuses us with a clear error.
				return &tls.Certificate{}, nil
			}
			return c, nil
		},
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			id, err := verifyRaw(raw, bundle(), now(), x509.ExtKeyUsageServerAuth)
			if err != nil {
				return fmt.Errorf("server certificate: %w", err)
			}
			return CheckExpected(id, want)
		},
	}
}

// CheckExpected returns nil if id is one of expected, else an error naming
// both.
func CheckExpected(id SPIFFE, expected []SPIFFE) error {
	if len(expected) == 0 {
		return fmt.Errorf("server certificate: identity %s, but no identity is expected", id)
	}
	for _, w := range expected {
		if id == w {
			return nil
		}
	}
	names := make([]string, len(expected))
	for i, w := range expected {
		names[i] = w.String()
	}
	return fmt.Errorf("server certificate: identity %s is not the expected %s", id, strings.Join(names, " or "))
}

func verifyRaw(raw [][]byte, b *Bundle, now time.Time, usage x509.ExtKeyUsage) (SPIFFE, error) {
	if len(raw) == 0 {
		return SPIFFE{}, errors.New("none presented")
	}
	if len(raw) > MaxChainLen {
		return SPIFFE{}, fmt.Errorf("chain of %d certificates, at most %d accepted", len(raw), MaxChainLen)
	}
	chain := make([]*x509.Certificate, 0, len(raw))
	for i, r := range raw {
		c, err := x509.ParseCertificate(r)
		if err != nil {
			return SPIFFE{}, fmt.Errorf("parsing certificate %d of the chain: %w", i, err)
		}
		chain = append(chain, c)
	}
	return b.VerifyFor(chain, now, usage)
}

// PeerIdentity returns the SPIFFE id of the peer of a completed handshake.
// It reads the leaf only: the chain must have been verified during the
// handshake, as ServerTLSConfig and ClientTLSConfig do.
func PeerIdentity(cs tls.ConnectionState) (SPIFFE, error) {
	if !cs.HandshakeComplete {
		return SPIFFE{}, errors.New("peer identity: handshake not complete")
	}
	if len(cs.PeerCertificates) == 0 {
		return SPIFFE{}, errors.New("peer presented no certificate")
	}
	return FromCertificate(cs.PeerCertificates[0])
}
