package model

import (
	"maps"
	"slices"

	securityclient "istio.io/client-go/pkg/apis/security/v1"
	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"
	corev1 "k8s.io/api/core/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambit-mesh/ambit/controlplane/authzpolicy"
	"github.com/ambit-mesh/ambit/internal/parallel"
)

// Builder computes the model again and again as its inputs change, and
// says what changed: Build and BuildAuthorizations for the same inputs
// give the same resources (equivalence_test.go holds it to that), but a
// Builder reuses the resource of every pod and service whose inputs did
// not change, and UpdatePods applies pod changes without looking at the
// rest of the mesh.
//
// What a pod's workload depends on is its pod, its namespace's objects
// (the Namespace, the services with a selector, the selector policies and
// PeerAuthentications there) and mesh-wide ones (the root namespace's, the
// waypoints, cluster and domain); a service's on the service, its
// Namespace and the waypoints. The builder compares those by identity:
// the objects given to it must never be modified afterwards (a changed
// object is a new object, as the controller's store keeps them).
//
// A Builder is not safe for concurrent use.
type Builder struct {
	c      *compiled // of the last Build
	static *security.Authorization

	// gen changes when a mesh-wide input changed (every result is stale);
	// nsGen when a namespace's inputs changed (its pods' are).
	gen    uint64
	nsGen  map[string]uint64
	global globalDeps
	nsDeps map[string]nsDeps

	pods     map[string]*podEntry // by namespace/name
	services map[string]*svcEntry // by namespace/name
	// boundPods and boundSvcs are the pods and services whose waypoint
	// binding binds or fails (the others are not in WaypointReport).
	boundPods, boundSvcs map[string]struct{}

	addresses map[string]*workloadapi.Address
	// paRefs counts, per policy key, the pods whose PeerAuthentications
	// make them name it; paObj is that policy. user are the translated
	// AuthorizationPolicies, which win over those of the same key; authz
	// is the union, as served.
	paRefs map[string]int
	paObj  map[string]*security.Authorization
	user   map[string]*security.Authorization
	authz  map[string]*security.Authorization
	// translated keeps each AuthorizationPolicy's translation, for the
	// root namespace translatedRoot.
	translated     map[*securityclient.AuthorizationPolicy]translation
	translatedRoot string
}

type translation struct {
	a        *security.Authorization
	warnings []authzpolicy.Warning
}

// Delta is what a build changed.
type Delta struct {
	// Addresses and Authorizations are the resources added or replaced (a
	// replaced resource may be equal to the one before: it was computed
	// again); the Removed lists name those that went.
	Addresses             map[string]*workloadapi.Address
	RemovedAddresses      []string
	Authorizations        map[string]*security.Authorization
	RemovedAuthorizations []string
}

// Empty reports whether the delta changes nothing.
func (d Delta) Empty() bool {
	return len(d.Addresses) == 0 && len(d.RemovedAddresses) == 0 && len(d.Authorizations) == 0 && len(d.RemovedAuthorizations) == 0
}

// PodChange is a pod added or changed (Pod set) or deleted (Pod nil), by
// its namespace/name.
type PodChange struct {
	Key string
	Pod *corev1.Pod
}

type podEntry struct {
	pod        *corev1.Pod
	gen, nsGen uint64
	addr       *workloadapi.Address // nil: not a workload
	pa         podPA
	bind       Binding
}

type svcEntry struct {
	svc    *corev1.Service
	ns     *corev1.Namespace
	vip    string
	hasVIP bool
	gen    uint64
	name   string
	addr   *workloadapi.Address
	bind   Binding
}

// globalDeps are the inputs every result depends on.
type globalDeps struct {
	cluster, domain, root string
	gateways              []*gatewayv1.Gateway
	waypoints             map[string][]string // key -> addresses, the part of a waypoint pods make
	meshPA                *securityclient.PeerAuthentication
	rootPolicies          []*securityclient.AuthorizationPolicy // selector policies of the root namespace
}

func (g globalDeps) equal(o globalDeps) bool {
	return g.cluster == o.cluster && g.domain == o.domain && g.root == o.root && g.meshPA == o.meshPA &&
		slices.Equal(g.gateways, o.gateways) && slices.Equal(g.rootPolicies, o.rootPolicies) &&
		maps.EqualFunc(g.waypoints, o.waypoints, slices.Equal[[]string])
}

// nsDeps are the inputs a namespace's pods depend on.
type nsDeps struct {
	ns        *corev1.Namespace
	services  []*corev1.Service
	policies  []*securityclient.AuthorizationPolicy
	selectPAs []*securityclient.PeerAuthentication
	nsWidePA  *securityclient.PeerAuthentication
}

