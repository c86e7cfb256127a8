// Package ca is the control plane's certificate authority: it serves
// istio.v1.auth.IstioCertificateService/CreateCertificate, wire-compatible
// with Istio, and enforces who may get which identity.
//
// Callers authenticate with a TLS client certificate that chains to this
// CA's roots and carries an identity of its trust domain:
//   - a workload certificate lets its holder renew its own identity, and
//     nothing else;
//   - a node-proxy credential lets the node's ztunnel request, through the
//     ImpersonatedIdentity metadata key, the identity of any service account
//     that has a non-terminated pod on that node, and nothing else.
//
// or, when the CA has a TokenAuthenticator (Kubernetes mode, as istiod),
// with a service-account token in "authorization: Bearer <token>"
// (audience istio-ca; a token takes precedence over a client certificate):
//   - the token's service account gets its own identity;
//   - a trusted node account (Options.TrustedNodeAccounts, istiod's
//     CA_TRUSTED_NODE_ACCOUNTS, default istio-system/ztunnel) whose token
//     is bound to a pod that still exists may impersonate the identity of
//     any service account with a non-terminated pod on that pod's node.
//
// A node-proxy credential (IssueNodeCredential) is a certificate for
// spiffe://<td>/ns/istio-system/sa/ztunnel that also carries a private
// extension whose value is the node name. Only the CA's key can produce a
// certificate with that extension, and CreateCertificate never puts it in
// what it issues, so the node binding cannot be forged or widened: a pod
// running as istio-system/ztunnel gets a plain workload certificate, and a
// node credential never yields another node credential. The credential is
// minted out of band (ambit local at node start, or `ambit controlplane
// node-credential`) and handed only to that node's ztunnel.
//
// The CSR must name exactly the identity granted (one URI SAN, nothing
// else); the CA copies only the public key from it. Every refusal is a
// gRPC status that says why: Unauthenticated (no or untrusted credential),
// PermissionDenied (authenticated, but not allowed that identity),
// InvalidArgument (malformed request, CSR or SAN mismatch).
package ca

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net/url"
	"strings"
	"sync"
	"time"

	securityapi "istio.io/api/security/v1alpha1"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/ambit-mesh/ambit/identity"
)

// ImpersonatedIdentityKey is the request metadata key a node proxy sets to
// ask for a workload's identity (the same key Istio's ztunnel uses).
const ImpersonatedIdentityKey = "ImpersonatedIdentity"

// oidNodeProxy marks a node-proxy credential; its value is the node name
// (an ASN.1 UTF8String). Private arc chosen for Ambit.
var oidNodeProxy = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 59302, 1, 1}

// NodeProxyIdentity is the identity of node-proxy credentials, as in Istio's
// CA_TRUSTED_NODE_ACCOUNTS default (istio-system/ztunnel).
func NodeProxyIdentity(trustDomain string) identity.SPIFFE {
	return identity.SPIFFE{TrustDomain: trustDomain, Namespace: "istio-system", ServiceAccount: "ztunnel"}
}

// PodIndex answers whether a pod with a service account runs on a node.
type PodIndex interface {
	HasPod(node, namespace, serviceAccount string) bool
}

// Options configures a Server.
type Options struct {
	TrustDomain string
	DefaultTTL  time.Duration // 0: 24 h
	MaxTTL      time.Duration // 0: 90 days; longer requests are capped
	Pods        PodIndex
	// ExtraRoots are trusted besides the signing root, during a root
	// rotation: callers holding certificates from them are accepted, and
	// they are published with the signing root at the end of every chain.
	ExtraRoots []*x509.Certificate
	// Tokens, if set, authenticates callers presenting a bearer token
	// (kubeauth.Authenticator: TokenReview against the API server). Nil:
	// only client certificates are accepted.
	Tokens TokenAuthenticator
	// TrustedNodeAccounts are the service accounts ("namespace/name") whose
	// tokens may impersonate the pods of their node. Nil means
	// DefaultTrustedNodeAccounts; an empty, non-nil list trusts none.
	TrustedNodeAccounts []string
	Logger              *slog.Logger
	Now                 func() time.Time
}

// Server is the CA service.
type Server struct {
	securityapi.UnimplementedIstioCertificateServiceServer
	auth     *identity.Authority
	opts     Options
	bundle   *identity.Bundle // signing root first, then ExtraRoots
	rootsPEM string           // bundle in PEM: the last element of every response
	trusted  map[string]bool  // TrustedNodeAccounts, "ns/sa"
}

