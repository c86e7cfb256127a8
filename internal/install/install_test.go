package install

import (
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/utils/ptr"

	"github.com/ambit-mesh/ambit/identity"
	"github.com/ambit-mesh/ambit/manifests"
)

func TestReadiness(t *testing.T) {
	dep := func(gen, observed int64, replicas, updated, available, total int32) *appsv1.Deployment {
		return &appsv1.Deployment{
			ObjectMeta: metav1.ObjectMeta{Generation: gen},
			Spec:       appsv1.DeploymentSpec{Replicas: ptr.To(replicas)},
			Status:     appsv1.DeploymentStatus{ObservedGeneration: observed, UpdatedReplicas: updated, AvailableReplicas: available, Replicas: total},
		}
	}
	ds := func(gen, observed int64, desired, updated, available int32) *appsv1.DaemonSet {
		return &appsv1.DaemonSet{
			ObjectMeta: metav1.ObjectMeta{Generation: gen},
			Status:     appsv1.DaemonSetStatus{ObservedGeneration: observed, DesiredNumberScheduled: desired, UpdatedNumberScheduled: updated, NumberAvailable: available},
		}
	}
	for _, tc := range []struct {
		name  string
		obj   runtime.Object
		ready bool
		state string
	}{
		{"deployment rolled out", dep(2, 2, 1, 1, 1, 1), true, "1/1 ready"},
		{"deployment not observed", dep(3, 2, 1, 1, 1, 1), false, "1/1 ready"},
		{"deployment pending", dep(1, 1, 1, 1, 0, 1), false, "0/1 ready"},
		{"deployment mid-rollout (old pod left)", dep(2, 2, 2, 2, 2, 3), false, "2/2 ready"},
		{"daemonset on 3 nodes", ds(1, 1, 3, 3, 3), true, "3/3 nodes ready"},
		{"daemonset updating", ds(2, 2, 3, 1, 3), false, "3/3 nodes ready"},
		{"daemonset not observed", ds(2, 1, 3, 3, 3), false, "rollout not observed yet"},
		{"daemonset on no node", ds(1, 1, 0, 0, 0), true, "0/0 nodes ready"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ready, state := readiness(tc.obj)
			if ready != tc.ready || state != tc.state {
				t.Errorf("ready %v %q, want %v %q", ready, state, tc.ready, tc.state)
			}
		})
	}
}

func TestSelectorOf(t *testing.T) {
	objs, err := manifests.Render(manifests.Defaults("v1"))
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, o := range objs {
		if sel, ok := selectorOf(o); ok {
			got[o.Ref()] = sel
		}
	}
	want := map[string]string{
		"Deployment istio-system/istiod":          "app=istiod",
		"DaemonSet istio-system/ztunnel":          "app=ztunnel",
		"DaemonSet istio-system/ambit-node-agent": "app=ambit-node-agent",
	}
	if len(got) != len(want) {
		t.Errorf("selectors %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: selector %q, want %q", k, got[k], v)
		}
	}
}

func TestNewCASecret(t *testing.T) {
	now := time.Now()
	s, err := NewCASecret("example.org", now)
	if err != nil {
		t.Fatal(err)
	}
	if s.Name != CASecret || s.Namespace != manifests.Namespace || s.Labels[manifests.ManagedByLabel] != manifests.ManagedBy {
		t.Errorf("secret %s/%s labels %v", s.Namespace, s.Name, s.Labels)
	}
	certs, err := identity.ParseCerts(s.Data["cert-chain.pem"])
	if err != nil {
		t.Fatal(err)
	}
	root := certs[0]
	if !root.IsCA || root.NotAfter.Before(now.Add(9*365*24*time.Hour)) {
		t.Errorf("root: CA %v, until %v", root.IsCA, root.NotAfter)
	}
	if len(root.URIs) == 0 || root.URIs[0].Host != "example.org" {
		t.Errorf("root URIs %v, want the trust domain example.org", root.URIs)
	}
	if _, err := NewCASecret("Not A Domain", now); err == nil {
		t.Error("a bad trust domain made a CA")
	}
}
