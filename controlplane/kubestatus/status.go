package kubestatus

import (
	"context"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
	metav1alpha1 "istio.io/api/meta/v1alpha1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambit-mesh/ambit/controlplane/config"
	"github.com/ambit-mesh/ambit/controlplane/controller"
	"github.com/ambit-mesh/ambit/controlplane/model"
)

// objectKey names an object whose status the writer owns (a part of).
type objectKey struct{ Kind, Namespace, Name string }

func (k objectKey) String() string { return k.Kind + " " + k.Namespace + "/" + k.Name }

// empty is the wanted status of an object the controller no longer
// reports: nothing for a Gateway (it is gone, or no longer a waypoint: its
// last status stays), no entries of ours for a route.
func (k objectKey) empty() any {
	switch k.Kind {
	case config.KindGateway:
		return gatewayWant{}
	case config.KindAuthorizationPolicy:
		return policyWant{}
	}
	return routeWant{}
}

func isEmpty(d any) bool {
	switch d := d.(type) {
	case gatewayWant:
		return len(d.Conditions) == 0
	case routeWant:
		return len(d.Parents) == 0
	case policyWant:
		return len(d.Conditions) == 0
	}
	return true
}

// policyWant is the condition an AuthorizationPolicy gets (istiod's
// ZtunnelAccepted or WaypointAccepted); empty, the writer removes its
// condition types from the policy.
type policyWant struct {
	Conditions []metav1.Condition
}

// gatewayWant is the part of a waypoint Gateway's status the writer sets.
// Conditions carry neither ObservedGeneration nor LastTransitionTime (set
// when writing).
type gatewayWant struct {
	Conditions []metav1.Condition
	// Addresses are set once the waypoint is programmed; before, the
	// status keeps what it has (upstream never removes an address).
	Addresses []gatewayv1.GatewayStatusAddress
}

// routeWant is the status.parents entries of one route that the writer
// owns, as conditions by index in spec.parentRefs.
type routeWant struct {
	Parents map[int][]metav1.Condition
}

// desired turns the controller's status into the wanted status per object.
func (w *Writer) desired(st controller.Status) map[objectKey]any {
	out := map[objectKey]any{}
	for _, ws := range st.Waypoints {
		if ws.For == "-" {
			continue // a Gateway of another class: not ours
		}
		out[objectKey{config.KindGateway, ws.Namespace, ws.Name}] = w.gatewayWant(ws)
	}
	for _, rs := range st.Routes {
		k := objectKey{rs.Kind, rs.Namespace, rs.Name}
		rw, _ := out[k].(routeWant)
		if rw.Parents == nil {
			rw.Parents = map[int][]metav1.Condition{}
		}
		rw.Parents[rs.Parent] = rs.Conditions
		out[k] = rw
	}
	for _, ps := range st.Policies {
		out[objectKey{config.KindAuthorizationPolicy, ps.Namespace, ps.Name}] = policyWant{Conditions: []metav1.Condition{ps.Condition}}
	}
	return out
}

// gatewayWant is a waypoint's status as upstream Istio writes it: Accepted,
// Programmed, and as addresses its Service's cluster IP and hostname.
func (w *Writer) gatewayWant(ws model.WaypointStatus) gatewayWant {
	hostname := ws.Name + "." + ws.Namespace + ".svc." + w.opts.Domain
	accepted := metav1.Condition{Type: string(gatewayv1.GatewayConditionAccepted), Status: metav1.ConditionTrue,
		Reason: string(gatewayv1.GatewayReasonAccepted), Message: "Resource accepted"}
	if !ws.Accepted {
		accepted.Status, accepted.Message = metav1.ConditionFalse, ws.Reason
		accepted.Reason = string(gatewayv1.GatewayReasonInvalidParameters)
		if strings.Contains(ws.Reason, "listener") {
			accepted.Reason = string(gatewayv1.GatewayReasonListenersNotValid)
		}
	}
	programmed := metav1.Condition{Type: string(gatewayv1.GatewayConditionProgrammed), Status: metav1.ConditionTrue,
		Reason:  string(gatewayv1.GatewayReasonProgrammed),
		Message: "Resource programmed, assigned to service(s) " + hostname + ":" + strconv.Itoa(model.WaypointListenerPort)}
	if !ws.Programmed {
		programmed.Status, programmed.Message = metav1.ConditionFalse, ws.Reason
		programmed.Reason = string(gatewayv1.GatewayReasonNoResources)
		if !ws.Accepted {
			programmed.Reason = string(gatewayv1.GatewayReasonInvalid)
		}
	}
	out := gatewayWant{Conditions: []metav1.Condition{accepted, programmed}}
	if ws.Programmed {
		ipType, hostType := gatewayv1.IPAddressType, gatewayv1.HostnameAddressType
		if ip := w.serviceIP(ws.Namespace, ws.Name); ip != "" {
			out.Addresses = append(out.Addresses, gatewayv1.GatewayStatusAddress{Type: &ipType, Value: ip})
		}
		out.Addresses = append(out.Addresses, gatewayv1.GatewayStatusAddress{Type: &hostType, Value: hostname})
	}
	return out
}

