package filesource

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	securityv1beta1 "istio.io/api/security/v1beta1"
	typev1beta1 "istio.io/api/type/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/validate/content"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// validator checks field values of a decoded object. Errors point at the
// line the walker recorded for the field's path.
type validator struct {
	*walker
}

func (v *validator) fail(path, format string, args ...any) {
	v.errorf(v.lineOf(path), path, format, args...)
}

// check reports every message of a k8s validation function.
func (v *validator) check(path string, msgs []string) {
	if len(msgs) > 0 {
		v.fail(path, "%s", strings.Join(msgs, "; "))
	}
}

func (v *validator) port(path string, p int32) {
	if p < 1 || p > 65535 {
		v.fail(path, "must be between 1 and 65535, got %d", p)
	}
}

func (v *validator) labels(path string, labels map[string]string) {
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		val := labels[k]
		p := path + "[" + k + "]"
		if msgs := content.IsLabelKey(k); len(msgs) > 0 {
			v.fail(p, "invalid label key %q: %s", k, strings.Join(msgs, "; "))
		}
		if msgs := content.IsLabelValue(val); len(msgs) > 0 {
			v.fail(p, "invalid label value %q: %s", val, strings.Join(msgs, "; "))
		}
	}
}

// validateMeta checks what every kind shares: name, namespace, labels and
// annotation keys.
func validateMeta(v *validator, o Object, info kindInfo) {
	name := o.GetName()
	switch {
	case name == "":
		v.fail("metadata.name", "is required")
	case info.kind == "Namespace" || info.kind == "Service":
		if msgs := validation.IsDNS1123Label(name); len(msgs) > 0 {
			v.fail("metadata.name", "invalid name %q: %s", name, strings.Join(msgs, "; "))
		}
	default:
		if msgs := validation.IsDNS1123Subdomain(name); len(msgs) > 0 {
			v.fail("metadata.name", "invalid name %q: %s", name, strings.Join(msgs, "; "))
		}
	}
	if info.namespaced {
		if msgs := validation.IsDNS1123Label(o.GetNamespace()); len(msgs) > 0 {
			v.fail("metadata.namespace", "invalid namespace %q: %s", o.GetNamespace(), strings.Join(msgs, "; "))
		}
	}
	v.labels("metadata.labels", o.GetLabels())
	for _, k := range slices.Sorted(maps.Keys(o.GetAnnotations())) {
		if msgs := content.IsLabelKey(k); len(msgs) > 0 {
			v.fail("metadata.annotations["+k+"]", "invalid annotation key %q: %s", k, strings.Join(msgs, "; "))
		}
	}
}

func validateNamespace(v *validator, o Object) {}

func validateServiceAccount(v *validator, o Object) {}

// supportedFieldRefs are the downward-API fields the local runtime resolves.
func supportedFieldRefs() []string {
	return []string{"metadata.name", "metadata.namespace", "metadata.uid", "spec.nodeName", "spec.serviceAccountName", "status.podIP"}
}

func (v *validator) protocol(path string, p corev1.Protocol) {
	switch p {
	case "", corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP:
	default:
		v.fail(path, "must be TCP, UDP or SCTP, got %q", p)
	}
}

func (v *validator) ip(path, ip string) {
	if _, err := netip.ParseAddr(ip); err != nil || strings.Contains(ip, "%") {
		v.fail(path, "invalid IP address %q", ip)
	}
}

