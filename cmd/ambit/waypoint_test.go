package main

import (
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

func TestSetNamespaceLabel(t *testing.T) {
	for _, tc := range []struct {
		name, in  string
		found     bool
		wantLabel map[string]string
		keep      []string // substrings the output must keep
	}{
		{name: "flow-style labels", found: true,
			in:        "# the shop\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  labels: {istio.io/dataplane-mode: ambient}\n",
			wantLabel: map[string]string{"istio.io/dataplane-mode": "ambient", "istio.io/use-waypoint": "waypoint"}, keep: []string{"# the shop"}},
		{name: "no labels yet", found: true,
			in:        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n",
			wantLabel: map[string]string{"istio.io/use-waypoint": "waypoint"}},
		{name: "label already set to another waypoint", found: true,
			in:        "kind: Namespace\nmetadata:\n  name: shop\n  labels:\n    istio.io/use-waypoint: old # was old\n",
			wantLabel: map[string]string{"istio.io/use-waypoint": "waypoint"}},
		{name: "among other documents", found: true,
			in:        "kind: ServiceAccount\nmetadata: {name: shop, namespace: shop}\n---\nkind: Namespace\nmetadata:\n  name: shop\n---\nkind: Pod\nmetadata: {name: p, namespace: shop}\n",
			wantLabel: map[string]string{"istio.io/use-waypoint": "waypoint"}, keep: []string{"kind: ServiceAccount", "kind: Pod"}},
		{name: "another namespace only", found: false,
			in: "kind: Namespace\nmetadata:\n  name: other\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, found, err := setNamespaceLabel([]byte(tc.in), "shop", "istio.io/use-waypoint", "waypoint")
			if err != nil || found != tc.found {
				t.Fatalf("found %v err %v, want found %v", found, err, tc.found)
			}
			if !found {
				return
			}
			for _, k := range tc.keep {
				if !strings.Contains(string(out), k) {
					t.Errorf("output lost %q:\n%s", k, out)
				}
			}
			for _, doc := range strings.Split(string(out), "\n---\n") {
				var o struct {
					Kind     string
					Metadata struct {
						Name   string
						Labels map[string]string
					}
				}
				if err := yaml.Unmarshal([]byte(doc), &o); err != nil {
					t.Fatalf("output is not YAML: %v\n%s", err, out)
				}
				if o.Kind != "Namespace" {
					continue
				}
				if len(o.Metadata.Labels) != len(tc.wantLabel) {
					t.Errorf("labels %v, want %v", o.Metadata.Labels, tc.wantLabel)
				}
				for k, v := range tc.wantLabel {
					if o.Metadata.Labels[k] != v {
						t.Errorf("label %s = %q, want %q", k, o.Metadata.Labels[k], v)
					}
				}
			}
		})
	}
	if _, _, err := setNamespaceLabel([]byte("kind: [unclosed"), "shop", "k", "v"); err == nil {
		t.Error("malformed YAML: no error")
	}
}

func TestWaypointGateway(t *testing.T) {
	for _, forWhat := range []string{"service", "workload", "all", "none"} {
		var gw struct {
			Metadata struct {
				Name, Namespace string
				Labels          map[string]string
			}
			Spec struct {
				GatewayClassName string `json:"gatewayClassName"`
				Listeners        []struct {
					Port     int
					Protocol string
				}
			}
		}
		if err := yaml.Unmarshal(waypointGateway("shop", "wp", forWhat), &gw); err != nil {
			t.Fatal(err)
		}
		wantFor := forWhat
		if forWhat == "service" {
			wantFor = "" // the default needs no label
		}
		if gw.Metadata.Name != "wp" || gw.Metadata.Namespace != "shop" || gw.Metadata.Labels["istio.io/waypoint-for"] != wantFor ||
			gw.Spec.GatewayClassName != "istio-waypoint" || len(gw.Spec.Listeners) != 1 || gw.Spec.Listeners[0].Port != 15008 || gw.Spec.Listeners[0].Protocol != "HBONE" {
			t.Errorf("--for %s: %+v", forWhat, gw)
		}
	}
}
