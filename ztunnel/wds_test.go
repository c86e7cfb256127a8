package ztunnel

import (
	"context"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/anypb"
	"istio.io/istio/pkg/workloadapi"

	"github.com/ambit-mesh/ambit/internal/xdspart"
)

// scriptADS is a delta ADS server that answers every stream with the same
// script of responses, once both types are subscribed, then waits for
// the stream to be ended (end).
type scriptADS struct {
	discovery.UnimplementedAggregatedDiscoveryServiceServer
	script []*discovery.DeltaDiscoveryResponse
	end    chan struct{} // a value ends the current stream

	mu   sync.Mutex
	acks []string // every acknowledged nonce
}

func (s *scriptADS) DeltaAggregatedResources(st discovery.AggregatedDiscoveryService_DeltaAggregatedResourcesServer) error {
	for range 2 {
		if _, err := st.Recv(); err != nil {
			return err
		}
	}
	go func() {
		for {
			r, err := st.Recv()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.acks = append(s.acks, r.GetResponseNonce())
			s.mu.Unlock()
		}
	}()
	for _, r := range s.script {
		if err := st.Send(r); err != nil {
			return err
		}
		time.Sleep(5 * time.Millisecond) // let the client apply each part on its own
	}
	select {
	case <-s.end:
		return fmt.Errorf("stream ended by the test")
	case <-st.Context().Done():
		return nil
	}
}

func addressResource(t *testing.T, name, ip string) *discovery.Resource {
	t.Helper()
	a := &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: &workloadapi.Workload{
		Uid: name, Name: name, Namespace: "demo", Addresses: [][]byte{net.ParseIP(ip).To4()}}}}
	any, err := anypb.New(a)
	if err != nil {
		t.Fatal(err)
	}
	return &discovery.Resource{Name: name, Version: "1", Resource: any}
}

// TestSplitStateAppliedWhole: a state the control plane split into parts
// (internal/xdspart) is applied when its last part arrives: the index is
// never ready with part of it, and on a reconnection, when the first
// state again drops what the control plane no longer has, no workload in
// a later part is dropped meanwhile.
func TestSplitStateAppliedWhole(t *testing.T) {
	const n = 6
	var res []*discovery.Resource
	for i := range n {
		res = append(res, addressResource(t, fmt.Sprintf("w%d", i), fmt.Sprintf("10.0.0.%d", i+1)))
	}
	srv := &scriptADS{end: make(chan struct{}, 1), script: []*discovery.DeltaDiscoveryResponse{
		{TypeUrl: authorizationType, Nonce: "1"},
		{TypeUrl: addressType, Nonce: xdspart.Nonce("2", 1), Resources: res[:2]},
		{TypeUrl: addressType, Nonce: xdspart.Nonce("2", 2), Resources: res[2:4]},
		{TypeUrl: addressType, Nonce: "2", Resources: res[4:]},
	}}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	discovery.RegisterAggregatedDiscoveryServiceServer(g, srv)
	go g.Serve(l)
	t.Cleanup(g.Stop)
	conn, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })

	idx := NewIndex()
	var mu sync.Mutex
	var seen []int // workloads held after each change, once ready
	idx.onChange = func() {
		if idx.IsReady() {
			mu.Lock()
			seen = append(seen, len(idx.Workloads()))
			mu.Unlock()
		}
	}
	c := &WDSClient{Conn: conn, Index: idx, NodeID: "ztunnel~test"}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go c.Run(ctx)

	acked := func(k int) func() bool {
		return func() bool { srv.mu.Lock(); defer srv.mu.Unlock(); return len(srv.acks) >= k }
	}
	waitUntil(t, "the first state acknowledged", acked(4))
	if !idx.IsReady() || len(idx.Workloads()) != n {
		t.Fatalf("after the last part: ready %v with %d workloads, want %d", idx.IsReady(), len(idx.Workloads()), n)
	}
	srv.end <- struct{}{} // the stream breaks; the client reconnects and gets the state again
	waitUntil(t, "the second state acknowledged", acked(8))
	mu.Lock()
	defer mu.Unlock()
	for i, k := range seen {
		if k != n {
			t.Errorf("change %d: ready with %d workloads, want %d (all changes: %v)", i, k, n, seen)
		}
	}
	srv.mu.Lock()
	defer srv.mu.Unlock()
	want := []string{"1", xdspart.Nonce("2", 1), xdspart.Nonce("2", 2), "2"}
	for i, a := range srv.acks {
		if a != want[i%4] {
			t.Errorf("ack %d names nonce %q, want %q (every part acknowledged, in order)", i, a, want[i%4])
		}
	}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