func (v *validator) container(path string, c *corev1.Container, names map[string]bool) {
	switch {
	case c.Name == "":
		v.fail(path+".name", "is required")
	case names[c.Name]:
		v.fail(path+".name", "duplicate container name %q", c.Name)
	default:
		v.check(path+".name", validation.IsDNS1123Label(c.Name))
	}
	names[c.Name] = true
	portNames := map[string]bool{}
	for j, cp := range c.Ports {
		pp := fmt.Sprintf("%s.ports[%d]", path, j)
		v.port(pp+".containerPort", cp.ContainerPort)
		if cp.HostPort != 0 {
			v.port(pp+".hostPort", cp.HostPort)
		}
		v.protocol(pp+".protocol", cp.Protocol)
		if cp.HostIP != "" {
			v.ip(pp+".hostIP", cp.HostIP)
		}
		if cp.Name != "" {
			if portNames[cp.Name] {
				v.fail(pp+".name", "duplicate port name %q", cp.Name)
			}
			portNames[cp.Name] = true
			v.check(pp+".name", validation.IsValidPortName(cp.Name))
		}
	}
	for j, e := range c.Env {
		ep := fmt.Sprintf("%s.env[%d]", path, j)
		if e.Name == "" {
			v.fail(ep+".name", "is required")
		} else {
			v.check(ep+".name", validation.IsEnvVarName(e.Name))
		}
		if e.ValueFrom == nil {
			continue
		}
		if e.Value != "" {
			v.fail(ep+".valueFrom", "may not be set together with value")
		}
		if e.ValueFrom.FieldRef == nil {
			v.fail(ep+".valueFrom", "only fieldRef is supported")
			continue
		}
		if fp := e.ValueFrom.FieldRef.FieldPath; !slices.Contains(supportedFieldRefs(), fp) {
			v.fail(ep+".valueFrom.fieldRef.fieldPath", "unsupported field %q; supported: %s", fp, strings.Join(supportedFieldRefs(), ", "))
		}
	}
}

func validatePod(v *validator, o Object) {
	pod := o.(*corev1.Pod)
	spec := &pod.Spec
	if len(spec.Containers) == 0 {
		v.fail("spec.containers", "at least one container is required")
	}
	names := map[string]bool{}
	for i := range spec.InitContainers {
		v.container(fmt.Sprintf("spec.initContainers[%d]", i), &spec.InitContainers[i], names)
	}
	for i := range spec.Containers {
		v.container(fmt.Sprintf("spec.containers[%d]", i), &spec.Containers[i], names)
	}
	switch spec.RestartPolicy {
	case "", corev1.RestartPolicyAlways, corev1.RestartPolicyOnFailure, corev1.RestartPolicyNever:
	default:
		v.fail("spec.restartPolicy", "must be Always, OnFailure or Never, got %q", spec.RestartPolicy)
	}
	if spec.NodeName != "" {
		v.check("spec.nodeName", validation.IsDNS1123Subdomain(spec.NodeName))
	}
	if spec.ServiceAccountName != "" {
		v.check("spec.serviceAccountName", validation.IsDNS1123Subdomain(spec.ServiceAccountName))
	}
	if spec.DeprecatedServiceAccount != "" && spec.ServiceAccountName != "" && spec.DeprecatedServiceAccount != spec.ServiceAccountName {
		v.fail("spec.serviceAccount", "must equal serviceAccountName when both are set")
	}
	for i, h := range spec.HostAliases {
		v.ip(fmt.Sprintf("spec.hostAliases[%d].ip", i), h.IP)
	}
	if spec.DNSConfig != nil {
		for i, ns := range spec.DNSConfig.Nameservers {
			v.ip(fmt.Sprintf("spec.dnsConfig.nameservers[%d]", i), ns)
		}
	}
	// Status is what a kubelet reports; a standalone control plane fed by
	// this source reads it (IP, phase) as the runtime's report.
	st := &pod.Status
	switch st.Phase {
	case "", corev1.PodPending, corev1.PodRunning, corev1.PodSucceeded, corev1.PodFailed, corev1.PodUnknown:
	default:
		v.fail("status.phase", "must be Pending, Running, Succeeded, Failed or Unknown, got %q", st.Phase)
	}
	if st.PodIP != "" {
		v.ip("status.podIP", st.PodIP)
	}
	for i, ip := range st.PodIPs {
		v.ip(fmt.Sprintf("status.podIPs[%d].ip", i), ip.IP)
	}
	if st.PodIP != "" && len(st.PodIPs) > 0 && st.PodIPs[0].IP != st.PodIP {
		v.fail("status.podIPs[0].ip", "must equal status.podIP, got %q and %q", st.PodIPs[0].IP, st.PodIP)
	}
	if st.HostIP != "" {
		v.ip("status.hostIP", st.HostIP)
	}
	for i, ip := range st.HostIPs {
		v.ip(fmt.Sprintf("status.hostIPs[%d].ip", i), ip.IP)
	}
}

