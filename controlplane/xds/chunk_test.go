package xds

import (
	"fmt"
	"github.com/ambit-mesh/ambit/internal/xdspart"
	"slices"
	"strings"
	"testing"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

func response(resources, removed int, size int) *discovery.DeltaDiscoveryResponse {
	r := &discovery.DeltaDiscoveryResponse{TypeUrl: AddressType, Nonce: "7", SystemVersionInfo: "42"}
	for i := range resources {
		r.Resources = append(r.Resources, &discovery.Resource{Name: fmt.Sprintf("r%04d", i), Version: "v",
			Resource: &anypb.Any{TypeUrl: AddressType, Value: []byte(strings.Repeat("x", size))}})
	}
	for i := range removed {
		r.RemovedResources = append(r.RemovedResources, fmt.Sprintf("gone%04d", i))
	}
	return r
}

func TestSplitResponse(t *testing.T) {
	for _, tc := range []struct {
		name                    string
		resources, removed, max int
		size                    int // of each resource's value
		parts                   int // 0: more than one, each at least half full
	}{
		{"within the bound", 10, 2, 1 << 20, 100, 1},
		{"no bound", 1000, 0, 0, 1000, 1},
		{"resources split", 100, 0, 10 << 10, 1000, 0},
		{"removals split too", 10, 2000, 8 << 10, 1000, 0},
		{"a resource over the bound goes alone", 3, 0, 500, 1000, 3},
		{"only removals", 0, 3000, 4 << 10, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := response(tc.resources, tc.removed, tc.size)
			parts := splitResponse(r, tc.max)
			switch {
			case tc.parts > 0 && len(parts) != tc.parts:
				t.Fatalf("%d parts, want %d", len(parts), tc.parts)
			case tc.parts == 0 && len(parts) < 2:
				t.Fatalf("%d parts, want a split", len(parts))
			case tc.parts == 0:
				for i, p := range parts[:len(parts)-1] {
					if proto.Size(p) < tc.max/2 {
						t.Errorf("part %d: %d bytes, less than half the bound %d", i, proto.Size(p), tc.max)
					}
				}
			}
			var names, removed, nonces []string
			for i, p := range parts {
				if tc.max > 0 && proto.Size(p) > tc.max && len(p.Resources)+len(p.RemovedResources) > 1 {
					t.Errorf("part %d: %d bytes over the bound %d", i, proto.Size(p), tc.max)
				}
				if p.GetTypeUrl() != AddressType || p.GetSystemVersionInfo() != "42" {
					t.Errorf("part %d: type %q version %q", i, p.GetTypeUrl(), p.GetSystemVersionInfo())
				}
				for _, res := range p.Resources {
					names = append(names, res.GetName())
				}
				if len(p.RemovedResources) > 0 && i < len(parts)-1 && len(parts[i+1].Resources) > 0 {
					t.Errorf("part %d: removals before resources", i)
				}
				removed = append(removed, p.RemovedResources...)
				nonces = append(nonces, p.GetNonce())
			}
			var want, wantRemoved []string
			for _, res := range r.Resources {
				want = append(want, res.GetName())
			}
			wantRemoved = r.RemovedResources
			if !slices.Equal(names, want) || !slices.Equal(removed, wantRemoved) {
				t.Errorf("parts carry %d resources and %d removals, want %d and %d, in order", len(names), len(removed), len(want), len(wantRemoved))
			}
			for i, n := range nonces {
				if more := xdspart.More(n); more != (i < len(nonces)-1) {
					t.Errorf("part %d of %d: nonce %q, xdspart.More = %v", i+1, len(nonces), n, more)
				}
			}
			if nonces[len(nonces)-1] != "7" {
				t.Errorf("last nonce %q, want the response's", nonces[len(nonces)-1])
			}
			if len(slices.Compact(slices.Sorted(slices.Values(nonces)))) != len(nonces) {
				t.Errorf("nonces not distinct: %v", nonces)
			}
		})
	}
}
