package kubesource

import (
	"encoding/json"
	"testing"
	"time"

	istiometa "istio.io/api/meta/v1alpha1"
	securityv1beta1 "istio.io/api/security/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambit-mesh/ambit/controlplane/config"
)

func meta(name string) metav1.ObjectMeta {
	return metav1.ObjectMeta{
		Name: name, Namespace: "demo", ResourceVersion: "42", Generation: 3, UID: "u-1",
		Labels:        map[string]string{"app": "echo"},
		Annotations:   map[string]string{annotationLastApplied: `{"big":"copy"}`, "keep": "me"},
		ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubectl", Operation: metav1.ManagedFieldsOperationApply}},
	}
}

func jsonOf(t *testing.T, o any) string {
	t.Helper()
	b, err := json.Marshal(o)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestNormalize(t *testing.T) {
	now := metav1.NewTime(time.Unix(1700000000, 0))
	cond := metav1.Condition{Type: "Accepted", Status: metav1.ConditionTrue, Reason: "Accepted", LastTransitionTime: now}
	tests := []struct {
		name string
		in   config.Object
		gvk  schema.GroupVersionKind
		want config.Object // without TypeMeta: the test sets gvk on it
	}{
		{
			name: "pod keeps its status, loses resourceVersion, managedFields and last-applied",
			in: &corev1.Pod{ObjectMeta: meta("echo"), Spec: corev1.PodSpec{NodeName: "n1"},
				Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.0.0.1"}},
			gvk: corev1.SchemeGroupVersion.WithKind("Pod"),
			want: &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "echo", Namespace: "demo", Generation: 3, UID: "u-1",
				Labels: map[string]string{"app": "echo"}, Annotations: map[string]string{"keep": "me"}},
				Spec: corev1.PodSpec{NodeName: "n1"}, Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.0.0.1"}},
		},
		{
			name: "the only annotation removed leaves none",
			in: &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "demo", ResourceVersion: "7",
				Annotations: map[string]string{annotationLastApplied: "{}"}}},
			gvk:  corev1.SchemeGroupVersion.WithKind("Namespace"),
			want: &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "demo"}},
		},
		{
			name: "gateway status is the control plane's",
			in: &gatewayv1.Gateway{ObjectMeta: meta("waypoint"), Spec: gatewayv1.GatewaySpec{GatewayClassName: "istio-waypoint"},
				Status: gatewayv1.GatewayStatus{Conditions: []metav1.Condition{cond}}},
			gvk: gatewayv1.SchemeGroupVersion.WithKind("Gateway"),
			want: &gatewayv1.Gateway{ObjectMeta: metav1.ObjectMeta{Name: "waypoint", Namespace: "demo", Generation: 3, UID: "u-1",
				Labels: map[string]string{"app": "echo"}, Annotations: map[string]string{"keep": "me"}},
				Spec: gatewayv1.GatewaySpec{GatewayClassName: "istio-waypoint"}},
		},
		{
			name: "route status dropped, generation kept (conditions carry it)",
			in: &gatewayv1.HTTPRoute{ObjectMeta: metav1.ObjectMeta{Name: "r", Namespace: "demo", Generation: 9, ResourceVersion: "1"},
				Status: gatewayv1.HTTPRouteStatus{RouteStatus: gatewayv1.RouteStatus{Parents: []gatewayv1.RouteParentStatus{{ControllerName: "x/y", Conditions: []metav1.Condition{cond}}}}}},
			gvk:  gatewayv1.SchemeGroupVersion.WithKind("HTTPRoute"),
			want: &gatewayv1.HTTPRoute{ObjectMeta: metav1.ObjectMeta{Name: "r", Namespace: "demo", Generation: 9}},
		},
		{
			name: "grpc and tcp route status dropped",
			in: &gatewayv1.TCPRoute{ObjectMeta: metav1.ObjectMeta{Name: "t", Namespace: "demo"},
				Status: gatewayv1.TCPRouteStatus{RouteStatus: gatewayv1.RouteStatus{Parents: []gatewayv1.RouteParentStatus{{ControllerName: "x/y"}}}}},
			gvk:  gatewayv1.SchemeGroupVersion.WithKind("TCPRoute"),
			want: &gatewayv1.TCPRoute{ObjectMeta: metav1.ObjectMeta{Name: "t", Namespace: "demo"}},
		},
		{
			name: "istio status (istiod's validation messages) dropped, spec kept",
			in: &securityv1.AuthorizationPolicy{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "demo", ResourceVersion: "5"},
				Spec:   securityv1beta1.AuthorizationPolicy{Action: securityv1beta1.AuthorizationPolicy_DENY},
				Status: istiometa.IstioStatus{ObservedGeneration: 4}},
			gvk: schema.GroupVersionKind{Group: "security.istio.io", Version: "v1", Kind: "AuthorizationPolicy"},
			want: &securityv1.AuthorizationPolicy{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "demo"},
				Spec: securityv1beta1.AuthorizationPolicy{Action: securityv1beta1.AuthorizationPolicy_DENY}},
		},
		{
			name: "node heartbeats and images dropped, addresses and conditions kept",
			in: &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1", ResourceVersion: "77", Labels: map[string]string{"topology.kubernetes.io/zone": "a"}},
				Status: corev1.NodeStatus{
					Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, LastHeartbeatTime: now, LastTransitionTime: now}},
					Addresses:  []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "192.0.2.1"}},
					Images:     []corev1.ContainerImage{{Names: []string{"ambit"}}}, VolumesInUse: []corev1.UniqueVolumeName{"v"},
				}},
			gvk: corev1.SchemeGroupVersion.WithKind("Node"),
			want: &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1", Labels: map[string]string{"topology.kubernetes.io/zone": "a"}},
				Status: corev1.NodeStatus{
					Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, LastTransitionTime: now}},
					Addresses:  []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "192.0.2.1"}},
				}},
		},
		{
			name: "endpoint slice trigger time dropped",
			in: &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Name: "echo-abc", Namespace: "demo", ResourceVersion: "3",
				Annotations: map[string]string{annotationTriggerTime: "2026-01-01T00:00:00Z"}}, AddressType: discoveryv1.AddressTypeIPv4},
			gvk:  discoveryv1.SchemeGroupVersion.WithKind("EndpointSlice"),
			want: &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Name: "echo-abc", Namespace: "demo"}, AddressType: discoveryv1.AddressTypeIPv4},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := jsonOf(t, tt.in)
			got := normalize(tt.in, tt.gvk)
			if after := jsonOf(t, tt.in); after != before {
				t.Errorf("normalize modified its input:\n before %s\n after  %s", before, after)
			}
			tt.want.GetObjectKind().SetGroupVersionKind(tt.gvk)
			if g, w := jsonOf(t, got), jsonOf(t, tt.want); g != w {
				t.Errorf("normalize:\n got  %s\n want %s", g, w)
			}
			if config.KindOf(got) != tt.gvk.Kind {
				t.Errorf("KindOf = %q, want %q", config.KindOf(got), tt.gvk.Kind)
			}
		})
	}
}

