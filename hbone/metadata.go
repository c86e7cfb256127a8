package hbone

import (
	"crypto/rand"
	"encoding/hex"
	"net/netip"
	"strings"
)

// Mesh metadata: the headers a ztunnel puts on the CONNECT it sends,
// describing the connection it carries (traceparent), its original client
// (forwarded) and the source workload (baggage).

// NewTraceparent returns a W3C traceparent with random ids, as ztunnel sets
// per outbound connection (it doubles as a connection id in logs).
func NewTraceparent() string {
	var b [24]byte
	_, _ = rand.Read(b[:])
	return "00-" + hex.EncodeToString(b[:16]) + "-" + hex.EncodeToString(b[16:]) + "-00"
}

// Forwarded returns the forwarded header value for a client address, with
// host set when the original destination was a service.
func Forwarded(src netip.AddrPort, host string) string {
	v := `for="` + src.String() + `"`
	if host != "" {
		v += ";host=" + host
	}
	return v
}

// BaggageInfo describes the source workload in the baggage header.
type BaggageInfo struct {
	Cluster, Namespace         string
	WorkloadType, WorkloadName string // WorkloadType: deployment, cronjob, pod or job
	Service, Version           string
	Region, Zone               string
}

// Baggage returns the baggage header value ztunnel sends: comma-joined
// key=value pairs, absent keys omitted.
func Baggage(b BaggageInfo) string {
	var parts []string
	add := func(k, v string) {
		if v != "" {
			parts = append(parts, k+"="+v)
		}
	}
	add("k8s.cluster.name", b.Cluster)
	add("k8s.namespace.name", b.Namespace)
	if b.WorkloadType != "" {
		add("k8s."+b.WorkloadType+".name", b.WorkloadName)
	}
	add("service.name", b.Service)
	add("service.version", b.Version)
	add("cloud.region", b.Region)
	add("cloud.availability_zone", b.Zone)
	return strings.Join(parts, ",")
}
