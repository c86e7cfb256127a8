package ztunnel

import (
	"log/slog"
	"net/netip"
	"time"

	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/zdsapi"

	"github.com/ambit-mesh/ambit/identity"
)

// connRecord is the one record of a connection, on every path (outbound,
// HBONE inbound, plaintext inbound): filled in as the connection is set
// up, it feeds the access log and the metrics alike, once, when the
// connection is refused or ends.
//
// Bytes follow upstream ztunnel: the relay counts what the client sent
// (toward the destination) and what it received back. The metrics count
// the first as istio_tcp_received_bytes_total and the second as
// istio_tcp_sent_bytes_total for both reporters; the access log's
// bytes_sent is what the reporter's own workload sent: the client's bytes
// on outbound, the destination's bytes on inbound.
type connRecord struct {
	direction string // "outbound" or "inbound"
	src       netip.AddrPort
	srcID     identity.SPIFFE      // outbound: the pod's own; inbound: the mTLS peer
	srcPod    *zdsapi.WorkloadInfo // outbound: the pod
	dst       netip.AddrPort       // original destination (outbound) or target (inbound)
	dstID     identity.SPIFFE
	dstPod    *zdsapi.WorkloadInfo // inbound: the pod
	hboneAddr string               // inbound over HBONE: the CONNECT target
	service   *workloadapi.Service // inbound: the service inferred
	route     route                // outbound: where it went
	plaintext bool
	start     time.Time
	// early is what was read from the client and sent with the CONNECT
	// (hbone.Pool.DialEarly), before the relay started.
	early int64

	labels       connLabels
	closeMetrics func(sent, received int64) // set by open
}

// outbound reports whether the record is the source side's.
func (r *connRecord) outbound() bool { return r.direction == "outbound" }

func (r *connRecord) attrs() []any {
	attrs := []any{"direction", r.direction, "src.addr", r.src.String()}
	if r.srcPod != nil {
		attrs = append(attrs, "src.workload", r.srcPod.GetName(), "src.namespace", r.srcPod.GetNamespace())
	}
	if !r.srcID.IsZero() && !r.plaintext {
		attrs = append(attrs, "src.identity", r.srcID.String())
	}
	switch r.route.kind {
	case routeHBONE:
		attrs = append(attrs, "dst.addr", r.route.addr.String(), "dst.hbone_addr", r.route.authority)
	case routeNone:
		attrs = append(attrs, "dst.addr", r.dst.String())
		if r.hboneAddr != "" {
			attrs = append(attrs, "dst.hbone_addr", r.hboneAddr)
		}
	default:
		attrs = append(attrs, "dst.addr", r.route.addr.String())
	}
	if r.route.service != nil {
		attrs = append(attrs, "dst.service", r.route.service.GetHostname())
	} else if r.service != nil {
		attrs = append(attrs, "dst.service", r.service.GetHostname())
	}
	if w := r.route.dst; w != nil {
		attrs = append(attrs, "dst.workload", w.GetName(), "dst.namespace", w.GetNamespace())
		if r.route.kind == routeHBONE {
			attrs = append(attrs, "dst.identity", Identity(w).String())
		}
	}
	if r.dstPod != nil {
		attrs = append(attrs, "dst.workload", r.dstPod.GetName(), "dst.namespace", r.dstPod.GetNamespace())
		if !r.dstID.IsZero() && !r.plaintext {
			attrs = append(attrs, "dst.identity", r.dstID.String())
		}
	}
	if r.route.kind != routeNone {
		attrs = append(attrs, "route", r.route.kind.String())
	}
	return attrs
}

// open counts the connection as opened.
func (r *connRecord) open(m *Metrics) {
	r.closeMetrics = m.open(r.labels)
}

// done records a connection that was relayed: one access-log line, and
// the closed count and bytes.
func (r *connRecord) done(l *slog.Logger, fromClient, toClient int64) {
	if r.closeMetrics != nil {
		r.closeMetrics(toClient, fromClient)
	}
	sent, recv := toClient, fromClient
	if r.outbound() {
		sent, recv = fromClient, toClient
	}
	attrs := append(r.attrs(), "bytes_sent", sent, "bytes_recv", recv, "duration", time.Since(r.start).Round(time.Millisecond).String())
	l.Info("connection complete", attrs...)
}

// refused records a connection that was not established: one access-log
// line with the reason, and one failed count with the response flag.
func (r *connRecord) refused(l *slog.Logger, m *Metrics, flags string, err error) {
	r.labels.responseFlags = flags
	l.Error("connection complete", append(r.attrs(), "error", err.Error())...)
	m.fail(r.labels)
}

// denied records a connection refused by policy: its own access-log line
// naming the deciding policy, and a failed count with DENY.
func (r *connRecord) denied(l *slog.Logger, m *Metrics, policy, reason string) {
	r.labels.responseFlags = "DENY"
	attrs := append(r.attrs(), "policy", policy, "reason", reason)
	l.Info("connection denied", attrs...)
	m.fail(r.labels)
}
