// Package xds serves the control plane's resources to proxies over delta
// ADS, on go-control-plane's delta server with one linear cache per
// resource type: a change reaches every connected proxy as an incremental
// delta. Publishing is one code path for every type (Publish); the ambient
// types are istio.workload.Address and istio.security.Authorization, and a
// new type (a waypoint's, say) is one more type URL given to New.
//
// The server also records, per connected proxy, its node id and the
// resource names and versions it was sent (Proxies), and counts pushes
// (Stats), for the control plane's debug and metrics endpoints.
package xds

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachetypes "github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
)

// Type URLs of the ambient (WDS) resources.
const (
	AddressType       = "type.googleapis.com/istio.workload.Address"
	AuthorizationType = "type.googleapis.com/istio.security.Authorization"
)

// Type URLs of a waypoint's L7 resources: Envoy's own schemas, one
// RouteConfiguration per service port a waypoint serves and one RBAC per
// policy target and action.
const (
	RouteType = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
	RBACType  = "type.googleapis.com/envoy.config.rbac.v3.RBAC"
	// TCPRoutePrefix starts the name of a service port's TCP destination
	// (from TCPRoutes) among the RouteConfigurations.
	TCPRoutePrefix = "tcp|"
)

// AmbientTypes are the type URLs ztunnels and waypoints watch.
func AmbientTypes() []string { return []string{AddressType, AuthorizationType, RouteType, RBACType} }

// Server is the delta ADS server.
type Server struct {
	logger *slog.Logger
	ads    server.Server
	caches map[string]*cache.LinearCache // by type URL; fixed after New

	mu      sync.Mutex // serializes Publish
	current map[string]map[string]proto.Message

	stats   statsRecorder
	proxies proxyTracker
}

// New returns a server for the given resource types, with no resources.
// The server's streams end when ctx is done.
func New(ctx context.Context, logger *slog.Logger, typeURLs ...string) *Server {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{logger: logger, caches: map[string]*cache.LinearCache{}, current: map[string]map[string]proto.Message{},
		proxies: proxyTracker{streams: map[int64]*proxy{}}, stats: statsRecorder{pushes: map[string]uint64{}}}
	caches := map[string]cache.Cache{}
	for _, t := range typeURLs {
		lc := cache.NewLinearCache(t)
		s.caches[t], caches[t], s.current[t] = lc, lc, map[string]proto.Message{}
	}
	mux := &cache.MuxCache{
		Classify:      func(r *cache.Request) string { return r.GetTypeUrl() },
		ClassifyDelta: func(r *cache.DeltaRequest) string { return r.GetTypeUrl() },
		Caches:        caches,
	}
	s.ads = server.NewServer(ctx, mux, server.CallbackFuncs{
		DeltaStreamOpenFunc: func(ctx context.Context, id int64, typ string) error {
			logger.Info("xDS stream opened", "stream", id)
			s.proxies.open(id)
			return nil
		},
		DeltaStreamClosedFunc: func(id int64, node *corev3.Node) {
			logger.Info("xDS stream closed", "stream", id, "node", node.GetId())
			s.proxies.close(id)
		},
		StreamDeltaRequestFunc: func(id int64, r *discovery.DeltaDiscoveryRequest) error {
			s.proxies.request(id, r)
			if r.GetErrorDetail() != nil {
				s.stats.nack()
				logger.Warn("proxy rejected an update", "stream", id, "type", r.GetTypeUrl(), "error", r.GetErrorDetail().GetMessage())
			}
			return nil
		},
		StreamDeltaResponseFunc: func(id int64, _ *discovery.DeltaDiscoveryRequest, r *discovery.DeltaDiscoveryResponse) {
			s.proxies.response(id, r)
		},
	})
	return s
}

// Register adds the ADS service to a gRPC server.
func (s *Server) Register(g *grpc.Server) {
	discovery.RegisterAggregatedDiscoveryServiceServer(g, s.ads)
}

// Publish replaces the served resources of one type by set (by resource
// name); only what changed (by proto.Equal) and what was removed is sent.
// The set is kept: callers must not modify it, or its messages, afterwards.
func (s *Server) Publish(typeURL string, set map[string]proto.Message) error {
	lc, ok := s.caches[typeURL]
	if !ok {
		return fmt.Errorf("xds: publishing %s: type not registered", typeURL)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	cur := s.current[typeURL]
	changed := map[string]cachetypes.Resource{}
	var removed []string
	for name, m := range set {
		if old, ok := cur[name]; !ok || !proto.Equal(old, m) {
			changed[name] = m
		}
	}
	for name := range cur {
		if _, ok := set[name]; !ok {
			removed = append(removed, name)
		}
	}
	if len(changed) == 0 && len(removed) == 0 {
		return nil
	}
	if err := lc.UpdateResources(changed, removed); err != nil {
		return fmt.Errorf("xds: publishing %s: %w", typeURL, err)
	}
	s.current[typeURL] = maps.Clone(set)
	s.stats.push(typeURL)
	s.logger.Info("xDS publish", "type", typeURL, "changed", len(changed), "removed", len(removed), "total", len(set))
	return nil
}

// Resources returns the resource names currently served for a type, sorted.
func (s *Server) Resources(typeURL string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Sorted(maps.Keys(s.current[typeURL]))
}

// Typed converts a typed set into the form Publish takes.
func Typed[M proto.Message](set map[string]M) map[string]proto.Message {
	out := make(map[string]proto.Message, len(set))
	for k, v := range set {
		out[k] = v
	}
	return out
}
