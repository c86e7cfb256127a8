package controlplane

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/ambit-mesh/ambit/controlplane/ca"
	"github.com/ambit-mesh/ambit/controlplane/config"
	"github.com/ambit-mesh/ambit/controlplane/controller"
	"github.com/ambit-mesh/ambit/controlplane/xds"
	"github.com/ambit-mesh/ambit/identity"
)

// Options configure a ControlPlane.
type Options struct {
	Authority   *identity.Authority
	TrustDomain string
	// DefaultTTL, MaxTTL and ExtraRoots are the CA's (see ca.Options).
	DefaultTTL, MaxTTL time.Duration
	ExtraRoots         []*x509.Certificate
	// ServingCertTTL is the lifetime of the gRPC server's own
	// certificate, renewed at half-life (default 24 h).
	ServingCertTTL time.Duration
	// Sources feed the controller (see controller.Options.Sources).
	Sources []config.Source
	// OnWarnings is called when the policy warnings change.
	OnWarnings func([]string)
	// OnStatus is called when waypoint or route status changes.
	OnStatus func(controller.Status)
	// ConfigErrors, if set, reports how many config files are rejected
	// (for the metrics endpoint).
	ConfigErrors func() int
	Logger       *slog.Logger

	// Kubernetes mode (all optional; local mode leaves them unset).
	// Tokens authenticates bearer tokens for the CA and xDS
	// (kubeauth.Authenticator); nil accepts client certificates only.
	Tokens ca.TokenAuthenticator
	// TrustedNodeAccounts may impersonate the pods of their node (see
	// ca.Options; nil: istio-system/ztunnel).
	TrustedNodeAccounts []string
	// Pods, if set, replaces the controller's store as the CA's pod index
	// (kubeauth.Pods).
	Pods ca.PodIndex
	// ServingDNSNames are the DNS names in the serving certificate, which
	// proxies verify (nil: ca.DefaultServingDNSNames).
	ServingDNSNames []string
}

// ControlPlane is the whole control plane of one mesh.
type ControlPlane struct {
	Controller *controller.Controller
	XDS        *xds.Server
	CA         *ca.Server

	logger   *slog.Logger
	grpc     *grpc.Server
	registry *prometheus.Registry
}

