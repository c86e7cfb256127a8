// Package xds serves the control plane's resources to proxies over delta
// ADS: a change reaches every connected proxy as an incremental delta.
// Publishing is one code path for every type (Publish, or PublishDelta for
// a change to a type's set); the ambient types are istio.workload.Address
// and istio.security.Authorization, and a new type (a waypoint's, say) is
// one more type URL given to New.
//
// Delta streams are the server's own (stream.go): each keeps, per type,
// the client's subscription (go-control-plane's, with its wildcard rules)
// and the version of every resource it holds, and a publish only marks the
// names it changed on every stream, so that a change costs what changed,
// not the size of the mesh. A resource is marshalled, and its version
// (go-control-plane's: a SHA-256 of the deterministic encoding) computed,
// once when it is published, for all streams. A response larger than a
// bound (SetMaxResponseBytes, 2 MiB by default) goes out as several
// (chunk.go): proxies keep gRPC's 4 MiB receive limit, and a mesh of
// 50,000 pods is a 22 MB address set. State-of-the-world streams are
// served by go-control-plane's server over linear caches, fed by the same
// publishes.
//
// The server also records, per connected delta proxy, its node id and the
// resource names and versions it was sent (Proxies), and counts pushes
// (Stats), for the control plane's debug and metrics endpoints.
package xds

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachetypes "github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/ambit-mesh/ambit/internal/parallel"
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
	ctx    context.Context
	logger *slog.Logger
	types  map[string]*typeStore // by type URL; fixed after New
	// sotw serves state-of-the-world streams from caches, fed by every
	// publish once the first such stream opened (sotwOn; none of Ambit's
	// proxies opens one).
	sotw   server.Server
	caches map[string]*cache.LinearCache
	sotwOn bool // guarded by mu

	mu      sync.Mutex // serializes publishes; guards streams
	streams map[int64]*stream
	nextID  atomic.Int64

	stats   statsRecorder
	proxies proxyTracker
	// maxResponse bounds a delta response's encoded size (chunk.go).
	maxResponse atomic.Int64
	// hold, if set, is closed once the served state is whole (HoldUntil):
	// streams send nothing before.
	hold <-chan struct{}
}

// typeStore holds the served resources of one type.
type typeStore struct {
	typeURL string
	mu      sync.RWMutex
	version uint64 // counts the publishes that changed something
	res     map[string]*resource
}

// resource is one served resource: the message as published, and the
// discovery resource every stream sends (immutable once built; gRPC
// marshals shared messages safely).
type resource struct {
	msg  proto.Message
	wire *discovery.Resource
}

func (t *typeStore) systemVersion() string { return strconv.FormatUint(t.version, 10) }

// New returns a server for the given resource types, with no resources.
// The server's streams end when ctx is done.
func New(ctx context.Context, logger *slog.Logger, typeURLs ...string) *Server {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{ctx: ctx, logger: logger, types: map[string]*typeStore{}, caches: map[string]*cache.LinearCache{},
		streams: map[int64]*stream{}, proxies: proxyTracker{streams: map[int64]*proxy{}}, stats: statsRecorder{pushes: map[string]uint64{}}}
	s.maxResponse.Store(DefaultMaxResponseBytes)
	caches := map[string]cache.Cache{}
	for _, t := range typeURLs {
		s.types[t] = &typeStore{typeURL: t, res: map[string]*resource{}}
		lc := cache.NewLinearCache(t)
		s.caches[t], caches[t] = lc, lc
	}
	mux := &cache.MuxCache{
		Classify:      func(r *cache.Request) string { return r.GetTypeUrl() },
		ClassifyDelta: func(r *cache.DeltaRequest) string { return r.GetTypeUrl() },
		Caches:        caches,
	}
	s.sotw = server.NewServer(ctx, mux, nil)
	return s
}

// adsServer is the ADS service as registered: delta streams are the
// server's, state-of-the-world ones go-control-plane's.
type adsServer struct {
	server.Server
	s *Server
}

// DeltaAggregatedResources serves a delta ADS stream (stream.go).
func (a adsServer) DeltaAggregatedResources(st discovery.AggregatedDiscoveryService_DeltaAggregatedResourcesServer) error {
	return a.s.serveDelta(st)
}

// StreamAggregatedResources serves a state-of-the-world ADS stream with
// go-control-plane's server, its caches filled first if this is the
// first such stream.
func (a adsServer) StreamAggregatedResources(st discovery.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error {
	a.s.startSotW()
	return a.Server.StreamAggregatedResources(st)
}

// startSotW fills the state-of-the-world caches with what is served, once.
func (s *Server) startSotW() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sotwOn {
		return
	}
	s.sotwOn = true
	for url, t := range s.types {
		t.mu.RLock()
		set := make(map[string]cachetypes.Resource, len(t.res))
		for name, r := range t.res {
			set[name] = r.msg
		}
		t.mu.RUnlock()
		s.caches[url].SetResources(set)
	}
}

// Register adds the ADS service to a gRPC server.
func (s *Server) Register(g *grpc.Server) {
	discovery.RegisterAggregatedDiscoveryServiceServer(g, adsServer{Server: s.sotw, s: s})
}

