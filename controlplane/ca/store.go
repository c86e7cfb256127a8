package ca

import (
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
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
// trustDomain and persists it (key readable by the owner only).
func LoadOrCreate(dir, trustDomain string, now time.Time) (*identity.Authority, bool, error) {
	certPath, keyPath := filepath.Join(dir, RootCertFile), filepath.Join(dir, RootKeyFile)
	if _, err := os.Stat(certPath); err == nil {
		a, err := LoadFiles(certPath, keyPath)
		return a, false, err
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
		return nil, false, err
	}
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return nil, false, fmt.Errorf("writing CA key: %w", err)
	}
	if err := os.WriteFile(certPath, identity.EncodeCerts(a.Cert), 0o644); err != nil {
		return nil, false, fmt.Errorf("writing CA certificate: %w", err)
	}
	return a, true, nil
}

// LoadFiles loads a signing certificate (optionally followed by its chain
// up to the root) and its PEM key.
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
		return nil, errors.New("CA key does not match the CA certificate")
	}
	return &identity.Authority{Cert: certs[0], Key: signer, Chain: certs}, nil
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	e, ok := a.(equaler)
	return ok && e.Equal(b)
}

// WriteCredential writes a credential as PEM files in dir: cert-chain.pem,
// key.pem (owner-only) and root-cert.pem.
func WriteCredential(dir string, cred *tls.Certificate, root *x509.Certificate) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	var chain []byte
	for _, der := range cred.Certificate {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(cred.PrivateKey)
	if err != nil {
		return err
	}
	files := []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{"cert-chain.pem", chain, 0o644},
		{"key.pem", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600},
		{"root-cert.pem", identity.EncodeCerts(root), 0o644},
	}
	for _, f := range files {
		if err := os.WriteFile(filepath.Join(dir, f.name), f.data, f.mode); err != nil {
			return fmt.Errorf("writing credential: %w", err)
		}
	}
	return nil
}
