// Package controller is the control plane's one loop: it owns a typed Store
// of every config object, whoever sent it (a config source, or the runtime
// reporting pod status as a kubelet would), debounces changes, builds the
// ambient model (model.Builder: the results of model.Build and
// model.BuildAuthorizations, computed again only for what changed) and
// publishes each resource type to xDS through one generic Publish, or, to
// a DeltaPublisher (xds.Server), only the resources that changed. It never
// reads runtime state itself: pod IPs, nodes, phases and redirection
// arrive as ordinary Pod objects with their status set.
package controller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/ambit-mesh/ambit/controlplane/config"
	"github.com/ambit-mesh/ambit/controlplane/l7authz"
	"github.com/ambit-mesh/ambit/controlplane/model"
	"github.com/ambit-mesh/ambit/controlplane/routes"
	"github.com/ambit-mesh/ambit/controlplane/xds"
)

// Publisher serves one resource type's full set to proxies (xds.Server).
type Publisher interface {
	Publish(typeURL string, set map[string]proto.Message) error
}

// DeltaPublisher is a Publisher that also takes a change to a type's set
// (xds.Server): the controller then hands it only the resources it
// computed again, not every resource of the type.
type DeltaPublisher interface {
	Publisher
	PublishDelta(typeURL string, changed map[string]proto.Message, removed []string) error
}

// Options configure a Controller.
type Options struct {
	// Publisher receives the built resources. Required.
	Publisher Publisher
	// Sources are run by Run; their events go to the store. A source that
	// implements config.Syncer holds the first publish until it synced.
	Sources []config.Source
	Logger  *slog.Logger
	// Debounce is the quiet period after a change before a build (default
	// 20 ms); MaxDelay bounds how long a steady stream of changes can
	// postpone one (default 100 ms).
	Debounce, MaxDelay time.Duration
	// Cluster, Domain and RootNamespace are passed to the model (empty:
	// its defaults).
	Cluster, Domain, RootNamespace string
	// OnWarnings is called, from the build goroutine, when the policy
	// warnings changed, with their sorted texts.
	OnWarnings func([]string)
	// OnStatus is called, from the build goroutine, when the status of
	// waypoints, waypoint bindings or routes changed.
	OnStatus func(Status)
}

// Status is what the control plane says about waypoints and routes, for
// status displays (and, on Kubernetes, the objects' status).
type Status struct {
	Waypoints       []model.WaypointStatus `json:"waypoints,omitempty"`
	BindingProblems []model.BindingProblem `json:"bindingProblems,omitempty"`
	Routes          []RouteStatus          `json:"routes,omitempty"`
	// Policies are the AuthorizationPolicies' conditions (ZtunnelAccepted
	// or WaypointAccepted), sorted by namespace/name.
	Policies []model.PolicyStatus `json:"policies,omitempty"`
}

// RouteStatus is one route parentRef's conditions.
type RouteStatus struct {
	Kind       string             `json:"kind"`
	Namespace  string             `json:"namespace"`
	Name       string             `json:"name"`
	Parent     int                `json:"parent"` // index in spec.parentRefs
	Conditions []metav1.Condition `json:"conditions"`
}

// Stats are the controller's counters.
type Stats struct {
	Builds       uint64        // model builds
	PublishErrs  uint64        // publishes that failed
	Objects      int           // objects in the store
	LastBuild    time.Time     // end of the last build
	LastDuration time.Duration // how long it took
}

// Controller ties the store, the model and xDS together.
type Controller struct {
	opts   Options
	logger *slog.Logger
	store  *Store
	kick   chan struct{} // capacity 1: a build is wanted

	mu       sync.Mutex
	waits    int // Sync functions not yet called
	warnings []string
	warned   map[string]bool
	stats    Stats
	ready    chan struct{} // closed after the first publish
	status   Status
	// dirty are the keys of the objects changed since the last build
	// took them; past maxDirty (a bulk load) only dirtyAll says so.
	dirty    map[config.Key]struct{}
	dirtyAll bool

	// Owned by the build loop: the incremental model, whether it has
	// built everything once, the last routes (for status when only pods
	// change), and whether the next publish must send whole sets (after
	// a failed one).
	model  *model.Builder
	built  bool
	routes routes.Output
	resync bool
}

// New returns a controller with an empty store.
func New(opts Options) *Controller {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Debounce <= 0 {
		opts.Debounce = 20 * time.Millisecond
	}
	if opts.MaxDelay < opts.Debounce {
		opts.MaxDelay = max(5*opts.Debounce, 100*time.Millisecond)
	}
	return &Controller{opts: opts, logger: opts.Logger, store: NewStore(), kick: make(chan struct{}, 1),
		warned: map[string]bool{}, ready: make(chan struct{}), dirty: map[config.Key]struct{}{}, model: model.NewBuilder()}
}