// serviceIP is the cluster IP of the waypoint's Service, if known.
func (w *Writer) serviceIP(namespace, name string) string {
	if w.opts.Objects == nil {
		return ""
	}
	o, ok := w.opts.Objects.Get(config.Key{Kind: config.KindService, Namespace: namespace, Name: name})
	svc, _ := o.(*corev1.Service)
	if !ok || svc == nil || svc.Spec.ClusterIP == corev1.ClusterIPNone {
		return ""
	}
	return svc.Spec.ClusterIP
}

// write brings one object's status to d. It reports whether it sent an
// update, and whether the object no longer exists.
func (w *Writer) write(ctx context.Context, k objectKey, d any) (changed, gone bool, err error) {
	err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
		var err error
		switch d := d.(type) {
		case gatewayWant:
			changed, err = w.writeGateway(ctx, k, d)
		case routeWant:
			changed, err = w.writeRoute(ctx, k, d)
		case policyWant:
			changed, err = w.writePolicy(ctx, k, d)
		}
		return err
	})
	if apierrors.IsNotFound(err) {
		return false, true, nil
	}
	return changed, false, err
}

func (w *Writer) writeGateway(ctx context.Context, k objectKey, d gatewayWant) (bool, error) {
	if len(d.Conditions) == 0 {
		return false, nil
	}
	client := w.gateway.GatewayV1().Gateways(k.Namespace)
	gw, err := client.Get(ctx, k.Name, metav1.GetOptions{})
	if err != nil {
		return false, err
	}
	st := gw.Status.DeepCopy()
	for _, c := range d.Conditions {
		c.ObservedGeneration = gw.Generation
		meta.SetStatusCondition(&st.Conditions, c) // keeps lastTransitionTime unless the status flips
	}
	if d.Addresses != nil {
		st.Addresses = d.Addresses
	}
	if equality.Semantic.DeepEqual(*st, gw.Status) {
		return false, nil
	}
	gw.Status = *st
	_, err = client.UpdateStatus(ctx, gw, metav1.UpdateOptions{FieldManager: FieldManager})
	return err == nil, err
}

// route is what the writer needs of one route object of any kind.
type route struct {
	generation int64
	refs       []gatewayv1.ParentReference
	status     *gatewayv1.RouteStatus
	update     func(context.Context) error
}

func (w *Writer) getRoute(ctx context.Context, k objectKey) (*route, error) {
	opts := metav1.UpdateOptions{FieldManager: FieldManager}
	v1 := w.gateway.GatewayV1()
	switch k.Kind {
	case config.KindHTTPRoute:
		r, err := v1.HTTPRoutes(k.Namespace).Get(ctx, k.Name, metav1.GetOptions{})
		if err != nil {
			return nil, err
		}
		return &route{r.Generation, r.Spec.ParentRefs, &r.Status.RouteStatus, func(ctx context.Context) error {
			_, err := v1.HTTPRoutes(k.Namespace).UpdateStatus(ctx, r, opts)
			return err
		}}, nil
	case config.KindGRPCRoute:
		r, err := v1.GRPCRoutes(k.Namespace).Get(ctx, k.Name, metav1.GetOptions{})
		if err != nil {
			return nil, err
		}
		return &route{r.Generation, r.Spec.ParentRefs, &r.Status.RouteStatus, func(ctx context.Context) error {
			_, err := v1.GRPCRoutes(k.Namespace).UpdateStatus(ctx, r, opts)
			return err
		}}, nil
	case config.KindTCPRoute:
		r, err := v1.TCPRoutes(k.Namespace).Get(ctx, k.Name, metav1.GetOptions{})
		if err != nil {
			return nil, err
		}
		return &route{r.Generation, r.Spec.ParentRefs, &r.Status.RouteStatus, func(ctx context.Context) error {
			_, err := v1.TCPRoutes(k.Namespace).UpdateStatus(ctx, r, opts)
			return err
		}}, nil
	}
	return nil, apierrors.NewNotFound(gatewayv1.Resource(strings.ToLower(k.Kind)), k.Name)
}

func (w *Writer) writeRoute(ctx context.Context, k objectKey, d routeWant) (bool, error) {
	r, err := w.getRoute(ctx, k)
	if err != nil {
		return false, err
	}
	parents := mergeParents(r.status.Parents, r.refs, d.Parents, gatewayv1.GatewayController(w.opts.ControllerName), k.Namespace, metav1.Now())
	if equality.Semantic.DeepEqual(parents, r.status.Parents) {
		return false, nil
	}
	r.status.Parents = parents
	return true, r.update(ctx)
}

