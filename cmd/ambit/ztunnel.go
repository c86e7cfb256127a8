package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	securityapi "istio.io/api/security/v1alpha1"

	"github.com/ambit-mesh/ambit/controlplane/ca"
	"github.com/ambit-mesh/ambit/identity"
	"github.com/ambit-mesh/ambit/identity/caclient"
	"github.com/ambit-mesh/ambit/zds"
	"github.com/ambit-mesh/ambit/ztunnel"
)

func newZtunnelCmd() *cobra.Command {
	var (
		cpAddr, credDir, node, zdsSocket, adminAddr, readyAddr, metricsAddr, trustDomain, logFormat string
	)
	cmd := &cobra.Command{
		Use:   "ztunnel",
		Short: "Run the node proxy: in-pod listeners, HBONE mTLS, workload identities from the CA, WDS from the control plane",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var h slog.Handler = slog.NewTextHandler(os.Stderr, nil)
			if logFormat == "json" {
				h = slog.NewJSONHandler(os.Stderr, nil)
			}
			log := slog.New(h).With("node", node)
			if node == "" || cpAddr == "" || credDir == "" {
				return errors.New("--node, --control-plane and --credential-dir are required")
			}
			cred, err := tls.LoadX509KeyPair(filepath.Join(credDir, "cert-chain.pem"), filepath.Join(credDir, "key.pem"))
			if err != nil {
				return fmt.Errorf("node credential: %w", err)
			}
			rootPEM, err := os.ReadFile(filepath.Join(credDir, "root-cert.pem"))
			if err != nil {
				return fmt.Errorf("control plane root: %w", err)
			}
			roots, err := identity.ParseBundle(rootPEM)
			if err != nil {
				return fmt.Errorf("control plane root: %w", err)
			}
			tlsConf := identity.ClientTLSConfig(func() (*tls.Certificate, error) { return &cred, nil },
				func() *identity.Bundle { return roots }, []identity.SPIFFE{ca.ServerIdentity(trustDomain)}, nil)
			conn, err := grpc.NewClient(cpAddr, grpc.WithTransportCredentials(credentials.NewTLS(tlsConf)))
			if err != nil {
				return fmt.Errorf("control plane %s: %w", cpAddr, err)
			}
			defer conn.Close()
			ctx := cmd.Context()

			certs := caclient.NewManager(&caclient.GRPCFetcher{Client: securityapi.NewIstioCertificateServiceClient(conn), Impersonate: true}, nil, log)
			defer certs.Close()
			index := ztunnel.NewIndex()
			metrics := ztunnel.NewMetrics()
			zt := ztunnel.New(ztunnel.Config{Index: index, Certs: certs, TrustDomain: trustDomain, Logger: log, AccessLog: log.With("scope", "access"), Metrics: metrics})
			wds := &ztunnel.WDSClient{Conn: conn, Index: index, NodeID: "ztunnel~" + node, Logger: log}
			zc := zds.NewClient(zdsSocket, zt, log)
			ready := func() bool { return wds.Synced() && zc.Ready() }

			runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
			defer cancel()
			go func() { _ = wds.Run(runCtx) }()
			go func() { _ = zc.Run(runCtx) }()
			admin := &http.Server{Handler: zt.AdminHandler(ready), ReadHeaderTimeout: 5 * time.Second}
			for _, addr := range []string{adminAddr, readyAddr} {
				l, err := net.Listen("tcp", addr)
				if err != nil {
					return fmt.Errorf("listen %s: %w", addr, err)
				}
				go func() { _ = admin.Serve(l) }()
			}
			mux := http.NewServeMux()
			mux.Handle("/metrics", metrics.Handler())
			mux.Handle("/stats/prometheus", metrics.Handler())
			ml, err := net.Listen("tcp", metricsAddr)
			if err != nil {
				return fmt.Errorf("listen %s: %w", metricsAddr, err)
			}
			msrv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
			go func() { _ = msrv.Serve(ml) }()
			defer msrv.Close()
			log.Info("ztunnel running", "controlPlane", cpAddr, "zds", zdsSocket, "admin", adminAddr)
			<-ctx.Done()
			log.Info("draining")
			drainCtx, dcancel := context.WithTimeout(context.Background(), 25*time.Second)
			defer dcancel()
			zt.Drain(drainCtx)
			_ = admin.Close()
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&cpAddr, "control-plane", "", "control plane address (CA and xDS), host:port")
	f.StringVar(&credDir, "credential-dir", "", "directory with the node credential: cert-chain.pem, key.pem, root-cert.pem")
	f.StringVar(&node, "node", "", "name of this node")
	f.StringVar(&zdsSocket, "zds-socket", "/var/run/ztunnel/ztunnel.sock", "the node agent's ZDS socket")
	f.StringVar(&adminAddr, "admin", "127.0.0.1:15000", "admin address (/config_dump)")
	f.StringVar(&readyAddr, "readiness", ":15021", "readiness address (/healthz/ready)")
	f.StringVar(&metricsAddr, "metrics", ":15020", "Prometheus metrics address (/metrics, /stats/prometheus)")
	f.StringVar(&trustDomain, "trust-domain", identity.DefaultTrustDomain, "trust domain")
	f.StringVar(&logFormat, "log-format", "text", "log format: text or json")
	return cmd
}
