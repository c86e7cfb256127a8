package model

import (
	"fmt"
	"hash/fnv"
	"sort"

	"google.golang.org/protobuf/types/known/emptypb"
	securityv1beta1 "istio.io/api/security/v1beta1"
	securityclient "istio.io/client-go/pkg/apis/security/v1"
	"istio.io/istio/pkg/workloadapi/security"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/ambit-mesh/ambit/controlplane/authzpolicy"
)

// StaticStrictPolicy is the shared policy that refuses plaintext to
// workloads under STRICT mTLS (upstream's istio_converted_static_strict).
const StaticStrictPolicy = "istio_converted_static_strict"

// mtlsMode is a PeerAuthentication mode; unset inherits.
type mtlsMode int

const (
	modeUnset mtlsMode = iota
	modePermissive
	modeStrict
)

func modeOf(m *securityv1beta1.PeerAuthentication_MutualTLS) mtlsMode {
	switch m.GetMode() {
	case securityv1beta1.PeerAuthentication_MutualTLS_STRICT:
		return modeStrict
	case securityv1beta1.PeerAuthentication_MutualTLS_PERMISSIVE, securityv1beta1.PeerAuthentication_MutualTLS_DISABLE:
		// DISABLE cannot turn HBONE's mTLS off; it only admits plaintext.
		return modePermissive
	}
	return modeUnset
}

// denyPlaintext is a match for connections without a peer identity.
func denyPlaintext() *security.Match {
	return &security.Match{NotPrincipals: []*security.StringMatch{{MatchType: &security.StringMatch_Presence{Presence: &emptypb.Empty{}}}}}
}

// peerAuthentication computes, from PeerAuthentications, the policies that
// refuse plaintext where STRICT applies, and which policies each pod must
// name (key namespace/name of the pod -> policy keys). Precedence is
// upstream's: a workload's selector policy over its namespace's over the
// mesh's (root namespace); port-level modes override for their ports.
func peerAuthentication(in Inputs) (map[string]*security.Authorization, map[string][]string) {
	root := in.RootNamespace
	if root == "" {
		root = authzpolicy.DefaultRootNamespace
	}
	var mesh *securityclient.PeerAuthentication
	nsWide := map[string]*securityclient.PeerAuthentication{}
	var selectorPAs []*securityclient.PeerAuthentication
	for _, pa := range in.PeerAuthentications {
		switch {
		case len(pa.Spec.GetSelector().GetMatchLabels()) > 0:
			selectorPAs = append(selectorPAs, pa)
		case pa.Namespace == root:
			mesh = pa
		default:
			nsWide[pa.Namespace] = pa
		}
	}
	sort.Slice(selectorPAs, func(i, j int) bool {
		return selectorPAs[i].Namespace+"/"+selectorPAs[i].Name < selectorPAs[j].Namespace+"/"+selectorPAs[j].Name
	})
	policies := map[string]*security.Authorization{}
	attach := map[string][]string{}
	staticKey := root + "/" + StaticStrictPolicy
	for _, pod := range in.Pods {
		mode := modeUnset
		var ports map[uint32]*securityv1beta1.PeerAuthentication_MutualTLS
		for _, pa := range selectorPAs {
			if pa.Namespace == pod.Namespace && labels.SelectorFromSet(pa.Spec.GetSelector().GetMatchLabels()).Matches(labels.Set(pod.Labels)) {
				mode, ports = modeOf(pa.Spec.GetMtls()), pa.Spec.GetPortLevelMtls()
				break
			}
		}
		if mode == modeUnset {
			if pa := nsWide[pod.Namespace]; pa != nil {
				mode = modeOf(pa.Spec.GetMtls())
			}
		}
		if mode == modeUnset && mesh != nil {
			mode = modeOf(mesh.Spec.GetMtls())
		}
		key := pod.Namespace + "/" + pod.Name
		if len(ports) == 0 {
			if mode == modeStrict {
				policies[staticKey] = &security.Authorization{Name: StaticStrictPolicy, Namespace: root, Scope: security.Scope_WORKLOAD_SELECTOR,
					Action: security.Action_DENY, Groups: []*security.Group{{Rules: []*security.Rules{{Matches: []*security.Match{denyPlaintext()}}}}}}
				attach[key] = append(attach[key], staticKey)
			}
			continue
		}
		// Port-level exceptions: one policy for this workload.
		m := denyPlaintext()
		var portList []uint32
		for p := range ports {
			portList = append(portList, p)
		}
		sort.Slice(portList, func(i, j int) bool { return portList[i] < portList[j] })
		for _, p := range portList {
			pm := modeOf(ports[p])
			switch {
			case mode == modeStrict && pm == modePermissive:
				m.NotDestinationPorts = append(m.NotDestinationPorts, p)
			case mode != modeStrict && pm == modeStrict:
				m.DestinationPorts = append(m.DestinationPorts, p)
			}
		}
		if mode != modeStrict && len(m.DestinationPorts) == 0 {
			continue // permissive everywhere
		}
		h := fnv.New32a()
		h.Write([]byte(key))
		name := fmt.Sprintf("istio_converted_strict_%s_%08x", pod.Name, h.Sum32())
		policies[pod.Namespace+"/"+name] = &security.Authorization{Name: name, Namespace: pod.Namespace, Scope: security.Scope_WORKLOAD_SELECTOR,
			Action: security.Action_DENY, Groups: []*security.Group{{Rules: []*security.Rules{{Matches: []*security.Match{m}}}}}}
		attach[key] = append(attach[key], pod.Namespace+"/"+name)
	}
	return policies, attach
}