func (d nsDeps) equal(o nsDeps) bool {
	return d.ns == o.ns && d.nsWidePA == o.nsWidePA && slices.Equal(d.services, o.services) &&
		slices.Equal(d.policies, o.policies) && slices.Equal(d.selectPAs, o.selectPAs)
}

// NewBuilder returns a builder that has built nothing.
func NewBuilder() *Builder {
	return &Builder{nsGen: map[string]uint64{}, nsDeps: map[string]nsDeps{}, pods: map[string]*podEntry{}, services: map[string]*svcEntry{},
		boundPods: map[string]struct{}{}, boundSvcs: map[string]struct{}{},
		addresses: map[string]*workloadapi.Address{}, paRefs: map[string]int{}, paObj: map[string]*security.Authorization{},
		user: map[string]*security.Authorization{}, authz: map[string]*security.Authorization{}}
}

// Addresses returns every address resource, as Build(in) would for the
// last inputs. The map is the builder's: read it only until the next
// call.
func (b *Builder) Addresses() map[string]*workloadapi.Address { return b.addresses }

// Authorizations returns every authorization resource, as
// BuildAuthorizations would for the last inputs; see Addresses.
func (b *Builder) Authorizations() map[string]*security.Authorization { return b.authz }

// Build computes the model from in (as Build and BuildAuthorizations),
// computing again only what depends on objects that changed since the
// last call, and returns what changed and the policy warnings.
func (b *Builder) Build(in Inputs) (Delta, []authzpolicy.Warning) {
	wps := Waypoints(in)
	c := compile(in, wps)
	if b.static != nil && b.static.GetNamespace() == c.root {
		c.pa.static = b.static // the same policy: keep the resource
	}
	b.c, b.static = c, c.pa.static

	g := globalDeps{cluster: c.cluster, domain: c.domain, root: c.root, gateways: in.Gateways, waypoints: map[string][]string{},
		meshPA: c.pa.mesh}
	for k, w := range wps {
		addrs := make([]string, len(w.Addresses))
		for i, a := range w.Addresses {
			addrs[i] = a.String()
		}
		g.waypoints[k] = addrs
	}
	for _, p := range c.policies[c.root] {
		g.rootPolicies = append(g.rootPolicies, p.policy)
	}
	if !g.equal(b.global) {
		b.gen++
	}
	b.global = g
	deps := map[string]nsDeps{}
	dep := func(ns string) *nsDeps {
		d := deps[ns]
		return &d
	}
	set := func(ns string, f func(*nsDeps)) {
		d := dep(ns)
		f(d)
		deps[ns] = *d
	}
	for _, ns := range in.Namespaces {
		set(ns.Name, func(d *nsDeps) { d.ns = ns })
	}
	for ns, ss := range c.svcs {
		set(ns, func(d *nsDeps) {
			for _, s := range ss {
				d.services = append(d.services, s.svc)
			}
		})
	}
	for ns, ps := range c.policies {
		set(ns, func(d *nsDeps) {
			for _, p := range ps {
				d.policies = append(d.policies, p.policy)
			}
		})
	}
	for ns, ps := range c.pa.selectors {
		set(ns, func(d *nsDeps) {
			for _, p := range ps {
				d.selectPAs = append(d.selectPAs, p.pa)
			}
		})
	}
	for ns, pa := range c.pa.nsWide {
		set(ns, func(d *nsDeps) { d.nsWidePA = pa })
	}
	for ns, d := range deps {
		if old, ok := b.nsDeps[ns]; !ok || !old.equal(d) {
			b.nsGen[ns]++
		}
	}
	for ns := range b.nsDeps {
		if _, ok := deps[ns]; !ok {
			b.nsGen[ns]++
		}
	}
	b.nsDeps = deps

	next := make(map[string]*workloadapi.Address, len(in.Services)+len(in.Pods))
	services := make(map[string]*svcEntry, len(in.Services))
	boundSvcs, boundPods := map[string]struct{}{}, map[string]struct{}{}
	for _, s := range in.Services {
		key := s.Namespace + "/" + s.Name
		vip, hasVIP := c.clusterIPs[key]
		e := b.services[key]
		if e == nil || e.svc != s || e.ns != c.nss[s.Namespace] || e.gen != b.gen || e.vip != vip || e.hasVIP != hasVIP {
			e = &svcEntry{svc: s, ns: c.nss[s.Namespace], vip: vip, hasVIP: hasVIP, gen: b.gen}
			e.name, e.addr, e.bind = buildService(s, c)
		}
		services[key] = e
		next[e.name] = e.addr
		if bound(e.bind) {
			boundSvcs[key] = struct{}{}
		}
	}
	b.services, b.boundSvcs = services, boundSvcs
	// The pods whose inputs changed are computed again, on every CPU when
	// there are many (a cold start computes every pod): podEntry only
	// reads the Builder.
	keys := make([]string, len(in.Pods))
	entries := make([]*podEntry, len(in.Pods))
	var stale []int
	for i, pod := range in.Pods {
		keys[i] = pod.Namespace + "/" + pod.Name
		e := b.pods[keys[i]]
		if e == nil || e.pod != pod || e.gen != b.gen || e.nsGen != b.nsGen[pod.Namespace] {
			stale = append(stale, i)
		} else {
			entries[i] = e
		}
	}
	parallel.For(len(stale), func(j int) { entries[stale[j]] = b.podEntry(in.Pods[stale[j]]) })
	pods := make(map[string]*podEntry, len(in.Pods))
	for i := range in.Pods {
		key, e := keys[i], entries[i]
		pods[key] = e
		if e.addr != nil {
			next[e.addr.GetWorkload().GetUid()] = e.addr
		}
		if bound(e.bind) {
			boundPods[key] = struct{}{}
		}
	}
	b.pods, b.boundPods = pods, boundPods

	var d Delta
	d.Addresses, d.RemovedAddresses = diff(b.addresses, next)
	b.addresses = next

	b.paRefs, b.paObj = map[string]int{}, map[string]*security.Authorization{}
	for _, e := range entries { // in input order: the last pod naming a key wins, as in BuildAuthorizations
		b.addPA(e.pa, 1)
	}
	warnings := b.translate(in.Policies, in.RootNamespace)
	authz := maps.Clone(b.paObj)
	maps.Copy(authz, b.user)
	d.Authorizations, d.RemovedAuthorizations = diff(b.authz, authz)
	b.authz = authz
	return d, warnings
}

