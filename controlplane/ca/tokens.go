package ca

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/ambit-mesh/ambit/identity"
)

// Request headers of token authentication, as istiod reads them.
const (
	AuthorizationHeader = "authorization"
	ClusterIDHeader     = "clusterid"
	bearerPrefix        = "bearer "
)

// TokenCaller is what a reviewed bearer token says about its holder.
type TokenCaller struct {
	Namespace, ServiceAccount string
	// PodName and PodUID name the pod the token is bound to (projected
	// tokens); empty for tokens bound to no pod.
	PodName, PodUID string
	// NodeName is the node of that pod when the API server put it in the
	// token (Kubernetes 1.32+); it may be empty even for a pod-bound token.
	NodeName string
	// ClusterID is the cluster the caller says it is in (clusterid header).
	ClusterID string
	// Expiry is when the token expires (zero if unknown).
	Expiry time.Time
}

// TokenAuthenticator authenticates service-account tokens
// (kubeauth.Authenticator). Errors are gRPC statuses that say why.
type TokenAuthenticator interface {
	// AuthenticateToken reviews token; clusterID is the caller's clusterid
	// header ("" if it sent none).
	AuthenticateToken(ctx context.Context, token, clusterID string) (*TokenCaller, error)
	// CallerNode returns the node of the pod c's token is bound to, after
	// checking that the pod still exists (same UID, same service account)
	// and that c's cluster is this one. The CA asks it only before letting
	// a trusted node account impersonate.
	CallerNode(ctx context.Context, c *TokenCaller) (string, error)
}

// DefaultTrustedNodeAccounts is istiod's default CA_TRUSTED_NODE_ACCOUNTS
// (Helm): the ztunnel service account.
func DefaultTrustedNodeAccounts() []string { return []string{"istio-system/ztunnel"} }

// ParseNodeAccounts parses a comma-separated list of "namespace/name"
// service accounts (the form of CA_TRUSTED_NODE_ACCOUNTS). Blank entries
// are skipped; a malformed one is an error (istiod only warns).
func ParseNodeAccounts(s string) ([]string, error) {
	out := []string{}
	for _, a := range strings.Split(s, ",") {
		a = strings.TrimSpace(a)
		if a == "" {
			continue
		}
		if err := validateNodeAccount(a); err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	return out, nil
}

func validateNodeAccount(a string) error {
	ns, sa, ok := strings.Cut(a, "/")
	if !ok {
		return fmt.Errorf("%q: want namespace/service-account", a)
	}
	if msgs := validation.IsDNS1123Label(ns); len(msgs) > 0 {
		return fmt.Errorf("%q: invalid namespace: %s", a, strings.Join(msgs, "; "))
	}
	if msgs := validation.IsDNS1123Subdomain(sa); len(msgs) > 0 {
		return fmt.Errorf("%q: invalid service account: %s", a, strings.Join(msgs, "; "))
	}
	return nil
}

func (s *Server) trustedList() string {
	if len(s.trusted) == 0 {
		return "none"
	}
	l := make([]string, 0, len(s.trusted))
	for a := range s.trusted {
		l = append(l, a)
	}
	sort.Strings(l)
	return strings.Join(l, ", ")
}

// bearerToken returns the caller's bearer token and clusterid header (both
// empty if absent). An authorization header that is not a bearer token is
// an error, rather than silently ignored.
func bearerToken(ctx context.Context) (token, clusterID string, err error) {
	md, ok := metadata.FromIncomingContext(ctx)
	if !ok {
		return "", "", nil
	}
	if v := md.Get(ClusterIDHeader); len(v) > 0 {
		clusterID = v[0]
	}
	vals := md.Get(AuthorizationHeader)
	if len(vals) == 0 {
		return "", clusterID, nil
	}
	for _, v := range vals {
		if len(v) > len(bearerPrefix) && strings.EqualFold(v[:len(bearerPrefix)], bearerPrefix) {
			if t := strings.TrimSpace(v[len(bearerPrefix):]); t != "" {
				return t, clusterID, nil
			}
		}
	}
	return "", clusterID, status.Error(codes.Unauthenticated, `authorization header is not "Bearer <token>"`)
}

// hasClientCert reports whether the caller presented a TLS client
// certificate.
func hasClientCert(ctx context.Context) bool {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return false
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	return ok && len(ti.State.PeerCertificates) > 0
}

// authenticateToken authenticates a bearer token with the TokenAuthenticator.
func (s *Server) authenticateToken(ctx context.Context, token, clusterID string) (*caller, error) {
	// Tokens travel only over TLS (the gRPC server's credentials): refuse
	// them otherwise, whoever assembled the server.
	if p, ok := peer.FromContext(ctx); !ok {
		return nil, status.Error(codes.Unauthenticated, "no peer information")
	} else if _, ok := p.AuthInfo.(credentials.TLSInfo); !ok {
		return nil, status.Error(codes.Unauthenticated, "the CA accepts tokens only over TLS")
	}
	tc, err := s.opts.Tokens.AuthenticateToken(ctx, token, clusterID)
	if err != nil {
		if _, ok := status.FromError(err); !ok {
			err = status.Errorf(codes.Unauthenticated, "token: %v", err)
		}
		return nil, err
	}
	if tc == nil {
		return nil, status.Error(codes.Unauthenticated, "token: not authenticated")
	}
	id := identity.SPIFFE{TrustDomain: s.opts.TrustDomain, Namespace: tc.Namespace, ServiceAccount: tc.ServiceAccount}
	if err := id.Validate(); err != nil {
		return nil, status.Errorf(codes.Unauthenticated, "token: service account %s/%s: %v", tc.Namespace, tc.ServiceAccount, err)
	}
	return &caller{id: id, token: tc}, nil
}
