package xds_test

import (
	"context"
	"net"
	"slices"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"

	"github.com/ambit-mesh/ambit/controlplane/xds"
)

// deltaClient is a bare delta ADS stream that subscribes to every type and
// acknowledges what it receives.
type deltaClient struct {
	t      *testing.T
	stream discovery.AggregatedDiscoveryService_DeltaAggregatedResourcesClient
}

func dial(t *testing.T, addr string, types ...string) *deltaClient {
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
	for _, typ := range types {
		if err := st.Send(&discovery.DeltaDiscoveryRequest{Node: &corev3.Node{Id: "ztunnel~node1"}, TypeUrl: typ}); err != nil {
			t.Fatal(err)
		}
	}
	return &deltaClient{t: t, stream: st}
}

// next receives one response (and acks it): the names it carries and the
// names it removes.
func (c *deltaClient) next() (typ string, names, removed []string) {
	c.t.Helper()
	r := c.nextResponse()
	for _, res := range r.GetResources() {
		names = append(names, res.GetName())
	}
	slices.Sort(names)
	removed = slices.Sorted(slices.Values(r.GetRemovedResources()))
	return r.GetTypeUrl(), names, removed
}

// nextResponse receives one response and acks it.
func (c *deltaClient) nextResponse() *discovery.DeltaDiscoveryResponse {
	c.t.Helper()
	type result struct {
		r   *discovery.DeltaDiscoveryResponse
		err error
	}
	ch := make(chan result, 1)
	go func() { r, err := c.stream.Recv(); ch <- result{r, err} }()
	select {
	case res := <-ch:
		if res.err != nil {
			c.t.Fatal(res.err)
		}
		_ = c.stream.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: res.r.GetTypeUrl(), ResponseNonce: res.r.GetNonce()})
		return res.r
	case <-time.After(5 * time.Second):
		c.t.Fatal("no response")
	}
	return nil
}

func authz(name string, action security.Action) *security.Authorization {
	return &security.Authorization{Name: name, Namespace: "demo", Action: action, Scope: security.Scope_WORKLOAD_SELECTOR}
}

// TestPublishSendsOnlyChanges: one Publish per type, each sending the
// changed and removed resources only, and the proxy's view recorded.
func TestPublishSendsOnlyChanges(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := startServer(t, l)
	if err := s.Publish("type.googleapis.com/not.Registered", nil); err == nil {
		t.Error("publishing an unregistered type succeeded")
	}
	set := map[string]proto.Message{"demo/a": authz("a", security.Action_ALLOW), "demo/b": authz("b", security.Action_ALLOW)}
	if err := s.Publish(xds.AuthorizationType, set); err != nil {
		t.Fatal(err)
	}
	c := dial(t, l.Addr().String(), xds.AuthorizationType)
	if typ, names, _ := c.next(); typ != xds.AuthorizationType || !slices.Equal(names, []string{"demo/a", "demo/b"}) {
		t.Fatalf("initial %s %v", typ, names)
	}
	for _, step := range []struct {
		name             string
		set              map[string]proto.Message
		changed, removed []string
	}{
		{"one changed, one added", map[string]proto.Message{"demo/a": authz("a", security.Action_ALLOW), "demo/b": authz("b", security.Action_DENY), "demo/c": authz("c", security.Action_ALLOW)},
			[]string{"demo/b", "demo/c"}, nil},
		{"one removed", map[string]proto.Message{"demo/b": authz("b", security.Action_DENY), "demo/c": authz("c", security.Action_ALLOW)},
			nil, []string{"demo/a"}},
	} {
		if err := s.Publish(xds.AuthorizationType, step.set); err != nil {
			t.Fatal(err)
		}
		_, names, removed := c.next()
		if !slices.Equal(names, step.changed) || !slices.Equal(removed, step.removed) {
			t.Errorf("%s: sent %v removed %v, want %v and %v", step.name, names, removed, step.changed, step.removed)
		}
	}
	// The same set again sends nothing and counts no push.
	pushes := s.Stats().Pushes[xds.AuthorizationType]
	if err := s.Publish(xds.AuthorizationType, map[string]proto.Message{"demo/b": authz("b", security.Action_DENY), "demo/c": authz("c", security.Action_ALLOW)}); err != nil {
		t.Fatal(err)
	}
	if got := s.Stats().Pushes[xds.AuthorizationType]; got != pushes {
		t.Errorf("an unchanged publish counted as a push (%d -> %d)", pushes, got)
	}
	if got := s.Resources(xds.AuthorizationType); !slices.Equal(got, []string{"demo/b", "demo/c"}) {
		t.Errorf("served %v", got)
	}
	eventually(t, "the proxy's view", func() bool {
		ps := s.Proxies()
		if len(ps) != 1 || ps[0].Node != "ztunnel~node1" {
			return false
		}
		sent := ps[0].Sent[xds.AuthorizationType]
		return len(sent) == 2 && sent["demo/b"] != "" && sent["demo/c"] != "" && s.Stats().Connected == 1
	})
}

