package controller

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambit-mesh/ambit/controlplane/config"
)

// TestStoreListStaysSorted: List gives every object sorted by
// namespace/name whatever the order of additions, updates and deletions,
// with the sorted list kept in place or sorted again.
func TestStoreListStaysSorted(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	s := NewStore()
	want := map[string]*corev1.Pod{}
	for step := range 3000 {
		name := fmt.Sprintf("p%03d", r.IntN(300))
		key := "demo/" + name
		switch {
		case r.IntN(4) == 0:
			s.Apply(del(pod(name, "", "")))
			delete(want, key)
		default:
			p := pod(name, fmt.Sprintf("10.0.%d.%d", step/250, step%250), corev1.PodRunning)
			s.Apply(upd(p))
			want[key] = p
		}
		// Often (lists kept in place) in some stretches, rarely (sorted
		// again) in others.
		if every := []int{7, 150}[(step/500)%2]; step%every == 0 {
			got := s.Pods()
			if len(got) != len(want) {
				t.Fatalf("step %d: %d pods, want %d", step, len(got), len(want))
			}
			for i, k := range slices.Sorted(maps.Keys(want)) {
				if got[i] != want[k] {
					t.Fatalf("step %d: pod %d is %s/%s, want %s", step, i, got[i].Namespace, got[i].Name, k)
				}
			}
		}
	}
}

// TestSameObject: the cheap checks agree with the JSON form.
func TestSameObject(t *testing.T) {
	a := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "a", ResourceVersion: "1", Labels: map[string]string{}}}
	b := a.DeepCopy()
	c := a.DeepCopy()
	c.ResourceVersion = "2"
	d := a.DeepCopy()
	d.Labels = nil // not deeply equal, the same JSON form
	e := a.DeepCopy()
	e.Labels = map[string]string{"x": "y"}
	for _, tc := range []struct {
		name string
		x, y config.Object
		same bool
	}{
		{"same pointer", a, a, true},
		{"a copy", a, b, true},
		{"another resourceVersion", a, c, false},
		{"nil and empty labels", a, d, true},
		{"another label", a, e, false},
	} {
		if got := sameObject(tc.x, tc.y); got != tc.same {
			t.Errorf("%s: same %v, want %v", tc.name, got, tc.same)
		}
	}
}
