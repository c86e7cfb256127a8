// Package ztunnel is Ambit's node proxy: for every pod the node agent hands
// it (over ZDS), it runs listeners inside the pod's network namespace —
// 15001 for the pod's outbound traffic, 15006 for plaintext inbound, 15008
// for HBONE inbound — with the pod's own SPIFFE identity, using what the
// control plane pushed (workloads and services over WDS) to decide where
// each connection goes and how.
//
// Files by job: ztunnel.go (the Ztunnel and its pods' lifecycle, as the
// node agent drives it), pod.go (one pod's listeners and accept loops),
// outbound.go, inbound.go, resolve.go (where an outbound connection goes),
// relay.go (the one copy loop), record.go (the one connection record that
// feeds logs and metrics), order.go (set-up order), handoff.go (replacing
// a ztunnel without refusing connections), state.go and wds.go (what the
// control plane sent), metrics.go, admin.go.
package ztunnel

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"istio.io/istio/pkg/zdsapi"

	"github.com/ambit-mesh/ambit/identity"
	"github.com/ambit-mesh/ambit/identity/caclient"
	"github.com/ambit-mesh/ambit/zds"
)

// CertSource gives the certificate of a workload identity (see
// caclient.Manager).
type CertSource interface {
	Get(ctx context.Context, id identity.SPIFFE) (*caclient.Cert, error)
}

// Config configures a Ztunnel.
type Config struct {
	Index       *Index
	Certs       CertSource
	TrustDomain string
	Logger      *slog.Logger
	// AccessLog receives one line per connection (default: Logger).
	AccessLog *slog.Logger
	// Metrics, if set, counts connections and bytes.
	Metrics *Metrics
	// ConfigWait bounds how long a connection is held while the index is
	// not ready or its source workload is unknown (default 5 s, as
	// upstream's wait for the source workload); then it is refused.
	ConfigWait time.Duration
}

// Ztunnel runs one proxy per enrolled pod. It implements zds.Handler.
type Ztunnel struct {
	cfg     Config
	mu      sync.Mutex
	proxies map[string]*podProxy // by pod uid
	// early recycles the buffers firstBytes reads into.
	early sync.Pool // of *[earlyBytes]byte
}

var _ zds.Handler = (*Ztunnel)(nil)

// New returns a Ztunnel with no pods.
func New(cfg Config) *Ztunnel {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.AccessLog == nil {
		cfg.AccessLog = cfg.Logger
	}
	if cfg.TrustDomain == "" {
		cfg.TrustDomain = identity.DefaultTrustDomain
	}
	if cfg.ConfigWait <= 0 {
		cfg.ConfigWait = 5 * time.Second
	}
	z := &Ztunnel{cfg: cfg, proxies: map[string]*podProxy{}}
	if cfg.Index != nil {
		cfg.Index.mu.Lock()
		cfg.Index.onChange = z.recheck
		cfg.Index.mu.Unlock()
	}
	return z
}

// recheck re-evaluates every open inbound connection after the index
// changed and closes those now denied (as upstream's policy watcher). It
// runs on workload changes too: selector policies, and STRICT peer
// authentication with port exceptions, reach a workload through its own
// resource's policy list.
func (z *Ztunnel) recheck() {
	z.mu.Lock()
	ps := make([]*podProxy, 0, len(z.proxies))
	for _, p := range z.proxies {
		ps = append(ps, p)
	}
	z.mu.Unlock()
	for _, p := range ps {
		p.mu.Lock()
		var denied []*inboundConn
		for ic := range p.inbound {
			if d := p.authorize(ic.ac); !d.Allow {
				denied = append(denied, ic)
				attrs := []any{"direction", "inbound", "src.addr", ic.src.String(), "dst.addr", ic.dst.String(),
					"dst.workload", p.info.GetName(), "dst.namespace", p.info.GetNamespace(), "policy", d.Policy, "reason", d.Reason}
				if ic.ac.Src != nil {
					attrs = append(attrs, "src.identity", ic.ac.Src.String())
				}
				z.cfg.AccessLog.Info("connection closed by policy", attrs...)
			}
		}
		p.mu.Unlock()
		for _, ic := range denied {
			ic.close()
		}
	}
}

// AddWorkload starts the proxy of a pod inside its network namespace. A
// pod re-sent with the same namespace keeps its running proxy.
func (z *Ztunnel) AddWorkload(ctx context.Context, uid string, info *zdsapi.WorkloadInfo, netns *os.File) error {
	dev, ino, err := zds.NetnsID(netns)
	if err != nil {
		netns.Close()
		return fmt.Errorf("pod %s: netns: %w", uid, err)
	}
	z.mu.Lock()
	old := z.proxies[uid]
	z.mu.Unlock()
	if old != nil {
		if old.dev == dev && old.ino == ino {
			netns.Close()
			return nil
		}
		old.stop(false)
	}
	p, err := z.startProxy(uid, info, netns, dev, ino)
	if err != nil {
		netns.Close()
		return err
	}
	z.mu.Lock()
	z.proxies[uid] = p
	z.mu.Unlock()
	z.cfg.Logger.Info("pod proxy started", "uid", uid, "pod", info.GetNamespace()+"/"+info.GetName(), "identity", p.id.String())
	return nil
}

// DelWorkload stops a pod's proxy at once.
func (z *Ztunnel) DelWorkload(ctx context.Context, uid string) error {
	z.mu.Lock()
	p := z.proxies[uid]
	delete(z.proxies, uid)
	z.mu.Unlock()
	if p != nil {
		p.stop(false)
		z.cfg.Logger.Info("pod proxy stopped", "uid", uid, "pod", p.info.GetNamespace()+"/"+p.info.GetName())
	}
	return nil
}

// Reconcile stops every proxy whose pod is not in keep.
func (z *Ztunnel) Reconcile(ctx context.Context, keep map[string]bool) error {
	z.mu.Lock()
	var gone []string
	for uid := range z.proxies {
		if !keep[uid] {
			gone = append(gone, uid)
		}
	}
	z.mu.Unlock()
	for _, uid := range gone {
		_ = z.DelWorkload(ctx, uid)
	}
	return nil
}

// PodInfo describes a pod ztunnel serves.
type PodInfo struct {
	UID, Namespace, Name, Identity string
}

// Pods lists the pods with running proxies.
func (z *Ztunnel) Pods() []PodInfo {
	z.mu.Lock()
	defer z.mu.Unlock()
	var out []PodInfo
	for uid, p := range z.proxies {
		out = append(out, PodInfo{UID: uid, Namespace: p.info.GetNamespace(), Name: p.info.GetName(), Identity: p.id.String()})
	}
	return out
}

// Drain stops every proxy: listeners close at once (if Handoff has not
// closed them already), open connections get until ctx is done.
func (z *Ztunnel) Drain(ctx context.Context) {
	z.mu.Lock()
	ps := make([]*podProxy, 0, len(z.proxies))
	for _, p := range z.proxies {
		ps = append(ps, p)
	}
	z.proxies = map[string]*podProxy{}
	z.mu.Unlock()
	var wg sync.WaitGroup
	for _, p := range ps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			done := make(chan struct{})
			go func() { p.stop(true); close(done) }()
			select {
			case <-done:
			case <-ctx.Done():
				p.stop(false)
			}
		}()
	}
	wg.Wait()
}