// mergeParents returns a route's status.parents with this controller's
// entries replaced by want (conditions by spec.parentRefs index): other
// controllers' entries are kept as they are, in their order, followed by
// ours in parentRef order. A condition keeps its lastTransitionTime while
// its status does not change; now is the time of a change.
func mergeParents(cur []gatewayv1.RouteParentStatus, refs []gatewayv1.ParentReference, want map[int][]metav1.Condition,
	ctrl gatewayv1.GatewayController, routeNS string, now metav1.Time) []gatewayv1.RouteParentStatus {
	out := []gatewayv1.RouteParentStatus{} // never null: the CRD requires the field
	ours := map[string]gatewayv1.RouteParentStatus{}
	for _, p := range cur {
		if p.ControllerName != ctrl {
			out = append(out, p)
			continue
		}
		ours[parentKey(p.ParentRef, routeNS)] = p
	}
	seen := map[string]bool{}
	for _, i := range slices.Sorted(maps.Keys(want)) {
		if i < 0 || i >= len(refs) {
			continue
		}
		key := parentKey(refs[i], routeNS)
		if seen[key] {
			continue // a repeated parentRef: one entry
		}
		seen[key] = true
		prev := ours[key]
		conds := make([]metav1.Condition, 0, len(want[i]))
		for _, c := range want[i] {
			if old := meta.FindStatusCondition(prev.Conditions, c.Type); old != nil && old.Status == c.Status {
				c.LastTransitionTime = old.LastTransitionTime
			} else if c.LastTransitionTime.IsZero() {
				c.LastTransitionTime = now
			}
			conds = append(conds, c)
		}
		out = append(out, gatewayv1.RouteParentStatus{ParentRef: refs[i], ControllerName: ctrl, Conditions: conds})
	}
	return out
}

// parentKey identifies a parentRef with Gateway API's defaults applied.
func parentKey(p gatewayv1.ParentReference, routeNS string) string {
	group, kind, ns := gatewayv1.GroupName, "Gateway", routeNS
	if p.Group != nil {
		group = string(*p.Group)
	}
	if p.Kind != nil {
		kind = string(*p.Kind)
	}
	if p.Namespace != nil {
		ns = string(*p.Namespace)
	}
	var section, port string
	if p.SectionName != nil {
		section = string(*p.SectionName)
	}
	if p.Port != nil {
		port = strconv.Itoa(int(*p.Port))
	}
	return strings.Join([]string{group, kind, ns, string(p.Name), section, port}, "/")
}

// policyConditionTypes are the AuthorizationPolicy conditions the writer
// owns.
var policyConditionTypes = []string{model.ConditionZtunnelAccepted, model.ConditionWaypointAccepted}

func (w *Writer) writePolicy(ctx context.Context, k objectKey, d policyWant) (bool, error) {
	client := w.istio.SecurityV1().AuthorizationPolicies(k.Namespace)
	ap, err := client.Get(ctx, k.Name, metav1.GetOptions{})
	if err != nil {
		return false, err
	}
	conds := mergePolicyConditions(ap.Status.GetConditions(), d.Conditions, time.Now())
	if slices.EqualFunc(conds, ap.Status.GetConditions(), func(a, b *metav1alpha1.IstioCondition) bool { return proto.Equal(a, b) }) {
		return false, nil
	}
	ap.Status.Conditions = conds
	_, err = client.UpdateStatus(ctx, ap, metav1.UpdateOptions{FieldManager: FieldManager})
	return err == nil, err
}

// mergePolicyConditions returns a policy's status conditions with the
// writer's types set to want: other conditions are kept as they are, in
// their order; ours follow, in want's order. A condition keeps its
// lastTransitionTime while its status does not change; now is the time of
// a change.
func mergePolicyConditions(cur []*metav1alpha1.IstioCondition, want []metav1.Condition, now time.Time) []*metav1alpha1.IstioCondition {
	var out []*metav1alpha1.IstioCondition
	old := map[string]*metav1alpha1.IstioCondition{}
	for _, c := range cur {
		if slices.Contains(policyConditionTypes, c.GetType()) {
			old[c.GetType()] = c
			continue
		}
		out = append(out, c)
	}
	for _, w := range want {
		c := &metav1alpha1.IstioCondition{Type: w.Type, Status: string(w.Status), Reason: w.Reason, Message: w.Message,
			ObservedGeneration: w.ObservedGeneration, LastTransitionTime: timestamppb.New(now)}
		if o := old[w.Type]; o != nil && o.GetStatus() == c.Status && o.GetLastTransitionTime() != nil {
			c.LastTransitionTime = o.GetLastTransitionTime()
		}
		if o := old[w.Type]; o != nil {
			c.LastProbeTime = o.GetLastProbeTime()
		}
		out = append(out, c)
	}
	return out
}
