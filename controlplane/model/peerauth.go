package model

import (
	"fmt"
	"hash/fnv"
	"sort"

	"google.golang.org/protobuf/types/known/emptypb"
	securityv1beta1 "istio.io/api/security/v1beta1"
	securityclient "istio.io/client-go/pkg/apis/security/v1"
	"istio.io/istio/pkg/workloadapi/security"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
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

// paIndex holds the PeerAuthentications as the model applies them, from
// which forPod says what they make of one pod. Precedence is upstream's: a
// workload's selector policy over its namespace's over the mesh's (root
// namespace); port-level modes override for their ports.
type paIndex struct {
	root   string
	mesh   *securityclient.PeerAuthentication
	nsWide map[string]*securityclient.PeerAuthentication
	// selectors are the selector PeerAuthentications by namespace, by name.
	selectors map[string][]selectorPA
	// static is the shared policy refusing plaintext under STRICT, under
	// staticKey.
	static    *security.Authorization
	staticKey string
}

type selectorPA struct {
	pa  *securityclient.PeerAuthentication
	sel labels.Selector
}

func newPAIndex(pas []*securityclient.PeerAuthentication, root string) *paIndex {
	x := &paIndex{root: root, nsWide: map[string]*securityclient.PeerAuthentication{}, selectors: map[string][]selectorPA{},
		staticKey: root + "/" + StaticStrictPolicy,
		static: &security.Authorization{Name: StaticStrictPolicy, Namespace: root, Scope: security.Scope_WORKLOAD_SELECTOR,
			Action: security.Action_DENY, Groups: []*security.Group{{Rules: []*security.Rules{{Matches: []*security.Match{denyPlaintext()}}}}}}}
	var selectorPAs []*securityclient.PeerAuthentication
	for _, pa := range pas {
		switch {
		case len(pa.Spec.GetSelector().GetMatchLabels()) > 0:
			selectorPAs = append(selectorPAs, pa)
		case pa.Namespace == root:
			x.mesh = pa
		default:
			x.nsWide[pa.Namespace] = pa
		}
	}
	sort.Slice(selectorPAs, func(i, j int) bool {
		return selectorPAs[i].Namespace+"/"+selectorPAs[i].Name < selectorPAs[j].Namespace+"/"+selectorPAs[j].Name
	})
	for _, pa := range selectorPAs {
		x.selectors[pa.Namespace] = append(x.selectors[pa.Namespace], selectorPA{pa: pa, sel: labels.SelectorFromSet(pa.Spec.GetSelector().GetMatchLabels())})
	}
	return x
}

// podPA is what the PeerAuthentications make of one pod: the policies its
// workload must name, and whether they are the shared static policy or a
// port-level policy of its own.
type podPA struct {
	attach []string
	static bool
	ownKey string // namespace/name of own
	own    *security.Authorization
}

// addTo adds the pod's policies to a set of policies by key.
func (p podPA) addTo(out map[string]*security.Authorization, x *paIndex) {
	if p.static {
		out[x.staticKey] = x.static
	}
	if p.own != nil {
		out[p.ownKey] = p.own
	}
}

// forPod computes what the PeerAuthentications make of a pod: under
// STRICT without port exceptions it names the static policy; with port
// exceptions that leave some port strict, a policy of its own.
func (x *paIndex) forPod(pod *corev1.Pod) podPA {
	mode := modeUnset
	var ports map[uint32]*securityv1beta1.PeerAuthentication_MutualTLS
	for _, s := range x.selectors[pod.Namespace] {
		if s.sel.Matches(labels.Set(pod.Labels)) {
			mode, ports = modeOf(s.pa.Spec.GetMtls()), s.pa.Spec.GetPortLevelMtls()
			break
		}
	}
	if mode == modeUnset {
		if pa := x.nsWide[pod.Namespace]; pa != nil {
			mode = modeOf(pa.Spec.GetMtls())
		}
	}
	if mode == modeUnset && x.mesh != nil {
		mode = modeOf(x.mesh.Spec.GetMtls())
	}
	if len(ports) == 0 {
		if mode == modeStrict {
			return podPA{attach: []string{x.staticKey}, static: true}
		}
		return podPA{}
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
		return podPA{} // permissive everywhere
	}
	key := pod.Namespace + "/" + pod.Name
	h := fnv.New32a()
	h.Write([]byte(key))
	name := fmt.Sprintf("istio_converted_strict_%s_%08x", pod.Name, h.Sum32())
	own := &security.Authorization{Name: name, Namespace: pod.Namespace, Scope: security.Scope_WORKLOAD_SELECTOR,
		Action: security.Action_DENY, Groups: []*security.Group{{Rules: []*security.Rules{{Matches: []*security.Match{m}}}}}}
	return podPA{attach: []string{pod.Namespace + "/" + name}, ownKey: pod.Namespace + "/" + name, own: own}
}
