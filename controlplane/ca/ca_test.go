package ca

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"math"
	"math/big"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	securityapi "istio.io/api/security/v1alpha1"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/ambit-mesh/ambit/identity"
	"github.com/ambit-mesh/ambit/identity/caclient"
	"github.com/ambit-mesh/ambit/identity/identitytest"
)

// pods is a PodIndex: node -> "ns/sa" set.
type pods map[string]map[string]bool

func (p pods) HasPod(node, ns, sa string) bool { return p[node][ns+"/"+sa] }

type testCA struct {
	auth   *identity.Authority
	addr   string
	td     string
	bundle *identity.Bundle
}

func startCA(t *testing.T, idx PodIndex, maxTTL time.Duration, extraRoots ...*x509.Certificate) *testCA {
	t.Helper()
	auth, err := identity.NewRootAuthority("cluster.local", 72*time.Hour, time.Now().Add(-24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	return startCAWith(t, auth, idx, func(o *Options) { o.MaxTTL, o.ExtraRoots = maxTTL, extraRoots })
}

// startCAWith serves a CA signing with auth on 127.0.0.1:0 over TLS.
func startCAWith(t *testing.T, auth *identity.Authority, idx PodIndex, opts ...func(*Options)) *testCA {
	t.Helper()
	o := Options{TrustDomain: "cluster.local", Pods: idx}
	for _, f := range opts {
		f(&o)
	}
	srv, err := NewServer(auth, o)
	if err != nil {
		t.Fatal(err)
	}
	serving, err := auth.IssueTLS(identity.ControlPlane("cluster.local"), time.Hour, time.Now(), nil)
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(ServerTLSConfig(serving))))
	srv.Register(g)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(l)
	t.Cleanup(g.Stop)
	return &testCA{auth: auth, addr: l.Addr().String(), td: "cluster.local", bundle: srv.Bundle()}
}

// call asks the CA for a certificate as the holder of cred (nil: none).
func (c *testCA) call(t *testing.T, cred *tls.Certificate, csrID identity.SPIFFE, impersonate string, ttl int64) (*securityapi.IstioCertificateResponse, error) {
	t.Helper()
	key, _ := identity.NewKey()
	csr, err := identity.NewCSR(key, csrID)
	if err != nil {
		t.Fatal(err)
	}
	return c.callCSR(t, cred, csr, impersonate, ttl)
}