// TestNormalizeMakesChurnEqual: two versions of an object that differ only
// in what normalize drops are equal afterwards (what controller.Store
// compares), and a real change is not.
func TestNormalizeMakesChurnEqual(t *testing.T) {
	gvk := corev1.SchemeGroupVersion.WithKind("Service")
	base := func() *corev1.Service {
		return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "echo", Namespace: "demo", ResourceVersion: "1"},
			Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.10", Selector: map[string]string{"app": "echo"}}}
	}
	tests := []struct {
		name  string
		edit  func(*corev1.Service)
		equal bool
	}{
		{"resourceVersion", func(s *corev1.Service) { s.ResourceVersion = "2" }, true},
		{"managedFields", func(s *corev1.Service) {
			s.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "other", Operation: metav1.ManagedFieldsOperationApply}}
		}, true},
		{"last-applied annotation", func(s *corev1.Service) { s.Annotations = map[string]string{annotationLastApplied: "{}"} }, true},
		{"label", func(s *corev1.Service) { s.Labels = map[string]string{"istio.io/use-waypoint": "wp"} }, false},
		{"selector", func(s *corev1.Service) { s.Spec.Selector = map[string]string{"app": "other"} }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			changed := base()
			tt.edit(changed)
			a, b := jsonOf(t, normalize(base(), gvk)), jsonOf(t, normalize(changed, gvk))
			if (a == b) != tt.equal {
				t.Errorf("equal = %v, want %v:\n %s\n %s", a == b, tt.equal, a, b)
			}
		})
	}
}

func TestStripCached(t *testing.T) {
	tests := []struct {
		name string
		in   any
		want string
	}{
		{"managed fields and last-applied go, resourceVersion stays",
			&corev1.Pod{ObjectMeta: meta("p")},
			`{"metadata":{"name":"p","namespace":"demo","uid":"u-1","resourceVersion":"42","generation":3,"labels":{"app":"echo"},"annotations":{"keep":"me"}},"spec":{"containers":null},"status":{}}`},
		{"tombstones pass through", "not an object", `"not an object"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := stripCached(tt.in)
			if err != nil {
				t.Fatal(err)
			}
			if g := jsonOf(t, got); g != tt.want {
				t.Errorf("got  %s\nwant %s", g, tt.want)
			}
		})
	}
}

func TestDropAnnotationsDoesNotShareMaps(t *testing.T) {
	shared := map[string]string{annotationTriggerTime: "t", "keep": "1"}
	a := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Annotations: shared}}
	dropAnnotations(a, annotationTriggerTime)
	if _, ok := shared[annotationTriggerTime]; !ok {
		t.Fatal("dropAnnotations modified a map it did not own")
	}
	if len(a.Annotations) != 1 || a.Annotations["keep"] != "1" {
		t.Fatalf("annotations = %v", a.Annotations)
	}
}

func TestKindsCoverTheFileSourceKinds(t *testing.T) {
	want := []string{config.KindNamespace, config.KindServiceAccount, config.KindPod, config.KindService,
		config.KindAuthorizationPolicy, config.KindPeerAuthentication, config.KindGateway, config.KindHTTPRoute,
		config.KindGRPCRoute, config.KindTCPRoute, config.KindNode, config.KindEndpointSlice}
	got := map[string]kindInfo{}
	for _, k := range kinds() {
		got[k.kind] = k
	}
	for _, k := range want {
		info, ok := got[k]
		if !ok {
			t.Errorf("kind %s is not watched", k)
			continue
		}
		if info.gvk.Kind != k {
			t.Errorf("%s: gvk %v", k, info.gvk)
		}
		if info.crd != (info.gvk.Group != "" && info.gvk.Group != "discovery.k8s.io") {
			t.Errorf("%s: crd = %v for group %q", k, info.crd, info.gvk.Group)
		}
	}
	if len(got) != len(want) {
		t.Errorf("%d kinds watched, want %d", len(got), len(want))
	}
}
