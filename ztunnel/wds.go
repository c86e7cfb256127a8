package ztunnel

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/structpb"
	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"

	"github.com/ambit-mesh/ambit/internal/xdspart"
)

// Type URLs ztunnel subscribes to (as upstream).
const (
	addressType       = "type.googleapis.com/istio.workload.Address"
	authorizationType = "type.googleapis.com/istio.security.Authorization"
)

// WDSClient keeps an Index in line with the control plane over delta ADS,
// reconnecting with backoff (10 ms doubling to 15 s). While disconnected
// the index keeps serving what it had.
type WDSClient struct {
	Conn   grpc.ClientConnInterface
	Index  *Index
	NodeID string
	// Metadata is the node metadata sent with the first request of each
	// type (Istio's NAMESPACE, NODE_NAME, CLUSTER_ID, ...); may be nil.
	Metadata *structpb.Struct
	Logger   *slog.Logger
	// Extra subscribes to more resource types on the same stream (a
	// waypoint's routes and policies), by type URL. Each handler gets a
	// response's resources and removed names; full is true for a stream's
	// first response of that type, which holds the whole set. A handler's
	// error NACKs the response.
	Extra map[string]func(resources []*discovery.Resource, removed []string, full bool) error

	synced atomic.Bool
}

// Synced reports whether the first full state has arrived on the current
// stream.
func (c *WDSClient) Synced() bool { return c.synced.Load() && c.Index.IsReady() }

// Run streams updates until ctx is done.
func (c *WDSClient) Run(ctx context.Context) error {
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	backoff := 10 * time.Millisecond
	for ctx.Err() == nil {
		got, err := c.stream(ctx)
		c.synced.Store(false)
		if ctx.Err() != nil {
			return nil
		}
		if got {
			backoff = 10 * time.Millisecond
		}
		c.Logger.Warn("WDS stream ended; reconnecting", "err", err, "backoff", backoff)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 15*time.Second)
	}
	return nil
}

func (c *WDSClient) stream(ctx context.Context) (gotResponse bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := discovery.NewAggregatedDiscoveryServiceClient(c.Conn).DeltaAggregatedResources(ctx)
	if err != nil {
		return false, fmt.Errorf("opening delta ADS: %w", err)
	}
	node := &corev3.Node{Id: c.NodeID, Metadata: c.Metadata}
	types := []string{addressType, authorizationType}
	for typ := range c.Extra {
		types = append(types, typ)
	}
	for _, typ := range types {
		if err := st.Send(&discovery.DeltaDiscoveryRequest{Node: node, TypeUrl: typ, ResourceNamesSubscribe: []string{"*"}}); err != nil {
			if err == io.EOF {
				// The server ended the stream (e.g. refused our
				// credentials): its status says why.
				_, err = st.Recv()
			}
			return false, fmt.Errorf("subscribing to %s: %w", typ, err)
		}
	}
	first, firstPolicies := true, true
	firstExtra := map[string]bool{}
	var parts partials
	for {
		resp, err := st.Recv()
		if err != nil {
			return gotResponse, err
		}
		gotResponse = true
		ack := &discovery.DeltaDiscoveryRequest{TypeUrl: resp.GetTypeUrl(), ResponseNonce: resp.GetNonce()}
		if resp = parts.add(resp); resp == nil {
			// A part with more to come: acknowledged now, applied with
			// the last.
			if err := st.Send(ack); err != nil {
				return true, fmt.Errorf("acknowledging: %w", err)
			}
			continue
		}
		if resp.GetTypeUrl() == addressType {
			upserts := make([]*workloadapi.Address, 0, len(resp.GetResources()))
			var bad error
			for _, r := range resp.GetResources() {
				a := &workloadapi.Address{}
				if err := r.GetResource().UnmarshalTo(a); err != nil {
					bad = fmt.Errorf("resource %s: %w", r.GetName(), err)
					break
				}
				upserts = append(upserts, a)
			}
			if bad != nil {
				ack.ErrorDetail = statusOf(bad)
				c.Logger.Error("WDS update rejected", "err", bad)
			} else {
				removed := resp.GetRemovedResources()
				full := first
				if first {
					// A new stream starts with the full state: forget
					// what it no longer has.
					removed = append(removed, c.Index.staleNames(upserts)...)
					first = false
				}
				c.Index.Update(upserts, removed, full)
				c.synced.Store(true)
				c.Logger.Info("WDS update", "upserts", len(upserts), "removed", len(removed))
			}
		}
		if resp.GetTypeUrl() == authorizationType {
			var ps []*security.Authorization
			var bad error
			for _, r := range resp.GetResources() {
				a := &security.Authorization{}
				if err := r.GetResource().UnmarshalTo(a); err != nil {
					bad = fmt.Errorf("policy %s: %w", r.GetName(), err)
					break
				}
				ps = append(ps, a)
			}
			if bad != nil {
				ack.ErrorDetail = statusOf(bad)
				c.Logger.Error("authorization update rejected", "err", bad)
			} else {
				removed := resp.GetRemovedResources()
				full := firstPolicies
				if firstPolicies {
					removed = append(removed, c.Index.stalePolicies(ps)...)
					firstPolicies = false
				}
				c.Index.UpdatePolicies(ps, removed, full)
				c.Logger.Info("authorization update", "upserts", len(ps), "removed", len(removed))
			}
		}
		if h, ok := c.Extra[resp.GetTypeUrl()]; ok {
			full := !firstExtra[resp.GetTypeUrl()]
			if err := h(resp.GetResources(), resp.GetRemovedResources(), full); err != nil {
				ack.ErrorDetail = statusOf(err)
				c.Logger.Error("xDS update rejected", "type", resp.GetTypeUrl(), "err", err)
			} else {
				firstExtra[resp.GetTypeUrl()] = true // until the full set applied, every response is taken as full
			}
		}
		if err := st.Send(ack); err != nil {
			return true, fmt.Errorf("acknowledging: %w", err)
		}
	}
}

// partials gathers the parts of split responses (internal/xdspart), per
// type URL.
type partials map[string]*discovery.DeltaDiscoveryResponse

// add returns the response to apply: nil while r is a part others follow,
// then the parts together (resources in order, removals after them) with
// the last part's nonce and version.
func (p *partials) add(r *discovery.DeltaDiscoveryResponse) *discovery.DeltaDiscoveryResponse {
	more := xdspart.More(r.GetNonce())
	acc := (*p)[r.GetTypeUrl()]
	if acc == nil {
		if !more {
			return r
		}
		if *p == nil {
			*p = partials{}
		}
		acc = &discovery.DeltaDiscoveryResponse{TypeUrl: r.GetTypeUrl()}
		(*p)[r.GetTypeUrl()] = acc
	}
	acc.Resources = append(acc.Resources, r.GetResources()...)
	acc.RemovedResources = append(acc.RemovedResources, r.GetRemovedResources()...)
	if more {
		return nil
	}
	delete(*p, r.GetTypeUrl())
	acc.Nonce, acc.SystemVersionInfo, acc.ControlPlane = r.GetNonce(), r.GetSystemVersionInfo(), r.GetControlPlane()
	return acc
}

func statusOf(err error) *rpcstatus.Status {
	return &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: err.Error()}
}
