// Package kubestatus writes what the control plane says about waypoints,
// routes and policies (controller.Status) back to the Kubernetes API
// server, as upstream Istio does: a waypoint Gateway's status (Accepted and
// Programmed conditions, addresses), each route's status.parents entries
// for the parentRefs the control plane translated, and an
// AuthorizationPolicy's ZtunnelAccepted or WaypointAccepted condition. It writes through the status
// subresource, reading the current object and updating with conflict
// retry, and only when something changed.
//
// Several control-plane replicas may run: all of them serve xDS, and the
// one holding a Lease (client-go leader election, in the control plane's
// namespace) writes status. When the leader stops, it releases the Lease
// and another replica takes over and re-checks every object.
//
// The writer needs get and update on gateways/status, httproutes/status,
// grpcroutes/status and tcproutes/status, get on those resources, and get,
// create and update on leases in its namespace.
package kubestatus

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	istioclient "istio.io/client-go/pkg/clientset/versioned"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	gwclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/ambit-mesh/ambit/controlplane/config"
	"github.com/ambit-mesh/ambit/controlplane/controller"
)

// Defaults.
const (
	DefaultNamespace = "istio-system"
	DefaultLeaseName = "ambit-controlplane-status"
	// DefaultControllerName is the controllerName of the route status
	// entries this writer owns: upstream Istio's, so that tools reading
	// Istio's route status read Ambit's (do not run Ambit's control plane
	// and istiod on one cluster).
	DefaultControllerName = "istio.io/gateway-controller"
	// FieldManager names this writer in managedFields.
	FieldManager = "ambit-controlplane"
)

// Getter looks up objects; controller.Store is one. The writer reads the
// waypoint Services' cluster IPs from it.
type Getter interface {
	Get(config.Key) (config.Object, bool)
}

// GetterFunc is a Getter.
type GetterFunc func(config.Key) (config.Object, bool)

// Get implements Getter.
func (f GetterFunc) Get(k config.Key) (config.Object, bool) { return f(k) }

// Options configure a Writer.
type Options struct {
	Logger *slog.Logger
	// Namespace holds the Lease (default istio-system, or $POD_NAMESPACE
	// when set).
	Namespace string
	LeaseName string // default DefaultLeaseName
	// Identity is this replica's name in the Lease (default: the host
	// name and a random suffix).
	Identity string
	// LeaseDuration, RenewDeadline and RetryPeriod are client-go's
	// (defaults 15 s, 10 s, 2 s).
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
	// ControllerName of the route status entries (default
	// DefaultControllerName).
	ControllerName string
	// Domain is the cluster domain of waypoint hostnames (default
	// cluster.local).
	Domain string
	// Objects, if set, gives the waypoints' Services (their cluster IP is
	// reported among the Gateway's addresses).
	Objects Getter
}

// Stats are the writer's counters.
type Stats struct {
	Writes    uint64 // status updates sent and accepted
	Unchanged uint64 // objects checked whose status was already right
	Errors    uint64 // failed writes (retried)
}

// Writer writes status while it is the leader.
type Writer struct {
	opts    Options
	logger  *slog.Logger
	kube    kubernetes.Interface
	gateway gwclient.Interface
	istio   istioclient.Interface

	kickc  chan struct{} // capacity 1: the status changed
	leader atomic.Bool
	leadMu sync.Mutex // held by the leading goroutine

	mu      sync.Mutex
	status  controller.Status
	written map[objectKey]any // what the API server was last seen to hold, by object; reset when leading starts
	stats   Stats
}

// New returns a Writer for the API server cfg points at.
func New(cfg *rest.Config, o Options) (*Writer, error) {
	cfg = rest.CopyConfig(cfg)
	rest.AddUserAgent(cfg, "ambit-controlplane")
	if cfg.QPS == 0 {
		cfg.QPS, cfg.Burst = 50, 100
	}
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubestatus: kubernetes client: %w", err)
	}
	gw, err := gwclient.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubestatus: gateway-api client: %w", err)
	}
	ic, err := istioclient.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubestatus: istio client: %w", err)
	}
	return NewForClients(kube, gw, ic, o), nil
}

// NewForClients returns a Writer that uses the given clientsets.
func NewForClients(kube kubernetes.Interface, gateway gwclient.Interface, istio istioclient.Interface, o Options) *Writer {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Namespace == "" {
		o.Namespace = os.Getenv("POD_NAMESPACE")
	}
	if o.Namespace == "" {
		o.Namespace = DefaultNamespace
	}
	if o.LeaseName == "" {
		o.LeaseName = DefaultLeaseName
	}
	if o.Identity == "" {
		host, _ := os.Hostname()
		var b [4]byte
		_, _ = rand.Read(b[:])
		o.Identity = host + "_" + hex.EncodeToString(b[:])
	}
	if o.LeaseDuration <= 0 {
		o.LeaseDuration = 15 * time.Second
	}
	if o.RenewDeadline <= 0 || o.RenewDeadline >= o.LeaseDuration {
		o.RenewDeadline = o.LeaseDuration * 2 / 3
	}
	if o.RetryPeriod <= 0 || o.RetryPeriod >= o.RenewDeadline {
		o.RetryPeriod = o.RenewDeadline / 5
	}
	if o.ControllerName == "" {
		o.ControllerName = DefaultControllerName
	}
	if o.Domain == "" {
		o.Domain = "cluster.local"
	}
	return &Writer{opts: o, logger: o.Logger.With("component", "status", "identity", o.Identity),
		kube: kube, gateway: gateway, istio: istio, kickc: make(chan struct{}, 1)}
}

