package xds_test

import (
	"context"
	"net"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"

	"github.com/ambit-mesh/ambit/controlplane/xds"
)

// TestTypesInPublishOrder: a policy published before the workload naming
// it reaches the proxy first, even when the workload type had a change
// waiting.
func TestTypesInPublishOrder(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := startServer(t, l)
	c := dial(t, l.Addr().String(), xds.AddressType, xds.AuthorizationType)
	for range 2 { // the empty first answers
		c.next()
	}
	for i := range 20 {
		w := wl("a", "10.244.1.2")
		w.GetWorkload().AuthorizationPolicies = []string{"demo/p" + string(rune('a'+i))}
		if err := s.PublishDelta(xds.AuthorizationType, map[string]proto.Message{"demo/p" + string(rune('a'+i)): authz("p", security.Action_ALLOW)}, nil); err != nil {
			t.Fatal(err)
		}
		if err := s.PublishDelta(xds.AddressType, map[string]proto.Message{"Kubernetes//Pod/demo/a": w}, nil); err != nil {
			t.Fatal(err)
		}
		if typ, _, _ := c.next(); typ != xds.AuthorizationType {
			t.Fatalf("round %d: %s first", i, typ)
		}
		if typ, _, _ := c.next(); typ != xds.AddressType {
			t.Fatalf("round %d: %s second", i, typ)
		}
	}
}

// TestStateOfTheWorld: state-of-the-world ADS streams are still served
// (by go-control-plane), with what was published before and after they
// opened.
func TestStateOfTheWorld(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := startServer(t, l)
	if err := s.Publish(xds.AddressType, xds.Typed(map[string]*workloadapi.Address{"Kubernetes//Pod/demo/a": wl("a", "10.244.1.2")})); err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&discovery.DiscoveryRequest{TypeUrl: xds.AddressType}); err != nil {
		t.Fatal(err)
	}
	r, err := st.Recv()
	if err != nil || len(r.GetResources()) != 1 {
		t.Fatalf("first response %v, %v", r, err)
	}
	if err := st.Send(&discovery.DiscoveryRequest{TypeUrl: xds.AddressType, VersionInfo: r.GetVersionInfo(), ResponseNonce: r.GetNonce()}); err != nil {
		t.Fatal(err)
	}
	if err := s.Publish(xds.AddressType, xds.Typed(map[string]*workloadapi.Address{"Kubernetes//Pod/demo/a": wl("a", "10.244.1.2"), "Kubernetes//Pod/demo/b": wl("b", "10.244.1.3")})); err != nil {
		t.Fatal(err)
	}
	if r, err = st.Recv(); err != nil || len(r.GetResources()) == 0 {
		t.Fatalf("update %v, %v", r, err)
	}
}