// TestPublishDelta: a delta sends what changed and what went, and keeps
// the rest; an equal message or an unknown removal sends nothing.
func TestPublishDelta(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := startServer(t, l)
	if err := s.PublishDelta("type.googleapis.com/not.Registered", nil, nil); err == nil {
		t.Error("publishing an unregistered type succeeded")
	}
	a, b := authz("a", security.Action_ALLOW), authz("b", security.Action_ALLOW)
	if err := s.PublishDelta(xds.AuthorizationType, map[string]proto.Message{"demo/a": a, "demo/b": b}, nil); err != nil {
		t.Fatal(err)
	}
	c := dial(t, l.Addr().String(), xds.AuthorizationType)
	if _, names, _ := c.next(); !slices.Equal(names, []string{"demo/a", "demo/b"}) {
		t.Fatalf("initial %v", names)
	}
	if err := s.PublishDelta(xds.AuthorizationType, map[string]proto.Message{"demo/c": authz("c", security.Action_DENY)}, []string{"demo/a"}); err != nil {
		t.Fatal(err)
	}
	if _, names, removed := c.next(); !slices.Equal(names, []string{"demo/c"}) || !slices.Equal(removed, []string{"demo/a"}) {
		t.Errorf("sent %v removed %v", names, removed)
	}
	pushes := s.Stats().Pushes[xds.AuthorizationType]
	if err := s.PublishDelta(xds.AuthorizationType, map[string]proto.Message{"demo/b": authz("b", security.Action_ALLOW)}, []string{"demo/zz"}); err != nil {
		t.Fatal(err)
	}
	if got := s.Stats().Pushes[xds.AuthorizationType]; got != pushes {
		t.Errorf("an equal message and an unknown removal counted as a push")
	}
	if got := s.Resources(xds.AuthorizationType); !slices.Equal(got, []string{"demo/b", "demo/c"}) {
		t.Errorf("served %v", got)
	}
	// A whole set after deltas replaces them.
	if err := s.Publish(xds.AuthorizationType, map[string]proto.Message{"demo/c": authz("c", security.Action_DENY)}); err != nil {
		t.Fatal(err)
	}
	if _, names, removed := c.next(); len(names) != 0 || !slices.Equal(removed, []string{"demo/b"}) {
		t.Errorf("whole set: sent %v removed %v", names, removed)
	}
}

// TestHoldUntilReady: a held server answers nothing, not even the empty
// first answer, until its state is whole; then the first answer is that
// state.
func TestHoldUntilReady(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := xds.New(ctx, nil, xds.AmbientTypes()...)
	ready := make(chan struct{})
	s.HoldUntil(ready)
	g := grpc.NewServer()
	s.Register(g)
	go g.Serve(l)
	defer g.Stop()

	c := dial(t, l.Addr().String(), xds.AddressType)
	got := make(chan *discovery.DeltaDiscoveryResponse, 4)
	go func() {
		for {
			r, err := c.stream.Recv()
			if err != nil {
				close(got)
				return
			}
			got <- r
		}
	}()
	if err := s.Publish(xds.AddressType, xds.Typed(map[string]*workloadapi.Address{"Kubernetes//Pod/demo/a": wl("a", "10.244.0.1")})); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-got:
		t.Fatalf("a held server answered: %d resources", len(r.GetResources()))
	case <-time.After(300 * time.Millisecond):
	}
	close(ready)
	select {
	case r := <-got:
		if len(r.GetResources()) != 1 || r.GetResources()[0].GetName() != "Kubernetes//Pod/demo/a" {
			t.Errorf("first answer after the hold: %d resources, want the published one", len(r.GetResources()))
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no answer after the hold ended")
	}
}
