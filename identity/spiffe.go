// Package identity holds workload identity: SPIFFE ids of the form
// spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>, ECDSA keys
// and certificate signing requests, trust bundles (with several roots, for
// root rotation), certificate chain verification with URI-SAN checks, and
// the TLS configurations HBONE uses on both sides.
package identity

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/ambit-mesh/ambit/internal/dnsname"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// DefaultTrustDomain is the trust domain when none is configured.
const DefaultTrustDomain = "cluster.local"

// ControlPlane is the identity of the control plane's serving certificate,
// istiod's: proxies verify it when they dial the control plane, and the
// control plane's CA issues it to itself.
func ControlPlane(trustDomain string) SPIFFE {
	return SPIFFE{TrustDomain: trustDomain, Namespace: "istio-system", ServiceAccount: "istiod"}
}

// SPIFFE is a workload identity: spiffe://TrustDomain/ns/Namespace/sa/ServiceAccount.
type SPIFFE struct {
	TrustDomain    string
	Namespace      string
	ServiceAccount string
}

// String returns the URI form.
func (id SPIFFE) String() string {
	return "spiffe://" + id.TrustDomain + "/ns/" + id.Namespace + "/sa/" + id.ServiceAccount
}

// URL returns the URI form as a *url.URL, for certificate SANs.
func (id SPIFFE) URL() *url.URL {
	return &url.URL{Scheme: "spiffe", Host: id.TrustDomain, Path: "/ns/" + id.Namespace + "/sa/" + id.ServiceAccount}
}

// IsZero reports whether id is the zero value.
func (id SPIFFE) IsZero() bool { return id == SPIFFE{} }

// Validate checks every part of the id.
func (id SPIFFE) Validate() error {
	if err := ValidateTrustDomain(id.TrustDomain); err != nil {
		return err
	}
	if err := dnsname.Label(id.Namespace); err != nil {
		return fmt.Errorf("invalid namespace %q in SPIFFE id: %w", id.Namespace, err)
	}
	if err := dnsname.Subdomain(id.ServiceAccount); err != nil {
		return fmt.Errorf("invalid service account %q in SPIFFE id: %w", id.ServiceAccount, err)
	}
	return nil
}

// maxTrustDomainLen is the SPIFFE limit on a trust domain name.
const maxTrustDomainLen = 255

// ValidateTrustDomain checks that td is a bare SPIFFE trust domain name
// (lower-case letters, digits, '.', '-', '_'; not a spiffe:// URI).
func ValidateTrustDomain(td string) error {
	if td == "" || len(td) > maxTrustDomainLen {
		return fmt.Errorf("invalid SPIFFE trust domain %q: want 1 to %d characters", td, maxTrustDomainLen)
	}
	// TrustDomainFromString also accepts a whole "spiffe://td" id: insist
	// that the name it found is the input itself.
	parsed, err := spiffeid.TrustDomainFromString(td)
	if err != nil {
		return fmt.Errorf("invalid SPIFFE trust domain %q: %w", td, err)
	}
	if parsed.Name() != td {
		return fmt.Errorf("invalid SPIFFE trust domain %q: want a bare name such as %q", td, parsed.Name())
	}
	return nil
}

// ParseSPIFFE parses an id, requiring exactly the shape
// spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>.
func ParseSPIFFE(s string) (SPIFFE, error) {
	parsed, err := spiffeid.FromString(s)
	if err != nil {
		return SPIFFE{}, fmt.Errorf("invalid SPIFFE id %q: %w", s, err)
	}
	parts := strings.Split(parsed.Path(), "/")
	if len(parts) != 5 || parts[0] != "" || parts[1] != "ns" || parts[3] != "sa" {
		return SPIFFE{}, fmt.Errorf("invalid SPIFFE id %q: want spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>", s)
	}
	id := SPIFFE{TrustDomain: parsed.TrustDomain().Name(), Namespace: parts[2], ServiceAccount: parts[4]}
	if err := id.Validate(); err != nil {
		return SPIFFE{}, fmt.Errorf("invalid SPIFFE id %q: %w", s, err)
	}
	if id.String() != s {
		return SPIFFE{}, fmt.Errorf("invalid SPIFFE id %q: not in canonical form", s)
	}
	return id, nil
}

// FromCertificate returns the SPIFFE id of a certificate, which must carry
// exactly one URI SAN, a valid SPIFFE id.
func FromCertificate(cert *x509.Certificate) (SPIFFE, error) {
	if cert == nil {
		return SPIFFE{}, errors.New("no certificate")
	}
	if len(cert.URIs) != 1 {
		return SPIFFE{}, fmt.Errorf("certificate %q has %d URI SANs, want exactly one SPIFFE id", cert.Subject.String(), len(cert.URIs))
	}
	return ParseSPIFFE(cert.URIs[0].String())
}
