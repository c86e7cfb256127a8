package main

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/ambit-mesh/ambit/controlplane"
	"github.com/ambit-mesh/ambit/controlplane/ca"
	"github.com/ambit-mesh/ambit/controlplane/config"
	"github.com/ambit-mesh/ambit/controlplane/filesource"
	"github.com/ambit-mesh/ambit/identity"
)

// servingCertTTL is the lifetime of the control plane's own serving
// certificate (renewed at half-life while running).
const servingCertTTL = 30 * 24 * time.Hour

func newControlPlaneCmd() *cobra.Command {
	var (
		addr, httpAddr, trustDomain, stateDir, configDir, rootCert, rootKey, extraRoots string
		defaultTTL, maxTTL                                                              time.Duration
	)
	cmd := &cobra.Command{
		Use:   "controlplane --config DIR",
		Short: "Run the control plane: config controller, delta xDS (workloads, services, policies) and the CA on one TLS gRPC port",
		Long: `Run the whole control plane: the manifests of --config (watched as they
change) go into the controller's store, which builds the ambient model and
serves it over delta ADS (istio.workload.Address, istio.security.Authorization)
next to the CA (istio.v1.auth.IstioCertificateService), both on --listen
(gRPC over TLS 1.3).

Pods in --config are taken as a kubelet would report them: give them
spec.nodeName, status.podIP and status.phase (Running), and the annotation
ambient.istio.io/redirection: enabled once their traffic is captured.
Services need spec.clusterIP for a VIP.

Callers authenticate with a client certificate from this CA. A workload
certificate renews its own identity only. A node-proxy credential (minted
with "ambit controlplane node-credential", or by "ambit local" per node)
may watch discovery, and may ask, through the ImpersonatedIdentity
metadata, for the identity of any service account with a non-terminated
pod on its node.

--http serves /ready, /metrics (Prometheus), /debug/store and
/debug/proxies.

The root is generated on first start and kept in --state-dir (key mode
0600), or loaded from --root-cert/--root-key. --extra-roots names a PEM file
of roots still trusted during a root rotation.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log := slog.New(slog.NewTextHandler(os.Stderr, nil))
			if configDir == "" {
				return errors.New("--config is required: the directory of manifests the control plane serves")
			}
			if fi, err := os.Stat(configDir); err != nil || !fi.IsDir() {
				return fmt.Errorf("--config %s: not a readable directory", configDir)
			}
			auth, err := loadAuthority(stateDir, rootCert, rootKey, trustDomain, log)
			if err != nil {
				return err
			}
			var extra []*x509.Certificate
			if extraRoots != "" {
				data, err := os.ReadFile(extraRoots)
				if err != nil {
					return fmt.Errorf("--extra-roots: %w", err)
				}
				b, err := identity.ParseBundle(data)
				if err != nil {
					return fmt.Errorf("--extra-roots %s: %w", extraRoots, err)
				}
				extra = b.Roots()
			}
			src := filesource.New(configDir, log)
			ctx, cancel := context.WithCancel(cmd.Context())
			defer cancel()
			cp, err := controlplane.New(ctx, controlplane.Options{
				Authority: auth, TrustDomain: trustDomain, DefaultTTL: defaultTTL, MaxTTL: maxTTL, ExtraRoots: extra,
				ServingCertTTL: servingCertTTL, Sources: []config.Source{src}, Logger: log,
				ConfigErrors: func() int { return len(src.Errors()) },
			})
			if err != nil {
				return err
			}
			return serveControlPlane(ctx, cp, addr, httpAddr, log)
		},
	}
	f, pf := cmd.Flags(), cmd.PersistentFlags()
	f.StringVar(&addr, "listen", ":15012", "address of the TLS gRPC endpoint (CA and xDS)")
	f.StringVar(&httpAddr, "http", ":15014", "address of the HTTP endpoint (/ready, /metrics, /debug/store, /debug/proxies); empty: none")
	pf.StringVar(&trustDomain, "trust-domain", identity.DefaultTrustDomain, "SPIFFE trust domain")
	pf.StringVar(&stateDir, "state-dir", "/var/lib/ambit/ca", "where the generated root is persisted")
	f.StringVar(&configDir, "config", "", "directory of manifests (watched)")
	f.StringVar(&configDir, "config-dir", "", "old name of --config")
	_ = f.MarkHidden("config-dir")
	pf.StringVar(&rootCert, "root-cert", "", "CA certificate file (PEM, ending with the root); with --root-key, instead of a generated root")
	pf.StringVar(&rootKey, "root-key", "", "CA key file (PEM)")
	f.StringVar(&extraRoots, "extra-roots", "", "PEM file of further roots to trust and publish (root rotation)")
	f.DurationVar(&defaultTTL, "default-ttl", 24*time.Hour, "lifetime of issued workload certificates")
	f.DurationVar(&maxTTL, "max-ttl", 90*24*time.Hour, "longest lifetime a request may ask for (longer ones are capped)")
	cmd.AddCommand(newNodeCredentialCmd(&stateDir, &rootCert, &rootKey, &trustDomain))
	return cmd
}

// serveControlPlane runs the controller and serves gRPC (and HTTP) until
// ctx is done; if the config source fails, everything stops with its error.
func serveControlPlane(ctx context.Context, cp *controlplane.ControlPlane, addr, httpAddr string, log *slog.Logger) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen %s: %w", addr, err)
	}
	if httpAddr != "" {
		hl, err := net.Listen("tcp", httpAddr)
		if err != nil {
			l.Close()
			return fmt.Errorf("listen %s: %w", httpAddr, err)
		}
		hs := &http.Server{Handler: cp.HTTPHandler(), ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = hs.Serve(hl) }()
		defer hs.Close()
		log.Info("control plane HTTP", "addr", hl.Addr().String())
	}
	runErr := make(chan error, 1)
	go func() {
		err := cp.Run(ctx)
		runErr <- err
		cancel()
	}()
	go func() { <-ctx.Done(); cp.Stop(false) }()
	if err := cp.Serve(l); err != nil {
		return err
	}
	if err := <-runErr; err != nil {
		return err
	}
	return nil
}

func loadAuthority(stateDir, rootCert, rootKey, trustDomain string, log *slog.Logger) (*identity.Authority, error) {
	if (rootCert == "") != (rootKey == "") {
		return nil, errors.New("--root-cert and --root-key go together")
	}
	if rootCert != "" {
		auth, err := ca.LoadFiles(rootCert, rootKey)
		if err != nil {
			return nil, err
		}
		if err := auth.Check(time.Now()); err != nil {
			return nil, fmt.Errorf("--root-cert %s: %w", rootCert, err)
		}
		return auth, nil
	}
	auth, created, err := ca.LoadOrCreate(stateDir, trustDomain, time.Now())
	if err != nil {
		return nil, err
	}
	if created {
		log.Info("generated a new root", "dir", stateDir)
	}
	return auth, nil
}

func newNodeCredentialCmd(stateDir, rootCert, rootKey, trustDomain *string) *cobra.Command {
	var node, out string
	var ttl time.Duration
	cmd := &cobra.Command{
		Use:   "node-credential --node NAME --out DIR",
		Short: "Mint a node-proxy credential (for that node's ztunnel only) with the CA's key",
		Long: `Mint a node-proxy credential: a certificate for
spiffe://<trust-domain>/ns/istio-system/sa/ztunnel that binds the node name
in an extension only the CA's key can sign. Its holder may obtain the
certificate of any service account with a pod on that node, so give it to
that node's ztunnel only. Writes cert-chain.pem, key.pem (mode 0600) and
root-cert.pem into --out.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log := slog.New(slog.NewTextHandler(os.Stderr, nil))
			auth, err := loadAuthority(*stateDir, *rootCert, *rootKey, *trustDomain, log)
			if err != nil {
				return err
			}
			cred, err := ca.IssueNodeCredential(auth, *trustDomain, node, ttl, time.Now())
			if err != nil {
				return err
			}
			return ca.WriteCredential(out, cred, auth.Root())
		},
	}
	cmd.Flags().StringVar(&node, "node", "", "node name")
	cmd.Flags().StringVar(&out, "out", "", "directory for cert-chain.pem, key.pem and root-cert.pem")
	cmd.Flags().DurationVar(&ttl, "ttl", 7*24*time.Hour, "lifetime")
	_ = cmd.MarkFlagRequired("node")
	_ = cmd.MarkFlagRequired("out")
	return cmd
}
