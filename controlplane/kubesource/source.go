package kubesource

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	istioclient "istio.io/client-go/pkg/clientset/versioned"
	istioinformers "istio.io/client-go/pkg/informers/externalversions"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	gwclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"
	gwinformers "sigs.k8s.io/gateway-api/pkg/client/informers/externalversions"

	"github.com/ambit-mesh/ambit/controlplane/config"
)

// Options configure a Source.
type Options struct {
	// Logger receives the source's messages; nil discards them.
	Logger *slog.Logger
	// CRDRecheck is how often kinds whose CRD is not installed are looked
	// for again (default 30 s).
	CRDRecheck time.Duration
}

// Source watches a Kubernetes API server (config.Source, config.Syncer).
type Source struct {
	kube    kubernetes.Interface
	istio   istioclient.Interface
	gateway gwclient.Interface
	logger  *slog.Logger
	recheck time.Duration

	running atomic.Bool

	mu    sync.Mutex
	state *runState // of the current Run; nil when not running
}

// runState is what one Run has found and started.
type runState struct {
	discovered bool                                              // the first CRD discovery is done
	regs       map[string]cache.ResourceEventHandlerRegistration // by kind
	missing    map[string]string                                 // CRD kind -> why it is treated as empty
	unknown    map[string]error                                  // CRD kind -> why discovery could not tell
}

// New returns a Source for the API server cfg points at. Nothing is read
// until Run.
func New(cfg *rest.Config, o Options) (*Source, error) {
	cfg = rest.CopyConfig(cfg)
	rest.AddUserAgent(cfg, "ambit-controlplane")
	// Core kinds (pods above all) travel as protobuf; custom resources
	// only have JSON.
	core := rest.CopyConfig(cfg)
	core.ContentType = "application/vnd.kubernetes.protobuf"
	core.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	kube, err := kubernetes.NewForConfig(core)
	if err != nil {
		return nil, fmt.Errorf("kubesource: kubernetes client: %w", err)
	}
	istio, err := istioclient.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubesource: istio client: %w", err)
	}
	gw, err := gwclient.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubesource: gateway-api client: %w", err)
	}
	return NewForClients(kube, istio, gw, o), nil
}

// NewForClients returns a Source that uses the given clientsets.
func NewForClients(kube kubernetes.Interface, istio istioclient.Interface, gateway gwclient.Interface, o Options) *Source {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.CRDRecheck <= 0 {
		o.CRDRecheck = 30 * time.Second
	}
	return &Source{kube: kube, istio: istio, gateway: gateway, logger: o.Logger.With("source", "kubernetes"), recheck: o.CRDRecheck}
}

// HasSynced reports whether the current Run has sent the Added events of
// every watched kind's initial list (config.Syncer). Kinds whose CRD is
// not installed count as synced (empty); kinds discovery could not decide
// on (the API server failed to answer) do not.
func (s *Source) HasSynced() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.state
	if st == nil || !st.discovered || len(st.unknown) > 0 {
		return false
	}
	for _, r := range st.regs {
		if !r.HasSynced() {
			return false
		}
	}
	return true
}

