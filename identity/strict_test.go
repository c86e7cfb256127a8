package identity_test

import (
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/identity"
	"github.com/ambit-mesh/ambit/identity/identitytest"
)

func TestValidate(t *testing.T) {
	tests := []struct {
		id      identity.SPIFFE
		wantErr string
	}{
		{identity.SPIFFE{TrustDomain: "cluster.local", Namespace: "demo", ServiceAccount: "echo"}, ""},
		{identity.SPIFFE{TrustDomain: "spiffe://evil.org", Namespace: "demo", ServiceAccount: "echo"}, "bare name"},
		{identity.SPIFFE{TrustDomain: "evil.org/ns/x", Namespace: "demo", ServiceAccount: "echo"}, "trust domain"},
		{identity.SPIFFE{TrustDomain: "", Namespace: "demo", ServiceAccount: "echo"}, "trust domain"},
		{identity.SPIFFE{TrustDomain: "Cluster.local", Namespace: "demo", ServiceAccount: "echo"}, "trust domain"},
		{identity.SPIFFE{TrustDomain: "cluster.local", Namespace: "", ServiceAccount: "echo"}, "namespace"},
		{identity.SPIFFE{TrustDomain: "cluster.local", Namespace: "a/sa/b", ServiceAccount: "echo"}, "namespace"},
		{identity.SPIFFE{TrustDomain: "cluster.local", Namespace: "demo", ServiceAccount: "x/y"}, "service account"},
	}
	for _, tc := range tests {
		err := tc.id.Validate()
		if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("Validate(%#v) = %v, want %q", tc.id, err, tc.wantErr)
		}
	}
}

// leafTemplate is a well-formed workload certificate template; cases
// below break one thing in it.
func leafTemplate(uris ...string) *x509.Certificate {
	var us []*url.URL
	for _, u := range uris {
		parsed, _ := url.Parse(u)
		us = append(us, parsed)
	}
	now := time.Now()
	return &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		URIs:                  us,
	}
}

// sign issues tmpl with the CA's key, bypassing Authority.Issue's rules.
func sign(t *testing.T, ca *identitytest.CA, tmpl *x509.Certificate) *tls.Certificate {
	t.Helper()
	key, err := identity.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

func TestVerifyLeafRules(t *testing.T) {
	ca := identitytest.NewCA(t, "cluster.local")
	const good = "spiffe://cluster.local/ns/demo/sa/client"
	mod := func(f func(*x509.Certificate)) *x509.Certificate { c := leafTemplate(good); f(c); return c }
	tests := []struct {
		name    string
		tmpl    *x509.Certificate
		usage   x509.ExtKeyUsage
		wantErr string
	}{
		{"well formed", leafTemplate(good), x509.ExtKeyUsageAny, ""},
		{"two URI SANs", leafTemplate(good, "spiffe://cluster.local/ns/demo/sa/other"), x509.ExtKeyUsageAny, "2 URI SANs"},
		{"no URI SAN", mod(func(c *x509.Certificate) { c.URIs = nil; c.DNSNames = []string{"client.demo"} }), x509.ExtKeyUsageAny, "0 URI SANs"},
		{"non-SPIFFE URI", leafTemplate("https://cluster.local/ns/demo/sa/client"), x509.ExtKeyUsageAny, "invalid SPIFFE id"},
		{"SPIFFE id of another shape", leafTemplate("spiffe://cluster.local/workload/client"), x509.ExtKeyUsageAny, "want spiffe://"},
		{"CA certificate as leaf", mod(func(c *x509.Certificate) { c.IsCA = true; c.KeyUsage |= x509.KeyUsageCertSign }), x509.ExtKeyUsageAny, "is a CA certificate"},
		{"leaf that may sign certificates", mod(func(c *x509.Certificate) { c.KeyUsage |= x509.KeyUsageCertSign }), x509.ExtKeyUsageAny, "may sign certificates"},
		{"leaf without digitalSignature", mod(func(c *x509.Certificate) { c.KeyUsage = x509.KeyUsageKeyEncipherment }), x509.ExtKeyUsageAny, "digitalSignature"},
		{"server-only cert used as client", mod(func(c *x509.Certificate) { c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth} }), x509.ExtKeyUsageClientAuth, "incompatible key usage"},
		{"client-only cert used as server", mod(func(c *x509.Certificate) { c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth} }), x509.ExtKeyUsageServerAuth, "incompatible key usage"},
		{"client cert used as client", mod(func(c *x509.Certificate) { c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth} }), x509.ExtKeyUsageClientAuth, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cert := sign(t, ca, tc.tmpl)
			got, err := ca.Bundle().VerifyFor([]*x509.Certificate{cert.Leaf}, time.Now(), tc.usage)
			if tc.wantErr == "" {
				if err != nil || got.String() != good {
					t.Fatalf("VerifyFor = %v, %v", got, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("VerifyFor err = %v, want %q", err, tc.wantErr)
			}
		})
	}
	leaf := ca.Issue(t, ca.ID("demo", "client"), time.Hour).Leaf
	long := make([]*x509.Certificate, identity.MaxChainLen+1)
	for i := range long {
		long[i] = leaf
	}
	if _, err := ca.Bundle().Verify(long, time.Now()); err == nil || !strings.Contains(err.Error(), "at most") {
		t.Errorf("over-long chain: %v", err)
	}
	var nilBundle *identity.Bundle
	if _, err := nilBundle.Verify([]*x509.Certificate{leaf}, time.Now()); err == nil {
		t.Error("nil bundle verified a certificate")
	}
	if nilBundle.Pool() == nil || len(nilBundle.Roots()) != 0 || nilBundle.PEM() != nil {
		t.Error("nil bundle accessors")
	}
}

