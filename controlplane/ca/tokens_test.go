package ca

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	securityapi "istio.io/api/security/v1alpha1"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/ambit-mesh/ambit/identity"
)

// fakeTokens is a TokenAuthenticator: token -> caller; pod name -> node
// (or an error).
type fakeTokens struct {
	callers map[string]TokenCaller
	nodes   map[string]string
	nodeErr map[string]error
	calls   []string // tokens seen
}

func (f *fakeTokens) AuthenticateToken(_ context.Context, token, clusterID string) (*TokenCaller, error) {
	f.calls = append(f.calls, token)
	c, ok := f.callers[token]
	if !ok {
		return nil, status.Error(codes.Unauthenticated, "token refused by the API server: invalid bearer token")
	}
	c.ClusterID = clusterID
	return &c, nil
}

func (f *fakeTokens) CallerNode(_ context.Context, c *TokenCaller) (string, error) {
	if err := f.nodeErr[c.PodName]; err != nil {
		return "", err
	}
	n, ok := f.nodes[c.PodName]
	if !ok {
		return "", errors.New("pod gone")
	}
	return n, nil
}

// callWith calls CreateCertificate with a client certificate (nil: none)
// and the given request headers.
func (c *testCA) callWith(t *testing.T, cred *tls.Certificate, headers map[string]string, csrID identity.SPIFFE, impersonate string) (*securityapi.IstioCertificateResponse, error) {
	t.Helper()
	key, _ := identity.NewKey()
	csr, err := identity.NewCSR(key, csrID)
	must(t, err)
	certFn := func() (*tls.Certificate, error) {
		if cred == nil {
			return &tls.Certificate{}, nil
		}
		return cred, nil
	}
	conf := identity.ClientTLSConfig(certFn, func() *identity.Bundle { return c.bundle }, []identity.SPIFFE{identity.ControlPlane(c.td)}, nil)
	conn, err := grpc.NewClient(c.addr, grpc.WithTransportCredentials(credentials.NewTLS(conf)))
	must(t, err)
	defer conn.Close()
	req := &securityapi.IstioCertificateRequest{Csr: string(csr)}
	if impersonate != "" {
		req.Metadata, _ = structpb.NewStruct(map[string]any{ImpersonatedIdentityKey: impersonate})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for k, v := range headers {
		ctx = metadata.AppendToOutgoingContext(ctx, k, v)
	}
	return securityapi.NewIstioCertificateServiceClient(conn).CreateCertificate(ctx, req)
}

func TestTokenCallers(t *testing.T) {
	toks := &fakeTokens{
		callers: map[string]TokenCaller{
			"ztunnel-a": {Namespace: "istio-system", ServiceAccount: "ztunnel", PodName: "ztunnel-a", PodUID: "u1"},
			"ztunnel-b": {Namespace: "istio-system", ServiceAccount: "ztunnel", PodName: "ztunnel-b", PodUID: "u2"},
			"ztunnel-x": {Namespace: "istio-system", ServiceAccount: "ztunnel", PodName: "ztunnel-x", PodUID: "u3"},
			"ztunnel-y": {Namespace: "istio-system", ServiceAccount: "ztunnel", PodName: "ztunnel-y", PodUID: "u6"},
			"custom":    {Namespace: "kube-system", ServiceAccount: "node-proxy", PodName: "np-a", PodUID: "u4"},
			"echo":      {Namespace: "demo", ServiceAccount: "echo", PodName: "echo-1", PodUID: "u5"},
			"unbound":   {Namespace: "istio-system", ServiceAccount: "ztunnel"},
			"bad-sa":    {Namespace: "demo", ServiceAccount: "Not_Valid"},
		},
		nodes:   map[string]string{"ztunnel-a": "node-a", "ztunnel-b": "node-b", "np-a": "node-a"},
		nodeErr: map[string]error{"ztunnel-x": status.Error(codes.PermissionDenied, "the pod its token is bound to no longer exists"), "": status.Error(codes.PermissionDenied, "its token is bound to no pod")},
	}
	idx := pods{"node-a": {"demo/echo": true}, "node-b": {"demo/db": true}}
	auth, err := identity.NewRootAuthority("cluster.local", 72*time.Hour, time.Now().Add(-time.Hour))
	must(t, err)
	c := startCAWith(t, auth, idx, func(o *Options) {
		o.Tokens = toks
		o.TrustedNodeAccounts = []string{"istio-system/ztunnel", "kube-system/node-proxy"}
	})
	node1, err := IssueNodeCredential(c.auth, "cluster.local", "node-b", time.Hour, time.Now())
	must(t, err)
	id := func(ns, sa string) identity.SPIFFE {
		return identity.SPIFFE{TrustDomain: "cluster.local", Namespace: ns, ServiceAccount: sa}
	}
	bearer := func(tok string) map[string]string {
		return map[string]string{"authorization": "Bearer " + tok, "clusterid": "Kubernetes"}
	}
	tests := []struct {
		name        string
		cred        *tls.Certificate
		headers     map[string]string
		csrID       identity.SPIFFE
		impersonate string
		wantCode    codes.Code
		wantMsg     string
	}{
		{"own identity by token", nil, bearer("echo"), id("demo", "echo"), "", codes.OK, ""},
		{"own identity via metadata", nil, bearer("echo"), id("demo", "echo"), id("demo", "echo").String(), codes.OK, ""},
		{"ztunnel impersonates a pod on its node", nil, bearer("ztunnel-a"), id("demo", "echo"), id("demo", "echo").String(), codes.OK, ""},
		{"custom trusted account", nil, bearer("custom"), id("demo", "echo"), id("demo", "echo").String(), codes.OK, ""},
		{"ztunnel asks a pod of another node", nil, bearer("ztunnel-a"), id("demo", "db"), id("demo", "db").String(), codes.PermissionDenied, "node node-a may not impersonate spiffe://cluster.local/ns/demo/sa/db: no running pod"},
		{"untrusted account impersonates", nil, bearer("echo"), id("demo", "db"), id("demo", "db").String(), codes.PermissionDenied, "service account demo/echo is not a trusted node account (trusted: istio-system/ztunnel, kube-system/node-proxy)"},
		{"caller pod deleted", nil, bearer("ztunnel-x"), id("demo", "echo"), id("demo", "echo").String(), codes.PermissionDenied, "no longer exists"},
		{"token bound to no pod", nil, bearer("unbound"), id("demo", "echo"), id("demo", "echo").String(), codes.PermissionDenied, "bound to no pod"},
		{"ztunnel of node-b asks for node-a's pod", nil, bearer("ztunnel-b"), id("demo", "echo"), id("demo", "echo").String(), codes.PermissionDenied, "node node-b may not impersonate"},
		{"node lookup fails plainly", nil, bearer("ztunnel-y"), id("demo", "echo"), id("demo", "echo").String(), codes.PermissionDenied, "pod gone"},
		{"invalid token", nil, bearer("garbage"), id("demo", "echo"), "", codes.Unauthenticated, "invalid bearer token"},
		{"token takes precedence over a certificate", node1, bearer("garbage"), id("demo", "db"), id("demo", "db").String(), codes.Unauthenticated, "invalid bearer token"},
		{"not a bearer token", nil, map[string]string{"authorization": "Basic Zm9vOmJhcg=="}, id("demo", "echo"), "", codes.Unauthenticated, "Bearer"},
		{"empty bearer", nil, map[string]string{"authorization": "Bearer "}, id("demo", "echo"), "", codes.Unauthenticated, "Bearer"},
		{"lower-case scheme", nil, map[string]string{"authorization": "bearer echo"}, id("demo", "echo"), "", codes.OK, ""},
		{"invalid service account name", nil, bearer("bad-sa"), id("demo", "echo"), "", codes.Unauthenticated, "invalid service account"},
		{"CSR for another SAN", nil, bearer("echo"), id("demo", "db"), "", codes.InvalidArgument, "does not match"},
		{"node credential still works", node1, nil, id("demo", "db"), id("demo", "db").String(), codes.OK, ""},
		{"nothing", nil, nil, id("demo", "echo"), "", codes.Unauthenticated, "no client certificate"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := c.callWith(t, tc.cred, tc.headers, tc.csrID, tc.impersonate)
			if got := status.Code(err); got != tc.wantCode {
				t.Fatalf("code %v (%v), want %v", got, err, tc.wantCode)
			}
			if tc.wantCode != codes.OK {
				if !strings.Contains(status.Convert(err).Message(), tc.wantMsg) {
					t.Fatalf("message %q lacks %q", status.Convert(err).Message(), tc.wantMsg)
				}
				return
			}
			leaf, _ := leafOf(t, resp)
			if got, err := identity.FromCertificate(leaf); err != nil || got != tc.csrID {
				t.Fatalf("issued %v (%v), want %v", got, err, tc.csrID)
			}
		})
	}
}

