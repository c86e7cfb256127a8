package ztunnel

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ambit-mesh/ambit/nsnet"
	"github.com/ambit-mesh/ambit/redirect"
)

// Handing a node over to a new ztunnel without refusing a connection
// (as upstream istio-cni and ztunnel do it): the new ztunnel receives every pod from the node agent and
// binds its in-pod listeners with SO_REUSEPORT next to ours. Handoff waits
// for that, pod by pod, and only then closes our listeners, so that a new
// connection always finds a listener; tcp_migrate_req (set in every pod's
// namespace when its proxy starts) moves connections still queued on a
// closing listener to the new one instead of resetting them. Open
// connections stay with us and drain (see Drain).

// handoffPoll is how often Handoff looks for the replacement's listeners.
const handoffPoll = 20 * time.Millisecond

// Handoff closes every pod's listeners once another process has bound its
// own on the same ports in that pod's namespace, or when ctx is done,
// whichever comes first. Connections already accepted are untouched. It
// returns the number of pods handed over to a replacement.
func (z *Ztunnel) Handoff(ctx context.Context) int {
	z.mu.Lock()
	ps := make([]*podProxy, 0, len(z.proxies))
	for _, p := range z.proxies {
		ps = append(ps, p)
	}
	z.mu.Unlock()
	var wg sync.WaitGroup
	var mu sync.Mutex
	shared := 0
	for _, p := range ps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ok := p.awaitReplacement(ctx)
			p.closeListeners()
			if ok {
				mu.Lock()
				shared++
				mu.Unlock()
			}
			z.cfg.Logger.Info("pod listeners closed for hand-off", "pod", p.info.GetNamespace()+"/"+p.info.GetName(), "replacement", ok)
		}()
	}
	wg.Wait()
	return shared
}

// awaitReplacement polls the pod's namespace until every ztunnel port has
// a listener besides ours, or ctx is done; it reports which.
func (p *podProxy) awaitReplacement(ctx context.Context) bool {
	t := time.NewTicker(handoffPoll)
	defer t.Stop()
	for {
		if ok, err := p.replacementBound(); err == nil && ok {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-p.stopped:
			return false
		case <-t.C:
		}
	}
}

// replacementBound reports whether each of the pod's ztunnel ports has
// more listening sockets than ours.
func (p *podProxy) replacementBound() (bool, error) {
	var counts map[uint16]int
	err := p.netns.Do(func() error {
		var err error
		counts, err = listeningPorts()
		return err
	})
	if err != nil {
		return false, err
	}
	for _, port := range []uint16{redirect.OutboundPort, redirect.InboundPort, redirect.HBONEPort} {
		if counts[port] < 2 {
			return false, nil
		}
	}
	return true, nil
}

// listeningPorts counts the TCP sockets in state LISTEN per local port in
// the calling thread's network namespace.
func listeningPorts() (map[uint16]int, error) {
	counts := map[uint16]int{}
	for _, f := range []string{"/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"} {
		b, err := os.ReadFile(f)
		if os.IsNotExist(err) {
			continue // no IPv6 in this kernel
		}
		if err != nil {
			return nil, err
		}
		if err := countListeners(b, counts); err != nil {
			return nil, fmt.Errorf("%s: %w", f, err)
		}
	}
	return counts, nil
}

// countListeners parses /proc/net/tcp{,6}: "sl local_address rem_address
// st ...", addresses as HEXIP:HEXPORT, state 0A for LISTEN.
func countListeners(b []byte, counts map[uint16]int) error {
	sc := bufio.NewScanner(bytes.NewReader(b))
	first := true
	for sc.Scan() {
		if first {
			first = false
			continue // header
		}
		f := strings.Fields(sc.Text())
		if len(f) < 4 || f[3] != "0A" {
			continue
		}
		i := strings.LastIndexByte(f[1], ':')
		if i < 0 {
			return fmt.Errorf("malformed local address %q", f[1])
		}
		port, err := strconv.ParseUint(f[1][i+1:], 16, 16)
		if err != nil {
			return fmt.Errorf("malformed local port %q: %w", f[1], err)
		}
		counts[uint16(port)]++
	}
	return sc.Err()
}

// enableRequestMigration sets net.ipv4.tcp_migrate_req in the pod's
// namespace, so that connections queued on a listener that closes move to
// another listener of its SO_REUSEPORT group rather than being reset.
func enableRequestMigration(ns *nsnet.Netns) error {
	return ns.Do(func() error {
		return os.WriteFile("/proc/sys/net/ipv4/tcp_migrate_req", []byte("1"), 0o644)
	})
}
