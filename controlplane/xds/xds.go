// Package xds serves the ambient model to ztunnels over delta ADS, with
// upstream's type URLs (istio.workload.Address, istio.security.Authorization),
// using go-control-plane's delta server and linear caches: a change in the
// model reaches every connected ztunnel as an incremental delta.
package xds

import (
	"context"

	"fmt"
	"log/slog"
	"sync"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachetypes "github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"
)

// Type URLs of the WDS resources.
const (
	AddressType       = "type.googleapis.com/istio.workload.Address"
	AuthorizationType = "type.googleapis.com/istio.security.Authorization"
)

// Server is the WDS server.
type Server struct {
	logger  *slog.Logger
	address *cache.LinearCache
	authz   *cache.LinearCache
	ads     server.Server

	mu      sync.Mutex
	current map[string]*workloadapi.Address
	authzs  map[string]*security.Authorization
}

// New returns a server with no resources.
func New(ctx context.Context, logger *slog.Logger) *Server {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{logger: logger, current: map[string]*workloadapi.Address{}, authzs: map[string]*security.Authorization{},
		address: cache.NewLinearCache(AddressType), authz: cache.NewLinearCache(AuthorizationType)}
	mux := &cache.MuxCache{
		Classify:      func(r *cache.Request) string { return r.GetTypeUrl() },
		ClassifyDelta: func(r *cache.DeltaRequest) string { return r.GetTypeUrl() },
		Caches:        map[string]cache.Cache{AddressType: s.address, AuthorizationType: s.authz},
	}
	s.ads = server.NewServer(ctx, mux, server.CallbackFuncs{
		DeltaStreamOpenFunc: func(ctx context.Context, id int64, typ string) error {
			logger.Info("xDS stream opened", "stream", id)
			return nil
		},
		DeltaStreamClosedFunc: func(id int64, node *corev3.Node) {
			logger.Info("xDS stream closed", "stream", id, "node", node.GetId())
		},
		StreamDeltaRequestFunc: func(id int64, r *discovery.DeltaDiscoveryRequest) error {
			if r.GetErrorDetail() != nil {
				logger.Warn("ztunnel rejected an update", "stream", id, "type", r.GetTypeUrl(), "error", r.GetErrorDetail().GetMessage())
			}
			return nil
		},
	})
	return s
}

// Register adds the ADS service to a gRPC server.
func (s *Server) Register(g *grpc.Server) {
	discovery.RegisterAggregatedDiscoveryServiceServer(g, s.ads)
}

// Update replaces the served set of addresses; only what changed is sent.
func (s *Server) Update(set map[string]*workloadapi.Address) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	changed := map[string]cachetypes.Resource{}
	var removed []string
	for name, a := range set {
		if old, ok := s.current[name]; !ok || !proto.Equal(old, a) {
			changed[name] = a
		}
	}
	for name := range s.current {
		if _, ok := set[name]; !ok {
			removed = append(removed, name)
		}
	}
	if len(changed) == 0 && len(removed) == 0 {
		return nil
	}
	if err := s.address.UpdateResources(changed, removed); err != nil {
		return fmt.Errorf("xds: updating addresses: %w", err)
	}
	s.current = set
	s.logger.Info("WDS update", "changed", len(changed), "removed", len(removed), "total", len(set))
	return nil
}

// UpdateAuthorizations replaces the served policies; only changes are sent.
func (s *Server) UpdateAuthorizations(set map[string]*security.Authorization) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	changed := map[string]cachetypes.Resource{}
	var removed []string
	for name, a := range set {
		if old, ok := s.authzs[name]; !ok || !proto.Equal(old, a) {
			changed[name] = a
		}
	}
	for name := range s.authzs {
		if _, ok := set[name]; !ok {
			removed = append(removed, name)
		}
	}
	if len(changed) == 0 && len(removed) == 0 {
		return nil
	}
	if err := s.authz.UpdateResources(changed, removed); err != nil {
		return fmt.Errorf("xds: updating authorizations: %w", err)
	}
	s.authzs = set
	s.logger.Info("authorization update", "changed", len(changed), "removed", len(removed), "total", len(set))
	return nil
}
