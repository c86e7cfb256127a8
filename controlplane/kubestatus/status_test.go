package kubestatus

import (
	"reflect"
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
	metav1alpha1 "istio.io/api/meta/v1alpha1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambit-mesh/ambit/controlplane/config"
	"github.com/ambit-mesh/ambit/controlplane/controller"
	"github.com/ambit-mesh/ambit/controlplane/model"
)

func svcRef(name string, port int32) gatewayv1.ParentReference {
	return gatewayv1.ParentReference{Group: ptr.To(gatewayv1.Group("")), Kind: ptr.To(gatewayv1.Kind("Service")), Name: gatewayv1.ObjectName(name), Port: ptr.To(gatewayv1.PortNumber(port))}
}

func cond(typ string, status metav1.ConditionStatus, reason string, at time.Time) metav1.Condition {
	return metav1.Condition{Type: typ, Status: status, Reason: reason, ObservedGeneration: 2, LastTransitionTime: metav1.NewTime(at)}
}

func TestMergeParents(t *testing.T) {
	const ours = gatewayv1.GatewayController("istio.io/gateway-controller")
	t0, t1 := time.Unix(1000, 0), time.Unix(2000, 0)
	now := metav1.NewTime(t1)
	refs := []gatewayv1.ParentReference{svcRef("echo", 8080), svcRef("api", 80)}
	accepted := func(at time.Time) metav1.Condition { return cond("Accepted", metav1.ConditionTrue, "Accepted", at) }
	resolved := func(s metav1.ConditionStatus, at time.Time) metav1.Condition {
		return cond("ResolvedRefs", s, "ResolvedRefs", at)
	}
	want := func(cs ...metav1.Condition) []metav1.Condition {
		for i := range cs {
			cs[i].LastTransitionTime = metav1.Time{}
		}
		return cs
	}
	other := gatewayv1.RouteParentStatus{ParentRef: svcRef("echo", 8080), ControllerName: "example.com/other",
		Conditions: []metav1.Condition{accepted(t0)}}
	tests := []struct {
		name string
		cur  []gatewayv1.RouteParentStatus
		want map[int][]metav1.Condition
		out  []gatewayv1.RouteParentStatus
	}{
		{
			name: "first write stamps now",
			want: map[int][]metav1.Condition{0: want(accepted(t0), resolved(metav1.ConditionFalse, t0))},
			out:  []gatewayv1.RouteParentStatus{{ParentRef: refs[0], ControllerName: ours, Conditions: []metav1.Condition{accepted(t1), resolved(metav1.ConditionFalse, t1)}}},
		},
		{
			name: "unchanged status keeps its transition time; a flip gets now",
			cur:  []gatewayv1.RouteParentStatus{{ParentRef: refs[0], ControllerName: ours, Conditions: []metav1.Condition{accepted(t0), resolved(metav1.ConditionFalse, t0)}}},
			want: map[int][]metav1.Condition{0: want(accepted(t0), resolved(metav1.ConditionTrue, t0))},
			out:  []gatewayv1.RouteParentStatus{{ParentRef: refs[0], ControllerName: ours, Conditions: []metav1.Condition{accepted(t0), resolved(metav1.ConditionTrue, t1)}}},
		},
		{
			name: "other controllers' entries stay, first",
			cur:  []gatewayv1.RouteParentStatus{{ParentRef: refs[1], ControllerName: ours, Conditions: []metav1.Condition{accepted(t0)}}, other},
			want: map[int][]metav1.Condition{0: want(accepted(t0))},
			out:  []gatewayv1.RouteParentStatus{other, {ParentRef: refs[0], ControllerName: ours, Conditions: []metav1.Condition{accepted(t1)}}},
		},
		{
			name: "no longer wanted: our entries go",
			cur:  []gatewayv1.RouteParentStatus{other, {ParentRef: refs[0], ControllerName: ours, Conditions: []metav1.Condition{accepted(t0)}}},
			out:  []gatewayv1.RouteParentStatus{other},
		},
		{
			name: "our only entry removed: an empty list, not null (the CRD requires parents)",
			cur:  []gatewayv1.RouteParentStatus{{ParentRef: refs[0], ControllerName: ours, Conditions: []metav1.Condition{accepted(t0)}}},
			out:  []gatewayv1.RouteParentStatus{},
		},
		{
			name: "parent indexes out of range are ignored; order is parentRef order",
			want: map[int][]metav1.Condition{1: want(accepted(t0)), 0: want(accepted(t0)), 7: want(accepted(t0))},
			out: []gatewayv1.RouteParentStatus{
				{ParentRef: refs[0], ControllerName: ours, Conditions: []metav1.Condition{accepted(t1)}},
				{ParentRef: refs[1], ControllerName: ours, Conditions: []metav1.Condition{accepted(t1)}},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := mergeParents(tt.cur, refs, tt.want, ours, "shop", now)
			if !reflect.DeepEqual(got, tt.out) {
				t.Errorf("got  %+v\nwant %+v", got, tt.out)
			}
		})
	}
}

