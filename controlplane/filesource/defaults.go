package filesource

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// applyDefaults fills in, on a validated object, the defaults an API server
// would set where the model reads the field, so that one manifest means the
// same from this source and from a cluster (the Kubernetes source's objects
// come defaulted): a Service port's protocol is TCP and its targetPort is
// its port.
func applyDefaults(o Object) {
	if svc, ok := o.(*corev1.Service); ok {
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