// NewServer returns a CA service signing with auth.
func NewServer(auth *identity.Authority, o Options) (*Server, error) {
	if err := identity.ValidateTrustDomain(o.TrustDomain); err != nil {
		return nil, fmt.Errorf("ca: %w", err)
	}
	if o.Pods == nil {
		return nil, errors.New("ca: pod index required (impersonation checks pods per node)")
	}
	if o.DefaultTTL <= 0 {
		o.DefaultTTL = 24 * time.Hour
	}
	if o.MaxTTL <= 0 {
		o.MaxTTL = 90 * 24 * time.Hour
	}
	if o.DefaultTTL > o.MaxTTL {
		return nil, fmt.Errorf("ca: default TTL %s exceeds max TTL %s", o.DefaultTTL, o.MaxTTL)
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if err := auth.Check(o.Now()); err != nil {
		return nil, fmt.Errorf("ca: %w", err)
	}
	bundle, err := identity.NewBundle(append([]*x509.Certificate{auth.Root()}, o.ExtraRoots...)...)
	if err != nil {
		return nil, fmt.Errorf("ca: roots: %w", err)
	}
	if o.TrustedNodeAccounts == nil {
		o.TrustedNodeAccounts = DefaultTrustedNodeAccounts()
	}
	trusted := map[string]bool{}
	for _, a := range o.TrustedNodeAccounts {
		if err := validateNodeAccount(a); err != nil {
			return nil, fmt.Errorf("ca: trusted node account: %w", err)
		}
		trusted[a] = true
	}
	return &Server{auth: auth, opts: o, bundle: bundle, rootsPEM: string(bundle.PEM()), trusted: trusted}, nil
}

// Register adds the service to a gRPC server.
func (s *Server) Register(g *grpc.Server) { securityapi.RegisterIstioCertificateServiceServer(g, s) }

// Bundle returns the trust bundle of this CA: its root and any extra roots.
func (s *Server) Bundle() *identity.Bundle { return s.bundle }

// caller is an authenticated client.
type caller struct {
	id    identity.SPIFFE
	node  string       // set for node-proxy credentials
	token *TokenCaller // set for callers authenticated by a bearer token
}

// describe names the caller in logs: its identity, and how it proved it.
func (c *caller) describe() string {
	switch {
	case c.token != nil && c.token.PodName != "":
		return c.id.String() + " (token of pod " + c.token.Namespace + "/" + c.token.PodName + ")"
	case c.token != nil:
		return c.id.String() + " (token)"
	case c.node != "":
		return c.id.String() + " (node credential of " + c.node + ")"
	}
	return c.id.String()
}

func (s *Server) authenticate(ctx context.Context) (*caller, error) {
	token, clusterID, err := bearerToken(ctx)
	if err != nil {
		return nil, err
	}
	if token != "" && s.opts.Tokens != nil {
		return s.authenticateToken(ctx, token, clusterID)
	}
	c, err := s.authenticateCert(ctx)
	if err != nil && token != "" && s.opts.Tokens == nil && status.Code(err) == codes.Unauthenticated && !hasClientCert(ctx) {
		return nil, status.Error(codes.Unauthenticated, "a bearer token was presented, but this control plane does not review tokens (it runs without a Kubernetes API): present a node-proxy credential or workload certificate issued by this CA")
	}
	return c, err
}

// authenticateCert authenticates the caller by its TLS client certificate.
func (s *Server) authenticateCert(ctx context.Context) (*caller, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil, status.Error(codes.Unauthenticated, "no peer information")
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return nil, status.Error(codes.Unauthenticated, "the CA accepts only TLS connections")
	}
	certs := ti.State.PeerCertificates
	if len(certs) == 0 {
		return nil, status.Error(codes.Unauthenticated, "no client certificate: present a workload certificate or a node-proxy credential issued by this CA")
	}
	id, err := s.bundle.VerifyFor(certs, s.opts.Now(), x509.ExtKeyUsageClientAuth)
	if err != nil {
		return nil, status.Errorf(codes.Unauthenticated, "client certificate not trusted: %v", err)
	}
	if id.TrustDomain != s.opts.TrustDomain {
		return nil, status.Errorf(codes.Unauthenticated, "client identity %s is not in trust domain %q", id, s.opts.TrustDomain)
	}
	c := &caller{id: id}
	for _, ext := range certs[0].Extensions {
		if ext.Id.Equal(oidNodeProxy) {
			var node string
			if _, err := asn1.UnmarshalWithParams(ext.Value, &node, "utf8"); err != nil || node == "" {
				return nil, status.Error(codes.Unauthenticated, "malformed node-proxy credential")
			}
			if id != NodeProxyIdentity(s.opts.TrustDomain) {
				return nil, status.Errorf(codes.Unauthenticated, "node-proxy credential with unexpected identity %s", id)
			}
			c.node = node
		}
	}
	return c, nil
}