func validateService(v *validator, o Object) {
	svc := o.(*corev1.Service)
	spec := &svc.Spec
	switch spec.Type {
	case "", corev1.ServiceTypeClusterIP, corev1.ServiceTypeNodePort, corev1.ServiceTypeLoadBalancer:
	case corev1.ServiceTypeExternalName:
		if spec.ExternalName == "" {
			v.fail("spec.externalName", "is required for type ExternalName")
		}
	default:
		v.fail("spec.type", "must be ClusterIP, NodePort, LoadBalancer or ExternalName, got %q", spec.Type)
	}
	if spec.ExternalName != "" {
		v.check("spec.externalName", validation.IsDNS1123Subdomain(strings.TrimSuffix(spec.ExternalName, ".")))
	}
	if spec.Type != corev1.ServiceTypeExternalName && len(spec.Ports) == 0 && spec.ClusterIP != corev1.ClusterIPNone {
		v.fail("spec.ports", "at least one port is required")
	}
	clusterIP := func(path, ip string) {
		if ip == corev1.ClusterIPNone {
			return
		}
		if _, err := netip.ParseAddr(ip); err != nil || strings.Contains(ip, "%") {
			v.fail(path, "must be a valid IP address or None, got %q", ip)
		}
	}
	if spec.ClusterIP != "" {
		clusterIP("spec.clusterIP", spec.ClusterIP)
	}
	for i, ip := range spec.ClusterIPs {
		clusterIP(fmt.Sprintf("spec.clusterIPs[%d]", i), ip)
	}
	if spec.ClusterIP != "" && len(spec.ClusterIPs) > 0 && spec.ClusterIPs[0] != spec.ClusterIP {
		v.fail("spec.clusterIPs[0]", "must equal spec.clusterIP %q, got %q", spec.ClusterIP, spec.ClusterIPs[0])
	}
	for i, ip := range spec.ExternalIPs {
		v.ip(fmt.Sprintf("spec.externalIPs[%d]", i), ip)
	}
	names := map[string]bool{}
	for i, sp := range spec.Ports {
		p := fmt.Sprintf("spec.ports[%d]", i)
		v.port(p+".port", sp.Port)
		switch {
		case sp.Name == "" && len(spec.Ports) > 1:
			v.fail(p+".name", "is required when a Service has more than one port")
		case sp.Name != "" && names[sp.Name]:
			v.fail(p+".name", "duplicate port name %q", sp.Name)
		case sp.Name != "":
			v.check(p+".name", validation.IsDNS1123Label(sp.Name))
		}
		names[sp.Name] = true
		v.protocol(p+".protocol", sp.Protocol)
		if sp.NodePort != 0 {
			v.port(p+".nodePort", sp.NodePort)
		}
		switch sp.TargetPort.Type {
		case intstr.Int:
			if sp.TargetPort.IntVal != 0 {
				v.port(p+".targetPort", sp.TargetPort.IntVal)
			}
		case intstr.String:
			if msgs := validation.IsValidPortName(sp.TargetPort.StrVal); len(msgs) > 0 {
				v.fail(p+".targetPort", "must be a port number or an IANA port name, got %q: %s", sp.TargetPort.StrVal, strings.Join(msgs, "; "))
			}
		}
	}
	v.labels("spec.selector", spec.Selector)
}

func (v *validator) workloadSelector(path string, s *typev1beta1.WorkloadSelector) {
	if s == nil {
		return
	}
	v.labels(path+".matchLabels", s.GetMatchLabels())
}

