package xds

import (
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/ambit-mesh/ambit/internal/xdspart"
)

// DefaultMaxResponseBytes bounds the encoded size of one delta response.
// gRPC clients refuse messages over 4 MiB unless told otherwise, and
// ztunnels keep that default: a mesh's whole address set is far larger
// (about 440 bytes per workload: 50,000 pods make 22 MB), so a response
// over the bound goes out as several, each acknowledged on its own. Every
// part but the last has a nonce internal/xdspart marks, and Ambit's
// proxies apply the parts together when the last arrives: a stream's
// first state, which they take as the whole state (to drop what a
// restarted control plane no longer has, and to become ready), is whole.
const DefaultMaxResponseBytes = 2 << 20

// Field numbers of DeltaDiscoveryResponse (envoy/service/discovery/v3):
// resources = 2, removed_resources = 6.
const (
	fieldResources        = 2
	fieldRemovedResources = 6
)

// splitResponse cuts a delta response into parts of at most maxBytes
// encoded (a resource larger than that goes alone). Every part has the
// response's type URL and system version (and control plane); resources keep their order and
// removals come after them, in the last parts. The last part keeps the
// response's nonce, the others get xdspart.Nonce(nonce, i). A response
// within the bound is returned as it is.
func splitResponse(r *discovery.DeltaDiscoveryResponse, maxBytes int) []*discovery.DeltaDiscoveryResponse {
	if maxBytes <= 0 || proto.Size(r) <= maxBytes {
		return []*discovery.DeltaDiscoveryResponse{r}
	}
	newPart := func() *discovery.DeltaDiscoveryResponse {
		return &discovery.DeltaDiscoveryResponse{TypeUrl: r.GetTypeUrl(), SystemVersionInfo: r.GetSystemVersionInfo(),
			ControlPlane: r.GetControlPlane(), Nonce: r.GetNonce()}
	}
	// Room for the nonce suffix and the other scalar fields.
	overhead := proto.Size(newPart()) + 16
	var parts []*discovery.DeltaDiscoveryResponse
	cur, size := newPart(), overhead
	flush := func() {
		parts = append(parts, cur)
		cur, size = newPart(), overhead
	}
	for _, res := range r.GetResources() {
		n := protowire.SizeTag(fieldResources) + protowire.SizeBytes(proto.Size(res))
		if size+n > maxBytes && len(cur.Resources) > 0 {
			flush()
		}
		cur.Resources = append(cur.Resources, res)
		size += n
	}
	for _, name := range r.GetRemovedResources() {
		n := protowire.SizeTag(fieldRemovedResources) + protowire.SizeBytes(len(name))
		if size+n > maxBytes && (len(cur.Resources) > 0 || len(cur.RemovedResources) > 0) {
			flush()
		}
		cur.RemovedResources = append(cur.RemovedResources, name)
		size += n
	}
	if len(cur.Resources) > 0 || len(cur.RemovedResources) > 0 || len(parts) == 0 {
		parts = append(parts, cur)
	}
	for i, p := range parts[:len(parts)-1] {
		p.Nonce = xdspart.Nonce(r.GetNonce(), i+1)
	}
	// What go-control-plane does not set, should it ever: with the end.
	last := parts[len(parts)-1]
	last.RemovedResourceNames, last.ResourceErrors = r.GetRemovedResourceNames(), r.GetResourceErrors()
	return parts
}