// Missing returns, sorted, the kinds the current Run treats as empty
// because their CRD (in the version this source reads) is not installed.
func (s *Source) Missing() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state == nil {
		return nil
	}
	var out []string
	for k := range s.state.missing {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Run starts an informer per kind, sends Added for every existing object,
// then Added, Updated and Deleted as objects change, until ctx is done;
// then it stops the informers and returns nil. Run may be called only once
// at a time.
func (s *Source) Run(ctx context.Context, out chan<- config.Event) error {
	if !s.running.CompareAndSwap(false, true) {
		return errors.New("kubesource: Run is already running")
	}
	defer s.running.Store(false)
	ctx, cancel := context.WithCancel(ctx)
	f := &factories{
		kube:    informers.NewSharedInformerFactoryWithOptions(s.kube, 0, informers.WithTransform(stripCached)),
		istio:   istioinformers.NewSharedInformerFactoryWithOptions(s.istio, 0, istioinformers.WithTransform(stripCached)),
		gateway: gwinformers.NewSharedInformerFactoryWithOptions(s.gateway, 0, gwinformers.WithTransform(stripCached)),
	}
	st := &runState{regs: map[string]cache.ResourceEventHandlerRegistration{}, missing: map[string]string{}, unknown: map[string]error{}}
	s.mu.Lock()
	s.state = st
	s.mu.Unlock()
	defer func() {
		cancel()
		f.shutdown() // waits for the informers: no handler runs after Run
		s.mu.Lock()
		s.state = nil
		s.mu.Unlock()
	}()

	var pending []kindInfo // CRD kinds not watched yet
	for _, k := range kinds() {
		if k.crd {
			pending = append(pending, k)
			continue
		}
		if err := s.watch(ctx, f, st, k, out); err != nil {
			return err
		}
	}
	pending, err := s.discover(ctx, f, st, pending, out)
	if err != nil {
		return err
	}
	s.mu.Lock()
	st.discovered = true
	s.mu.Unlock()
	f.start(ctx.Done())
	go s.logSynced(ctx)

	timer := time.NewTimer(s.nextCheck(st))
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
			if len(pending) > 0 {
				if pending, err = s.discover(ctx, f, st, pending, out); err != nil {
					return err
				}
				f.start(ctx.Done()) // only the informers not started yet
			}
			timer.Reset(s.nextCheck(st))
		}
	}
}

// nextCheck is when to look for missing CRDs again: soon when discovery
// failed (sync waits for it), else every recheck period.
func (s *Source) nextCheck(st *runState) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(st.unknown) > 0 {
		return min(time.Second, s.recheck)
	}
	return s.recheck
}

// logSynced says once when the initial objects have all been sent.
func (s *Source) logSynced(ctx context.Context) {
	start := time.Now()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for !s.HasSynced() {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
	s.logger.Info("kubernetes source synced", "after", time.Since(start).Round(time.Millisecond), "missingKinds", s.Missing())
}

// watch registers the event handler of one kind; the informer starts with
// the factory's next start.
func (s *Source) watch(ctx context.Context, f *factories, st *runState, k kindInfo, out chan<- config.Event) error {
	inf := k.informer(f)
	logger := s.logger.With("kind", k.kind)
	// The default handler logs through klog; say it here, once per failure.
	_ = inf.SetWatchErrorHandler(func(_ *cache.Reflector, err error) {
		if errors.Is(err, io.EOF) || apierrors.IsResourceExpired(err) || apierrors.IsGone(err) {
			logger.Debug("watch ended; restarting", "err", err)
			return
		}
		logger.Warn("list/watch failed; retrying", "err", err)
	})
	reg, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { s.emit(ctx, out, k, config.Added, obj) },
		UpdateFunc: func(_, obj any) { s.emit(ctx, out, k, config.Updated, obj) },
		DeleteFunc: func(obj any) { s.emit(ctx, out, k, config.Deleted, obj) },
	})
	if err != nil {
		return fmt.Errorf("kubesource: watching %s: %w", k.kind, err)
	}
	s.mu.Lock()
	st.regs[k.kind] = reg
	s.mu.Unlock()
	return nil
}

// emit sends one event with a normalised copy of the object.
func (s *Source) emit(ctx context.Context, out chan<- config.Event, k kindInfo, t config.EventType, obj any) {
	ev := config.Event{Type: t, Key: config.Key{Kind: k.kind}}
	if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		ns, name, err := cache.SplitMetaNamespaceKey(tomb.Key)
		if err != nil {
			s.logger.Warn("bad key in deletion tombstone", "kind", k.kind, "key", tomb.Key)
			return
		}
		ev.Key.Namespace, ev.Key.Name = ns, name
		obj = tomb.Obj
	}
	if o, ok := obj.(config.Object); ok {
		ev.Key.Namespace, ev.Key.Name = o.GetNamespace(), o.GetName()
		ev.Object = normalize(o, k.gvk)
	} else if t != config.Deleted || ev.Key.Name == "" {
		s.logger.Warn("ignoring an object of an unexpected type", "kind", k.kind, "type", fmt.Sprintf("%T", obj))
		return
	}
	select {
	case out <- ev:
	case <-ctx.Done():
	}
}