// translate sets b.user as translatePolicies would, translating only the
// policies it has not seen, and returns the warnings.
func (b *Builder) translate(policies []*securityclient.AuthorizationPolicy, root string) []authzpolicy.Warning {
	if b.translated == nil || b.translatedRoot != root {
		b.translated, b.translatedRoot = map[*securityclient.AuthorizationPolicy]translation{}, root
	}
	seen := make(map[*securityclient.AuthorizationPolicy]translation, len(policies))
	b.user = map[string]*security.Authorization{}
	var warnings []authzpolicy.Warning
	for _, p := range policies {
		t, ok := b.translated[p]
		if !ok {
			t.a, t.warnings = authzpolicy.Translate(p, root)
		}
		seen[p] = t
		warnings = append(warnings, t.warnings...)
		if t.a != nil {
			b.user[p.Namespace+"/"+p.Name] = t.a
		}
	}
	b.translated = seen
	return warnings
}

// podEntry computes a pod's results with the last Build's inputs.
func (b *Builder) podEntry(pod *corev1.Pod) *podEntry {
	e := &podEntry{pod: pod, gen: b.gen, nsGen: b.nsGen[pod.Namespace], pa: b.c.pa.forPod(pod),
		bind: PodBinding(pod, b.c.nss[pod.Namespace], b.c.wps)}
	e.addr = buildWorkload(pod, b.c, e.pa, e.bind)
	return e
}

// addPA counts (sign 1) or uncounts (-1) the policies a pod names.
func (b *Builder) addPA(p podPA, sign int) {
	add := func(key string, a *security.Authorization) {
		b.paRefs[key] += sign
		switch {
		case b.paRefs[key] <= 0:
			delete(b.paRefs, key)
			delete(b.paObj, key)
		case sign > 0:
			b.paObj[key] = a
		}
	}
	if p.static {
		add(b.c.pa.staticKey, b.c.pa.static)
	}
	if p.own != nil {
		add(p.ownKey, p.own)
	}
}

