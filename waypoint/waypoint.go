// Package waypoint is Ambit's L7 proxy on the destination side, one per
// waypoint Gateway: it terminates HBONE from ztunnels (inbound.go), checks
// that each tunnel's target is a service or workload bound to it, serves
// HTTP/1.1 and HTTP/2 (h2c, gRPC) on the tunnel, and for each request
// applies the routes and L7 authorization the control plane sent over xDS
// (config.go), then forwards it over HBONE, with its own identity, to an
// endpoint chosen per request (upstream.go, proxy.go). Every request ends
// in one record feeding the access log and the istio_request* metrics
// (metrics.go). Traffic that is not HTTP is relayed as TCP to an endpoint
// of the target.
package waypoint

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"sync"
	"time"

	"github.com/ambit-mesh/ambit/hbone"
	"github.com/ambit-mesh/ambit/identity"
	"github.com/ambit-mesh/ambit/ztunnel"
)

// CertSource issues the waypoint's certificate (caclient.Manager).
type CertSource = ztunnel.CertSource

// Config configures a Waypoint.
type Config struct {
	// Namespace and Name are the waypoint's Gateway; Hostname is its
	// Service's (name.namespace.svc.cluster.local): WDS names waypoints by
	// it.
	Namespace, Name, Hostname string
	Identity                  identity.SPIFFE
	TrustDomain               string
	Certs                     CertSource
	Index                     *ztunnel.Index // workloads and services, from WDS
	L7                        *L7Config      // routes and policies, from xDS
	Logger                    *slog.Logger
	AccessLog                 *slog.Logger
	Metrics                   *Metrics
	// DialTCP opens the TCP connections under HBONE (nil: net.Dialer).
	DialTCP func(ctx context.Context, network, addr string) (net.Conn, error)
	// SniffTimeout bounds the wait for a client's first bytes before a
	// tunnel is taken as TCP (a server-first protocol); default 200 ms.
	SniffTimeout time.Duration
}

// Waypoint serves one waypoint Gateway.
type Waypoint struct {
	cfg   Config
	hsrv  *hbone.Server
	pool  *hbone.Pool
	up    *upstream
	rp    *httputil.ReverseProxy
	http  *http.Server
	conns *chanListener

	wg sync.WaitGroup
}

// New returns a waypoint; Serve starts it.
func New(cfg Config) *Waypoint {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.AccessLog == nil {
		cfg.AccessLog = cfg.Logger
	}
	if cfg.Metrics == nil {
		cfg.Metrics = NewMetrics()
	}
	if cfg.SniffTimeout <= 0 {
		cfg.SniffTimeout = 200 * time.Millisecond
	}
	w := &Waypoint{cfg: cfg, conns: newChanListener()}
	certFunc := func() (*tls.Certificate, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := cfg.Certs.Get(ctx, cfg.Identity)
		if err != nil {
			return nil, err
		}
		return c.TLS, nil
	}
	bundleFunc := func() *identity.Bundle {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := cfg.Certs.Get(ctx, cfg.Identity)
		if err != nil {
			return nil
		}
		return c.Bundle
	}
	w.pool = &hbone.Pool{
		Logger:  cfg.Logger,
		DialTCP: cfg.DialTCP,
		TLSConfig: func(ctx context.Context, k hbone.Key) (*tls.Config, error) {
			if _, err := cfg.Certs.Get(ctx, cfg.Identity); err != nil {
				return nil, err
			}
			return identity.ClientTLSConfig(certFunc, bundleFunc, k.Dst, nil), nil
		},
	}
	w.up = newUpstream(w)
	w.rp = newReverseProxy(w)
	w.hsrv = &hbone.Server{
		TLSConfig: identity.ServerTLSConfig(certFunc, bundleFunc, cfg.TrustDomain, nil),
		Handler:   hbone.HandlerFunc(w.serveTunnel),
		Logger:    cfg.Logger,
		OnRefused: func(r hbone.Refusal) {
			cfg.Logger.Info("HBONE refused", "stage", r.Stage, "remote", r.Remote, "peer", r.Peer.String(), "authority", r.Authority, "err", r.Err)
		},
	}
	w.http = &http.Server{
		Handler:           http.HandlerFunc(w.serveHTTP),
		ReadHeaderTimeout: 30 * time.Second,
		ConnContext:       connContext,
		ErrorLog:          slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelDebug),
	}
	w.http.Protocols = new(http.Protocols)
	w.http.Protocols.SetHTTP1(true)
	w.http.Protocols.SetUnencryptedHTTP2(true)
	return w
}

// Serve serves HBONE on l until Close.
func (w *Waypoint) Serve(l net.Listener) error {
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		_ = w.http.Serve(w.conns)
	}()
	err := w.hsrv.Serve(l)
	if errors.Is(err, hbone.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops accepting tunnels and waits, until ctx ends, for open
// ones to finish.
func (w *Waypoint) Shutdown(ctx context.Context) error {
	err := w.hsrv.Shutdown(ctx)
	_ = w.http.Shutdown(ctx)
	w.conns.Close()
	w.pool.Close()
	w.up.close()
	w.wg.Wait()
	return err
}
