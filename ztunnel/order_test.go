package ztunnel

import (
	"context"
	"net/netip"
	"sync"
	"testing"
	"time"

	"istio.io/istio/pkg/workloadapi"
)

func TestOrderGate(t *testing.T) {
	t.Run("same key: set-ups run in reservation order", func(t *testing.T) {
		var g orderGate
		const n = 50
		turns := make([]*turn, n)
		for i := range turns {
			turns[i] = g.reserve("10.0.0.1:80")
		}
		var mu sync.Mutex
		var order []int
		var wg sync.WaitGroup
		// Start the goroutines in reverse: the gate, not the scheduler,
		// must decide.
		for i := n - 1; i >= 0; i-- {
			wg.Add(1)
			go func() {
				defer wg.Done()
				turns[i].wait(context.Background())
				mu.Lock()
				order = append(order, i)
				mu.Unlock()
				turns[i].done()
			}()
		}
		wg.Wait()
		for i, got := range order {
			if got != i {
				t.Fatalf("set-up order %v, want 0..%d", order, n-1)
			}
		}
	})
	t.Run("other keys do not wait", func(t *testing.T) {
		var g orderGate
		first := g.reserve("a")
		other := g.reserve("b")
		done := make(chan struct{})
		go func() { other.wait(context.Background()); close(done) }()
		select {
		case <-done:
		case <-time.After(time.Second):
			t.Fatal("a connection to another destination waited")
		}
		first.done()
	})
	t.Run("a stuck predecessor holds only until the deadline", func(t *testing.T) {
		var g orderGate
		_ = g.reserve("a") // never done
		next := g.reserve("a")
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		start := time.Now()
		next.wait(ctx)
		if d := time.Since(start); d > time.Second {
			t.Fatalf("waited %s", d)
		}
	})
	t.Run("done twice is harmless and the key is forgotten", func(t *testing.T) {
		var g orderGate
		a := g.reserve("a")
		a.done()
		a.done()
		if len(g.tail) != 0 {
			t.Fatalf("tail keeps %v", g.tail)
		}
		var nilTurn *turn
		nilTurn.wait(context.Background())
		nilTurn.done()
	})
}

func TestCountListeners(t *testing.T) {
	const header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
	for _, tc := range []struct {
		name    string
		in      string
		want    map[uint16]int
		wantErr bool
	}{
		{"empty", header, map[uint16]int{}, false},
		{"two listeners on 15001, one established ignored",
			header +
				"   0: 00000000:3A99 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0\n" +
				"   1: 00000000:3A99 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 100 0 0 10 0\n" +
				"   2: 0200000A:3A99 0300000A:C350 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0000000000000000 100 0 0 10 0\n",
			map[uint16]int{15001: 2}, false},
		{"tcp6", header + "   0: 00000000000000000000000000000000:3AA0 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4 1\n",
			map[uint16]int{15008: 1}, false},
		{"malformed port", header + "   0: 00000000:ZZZZ 00000000:0000 0A\n", nil, true},
		{"no colon", header + "   0: 00000000 00000000:0000 0A\n", nil, true},
		{"short line ignored", header + "garbage\n", map[uint16]int{}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := map[uint16]int{}
			err := countListeners([]byte(tc.in), got)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, want error %v", err, tc.wantErr)
			}
			if tc.wantErr {
				return
			}
			if len(got) != len(tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
			for k, v := range tc.want {
				if got[k] != v {
					t.Fatalf("got %v, want %v", got, tc.want)
				}
			}
		})
	}
}

func TestIndexReadiness(t *testing.T) {
	for _, tc := range []struct {
		name      string
		addresses bool // a full state of addresses arrived
		policies  bool
		want      bool
	}{
		{"nothing yet", false, false, false},
		{"addresses only", true, false, false},
		{"policies only", false, true, false},
		{"both", true, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			x := NewIndex()
			x.Update(nil, nil, false) // a delta that is not a full state
			x.UpdatePolicies(nil, nil, false)
			if tc.addresses {
				x.Update(nil, nil, true)
			}
			if tc.policies {
				x.UpdatePolicies(nil, nil, true)
			}
			if x.IsReady() != tc.want {
				t.Fatalf("ready = %v, want %v", x.IsReady(), tc.want)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
			defer cancel()
			if err := x.WaitReady(ctx); (err == nil) != tc.want {
				t.Fatalf("WaitReady = %v, want ready %v", err, tc.want)
			}
		})
	}
	t.Run("WaitWorkloadByIP wakes on the update that brings the workload", func(t *testing.T) {
		x := NewIndex()
		got := make(chan bool, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			got <- x.WaitWorkloadByIP(ctx, netip.MustParseAddr("10.1.0.9")) != nil
		}()
		time.Sleep(20 * time.Millisecond)
		x.Update(nil, nil, true) // an unrelated update
		x.Update([]*workloadapi.Address{workload("w", "10.1.0.9", "sa", true, "", 0)}, nil, false)
		if !<-got {
			t.Fatal("the waiter did not see the workload")
		}
	})
}