// Store is the controller's store (read-only for callers: change it with
// Apply).
func (c *Controller) Store() *Store { return c.store }

// Apply records one event and schedules a build if the store changed. It
// never blocks on the build; it is safe for concurrent use.
func (c *Controller) Apply(ev config.Event) {
	// The store first, then the key: a build that takes the key reads the
	// store after it changed.
	if k, changed := c.store.apply(ev); changed {
		c.mu.Lock()
		switch {
		case c.dirtyAll:
		case len(c.dirty) >= maxDirty:
			c.dirtyAll, c.dirty = true, map[config.Key]struct{}{}
		default:
			c.dirty[k] = struct{}{}
		}
		c.mu.Unlock()
		if c.logger.Enabled(context.Background(), slog.LevelDebug) {
			c.logger.Debug("config "+ev.Type.String(), "key", k.String())
		}
		c.schedule()
	}
}

func (c *Controller) schedule() {
	select {
	case c.kick <- struct{}{}:
	default: // a build is already pending
	}
}

// Sync holds the first publish until the returned function is called: a
// caller that applies an initial state (the local runtime's pods) calls it
// once that state is in, so that proxies never get a partial first state.
// Call it before Run. Calling the function more than once is harmless.
func (c *Controller) Sync() (synced func()) {
	c.mu.Lock()
	c.waits++
	c.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			c.mu.Lock()
			c.waits--
			c.mu.Unlock()
			c.schedule()
		})
	}
}

// Ready is closed once the controller has published its first state.
func (c *Controller) Ready() <-chan struct{} { return c.ready }

// Warnings returns the current policy warnings, sorted.
func (c *Controller) Warnings() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.warnings)
}

// Stats returns the controller's counters.
func (c *Controller) Stats() Stats {
	c.mu.Lock()
	st := c.stats
	c.mu.Unlock()
	st.Objects = c.store.Len()
	return st
}

// Run runs the sources and the build loop until ctx is done; it returns
// nil then, or the error of a source that failed (the loop stops too).
func (c *Controller) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, len(c.opts.Sources))
	for _, src := range c.opts.Sources {
		synced := c.Sync()
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := c.feed(ctx, src, synced); err != nil {
				errc <- err
				cancel()
			}
		}()
	}
	c.loop(ctx)
	wg.Wait()
	close(errc)
	var errs []error
	for err := range errc {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// feed applies a source's events, and calls synced once the source has
// sent its initial objects (at once for a source that cannot tell).
func (c *Controller) feed(ctx context.Context, src config.Source, synced func()) error {
	syncer, _ := src.(config.Syncer)
	if syncer == nil {
		synced()
	}
	defer synced() // a source that stops must not hold the controller
	events := make(chan config.Event, 256)
	errc := make(chan error, 1)
	go func() { errc <- src.Run(ctx, events) }()
	poll := time.NewTicker(10 * time.Millisecond)
	defer poll.Stop()
	checkSynced := func() {
		// After HasSynced, whatever is still buffered was sent before:
		// apply it first.
		if syncer != nil && syncer.HasSynced() {
			for len(events) > 0 {
				c.Apply(<-events)
			}
			synced()
			syncer = nil
			poll.Stop()
		}
	}
	for {
		select {
		case ev := <-events:
			c.Apply(ev)
			checkSynced()
		case <-poll.C:
			checkSynced()
		case err := <-errc:
			for len(events) > 0 {
				c.Apply(<-events)
			}
			if err != nil {
				c.logger.Error("config source stopped", "err", err)
				return fmt.Errorf("config source: %w", err)
			}
			return nil
		}
	}
}

// loop builds and publishes after each debounced burst of changes, and
// once at the start when nothing holds the first publish.
func (c *Controller) loop(ctx context.Context) {
	c.schedule()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	var pendingSince time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.kick:
			now := time.Now()
			if pendingSince.IsZero() {
				pendingSince = now
			}
			if now.Sub(pendingSince) < c.opts.MaxDelay {
				timer.Reset(c.opts.Debounce)
			}
		case <-timer.C:
			pendingSince = time.Time{}
			c.mu.Lock()
			held := c.waits > 0
			c.mu.Unlock()
			if held {
				continue // the last Sync function schedules again
			}
			c.build()
		}
	}
}

