package xds

import (
	"fmt"
	"slices"
	"strconv"
	"sync"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	streamv3 "github.com/envoyproxy/go-control-plane/pkg/server/stream/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// A delta stream follows go-control-plane's delta server in what it sends
// and when (the protocol: envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol):
//
//   - a type's subscription is go-control-plane's stream.Subscription
//     (legacy wildcard for an empty first request, "*", names,
//     unsubscriptions), and its first request may list the versions the
//     client already holds (initial_resource_versions);
//   - a request that opens a type or changes its subscription is answered
//     with every subscribed resource the client lacks or holds at another
//     version, and the removal of those it holds that are gone or no
//     longer subscribed; a wildcard subscription's first answer goes out
//     even if empty (the client's "synced");
//   - an acknowledgement or rejection is recorded, nothing is resent;
//   - a publish sends each stream the resources it changed (those the
//     client subscribes to and does not hold at that version) and the
//     removals of those it held; types go out in the order they were
//     published, so that policies precede the workloads naming them.
//
// Unlike go-control-plane, a publish does not compare every resource with
// what each client holds: it marks the names it changed, and the stream
// looks at those only. Several publishes before the stream sends make one
// response.

// fullMark is how many names a publish marks one by one; more, and the
// stream compares everything instead.
const fullMark = 1024

// stream is one delta ADS stream's state.
type stream struct {
	id   int64
	wake chan struct{} // capacity 1: there is something to send

	mu    sync.Mutex
	subs  map[string]*subscription // by type URL
	queue []string                 // types with something to send, in publish order
	nonce int64
}

// subscription is one type's state on a stream.
type subscription struct {
	sub streamv3.Subscription // what the client subscribes to and holds (ReturnedResources)
	// pending are names a publish changed since the last response; full
	// says compare everything instead; reply says answer even if there is
	// nothing to send.
	pending     map[string]struct{}
	full, reply bool
}

// mark records that a publish changed names of a type.
func (st *stream) mark(typeURL string, names []string) {
	st.mu.Lock()
	sub := st.subs[typeURL]
	if sub != nil {
		if sub.full || len(names)+len(sub.pending) > fullMark {
			sub.full, sub.pending = true, nil
		} else {
			if sub.pending == nil {
				sub.pending = make(map[string]struct{}, len(names))
			}
			for _, n := range names {
				sub.pending[n] = struct{}{}
			}
		}
		st.enqueueLocked(typeURL)
	}
	st.mu.Unlock()
	if sub != nil {
		select {
		case st.wake <- struct{}{}:
		default:
		}
	}
}

// enqueueLocked puts a type at the end of the send queue.
func (st *stream) enqueueLocked(typeURL string) {
	if i := slices.Index(st.queue, typeURL); i >= 0 {
		st.queue = slices.Delete(st.queue, i, i+1)
	}
	st.queue = append(st.queue, typeURL)
}

// serveDelta serves one delta ADS stream until the client ends it, a send
// fails, or the server's context is done.
func (s *Server) serveDelta(gs discovery.AggregatedDiscoveryService_DeltaAggregatedResourcesServer) error {
	st := &stream{id: s.nextID.Add(1), wake: make(chan struct{}, 1), subs: map[string]*subscription{}}
	s.logger.Info("xDS stream opened", "stream", st.id)
	s.proxies.open(st.id)
	s.mu.Lock()
	s.streams[st.id] = st
	s.mu.Unlock()
	node := &corev3.Node{}
	defer func() {
		s.mu.Lock()
		delete(s.streams, st.id)
		s.mu.Unlock()
		s.logger.Info("xDS stream closed", "stream", st.id, "node", node.GetId())
		s.proxies.close(st.id)
	}()

	reqs := make(chan *discovery.DeltaDiscoveryRequest)
	go func() {
		defer close(reqs)
		for {
			r, err := gs.Recv()
			if err != nil {
				return
			}
			select {
			case reqs <- r:
			case <-gs.Context().Done():
				return
			case <-s.ctx.Done():
				return
			}
		}
	}()
	hold := s.hold
	for {
		select {
		case <-s.ctx.Done():
			return nil
		case <-hold:
			hold = nil
		case r, ok := <-reqs:
			if !ok {
				return nil // the client ended the stream (or it broke)
			}
			if r.GetNode() != nil {
				node = r.GetNode()
			}
			if err := s.request(st, r); err != nil {
				return err
			}
		case <-st.wake:
		}
		if hold != nil {
			select {
			case <-hold:
				hold = nil
			default:
				continue // the state is not whole yet
			}
		}
		if err := s.flush(st, gs); err != nil {
			return err
		}
	}
}

// request applies one request to the stream's state.
func (s *Server) request(st *stream, r *discovery.DeltaDiscoveryRequest) error {
	s.proxies.request(st.id, r)
	if r.GetErrorDetail() != nil {
		s.stats.nack()
		s.logger.Warn("proxy rejected an update", "stream", st.id, "type", r.GetTypeUrl(), "error", r.GetErrorDetail().GetMessage())
	}
	typeURL := r.GetTypeUrl()
	if typeURL == "" {
		return status.Errorf(codes.InvalidArgument, "type URL is required for ADS")
	}
	if _, ok := s.types[typeURL]; !ok {
		return fmt.Errorf("no cache defined for key %s", typeURL)
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	sub := st.subs[typeURL]
	switch {
	case sub == nil:
		var initial map[string]string
		if v := r.GetInitialResourceVersions(); v != nil {
			initial = make(map[string]string, len(v))
			for name, version := range v {
				initial[name] = version
			}
		}
		sub = &subscription{sub: streamv3.NewDeltaSubscription(r.GetResourceNamesSubscribe(), r.GetResourceNamesUnsubscribe(), initial, true), full: true}
		st.subs[typeURL] = sub
	case len(r.GetResourceNamesSubscribe()) > 0 || len(r.GetResourceNamesUnsubscribe()) > 0:
		sub.sub.UpdateResourceSubscriptions(r.GetResourceNamesSubscribe(), r.GetResourceNamesUnsubscribe())
		sub.full, sub.pending = true, nil
	default:
		return nil // an acknowledgement or a rejection
	}
	if sub.sub.IsWildcard() && r.GetResponseNonce() == "" {
		sub.reply = true
	}
	st.enqueueLocked(typeURL)
	return nil
}

// flush sends what the stream's queued types have to send.
func (s *Server) flush(st *stream, gs discovery.AggregatedDiscoveryService_DeltaAggregatedResourcesServer) error {
	for {
		resp := s.next(st)
		if resp == nil {
			return nil
		}
		s.proxies.response(st.id, resp)
		for _, part := range splitResponse(resp, int(s.maxResponse.Load())) {
			if err := gs.Send(part); err != nil {
				return err
			}
		}
	}
}

// next takes the first queued type off the queue and returns its
// response, or nil when no type has anything to send. The client's state
// is updated as if the response had arrived.
func (s *Server) next(st *stream) *discovery.DeltaDiscoveryResponse {
	st.mu.Lock()
	defer st.mu.Unlock()
	for len(st.queue) > 0 {
		typeURL := st.queue[0]
		st.queue = st.queue[1:]
		sub := st.subs[typeURL]
		t := s.types[typeURL]
		resp := &discovery.DeltaDiscoveryResponse{TypeUrl: typeURL}
		held := sub.sub.ReturnedResources()
		subscribed := sub.sub.SubscribedResources()
		t.mu.RLock()
		resp.SystemVersionInfo = t.systemVersion()
		consider := func(name string) {
			r, exists := t.res[name]
			_, named := subscribed[name]
			version, holds := held[name]
			switch {
			case exists && (sub.sub.IsWildcard() || named):
				if !holds || version != r.wire.GetVersion() {
					resp.Resources = append(resp.Resources, r.wire)
					held[name] = r.wire.GetVersion()
				}
			case holds:
				resp.RemovedResources = append(resp.RemovedResources, name)
				delete(held, name)
			}
		}
		if sub.full {
			if len(held) == 0 && sub.sub.IsWildcard() {
				held = make(map[string]string, len(t.res)) // the first push: no growing
				sub.sub.SetReturnedResources(held)
			}
			if sub.sub.IsWildcard() {
				resp.Resources = make([]*discovery.Resource, 0, len(t.res))
				for name := range t.res {
					consider(name)
				}
			} else {
				for name := range subscribed {
					consider(name)
				}
			}
			for name := range held { // held, gone or no longer subscribed
				if _, seen := t.res[name]; !seen || !(sub.sub.IsWildcard() || contains(subscribed, name)) {
					consider(name)
				}
			}
		} else {
			for name := range sub.pending {
				consider(name)
			}
		}
		t.mu.RUnlock()
		reply := sub.reply
		sub.full, sub.reply, sub.pending = false, false, nil
		if len(resp.Resources) == 0 && len(resp.RemovedResources) == 0 && !reply {
			continue
		}
		st.nonce++
		resp.Nonce = strconv.FormatInt(st.nonce, 10)
		return resp
	}
	return nil
}

func contains(m map[string]struct{}, k string) bool {
	_, ok := m[k]
	return ok
}
