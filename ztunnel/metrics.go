package ztunnel

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"istio.io/istio/pkg/workloadapi"

	"github.com/ambit-mesh/ambit/identity"
)

// tcpLabels is upstream ztunnel's TCP metric label set (src/proxy/metrics.rs in istio/ztunnel), so
// existing Istio dashboards work unchanged. Missing values are "unknown".
func tcpLabels() []string {
	return []string{
		"reporter",
		"source_workload", "source_canonical_service", "source_canonical_revision", "source_workload_namespace",
		"source_principal", "source_app", "source_version", "source_cluster",
		"destination_service", "destination_service_namespace", "destination_service_name",
		"destination_workload", "destination_canonical_service", "destination_canonical_revision", "destination_workload_namespace",
		"destination_principal", "destination_app", "destination_version", "destination_cluster",
		"request_protocol", "response_flags", "connection_security_policy",
	}
}

// Metrics are ztunnel's Prometheus metrics.
type Metrics struct {
	registry *prometheus.Registry
	opened   *prometheus.CounterVec
	closed   *prometheus.CounterVec
	failed   *prometheus.CounterVec
	sent     *prometheus.CounterVec
	received *prometheus.CounterVec
}

// NewMetrics registers the metrics in a registry of their own.
func NewMetrics() *Metrics {
	r := prometheus.NewRegistry()
	counter := func(name, help string) *prometheus.CounterVec {
		c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, tcpLabels())
		r.MustRegister(c)
		return c
	}
	return &Metrics{
		registry: r,
		opened:   counter("istio_tcp_connections_opened_total", "The total number of TCP connections opened"),
		closed:   counter("istio_tcp_connections_closed_total", "The total number of TCP connections closed"),
		failed:   counter("istio_tcp_connections_failed_total", "The total number of TCP connections that failed to establish"),
		sent:     counter("istio_tcp_sent_bytes_total", "The size of total bytes sent during response in case of a TCP connection"),
		received: counter("istio_tcp_received_bytes_total", "The size of total bytes received during request in case of a TCP connection"),
	}
}

// Handler serves the metrics in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{})
}

// connLabels describes one connection for the metrics.
type connLabels struct {
	reporter         string // "source" (outbound) or "destination" (inbound)
	src, dst         *workloadapi.Workload
	srcID, dstID     identity.SPIFFE
	srcNS, dstNS     string
	srcName, dstName string
	service          *workloadapi.Service
	mtls             bool
	responseFlags    string
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

func (l connLabels) values() []string {
	principal := func(id identity.SPIFFE, ok bool) string {
		if !ok || id.IsZero() {
			return "unknown"
		}
		return id.String()
	}
	app := func(w *workloadapi.Workload, name string) (svc, rev string) {
		if w == nil {
			return orUnknown(name), "unknown"
		}
		return orUnknown(w.GetCanonicalName()), orUnknown(w.GetCanonicalRevision())
	}
	cluster := func(w *workloadapi.Workload) string {
		if w == nil {
			return "unknown"
		}
		return orUnknown(w.GetClusterId())
	}
	srcSvc, srcRev := app(l.src, l.srcName)
	dstSvc, dstRev := app(l.dst, l.dstName)
	dService, dServiceNS, dServiceName := "unknown", "unknown", "unknown"
	if l.service != nil {
		dService, dServiceNS, dServiceName = l.service.GetHostname(), l.service.GetNamespace(), l.service.GetName()
	}
	security := "unknown"
	if l.mtls {
		security = "mutual_tls"
	}
	flags := l.responseFlags
	if flags == "" {
		flags = "-"
	}
	return []string{
		l.reporter,
		orUnknown(l.srcName), srcSvc, srcRev, orUnknown(l.srcNS),
		principal(l.srcID, l.mtls || l.reporter == "source"), srcSvc, srcRev, cluster(l.src),
		dService, dServiceNS, dServiceName,
		orUnknown(l.dstName), dstSvc, dstRev, orUnknown(l.dstNS),
		principal(l.dstID, l.mtls), dstSvc, dstRev, cluster(l.dst),
		"tcp", flags, security,
	}
}

// opened counts a connection; the returned function counts its end.
func (m *Metrics) open(l connLabels) func(sent, received int64) {
	if m == nil {
		return func(int64, int64) {}
	}
	v := l.values()
	m.opened.WithLabelValues(v...).Inc()
	return func(sent, received int64) {
		m.closed.WithLabelValues(v...).Inc()
		m.sent.WithLabelValues(v...).Add(float64(sent))
		m.received.WithLabelValues(v...).Add(float64(received))
	}
}

// fail counts a connection that could not be established.
func (m *Metrics) fail(l connLabels) {
	if m == nil {
		return
	}
	m.failed.WithLabelValues(l.values()...).Inc()
}
