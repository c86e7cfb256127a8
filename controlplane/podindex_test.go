package controlplane

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

type podList []*corev1.Pod

func (l podList) Pods() []*corev1.Pod { return l }

func TestPodIndex(t *testing.T) {
	mk := func(ns, sa, node string, phase corev1.PodPhase) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "p"}, Spec: corev1.PodSpec{ServiceAccountName: sa, NodeName: node}, Status: corev1.PodStatus{Phase: phase}}
	}
	idx := PodIndex{Snapshot: func() PodLister {
		return podList{mk("demo", "echo", "node1", ""), mk("demo", "", "node2", corev1.PodRunning), mk("demo", "job", "node1", corev1.PodSucceeded)}
	}}
	tests := []struct {
		node, ns, sa string
		want         bool
	}{
		{"node1", "demo", "echo", true},
		{"node2", "demo", "echo", false},
		{"node2", "demo", "default", true},
		{"node1", "other", "echo", false},
		{"node1", "demo", "job", false}, // finished pods do not count
	}
	for _, tc := range tests {
		if got := idx.HasPod(tc.node, tc.ns, tc.sa); got != tc.want {
			t.Errorf("HasPod(%s, %s, %s) = %v, want %v", tc.node, tc.ns, tc.sa, got, tc.want)
		}
	}
}