// callCSR is call with a CSR of the caller's making.
func (c *testCA) callCSR(t *testing.T, cred *tls.Certificate, csr []byte, impersonate string, ttl int64) (*securityapi.IstioCertificateResponse, error) {
	t.Helper()
	certFn := func() (*tls.Certificate, error) {
		if cred == nil {
			return &tls.Certificate{}, nil
		}
		return cred, nil
	}
	tlsConf := identity.ClientTLSConfig(certFn, func() *identity.Bundle { return c.bundle }, []identity.SPIFFE{identity.ControlPlane(c.td)}, nil)
	conn, err := grpc.NewClient(c.addr, grpc.WithTransportCredentials(credentials.NewTLS(tlsConf)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	req := &securityapi.IstioCertificateRequest{Csr: string(csr), ValidityDuration: ttl}
	switch {
	case impersonate == "\x00number":
		req.Metadata, _ = structpb.NewStruct(map[string]any{ImpersonatedIdentityKey: 42})
	case impersonate != "":
		req.Metadata, _ = structpb.NewStruct(map[string]any{ImpersonatedIdentityKey: impersonate})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return securityapi.NewIstioCertificateServiceClient(conn).CreateCertificate(ctx, req)
}

func leafOf(t *testing.T, resp *securityapi.IstioCertificateResponse) (*x509.Certificate, *x509.Certificate) {
	t.Helper()
	if len(resp.CertChain) < 2 {
		t.Fatalf("chain has %d elements, want leaf and root", len(resp.CertChain))
	}
	leaf, err := identity.ParseCerts([]byte(resp.CertChain[0]))
	if err != nil {
		t.Fatal(err)
	}
	root, err := identity.ParseCerts([]byte(resp.CertChain[len(resp.CertChain)-1]))
	if err != nil {
		t.Fatal(err)
	}
	return leaf[0], root[0]
}

func TestCreateCertificate(t *testing.T) {
	idx := pods{"node1": {"demo/echo": true, "demo/client": true}, "node2": {"demo/db": true}}
	c := startCA(t, idx, 48*time.Hour)
	id := func(ns, sa string) identity.SPIFFE {
		return identity.SPIFFE{TrustDomain: "cluster.local", Namespace: ns, ServiceAccount: sa}
	}
	workload, err := c.auth.IssueTLS(id("demo", "client"), time.Hour, time.Now(), nil)
	if err != nil {
		t.Fatal(err)
	}
	node1, err := IssueNodeCredential(c.auth, "cluster.local", "node1", time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	// A pod whose service account is istio-system/ztunnel gets a plain
	// workload certificate: without the node-proxy extension it is no
	// node credential.
	fakeNode, err := c.auth.IssueTLS(NodeProxyIdentity("cluster.local"), time.Hour, time.Now(), nil)
	must(t, err)
	rogue := identitytest.NewCA(t, "cluster.local")
	rogueNode, err := IssueNodeCredential(rogue.Authority, "cluster.local", "node1", time.Hour, time.Now())
	must(t, err)
	node2, err := IssueNodeCredential(c.auth, "cluster.local", "node2", time.Hour, time.Now())
	must(t, err)
	expiredNode, err := IssueNodeCredential(c.auth, "cluster.local", "node1", time.Minute, time.Now().Add(-10*time.Minute))
	must(t, err)
	expiredWorkload, err := c.auth.IssueTLS(id("demo", "client"), time.Minute, time.Now().Add(-10*time.Minute), nil)
	must(t, err)
	nodeExt := func(v string) *identity.LeafOptions {
		val, err := asn1.MarshalWithParams(v, "utf8")
		must(t, err)
		return &identity.LeafOptions{Extensions: []pkix.Extension{{Id: oidNodeProxy, Value: val}}}
	}
	nodeExtOnWorkload, err := c.auth.IssueTLS(id("demo", "client"), time.Hour, time.Now(), nodeExt("node1"))
	must(t, err)
	emptyNode, err := c.auth.IssueTLS(NodeProxyIdentity("cluster.local"), time.Hour, time.Now(), nodeExt(""))
	must(t, err)
	serverOnly := signWith(t, c.auth, id("demo", "client"), []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth})

	tests := []struct {
		name        string
		cred        *tls.Certificate
		csrID       identity.SPIFFE
		impersonate string
		ttl         int64
		wantCode    codes.Code
		wantMsg     string
		wantID      identity.SPIFFE
		wantTTL     time.Duration
	}{
		{"workload renews itself", workload, id("demo", "client"), "", 0, codes.OK, "", id("demo", "client"), 24 * time.Hour},
		{"ttl honoured", workload, id("demo", "client"), "", 3600, codes.OK, "", id("demo", "client"), time.Hour},
		{"ttl capped at max", workload, id("demo", "client"), "", 1000 * 3600, codes.OK, "", id("demo", "client"), 48 * time.Hour},
		{"negative ttl", workload, id("demo", "client"), "", -5, codes.InvalidArgument, "negative", identity.SPIFFE{}, 0},
		{"workload impersonating", workload, id("demo", "echo"), "spiffe://cluster.local/ns/demo/sa/echo", 0, codes.PermissionDenied, "impersonation needs a node-proxy credential", identity.SPIFFE{}, 0},
		{"workload asks another SAN", workload, id("demo", "echo"), "", 0, codes.InvalidArgument, `CSR for spiffe://cluster.local/ns/demo/sa/client: SAN "spiffe://cluster.local/ns/demo/sa/echo" does not match`, identity.SPIFFE{}, 0},
		{"workload asks itself via metadata", workload, id("demo", "client"), "spiffe://cluster.local/ns/demo/sa/client", 0, codes.OK, "", id("demo", "client"), 24 * time.Hour},
		{"huge ttl capped, no overflow", workload, id("demo", "client"), "", math.MaxInt64, codes.OK, "", id("demo", "client"), 48 * time.Hour},
		{"node impersonates with a CSR for another SAN", node1, id("demo", "client"), "spiffe://cluster.local/ns/demo/sa/echo", 0, codes.InvalidArgument, "does not match the identity granted", identity.SPIFFE{}, 0},
		{"node renews itself: plain certificate", node1, NodeProxyIdentity("cluster.local"), "", 0, codes.OK, "", NodeProxyIdentity("cluster.local"), 24 * time.Hour},
		{"expired node credential", expiredNode, id("demo", "echo"), "spiffe://cluster.local/ns/demo/sa/echo", 0, codes.Unauthenticated, "expired", identity.SPIFFE{}, 0},
		{"expired workload certificate", expiredWorkload, id("demo", "client"), "", 0, codes.Unauthenticated, "expired", identity.SPIFFE{}, 0},
		{"server-only certificate as credential", serverOnly, id("demo", "client"), "", 0, codes.Unauthenticated, "key usage", identity.SPIFFE{}, 0},
		{"node extension on another identity", nodeExtOnWorkload, id("demo", "echo"), "spiffe://cluster.local/ns/demo/sa/echo", 0, codes.Unauthenticated, "unexpected identity", identity.SPIFFE{}, 0},
		{"node extension without a node", emptyNode, id("demo", "echo"), "spiffe://cluster.local/ns/demo/sa/echo", 0, codes.Unauthenticated, "malformed node-proxy credential", identity.SPIFFE{}, 0},
		{"node2 impersonates its pod", node2, id("demo", "db"), "spiffe://cluster.local/ns/demo/sa/db", 0, codes.OK, "", id("demo", "db"), 24 * time.Hour},
		{"node2 impersonates node1's pod", node2, id("demo", "echo"), "spiffe://cluster.local/ns/demo/sa/echo", 0, codes.PermissionDenied, "node node2 may not impersonate", identity.SPIFFE{}, 0},
		{"non-string impersonated identity", node1, id("demo", "echo"), "\x00number", 0, codes.InvalidArgument, "non-empty string", identity.SPIFFE{}, 0},
		{"node impersonates its pod", node1, id("demo", "echo"), "spiffe://cluster.local/ns/demo/sa/echo", 0, codes.OK, "", id("demo", "echo"), 24 * time.Hour},
		{"node impersonates another node's pod", node1, id("demo", "db"), "spiffe://cluster.local/ns/demo/sa/db", 0, codes.PermissionDenied, "node node1 may not impersonate spiffe://cluster.local/ns/demo/sa/db: no running pod", identity.SPIFFE{}, 0},
		{"node impersonates an unknown identity", node1, id("kube-system", "admin"), "spiffe://cluster.local/ns/kube-system/sa/admin", 0, codes.PermissionDenied, "no running pod", identity.SPIFFE{}, 0},
		{"node impersonates another trust domain", node1, identity.SPIFFE{TrustDomain: "evil.org", Namespace: "demo", ServiceAccount: "echo"}, "spiffe://evil.org/ns/demo/sa/echo", 0, codes.PermissionDenied, "trust domain", identity.SPIFFE{}, 0},
		{"malformed impersonated identity", node1, id("demo", "echo"), "spiffe://cluster.local/demo/echo", 0, codes.InvalidArgument, "ImpersonatedIdentity", identity.SPIFFE{}, 0},
		{"ztunnel SA without node extension", fakeNode, id("demo", "echo"), "spiffe://cluster.local/ns/demo/sa/echo", 0, codes.PermissionDenied, "impersonation needs a node-proxy credential", identity.SPIFFE{}, 0},
		{"node credential from a rogue CA", rogueNode, id("demo", "echo"), "spiffe://cluster.local/ns/demo/sa/echo", 0, codes.Unauthenticated, "not trusted", identity.SPIFFE{}, 0},
		{"no credential", nil, id("demo", "echo"), "", 0, codes.Unauthenticated, "no client certificate", identity.SPIFFE{}, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := c.call(t, tc.cred, tc.csrID, tc.impersonate, tc.ttl)
			if got := status.Code(err); got != tc.wantCode {
				t.Fatalf("code %v (%v), want %v", got, err, tc.wantCode)
			}
			if tc.wantCode != codes.OK {
				if !strings.Contains(status.Convert(err).Message(), tc.wantMsg) {
					t.Fatalf("message %q lacks %q", status.Convert(err).Message(), tc.wantMsg)
				}
				return
			}
			leaf, root := leafOf(t, resp)
			got, err := identity.FromCertificate(leaf)
			if err != nil || got != tc.wantID {
				t.Fatalf("leaf identity %v, %v; want %v", got, err, tc.wantID)
			}
			if len(leaf.DNSNames)+len(leaf.IPAddresses)+len(leaf.EmailAddresses) != 0 || leaf.IsCA {
				t.Errorf("leaf has extra SANs or is a CA: %v %v %v", leaf.DNSNames, leaf.IPAddresses, leaf.IsCA)
			}
			for _, ext := range leaf.Extensions {
				if ext.Id.Equal(oidNodeProxy) {
					t.Error("an issued certificate carries the node-proxy extension")
				}
			}
			if !root.Equal(c.auth.Root()) {
				t.Error("last element of the chain is not the root")
			}
			if life := leaf.NotAfter.Sub(leaf.NotBefore) - time.Minute; life < tc.wantTTL-time.Minute || life > tc.wantTTL+time.Minute {
				t.Errorf("lifetime %s, want %s", life, tc.wantTTL)
			}
			if _, err := c.bundle.Verify([]*x509.Certificate{leaf}, time.Now()); err != nil {
				t.Errorf("issued certificate does not verify: %v", err)
			}
		})
	}
}

func TestGarbageCSR(t *testing.T) {
	c := startCA(t, pods{}, 0)
	workload, err := c.auth.IssueTLS(identity.SPIFFE{TrustDomain: "cluster.local", Namespace: "demo", ServiceAccount: "client"}, time.Hour, time.Now(), nil)
	must(t, err)
	conn, err := grpc.NewClient(c.addr, grpc.WithTransportCredentials(credentials.NewTLS(identity.ClientTLSConfig(
		func() (*tls.Certificate, error) { return workload, nil }, func() *identity.Bundle { return c.bundle }, []identity.SPIFFE{identity.ControlPlane("cluster.local")}, nil))))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for _, csr := range []string{"", "garbage", "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"} {
		_, err := securityapi.NewIstioCertificateServiceClient(conn).CreateCertificate(context.Background(), &securityapi.IstioCertificateRequest{Csr: csr})
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "bad CSR") {
			t.Errorf("CSR %q: %v", csr, err)
		}
	}
}

func TestLoadOrCreate(t *testing.T) {
	dir := t.TempDir()
	a, created, err := LoadOrCreate(dir, "cluster.local", time.Now())
	if err != nil || !created {
		t.Fatalf("first start: %v created=%v", err, created)
	}
	b, created, err := LoadOrCreate(dir, "cluster.local", time.Now())
	if err != nil || created || !b.Cert.Equal(a.Cert) {
		t.Fatalf("restart did not load the persisted root: %v created=%v", err, created)
	}
	if _, err := LoadFiles(dir+"/"+RootCertFile, dir+"/missing.pem"); err == nil {
		t.Error("missing key accepted")
	}
	otherDir := t.TempDir()
	if _, _, err := LoadOrCreate(otherDir, "cluster.local", time.Now()); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadFiles(dir+"/"+RootCertFile, otherDir+"/"+RootKeyFile); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Errorf("mismatched key: %v", err)
	}
	if _, err := NewServer(a, Options{TrustDomain: "cluster.local"}); err == nil {
		t.Error("server without pod index accepted")
	}
}