// TestTokenWithoutReviewer: a control plane without a Kubernetes API says
// so to a caller that only has a token, and ignores the token of a caller
// that also has a certificate.
func TestTokenWithoutReviewer(t *testing.T) {
	c := startCA(t, pods{"node1": {"demo/echo": true}}, 0)
	hdr := map[string]string{"authorization": "Bearer abc"}
	echo := identity.SPIFFE{TrustDomain: "cluster.local", Namespace: "demo", ServiceAccount: "echo"}
	_, err := c.callWith(t, nil, hdr, echo, "")
	if status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "does not review tokens") {
		t.Errorf("token only: %v", err)
	}
	node1, err := IssueNodeCredential(c.auth, "cluster.local", "node1", time.Hour, time.Now())
	must(t, err)
	if _, err := c.callWith(t, node1, hdr, echo, echo.String()); err != nil {
		t.Errorf("certificate and token: %v", err)
	}
}

func TestAuthenticateStream(t *testing.T) {
	toks := &fakeTokens{callers: map[string]TokenCaller{"echo": {Namespace: "demo", ServiceAccount: "echo"}}}
	auth, err := identity.NewRootAuthority("cluster.local", time.Hour, time.Now())
	must(t, err)
	srv, err := NewServer(auth, Options{TrustDomain: "cluster.local", Pods: pods{}, Tokens: toks})
	must(t, err)
	node1, err := IssueNodeCredential(auth, "cluster.local", "node1", time.Hour, time.Now())
	must(t, err)
	workload, err := auth.IssueTLS(identity.SPIFFE{TrustDomain: "cluster.local", Namespace: "demo", ServiceAccount: "echo"}, time.Hour, time.Now(), nil)
	must(t, err)
	tests := []struct {
		name     string
		cert     *tls.Certificate
		token    string
		wantCode codes.Code
		wantID   string
		byToken  bool
	}{
		{"token", nil, "echo", codes.OK, "spiffe://cluster.local/ns/demo/sa/echo", true},
		{"bad token", nil, "nope", codes.Unauthenticated, "", false},
		{"node credential", node1, "", codes.OK, "spiffe://cluster.local/ns/istio-system/sa/ztunnel", false},
		{"workload certificate", workload, "", codes.PermissionDenied, "", false},
		{"nothing", nil, "", codes.Unauthenticated, "", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := tlsPeerContext(tc.cert)
			if tc.token != "" {
				ctx = metadata.NewIncomingContext(ctx, metadata.Pairs("authorization", "Bearer "+tc.token))
			}
			id, byToken, err := srv.AuthenticateStream(ctx)
			if status.Code(err) != tc.wantCode {
				t.Fatalf("code %v (%v), want %v", status.Code(err), err, tc.wantCode)
			}
			if err == nil && (id.String() != tc.wantID || byToken != tc.byToken) {
				t.Errorf("got %v byToken=%v, want %s %v", id, byToken, tc.wantID, tc.byToken)
			}
		})
	}
}

