package main

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/ambit-mesh/ambit/controlplane"
	"github.com/ambit-mesh/ambit/controlplane/ca"
	"github.com/ambit-mesh/ambit/controlplane/filesource"
	"github.com/ambit-mesh/ambit/identity"
)

func newControlPlaneCmd() *cobra.Command {
	var (
		addr, trustDomain, stateDir, configDir, rootCert, rootKey string
		defaultTTL, maxTTL                                        time.Duration
	)
	cmd := &cobra.Command{
		Use:   "controlplane",
		Short: "Run the control plane: the CA (istio.v1.auth.IstioCertificateService) over TLS",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log := slog.New(slog.NewTextHandler(os.Stderr, nil))
			if configDir == "" {
				return errors.New("--config-dir is required: the CA checks impersonation requests against the pods it lists")
			}
			auth, err := loadAuthority(stateDir, rootCert, rootKey, trustDomain, log)
			if err != nil {
				return err
			}
			src := filesource.New(configDir, log)
			events := make(chan filesource.Event, 64)
			go func() {
				for range events {
				}
			}()
			ctx := cmd.Context()
			go func() {
				if err := src.Run(ctx, events); err != nil {
					log.Error("config source stopped", "err", err)
				}
			}()
			srv, err := ca.NewServer(auth, ca.Options{TrustDomain: trustDomain, DefaultTTL: defaultTTL, MaxTTL: maxTTL, Logger: log,
				Pods: controlplane.PodIndex{Snapshot: func() controlplane.PodLister { return src.Snapshot() }}})
			if err != nil {
				return err
			}
			serving, err := auth.IssueTLS(ca.ServerIdentity(trustDomain), 30*24*time.Hour, time.Now(), nil)
			if err != nil {
				return err
			}
			l, err := net.Listen("tcp", addr)
			if err != nil {
				return fmt.Errorf("listen %s: %w", addr, err)
			}
			g := grpc.NewServer(grpc.Creds(credentials.NewTLS(ca.ServerTLSConfig(serving))))
			srv.Register(g)
			go func() { <-ctx.Done(); g.GracefulStop() }()
			log.Info("CA serving", "addr", l.Addr().String(), "trustDomain", trustDomain, "root", filepath.Join(stateDir, ca.RootCertFile))
			return g.Serve(l)
		},
	}
	f, pf := cmd.Flags(), cmd.PersistentFlags()
	f.StringVar(&addr, "listen", "127.0.0.1:15012", "address of the TLS gRPC endpoint")
	pf.StringVar(&trustDomain, "trust-domain", identity.DefaultTrustDomain, "SPIFFE trust domain")
	pf.StringVar(&stateDir, "state-dir", "/var/lib/ambit/ca", "where the generated root is persisted")
	f.StringVar(&configDir, "config-dir", "", "directory of manifests (pods decide which identities a node may obtain)")
	pf.StringVar(&rootCert, "root-cert", "", "CA certificate file (PEM); with --root-key, instead of a generated root")
	pf.StringVar(&rootKey, "root-key", "", "CA key file (PEM)")
	f.DurationVar(&defaultTTL, "default-ttl", 24*time.Hour, "lifetime of issued workload certificates")
	f.DurationVar(&maxTTL, "max-ttl", 90*24*time.Hour, "longest lifetime a request may ask for (longer ones are capped)")
	cmd.AddCommand(newNodeCredentialCmd(&stateDir, &rootCert, &rootKey, &trustDomain))
	return cmd
}

func loadAuthority(stateDir, rootCert, rootKey, trustDomain string, log *slog.Logger) (*identity.Authority, error) {
	if (rootCert == "") != (rootKey == "") {
		return nil, errors.New("--root-cert and --root-key go together")
	}
	if rootCert != "" {
		return ca.LoadFiles(rootCert, rootKey)
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
		Short: "Mint a node-proxy credential (for that node's ztunnel) with the CA's key",
		Args:  cobra.NoArgs,
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
			return writeCredential(out, cred, auth)
		},
	}
	cmd.Flags().StringVar(&node, "node", "", "node name")
	cmd.Flags().StringVar(&out, "out", "", "directory for cert-chain.pem, key.pem and root-cert.pem")
	cmd.Flags().DurationVar(&ttl, "ttl", 24*time.Hour, "lifetime")
	_ = cmd.MarkFlagRequired("node")
	_ = cmd.MarkFlagRequired("out")
	return cmd
}

// writeCredential writes a credential as PEM files.
func writeCredential(dir string, cred *tls.Certificate, auth *identity.Authority) error {
	return ca.WriteCredential(dir, cred, auth.Root())
}