// signWith issues a certificate for id with the given extended key usages,
// bypassing Authority.Issue (which always sets client and server auth).
func signWith(t *testing.T, auth *identity.Authority, id identity.SPIFFE, eku []x509.ExtKeyUsage) *tls.Certificate {
	t.Helper()
	key, _ := identity.NewKey()
	now := time.Now()
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: big.NewInt(now.UnixNano()), NotBefore: now.Add(-time.Minute), NotAfter: now.Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: eku, BasicConstraintsValid: true, URIs: []*url.URL{id.URL()},
	}, auth.Cert, key.Public(), auth.Key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

// csrWith makes a CSR with arbitrary SANs (NewCSR always makes exactly one
// SPIFFE URI).
func csrWith(t *testing.T, tmpl *x509.CertificateRequest) []byte {
	t.Helper()
	key, _ := identity.NewKey()
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

func TestCSRSANs(t *testing.T) {
	c := startCA(t, pods{}, 0)
	self := identity.SPIFFE{TrustDomain: "cluster.local", Namespace: "demo", ServiceAccount: "client"}
	workload, err := c.auth.IssueTLS(self, time.Hour, time.Now(), nil)
	must(t, err)
	other, _ := url.Parse("spiffe://cluster.local/ns/demo/sa/other")
	rsaKeyCSR := func() []byte {
		key, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			t.Fatal(err)
		}
		der, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{self.URL()}}, key)
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
	}
	tests := []struct {
		name    string
		csr     []byte
		wantMsg string
	}{
		{"no SAN", csrWith(t, &x509.CertificateRequest{}), "has no URI SAN"},
		{"extra DNS SAN", csrWith(t, &x509.CertificateRequest{URIs: []*url.URL{self.URL()}, DNSNames: []string{"kubernetes.default.svc"}}), "DNS, IP or e-mail SANs"},
		{"extra IP SAN", csrWith(t, &x509.CertificateRequest{URIs: []*url.URL{self.URL()}, IPAddresses: []net.IP{net.IPv4(10, 0, 0, 1)}}), "DNS, IP or e-mail SANs"},
		{"two URI SANs", csrWith(t, &x509.CertificateRequest{URIs: []*url.URL{self.URL(), other}}), "2 URI SANs"},
		{"another URI SAN", csrWith(t, &x509.CertificateRequest{URIs: []*url.URL{other}}), "does not match"},
		{"RSA key", rsaKeyCSR(), "not accepted"},
		{"garbage", []byte("garbage"), "bad CSR"},
		{"empty", nil, "bad CSR"},
		{"certificate instead of CSR", identity.EncodeCerts(c.auth.Root()), "bad CSR"},
		{"oversized", make([]byte, identity.MaxCSRSize+1), "bad CSR"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.callCSR(t, workload, tc.csr, "", 0)
			if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), tc.wantMsg) {
				t.Fatalf("err = %v, want InvalidArgument with %q", err, tc.wantMsg)
			}
		})
	}
}

