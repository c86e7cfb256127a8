package kubeauth_test

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
	securityapi "istio.io/api/security/v1alpha1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambit-mesh/ambit/controlplane/ca"
	"github.com/ambit-mesh/ambit/controlplane/kubeauth"
	"github.com/ambit-mesh/ambit/identity"
	"github.com/ambit-mesh/ambit/internal/kubetest"
)

// cluster is a real API server with two nodes' worth of pods (no kubelet:
// the pods are only objects with spec.nodeName set):
//
//	node-a: istio-system/ztunnel-a (sa ztunnel), demo/echo-1 (sa echo)
//	node-b: istio-system/ztunnel-b (sa ztunnel), demo/db-1 (sa db)
type cluster struct {
	*kubetest.Server
	ctx context.Context
}

func startCluster(t *testing.T) *cluster {
	t.Helper()
	s := kubetest.Start(t, kubetest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	c := &cluster{Server: s, ctx: ctx}
	for _, p := range []struct{ ns, name, sa, node string }{
		{"istio-system", "ztunnel-a", "ztunnel", "node-a"},
		{"istio-system", "ztunnel-b", "ztunnel", "node-b"},
		{"demo", "echo-1", "echo", "node-a"},
		{"demo", "db-1", "db", "node-b"},
	} {
		c.pod(t, p.ns, p.name, p.sa, p.node)
	}
	return c
}

func (c *cluster) pod(t *testing.T, ns, name, sa, node string) *corev1.Pod {
	t.Helper()
	if err := c.EnsureServiceAccount(c.ctx, ns, sa); err != nil {
		t.Fatal(err)
	}
	p, err := c.Client.CoreV1().Pods(ns).Create(c.ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.PodSpec{ServiceAccountName: sa, NodeName: node,
			Containers: []corev1.Container{{Name: "main", Image: "example.invalid/none"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func (c *cluster) token(t *testing.T, ns, sa, pod string, audiences ...string) string {
	t.Helper()
	if len(audiences) == 0 {
		audiences = []string{"istio-ca"}
	}
	tok, err := c.Token(c.ctx, ns, sa, audiences, time.Hour, pod)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// expired re-signs a real token's claims with the API server's own
// service-account signing key, moved two hours into the past: a token the
// API server itself issued could look exactly like this once expired.
// (TokenRequest will not issue tokens shorter than ten minutes.)
func (c *cluster) expired(t *testing.T, tok string) string {
	t.Helper()
	keyPEM, err := os.ReadFile(filepath.Join(c.Dir, "sa.key"))
	if err != nil {
		t.Fatalf("API server signing key: %v", err)
	}
	block, _ := pem.Decode(keyPEM)
	key, err := x509.ParsePKCS1PrivateKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(tok, ".")
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var claims map[string]any
	if err := json.Unmarshal(payload, &claims); err != nil {
		t.Fatal(err)
	}
	past := time.Now().Add(-2 * time.Hour).Unix()
	claims["iat"], claims["nbf"], claims["exp"] = past, past, past+600
	payload, _ = json.Marshal(claims)
	signed := parts[0] + "." + base64.RawURLEncoding.EncodeToString(payload)
	sum := sha256.Sum256([]byte(signed))
	sig, err := rsa.SignPKCS1v15(rand.Reader, key, crypto.SHA256, sum[:])
	if err != nil {
		t.Fatal(err)
	}
	return signed + "." + base64.RawURLEncoding.EncodeToString(sig)
}

// review asks the API server itself about a token.
func (c *cluster) review(t *testing.T, tok string) authenticationv1.TokenReviewStatus {
	t.Helper()
	tr, err := c.Client.AuthenticationV1().TokenReviews().Create(c.ctx, &authenticationv1.TokenReview{
		Spec: authenticationv1.TokenReviewSpec{Token: tok, Audiences: []string{"istio-ca"}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return tr.Status
}

// testCA is the CA, authenticating tokens with kubeauth against the
// cluster, served over TLS on loopback.
type testCA struct {
	addr  string
	roots *x509.CertPool
}

func startCA(t *testing.T, c *cluster, o kubeauth.Options) *testCA {
	t.Helper()
	pods, err := kubeauth.NewPods(c.Client)
	if err != nil {
		t.Fatal(err)
	}
	if err := pods.Start(c.ctx); err != nil {
		t.Fatal(err)
	}
	o.Client, o.Pods = c.Client, pods
	authn, err := kubeauth.New(o)
	if err != nil {
		t.Fatal(err)
	}
	auth, err := identity.NewRootAuthority("cluster.local", 24*time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ca.NewServer(auth, ca.Options{TrustDomain: "cluster.local", Pods: pods, Tokens: authn})
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(ca.ServingTLSConfig(ca.ServingCertificate(auth, "cluster.local", time.Hour, nil)))))
	srv.Register(g)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = g.Serve(l) }()
	t.Cleanup(g.Stop)
	roots := x509.NewCertPool()
	roots.AddCert(auth.Root())
	return &testCA{addr: l.Addr().String(), roots: roots}
}

// create asks for a certificate for want with token (and the clusterid
// header unless noCluster), impersonating want unless own.
func (c *testCA) create(t *testing.T, token string, want identity.SPIFFE, own, noCluster bool) error {
	t.Helper()
	// Verify the CA as Istio's ztunnel verifies istiod: by DNS name.
	conn, err := grpc.NewClient(c.addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		RootCAs: c.roots, ServerName: "istiod.istio-system.svc", MinVersion: tls.VersionTLS12})))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	key, _ := identity.NewKey()
	csr, err := identity.NewCSR(key, want)
	if err != nil {
		t.Fatal(err)
	}
	req := &securityapi.IstioCertificateRequest{Csr: string(csr)}
	if !own {
		req.Metadata, _ = structpb.NewStruct(map[string]any{ca.ImpersonatedIdentityKey: want.String()})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	if !noCluster {
		ctx = metadata.AppendToOutgoingContext(ctx, "clusterid", "Kubernetes")
	}
	resp, err := securityapi.NewIstioCertificateServiceClient(conn).CreateCertificate(ctx, req)
	if err != nil {
		return err
	}
	leaf, err := identity.ParseCerts([]byte(resp.GetCertChain()[0]))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := identity.FromCertificate(leaf[0]); err != nil || got != want {
		t.Fatalf("issued %v (%v), want %v", got, err, want)
	}
	return nil
}

func spiffe(ns, sa string) identity.SPIFFE {
	return identity.SPIFFE{TrustDomain: "cluster.local", Namespace: ns, ServiceAccount: sa}
}

// TestCAWithTokenReview runs the CA's token authorization against a real
// API server: the good cases are accepted, and a wrong node, a wrong
// service account, a deleted pod, an expired token and a wrong audience are
// each refused with a reason.
func TestCAWithTokenReview(t *testing.T) {
	c := startCluster(t)
	cas := startCA(t, c, kubeauth.Options{})
	ztA := c.token(t, "istio-system", "ztunnel", "ztunnel-a")
	echo := c.token(t, "demo", "echo", "echo-1")

	tests := []struct {
		name      string
		token     string
		want      identity.SPIFFE
		own       bool
		noCluster bool
		wantCode  codes.Code
		wantMsg   string
	}{
		{"workload gets its own identity", echo, spiffe("demo", "echo"), true, false, codes.OK, ""},
		{"ztunnel impersonates a pod on its node", ztA, spiffe("demo", "echo"), false, false, codes.OK, ""},
		{"ztunnel renews its own identity", ztA, spiffe("istio-system", "ztunnel"), true, false, codes.OK, ""},
		{"wrong node: identity only on node-b", ztA, spiffe("demo", "db"), false, false, codes.PermissionDenied, "node node-a may not impersonate spiffe://cluster.local/ns/demo/sa/db: no running pod"},
		{"wrong service account: workload impersonates", echo, spiffe("demo", "db"), false, false, codes.PermissionDenied, "service account demo/echo is not a trusted node account"},
		{"wrong service account: even for a pod on its node", echo, spiffe("istio-system", "ztunnel"), false, false, codes.PermissionDenied, "not a trusted node account"},
		{"impersonation without the clusterid header", ztA, spiffe("demo", "echo"), false, true, codes.PermissionDenied, "clusterid header"},
		{"wrong audience", c.token(t, "istio-system", "ztunnel", "ztunnel-a", "other-audience"), spiffe("demo", "echo"), false, false, codes.Unauthenticated, "token refused by the API server"},
		{"expired token", c.expired(t, ztA), spiffe("demo", "echo"), false, false, codes.Unauthenticated, "token expired at"},
		{"garbage token", "not-a-token", spiffe("demo", "echo"), true, false, codes.Unauthenticated, "token refused by the API server"},
		{"token for another identity than the CSR", echo, spiffe("demo", "db"), true, false, codes.InvalidArgument, "does not match"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := cas.create(t, tc.token, tc.want, tc.own, tc.noCluster)
			if status.Code(err) != tc.wantCode || (tc.wantMsg != "" && !strings.Contains(status.Convert(err).Message(), tc.wantMsg)) {
				t.Fatalf("err %v, want %v with %q", err, tc.wantCode, tc.wantMsg)
			}
		})
	}

	t.Run("the API server itself refuses the expired token", func(t *testing.T) {
		st := c.review(t, c.expired(t, ztA))
		if st.Authenticated || !strings.Contains(st.Error, "expired") {
			t.Fatalf("review of the expired token: %+v", st)
		}
		if st := c.review(t, ztA); !st.Authenticated {
			t.Fatalf("review of the original token: %+v", st)
		}
	})

	t.Run("token names the pod and its node", func(t *testing.T) {
		a, err := kubeauth.New(kubeauth.Options{Client: c.Client})
		if err != nil {
			t.Fatal(err)
		}
		tc, err := a.AuthenticateToken(c.ctx, ztA, "Kubernetes")
		if err != nil {
			t.Fatal(err)
		}
		if tc.Namespace != "istio-system" || tc.ServiceAccount != "ztunnel" || tc.PodName != "ztunnel-a" || tc.PodUID == "" || tc.NodeName != "node-a" {
			t.Errorf("caller %+v", *tc)
		}
		if d := time.Until(tc.Expiry); d < 50*time.Minute || d > 61*time.Minute {
			t.Errorf("expiry in %s, want about an hour", d)
		}
		// Expiry is checked by the CA's own clock too, cache or not.
		later, err := kubeauth.New(kubeauth.Options{Client: c.Client, Now: func() time.Time { return time.Now().Add(2 * time.Hour) }})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := later.AuthenticateToken(c.ctx, ztA, "Kubernetes"); status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "expired") {
			t.Errorf("token past its expiry: %v", err)
		}
	})

	t.Run("deleted pod", func(t *testing.T) {
		c.pod(t, "istio-system", "ztunnel-doomed", "ztunnel", "node-a")
		doomed := c.token(t, "istio-system", "ztunnel", "ztunnel-doomed")
		if err := cas.create(t, doomed, spiffe("demo", "echo"), false, false); err != nil {
			t.Fatalf("before deletion: %v", err)
		}
		zero := int64(0)
		if err := c.Client.CoreV1().Pods("istio-system").Delete(c.ctx, "ztunnel-doomed", metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
			t.Fatal(err)
		}
		// The CA has the review cached (it was good a moment ago): the
		// pod check refuses it.
		waitRefused(t, func() error { return cas.create(t, doomed, spiffe("demo", "echo"), false, false) }, codes.PermissionDenied, "no longer exists")
		// A CA without that cache: the API server refuses the token.
		fresh := startCA(t, c, kubeauth.Options{CacheTTL: -1})
		waitRefused(t, func() error { return fresh.create(t, doomed, spiffe("demo", "echo"), false, false) }, codes.Unauthenticated, "token refused by the API server")
		// Re-created under the same name: another pod, refused too.
		c.pod(t, "istio-system", "ztunnel-doomed", "ztunnel", "node-a")
		waitRefused(t, func() error { return cas.create(t, doomed, spiffe("demo", "echo"), false, false) }, codes.PermissionDenied, "was replaced")
	})
}

// waitRefused retries call until it fails with code and msg (the API
// server's and our watches take a moment to see a deletion), for 20 s.
func waitRefused(t *testing.T, call func() error, code codes.Code, msg string) {
	t.Helper()
	start := time.Now()
	deadline := start.Add(20 * time.Second)
	for {
		err := call()
		if status.Code(err) == code && strings.Contains(status.Convert(err).Message(), msg) {
			t.Logf("refused after %s: %v", time.Since(start).Round(time.Millisecond), err)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("last result %v, want %v with %q", err, code, msg)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
