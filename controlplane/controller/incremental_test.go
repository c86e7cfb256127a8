package controller

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"reflect"
	"slices"
	"sync"
	"testing"

	"google.golang.org/protobuf/proto"
	securityv1beta1 "istio.io/api/security/v1beta1"
	typev1beta1 "istio.io/api/type/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambit-mesh/ambit/controlplane/config"
	"github.com/ambit-mesh/ambit/controlplane/model"
	"github.com/ambit-mesh/ambit/controlplane/xds"
)

// deltaRecorder is a DeltaPublisher that keeps each type's set as the
// publishes and deltas make it.
type deltaRecorder struct {
	mu     sync.Mutex
	sets   map[string]map[string]proto.Message
	deltas int
	fulls  int
}

func (r *deltaRecorder) Publish(typeURL string, set map[string]proto.Message) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.sets == nil {
		r.sets = map[string]map[string]proto.Message{}
	}
	r.sets[typeURL] = maps.Clone(set)
	r.fulls++
	return nil
}

func (r *deltaRecorder) PublishDelta(typeURL string, changed map[string]proto.Message, removed []string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.sets == nil {
		r.sets = map[string]map[string]proto.Message{}
	}
	if r.sets[typeURL] == nil {
		r.sets[typeURL] = map[string]proto.Message{}
	}
	for _, k := range removed {
		if _, kept := changed[k]; !kept {
			delete(r.sets[typeURL], k)
		}
	}
	maps.Copy(r.sets[typeURL], changed)
	r.deltas++
	return nil
}

func (r *deltaRecorder) set(typeURL string) map[string]proto.Message {
	r.mu.Lock()
	defer r.mu.Unlock()
	return maps.Clone(r.sets[typeURL])
}

func sameMessages[M proto.Message](got map[string]proto.Message, want map[string]M) string {
	for k, w := range want {
		g, ok := got[k]
		if !ok {
			return "missing " + k
		}
		if !proto.Equal(g, w) {
			return fmt.Sprintf("%s: got %v, want %v", k, g, w)
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			return "extra " + k
		}
	}
	return ""
}

// TestIncrementalMatchesFull: whatever sequence of changes the controller
// gets (mostly pods, some other objects, waypoints' pods among them),
// what it has published, as deltas or whole sets, is what a full build of
// its store gives.
func TestIncrementalMatchesFull(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	rec := &deltaRecorder{}
	c := New(Options{Publisher: rec})
	pods := map[string]*corev1.Pod{}
	mkPod := func(ns, name string) *corev1.Pod {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{"app": []string{"a", "b"}[r.IntN(2)]}},
			Spec:   corev1.PodSpec{NodeName: "n1", ServiceAccountName: "sa"},
			Status: corev1.PodStatus{PodIP: fmt.Sprintf("10.0.%d.%d", r.IntN(4), 1+r.IntN(200)), Phase: corev1.PodRunning}}
		if r.IntN(10) == 0 {
			p.Labels = map[string]string{model.LabelGatewayName: "wp"}
		}
		if r.IntN(8) == 0 {
			p.Status.Phase = corev1.PodSucceeded
		}
		return p
	}
	for _, ns := range []string{"demo", "other"} {
		c.Apply(add(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: map[string]string{model.LabelUseWaypoint: "wp"}}}))
		c.Apply(add(&gatewayv1.Gateway{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "wp", Labels: map[string]string{model.LabelWaypointFor: "all"}},
			Spec: gatewayv1.GatewaySpec{GatewayClassName: model.GatewayClassWaypoint, Listeners: []gatewayv1.Listener{{Name: "m", Port: 15008, Protocol: "HBONE"}}}}))
	}
	c.Apply(add(strict()))
	check := func(step int) {
		t.Helper()
		c.build()
		in := c.inputs()
		if d := sameMessages(rec.set(xds.AddressType), model.Build(in)); d != "" {
			t.Fatalf("step %d: addresses: %s", step, d)
		}
		want, _ := model.BuildAuthorizations(in)
		if d := sameMessages(rec.set(xds.AuthorizationType), want); d != "" {
			t.Fatalf("step %d: authorizations: %s", step, d)
		}
		ws, wp := model.WaypointReport(in)
		if st := c.Status(); !reflect.DeepEqual(st.Waypoints, ws) || !reflect.DeepEqual(st.BindingProblems, wp) {
			t.Fatalf("step %d: status %+v, want %+v %+v", step, st, ws, wp)
		}
	}
	check(0)
	for step := 1; step <= 400; step++ {
		for range 1 + r.IntN(3) {
			ns := []string{"demo", "other"}[r.IntN(2)]
			name := fmt.Sprintf("p%d", r.IntN(25))
			switch k := ns + "/" + name; {
			case pods[k] != nil && r.IntN(5) == 0:
				delete(pods, k)
				c.Apply(config.Event{Type: config.Deleted, Key: config.Key{Kind: config.KindPod, Namespace: ns, Name: name}})
			default:
				pods[k] = mkPod(ns, name)
				c.Apply(upd(pods[k]))
			}
		}
		switch r.IntN(20) {
		case 0:
			c.Apply(upd(svc([]string{"a", "b"}[r.IntN(2)], fmt.Sprintf("10.96.0.%d", r.IntN(9)))))
		case 1:
			p := policy(fmt.Sprintf("pol%d", r.IntN(2)))
			p.Spec.Selector = &typev1beta1.WorkloadSelector{MatchLabels: map[string]string{"app": "a"}}
			c.Apply(upd(p))
		case 2:
			pa := &securityv1.PeerAuthentication{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "ports"},
				Spec: securityv1beta1.PeerAuthentication{Selector: &typev1beta1.WorkloadSelector{MatchLabels: map[string]string{"app": "b"}},
					Mtls:          &securityv1beta1.PeerAuthentication_MutualTLS{Mode: securityv1beta1.PeerAuthentication_MutualTLS_STRICT},
					PortLevelMtls: map[uint32]*securityv1beta1.PeerAuthentication_MutualTLS{8080: {Mode: securityv1beta1.PeerAuthentication_MutualTLS_PERMISSIVE}}}}
			if r.IntN(2) == 0 {
				c.Apply(upd(pa))
			} else {
				c.Apply(del(pa))
			}
		}
		check(step)
	}
	// A full build publishes the waypoint types as whole sets; a pod-only
	// one does not.
	full := rec.fulls / 2
	if rec.deltas == 0 || full > 300 || full < 10 {
		t.Errorf("%d deltas, %d full builds of 401: want both paths taken, mostly the pods'", rec.deltas, full)
	}
	t.Logf("%d full builds, %d delta publishes", full, rec.deltas)
	if st := c.Stats(); st.Builds < 400 || st.PublishErrs != 0 {
		t.Errorf("stats %+v", st)
	}
	if got := slices.Sorted(maps.Keys(rec.set(xds.AddressType))); len(got) == 0 {
		t.Error("no addresses")
	}
}
