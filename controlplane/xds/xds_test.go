package xds_test

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"istio.io/istio/pkg/workloadapi"

	"github.com/ambit-mesh/ambit/controlplane/xds"
	"github.com/ambit-mesh/ambit/ztunnel"
)

func wl(name, ip string) *workloadapi.Address {
	return &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: &workloadapi.Workload{
		Uid: "Kubernetes//Pod/demo/" + name, Name: name, Namespace: "demo", Addresses: [][]byte{netip.MustParseAddr(ip).AsSlice()}}}}
}

func startServer(t *testing.T, l net.Listener) *xds.Server {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := xds.New(ctx, nil, xds.AmbientTypes()...)
	g := grpc.NewServer()
	s.Register(g)
	go g.Serve(l)
	t.Cleanup(func() { g.Stop(); cancel() })
	return s
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestDeltaUpdatesReachZtunnel(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	s := startServer(t, l)
	if err := s.Publish(xds.AddressType, xds.Typed(map[string]*workloadapi.Address{"Kubernetes//Pod/demo/a": wl("a", "10.244.1.2"), "Kubernetes//Pod/demo/b": wl("b", "10.244.1.3")})); err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	idx := ztunnel.NewIndex()
	c := &ztunnel.WDSClient{Conn: conn, Index: idx, NodeID: "ztunnel~node1"}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go c.Run(ctx)
	eventually(t, "initial state", func() bool { return len(idx.Workloads()) == 2 })
	if !c.Synced() {
		t.Error("not synced after the first response")
	}

	// A change, an addition and a removal arrive as a delta.
	s.Publish(xds.AddressType, xds.Typed(map[string]*workloadapi.Address{"Kubernetes//Pod/demo/a": wl("a", "10.244.1.9"), "Kubernetes//Pod/demo/c": wl("c", "10.244.1.4")}))
	eventually(t, "delta", func() bool {
		a := idx.Workload("Kubernetes//Pod/demo/a")
		return a != nil && idx.WorkloadByIP(netip.MustParseAddr("10.244.1.9")) != nil &&
			idx.Workload("Kubernetes//Pod/demo/b") == nil && idx.Workload("Kubernetes//Pod/demo/c") != nil
	})

	// The control plane restarts with another state: the stale entry goes.
	s.Publish(xds.AddressType, xds.Typed(map[string]*workloadapi.Address{}))
	eventually(t, "removal", func() bool { return len(idx.Workloads()) == 0 })
}

func TestReconnectDropsStale(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	s := xds.New(ctx, nil, xds.AmbientTypes()...)
	g := grpc.NewServer()
	s.Register(g)
	go g.Serve(l)
	s.Publish(xds.AddressType, xds.Typed(map[string]*workloadapi.Address{"Kubernetes//Pod/demo/a": wl("a", "10.244.1.2"), "Kubernetes//Pod/demo/b": wl("b", "10.244.1.3")}))

	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	idx := ztunnel.NewIndex()
	c := &ztunnel.WDSClient{Conn: conn, Index: idx, NodeID: "ztunnel~node1"}
	cctx, ccancel := context.WithCancel(context.Background())
	defer ccancel()
	go c.Run(cctx)
	eventually(t, "initial state", func() bool { return len(idx.Workloads()) == 2 })

	g.Stop()
	cancel()
	eventually(t, "disconnect noticed", func() bool { return !c.Synced() })
	if len(idx.Workloads()) != 2 {
		t.Fatal("the index must keep serving while the control plane is away")
	}
	l2, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	s2 := startServer(t, l2)
	s2.Publish(xds.AddressType, xds.Typed(map[string]*workloadapi.Address{"Kubernetes//Pod/demo/b": wl("b", "10.244.1.3")}))
	eventually(t, "resync without the stale pod", func() bool {
		return c.Synced() && len(idx.Workloads()) == 1 && idx.Workload("Kubernetes//Pod/demo/b") != nil
	})
}
