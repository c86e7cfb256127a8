package xds_test

import (
	"context"
	"fmt"
	"net"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"istio.io/istio/pkg/workloadapi"

	"github.com/ambit-mesh/ambit/controlplane/xds"
	"github.com/ambit-mesh/ambit/ztunnel"
)

// TestLargeStateIsSplit: a state larger than the response bound reaches
// a proxy whole, in several responses each within the bound, each
// acknowledged; a later change is one small response.
func TestLargeStateIsSplit(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := startServer(t, l)
	const bound = 4 << 10
	s.SetMaxResponseBytes(bound)
	set := map[string]*workloadapi.Address{}
	for i := range 300 {
		name := fmt.Sprintf("p%03d", i)
		set["Kubernetes//Pod/demo/"+name] = wl(name, fmt.Sprintf("10.244.%d.%d", i/250, 1+i%250))
	}
	if err := s.Publish(xds.AddressType, xds.Typed(set)); err != nil {
		t.Fatal(err)
	}
	c := dial(t, l.Addr().String(), xds.AddressType)
	got := map[string]bool{}
	responses := 0
	for len(got) < len(set) {
		r := c.nextResponse()
		if size := proto.Size(r); size > bound {
			t.Fatalf("response of %d bytes over the bound %d", size, bound)
		}
		for _, res := range r.GetResources() {
			got[res.GetName()] = true
		}
		responses++
	}
	if responses < 2 {
		t.Errorf("the whole state came in %d response", responses)
	}
	a := wl("p007", "10.244.9.9")
	set["Kubernetes//Pod/demo/p007"] = a
	if err := s.Publish(xds.AddressType, xds.Typed(set)); err != nil {
		t.Fatal(err)
	}
	if r := c.nextResponse(); len(r.GetResources()) != 1 || r.GetResources()[0].GetName() != "Kubernetes//Pod/demo/p007" {
		t.Errorf("change sent as %d resources", len(r.GetResources()))
	}

	// Ambit's ztunnel client, with gRPC's default receive limit, gets it all.
	conn, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	idx := startWDS(t, conn)
	eventually(t, "the ztunnel holds every workload", func() bool { return len(idx.Workloads()) == len(set) })
}

// startWDS runs Ambit's ztunnel WDS client on conn into a new index.
func startWDS(t *testing.T, conn *grpc.ClientConn) *ztunnel.Index {
	t.Helper()
	idx := ztunnel.NewIndex()
	c := &ztunnel.WDSClient{Conn: conn, Index: idx, NodeID: "ztunnel~node2"}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go c.Run(ctx)
	return idx
}