func TestParentKey(t *testing.T) {
	tests := []struct {
		name string
		ref  gatewayv1.ParentReference
		want string
	}{
		{"gateway defaults", gatewayv1.ParentReference{Name: "gw"}, "gateway.networking.k8s.io/Gateway/shop/gw//"},
		{"service with port", svcRef("echo", 8080), "/Service/shop/echo//8080"},
		{"explicit namespace and section", gatewayv1.ParentReference{Name: "gw", Namespace: ptr.To(gatewayv1.Namespace("infra")), SectionName: ptr.To(gatewayv1.SectionName("http"))},
			"gateway.networking.k8s.io/Gateway/infra/gw/http/"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := parentKey(tt.ref, "shop"); got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

type objects map[config.Key]config.Object

func (o objects) Get(k config.Key) (config.Object, bool) { v, ok := o[k]; return v, ok }

func TestDesired(t *testing.T) {
	w := NewForClients(nil, nil, nil, Options{Objects: objects{
		{Kind: config.KindService, Namespace: "shop", Name: "waypoint"}: &corev1.Service{Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.20"}},
	}})
	ip, host := gatewayv1.IPAddressType, gatewayv1.HostnameAddressType
	tests := []struct {
		name string
		ws   model.WaypointStatus
		want gatewayWant
	}{
		{
			name: "programmed: service IP and hostname",
			ws:   model.WaypointStatus{Namespace: "shop", Name: "waypoint", For: "service", Accepted: true, Programmed: true, Addresses: []string{"10.244.0.9"}},
			want: gatewayWant{Conditions: []metav1.Condition{
				{Type: "Accepted", Status: "True", Reason: "Accepted", Message: "Resource accepted"},
				{Type: "Programmed", Status: "True", Reason: "Programmed", Message: "Resource programmed, assigned to service(s) waypoint.shop.svc.cluster.local:15008"},
			}, Addresses: []gatewayv1.GatewayStatusAddress{{Type: &ip, Value: "10.96.0.20"}, {Type: &host, Value: "waypoint.shop.svc.cluster.local"}}},
		},
		{
			name: "no pod yet: not programmed, no addresses",
			ws:   model.WaypointStatus{Namespace: "shop", Name: "other", For: "service", Accepted: true, Reason: "no running waypoint pod yet"},
			want: gatewayWant{Conditions: []metav1.Condition{
				{Type: "Accepted", Status: "True", Reason: "Accepted", Message: "Resource accepted"},
				{Type: "Programmed", Status: "False", Reason: "NoResources", Message: "no running waypoint pod yet"},
			}},
		},
		{
			name: "bad listener: not accepted",
			ws:   model.WaypointStatus{Namespace: "shop", Name: "bad", For: "service", Reason: "no listener with port 15008 and protocol HBONE"},
			want: gatewayWant{Conditions: []metav1.Condition{
				{Type: "Accepted", Status: "False", Reason: "ListenersNotValid", Message: "no listener with port 15008 and protocol HBONE"},
				{Type: "Programmed", Status: "False", Reason: "Invalid", Message: "no listener with port 15008 and protocol HBONE"},
			}},
		},
		{
			name: "bad label: invalid parameters",
			ws:   model.WaypointStatus{Namespace: "shop", Name: "bad", For: "service", Reason: `label istio.io/waypoint-for="x": want service, workload, all or none`},
			want: gatewayWant{Conditions: []metav1.Condition{
				{Type: "Accepted", Status: "False", Reason: "InvalidParameters", Message: `label istio.io/waypoint-for="x": want service, workload, all or none`},
				{Type: "Programmed", Status: "False", Reason: "Invalid", Message: `label istio.io/waypoint-for="x": want service, workload, all or none`},
			}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := w.gatewayWant(tt.ws)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got  %+v\nwant %+v", got, tt.want)
			}
		})
	}

	// desired: other classes are skipped, route parents gathered per route.
	conds := []metav1.Condition{{Type: "Accepted", Status: "True"}}
	d := w.desired(controller.Status{
		Waypoints: []model.WaypointStatus{tests[0].ws, {Namespace: "shop", Name: "ingress", For: "-"}},
		Routes: []controller.RouteStatus{
			{Kind: "HTTPRoute", Namespace: "shop", Name: "echo", Parent: 0, Conditions: conds},
			{Kind: "HTTPRoute", Namespace: "shop", Name: "echo", Parent: 2, Conditions: conds},
			{Kind: "TCPRoute", Namespace: "shop", Name: "t", Parent: 0, Conditions: conds},
		},
	})
	if len(d) != 3 {
		t.Fatalf("desired: %d objects: %+v", len(d), d)
	}
	if rw := d[objectKey{"HTTPRoute", "shop", "echo"}].(routeWant); len(rw.Parents) != 2 {
		t.Errorf("HTTPRoute parents %+v", rw.Parents)
	}
	if _, ok := d[objectKey{"Gateway", "shop", "ingress"}]; ok {
		t.Error("a Gateway of another class is written")
	}
}

func TestMergePolicyConditions(t *testing.T) {
	t0, t1 := time.Unix(1000, 0), time.Unix(2000, 0)
	ic := func(typ, status, reason string, at time.Time) *metav1alpha1.IstioCondition {
		return &metav1alpha1.IstioCondition{Type: typ, Status: status, Reason: reason, LastTransitionTime: timestamppb.New(at)}
	}
	want := func(typ string, status metav1.ConditionStatus, reason string) metav1.Condition {
		return metav1.Condition{Type: typ, Status: status, Reason: reason}
	}
	for _, tc := range []struct {
		name string
		cur  []*metav1alpha1.IstioCondition
		want []metav1.Condition
		out  []*metav1alpha1.IstioCondition
	}{
		{"new", nil, []metav1.Condition{want("ZtunnelAccepted", "True", "Accepted")},
			[]*metav1alpha1.IstioCondition{ic("ZtunnelAccepted", "True", "Accepted", t1)}},
		{"same status keeps its time", []*metav1alpha1.IstioCondition{ic("ZtunnelAccepted", "True", "Accepted", t0)},
			[]metav1.Condition{want("ZtunnelAccepted", "True", "UnsupportedValue")},
			[]*metav1alpha1.IstioCondition{ic("ZtunnelAccepted", "True", "UnsupportedValue", t0)}},
		{"flipped status takes now", []*metav1alpha1.IstioCondition{ic("ZtunnelAccepted", "True", "Accepted", t0)},
			[]metav1.Condition{want("ZtunnelAccepted", "False", "UnsupportedValue")},
			[]*metav1alpha1.IstioCondition{ic("ZtunnelAccepted", "False", "UnsupportedValue", t1)}},
		{"others kept first", []*metav1alpha1.IstioCondition{ic("ZtunnelAccepted", "True", "Accepted", t0), ic("Reconciled", "True", "x", t0)},
			[]metav1.Condition{want("ZtunnelAccepted", "True", "Accepted")},
			[]*metav1alpha1.IstioCondition{ic("Reconciled", "True", "x", t0), ic("ZtunnelAccepted", "True", "Accepted", t0)}},
		{"type changes: the old one goes", []*metav1alpha1.IstioCondition{ic("ZtunnelAccepted", "True", "Accepted", t0)},
			[]metav1.Condition{want("WaypointAccepted", "True", "Accepted")},
			[]*metav1alpha1.IstioCondition{ic("WaypointAccepted", "True", "Accepted", t1)}},
		{"nothing wanted: ours removed", []*metav1alpha1.IstioCondition{ic("Reconciled", "True", "x", t0), ic("WaypointAccepted", "True", "Accepted", t0)},
			nil, []*metav1alpha1.IstioCondition{ic("Reconciled", "True", "x", t0)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := mergePolicyConditions(tc.cur, tc.want, t1)
			if !slices.EqualFunc(got, tc.out, func(a, b *metav1alpha1.IstioCondition) bool { return proto.Equal(a, b) }) {
				t.Errorf("got %v\nwant %v", got, tc.out)
			}
		})
	}
}