func TestAuthority(t *testing.T) {
	now := time.Now()
	ca := identitytest.NewCA(t, "cluster.local")
	other := identitytest.NewCA(t, "cluster.local")
	if err := ca.Check(now); err != nil {
		t.Fatalf("fresh CA: %v", err)
	}
	id := ca.ID("demo", "echo")
	key, _ := identity.NewKey()

	// The only SAN is the identity; callers cannot smuggle standard
	// extensions (SAN, basic constraints) in.
	chain, err := ca.Authority.Issue(key.Public(), id, time.Hour, now, nil)
	if err != nil {
		t.Fatal(err)
	}
	leaf := chain[0]
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != id.String() || len(leaf.DNSNames)+len(leaf.IPAddresses)+len(leaf.EmailAddresses) != 0 || leaf.IsCA {
		t.Errorf("leaf SANs %v %v, CA %v", leaf.URIs, leaf.DNSNames, leaf.IsCA)
	}
	if !chain[len(chain)-1].Equal(ca.Root()) {
		t.Error("chain does not end with the root")
	}
	sanOID := []int{2, 5, 29, 17}
	if _, err := ca.Authority.Issue(key.Public(), id, time.Hour, now, &identity.LeafOptions{Extensions: []pkix.Extension{{Id: sanOID, Value: []byte{0x30, 0}}}}); err == nil {
		t.Error("caller-supplied SAN extension accepted")
	}
	if _, err := ca.Authority.Issue(key.Public(), id, 0, now, nil); err == nil {
		t.Error("zero lifetime accepted")
	}
	if _, err := ca.Authority.Issue(nil, id, time.Hour, now, nil); err == nil {
		t.Error("nil key accepted")
	}
	// Capped at the CA's own expiry, and refused once it has passed.
	capped, err := ca.Authority.Issue(key.Public(), id, 5*365*24*time.Hour, now, nil)
	if err != nil || !capped[0].NotAfter.Equal(ca.Cert.NotAfter) {
		t.Errorf("lifetime not capped at the CA's: %v %v", err, capped)
	}
	if _, err := ca.Authority.Issue(key.Public(), id, time.Hour, ca.Cert.NotAfter.Add(time.Second), nil); err == nil {
		t.Error("an expired CA signed")
	}
	if _, err := identity.NewRootAuthority("spiffe://x", time.Hour, now); err == nil {
		t.Error("bad trust domain accepted for a root")
	}

	broken := []struct {
		name string
		a    *identity.Authority
	}{
		{"nil", nil},
		{"no chain", &identity.Authority{Cert: ca.Cert, Key: ca.Key}},
		{"key of another CA", &identity.Authority{Cert: ca.Cert, Key: other.Key, Chain: ca.Chain}},
		{"chain of another CA", &identity.Authority{Cert: ca.Cert, Key: ca.Key, Chain: other.Chain}},
		{"chain not signed by its successor", &identity.Authority{Cert: ca.Cert, Key: ca.Key, Chain: []*x509.Certificate{ca.Cert, other.Cert}}},
		{"leaf as signer", &identity.Authority{Cert: leaf, Key: key, Chain: []*x509.Certificate{leaf, ca.Cert}}},
	}
	for _, tc := range broken {
		if err := tc.a.Check(now); err == nil {
			t.Errorf("%s: Check accepted", tc.name)
		}
	}
	if err := ca.Check(ca.Cert.NotAfter); err == nil {
		t.Error("Check accepted an expired CA")
	}
}

