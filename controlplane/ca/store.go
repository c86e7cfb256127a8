package ca

import (
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/ambit-mesh/ambit/identity"
)

// File names of a persisted root in a state directory.
const (
	RootCertFile = "root-cert.pem"
	RootKeyFile  = "root-key.pem"
)

// rootValidity is the lifetime of a generated root.
const rootValidity = 10 * 365 * 24 * time.Hour

// LoadOrCreate loads the root persisted in dir, or generates one for
// trustDomain and persists it (key readable by the owner only). It reports
// whether it created one. A persisted key readable by others, or a root
// made for another trust domain, is refused.
func LoadOrCreate(dir, trustDomain string, now time.Time) (*identity.Authority, bool, error) {
	if err := identity.ValidateTrustDomain(trustDomain); err != nil {
		return nil, false, err
	}
	certPath, keyPath := filepath.Join(dir, RootCertFile), filepath.Join(dir, RootKeyFile)
	if _, err := os.Stat(certPath); err == nil {
		fi, err := os.Stat(keyPath)
		if err != nil {
			return nil, false, fmt.Errorf("CA key: %w", err)
		}
		if fi.Mode().Perm()&0o077 != 0 {
			return nil, false, fmt.Errorf("CA key %s has mode %v: it must be readable by its owner only (chmod 600)", keyPath, fi.Mode().Perm())
		}
		a, err := LoadFiles(certPath, keyPath)
		if err != nil {
			return nil, false, err
		}
		if err := a.Check(now); err != nil {
			return nil, false, fmt.Errorf("CA root in %s: %w", dir, err)
		}
		for _, u := range a.Root().URIs {
			if u.Scheme == "spiffe" && u.Host != trustDomain {
				return nil, false, fmt.Errorf("CA root in %s was made for trust domain %q, not %q", dir, u.Host, trustDomain)
			}
		}
		return a, false, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, false, fmt.Errorf("CA certificate: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, false, fmt.Errorf("CA state directory: %w", err)
	}
	a, err := identity.NewRootAuthority(trustDomain, rootValidity, now)
	if err != nil {
		return nil, false, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(a.Key)
	if err != nil {
		return nil, false, fmt.Errorf("encoding CA key: %w", err)
	}
	// Key first: the certificate's presence marks a complete root.
	if err := writeFileAtomic(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return nil, false, fmt.Errorf("writing CA key: %w", err)
	}
	if err := writeFileAtomic(certPath, identity.EncodeCerts(a.Cert), 0o644); err != nil {
		return nil, false, fmt.Errorf("writing CA certificate: %w", err)
	}
	return a, true, nil
}

// writeFileAtomic writes data to path through a temporary file in the same
// directory renamed over it, so that readers never see a partial file and
// the mode is mode even if path existed with another.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after the rename
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// LoadFiles loads a signing certificate (followed by its chain up to the
// root when it is an intermediate) and its PEM key, and checks that they
// fit together (Authority.Check, except for validity at a given time).
func LoadFiles(certPath, keyPath string) (*identity.Authority, error) {
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return nil, fmt.Errorf("CA certificate: %w", err)
	}
	certs, err := identity.ParseCerts(certPEM)
	if err != nil {
		return nil, fmt.Errorf("CA certificate %s: %w", certPath, err)
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, fmt.Errorf("CA key: %w", err)
	}
	block, _ := pem.Decode(keyPEM)
	if block == nil {
		return nil, fmt.Errorf("CA key %s: no PEM block", keyPath)
	}
	var key any
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	default:
		err = fmt.Errorf("unsupported PEM block %q", block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("CA key %s: %w", keyPath, err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("CA key %s: not a signing key", keyPath)
	}
	if !certs[0].IsCA {
		return nil, fmt.Errorf("CA certificate %s is not a CA", certPath)
	}
	if !publicKeysEqual(certs[0].PublicKey, signer.Public()) {
		return nil, fmt.Errorf("CA key %s does not match the CA certificate %s", keyPath, certPath)
	}
	if last := certs[len(certs)-1]; last.CheckSignatureFrom(last) != nil {
		return nil, fmt.Errorf("CA certificate %s: the file must end with the self-signed root (append the chain up to it)", certPath)
	}
	a := &identity.Authority{Cert: certs[0], Key: signer, Chain: certs}
	// Validity is checked by the caller against its clock; check the rest
	// at a time when the signing certificate is valid.
	if err := a.Check(certs[0].NotBefore); err != nil {
		return nil, fmt.Errorf("CA certificate %s: %w", certPath, err)
	}
	return a, nil
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	e, ok := a.(equaler)
	return ok && e.Equal(b)
}

// WriteCredential writes a credential as PEM files in dir: cert-chain.pem,
// key.pem (owner-only) and root-cert.pem.
func WriteCredential(dir string, cred *tls.Certificate, root *x509.Certificate) error {
	if cred == nil || len(cred.Certificate) == 0 || cred.PrivateKey == nil || root == nil {
		return errors.New("writing credential: certificate, key and root required")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("credential directory: %w", err)
	}
	var chain []byte
	for _, der := range cred.Certificate {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(cred.PrivateKey)
	if err != nil {
		return fmt.Errorf("encoding credential key: %w", err)
	}
	files := []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{"key.pem", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600},
		{"cert-chain.pem", chain, 0o644},
		{"root-cert.pem", identity.EncodeCerts(root), 0o644},
	}
	for _, f := range files {
		if err := writeFileAtomic(filepath.Join(dir, f.name), f.data, f.mode); err != nil {
			return fmt.Errorf("writing credential in %s: %w", dir, err)
		}
	}
	return nil
}