// New assembles a control plane; nothing runs until Run and Serve. The
// xDS server's streams end when ctx is done.
func New(ctx context.Context, o Options) (*ControlPlane, error) {
	if o.Authority == nil {
		return nil, errors.New("controlplane: no authority")
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.ServingCertTTL <= 0 {
		o.ServingCertTTL = 24 * time.Hour
	}
	cp := &ControlPlane{logger: o.Logger}
	cp.XDS = xds.New(ctx, o.Logger.With("component", "xds"), xds.AmbientTypes()...)
	cp.Controller = controller.New(controller.Options{Publisher: cp.XDS, Sources: o.Sources, OnWarnings: o.OnWarnings, OnStatus: o.OnStatus,
		Logger: o.Logger.With("component", "controller")})
	// Proxies get nothing before the controller's first state: an empty
	// first answer would make them ready with no workloads or policies.
	cp.XDS.HoldUntil(cp.Controller.Ready())
	store := cp.Controller.Store()
	var pods ca.PodIndex = PodIndex{Snapshot: func() PodLister { return store }}
	if o.Pods != nil {
		pods = o.Pods
	}
	caSrv, err := ca.NewServer(o.Authority, ca.Options{TrustDomain: o.TrustDomain, DefaultTTL: o.DefaultTTL, MaxTTL: o.MaxTTL,
		ExtraRoots: o.ExtraRoots, Logger: o.Logger.With("component", "ca"), Pods: pods,
		Tokens: o.Tokens, TrustedNodeAccounts: o.TrustedNodeAccounts})
	if err != nil {
		return nil, fmt.Errorf("controlplane: %w", err)
	}
	cp.CA = caSrv
	serving := ca.ServingCertificate(o.Authority, o.TrustDomain, o.ServingCertTTL, nil, o.ServingDNSNames...)
	if _, err := serving(); err != nil {
		return nil, fmt.Errorf("controlplane: serving certificate: %w", err)
	}
	// Only node proxies (node credential) and service-account tokens may
	// watch discovery; the CA checks its callers itself. Requests are
	// small (CSRs of at most 16 KiB, xDS acks).
	cp.grpc = grpc.NewServer(grpc.Creds(credentials.NewTLS(ca.ServingTLSConfig(serving))),
		grpc.StreamInterceptor(xds.StreamAuthIdentity(caSrv)), grpc.MaxRecvMsgSize(1<<20))
	caSrv.Register(cp.grpc)
	cp.XDS.Register(cp.grpc)
	cp.registry = newRegistry(cp, o.ConfigErrors)
	return cp, nil
}

// Run runs the controller (and its sources) until ctx is done.
func (cp *ControlPlane) Run(ctx context.Context) error { return cp.Controller.Run(ctx) }

// Serve serves the CA and delta xDS on l until Stop.
func (cp *ControlPlane) Serve(l net.Listener) error {
	cp.logger.Info("control plane serving", "addr", l.Addr().String())
	if err := cp.grpc.Serve(l); err != nil {
		return fmt.Errorf("controlplane: serving gRPC: %w", err)
	}
	return nil
}

// Stop ends the gRPC server; graceful waits for open calls (a proxy's
// stream ends when the xDS context is done).
func (cp *ControlPlane) Stop(graceful bool) {
	if graceful {
		cp.grpc.GracefulStop()
		return
	}
	cp.grpc.Stop()
}

// HTTPHandler serves /ready (200 once the first state is published),
// /metrics (Prometheus), /debug/store (every stored object by kind and
// namespace/name) and /debug/proxies (per connected proxy: node id and the
// resource names and versions it was sent, per type URL).
func (cp *ControlPlane) HTTPHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ready", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-cp.Controller.Ready():
			_, _ = w.Write([]byte("ready\n"))
		default:
			http.Error(w, "not ready: no state published yet", http.StatusServiceUnavailable)
		}
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(cp.registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /debug/store", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, cp.Controller.Store().Dump())
	})
	mux.HandleFunc("GET /debug/proxies", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, cp.XDS.Proxies())
	})
	return mux
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// newRegistry exposes the controller's and the xDS server's counters.
func newRegistry(cp *ControlPlane, configErrors func() int) *prometheus.Registry {
	r := prometheus.NewRegistry()
	for _, t := range xds.AmbientTypes() {
		r.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "ambit_controlplane_xds_pushes_total",
			Help: "Publishes that changed the served resources, by type URL.", ConstLabels: prometheus.Labels{"type_url": t}},
			func() float64 { return float64(cp.XDS.Stats().Pushes[t]) }))
	}
	r.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ambit_controlplane_xds_connected_proxies", Help: "Open delta ADS streams."},
			func() float64 { return float64(cp.XDS.Stats().Connected) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "ambit_controlplane_xds_rejections_total", Help: "Updates proxies rejected (NACKs)."},
			func() float64 { return float64(cp.XDS.Stats().Rejections) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "ambit_controlplane_builds_total", Help: "Model builds."},
			func() float64 { return float64(cp.Controller.Stats().Builds) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "ambit_controlplane_publish_errors_total", Help: "Publishes that failed."},
			func() float64 { return float64(cp.Controller.Stats().PublishErrs) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ambit_controlplane_config_objects", Help: "Objects in the controller's store."},
			func() float64 { return float64(cp.Controller.Stats().Objects) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ambit_controlplane_policy_warnings", Help: "Current authorization policy warnings."},
			func() float64 { return float64(len(cp.Controller.Warnings())) }),
	)
	if configErrors != nil {
		r.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ambit_controlplane_config_errors", Help: "Config files currently rejected."},
			func() float64 { return float64(configErrors()) }))
	}
	return r
}
