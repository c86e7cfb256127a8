// Package ca is the control plane's certificate authority: it serves
// istio.v1.auth.IstioCertificateService/CreateCertificate, wire-compatible
// with Istio, and enforces who may get which identity.
//
// Callers authenticate with a client certificate from this CA:
//   - a workload certificate lets its holder renew its own identity, and
//     nothing else;
//   - a node-proxy credential (a certificate carrying the node-proxy
//     extension, which the CA puts in no other certificate) lets the node's
//     ztunnel request, through the ImpersonatedIdentity metadata key, the
//     identity of any pod that runs on that node, and nothing else.
//
// Every refusal is a gRPC status that says why.
package ca

import (
	"context"
	"crypto/tls"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"log/slog"
	"strings"
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
	Logger      *slog.Logger
	Now         func() time.Time
}

// Server is the CA service.
type Server struct {
	securityapi.UnimplementedIstioCertificateServiceServer
	auth *identity.Authority
	opts Options
}

// NewServer returns a CA service signing with auth.
func NewServer(auth *identity.Authority, o Options) (*Server, error) {
	if o.TrustDomain == "" {
		return nil, errors.New("ca: trust domain required")
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
	return &Server{auth: auth, opts: o}, nil
}

// Register adds the service to a gRPC server.
func (s *Server) Register(g *grpc.Server) { securityapi.RegisterIstioCertificateServiceServer(g, s) }

// Bundle returns the trust bundle of this CA.
func (s *Server) Bundle() *identity.Bundle {
	b, _ := identity.NewBundle(s.auth.Root())
	return b
}

// caller is an authenticated client.
type caller struct {
	id   identity.SPIFFE
	node string // set for node-proxy credentials
}

func (s *Server) authenticate(ctx context.Context) (*caller, error) {
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
	id, err := s.Bundle().Verify(certs, s.opts.Now())
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
	grant, err := s.authorize(c, req)
	if err != nil {
		s.opts.Logger.Warn("certificate refused", "caller", c.id.String(), "node", c.node, "reason", err)
		return nil, err
	}
	csr, err := identity.ParseCSR([]byte(req.GetCsr()))
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "bad CSR: %v", err)
	}
	if len(csr.DNSNames)+len(csr.IPAddresses)+len(csr.EmailAddresses) > 0 || len(csr.URIs) > 1 ||
		(len(csr.URIs) == 1 && csr.URIs[0].String() != grant.String()) {
		return nil, status.Errorf(codes.InvalidArgument, "CSR asks for SANs other than %s", grant)
	}
	ttl := s.opts.DefaultTTL
	if v := req.GetValidityDuration(); v < 0 {
		return nil, status.Errorf(codes.InvalidArgument, "validity_duration %d is negative", v)
	} else if v > 0 {
		ttl = min(time.Duration(v)*time.Second, s.opts.MaxTTL)
	}
	chain, err := s.auth.Issue(csr.PublicKey, grant, ttl, s.opts.Now(), nil)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "signing: %v", err)
	}
	resp := &securityapi.IstioCertificateResponse{}
	for _, cert := range chain {
		resp.CertChain = append(resp.CertChain, string(identity.EncodeCerts(cert)))
	}
	s.opts.Logger.Info("certificate issued", "identity", grant.String(), "caller", c.id.String(), "node", c.node, "ttl", ttl, "notAfter", chain[0].NotAfter)
	return resp, nil
}

// authorize decides which identity the caller gets.
func (s *Server) authorize(c *caller, req *securityapi.IstioCertificateRequest) (identity.SPIFFE, error) {
	imp := ""
	if f := req.GetMetadata().GetFields()[ImpersonatedIdentityKey]; f != nil {
		imp = f.GetStringValue()
		if imp == "" {
			return identity.SPIFFE{}, status.Errorf(codes.InvalidArgument, "metadata %s must be a non-empty string", ImpersonatedIdentityKey)
		}
	}
	if imp == "" {
		return c.id, nil // renew one's own identity
	}
	want, err := identity.ParseSPIFFE(imp)
	if err != nil {
		return identity.SPIFFE{}, status.Errorf(codes.InvalidArgument, "%s: %v", ImpersonatedIdentityKey, err)
	}
	if want == c.id {
		return want, nil
	}
	if c.node == "" {
		return identity.SPIFFE{}, status.Errorf(codes.PermissionDenied, "%s may not impersonate %s: impersonation needs a node-proxy credential", c.id, want)
	}
	if want.TrustDomain != s.opts.TrustDomain {
		return identity.SPIFFE{}, status.Errorf(codes.PermissionDenied, "node %s may not impersonate %s: trust domain is not %q", c.node, want, s.opts.TrustDomain)
	}
	if !s.opts.Pods.HasPod(c.node, want.Namespace, want.ServiceAccount) {
		return identity.SPIFFE{}, status.Errorf(codes.PermissionDenied, "node %s may not impersonate %s: no running pod with service account %s/%s on that node", c.node, want, want.Namespace, want.ServiceAccount)
	}
	return want, nil
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

// ServerIdentity is the identity of the control plane's own serving
// certificate, as istiod's.
func ServerIdentity(trustDomain string) identity.SPIFFE {
	return identity.SPIFFE{TrustDomain: trustDomain, Namespace: "istio-system", ServiceAccount: "istiod"}
}

// ServerTLSConfig is the TLS configuration of the CA endpoint: it serves
// cert and asks for (but leaves to CreateCertificate the verification of) a
// client certificate, so that a refusal is a gRPC status that says why.
func ServerTLSConfig(cert *tls.Certificate) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{*cert},
		ClientAuth:   tls.RequestClientCert,
		NextProtos:   []string{"h2"},
	}
}