// build computes the model from the store and publishes it: policies
// first, so that a workload never names a policy its proxy does not have
// yet. When only pods changed since the last build, and none of them is a
// waypoint's, only those pods are computed again (buildPods); otherwise
// everything is, reusing what did not change (model.Builder).
func (c *Controller) build() {
	start := time.Now()
	c.mu.Lock()
	dirty, all := c.dirty, c.dirtyAll
	c.dirty, c.dirtyAll = map[config.Key]struct{}{}, false
	c.mu.Unlock()
	if c.built && !c.resync && !all && podsOnly(dirty) && c.buildPods(start, dirty) {
		return
	}
	c.buildAll(start)
}

// maxDirty is how many changed keys the controller records before it
// stops and builds everything.
const maxDirty = 4096

// unreadKinds are kinds the store keeps for others (the CA, the
// Kubernetes source's users) that no input of a build reads: their changes
// do not stop a pods-only build. A kind that a build starts to read must
// leave this set.
var unreadKinds = map[string]bool{config.KindServiceAccount: true, config.KindNode: true, config.KindEndpointSlice: true}

// podsOnly reports whether the changed keys are pods only (besides kinds
// no build reads).
func podsOnly(dirty map[config.Key]struct{}) bool {
	for k := range dirty {
		if k.Kind != config.KindPod && !unreadKinds[k.Kind] {
			return false
		}
	}
	return true
}

// inputs gathers the model's inputs from the store.
func (c *Controller) inputs() model.Inputs {
	st := c.store
	return model.Inputs{Namespaces: st.Namespaces(), Pods: st.Pods(), Services: st.Services(),
		Policies: st.AuthorizationPolicies(), PeerAuthentications: st.PeerAuthentications(),
		Gateways: st.Gateways(),
		Cluster:  c.opts.Cluster, Domain: c.opts.Domain, RootNamespace: c.opts.RootNamespace}
}

// buildAll computes and publishes everything.
func (c *Controller) buildAll(start time.Time) {
	st := c.store
	in := c.inputs()
	delta, warnings := c.model.Build(in)
	full := c.resync
	c.resync = false
	var failed uint64
	if err := publishModel(c, xds.AuthorizationType, full, delta.Authorizations, delta.RemovedAuthorizations, c.model.Authorizations); err != nil {
		c.logger.Error("publishing policies", "err", err)
		failed++
	}
	// The waypoints' routes and L7 policies, before the workloads and
	// services that send traffic to them.
	l7 := l7authz.Build(in.Policies, c.opts.RootNamespace)
	if err := c.opts.Publisher.Publish(xds.RBACType, xds.Typed(l7.RBAC)); err != nil {
		c.logger.Error("publishing waypoint policies", "err", err)
		failed++
	}
	texts := make([]string, 0, len(warnings)+len(l7.Warnings))
	for _, w := range l7.Warnings {
		texts = append(texts, w.String())
	}
	rt := routes.Build(routeInputs(in, st))
	// One type for both: TCP destinations are named "tcp|<hostname>:<port>".
	all := make(map[string]proto.Message, len(rt.Routes)+len(rt.TCPRoutes))
	for n, r := range rt.Routes {
		all[n] = r
	}
	for n, r := range rt.TCPRoutes {
		all[xds.TCPRoutePrefix+n] = r
	}
	if err := c.opts.Publisher.Publish(xds.RouteType, all); err != nil {
		c.logger.Error("publishing waypoint routes", "err", err)
		failed++
	}
	if err := publishModel(c, xds.AddressType, full, delta.Addresses, delta.RemovedAddresses, c.model.Addresses); err != nil {
		c.logger.Error("publishing workloads and services", "err", err)
		failed++
	}
	for _, w := range warnings {
		texts = append(texts, w.String())
	}
	slices.Sort(texts)
	texts = slices.Compact(texts)
	c.built, c.routes = true, rt
	c.finish(start, rt, texts, failed)
}

// buildPods computes again only the changed pods, when the model can
// (none is a waypoint's), and publishes what that changed: policies and
// addresses (routes, waypoint policies and warnings do not depend on
// other pods than waypoints'). It reports false, having done nothing,
// when everything must be built instead.
func (c *Controller) buildPods(start time.Time, dirty map[config.Key]struct{}) bool {
	changes := make([]model.PodChange, 0, len(dirty))
	for k := range dirty {
		if k.Kind != config.KindPod {
			continue
		}
		ch := model.PodChange{Key: k.Namespace + "/" + k.Name}
		if o, ok := c.store.Get(k); ok {
			ch.Pod, _ = o.(*corev1.Pod) // another type is no pod, as Store.Pods has it
		}
		changes = append(changes, ch)
	}
	slices.SortFunc(changes, func(a, b model.PodChange) int { return strings.Compare(a.Key, b.Key) })
	delta, ok := c.model.UpdatePods(changes)
	if !ok {
		return false
	}
	var failed uint64
	if err := publishModel(c, xds.AuthorizationType, false, delta.Authorizations, delta.RemovedAuthorizations, c.model.Authorizations); err != nil {
		c.logger.Error("publishing policies", "err", err)
		failed++
	}
	if err := publishModel(c, xds.AddressType, false, delta.Addresses, delta.RemovedAddresses, c.model.Addresses); err != nil {
		c.logger.Error("publishing workloads and services", "err", err)
		failed++
	}
	c.mu.Lock()
	texts := c.warnings
	c.mu.Unlock()
	c.finish(start, c.routes, texts, failed)
	return true
}