func (v *validator) ipBlocks(path string, blocks []string) {
	for i, b := range blocks {
		p := fmt.Sprintf("%s[%d]", path, i)
		if strings.Contains(b, "/") {
			if _, err := netip.ParsePrefix(b); err != nil {
				v.fail(p, "invalid CIDR %q", b)
			}
		} else if _, err := netip.ParseAddr(b); err != nil {
			v.fail(p, "invalid IP address or CIDR %q", b)
		}
	}
}

func (v *validator) nonEmpty(path string, values []string) {
	for i, s := range values {
		if strings.TrimSpace(s) == "" {
			v.fail(fmt.Sprintf("%s[%d]", path, i), "must not be empty")
		}
	}
}

func (v *validator) ports(path string, ports []string) {
	for i, s := range ports {
		p := fmt.Sprintf("%s[%d]", path, i)
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 65535 || strings.TrimLeft(s, "0123456789") != "" {
			v.fail(p, "must be a port number between 1 and 65535, got %q", s)
		}
	}
}

func validateAuthorizationPolicy(v *validator, o Object) {
	spec := &o.(*securityv1.AuthorizationPolicy).Spec
	if spec.GetSelector() != nil && (spec.GetTargetRef() != nil || len(spec.GetTargetRefs()) > 0) {
		v.fail("spec.selector", "selector and targetRef(s) are mutually exclusive")
	}
	if spec.GetTargetRef() != nil && len(spec.GetTargetRefs()) > 0 {
		v.fail("spec.targetRef", "targetRef and targetRefs are mutually exclusive")
	}
	v.workloadSelector("spec.selector", spec.GetSelector())
	if spec.GetAction() == securityv1beta1.AuthorizationPolicy_CUSTOM && spec.GetProvider() == nil {
		v.fail("spec.provider", "is required for action CUSTOM")
	}
	for i, r := range spec.GetRules() {
		rp := fmt.Sprintf("spec.rules[%d]", i)
		for j, f := range r.GetFrom() {
			fp := fmt.Sprintf("%s.from[%d].source", rp, j)
			s := f.GetSource()
			if s == nil {
				v.fail(fp, "is required")
				continue
			}
			v.nonEmpty(fp+".principals", s.GetPrincipals())
			v.nonEmpty(fp+".notPrincipals", s.GetNotPrincipals())
			v.nonEmpty(fp+".requestPrincipals", s.GetRequestPrincipals())
			v.nonEmpty(fp+".notRequestPrincipals", s.GetNotRequestPrincipals())
			v.nonEmpty(fp+".namespaces", s.GetNamespaces())
			v.nonEmpty(fp+".notNamespaces", s.GetNotNamespaces())
			v.nonEmpty(fp+".serviceAccounts", s.GetServiceAccounts())
			v.nonEmpty(fp+".notServiceAccounts", s.GetNotServiceAccounts())
			v.ipBlocks(fp+".ipBlocks", s.GetIpBlocks())
			v.ipBlocks(fp+".notIpBlocks", s.GetNotIpBlocks())
			v.ipBlocks(fp+".remoteIpBlocks", s.GetRemoteIpBlocks())
			v.ipBlocks(fp+".notRemoteIpBlocks", s.GetNotRemoteIpBlocks())
		}
		for j, t := range r.GetTo() {
			tp := fmt.Sprintf("%s.to[%d].operation", rp, j)
			op := t.GetOperation()
			if op == nil {
				v.fail(tp, "is required")
				continue
			}
			v.ports(tp+".ports", op.GetPorts())
			v.ports(tp+".notPorts", op.GetNotPorts())
			v.nonEmpty(tp+".hosts", op.GetHosts())
			v.nonEmpty(tp+".methods", op.GetMethods())
			v.nonEmpty(tp+".paths", op.GetPaths())
		}
		for j, c := range r.GetWhen() {
			cp := fmt.Sprintf("%s.when[%d]", rp, j)
			if c.GetKey() == "" {
				v.fail(cp+".key", "is required")
			}
			if len(c.GetValues()) == 0 && len(c.GetNotValues()) == 0 {
				v.fail(cp, "values or notValues is required")
			}
			switch c.GetKey() {
			case "source.ip", "destination.ip", "remote.ip":
				v.ipBlocks(cp+".values", c.GetValues())
				v.ipBlocks(cp+".notValues", c.GetNotValues())
			case "destination.port":
				v.ports(cp+".values", c.GetValues())
				v.ports(cp+".notValues", c.GetNotValues())
			}
		}
	}
}

