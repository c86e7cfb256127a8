package ztunnel

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"sort"
	"sync"

	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"

	"github.com/ambit-mesh/ambit/authz"
	"github.com/ambit-mesh/ambit/identity"
)

// Index holds the workloads and services the control plane sent, indexed
// for the data path. It is safe for concurrent use.
type Index struct {
	mu        sync.RWMutex
	workloads map[string]*workloadapi.Workload // by uid
	byIP      map[netip.Addr]*workloadapi.Workload
	services  map[string]*workloadapi.Service // by namespace/hostname
	byVIP     map[netip.Addr]*workloadapi.Service
	policies  map[string]*security.Authorization // by namespace/name
	version   uint64
	// endpoints are the workloads of each service (by service key, then
	// uid), kept with the workloads so that picking one scans only them.
	endpoints map[string]map[string]*workloadapi.Workload
	// sorted holds the policies in name order, rebuilt on every policy
	// update; selected caches, per workload, the policies that apply to
	// it, dropped on every change.
	sorted   []*security.Authorization
	cacheMu  sync.Mutex
	selected map[*workloadapi.Workload][]*security.Authorization

	// haveAddresses and havePolicies are set once the first full state of
	// each type has arrived; ready is closed when both are.
	haveAddresses, havePolicies bool
	ready                       chan struct{}
	// changed is closed and replaced on every update, to wake waiters.
	changed chan struct{}
	// onChange, if set, runs after every update (ztunnel then re-checks
	// open connections: a selector policy reaches a workload through the
	// workload's own resource, so a workload change can change a verdict).
	onChange func()
}

// NewIndex returns an empty index that is not ready.
func NewIndex() *Index {
	return &Index{workloads: map[string]*workloadapi.Workload{}, byIP: map[netip.Addr]*workloadapi.Workload{},
		services: map[string]*workloadapi.Service{}, byVIP: map[netip.Addr]*workloadapi.Service{}, policies: map[string]*security.Authorization{},
		endpoints: map[string]map[string]*workloadapi.Workload{}, selected: map[*workloadapi.Workload][]*security.Authorization{},
		ready: make(chan struct{}), changed: make(chan struct{})}
}

// ErrNotReady is returned while the index has not yet had the control
// plane's first full state of workloads and policies.
var ErrNotReady = errors.New("no configuration from the control plane yet")

// Ready is closed once the first full states of both workloads and
// policies have arrived. Until then the data path must hold or refuse
// connections: an unknown destination is not yet "outside the mesh", and
// no policy is not yet "allow".
func (x *Index) Ready() <-chan struct{} { return x.ready }

// WaitReady waits until the index is ready or ctx is done.
func (x *Index) WaitReady(ctx context.Context) error {
	select {
	case <-x.ready:
		return nil
	default:
	}
	select {
	case <-x.ready:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%w: %w", ErrNotReady, context.Cause(ctx))
	}
}

// IsReady reports whether the index is ready.
func (x *Index) IsReady() bool {
	select {
	case <-x.ready:
		return true
	default:
		return false
	}
}

// WaitWorkloadByIP returns the workload with address ip, waiting for it
// to arrive until ctx is done (then it returns nil).
func (x *Index) WaitWorkloadByIP(ctx context.Context, ip netip.Addr) *workloadapi.Workload {
	for {
		x.mu.RLock()
		w, ch := x.byIP[ip.Unmap()], x.changed
		x.mu.RUnlock()
		if w != nil {
			return w
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return nil
		}
	}
}

// markSynced records that a full state of addresses (or policies) has
// arrived; x.mu must be held.
func (x *Index) markSyncedLocked(addresses bool) {
	if addresses {
		x.haveAddresses = true
	} else {
		x.havePolicies = true
	}
	if x.haveAddresses && x.havePolicies && !x.IsReady() {
		close(x.ready)
	}
}

// changedLocked wakes waiters and returns the change hook; x.mu must be
// held, and the hook run after it is released.
func (x *Index) changedLocked() func() {
	x.version++
	x.cacheMu.Lock()
	clear(x.selected)
	x.cacheMu.Unlock()
	close(x.changed)
	x.changed = make(chan struct{})
	return x.onChange
}

func runHook(h func()) {
	if h != nil {
		h()
	}
}

// ServiceKey is a service's resource name: namespace/hostname.
func ServiceKey(s *workloadapi.Service) string { return s.GetNamespace() + "/" + s.GetHostname() }