// CreateCertificate signs the CSR for the identity the caller may hold.
func (s *Server) CreateCertificate(ctx context.Context, req *securityapi.IstioCertificateRequest) (*securityapi.IstioCertificateResponse, error) {
	c, err := s.authenticate(ctx)
	if err != nil {
		s.opts.Logger.Warn("certificate refused", "reason", err)
		return nil, err
	}
	grant, node, err := s.authorize(ctx, c, req)
	if err != nil {
		s.opts.Logger.Warn("certificate refused", "caller", c.describe(), "node", node, "reason", err)
		return nil, err
	}
	csr, err := identity.ParseCSR([]byte(req.GetCsr()))
	if err != nil {
		s.opts.Logger.Warn("certificate refused", "caller", c.describe(), "node", node, "reason", err)
		return nil, status.Errorf(codes.InvalidArgument, "bad CSR: %v", err)
	}
	if err := checkCSRSANs(csr, grant); err != nil {
		s.opts.Logger.Warn("certificate refused", "caller", c.describe(), "node", node, "reason", err)
		return nil, status.Errorf(codes.InvalidArgument, "CSR for %s: %v", grant, err)
	}
	ttl, err := s.ttl(req.GetValidityDuration())
	if err != nil {
		return nil, err
	}
	chain, err := s.auth.Issue(csr.PublicKey, grant, ttl, s.opts.Now(), nil)
	if err != nil {
		s.opts.Logger.Error("signing failed", "identity", grant.String(), "err", err)
		return nil, status.Errorf(codes.Internal, "signing: %v", err)
	}
	// Leaf and intermediates one per element, then every trusted root in
	// the last element (several during a rotation), as Istio's CA does.
	resp := &securityapi.IstioCertificateResponse{}
	for _, cert := range chain[:len(chain)-1] {
		resp.CertChain = append(resp.CertChain, string(identity.EncodeCerts(cert)))
	}
	resp.CertChain = append(resp.CertChain, s.rootsPEM)
	s.opts.Logger.Info("certificate issued", "identity", grant.String(), "caller", c.describe(), "node", node, "ttl", ttl, "notAfter", chain[0].NotAfter)
	return resp, nil
}

// checkCSRSANs requires the CSR to ask for exactly grant: one URI SAN equal
// to it and no SAN of any other kind.
func checkCSRSANs(csr *x509.CertificateRequest, grant identity.SPIFFE) error {
	if n := len(csr.DNSNames) + len(csr.IPAddresses) + len(csr.EmailAddresses); n > 0 {
		return fmt.Errorf("asks for %d DNS, IP or e-mail SANs; only the SPIFFE URI is allowed", n)
	}
	switch len(csr.URIs) {
	case 0:
		return errors.New("has no URI SAN; it must name the identity requested")
	case 1:
		if got := csr.URIs[0].String(); got != grant.String() {
			return fmt.Errorf("SAN %q does not match the identity granted", got)
		}
		return nil
	default:
		return fmt.Errorf("has %d URI SANs; exactly one is allowed", len(csr.URIs))
	}
}

// ttl returns the lifetime for a requested validity_duration (seconds):
// the default for 0, capped at the maximum.
func (s *Server) ttl(seconds int64) (time.Duration, error) {
	switch {
	case seconds < 0:
		return 0, status.Errorf(codes.InvalidArgument, "validity_duration %d is negative", seconds)
	case seconds == 0:
		return s.opts.DefaultTTL, nil
	case seconds >= int64(s.opts.MaxTTL/time.Second): // compare first: seconds*1e9 may overflow
		return s.opts.MaxTTL, nil
	default:
		return time.Duration(seconds) * time.Second, nil
	}
}