// tlsPeerContext is a server-side context whose peer completed TLS with
// cert (nil: no client certificate).
func tlsPeerContext(cert *tls.Certificate) context.Context {
	var st tls.ConnectionState
	if cert != nil {
		st.PeerCertificates = []*x509.Certificate{cert.Leaf}
	}
	return peerWithTLS(st)
}

func TestParseNodeAccounts(t *testing.T) {
	tests := []struct {
		in      string
		want    []string
		wantErr string
	}{
		{"istio-system/ztunnel", []string{"istio-system/ztunnel"}, ""},
		{" istio-system/ztunnel , kube-system/node-proxy ,", []string{"istio-system/ztunnel", "kube-system/node-proxy"}, ""},
		{"", []string{}, ""},
		{"ztunnel", nil, "want namespace/service-account"},
		{"Istio/ztunnel", nil, "invalid namespace"},
		{"istio-system/", nil, "invalid service account"},
	}
	for _, tc := range tests {
		got, err := ParseNodeAccounts(tc.in)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%q: err %v, want %q", tc.in, err, tc.wantErr)
			}
			continue
		}
		if err != nil || strings.Join(got, ",") != strings.Join(tc.want, ",") {
			t.Errorf("%q: %v %v, want %v", tc.in, got, err, tc.want)
		}
	}
	auth, _ := identity.NewRootAuthority("cluster.local", time.Hour, time.Now())
	if _, err := NewServer(auth, Options{TrustDomain: "cluster.local", Pods: pods{}, TrustedNodeAccounts: []string{"bad"}}); err == nil {
		t.Error("malformed trusted node account accepted")
	}
}

