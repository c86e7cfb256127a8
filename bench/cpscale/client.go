package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"io"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"

	"github.com/ambit-mesh/ambit/controlplane/xds"
)

// The xDS clients run in a child process (the benchmark binary re-run with
// clientEnv set to the server's address), so that their decoding is not
// counted as the control plane's CPU and memory. The parent drives it over
// stdin ("connect <id>", "digest <id>", "close <id>"; EOF ends it) and reads one JSON
// event per line on its stdout.
const clientEnv = "AMBIT_CPSCALE_CLIENT"

// detailLimit: responses with at most this many resources list them in
// their event (changes); larger ones (the first push) only count.
const detailLimit = 64

// clientEvent is one line of the client process's output.
type clientEvent struct {
	Client int    `json:"c"`
	Event  string `json:"e"` // "msg", "error" or "closed"
	T      int64  `json:"t"` // receipt, Unix nanoseconds
	Err    string `json:"err,omitempty"`
	// For "msg": the response's type, size (its protobuf encoding, what
	// gRPC's receive limit applies to), resources and removals.
	Type      string `json:"type,omitempty"`
	Size      int    `json:"size,omitempty"`
	Resources int    `json:"n,omitempty"`
	Removed   int    `json:"rm,omitempty"`
	// What the client holds after it: counts, and order-independent
	// digests (sums of FNV-64a) of the names of its workloads and services.
	Workloads   int      `json:"w"`
	Services    int      `json:"s"`
	Policies    int      `json:"p"`
	WorkloadSum uint64   `json:"ws"`
	ServiceSum  uint64   `json:"ss"`
	Details     []detail `json:"d,omitempty"`
	// For "digest" (the answer to "digest <id>"): order-independent
	// digests of everything the client holds, content included (see
	// contentHash), and, for a small state, each resource's hash.
	AddressDigest uint64            `json:"ad,omitempty"`
	PolicyDigest  uint64            `json:"pd,omitempty"`
	Hashes        map[string]uint64 `json:"h,omitempty"`
}

// hashLimit: a digest lists each resource's hash when the client holds
// at most this many (to name what differs).
const hashLimit = 2000

// contentHash is one resource's contribution to a digest: FNV-64a of its
// name and its deterministic protobuf encoding. The client re-encodes
// what it decoded, so that map order on the wire does not matter.
func contentHash(name string, m proto.Message) (uint64, error) {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		return 0, err
	}
	h := fnv.New64a()
	h.Write([]byte(name))
	h.Write([]byte{0})
	h.Write(b)
	return h.Sum64(), nil
}

// detail is one resource of a small response.
type detail struct {
	Name    string `json:"name"`
	IP      string `json:"ip,omitempty"`  // a workload's first address
	Rev     string `json:"rev,omitempty"` // a workload's canonical revision
	Removed bool   `json:"removed,omitempty"`
}

func nameSum(name string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(name))
	return h.Sum64()
}

// runClientProcess is the child process's main: it serves the parent's
// commands until stdin ends.
func runClientProcess(addr string, in io.Reader, out io.Writer) error {
	w := bufio.NewWriter(out)
	var mu sync.Mutex
	emit := func(ev clientEvent) {
		mu.Lock()
		defer mu.Unlock()
		b, _ := json.Marshal(ev)
		w.Write(b)
		w.WriteByte('\n')
		w.Flush()
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cancels := map[int]context.CancelFunc{}
	var cmu sync.Mutex
	running := map[int]*benchClient{}
	var wg sync.WaitGroup
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		verb, arg, _ := strings.Cut(strings.TrimSpace(sc.Text()), " ")
		id, err := strconv.Atoi(arg)
		if err != nil {
			return fmt.Errorf("client process: command %q: %w", sc.Text(), err)
		}
		switch verb {
		case "connect":
			cctx, ccancel := context.WithCancel(ctx)
			cancels[id] = ccancel
			wg.Add(1)
			go func() {
				defer wg.Done()
				c := &benchClient{id: id, emit: emit}
				cmu.Lock()
				running[id] = c
				cmu.Unlock()
				if err := c.run(cctx, addr); err != nil && cctx.Err() == nil {
					emit(clientEvent{Client: id, Event: "error", T: time.Now().UnixNano(), Err: err.Error()})
				}
				emit(clientEvent{Client: id, Event: "closed", T: time.Now().UnixNano()})
			}()
		case "digest":
			cmu.Lock()
			c := running[id]
			cmu.Unlock()
			ev := clientEvent{Client: id, Event: "digest"}
			if c == nil {
				ev.Err = "no such client"
			} else {
				c.digest(&ev)
			}
			ev.T = time.Now().UnixNano()
			emit(ev)
		case "close":
			if c := cancels[id]; c != nil {
				c()
			}
		default:
			return fmt.Errorf("client process: unknown command %q", sc.Text())
		}
	}
	cancel()
	wg.Wait()
	return sc.Err()
}

