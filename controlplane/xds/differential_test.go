package xds

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachetypes "github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"istio.io/istio/pkg/workloadapi/security"
)

// linearServer is the server as it was before its delta streams were its
// own: go-control-plane's delta server over one linear cache per type,
// published to by the same diff. The differential test holds the new
// streams to what it sends.
type linearServer struct {
	caches  map[string]*cache.LinearCache
	current map[string]map[string]proto.Message
}

func newLinearServer(ctx context.Context, g *grpc.Server, types ...string) *linearServer {
	s := &linearServer{caches: map[string]*cache.LinearCache{}, current: map[string]map[string]proto.Message{}}
	caches := map[string]cache.Cache{}
	for _, t := range types {
		lc := cache.NewLinearCache(t)
		s.caches[t], caches[t], s.current[t] = lc, lc, map[string]proto.Message{}
	}
	mux := &cache.MuxCache{Classify: func(r *cache.Request) string { return r.GetTypeUrl() },
		ClassifyDelta: func(r *cache.DeltaRequest) string { return r.GetTypeUrl() }, Caches: caches}
	discovery.RegisterAggregatedDiscoveryServiceServer(g, server.NewServer(ctx, mux, nil))
	return s
}

func (s *linearServer) Publish(typeURL string, set map[string]proto.Message) {
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
		return
	}
	_ = s.caches[typeURL].UpdateResources(changed, removed)
	s.current[typeURL] = set
}

// scriptClient is a delta stream that acknowledges every response (or
// rejects it, when told) and collects what it received.
type scriptClient struct {
	st   discovery.AggregatedDiscoveryService_DeltaAggregatedResourcesClient
	got  chan string
	nack chan bool
	errc chan error

	mu   sync.Mutex
	held map[string]map[string]string // type -> name -> version, as the responses make it
}

// view is what the client holds, as text.
func (c *scriptClient) view() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for typ, m := range c.held {
		for name, v := range m {
			out = append(out, typ+" "+name+"@"+v[:8])
		}
	}
	slices.Sort(out)
	return strings.Join(out, " ")
}

func dialScript(t *testing.T, addr string) *scriptClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	st, err := discovery.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c := &scriptClient{st: st, got: make(chan string, 100), nack: make(chan bool, 100), errc: make(chan error, 1), held: map[string]map[string]string{}}
	go func() {
		for {
			r, err := st.Recv()
			if err != nil {
				c.errc <- err
				return
			}
			var names []string
			for _, res := range r.GetResources() {
				names = append(names, res.GetName()+"@"+res.GetVersion()[:8])
			}
			slices.Sort(names)
			removed := slices.Sorted(slices.Values(r.GetRemovedResources()))
			c.mu.Lock()
			if c.held[r.GetTypeUrl()] == nil {
				c.held[r.GetTypeUrl()] = map[string]string{}
			}
			for _, res := range r.GetResources() {
				c.held[r.GetTypeUrl()][res.GetName()] = res.GetVersion()
			}
			for _, name := range r.GetRemovedResources() {
				delete(c.held[r.GetTypeUrl()], name)
			}
			c.mu.Unlock()
			// Nonces are the stream's count of responses: they part ways
			// once one server coalesces two publishes the other does not.
			c.got <- fmt.Sprintf("%s version=%s resources=%v removed=%v", strings.TrimPrefix(r.GetTypeUrl(), "type.googleapis.com/"),
				r.GetSystemVersionInfo(), names, removed)
			ack := &discovery.DeltaDiscoveryRequest{TypeUrl: r.GetTypeUrl(), ResponseNonce: r.GetNonce()}
			select {
			case <-c.nack:
				ack.ErrorDetail = &rpcstatus.Status{Code: 3, Message: "no"}
			default:
			}
			if err := st.Send(ack); err != nil {
				c.errc <- err
				return
			}
		}
	}()
	return c
}

// collect returns what arrived until nothing did for a while.
func (c *scriptClient) collect(quiet time.Duration) []string {
	var out []string
	for {
		select {
		case s := <-c.got:
			out = append(out, s)
		case err := <-c.errc:
			return append(out, "error: "+err.Error())
		case <-time.After(quiet):
			return out
		}
	}
}