// TestServingCertificateNames: the serving certificate carries istiod's DNS
// names (or those given) and the control plane's SPIFFE id, verifies
// against the root for those names, and is fit for serving only.
func TestServingCertificateNames(t *testing.T) {
	auth, err := identity.NewRootAuthority("cluster.local", 365*24*time.Hour, time.Now())
	must(t, err)
	pool := x509.NewCertPool()
	pool.AddCert(auth.Root())
	for _, tc := range []struct {
		names []string
		want  []string
	}{
		{nil, []string{"istiod.istio-system.svc", "istiod-remote.istio-system.svc", "istio-pilot.istio-system.svc"}},
		{[]string{"ambit.example.com"}, []string{"ambit.example.com"}},
	} {
		cert, err := ServingCertificate(auth, "cluster.local", time.Hour, nil, tc.names...)()
		must(t, err)
		if strings.Join(cert.Leaf.DNSNames, ",") != strings.Join(tc.want, ",") {
			t.Errorf("DNS names %v, want %v", cert.Leaf.DNSNames, tc.want)
		}
		if id, err := identity.FromCertificate(cert.Leaf); err != nil || id != identity.ControlPlane("cluster.local") {
			t.Errorf("SPIFFE id %v %v", id, err)
		}
		for _, n := range tc.want {
			if _, err := cert.Leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: n, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
				t.Errorf("%s: %v", n, err)
			}
		}
		if _, err := cert.Leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: "evil.istio-system.svc"}); err == nil {
			t.Error("verified for a name it does not carry")
		}
		if _, err := cert.Leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err == nil {
			t.Error("serving certificate is fit for client authentication")
		}
		if len(cert.Certificate) != 1 {
			t.Errorf("chain of %d certificates sent, want the leaf only (the root is the peer's)", len(cert.Certificate))
		}
	}
	if _, err := ServingCertificate(auth, "cluster.local", time.Hour, nil, "Not A Name")(); err == nil {
		t.Error("invalid DNS name accepted")
	}
}

func peerWithTLS(st tls.ConnectionState) context.Context {
	return peer.NewContext(context.Background(), &peer.Peer{Addr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}, AuthInfo: credentials.TLSInfo{State: st}})
}