// authorize decides which identity the caller gets, and the node on whose
// behalf it acts ("" unless it impersonates).
func (s *Server) authorize(ctx context.Context, c *caller, req *securityapi.IstioCertificateRequest) (identity.SPIFFE, string, error) {
	imp := ""
	if f := req.GetMetadata().GetFields()[ImpersonatedIdentityKey]; f != nil {
		imp = f.GetStringValue()
		if imp == "" {
			return identity.SPIFFE{}, c.node, status.Errorf(codes.InvalidArgument, "metadata %s must be a non-empty string", ImpersonatedIdentityKey)
		}
	}
	if imp == "" {
		return c.id, c.node, nil // renew one's own identity
	}
	want, err := identity.ParseSPIFFE(imp)
	if err != nil {
		return identity.SPIFFE{}, c.node, status.Errorf(codes.InvalidArgument, "%s: %v", ImpersonatedIdentityKey, err)
	}
	if want == c.id {
		return want, c.node, nil
	}
	node := c.node
	switch {
	case c.token != nil:
		account := c.token.Namespace + "/" + c.token.ServiceAccount
		if !s.trusted[account] {
			return identity.SPIFFE{}, "", status.Errorf(codes.PermissionDenied, "%s may not impersonate %s: service account %s is not a trusted node account (trusted: %s)",
				c.id, want, account, s.trustedList())
		}
		n, err := s.opts.Tokens.CallerNode(ctx, c.token)
		if err != nil {
			if _, ok := status.FromError(err); !ok {
				err = status.Errorf(codes.PermissionDenied, "%s may not impersonate %s: %v", c.id, want, err)
			}
			return identity.SPIFFE{}, "", err
		}
		node = n
	case c.node == "":
		return identity.SPIFFE{}, "", status.Errorf(codes.PermissionDenied, "%s may not impersonate %s: impersonation needs a node-proxy credential", c.id, want)
	}
	if want.TrustDomain != s.opts.TrustDomain {
		return identity.SPIFFE{}, node, status.Errorf(codes.PermissionDenied, "node %s may not impersonate %s: trust domain is not %q", node, want, s.opts.TrustDomain)
	}
	if !s.opts.Pods.HasPod(node, want.Namespace, want.ServiceAccount) {
		return identity.SPIFFE{}, node, status.Errorf(codes.PermissionDenied, "node %s may not impersonate %s: no running pod with service account %s/%s on that node", node, want, want.Namespace, want.ServiceAccount)
	}
	return want, node, nil
}

// IssueNodeCredential issues the node-proxy credential of node: a
// certificate for NodeProxyIdentity carrying the node name in the
// node-proxy extension. Whoever holds it may obtain certificates for the
// pods of that node, so hand it only to that node's ztunnel.
func IssueNodeCredential(auth *identity.Authority, trustDomain, node string, ttl time.Duration, now time.Time) (*tls.Certificate, error) {
	if msgs := validation.IsDNS1123Subdomain(node); len(msgs) > 0 {
		return nil, fmt.Errorf("invalid node name %q: %s", node, strings.Join(msgs, "; "))
	}
	val, err := asn1.MarshalWithParams(node, "utf8")
	if err != nil {
		return nil, err
	}
	return auth.IssueTLS(NodeProxyIdentity(trustDomain), ttl, now,
		&identity.LeafOptions{Extensions: []pkix.Extension{{Id: oidNodeProxy, Value: val}}})
}

// ServerTLSConfig is the TLS configuration of the CA endpoint with a fixed
// serving certificate; see ServingTLSConfig.
func ServerTLSConfig(cert *tls.Certificate) *tls.Config {
	return ServingTLSConfig(identity.StaticCert(cert))
}

// ServingTLSConfig is the TLS configuration of the CA endpoint: TLS 1.3,
// ALPN h2, serving the certificate cert returns at each handshake. It asks
// for a client certificate but leaves its verification to
// CreateCertificate (against the roots in force at each request), so that
// a refusal is a gRPC status that says why rather than a failed handshake.
func ServingTLSConfig(cert identity.CertFunc) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		ClientAuth: tls.RequestClientCert,
		NextProtos: []string{"h2"},
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			c, err := cert()
			if err != nil {
				return nil, fmt.Errorf("CA serving certificate: %w", err)
			}
			if c == nil || len(c.Certificate) == 0 {
				return nil, errors.New("CA serving certificate: none available")
			}
			return c, nil
		},
	}
}

// DefaultServingDNSNames are the DNS names of the control plane's serving
// certificate: istiod's (istiod.istio-system.svc and its two legacy
// aliases). Proxies verify the control plane by one of them against the
// mesh root, as Istio's ztunnel verifies istiod.
func DefaultServingDNSNames() []string {
	return []string{"istiod.istio-system.svc", "istiod-remote.istio-system.svc", "istio-pilot.istio-system.svc"}
}