// TestPodIndexIsLive: a node loses the right to an identity as soon as its
// last pod with that service account goes.
func TestPodIndexIsLive(t *testing.T) {
	idx := &livePods{m: map[string]bool{"node1/demo/echo": true}}
	c := startCA(t, idx, 0)
	node1, err := IssueNodeCredential(c.auth, "cluster.local", "node1", time.Hour, time.Now())
	must(t, err)
	echo := identity.SPIFFE{TrustDomain: "cluster.local", Namespace: "demo", ServiceAccount: "echo"}
	if _, err := c.call(t, node1, echo, echo.String(), 0); err != nil {
		t.Fatalf("with the pod: %v", err)
	}
	idx.set("node1/demo/echo", false)
	if _, err := c.call(t, node1, echo, echo.String(), 0); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("after the pod went: %v", err)
	}
}

type livePods struct {
	mu sync.Mutex
	m  map[string]bool
}

func (p *livePods) set(k string, v bool) { p.mu.Lock(); defer p.mu.Unlock(); p.m[k] = v }
func (p *livePods) HasPod(node, ns, sa string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.m[node+"/"+ns+"/"+sa]
}

// TestRootRotation: with the previous root as an extra root, holders of
// certificates from it still authenticate, and every response publishes
// both roots in its last element.
func TestRootRotation(t *testing.T) {
	old := identitytest.NewCA(t, "cluster.local")
	otherTD := identitytest.NewCA(t, "other.domain")
	c := startCA(t, pods{}, 0, old.Root(), otherTD.Root())
	self := old.ID("demo", "client")
	resp, err := c.call(t, old.Issue(t, self, time.Hour), self, "", 0)
	if err != nil {
		t.Fatalf("certificate from the previous root refused: %v", err)
	}
	roots, err := identity.ParseCerts([]byte(resp.CertChain[len(resp.CertChain)-1]))
	if err != nil || len(roots) != 3 || !roots[0].Equal(c.auth.Root()) || !roots[1].Equal(old.Root()) {
		t.Fatalf("last element holds %d roots (%v), want the signing root then the previous ones", len(roots), err)
	}
	leaf, _ := identity.ParseCerts([]byte(resp.CertChain[0]))
	if err := leaf[0].CheckSignatureFrom(c.auth.Root()); err != nil {
		t.Errorf("not issued by the new root: %v", err)
	}
	// Trusting another trust domain's root does not admit its identities.
	foreign := otherTD.ID("demo", "client")
	if _, err := c.call(t, otherTD.Issue(t, foreign, time.Hour), foreign, "", 0); status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "not in trust domain") {
		t.Errorf("identity of another trust domain: %v", err)
	}
}