// Update applies a delta: resources added or changed, and names removed
// (workload uids or service namespace/hostname). full says the delta
// completes a full state (the first response of a stream).
func (x *Index) Update(upserts []*workloadapi.Address, removed []string, full bool) {
	x.mu.Lock()
	hook := x.apply(upserts, removed, full)
	x.mu.Unlock()
	runHook(hook)
}

func (x *Index) apply(upserts []*workloadapi.Address, removed []string, full bool) func() {
	for _, name := range removed {
		if w, ok := x.workloads[name]; ok {
			x.unindexWorkload(w)
			delete(x.workloads, name)
		}
		if s, ok := x.services[name]; ok {
			x.unindexService(s)
			delete(x.services, name)
		}
	}
	for _, a := range upserts {
		switch {
		case a.GetWorkload() != nil:
			w := a.GetWorkload()
			if old, ok := x.workloads[w.GetUid()]; ok {
				x.unindexWorkload(old)
			}
			x.workloads[w.GetUid()] = w
			for _, b := range w.GetAddresses() {
				if ip, ok := netip.AddrFromSlice(b); ok {
					x.byIP[ip.Unmap()] = w
				}
			}
			for key := range w.GetServices() {
				if x.endpoints[key] == nil {
					x.endpoints[key] = map[string]*workloadapi.Workload{}
				}
				x.endpoints[key][w.GetUid()] = w
			}
		case a.GetService() != nil:
			s := a.GetService()
			k := ServiceKey(s)
			if old, ok := x.services[k]; ok {
				x.unindexService(old)
			}
			x.services[k] = s
			for _, na := range s.GetAddresses() {
				if ip, ok := netip.AddrFromSlice(na.GetAddress()); ok {
					x.byVIP[ip.Unmap()] = s
				}
			}
		}
	}
	if full {
		x.markSyncedLocked(true)
	}
	return x.changedLocked()
}

func (x *Index) unindexWorkload(w *workloadapi.Workload) {
	for _, b := range w.GetAddresses() {
		if ip, ok := netip.AddrFromSlice(b); ok && x.byIP[ip.Unmap()] == w {
			delete(x.byIP, ip.Unmap())
		}
	}
	for key := range w.GetServices() {
		if eps := x.endpoints[key]; eps[w.GetUid()] == w {
			delete(eps, w.GetUid())
			if len(eps) == 0 {
				delete(x.endpoints, key)
			}
		}
	}
}

func (x *Index) unindexService(s *workloadapi.Service) {
	for _, na := range s.GetAddresses() {
		if ip, ok := netip.AddrFromSlice(na.GetAddress()); ok && x.byVIP[ip.Unmap()] == s {
			delete(x.byVIP, ip.Unmap())
		}
	}
}

// Workload returns the workload with uid.
func (x *Index) Workload(uid string) *workloadapi.Workload {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return x.workloads[uid]
}

// WorkloadByIP returns the workload with address ip.
func (x *Index) WorkloadByIP(ip netip.Addr) *workloadapi.Workload {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return x.byIP[ip.Unmap()]
}

// ServiceByVIP returns the service with VIP ip.
func (x *Index) ServiceByVIP(ip netip.Addr) *workloadapi.Service {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return x.byVIP[ip.Unmap()]
}

// Workloads returns every workload, sorted by namespace and name.
func (x *Index) Workloads() []*workloadapi.Workload {
	x.mu.RLock()
	defer x.mu.RUnlock()
	out := make([]*workloadapi.Workload, 0, len(x.workloads))
	for _, w := range x.workloads {
		out = append(out, w)
	}
	sort.Slice(out, func(i, j int) bool {
		return out[i].GetNamespace()+"/"+out[i].GetName() < out[j].GetNamespace()+"/"+out[j].GetName()
	})
	return out
}

// Services returns every service, sorted by key.
func (x *Index) Services() []*workloadapi.Service {
	x.mu.RLock()
	defer x.mu.RUnlock()
	out := make([]*workloadapi.Service, 0, len(x.services))
	for _, s := range x.services {
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return ServiceKey(out[i]) < ServiceKey(out[j]) })
	return out
}

// endpoint is a chosen backend of a service.
type endpoint struct {
	w    *workloadapi.Workload
	port uint16
}

