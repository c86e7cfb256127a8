package ca

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"strings"
	"testing"
	"time"

	securityapi "istio.io/api/security/v1alpha1"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/ambit-mesh/ambit/identity"
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

func startCA(t *testing.T, idx PodIndex, maxTTL time.Duration) *testCA {
	t.Helper()
	auth, err := identity.NewRootAuthority("cluster.local", 48*time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	srv, err := NewServer(auth, Options{TrustDomain: "cluster.local", Pods: idx, MaxTTL: maxTTL})
	if err != nil {
		t.Fatal(err)
	}
	serving, err := auth.IssueTLS(ServerIdentity("cluster.local"), time.Hour, time.Now(), nil)
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
	certFn := func() (*tls.Certificate, error) {
		if cred == nil {
			return &tls.Certificate{}, nil
		}
		return cred, nil
	}
	tlsConf := identity.ClientTLSConfig(certFn, func() *identity.Bundle { return c.bundle }, []identity.SPIFFE{ServerIdentity(c.td)}, nil)
	conn, err := grpc.NewClient(c.addr, grpc.WithTransportCredentials(credentials.NewTLS(tlsConf)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	key, _ := identity.NewKey()
	csr, err := identity.NewCSR(key, csrID)
	if err != nil {
		t.Fatal(err)
	}
	req := &securityapi.IstioCertificateRequest{Csr: string(csr), ValidityDuration: ttl}
	if impersonate != "" {
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
	fakeNode, _ := c.auth.IssueTLS(NodeProxyIdentity("cluster.local"), time.Hour, time.Now(), nil)
	rogue := identitytest.NewCA(t, "cluster.local")
	rogueNode, _ := IssueNodeCredential(rogue.Authority, "cluster.local", "node1", time.Hour, time.Now())

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
		{"workload asks another SAN", workload, id("demo", "echo"), "", 0, codes.InvalidArgument, "CSR asks for SANs other than spiffe://cluster.local/ns/demo/sa/client", identity.SPIFFE{}, 0},
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
	workload, _ := c.auth.IssueTLS(identity.SPIFFE{TrustDomain: "cluster.local", Namespace: "demo", ServiceAccount: "client"}, time.Hour, time.Now(), nil)
	conn, err := grpc.NewClient(c.addr, grpc.WithTransportCredentials(credentials.NewTLS(identity.ClientTLSConfig(
		func() (*tls.Certificate, error) { return workload, nil }, func() *identity.Bundle { return c.bundle }, []identity.SPIFFE{ServerIdentity("cluster.local")}, nil))))
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