// discover looks for the CRD kinds in pending, starts watching those that
// are served and returns the rest. A kind whose CRD is not installed is
// treated as empty (and logged once); a kind discovery could not decide on
// holds HasSynced back. It fails only when a handler cannot be added.
func (s *Source) discover(ctx context.Context, f *factories, st *runState, pending []kindInfo, out chan<- config.Event) ([]kindInfo, error) {
	d := &discovery{kube: s.kube}
	var rest []kindInfo
	for _, k := range pending {
		found, why, err := d.served(k)
		s.mu.Lock()
		_, wasMissing := st.missing[k.kind]
		_, wasUnknown := st.unknown[k.kind]
		delete(st.missing, k.kind)
		delete(st.unknown, k.kind)
		switch {
		case err != nil:
			st.unknown[k.kind] = err
		case !found:
			st.missing[k.kind] = why
		}
		s.mu.Unlock()
		switch {
		case err != nil:
			if !wasUnknown {
				s.logger.Error("cannot tell whether a CRD is installed; holding the first sync until it can", "kind", k.kind, "crd", k.crdName(), "err", err)
			}
			rest = append(rest, k)
		case !found:
			if !wasMissing {
				s.logger.Warn("CRD not installed: treating the kind as empty", "kind", k.kind, "crd", k.crdName(),
					"version", k.gvk.Version, "detail", why, "recheck", s.recheck)
			}
			rest = append(rest, k)
		default:
			if wasMissing || wasUnknown {
				s.logger.Info("CRD found: watching the kind", "kind", k.kind, "crd", k.crdName())
			}
			if err := s.watch(ctx, f, st, k, out); err != nil {
				return nil, err
			}
		}
	}
	return rest, nil
}

// discovery answers "is this resource served?" for one round of checks,
// asking the API server once per group version.
type discovery struct {
	kube   kubernetes.Interface
	groups *metav1.APIGroupList
	lists  map[string]*metav1.APIResourceList // group/version -> resources; nil: not served
}

func (d *discovery) resources(gv string) (*metav1.APIResourceList, error) {
	if l, ok := d.lists[gv]; ok {
		return l, nil
	}
	l, err := d.kube.Discovery().ServerResourcesForGroupVersion(gv)
	if apierrors.IsNotFound(err) {
		l, err = nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("discovery of %s: %w", gv, err)
	}
	if d.lists == nil {
		d.lists = map[string]*metav1.APIResourceList{}
	}
	d.lists[gv] = l
	return l, nil
}

func hasResource(l *metav1.APIResourceList, resource string) bool {
	return l != nil && slices.ContainsFunc(l.APIResources, func(r metav1.APIResource) bool { return r.Name == resource })
}

// served reports whether k's resource is served in k's version. When it is
// not, why says so; a security kind served only in another version is an
// error (its objects exist, and ignoring them would drop policy), other
// kinds are then treated as absent.
func (d *discovery) served(k kindInfo) (found bool, why string, err error) {
	l, err := d.resources(k.gvk.GroupVersion().String())
	if err != nil {
		return false, "", err
	}
	if hasResource(l, k.resource) {
		return true, "", nil
	}
	if d.groups == nil {
		if d.groups, err = d.kube.Discovery().ServerGroups(); err != nil {
			d.groups = nil
			return false, "", fmt.Errorf("discovery of API groups: %w", err)
		}
	}
	var others []string
	for _, g := range d.groups.Groups {
		if g.Name != k.gvk.Group {
			continue
		}
		for _, v := range g.Versions {
			if v.Version == k.gvk.Version {
				continue
			}
			ol, err := d.resources(v.GroupVersion)
			if err != nil {
				return false, "", err
			}
			if hasResource(ol, k.resource) {
				others = append(others, v.GroupVersion)
			}
		}
	}
	if len(others) == 0 {
		return false, fmt.Sprintf("%s/%s is not served", k.gvk.GroupVersion(), k.resource), nil
	}
	why = fmt.Sprintf("%s is served only as %v; this control plane reads %s: upgrade the CRD", k.resource, others, k.gvk.GroupVersion())
	if k.gvk.Group == "security.istio.io" {
		return false, "", errors.New(why)
	}
	return false, why, nil
}
