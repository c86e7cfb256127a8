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
// and certificates can rotate under a live listener.

// CertFunc returns the certificate to present (called per handshake).
type CertFunc func() (*tls.Certificate, error)

// BundleFunc returns the trust bundle in force (called per handshake).
type BundleFunc func() *Bundle

// ServerTLSConfig is the HBONE server side: it requires a client
// certificate that chains to the bundle and whose SPIFFE trust domain is
// trustDomain. The client's identity is not checked here: authorization
// policy decides what it may do (read it with PeerIdentity).
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
		GetCertificate:         func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return cert() },
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			id, err := verifyRaw(raw, bundle(), now())
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

// ClientTLSConfig is the HBONE client side: it presents cert and accepts
// the server only if its chain verifies against the bundle and its SPIFFE
// id is one of expected.
func ClientTLSConfig(cert CertFunc, bundle BundleFunc, expected []SPIFFE, now func() time.Time) *tls.Config {
	if now == nil {
		now = time.Now
	}
	want := append([]SPIFFE(nil), expected...)
	return &tls.Config{
		MinVersion:             tls.VersionTLS13,
		MaxVersion:             tls.VersionTLS13,
		NextProtos:             []string{"h2"},
		InsecureSkipVerify:     true, // no hostname checks: VerifyPeerCertificate checks chain and SAN
		SessionTicketsDisabled: true,
		GetClientCertificate:   func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert() },
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			id, err := verifyRaw(raw, bundle(), now())
			if err != nil {
				return fmt.Errorf("server certificate: %w", err)
			}
			for _, w := range want {
				if id == w {
					return nil
				}
			}
			names := make([]string, len(want))
			for i, w := range want {
				names[i] = w.String()
			}
			return fmt.Errorf("server certificate: identity %s is not the expected %s", id, strings.Join(names, " or "))
		},
	}
}

func verifyRaw(raw [][]byte, b *Bundle, now time.Time) (SPIFFE, error) {
	if len(raw) == 0 {
		return SPIFFE{}, errors.New("none presented")
	}
	chain := make([]*x509.Certificate, 0, len(raw))
	for _, r := range raw {
		c, err := x509.ParseCertificate(r)
		if err != nil {
			return SPIFFE{}, fmt.Errorf("parsing: %w", err)
		}
		chain = append(chain, c)
	}
	return b.Verify(chain, now)
}

// PeerIdentity returns the SPIFFE id of the peer of a completed handshake.
func PeerIdentity(cs tls.ConnectionState) (SPIFFE, error) {
	if len(cs.PeerCertificates) == 0 {
		return SPIFFE{}, errors.New("peer presented no certificate")
	}
	return FromCertificate(cs.PeerCertificates[0])
}