// benchClient is one delta ADS client subscribed as a ztunnel subscribes
// (ztunnel/wds.go): one stream, wildcard subscriptions to the address and
// authorization types, every response decoded and acknowledged (or
// rejected, if a resource does not decode). It uses gRPC's default
// receive limit (4 MiB), as ztunnels do.
type benchClient struct {
	id   int
	emit func(clientEvent)

	kinds                   map[string]byte // address resource name -> 'w' or 's'
	policies                map[string]bool
	workloadSum, serviceSum uint64
	workloads, services     int

	// raw holds each resource's encoding as received, for digests (read
	// by the command loop, hence the lock).
	mu                   sync.Mutex
	rawAddr, rawPolicies map[string][]byte
}

// digest fills ev with the digests of what the client holds.
func (c *benchClient) digest(ev *clientEvent) {
	c.mu.Lock()
	defer c.mu.Unlock()
	small := len(c.rawAddr)+len(c.rawPolicies) <= hashLimit
	if small {
		ev.Hashes = map[string]uint64{}
	}
	sum := func(raw map[string][]byte, newMsg func() proto.Message) (uint64, error) {
		var total uint64
		for name, b := range raw {
			m := newMsg()
			if err := proto.Unmarshal(b, m); err != nil {
				return 0, fmt.Errorf("resource %s: %w", name, err)
			}
			h, err := contentHash(name, m)
			if err != nil {
				return 0, fmt.Errorf("resource %s: %w", name, err)
			}
			total += h
			if small {
				ev.Hashes[name] = h
			}
		}
		return total, nil
	}
	var err error
	if ev.AddressDigest, err = sum(c.rawAddr, func() proto.Message { return &workloadapi.Address{} }); err == nil {
		ev.PolicyDigest, err = sum(c.rawPolicies, func() proto.Message { return &security.Authorization{} })
	}
	if err != nil {
		ev.Err = err.Error()
	}
	ev.Workloads, ev.Services, ev.Policies = c.workloads, c.services, len(c.policies)
}

