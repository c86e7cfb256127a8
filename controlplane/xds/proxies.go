package xds

import (
	"maps"
	"slices"
	"sync"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
)

// ProxyStatus is what one connected proxy (one ADS stream) was sent.
type ProxyStatus struct {
	Stream    int64     `json:"stream"`
	Node      string    `json:"node"`
	Connected time.Time `json:"connected"`
	// Sent is, per type URL, the resources the proxy holds from this
	// stream: name -> version.
	Sent map[string]map[string]string `json:"sent"`
	// Nonce is the last response nonce per type URL.
	Nonce map[string]string `json:"nonce,omitempty"`
	// Rejected is the last error detail per type URL the proxy sent back
	// (a NACK), if any.
	Rejected map[string]string `json:"rejected,omitempty"`
}

type proxy struct {
	node      string
	connected time.Time
	sent      map[string]map[string]string
	nonce     map[string]string
	rejected  map[string]string
}

// proxyTracker records, from the server's callbacks, what each stream was
// sent.
type proxyTracker struct {
	mu      sync.Mutex
	streams map[int64]*proxy
}

func (t *proxyTracker) open(id int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.streams[id] = &proxy{connected: time.Now(), sent: map[string]map[string]string{}, nonce: map[string]string{}, rejected: map[string]string{}}
}

func (t *proxyTracker) close(id int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.streams, id)
}

func (t *proxyTracker) request(id int64, r *discovery.DeltaDiscoveryRequest) {
	t.mu.Lock()
	defer t.mu.Unlock()
	p := t.streams[id]
	if p == nil {
		return
	}
	if n := r.GetNode().GetId(); n != "" {
		p.node = n
	}
	if d := r.GetErrorDetail(); d != nil {
		p.rejected[r.GetTypeUrl()] = d.GetMessage()
	} else if r.GetResponseNonce() != "" {
		delete(p.rejected, r.GetTypeUrl())
	}
}

func (t *proxyTracker) response(id int64, r *discovery.DeltaDiscoveryResponse) {
	t.mu.Lock()
	defer t.mu.Unlock()
	p := t.streams[id]
	if p == nil {
		return
	}
	typ := r.GetTypeUrl()
	sent := p.sent[typ]
	if len(sent) == 0 {
		sent = make(map[string]string, len(r.GetResources()))
		p.sent[typ] = sent
	}
	for _, res := range r.GetResources() {
		sent[res.GetName()] = res.GetVersion()
	}
	for _, name := range r.GetRemovedResources() {
		delete(sent, name)
	}
	p.nonce[typ] = r.GetNonce()
}

func (t *proxyTracker) list() []ProxyStatus {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]ProxyStatus, 0, len(t.streams))
	for _, id := range slices.Sorted(maps.Keys(t.streams)) {
		p := t.streams[id]
		st := ProxyStatus{Stream: id, Node: p.node, Connected: p.connected, Sent: map[string]map[string]string{},
			Nonce: maps.Clone(p.nonce), Rejected: maps.Clone(p.rejected)}
		for typ, m := range p.sent {
			st.Sent[typ] = maps.Clone(m)
		}
		out = append(out, st)
	}
	return out
}

// Proxies returns every connected proxy and what it was sent, by stream.
func (s *Server) Proxies() []ProxyStatus { return s.proxies.list() }

// Stats are the server's counters.
type Stats struct {
	// Pushes counts the publishes that changed something, per type URL.
	Pushes map[string]uint64
	// Rejections counts the updates proxies rejected (NACKs).
	Rejections uint64
	// Connected is the number of open ADS streams.
	Connected int
}

type statsRecorder struct {
	mu         sync.Mutex
	pushes     map[string]uint64
	rejections uint64
}

func (r *statsRecorder) push(typeURL string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.pushes[typeURL]++
}

func (r *statsRecorder) nack() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.rejections++
}

// Stats returns the current counters.
func (s *Server) Stats() Stats {
	s.stats.mu.Lock()
	st := Stats{Pushes: maps.Clone(s.stats.pushes), Rejections: s.stats.rejections}
	s.stats.mu.Unlock()
	s.proxies.mu.Lock()
	st.Connected = len(s.proxies.streams)
	s.proxies.mu.Unlock()
	return st
}
