package main

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/ambit-mesh/ambit/controlplane"
	"github.com/ambit-mesh/ambit/controlplane/ca"
	"github.com/ambit-mesh/ambit/controlplane/filesource"
	"github.com/ambit-mesh/ambit/identity"
)

// servingCertTTL is the lifetime of the control plane's own serving
// certificate (renewed at half-life while running).
const servingCertTTL = 30 * 24 * time.Hour

func newControlPlaneCmd() *cobra.Command {
	var (
		addr, trustDomain, stateDir, configDir, rootCert, rootKey, extraRoots string
		defaultTTL, maxTTL                                                    time.Duration
	)
	cmd := &cobra.Command{
		Use:   "controlplane",
		Short: "Run the control plane: the CA (istio.v1.auth.IstioCertificateService) over TLS",
		Long: `Run the control plane's certificate authority on --listen (gRPC over TLS 1.3).

Callers authenticate with a client certificate from this CA. A workload
certificate renews its own identity only. A node-proxy credential (minted
with "ambit controlplane node-credential", or by "ambit local" per node)
may ask, through the ImpersonatedIdentity metadata, for the identity of any
service account with a non-terminated pod on its node; pods are read from
the manifests in --config-dir, reloaded as they change.

The root is generated on first start and kept in --state-dir (key mode
0600), or loaded from --root-cert/--root-key. --extra-roots names a PEM file
of roots still trusted during a root rotation.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log := slog.New(slog.NewTextHandler(os.Stderr, nil))
			if configDir == "" {
				return errors.New("--config-dir is required: the CA checks impersonation requests against the pods it lists")
			}
			if fi, err := os.Stat(configDir); err != nil || !fi.IsDir() {
				return fmt.Errorf("--config-dir %s: not a readable directory", configDir)
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
			srv, err := ca.NewServer(auth, ca.Options{
				TrustDomain: trustDomain, DefaultTTL: defaultTTL, MaxTTL: maxTTL, ExtraRoots: extra, Logger: log,
				Pods: controlplane.PodIndex{Snapshot: func() controlplane.PodLister { return src.Snapshot() }},
			})
			if err != nil {
				return err
			}
			return serveCA(cmd.Context(), addr, auth, srv, src, trustDomain, log)
		},
	}
	f, pf := cmd.Flags(), cmd.PersistentFlags()
	f.StringVar(&addr, "listen", "127.0.0.1:15012", "address of the TLS gRPC endpoint")
	pf.StringVar(&trustDomain, "trust-domain", identity.DefaultTrustDomain, "SPIFFE trust domain")
	pf.StringVar(&stateDir, "state-dir", "/var/lib/ambit/ca", "where the generated root is persisted")
	f.StringVar(&configDir, "config-dir", "", "directory of manifests (pods decide which identities a node may obtain)")
	pf.StringVar(&rootCert, "root-cert", "", "CA certificate file (PEM, ending with the root); with --root-key, instead of a generated root")
	pf.StringVar(&rootKey, "root-key", "", "CA key file (PEM)")
	f.StringVar(&extraRoots, "extra-roots", "", "PEM file of further roots to trust and publish (root rotation)")
	f.DurationVar(&defaultTTL, "default-ttl", 24*time.Hour, "lifetime of issued workload certificates")
	f.DurationVar(&maxTTL, "max-ttl", 90*24*time.Hour, "longest lifetime a request may ask for (longer ones are capped)")
	cmd.AddCommand(newNodeCredentialCmd(&stateDir, &rootCert, &rootKey, &trustDomain))
	return cmd
}

// serveCA serves srv on addr until ctx is done, with the config source
// running beside it; if the source cannot read its directory the CA stops.
func serveCA(ctx context.Context, addr string, auth *identity.Authority, srv *ca.Server, src *filesource.Source, trustDomain string, log *slog.Logger) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	events := make(chan filesource.Event, 64)
	srcErr := make(chan error, 1)
	go func() {
		err := src.Run(ctx, events)
		if err != nil {
			log.Error("config source stopped", "err", err)
		}
		srcErr <- err
		cancel()
	}()
	go func() {
		for {
			select {
			case <-events: // the CA reads snapshots; events are not needed
			case <-ctx.Done():
				return
			}
		}
	}()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen %s: %w", addr, err)
	}
	serving := ca.ServingCertificate(auth, trustDomain, servingCertTTL, nil)
	if _, err := serving(); err != nil {
		l.Close()
		return fmt.Errorf("serving certificate: %w", err)
	}
	// A CA request is a CSR of at most 16 KiB and a little metadata.
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(ca.ServingTLSConfig(serving))), grpc.MaxRecvMsgSize(256<<10))
	srv.Register(g)
	go func() { <-ctx.Done(); g.GracefulStop() }()
	log.Info("CA serving", "addr", l.Addr().String(), "trustDomain", trustDomain, "root", auth.Root().Subject.String(), "rootNotAfter", auth.Root().NotAfter)
	if err := g.Serve(l); err != nil {
		return fmt.Errorf("serving CA: %w", err)
	}
	select {
	case err := <-srcErr:
		if err != nil {
			return fmt.Errorf("config source: %w", err)
		}
	default:
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
