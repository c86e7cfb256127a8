package identity_test

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/identity"
	"github.com/ambit-mesh/ambit/identity/identitytest"
)

func TestParseSPIFFE(t *testing.T) {
	good := []struct {
		in   string
		want identity.SPIFFE
	}{
		{"spiffe://cluster.local/ns/demo/sa/client", identity.SPIFFE{TrustDomain: "cluster.local", Namespace: "demo", ServiceAccount: "client"}},
		{"spiffe://example.org/ns/a-b/sa/default", identity.SPIFFE{TrustDomain: "example.org", Namespace: "a-b", ServiceAccount: "default"}},
		{"spiffe://td/ns/x/sa/my.sa", identity.SPIFFE{TrustDomain: "td", Namespace: "x", ServiceAccount: "my.sa"}},
	}
	for _, tc := range good {
		got, err := identity.ParseSPIFFE(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParseSPIFFE(%q) = %+v, %v", tc.in, got, err)
		}
		if got.String() != tc.in {
			t.Errorf("String() = %q, want %q", got.String(), tc.in)
		}
	}
	bad := []string{
		"", "cluster.local/ns/demo/sa/client", "http://cluster.local/ns/demo/sa/client",
		"spiffe://cluster.local/ns/demo", "spiffe://cluster.local/ns/demo/sa/", "spiffe://cluster.local/ns//sa/x",
		"spiffe://cluster.local/ns/demo/sa/client/extra", "spiffe://cluster.local/sa/client/ns/demo",
		"spiffe://Cluster.Local/ns/demo/sa/client", "spiffe:///ns/demo/sa/client", "spiffe://cluster.local/ns/Demo/sa/client",
		"spiffe://cluster.local/ns/demo/sa/client?x=1", "spiffe://cluster.local/ns/demo/sa/client#f", "spiffe://user@cluster.local/ns/a/sa/b",
		"spiffe://cluster.local:80/ns/a/sa/b", "spiffe://cluster.local/ns/a/sa/b/", "spiffe://cluster.local/ns/a%2Fb/sa/c",
		"SPIFFE://cluster.local/ns/a/sa/b", "spiffe://cluster.local/ns/a/sa/B", "spiffe://cluster.local/ns/a/sa/b ", " spiffe://cluster.local/ns/a/sa/b",
		"spiffe://cluster.local//ns/a/sa/b", "spiffe://cluster.local/ns/./sa/b", "spiffe://cluster.local/ns/a/sa/..", "spiffe://cluster.local/ns/a/sa/b\x00",
		"spiffe://cluster.local/NS/a/sa/b", "spiffe://cluster.local/ns/a/SA/b", "spiffe://clu%73ter.local/ns/a/sa/b", "spiffe://[::1]/ns/a/sa/b",
		"spiffe://cluster.local/ns/" + strings.Repeat("a", 64) + "/sa/b", "spiffe://" + strings.Repeat("a", 256) + "/ns/a/sa/b",
		"spiffe://cluster.local/ns/a-/sa/b", "spiffe://cluster.local/ns/a/sa/-b", "spiffe://cluster.local/ns/a/sa/b_c",
	}
	for _, in := range bad {
		if id, err := identity.ParseSPIFFE(in); err == nil {
			t.Errorf("ParseSPIFFE(%q) accepted: %+v", in, id)
		}
	}
}

func FuzzParseSPIFFE(f *testing.F) {
	f.Add("spiffe://cluster.local/ns/demo/sa/client")
	f.Add("spiffe://x/ns/%41/sa/b")
	f.Fuzz(func(t *testing.T, s string) {
		id, err := identity.ParseSPIFFE(s)
		if err == nil && id.String() != s {
			t.Fatalf("accepted %q but prints %q", s, id.String())
		}
	})
}