// pickEndpoint chooses an endpoint of svc serving servicePort and maps
// the port to the endpoint's target port: a healthy one (any, under the
// service's ALLOW_ALL health policy), at random among those closest to src
// by the service's routing preference (FAILOVER: the endpoints matching
// src on the longest run of scopes; STRICT: only those matching on every
// scope, as internalTrafficPolicy Local asks). src may be nil (a
// waypoint's own balancing): then locality plays no part.
func (x *Index) pickEndpoint(svc *workloadapi.Service, servicePort uint16, src *workloadapi.Workload) (endpoint, error) {
	var target uint32
	found := false
	for _, p := range svc.GetPorts() {
		if p.GetServicePort() == uint32(servicePort) {
			target, found = p.GetTargetPort(), true
		}
	}
	if !found {
		return endpoint{}, fmt.Errorf("service %s has no port %d", ServiceKey(svc), servicePort)
	}
	lb := svc.GetLoadBalancing()
	allowAll := lb.GetHealthPolicy() == workloadapi.LoadBalancing_ALLOW_ALL
	prefs := lb.GetRoutingPreference()
	strict := lb.GetMode() == workloadapi.LoadBalancing_STRICT
	key := ServiceKey(svc)
	x.mu.RLock()
	var cands []endpoint
	best := -1
	for _, w := range x.endpoints[key] {
		pl, ok := w.GetServices()[key]
		if !ok || (!allowAll && w.GetStatus() != workloadapi.WorkloadStatus_HEALTHY) || len(w.GetAddresses()) == 0 {
			continue
		}
		port := target
		for _, p := range pl.GetPorts() {
			if p.GetServicePort() == uint32(servicePort) && p.GetTargetPort() != 0 {
				port = p.GetTargetPort()
			}
		}
		if port == 0 {
			continue // named port this endpoint does not have
		}
		rank := 0
		if src != nil {
			rank = localityRank(prefs, src, w)
		}
		switch {
		case strict && src != nil && rank < len(prefs):
			continue
		case rank < best:
			continue
		case rank > best:
			best, cands = rank, cands[:0]
		}
		cands = append(cands, endpoint{w: w, port: uint16(port)})
	}
	x.mu.RUnlock()
	if len(cands) == 0 {
		if strict && src != nil && len(prefs) > 0 {
			return endpoint{}, fmt.Errorf("no healthy upstream for service %s port %d on this node or locality (routing is strict)", key, servicePort)
		}
		return endpoint{}, fmt.Errorf("no healthy upstream for service %s port %d", key, servicePort)
	}
	return cands[rand.IntN(len(cands))], nil
}

// localityRank is how many of the routing preference's scopes, from the
// first, dst shares with src.
func localityRank(prefs []workloadapi.LoadBalancing_Scope, src, dst *workloadapi.Workload) int {
	for i, scope := range prefs {
		var same bool
		switch scope {
		case workloadapi.LoadBalancing_REGION:
			same = src.GetLocality().GetRegion() == dst.GetLocality().GetRegion()
		case workloadapi.LoadBalancing_ZONE:
			same = src.GetLocality().GetZone() == dst.GetLocality().GetZone()
		case workloadapi.LoadBalancing_SUBZONE:
			same = src.GetLocality().GetSubzone() == dst.GetLocality().GetSubzone()
		case workloadapi.LoadBalancing_NODE:
			same = src.GetNode() == dst.GetNode()
		case workloadapi.LoadBalancing_CLUSTER:
			same = src.GetClusterId() == dst.GetClusterId()
		case workloadapi.LoadBalancing_NETWORK:
			same = src.GetNetwork() == dst.GetNetwork()
		}
		if !same {
			return i
		}
	}
	return len(prefs)
}

// PickEndpoint chooses a healthy endpoint of svc serving servicePort, at
// random, and returns it with its target port (for a waypoint's per
// request balancing).
func (x *Index) PickEndpoint(svc *workloadapi.Service, servicePort uint16) (*workloadapi.Workload, uint16, error) {
	ep, err := x.pickEndpoint(svc, servicePort, nil)
	return ep.w, ep.port, err
}

