package ztunnel

import (
	"context"
	"sync"
)

// orderGate keeps connection set-up in accept order per key (one source
// pod to one destination). Applications may rely on the order in which
// they opened connections (iperf3 assigns its streams' roles by accept
// order), and with one goroutine per connection, set-ups that race would
// reach the destination in any order. A connection may start its set-up
// (the upstream dial, or the HBONE CONNECT and its answer) only when the
// one accepted before it with the same key has finished its own: by then
// the destination has accepted that one.
type orderGate struct {
	mu   sync.Mutex
	tail map[string]chan struct{} // done channel of the last turn per key
}

// turn is one connection's place in its key's queue.
type turn struct {
	g          *orderGate
	key        string
	prev, mine chan struct{}
	once       sync.Once
}

// reserve takes the next place for key. It never blocks: call it from the
// accept loop, so that places follow accept order.
func (g *orderGate) reserve(key string) *turn {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.tail == nil {
		g.tail = map[string]chan struct{}{}
	}
	t := &turn{g: g, key: key, prev: g.tail[key], mine: make(chan struct{})}
	g.tail[key] = t.mine
	return t
}

// wait returns when the previous connection with the same key has
// finished its set-up, or when ctx is done (its set-up deadline bounds
// how long a stuck predecessor can hold the ones behind it).
func (t *turn) wait(ctx context.Context) {
	if t == nil || t.prev == nil {
		return
	}
	select {
	case <-t.prev:
	case <-ctx.Done():
	}
}

// done lets the next connection with the same key start its set-up. It
// may be called more than once.
func (t *turn) done() {
	if t == nil {
		return
	}
	t.once.Do(func() {
		close(t.mine)
		t.g.mu.Lock()
		if t.g.tail[t.key] == t.mine {
			delete(t.g.tail, t.key)
		}
		t.g.mu.Unlock()
	})
}