func TestCSR(t *testing.T) {
	key, err := identity.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	id := identity.SPIFFE{TrustDomain: "cluster.local", Namespace: "demo", ServiceAccount: "echo"}
	pemCSR, err := identity.NewCSR(key, id)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := identity.ParseCSR(pemCSR)
	if err != nil {
		t.Fatal(err)
	}
	if len(csr.URIs) != 1 || csr.URIs[0].String() != id.String() {
		t.Errorf("CSR SANs = %v", csr.URIs)
	}
	for name, in := range map[string][]byte{
		"garbage":   []byte("not pem"),
		"wrong pem": []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
		"bad der":   []byte("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"),
		"trailing":  append(append([]byte{}, pemCSR...), []byte("junk")...),
	} {
		if _, err := identity.ParseCSR(in); err == nil {
			t.Errorf("%s: ParseCSR accepted", name)
		}
	}
	if _, err := identity.NewCSR(key, identity.SPIFFE{TrustDomain: "cluster.local", Namespace: "Bad_NS", ServiceAccount: "x"}); err == nil {
		t.Error("NewCSR accepted an invalid id")
	}
}

func chainOf(c *tls.Certificate) []*x509.Certificate {
	var out []*x509.Certificate
	for _, raw := range c.Certificate {
		x, _ := x509.ParseCertificate(raw)
		out = append(out, x)
	}
	return out
}

func TestBundleVerify(t *testing.T) {
	ca := identitytest.NewCA(t, "cluster.local")
	other := identitytest.NewCA(t, "cluster.local")
	id := ca.ID("demo", "client")
	now := time.Now()
	good := ca.Issue(t, id, time.Hour)
	expired := ca.IssueAt(t, id, now.Add(-3*time.Hour), time.Hour)
	future := ca.IssueAt(t, id, now.Add(2*time.Hour), time.Hour)
	fromOther := other.Issue(t, id, time.Hour)

	tests := []struct {
		name    string
		chain   []*x509.Certificate
		bundle  *identity.Bundle
		wantErr string
	}{
		{"good", chainOf(good), ca.Bundle(), ""},
		{"expired", chainOf(expired), ca.Bundle(), "expired"},
		{"not yet valid", chainOf(future), ca.Bundle(), "not yet valid"},
		{"wrong root", chainOf(fromOther), ca.Bundle(), "unknown authority"},
		{"empty", nil, ca.Bundle(), "no certificate"},
	}
	two, err := identity.NewBundle(ca.Root(), other.Root())
	if err != nil {
		t.Fatal(err)
	}
	tests = append(tests,
		struct {
			name    string
			chain   []*x509.Certificate
			bundle  *identity.Bundle
			wantErr string
		}{"rotation: old root", chainOf(good), two, ""},
		struct {
			name    string
			chain   []*x509.Certificate
			bundle  *identity.Bundle
			wantErr string
		}{"rotation: new root", chainOf(fromOther), two, ""},
	)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.bundle.Verify(tc.chain, now)
			if tc.wantErr == "" {
				if err != nil || got != id {
					t.Fatalf("Verify = %v, %v", got, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Verify err = %v, want %q", err, tc.wantErr)
			}
		})
	}
	if _, err := identity.NewBundle(good.Leaf); err == nil {
		t.Error("a leaf was accepted as a root")
	}
	parsed, err := identity.ParseBundle(two.PEM())
	if err != nil || len(parsed.Roots()) != 2 {
		t.Errorf("PEM round trip: %v", err)
	}
}

// handshake runs a TLS handshake over an in-memory pipe and returns both
// sides' errors and the identity the server saw.
func handshake(t *testing.T, client, server *tls.Config) (clientErr, serverErr error, peer identity.SPIFFE) {
	t.Helper()
	c, s := net.Pipe()
	defer c.Close()
	defer s.Close()
	deadline := time.Now().Add(5 * time.Second)
	c.SetDeadline(deadline)
	s.SetDeadline(deadline)
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := tls.Server(s, server)
		serverErr = sc.Handshake()
		if serverErr == nil {
			peer, serverErr = identity.PeerIdentity(sc.ConnectionState())
			if sc.ConnectionState().NegotiatedProtocol != "h2" {
				serverErr = errors.New("ALPN not h2")
			}
		}
		s.Close()
	}()
	cc := tls.Client(c, client)
	clientErr = cc.Handshake()
	if clientErr == nil {
		// In TLS 1.3 the client finishes before the server has checked the
		// client certificate: read to learn the server's verdict.
		buf := make([]byte, 1)
		if _, err := cc.Read(buf); err != nil && !strings.Contains(err.Error(), "EOF") && !strings.Contains(err.Error(), "closed pipe") {
			clientErr = err
		}
	}
	c.Close()
	<-done
	return clientErr, serverErr, peer
}