// publishModel publishes a type the model builds: as a delta when the
// publisher takes deltas (unless full), else (or after a failed publish,
// when the publisher may have missed a delta) the whole set, a copy of
// what set returns.
func publishModel[M proto.Message](c *Controller, typeURL string, full bool, changed map[string]M, removed []string, set func() map[string]M) error {
	var err error
	if dp, ok := c.opts.Publisher.(DeltaPublisher); ok && !full {
		if len(changed) == 0 && len(removed) == 0 {
			return nil
		}
		err = dp.PublishDelta(typeURL, xds.Typed(changed), removed)
	} else {
		err = c.opts.Publisher.Publish(typeURL, xds.Typed(set()))
	}
	if err != nil {
		c.resync = true
	}
	return err
}

// finish records a build's warnings, status and stats, and reports them.
func (c *Controller) finish(start time.Time, rt routes.Output, texts []string, failed uint64) {
	c.mu.Lock()
	for _, t := range texts {
		if !c.warned[t] {
			c.warned[t] = true
			c.logger.Warn("authorization policy", "warning", t)
		}
	}
	changed := !slices.Equal(texts, c.warnings)
	c.warnings = texts
	status := buildStatus(c.model, rt)
	statusChanged := !reflect.DeepEqual(status, c.status)
	c.status = status
	c.stats.Builds++
	c.stats.PublishErrs += failed
	c.stats.LastBuild, c.stats.LastDuration = time.Now(), time.Since(start)
	first := c.stats.Builds == 1
	c.mu.Unlock()
	if first {
		close(c.ready)
	}
	if changed && c.opts.OnWarnings != nil {
		c.opts.OnWarnings(slices.Clone(texts))
	}
	if statusChanged && c.opts.OnStatus != nil {
		c.opts.OnStatus(status)
	}
}

// routeInputs gathers what route translation reads: every service, the
// ones bound to a waypoint, and the routes.
func routeInputs(in model.Inputs, st *Store) routes.Inputs {
	domain := in.Domain
	if domain == "" {
		domain = model.DefaultDomain
	}
	wps := model.Waypoints(in)
	nss := map[string]*corev1.Namespace{}
	for _, ns := range in.Namespaces {
		nss[ns.Name] = ns
	}
	out := routes.Inputs{HTTPRoutes: st.HTTPRoutes(), GRPCRoutes: st.GRPCRoutes(), TCPRoutes: st.TCPRoutes()}
	for _, svc := range in.Services {
		rs := routes.Service{Namespace: svc.Namespace, Name: svc.Name, Hostname: model.ServiceHostname(svc, domain)}
		for _, p := range svc.Spec.Ports {
			rs.Ports = append(rs.Ports, routes.Port{Port: uint32(p.Port), Name: p.Name, AppProtocol: ptr.Deref(p.AppProtocol, "")})
		}
		out.Services = append(out.Services, rs)
		if model.ServiceBinding(svc, nss[svc.Namespace], wps).Waypoint != nil {
			out.Bound = append(out.Bound, routes.ServiceRef{Namespace: svc.Namespace, Name: svc.Name})
		}
	}
	return out
}

// buildStatus gathers waypoint, binding, route and policy status (the model's
// model.WaypointReport for its last inputs).
func buildStatus(m *model.Builder, rt routes.Output) Status {
	var st Status
	st.Waypoints, st.BindingProblems = m.WaypointReport()
	st.Policies = m.PolicyReport()
	for k, conds := range rt.Conditions {
		st.Routes = append(st.Routes, RouteStatus{Kind: k.Kind, Namespace: k.Namespace, Name: k.Name, Parent: k.ParentIndex, Conditions: conds})
	}
	slices.SortFunc(st.Routes, func(a, b RouteStatus) int {
		return strings.Compare(a.Kind+"/"+a.Namespace+"/"+a.Name+"/"+strconv.Itoa(a.Parent), b.Kind+"/"+b.Namespace+"/"+b.Name+"/"+strconv.Itoa(b.Parent))
	})
	return st
}

// Status returns the current waypoint and route status.
func (c *Controller) Status() Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.status
}