// ServingCertificate returns the control plane's serving certificate,
// issued by auth for ttl: made on first use and made again once past half
// its life, so a long-running control plane never serves an expired one.
// It carries the SPIFFE id identity.ControlPlane (which Ambit's own
// proxies once checked, and tests still may) and the DNS names dnsNames
// (none given: DefaultServingDNSNames), which proxies verify as Istio's
// ztunnel does. now may be nil (time.Now).
func ServingCertificate(auth *identity.Authority, trustDomain string, ttl time.Duration, now func() time.Time, dnsNames ...string) identity.CertFunc {
	if now == nil {
		now = time.Now
	}
	if len(dnsNames) == 0 {
		dnsNames = DefaultServingDNSNames()
	}
	var (
		mu   sync.Mutex
		cur  *tls.Certificate
		renw time.Time
	)
	return func() (*tls.Certificate, error) {
		mu.Lock()
		defer mu.Unlock()
		t := now()
		if cur != nil && t.Before(renw) {
			return cur, nil
		}
		c, err := issueServing(auth, identity.ControlPlane(trustDomain), dnsNames, ttl, t)
		if err != nil {
			if cur != nil && t.Before(cur.Leaf.NotAfter) {
				return cur, nil // keep serving the old one while it lasts
			}
			return nil, err
		}
		cur, renw = c, c.Leaf.NotBefore.Add(c.Leaf.NotAfter.Sub(c.Leaf.NotBefore)/2)
		return cur, nil
	}
}

// issueServing issues a server certificate for id that also carries
// dnsNames. (Authority.Issue never puts DNS names in a certificate, and
// CreateCertificate refuses CSRs that ask for any, so no workload can hold a
// certificate for the control plane's names.)
func issueServing(auth *identity.Authority, id identity.SPIFFE, dnsNames []string, ttl time.Duration, now time.Time) (*tls.Certificate, error) {
	for _, n := range dnsNames {
		if msgs := validation.IsDNS1123Subdomain(n); len(msgs) > 0 {
			return nil, fmt.Errorf("serving certificate: invalid DNS name %q: %s", n, strings.Join(msgs, "; "))
		}
	}
	if err := id.Validate(); err != nil {
		return nil, err
	}
	if err := auth.Check(now); err != nil {
		return nil, fmt.Errorf("serving certificate: %w", err)
	}
	if ttl <= 0 {
		return nil, errors.New("serving certificate: lifetime must be positive")
	}
	key, err := identity.NewKey()
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, err
	}
	notAfter := now.Add(ttl)
	if notAfter.After(auth.Cert.NotAfter) {
		notAfter = auth.Cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial.Add(serial, big.NewInt(1)),
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		URIs:                  []*url.URL{id.URL()},
		DNSNames:              append([]string(nil), dnsNames...),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, auth.Cert, key.Public(), auth.Key)
	if err != nil {
		return nil, fmt.Errorf("signing serving certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return identity.TLSCertificate(append([]*x509.Certificate{leaf}, auth.Chain...), key), nil
}

// NodeOf authenticates a caller that must hold a node-proxy credential and
// returns its node. Other services of the control plane (workload
// discovery) use it to admit only node proxies.
func (s *Server) NodeOf(ctx context.Context) (string, error) {
	c, err := s.authenticate(ctx)
	if err != nil {
		return "", err
	}
	if c.node == "" {
		return "", status.Errorf(codes.PermissionDenied, "%s is not a node proxy: workload discovery is for node-proxy credentials", c.id)
	}
	return c.node, nil
}

// AuthenticateStream admits a discovery (xDS) stream, as istiod does: a
// caller with a bearer token the TokenAuthenticator accepts (any service
// account; byToken is true, and the stream's node metadata is then checked
// against id), or a caller holding a node-proxy credential (local mode). A
// workload certificate is not enough.
func (s *Server) AuthenticateStream(ctx context.Context) (id identity.SPIFFE, byToken bool, err error) {
	c, err := s.authenticate(ctx)
	if err != nil {
		return identity.SPIFFE{}, false, err
	}
	if c.token != nil {
		return c.id, true, nil
	}
	if c.node == "" {
		return identity.SPIFFE{}, false, status.Errorf(codes.PermissionDenied, "%s is not a node proxy: workload discovery is for node-proxy credentials or service-account tokens", c.id)
	}
	return c.id, false, nil
}