// UpdatePods applies pod changes to the last Build's state, when nothing
// but those pods changed since (the caller's promise), and returns what
// changed. It reports false, changing nothing, when it cannot: before any
// Build, or when a pod is (or was) one of a waypoint's, which changes the
// waypoint and so every binding; then the caller must Build.
func (b *Builder) UpdatePods(changes []PodChange) (Delta, bool) {
	if b.c == nil {
		return Delta{}, false
	}
	for _, ch := range changes {
		if old := b.pods[ch.Key]; (old != nil && b.makesWaypoint(old.pod)) || (ch.Pod != nil && b.makesWaypoint(ch.Pod)) {
			return Delta{}, false
		}
	}
	touchedAddr, touchedAuthz := map[string]bool{}, map[string]bool{}
	oldAddr := map[string]*workloadapi.Address{}
	oldAuthz := map[string]*security.Authorization{}
	touch := func(name string) {
		if !touchedAddr[name] {
			touchedAddr[name] = true
			oldAddr[name] = b.addresses[name]
		}
	}
	touchPA := func(p podPA) {
		for _, k := range []string{b.c.pa.staticKey, p.ownKey} {
			if k != "" && !touchedAuthz[k] {
				touchedAuthz[k] = true
				oldAuthz[k] = b.authz[k]
			}
		}
	}
	for _, ch := range changes {
		if old := b.pods[ch.Key]; old != nil {
			if old.addr != nil {
				name := old.addr.GetWorkload().GetUid()
				touch(name)
				delete(b.addresses, name)
			}
			touchPA(old.pa)
			b.addPA(old.pa, -1)
			delete(b.pods, ch.Key)
			delete(b.boundPods, ch.Key)
		}
		if ch.Pod == nil {
			continue
		}
		e := b.podEntry(ch.Pod)
		b.pods[ch.Key] = e
		if bound(e.bind) {
			b.boundPods[ch.Key] = struct{}{}
		}
		if e.addr != nil {
			name := e.addr.GetWorkload().GetUid()
			touch(name)
			b.addresses[name] = e.addr
		}
		touchPA(e.pa)
		b.addPA(e.pa, 1)
	}
	var d Delta
	for name := range touchedAddr {
		now, ok := b.addresses[name]
		switch {
		case !ok && oldAddr[name] != nil:
			d.RemovedAddresses = append(d.RemovedAddresses, name)
		case ok && now != oldAddr[name]:
			if d.Addresses == nil {
				d.Addresses = map[string]*workloadapi.Address{}
			}
			d.Addresses[name] = now
		}
	}
	for key := range touchedAuthz {
		now := b.user[key]
		if now == nil {
			now = b.paObj[key]
		}
		switch {
		case now == nil && oldAuthz[key] != nil:
			delete(b.authz, key)
			d.RemovedAuthorizations = append(d.RemovedAuthorizations, key)
		case now != nil && now != oldAuthz[key]:
			b.authz[key] = now
			if d.Authorizations == nil {
				d.Authorizations = map[string]*security.Authorization{}
			}
			d.Authorizations[key] = now
		}
	}
	slices.Sort(d.RemovedAddresses)
	slices.Sort(d.RemovedAuthorizations)
	return d, true
}

// bound reports whether a binding is in WaypointReport.
func bound(b Binding) bool { return b.Waypoint != nil || b.Problem != "" }

// WaypointReport returns what WaypointReport gives for the last inputs
// (given sorted by namespace and name, as the controller's store lists
// them), from the bindings the builder keeps: it costs the waypoints and
// the objects that bind to one or fail to, not the mesh.
func (b *Builder) WaypointReport() ([]WaypointStatus, []BindingProblem) {
	if b.c == nil {
		return report(nil, nil, nil, nil)
	}
	svcs := make([]objectBinding, 0, len(b.boundSvcs))
	for _, k := range slices.Sorted(maps.Keys(b.boundSvcs)) {
		svcs = append(svcs, objectBinding{k, b.services[k].bind})
	}
	pods := make([]objectBinding, 0, len(b.boundPods))
	for _, k := range slices.Sorted(maps.Keys(b.boundPods)) {
		pods = append(pods, objectBinding{k, b.pods[k].bind})
	}
	return report(b.c.wps, b.global.gateways, svcs, pods)
}

// makesWaypoint reports whether a pod counts for one of the waypoints of
// the last Build (Waypoints: its namespace and gateway-name label name
// one): then its changes change the waypoint.
func (b *Builder) makesWaypoint(pod *corev1.Pod) bool {
	_, ok := b.c.wps[pod.Namespace+"/"+pod.Labels[LabelGatewayName]]
	return ok
}

// diff returns the entries of next that are new or not the same pointer
// as in prev, and the names of prev's that next lacks, sorted.
func diff[M comparable](prev, next map[string]M) (map[string]M, []string) {
	var changed map[string]M
	var removed []string
	for k, v := range next {
		if old, ok := prev[k]; !ok || old != v {
			if changed == nil {
				changed = make(map[string]M, max(len(next)-len(prev), 8))
			}
			changed[k] = v
		}
	}
	for k := range prev {
		if _, ok := next[k]; !ok {
			removed = append(removed, k)
		}
	}
	slices.Sort(removed)
	return changed, removed
}