// HoldUntil makes delta streams send nothing until ready is closed: a
// proxy takes a stream's first answer as the whole state, and becomes
// ready with it, so a control plane that has not built its state yet
// (just started, sources not synced) must not answer with an empty one.
// Requests are read meanwhile. Call it before serving.
func (s *Server) HoldUntil(ready <-chan struct{}) { s.hold = ready }

// SetMaxResponseBytes sets the bound on a delta response's encoded size
// (DefaultMaxResponseBytes unless set; 0 or less: no bound). A stream
// reads it as it sends.
func (s *Server) SetMaxResponseBytes(n int) { s.maxResponse.Store(int64(n)) }

// Publish replaces the served resources of one type by set (by resource
// name); only what changed (by proto.Equal) and what was removed is sent.
// The set's messages are kept: callers must not modify them afterwards.
func (s *Server) Publish(typeURL string, set map[string]proto.Message) error {
	t, ok := s.types[typeURL]
	if !ok {
		return fmt.Errorf("xds: publishing %s: type not registered", typeURL)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	t.mu.RLock()
	var removed []string
	for name := range t.res {
		if _, ok := set[name]; !ok {
			removed = append(removed, name)
		}
	}
	t.mu.RUnlock()
	return s.publishLocked(t, set, removed)
}

// PublishDelta changes the served resources of one type: changed are
// added or replace those of their names, removed are dropped (a name in
// both is not removed). As with Publish, only what differs (by
// proto.Equal) and what was there to remove is sent, and the messages
// must not be modified afterwards. It costs what changed, not the size of
// the set.
func (s *Server) PublishDelta(typeURL string, changed map[string]proto.Message, removed []string) error {
	t, ok := s.types[typeURL]
	if !ok {
		return fmt.Errorf("xds: publishing %s: type not registered", typeURL)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var gone []string
	for _, name := range removed {
		if _, kept := changed[name]; !kept {
			gone = append(gone, name)
		}
	}
	return s.publishLocked(t, changed, gone)
}

// publishLocked applies changed and removed to a type (s.mu held): it
// encodes what differs, stores it, feeds the state-of-the-world cache and
// marks the names on every delta stream.
func (s *Server) publishLocked(t *typeStore, changed map[string]proto.Message, removed []string) error {
	t.mu.RLock()
	send := make(map[string]*resource, len(changed))
	adopt := map[string]proto.Message{} // equal messages: the caller's is kept as current
	for name, m := range changed {
		old, ok := t.res[name]
		switch {
		case ok && old.msg == m:
		case ok && proto.Equal(old.msg, m):
			adopt[name] = m
		default:
			send[name] = nil
		}
	}
	var gone []string
	for _, name := range removed {
		if _, ok := t.res[name]; ok {
			gone = append(gone, name)
		}
	}
	t.mu.RUnlock()
	// Encoding is most of a large publish's cost (a cold start's is the
	// whole mesh): on every CPU.
	names := slices.Collect(maps.Keys(send))
	encoded := make([]*resource, len(names))
	errs := make([]error, len(names))
	parallel.For(len(names), func(i int) {
		m := changed[names[i]]
		b, err := cache.MarshalResource(m)
		if err != nil {
			errs[i] = fmt.Errorf("xds: publishing %s: resource %s: %w", t.typeURL, names[i], err)
			return
		}
		encoded[i] = &resource{msg: m, wire: &discovery.Resource{Name: names[i], Version: cache.HashResource(b),
			Resource: &anypb.Any{TypeUrl: t.typeURL, Value: b}}}
	})
	for _, err := range errs {
		if err != nil {
			return err // the first, not one per resource
		}
	}
	for i, name := range names {
		send[name] = encoded[i]
	}
	t.mu.Lock()
	if len(t.res) == 0 && len(send) > 0 {
		t.res = make(map[string]*resource, len(send)) // the first publish: no growing
	}
	for name, m := range adopt {
		t.res[name] = &resource{msg: m, wire: t.res[name].wire}
	}
	for name, r := range send {
		t.res[name] = r
	}
	for _, name := range gone {
		delete(t.res, name)
	}
	if len(send) > 0 || len(gone) > 0 {
		t.version++
	}
	total := len(t.res)
	t.mu.Unlock()
	if len(send) == 0 && len(gone) == 0 {
		return nil
	}
	names = append(names, gone...)
	if s.sotwOn {
		resources := make(map[string]cachetypes.Resource, len(send))
		for name, r := range send {
			resources[name] = r.msg
		}
		if err := s.caches[t.typeURL].UpdateResources(resources, gone); err != nil {
			s.logger.Error("xDS state-of-the-world cache", "type", t.typeURL, "err", err)
		}
	}
	for _, st := range s.streams {
		st.mark(t.typeURL, names)
	}
	s.stats.push(t.typeURL)
	s.logger.Info("xDS publish", "type", t.typeURL, "changed", len(send), "removed", len(gone), "total", total)
	return nil
}

// Resources returns the resource names currently served for a type, sorted.
func (s *Server) Resources(typeURL string) []string {
	t, ok := s.types[typeURL]
	if !ok {
		return nil
	}
	t.mu.RLock()
	defer t.mu.RUnlock()
	return slices.Sorted(maps.Keys(t.res))
}

// Typed converts a typed set into the form Publish takes.
func Typed[M proto.Message](set map[string]M) map[string]proto.Message {
	out := make(map[string]proto.Message, len(set))
	for k, v := range set {
		out[k] = v
	}
	return out
}