// TestStreamsMatchGoControlPlane: on random scripts of publishes and
// client requests (wildcard, legacy wildcard, named subscriptions,
// initial versions, unsubscriptions, rejections), the server's delta
// streams send what go-control-plane's delta server over linear caches
// sent: the same resources, versions, removals, nonces and system
// versions, response by response; where go-control-plane sends two
// publishes made back to back as two responses (it waits for the first's
// acknowledgement) the new streams may send one, and then the client ends
// up holding the same.
func TestStreamsMatchGoControlPlane(t *testing.T) {
	if testing.Short() {
		t.Skip("timing-based")
	}
	types := []string{AddressType, AuthorizationType}
	for seed := range uint64(8) {
		r := rand.New(rand.NewPCG(seed, 99))
		ctx, cancel := context.WithCancel(context.Background())
		lOld, _ := net.Listen("tcp", "127.0.0.1:0")
		lNew, _ := net.Listen("tcp", "127.0.0.1:0")
		gOld, gNew := grpc.NewServer(), grpc.NewServer()
		old := newLinearServer(ctx, gOld, types...)
		cur := New(ctx, nil, types...)
		cur.Register(gNew)
		go gOld.Serve(lOld)
		go gNew.Serve(lNew)

		sets := map[string]map[string]proto.Message{}
		publish := func() string {
			typ := types[r.IntN(2)]
			set := map[string]proto.Message{}
			for i := range 8 {
				if r.IntN(3) > 0 {
					set[fmt.Sprintf("n%d", i)] = &security.Authorization{Name: fmt.Sprintf("n%d", i), Action: security.Action(r.IntN(2))}
				}
			}
			sets[typ] = set
			old.Publish(typ, set)
			if err := cur.Publish(typ, set); err != nil {
				t.Fatal(err)
			}
			return fmt.Sprintf("publish %s %d", typ, len(set))
		}
		for range 2 {
			publish()
		}
		// Versions a client might hold: current ones, stale ones, gone ones.
		initial := func() map[string]string {
			if r.IntN(2) == 0 {
				return nil
			}
			m := map[string]string{"gone": "x", "n1": "stale"}
			for _, name := range cur.Resources(AuthorizationType) {
				if r.IntN(2) == 0 {
					cur.mu.Lock()
					m[name] = cur.types[AuthorizationType].res[name].wire.GetVersion()
					cur.mu.Unlock()
				}
			}
			return m
		}
		cOld, cNew := dialScript(t, lOld.Addr().String()), dialScript(t, lNew.Addr().String())
		send := func(req *discovery.DeltaDiscoveryRequest) {
			if err := cOld.st.Send(proto.Clone(req).(*discovery.DeltaDiscoveryRequest)); err != nil {
				t.Fatal(err)
			}
			if err := cNew.st.Send(req); err != nil {
				t.Fatal(err)
			}
		}
		for _, typ := range types {
			req := &discovery.DeltaDiscoveryRequest{TypeUrl: typ}
			switch r.IntN(3) {
			case 0: // legacy wildcard
			case 1:
				req.ResourceNamesSubscribe = []string{"*"}
			case 2:
				req.ResourceNamesSubscribe = []string{"n0", "n2", "n5", "gone"}
			}
			if typ == AuthorizationType {
				req.InitialResourceVersions = initial()
				for _, c := range []*scriptClient{cOld, cNew} { // what the client holds from before
					c.mu.Lock()
					c.held[typ] = map[string]string{}
					for name, v := range req.InitialResourceVersions {
						c.held[typ][name] = v + "........"
					}
					c.mu.Unlock()
				}
			}
			send(req)
			if w, g := cOld.collect(40*time.Millisecond), cNew.collect(15*time.Millisecond); !slices.Equal(w, g) {
				t.Fatalf("seed %d: opening %s: got\n%s\nwant\n%s", seed, typ, strings.Join(g, "\n"), strings.Join(w, "\n"))
			}
		}
		for step := range 25 {
			var what string
			switch r.IntN(5) {
			case 0, 1:
				what = publish()
			case 2:
				typ := types[r.IntN(2)]
				names := []string{fmt.Sprintf("n%d", r.IntN(8)), []string{"*", "n7", "n3"}[r.IntN(3)]}
				if r.IntN(2) == 0 {
					send(&discovery.DeltaDiscoveryRequest{TypeUrl: typ, ResourceNamesSubscribe: names})
					what = fmt.Sprintf("subscribe %s %v", typ, names)
				} else {
					send(&discovery.DeltaDiscoveryRequest{TypeUrl: typ, ResourceNamesUnsubscribe: names})
					what = fmt.Sprintf("unsubscribe %s %v", typ, names)
				}
			case 3:
				cOld.nack <- true
				cNew.nack <- true
				what = publish() + " (rejected)"
			case 4:
				what = publish() + "; " + publish()
			}
			w, g := cOld.collect(40*time.Millisecond), cNew.collect(15*time.Millisecond)
			if vo, vn := cOld.view(), cNew.view(); vo != vn {
				t.Fatalf("seed %d step %d (%s): the client holds\n%s\nwant\n%s", seed, step, what, vn, vo)
			}
			if !strings.Contains(what, "; ") && !slices.Equal(w, g) {
				t.Fatalf("seed %d step %d (%s): got\n%s\nwant\n%s", seed, step, what, strings.Join(g, "\n"), strings.Join(w, "\n"))
			}
			// Drain leftover rejection marks so both stay in step.
			select {
			case <-cOld.nack:
				<-cNew.nack
			default:
			}
		}
		gOld.Stop()
		gNew.Stop()
		cancel()
	}
}
