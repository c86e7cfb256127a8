package main

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambit-mesh/ambit/controlplane/config"
	"github.com/ambit-mesh/ambit/controlplane/model"
)

// meshInputs are the model's inputs for the mesh as it is now (after the
// changes made so far) and the backend's extra objects, with the
// controller's defaults (cluster, domain, root namespace).
func meshInputs(m *Mesh, extra []config.Object) model.Inputs {
	in := model.Inputs{Namespaces: slices.Clone(m.Namespaces), Pods: slices.Clone(m.Pods), Services: slices.Clone(m.Services),
		Policies: slices.Clone(m.AuthorizationPolicies), PeerAuthentications: slices.Clone(m.PeerAuthentications),
		Gateways: slices.Clone(m.Gateways)}
	for _, o := range extra {
		switch o := o.(type) {
		case *corev1.Namespace:
			in.Namespaces = append(in.Namespaces, o)
		case *corev1.Pod:
			in.Pods = append(in.Pods, o)
		case *corev1.Service:
			in.Services = append(in.Services, o)
		case *securityv1.AuthorizationPolicy:
			in.Policies = append(in.Policies, o)
		case *securityv1.PeerAuthentication:
			in.PeerAuthentications = append(in.PeerAuthentications, o)
		case *gatewayv1.Gateway:
			in.Gateways = append(in.Gateways, o)
		}
	}
	return in
}

// Verification is the check of the clients' final state: each client's
// digest of every address and authorization resource it holds, content
// included (contentHash), equals the digest of model.Build and
// model.BuildAuthorizations over the mesh's final state.
type Verification struct {
	Clients   []int `json:"clients"`
	Addresses int   `json:"addresses"`
	Policies  int   `json:"policies"`
	OK        bool  `json:"ok"`
}

// verify asks each client for its digests and compares them with the
// model's; any difference is an error naming (for a small state) the
// resources that differ.
func verify(ctx context.Context, timeout time.Duration, clients *clientProcess, ids []int, in model.Inputs) (Verification, error) {
	want, err := modelDigest(in)
	if err != nil {
		return Verification{}, err
	}
	v := Verification{Clients: ids, Addresses: want.addresses, Policies: want.policies}
	for _, id := range ids {
		got, err := clients.digestOf(ctx, timeout, id)
		if err != nil {
			return v, err
		}
		if got.AddressDigest != want.addressDigest || got.PolicyDigest != want.policyDigest {
			return v, fmt.Errorf("client %d does not hold the model's state (it holds %d workloads, %d services, %d policies; the model %d addresses, %d policies): %s",
				id, got.Workloads, got.Services, got.Policies, want.addresses, want.policies, diffHashes(want.hashes, got.Hashes))
		}
	}
	v.OK = true
	return v, nil
}

type digest struct {
	addressDigest, policyDigest uint64
	addresses, policies         int
	hashes                      map[string]uint64
}

// modelDigest is what a client holding exactly the model's output reports.
func modelDigest(in model.Inputs) (digest, error) {
	addrs := model.Build(in)
	authz, _ := model.BuildAuthorizations(in)
	d := digest{addresses: len(addrs), policies: len(authz), hashes: map[string]uint64{}}
	for name, a := range addrs {
		h, err := contentHash(name, a)
		if err != nil {
			return d, fmt.Errorf("verify: %s: %w", name, err)
		}
		d.addressDigest += h
		d.hashes[name] = h
	}
	for name, a := range authz {
		h, err := contentHash(name, a)
		if err != nil {
			return d, fmt.Errorf("verify: %s: %w", name, err)
		}
		d.policyDigest += h
		d.hashes[name] = h
	}
	return d, nil
}

// diffHashes names what differs between the model's hashes and a
// client's (which lists them only for a small state).
func diffHashes(want, got map[string]uint64) string {
	if got == nil {
		return "the state is too large to list what differs"
	}
	var out []string
	for _, n := range slices.Sorted(maps.Keys(want)) {
		g, ok := got[n]
		switch {
		case !ok:
			out = append(out, "missing "+n)
		case g != want[n]:
			out = append(out, "differs "+n)
		}
	}
	for _, n := range slices.Sorted(maps.Keys(got)) {
		if _, ok := want[n]; !ok {
			out = append(out, "extra "+n)
		}
	}
	if len(out) > 20 {
		out = append(out[:20], fmt.Sprintf("and %d more", len(out)-20))
	}
	return strings.Join(out, "; ")
}
