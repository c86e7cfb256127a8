package ca

import (
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/identity"
)

func TestStoreModes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	a, created, err := LoadOrCreate(dir, "cluster.local", time.Now())
	if err != nil || !created {
		t.Fatalf("first start: %v created=%v", err, created)
	}
	keyPath := filepath.Join(dir, RootKeyFile)
	for path, want := range map[string]os.FileMode{dir: 0o700, keyPath: 0o600, filepath.Join(dir, RootCertFile): 0o644} {
		fi, err := os.Stat(path)
		if err != nil || fi.Mode().Perm() != want {
			t.Errorf("%s: mode %v (%v), want %v", path, fi.Mode().Perm(), err, want)
		}
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 2 {
		t.Errorf("state directory holds %d files, want 2 (no temporary leftovers)", len(entries))
	}
	if _, _, err := LoadOrCreate(dir, "other.domain", time.Now()); err == nil || !strings.Contains(err.Error(), "trust domain") {
		t.Errorf("root of another trust domain: %v", err)
	}
	if err := os.Chmod(keyPath, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := LoadOrCreate(dir, "cluster.local", time.Now()); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("world-readable key: %v", err)
	}
	if _, _, err := LoadOrCreate(dir, "cluster.local", a.Cert.NotAfter.Add(time.Hour)); err == nil {
		t.Error("expired root loaded")
	}

	// WriteCredential leaves key.pem at 0600 even over a file that was 0644.
	cred, err := IssueNodeCredential(a, "cluster.local", "node1", time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	if err := os.WriteFile(filepath.Join(out, "key.pem"), []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := WriteCredential(out, cred, a.Root()); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(filepath.Join(out, "key.pem")); fi.Mode().Perm() != 0o600 {
		t.Errorf("credential key mode %v", fi.Mode().Perm())
	}
	if err := WriteCredential(out, nil, a.Root()); err == nil {
		t.Error("nil credential written")
	}
}

// TestIntermediate: a CA loaded from files as an intermediate (file: the
// intermediate then the root) issues chains leaf, intermediate, root.
func TestIntermediate(t *testing.T) {
	root, err := identity.NewRootAuthority("cluster.local", 48*time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	key, _ := identity.NewKey()
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "intermediate"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}, root.Cert, key.Public(), root.Key)
	if err != nil {
		t.Fatal(err)
	}
	inter, _ := x509.ParseCertificate(der)
	dir := t.TempDir()
	keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
	keyPath := filepath.Join(dir, "key.pem")
	must(t, os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600))
	full, alone := filepath.Join(dir, "chain.pem"), filepath.Join(dir, "inter.pem")
	must(t, os.WriteFile(full, identity.EncodeCerts(inter, root.Cert), 0o644))
	must(t, os.WriteFile(alone, identity.EncodeCerts(inter), 0o644))

	if _, err := LoadFiles(alone, keyPath); err == nil || !strings.Contains(err.Error(), "self-signed root") {
		t.Errorf("intermediate without its root: %v", err)
	}
	a, err := LoadFiles(full, keyPath)
	if err != nil {
		t.Fatal(err)
	}
	c := startCAWith(t, a, pods{})
	self := identity.SPIFFE{TrustDomain: "cluster.local", Namespace: "demo", ServiceAccount: "client"}
	workload, err := a.IssueTLS(self, time.Hour, time.Now(), nil)
	must(t, err)
	resp, err := c.call(t, workload, self, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.CertChain) != 3 {
		t.Fatalf("chain of %d elements, want leaf, intermediate, root", len(resp.CertChain))
	}
	var chain []*x509.Certificate
	for _, p := range resp.CertChain {
		certs, err := identity.ParseCerts([]byte(p))
		must(t, err)
		chain = append(chain, certs...)
	}
	if !chain[1].Equal(inter) || !chain[2].Equal(root.Cert) {
		t.Error("chain is not leaf, intermediate, root")
	}
	if _, err := c.bundle.Verify(chain[:2], time.Now()); err != nil {
		t.Errorf("issued chain does not verify: %v", err)
	}
}