// Identity is this replica's name in the Lease.
func (w *Writer) Identity() string { return w.opts.Identity }

// Lease is the namespace/name of the Lease.
func (w *Writer) Lease() string { return w.opts.Namespace + "/" + w.opts.LeaseName }

// SetObjects sets Options.Objects (for callers that build the store after
// the writer).
func (w *Writer) SetObjects(g Getter) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.opts.Objects = g
}

// IsLeader reports whether this replica holds the Lease (and writes).
func (w *Writer) IsLeader() bool { return w.leader.Load() }

// Stats returns the writer's counters.
func (w *Writer) Stats() Stats {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.stats
}

// OnStatus records the latest status (controller.Options.OnStatus). It
// never blocks: the leader writes it from its own goroutine.
func (w *Writer) OnStatus(st controller.Status) {
	w.mu.Lock()
	w.status = st
	w.mu.Unlock()
	w.kick()
}

func (w *Writer) kick() {
	select {
	case w.kickc <- struct{}{}:
	default:
	}
}

// Run takes part in leader election until ctx is done, writing status
// while it leads; it returns nil then. A replica that loses the Lease
// becomes a candidate again.
func (w *Writer) Run(ctx context.Context) error {
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: w.opts.Namespace, Name: w.opts.LeaseName},
		Client:     w.kube.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: w.opts.Identity},
	}
	for ctx.Err() == nil {
		le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
			Lock: lock, Name: w.opts.LeaseName, ReleaseOnCancel: true,
			LeaseDuration: w.opts.LeaseDuration, RenewDeadline: w.opts.RenewDeadline, RetryPeriod: w.opts.RetryPeriod,
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: w.lead,
				OnStoppedLeading: func() {},
				OnNewLeader: func(id string) {
					if id != w.opts.Identity {
						w.logger.Info("status leader", "leader", id)
					}
				},
			},
		})
		if err != nil {
			return fmt.Errorf("kubestatus: leader election: %w", err)
		}
		le.Run(ctx) // returns when the lease is lost or ctx is done
		if ctx.Err() == nil {
			w.logger.Warn("lost the status lease; standing again")
		}
	}
	return nil
}

// lead writes status until lctx ends (leadership lost or Run's ctx done).
func (w *Writer) lead(lctx context.Context) {
	// One lead at a time: a previous term's goroutine (its lctx already
	// done) finishes before the next term starts.
	w.leadMu.Lock()
	defer w.leadMu.Unlock()
	if lctx.Err() != nil {
		return
	}
	w.mu.Lock()
	w.written = map[objectKey]any{} // check every object against the API server
	w.mu.Unlock()
	w.leader.Store(true)
	defer w.leader.Store(false)
	w.logger.Info("leading: writing status", "lease", w.opts.Namespace+"/"+w.opts.LeaseName)
	w.kick()
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	backoff := time.Second
	for {
		select {
		case <-lctx.Done():
			w.logger.Info("stopped leading")
			return
		case <-w.kickc:
		case <-retry.C:
		}
		if failed := w.sync(lctx); failed && lctx.Err() == nil {
			retry.Reset(backoff)
			backoff = min(2*backoff, 30*time.Second)
		} else {
			backoff = time.Second
		}
	}
}

// sync writes every object whose wanted status differs from what was last
// written; it reports whether some write failed.
func (w *Writer) sync(ctx context.Context) (failed bool) {
	w.mu.Lock()
	want := w.desired(w.status)
	written := w.written
	w.mu.Unlock()
	// Objects no longer in the status lose our conditions (a route whose
	// parentRef moved away; a deleted object is simply forgotten).
	for k := range written {
		if _, ok := want[k]; !ok {
			want[k] = k.empty()
		}
	}
	for k, d := range want {
		if ctx.Err() != nil {
			return false
		}
		if prev, ok := written[k]; ok && reflect.DeepEqual(prev, d) {
			continue
		}
		changed, gone, err := w.write(ctx, k, d)
		w.mu.Lock()
		switch {
		case err != nil:
			w.stats.Errors++
		case changed:
			w.stats.Writes++
		default:
			w.stats.Unchanged++
		}
		if err == nil {
			if gone || isEmpty(d) {
				delete(w.written, k)
			} else {
				w.written[k] = d
			}
		}
		w.mu.Unlock()
		if err != nil {
			if ctx.Err() == nil {
				w.logger.Warn("writing status failed; will retry", "object", k.String(), "err", err)
			}
			failed = true
		} else if changed {
			w.logger.Debug("status written", "object", k.String())
		}
	}
	return failed
}