func TestTLSCertificateDropsRoots(t *testing.T) {
	ca := identitytest.NewCA(t, "cluster.local")
	other := identitytest.NewCA(t, "cluster.local")
	key, _ := identity.NewKey()
	chain, err := ca.Authority.Issue(key.Public(), ca.ID("demo", "echo"), time.Hour, time.Now(), nil)
	if err != nil {
		t.Fatal(err)
	}
	// During a rotation a chain may end with several roots: none is sent.
	c := identity.TLSCertificate(append(chain, other.Root()), key)
	if len(c.Certificate) != 1 || c.Leaf != chain[0] {
		t.Errorf("TLS chain has %d certificates, want the leaf only", len(c.Certificate))
	}
	if c := identity.TLSCertificate(nil, key); len(c.Certificate) != 0 || c.Leaf != nil {
		t.Error("empty chain")
	}
}

func TestParseCertsStrict(t *testing.T) {
	ca := identitytest.NewCA(t, "cluster.local")
	good := identity.EncodeCerts(ca.Root())
	tests := []struct {
		name string
		in   []byte
		ok   bool
	}{
		{"one", good, true},
		{"two with blank lines", append(append(append([]byte("\n"), good...), '\n'), good...), true},
		{"text before", append([]byte("subject=ambit\n"), good...), false},
		{"text after", append(append([]byte{}, good...), "junk"...), false},
		{"text between", append(append(append([]byte{}, good...), "junk\n"...), good...), false},
		{"key block", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{1}}), false},
		{"headers", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Headers: map[string]string{"Proc-Type": "4,ENCRYPTED"}, Bytes: ca.Root().Raw}), false},
		{"empty", nil, false},
		{"bad DER", []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), false},
	}
	for _, tc := range tests {
		_, err := identity.ParseCerts(tc.in)
		if (err == nil) != tc.ok {
			t.Errorf("%s: err = %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
	if _, err := identity.ParseCSR(make([]byte, identity.MaxCSRSize+1)); err == nil {
		t.Error("oversized CSR accepted")
	}
}

// TestTLSRotationAndEdges: a server trusting two roots accepts clients of
// either; a client certificate source returning nil does not crash the
// handshake; a client expecting nobody accepts no server.
func TestTLSRotationAndEdges(t *testing.T) {
	oldCA := identitytest.NewCA(t, "cluster.local")
	newCA := identitytest.NewCA(t, "cluster.local")
	both, err := identity.NewBundle(oldCA.Root(), newCA.Root(), oldCA.Root())
	if err != nil {
		t.Fatal(err)
	}
	if len(both.Roots()) != 2 {
		t.Errorf("duplicate root kept: %d roots", len(both.Roots()))
	}
	serverID := newCA.ID("demo", "echo")
	server := identity.ServerTLSConfig(identity.StaticCert(newCA.Issue(t, serverID, time.Hour)), identity.StaticBundle(both), "cluster.local", nil)
	for name, ca := range map[string]*identitytest.CA{"old root": oldCA, "new root": newCA} {
		client := identity.ClientTLSConfig(identity.StaticCert(ca.Issue(t, ca.ID("demo", "client"), time.Hour)), identity.StaticBundle(both), []identity.SPIFFE{serverID}, nil)
		if cerr, serr, peer := handshake(t, client, server); cerr != nil || serr != nil || peer != ca.ID("demo", "client") {
			t.Errorf("%s: client %v, server %v, peer %v", name, cerr, serr, peer)
		}
	}
	nilCert := identity.ClientTLSConfig(func() (*tls.Certificate, error) { return nil, nil }, identity.StaticBundle(both), []identity.SPIFFE{serverID}, nil)
	if _, serr, _ := handshake(t, nilCert, server); serr == nil {
		t.Error("client without certificate accepted")
	}
	nobody := identity.ClientTLSConfig(identity.StaticCert(newCA.Issue(t, newCA.ID("demo", "client"), time.Hour)), identity.StaticBundle(both), nil, nil)
	if cerr, _, _ := handshake(t, nobody, server); cerr == nil || !strings.Contains(cerr.Error(), "no identity is expected") {
		t.Errorf("client expecting nobody: %v", cerr)
	}
	// A client whose bundle holds only the old root refuses a server whose
	// certificate is from the new one.
	oldOnly := identity.ClientTLSConfig(identity.StaticCert(oldCA.Issue(t, oldCA.ID("demo", "client"), time.Hour)), identity.StaticBundle(oldCA.Bundle()), []identity.SPIFFE{serverID}, nil)
	if cerr, _, _ := handshake(t, oldOnly, server); cerr == nil || !strings.Contains(cerr.Error(), "unknown authority") {
		t.Errorf("client trusting the old root only: %v", cerr)
	}
	// No SNI and no session tickets on the client; TLS 1.3 only both ways.
	c := identity.ClientTLSConfig(identity.StaticCert(nil), identity.StaticBundle(both), nil, nil)
	if c.ServerName != "" || !c.SessionTicketsDisabled || c.MinVersion != tls.VersionTLS13 || !server.SessionTicketsDisabled || server.MinVersion != tls.VersionTLS13 {
		t.Error("TLS profile")
	}
	if _, err := identity.PeerIdentity(tls.ConnectionState{}); err == nil {
		t.Error("PeerIdentity of an incomplete handshake")
	}
}

func FuzzParseCSR(f *testing.F) {
	key, _ := identity.NewKey()
	csr, _ := identity.NewCSR(key, identity.SPIFFE{TrustDomain: "cluster.local", Namespace: "demo", ServiceAccount: "echo"})
	f.Add(csr)
	f.Add([]byte("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		c, err := identity.ParseCSR(in)
		if err == nil && c.CheckSignature() != nil {
			t.Fatal("accepted a CSR whose signature does not verify")
		}
	})
}

func FuzzParseCerts(f *testing.F) {
	ca, _ := identity.NewRootAuthority("cluster.local", time.Hour, time.Now())
	f.Add(identity.EncodeCerts(ca.Cert, ca.Cert))
	f.Add([]byte("x\n-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		certs, err := identity.ParseCerts(in)
		if err == nil && len(certs) == 0 {
			t.Fatal("no error and no certificates")
		}
		if err == nil {
			_, _ = identity.ParseBundle(in)
		}
	})
}
