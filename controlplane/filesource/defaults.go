package filesource

import (
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// applyDefaults fills in, on a validated object, the defaults an API server
// would set where the model reads the field, so that one manifest means the
// same from this source and from a cluster (the Kubernetes source's objects
// come defaulted): a Service port's protocol is TCP and its targetPort is
// its port; a Service's IP family is its cluster IP's (IPv4 when it has
// none yet, as a single-stack IPv4 cluster allocates), single-stack.
func applyDefaults(o Object) {
	if svc, ok := o.(*corev1.Service); ok {
		if svc.Spec.Type != corev1.ServiceTypeExternalName { // no cluster IP, no family
			defaultIPFamilies(svc)
		}
		for i := range svc.Spec.Ports {
			p := &svc.Spec.Ports[i]
			if p.Protocol == "" {
				p.Protocol = corev1.ProtocolTCP
			}
			if p.TargetPort.Type == intstr.Int && p.TargetPort.IntVal == 0 {
				p.TargetPort = intstr.FromInt32(p.Port)
			}
		}
	}
}

// defaultIPFamilies sets a Service's IP families and policy as an IPv4
// single-stack API server does.
func defaultIPFamilies(svc *corev1.Service) {
	if len(svc.Spec.IPFamilies) == 0 {
		family := corev1.IPv4Protocol
		if ip, err := netip.ParseAddr(svc.Spec.ClusterIP); err == nil && ip.Is6() {
			family = corev1.IPv6Protocol
		}
		svc.Spec.IPFamilies = []corev1.IPFamily{family}
	}
	if svc.Spec.IPFamilyPolicy == nil {
		policy := corev1.IPFamilyPolicySingleStack
		if svc.Spec.ClusterIP == corev1.ClusterIPNone && len(svc.Spec.Selector) == 0 {
			policy = corev1.IPFamilyPolicyRequireDualStack // a headless Service without selector
		}
		svc.Spec.IPFamilyPolicy = &policy
	}
}
