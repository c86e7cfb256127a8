package identity

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
)

// NewKey returns a fresh ECDSA P-256 key, the kind Istio's workloads use.
func NewKey() (*ecdsa.PrivateKey, error) {
	return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
}

// NewCSR returns a PEM certificate signing request for id, signed by key,
// whose only SAN is the SPIFFE URI.
func NewCSR(key *ecdsa.PrivateKey, id SPIFFE) ([]byte, error) {
	if err := id.Validate(); err != nil {
		return nil, err
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		URIs:               []*url.URL{id.URL()},
		SignatureAlgorithm: x509.ECDSAWithSHA256,
	}, key)
	if err != nil {
		return nil, fmt.Errorf("creating CSR for %s: %w", id, err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}

// MaxCSRSize bounds the PEM CSR a CA accepts.
const MaxCSRSize = 16 << 10

// ParseCSR decodes a PEM CSR and checks its signature and key (ECDSA P-256
// or P-384). SANs are returned unchecked: the CA decides what identity it
// grants.
func ParseCSR(pemBytes []byte) (*x509.CertificateRequest, error) {
	if len(pemBytes) > MaxCSRSize {
		return nil, fmt.Errorf("CSR of %d bytes, at most %d accepted", len(pemBytes), MaxCSRSize)
	}
	block, rest, err := decodePEM(pemBytes)
	if err != nil {
		return nil, fmt.Errorf("CSR: %w", err)
	}
	if block == nil || block.Type != "CERTIFICATE REQUEST" {
		return nil, errors.New("CSR is not a PEM \"CERTIFICATE REQUEST\" block")
	}
	if len(trimSpace(rest)) > 0 {
		return nil, errors.New("CSR has trailing data")
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parsing CSR: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("CSR signature: %w", err)
	}
	switch pub := csr.PublicKey.(type) {
	case *ecdsa.PublicKey:
		if pub.Curve != elliptic.P256() && pub.Curve != elliptic.P384() {
			return nil, fmt.Errorf("CSR key: ECDSA curve %s not accepted (want P-256 or P-384)", pub.Curve.Params().Name)
		}
	default:
		return nil, fmt.Errorf("CSR key: %T not accepted (want ECDSA P-256 or P-384)", pub)
	}
	return csr, nil
}

// decodePEM decodes the next PEM block of data, which may be preceded by
// white space only (pem.Decode would skip any text). It returns a nil block
// when data holds only white space.
func decodePEM(data []byte) (*pem.Block, []byte, error) {
	data = trimSpace(data)
	if len(data) == 0 {
		return nil, nil, nil
	}
	if !bytes.HasPrefix(data, []byte("-----BEGIN ")) {
		return nil, nil, errors.New("data that is not PEM")
	}
	block, rest := pem.Decode(data)
	if block == nil {
		return nil, nil, errors.New("malformed PEM block")
	}
	if len(block.Headers) > 0 {
		return nil, nil, fmt.Errorf("PEM block %q has headers (encrypted or not plain DER)", block.Type)
	}
	return block, rest, nil
}

func trimSpace(b []byte) []byte {
	for len(b) > 0 && (b[0] == '\n' || b[0] == '\r' || b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	return b
}

// EncodeCerts returns the PEM form of certificates.
func EncodeCerts(certs ...*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}

// ParseCerts decodes every PEM certificate in data; there must be at least
// one, and nothing but white space around them.
func ParseCerts(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for {
		block, rest, err := decodePEM(data)
		if err != nil {
			return nil, fmt.Errorf("after %d certificates: %w", len(certs), err)
		}
		if block == nil {
			break
		}
		data = rest
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("unexpected PEM block %q where certificates were expected", block.Type)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parsing certificate %d: %w", len(certs), err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("no PEM certificates found")
	}
	return certs, nil
}