func validatePeerAuthentication(v *validator, o Object) {
	spec := &o.(*securityv1.PeerAuthentication).Spec
	v.workloadSelector("spec.selector", spec.GetSelector())
	if len(spec.GetPortLevelMtls()) > 0 && len(spec.GetSelector().GetMatchLabels()) == 0 {
		v.fail("spec.portLevelMtls", "requires a workload selector")
	}
	for port := range spec.GetPortLevelMtls() {
		if port < 1 || port > 65535 {
			v.fail(fmt.Sprintf("spec.portLevelMtls[%d]", port), "port must be between 1 and 65535, got %d", port)
		}
	}
}

func validateGateway(v *validator, o Object) {
	gw := o.(*gatewayv1.Gateway)
	if gw.Spec.GatewayClassName == "" {
		v.fail("spec.gatewayClassName", "is required")
	}
	if len(gw.Spec.Listeners) == 0 {
		v.fail("spec.listeners", "at least one listener is required")
	}
	names := map[gatewayv1.SectionName]bool{}
	for i, l := range gw.Spec.Listeners {
		p := fmt.Sprintf("spec.listeners[%d]", i)
		switch {
		case l.Name == "":
			v.fail(p+".name", "is required")
		case names[l.Name]:
			v.fail(p+".name", "duplicate listener name %q", l.Name)
		}
		names[l.Name] = true
		v.port(p+".port", int32(l.Port))
		if l.Protocol == "" {
			v.fail(p+".protocol", "is required")
		}
	}
}

func (v *validator) parentRefs(refs []gatewayv1.ParentReference) {
	for i, r := range refs {
		p := fmt.Sprintf("spec.parentRefs[%d]", i)
		if r.Name == "" {
			v.fail(p+".name", "is required")
		}
		if r.Port != nil {
			v.port(p+".port", int32(*r.Port))
		}
	}
}

func (v *validator) backendRef(path string, r gatewayv1.BackendRef) {
	if r.Name == "" {
		v.fail(path+".name", "is required")
	}
	if r.Port != nil {
		v.port(path+".port", int32(*r.Port))
	}
}

func validateHTTPRoute(v *validator, o Object) {
	rt := o.(*gatewayv1.HTTPRoute)
	v.parentRefs(rt.Spec.ParentRefs)
	for i, r := range rt.Spec.Rules {
		for j, b := range r.BackendRefs {
			v.backendRef(fmt.Sprintf("spec.rules[%d].backendRefs[%d]", i, j), b.BackendRef)
		}
	}
}

func validateGRPCRoute(v *validator, o Object) {
	rt := o.(*gatewayv1.GRPCRoute)
	v.parentRefs(rt.Spec.ParentRefs)
	for i, r := range rt.Spec.Rules {
		for j, b := range r.BackendRefs {
			v.backendRef(fmt.Sprintf("spec.rules[%d].backendRefs[%d]", i, j), b.BackendRef)
		}
	}
}

func validateTCPRoute(v *validator, o Object) {
	rt := o.(*gatewayv1.TCPRoute)
	v.parentRefs(rt.Spec.ParentRefs)
	for i, r := range rt.Spec.Rules {
		for j, b := range r.BackendRefs {
			v.backendRef(fmt.Sprintf("spec.rules[%d].backendRefs[%d]", i, j), b)
		}
	}
}

func validateLocalCluster(v *validator, o Object) {
	c := o.(*LocalCluster)
	if c.Spec.Nodes < 0 || c.Spec.Nodes > 16 {
		v.fail("spec.nodes", "must be between 1 and 16, got %d", c.Spec.Nodes)
	}
}