// pickAnyEndpoint chooses a healthy endpoint of svc with an address, at
// random, whatever its ports (a waypoint's: its HBONE port is fixed).
func (x *Index) pickAnyEndpoint(svc *workloadapi.Service) (*workloadapi.Workload, error) {
	key := ServiceKey(svc)
	x.mu.RLock()
	var cands []*workloadapi.Workload
	for _, w := range x.endpoints[key] {
		if _, ok := w.GetServices()[key]; ok && w.GetStatus() == workloadapi.WorkloadStatus_HEALTHY && len(w.GetAddresses()) > 0 {
			cands = append(cands, w)
		}
	}
	x.mu.RUnlock()
	if len(cands) == 0 {
		return nil, fmt.Errorf("no healthy endpoint of %s", key)
	}
	return cands[rand.IntN(len(cands))], nil
}

// Service returns the service by namespace/hostname, or nil.
func (x *Index) Service(key string) *workloadapi.Service {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return x.services[key]
}

// Identity returns a workload's SPIFFE id (WDS elides cluster.local and
// default).
func Identity(w *workloadapi.Workload) identity.SPIFFE {
	td, sa := w.GetTrustDomain(), w.GetServiceAccount()
	if td == "" {
		td = identity.DefaultTrustDomain
	}
	if sa == "" {
		sa = "default"
	}
	return identity.SPIFFE{TrustDomain: td, Namespace: w.GetNamespace(), ServiceAccount: sa}
}

// WorkloadIP returns a workload's first address.
func WorkloadIP(w *workloadapi.Workload) (netip.Addr, bool) {
	for _, b := range w.GetAddresses() {
		if ip, ok := netip.AddrFromSlice(b); ok {
			return ip.Unmap(), true
		}
	}
	return netip.Addr{}, false
}

// staleNames lists the resources of the index not in a full state.
func (x *Index) staleNames(full []*workloadapi.Address) []string {
	keep := map[string]bool{}
	for _, a := range full {
		if w := a.GetWorkload(); w != nil {
			keep[w.GetUid()] = true
		}
		if s := a.GetService(); s != nil {
			keep[ServiceKey(s)] = true
		}
	}
	x.mu.RLock()
	defer x.mu.RUnlock()
	var out []string
	for uid := range x.workloads {
		if !keep[uid] {
			out = append(out, uid)
		}
	}
	for k := range x.services {
		if !keep[k] {
			out = append(out, k)
		}
	}
	return out
}

// UpdatePolicies applies a delta of authorization policies; full as for
// Update.
func (x *Index) UpdatePolicies(upserts []*security.Authorization, removed []string, full bool) {
	x.mu.Lock()
	for _, name := range removed {
		delete(x.policies, name)
	}
	for _, p := range upserts {
		x.policies[p.GetNamespace()+"/"+p.GetName()] = p
	}
	x.sorted = make([]*security.Authorization, 0, len(x.policies))
	for _, p := range x.policies {
		x.sorted = append(x.sorted, p)
	}
	sort.Slice(x.sorted, func(i, j int) bool {
		return x.sorted[i].GetNamespace()+"/"+x.sorted[i].GetName() < x.sorted[j].GetNamespace()+"/"+x.sorted[j].GetName()
	})
	if full {
		x.markSyncedLocked(false)
	}
	hook := x.changedLocked()
	x.mu.Unlock()
	runHook(hook)
}

// Policies returns every policy, sorted by name. The slice is shared:
// callers must not modify it.
func (x *Index) Policies() []*security.Authorization {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return x.sorted
}

// PoliciesFor returns the policies that apply to workload w (see
// authz.Select), computed once per index version for workloads of the
// index. The slice is shared:
// callers must not modify it.
func (x *Index) PoliciesFor(w *workloadapi.Workload) []*security.Authorization {
	x.mu.RLock()
	defer x.mu.RUnlock()
	x.cacheMu.Lock()
	ps, ok := x.selected[w]
	x.cacheMu.Unlock()
	if ok {
		return ps
	}
	ps = authz.Select(x.sorted, w)
	if x.workloads[w.GetUid()] == w { // only the index's own workloads are cached
		x.cacheMu.Lock()
		x.selected[w] = ps
		x.cacheMu.Unlock()
	}
	return ps
}

// stalePolicies lists the policies not in a full state.
func (x *Index) stalePolicies(full []*security.Authorization) []string {
	keep := map[string]bool{}
	for _, p := range full {
		keep[p.GetNamespace()+"/"+p.GetName()] = true
	}
	x.mu.RLock()
	defer x.mu.RUnlock()
	var out []string
	for k := range x.policies {
		if !keep[k] {
			out = append(out, k)
		}
	}
	return out
}