// TestAuthenticateWithoutTLS calls the service directly: no peer, or a peer
// without TLS, is Unauthenticated.
func TestAuthenticateWithoutTLS(t *testing.T) {
	auth, err := identity.NewRootAuthority("cluster.local", time.Hour, time.Now())
	must(t, err)
	srv, err := NewServer(auth, Options{TrustDomain: "cluster.local", Pods: pods{}})
	if err != nil {
		t.Fatal(err)
	}
	for name, ctx := range map[string]context.Context{
		"no peer":    context.Background(),
		"plain peer": peer.NewContext(context.Background(), &peer.Peer{Addr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}}),
	} {
		if _, err := srv.CreateCertificate(ctx, &securityapi.IstioCertificateRequest{}); status.Code(err) != codes.Unauthenticated {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestNewServerRefuses(t *testing.T) {
	auth, err := identity.NewRootAuthority("cluster.local", time.Hour, time.Now())
	must(t, err)
	other, err := identity.NewRootAuthority("cluster.local", time.Hour, time.Now())
	must(t, err)
	leaf, err := auth.IssueTLS(identity.SPIFFE{TrustDomain: "cluster.local", Namespace: "a", ServiceAccount: "b"}, time.Hour, time.Now(), nil)
	must(t, err)
	tests := []struct {
		name string
		auth *identity.Authority
		o    Options
	}{
		{"no pod index", auth, Options{TrustDomain: "cluster.local"}},
		{"bad trust domain", auth, Options{TrustDomain: "spiffe://cluster.local", Pods: pods{}}},
		{"default above max", auth, Options{TrustDomain: "cluster.local", Pods: pods{}, DefaultTTL: 2 * time.Hour, MaxTTL: time.Hour}},
		{"key of another CA", &identity.Authority{Cert: auth.Cert, Key: other.Key, Chain: auth.Chain}, Options{TrustDomain: "cluster.local", Pods: pods{}}},
		{"nil authority", nil, Options{TrustDomain: "cluster.local", Pods: pods{}}},
		{"leaf as extra root", auth, Options{TrustDomain: "cluster.local", Pods: pods{}, ExtraRoots: []*x509.Certificate{leaf.Leaf}}},
		{"expired root", auth, Options{TrustDomain: "cluster.local", Pods: pods{}, Now: func() time.Time { return time.Now().Add(2 * time.Hour) }}},
	}
	for _, tc := range tests {
		if _, err := NewServer(tc.auth, tc.o); err == nil {
			t.Errorf("%s: accepted", tc.name)
		}
	}
	if _, err := IssueNodeCredential(auth, "cluster.local", "Bad_Node", time.Hour, time.Now()); err == nil {
		t.Error("invalid node name accepted")
	}
}

// TestWithCertManager runs the client side against the real server: a node
// proxy's manager obtains, for its pods, certificates that verify.
func TestWithCertManager(t *testing.T) {
	c := startCA(t, pods{"node1": {"demo/echo": true}}, 0)
	node1, err := IssueNodeCredential(c.auth, "cluster.local", "node1", time.Hour, time.Now())
	must(t, err)
	conn, err := grpc.NewClient(c.addr, grpc.WithTransportCredentials(credentials.NewTLS(identity.ClientTLSConfig(
		identity.StaticCert(node1), identity.StaticBundle(c.bundle), []identity.SPIFFE{identity.ControlPlane("cluster.local")}, nil))))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	m := caclient.NewManager(&caclient.GRPCFetcher{Client: securityapi.NewIstioCertificateServiceClient(conn), Impersonate: true}, nil, nil)
	defer m.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	echo := identity.SPIFFE{TrustDomain: "cluster.local", Namespace: "demo", ServiceAccount: "echo"}
	cert, err := m.Get(ctx, echo)
	if err != nil {
		t.Fatal(err)
	}
	if cert.ID != echo || !cert.Bundle.Roots()[0].Equal(c.auth.Root()) || len(cert.TLS.Certificate) != 1 {
		t.Errorf("cert %v, roots %d, TLS chain %d", cert.ID, len(cert.Bundle.Roots()), len(cert.TLS.Certificate))
	}
	if _, err := m.Get(ctx, identity.SPIFFE{TrustDomain: "cluster.local", Namespace: "demo", ServiceAccount: "db"}); status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "no running pod") {
		t.Errorf("identity without a pod on the node: %v", err)
	}
}

func TestServingCertificate(t *testing.T) {
	auth, err := identity.NewRootAuthority("cluster.local", 365*24*time.Hour, time.Now())
	must(t, err)
	now := time.Now()
	get := ServingCertificate(auth, "cluster.local", 10*time.Hour, func() time.Time { return now })
	first, err := get()
	if err != nil {
		t.Fatal(err)
	}
	if id, _ := identity.FromCertificate(first.Leaf); id != identity.ControlPlane("cluster.local") {
		t.Errorf("serving identity %v", id)
	}
	now = now.Add(4 * time.Hour)
	if again, _ := get(); again != first {
		t.Error("renewed before half-life")
	}
	now = now.Add(2 * time.Hour)
	if renewed, _ := get(); renewed == first || !renewed.Leaf.NotAfter.After(first.Leaf.NotAfter) {
		t.Error("not renewed past half-life")
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
