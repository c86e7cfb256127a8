package waypoint

import (
	"context"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"istio.io/istio/pkg/workloadapi"

	"github.com/ambit-mesh/ambit/ztunnel"
)

// requestLabels is upstream's L7 metric label set (Envoy's istio stats
// filter), so existing dashboards work. Missing values are "unknown".
func requestLabels() []string {
	return []string{
		"reporter",
		"source_workload", "source_canonical_service", "source_canonical_revision", "source_workload_namespace",
		"source_principal", "source_app", "source_version", "source_cluster",
		"destination_service", "destination_service_namespace", "destination_service_name",
		"destination_workload", "destination_canonical_service", "destination_canonical_revision", "destination_workload_namespace",
		"destination_principal", "destination_app", "destination_version", "destination_cluster",
		"request_protocol", "response_code", "grpc_response_status", "response_flags", "connection_security_policy",
	}
}

// Metrics are the waypoint's Prometheus metrics.
type Metrics struct {
	registry *prometheus.Registry
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	reqSize  *prometheus.HistogramVec
	respSize *prometheus.HistogramVec
	refused  prometheus.Counter

	series sync.Map // label values joined by NUL -> *series: the label hashing is paid once per series
}

// series holds one label set's four request metrics.
type series struct {
	requests                  prometheus.Counter
	duration, reqSize, respSz prometheus.Observer
}

func (m *Metrics) seriesFor(lv []string) *series {
	key := strings.Join(lv, "\x00")
	if s, ok := m.series.Load(key); ok {
		return s.(*series)
	}
	s := &series{requests: m.requests.WithLabelValues(lv...), duration: m.duration.WithLabelValues(lv...),
		reqSize: m.reqSize.WithLabelValues(lv...), respSz: m.respSize.WithLabelValues(lv...)}
	actual, _ := m.series.LoadOrStore(key, s)
	return actual.(*series)
}

// NewMetrics registers the metrics in a registry of their own.
func NewMetrics() *Metrics {
	r := prometheus.NewRegistry()
	m := &Metrics{
		registry: r,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_requests_total", Help: "Total requests handled by the waypoint"}, requestLabels()),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "istio_request_duration_milliseconds", Help: "Request duration",
			Buckets: []float64{0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000, 1800000, 3600000}}, requestLabels()),
		reqSize: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "istio_request_bytes", Help: "Request body size",
			Buckets: prometheus.ExponentialBuckets(1, 10, 8)}, requestLabels()),
		respSize: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "istio_response_bytes", Help: "Response body size",
			Buckets: prometheus.ExponentialBuckets(1, 10, 8)}, requestLabels()),
		refused: prometheus.NewCounter(prometheus.CounterOpts{Name: "ambit_waypoint_tunnels_refused_total", Help: "HBONE tunnels refused because their target is not bound to this waypoint"}),
	}
	r.MustRegister(m.requests, m.duration, m.reqSize, m.respSize, m.refused)
	return m
}

// Handler serves the metrics in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{})
}

func (m *Metrics) tunnelRefused() { m.refused.Inc() }

// record is one request's (or TCP tunnel's) outcome: it feeds the access
// log line and the metrics alike.
type record struct {
	start     time.Time
	t         *tunnel
	proto     string // http, grpc or tcp
	method    string
	path      string
	host      string
	route     string
	authz     string // the deciding policy or reason
	code      int
	grpc      string // grpc-status of the response
	flags     string // Envoy-style response flags: UF (upstream failure), NR (no route), UT (timeout), RBAC denial as "-" with 403
	upstream  string // endpoint address
	dstWL     *workloadapi.Workload
	reqBytes  int64
	respBytes int64
	retries   int
	trace     string
	err       string
}

func unknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

// finish logs and counts a record.
func (w *Waypoint) finish(r *record) {
	dur := time.Since(r.start)
	t := r.t
	src, dst := t.srcWL, r.dstWL
	svcHost, svcName, svcNS := "unknown", "unknown", "unknown"
	if t.service != nil {
		svcHost, svcName, svcNS = t.service.GetHostname(), t.service.GetName(), t.service.GetNamespace()
	}
	dstPrincipal := "unknown"
	if dst != nil {
		dstPrincipal = ztunnel.Identity(dst).String()
	}
	srcPrincipal := "unknown"
	if !t.peer.IsZero() {
		srcPrincipal = t.peer.String()
	}
	code := strconv.Itoa(r.code)
	flags := r.flags
	if flags == "" {
		flags = "-"
	}
	grpc := r.grpc
	if grpc == "" {
		grpc = "unknown"
	}
	if r.proto != "tcp" {
		lv := []string{"waypoint",
			unknown(src.GetWorkloadName()), unknown(src.GetCanonicalName()), unknown(src.GetCanonicalRevision()), unknown(src.GetNamespace()),
			srcPrincipal, unknown(src.GetCanonicalName()), unknown(src.GetCanonicalRevision()), unknown(src.GetClusterId()),
			svcHost, svcNS, svcName,
			unknown(dst.GetWorkloadName()), unknown(dst.GetCanonicalName()), unknown(dst.GetCanonicalRevision()), unknown(dst.GetNamespace()),
			dstPrincipal, unknown(dst.GetCanonicalName()), unknown(dst.GetCanonicalRevision()), unknown(dst.GetClusterId()),
			r.proto, code, grpc, flags, "mutual_tls"}
		s := w.cfg.Metrics.seriesFor(lv)
		s.requests.Inc()
		s.duration.Observe(float64(dur.Microseconds()) / 1000)
		s.reqSize.Observe(float64(r.reqBytes))
		s.respSz.Observe(float64(r.respBytes))
	}
	attrs := []slog.Attr{
		slog.String("src.addr", addrOr(t.src)), slog.String("src.identity", srcPrincipal),
		slog.String("src.workload", unknown(src.GetName())), slog.String("src.namespace", unknown(src.GetNamespace())),
		slog.String("dst.target", t.target.String()), slog.String("dst.service", svcHost),
		slog.String("dst.addr", unknown(r.upstream)), slog.String("dst.workload", unknown(dst.GetName())), slog.String("dst.identity", dstPrincipal),
		slog.String("protocol", r.proto), slog.String("method", r.method), slog.String("path", r.path), slog.String("authority", r.host),
		slog.String("route", unknown(r.route)), slog.String("authz", unknown(r.authz)),
		slog.Int("code", r.code), slog.String("flags", flags), slog.Int("retries", r.retries),
		slog.Int64("bytes_recv", r.reqBytes), slog.Int64("bytes_sent", r.respBytes),
		slog.String("duration", dur.Round(time.Microsecond).String()), slog.String("traceparent", r.trace),
	}
	level := slog.LevelInfo
	if r.err != "" {
		attrs = append(attrs, slog.String("error", r.err))
		if r.code >= 500 || r.code == 0 {
			level = slog.LevelError
		}
	}
	msg := "request complete"
	if r.proto == "tcp" {
		msg = "connection complete"
	}
	w.cfg.AccessLog.LogAttrs(context.Background(), level, msg, attrs...)
}

func addrOr(a interface {
	IsValid() bool
	String() string
}) string {
	if !a.IsValid() {
		return "unknown"
	}
	return a.String()
}