func (c *benchClient) run(ctx context.Context, addr string) error {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("client %d: %w", c.id, err)
	}
	defer conn.Close()
	st, err := discovery.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		return fmt.Errorf("client %d: opening delta ADS: %w", c.id, err)
	}
	node := &corev3.Node{Id: fmt.Sprintf("ztunnel~bench-%d", c.id)}
	for _, typ := range []string{xds.AddressType, xds.AuthorizationType} {
		if err := st.Send(&discovery.DeltaDiscoveryRequest{Node: node, TypeUrl: typ, ResourceNamesSubscribe: []string{"*"}}); err != nil {
			return fmt.Errorf("client %d: subscribing to %s: %w", c.id, typ, err)
		}
	}
	c.kinds, c.policies = map[string]byte{}, map[string]bool{}
	c.rawAddr, c.rawPolicies = map[string][]byte{}, map[string][]byte{}
	for {
		resp, err := st.Recv()
		if err != nil {
			return fmt.Errorf("client %d: %w", c.id, err)
		}
		now := time.Now().UnixNano()
		ev := clientEvent{Client: c.id, Event: "msg", T: now, Size: proto.Size(resp), Resources: len(resp.GetResources()),
			Removed: len(resp.GetRemovedResources())}
		ack := &discovery.DeltaDiscoveryRequest{TypeUrl: resp.GetTypeUrl(), ResponseNonce: resp.GetNonce()}
		var bad error
		c.mu.Lock()
		switch resp.GetTypeUrl() {
		case xds.AddressType:
			ev.Type = "address"
			bad = c.addresses(resp, &ev)
		case xds.AuthorizationType:
			ev.Type = "authorization"
			bad = c.authorizations(resp)
		default:
			bad = fmt.Errorf("unexpected type %s", resp.GetTypeUrl())
		}
		ev.Workloads, ev.Services, ev.Policies = c.workloads, c.services, len(c.policies)
		ev.WorkloadSum, ev.ServiceSum = c.workloadSum, c.serviceSum
		c.mu.Unlock()
		if bad != nil {
			ack.ErrorDetail = &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: bad.Error()}
			ev.Err = bad.Error()
		}
		c.emit(ev)
		if err := st.Send(ack); err != nil {
			return fmt.Errorf("client %d: acknowledging: %w", c.id, err)
		}
	}
}

func (c *benchClient) addresses(resp *discovery.DeltaDiscoveryResponse, ev *clientEvent) error {
	small := len(resp.GetResources())+len(resp.GetRemovedResources()) <= detailLimit
	for _, r := range resp.GetResources() {
		a := &workloadapi.Address{}
		if err := r.GetResource().UnmarshalTo(a); err != nil {
			return fmt.Errorf("resource %s: %w", r.GetName(), err)
		}
		var kind byte
		d := detail{Name: r.GetName()}
		switch {
		case a.GetWorkload() != nil:
			kind = 'w'
			wl := a.GetWorkload()
			if wl.GetUid() != r.GetName() {
				return fmt.Errorf("resource %s: workload uid %s", r.GetName(), wl.GetUid())
			}
			if len(wl.GetAddresses()) > 0 {
				if ip, ok := netip.AddrFromSlice(wl.GetAddresses()[0]); ok {
					d.IP = ip.String()
				}
			}
			d.Rev = wl.GetCanonicalRevision()
		case a.GetService() != nil:
			kind = 's'
		default:
			return fmt.Errorf("resource %s: neither workload nor service", r.GetName())
		}
		if old, had := c.kinds[r.GetName()]; !had {
			c.add(r.GetName(), kind, 1)
		} else if old != kind {
			c.add(r.GetName(), old, -1)
			c.add(r.GetName(), kind, 1)
		}
		c.kinds[r.GetName()] = kind
		c.rawAddr[r.GetName()] = r.GetResource().GetValue()
		if small {
			ev.Details = append(ev.Details, d)
		}
	}
	for _, name := range resp.GetRemovedResources() {
		if kind, had := c.kinds[name]; had {
			c.add(name, kind, -1)
			delete(c.kinds, name)
		}
		delete(c.rawAddr, name)
		if small {
			ev.Details = append(ev.Details, detail{Name: name, Removed: true})
		}
	}
	return nil
}

func (c *benchClient) add(name string, kind byte, sign int) {
	s := nameSum(name)
	if kind == 'w' {
		c.workloads += sign
		c.workloadSum += uint64(sign) * s
	} else {
		c.services += sign
		c.serviceSum += uint64(sign) * s
	}
}

func (c *benchClient) authorizations(resp *discovery.DeltaDiscoveryResponse) error {
	for _, r := range resp.GetResources() {
		a := &security.Authorization{}
		if err := r.GetResource().UnmarshalTo(a); err != nil {
			return fmt.Errorf("policy %s: %w", r.GetName(), err)
		}
		c.policies[r.GetName()] = true
		c.rawPolicies[r.GetName()] = r.GetResource().GetValue()
	}
	for _, name := range resp.GetRemovedResources() {
		delete(c.policies, name)
		delete(c.rawPolicies, name)
	}
	return nil
}
