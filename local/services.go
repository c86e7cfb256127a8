package local

import (
	"fmt"
	"hash/fnv"
	"net/netip"
	"strconv"

	corev1 "k8s.io/api/core/v1"
)

// vipAllocator hands out ClusterIPs from the service CIDR. An address is a
// hash of namespace/name (probing on collision), so a service keeps its VIP
// across restarts of the runtime.
type vipAllocator struct {
	cidr  netip.Prefix
	inUse map[netip.Addr]string // VIP -> namespace/name
}

func newVIPAllocator(cidr netip.Prefix) *vipAllocator {
	return &vipAllocator{cidr: cidr, inUse: map[netip.Addr]string{}}
}

// allocate returns the VIP for svc: spec.clusterIP when set (it must be in
// the CIDR and free), otherwise a stable free address.
func (a *vipAllocator) allocate(svc *corev1.Service) (netip.Addr, error) {
	key := svc.Namespace + "/" + svc.Name
	if svc.Spec.ClusterIP == corev1.ClusterIPNone {
		return netip.Addr{}, nil // headless
	}
	if svc.Spec.ClusterIP != "" {
		ip, err := netip.ParseAddr(svc.Spec.ClusterIP)
		if err != nil {
			return netip.Addr{}, fmt.Errorf("service %s: spec.clusterIP %q: %w", key, svc.Spec.ClusterIP, err)
		}
		if !a.cidr.Contains(ip) {
			return netip.Addr{}, fmt.Errorf("service %s: spec.clusterIP %s is outside the service CIDR %s", key, ip, a.cidr)
		}
		if owner, ok := a.inUse[ip]; ok && owner != key {
			return netip.Addr{}, fmt.Errorf("service %s: spec.clusterIP %s is already used by %s", key, ip, owner)
		}
		a.inUse[ip] = key
		return ip, nil
	}
	for ip, owner := range a.inUse {
		if owner == key {
			return ip, nil
		}
	}
	size := uint32(1) << (32 - a.cidr.Bits())
	h := fnv.New32a()
	h.Write([]byte(key))
	base := a.cidr.Masked().Addr().As4()
	start := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3])
	// Skip the network address and the first ten (reserved, like kube's .1 and .10).
	const reserved = 10
	span := size - reserved - 1
	off := h.Sum32() % span
	for i := uint32(0); i < span; i++ {
		n := start + reserved + (off+i)%span
		ip := netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)})
		if _, used := a.inUse[ip]; !used {
			a.inUse[ip] = key
			return ip, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("service %s: service CIDR %s is full", key, a.cidr)
}

// release frees the VIP of the service namespace/name.
func (a *vipAllocator) release(namespace, name string) {
	for ip, owner := range a.inUse {
		if owner == namespace+"/"+name {
			delete(a.inUse, ip)
		}
	}
}

func serviceStatus(svc *corev1.Service, vip netip.Addr) ServiceStatus {
	st := ServiceStatus{Namespace: svc.Namespace, Name: svc.Name, ClusterIP: "None", Ports: []ServicePort{}}
	if vip.IsValid() {
		st.ClusterIP = vip.String()
	}
	for _, p := range svc.Spec.Ports {
		target := p.TargetPort.String()
		if p.TargetPort.IntValue() == 0 && p.TargetPort.StrVal == "" {
			target = strconv.Itoa(int(p.Port))
		}
		proto := string(p.Protocol)
		if proto == "" {
			proto = "TCP"
		}
		st.Ports = append(st.Ports, ServicePort{Name: p.Name, Port: p.Port, TargetPort: target, Protocol: proto})
	}
	return st
}