func TestTLSConfigs(t *testing.T) {
	ca := identitytest.NewCA(t, "cluster.local")
	otherTD := identitytest.NewCA(t, "other.domain")
	rogue := identitytest.NewCA(t, "cluster.local")
	clientID, serverID := ca.ID("demo", "client"), ca.ID("demo", "echo")
	static := func(c *tls.Certificate) identity.CertFunc { return func() (*tls.Certificate, error) { return c, nil } }
	bundle := func(b *identity.Bundle) identity.BundleFunc { return func() *identity.Bundle { return b } }

	serverCert := ca.Issue(t, serverID, time.Hour)
	server := identity.ServerTLSConfig(static(serverCert), bundle(ca.Bundle()), "cluster.local", nil)
	trustsBoth, _ := identity.NewBundle(ca.Root(), otherTD.Root())
	serverTrustingOtherTD := identity.ServerTLSConfig(static(serverCert), bundle(trustsBoth), "cluster.local", nil)

	tests := []struct {
		name          string
		client        *tls.Config
		server        *tls.Config
		wantClientErr string
		wantServerErr string
	}{
		{"mutual TLS works", identity.ClientTLSConfig(static(ca.Issue(t, clientID, time.Hour)), bundle(ca.Bundle()), []identity.SPIFFE{serverID}, nil), server, "", ""},
		{"client expects another server identity", identity.ClientTLSConfig(static(ca.Issue(t, clientID, time.Hour)), bundle(ca.Bundle()), []identity.SPIFFE{ca.ID("demo", "other")}, nil), server, "is not the expected spiffe://cluster.local/ns/demo/sa/other", "x"},
		{"client cert from a rogue root", identity.ClientTLSConfig(static(rogue.Issue(t, clientID, time.Hour)), bundle(ca.Bundle()), []identity.SPIFFE{serverID}, nil), server, "x", "unknown authority"},
		{"client cert from another trust domain", identity.ClientTLSConfig(static(otherTD.Issue(t, otherTD.ID("demo", "client"), time.Hour)), bundle(ca.Bundle()), []identity.SPIFFE{serverID}, nil), serverTrustingOtherTD, "x", `trust domain "other.domain", want "cluster.local"`},
		{"expired client cert", identity.ClientTLSConfig(static(ca.IssueAt(t, clientID, time.Now().Add(-3*time.Hour), time.Hour)), bundle(ca.Bundle()), []identity.SPIFFE{serverID}, nil), server, "x", "expired"},
		{"no client cert", identity.ClientTLSConfig(func() (*tls.Certificate, error) { return &tls.Certificate{}, nil }, bundle(ca.Bundle()), []identity.SPIFFE{serverID}, nil), server, "x", "client didn't provide a certificate"},
		{"TLS 1.2 client refused", &tls.Config{MaxVersion: tls.VersionTLS12, InsecureSkipVerify: true, NextProtos: []string{"h2"}}, server, "protocol version", "x"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cerr, serr, peer := handshake(t, tc.client, tc.server)
			check := func(side string, err error, want string) {
				switch {
				case want == "" && err != nil:
					t.Errorf("%s: unexpected error %v", side, err)
				case want == "x" && err == nil:
					t.Errorf("%s: handshake succeeded, want failure", side)
				case want != "" && want != "x" && (err == nil || !strings.Contains(err.Error(), want)):
					t.Errorf("%s: error %v, want %q", side, err, want)
				}
			}
			check("client", cerr, tc.wantClientErr)
			check("server", serr, tc.wantServerErr)
			if tc.wantServerErr == "" && peer != clientID {
				t.Errorf("server saw peer %v, want %v", peer, clientID)
			}
		})
	}
}
