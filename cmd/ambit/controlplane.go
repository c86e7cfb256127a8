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
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	gwclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/ambit-mesh/ambit/controlplane"
	"github.com/ambit-mesh/ambit/controlplane/ca"
	"github.com/ambit-mesh/ambit/controlplane/config"
	"github.com/ambit-mesh/ambit/controlplane/controller"
	"github.com/ambit-mesh/ambit/controlplane/filesource"
	"github.com/ambit-mesh/ambit/controlplane/kubeauth"
	"github.com/ambit-mesh/ambit/controlplane/kubesource"
	"github.com/ambit-mesh/ambit/controlplane/kubestatus"
	"github.com/ambit-mesh/ambit/controlplane/kubewaypoint"
	"github.com/ambit-mesh/ambit/controlplane/rootcert"
	"github.com/ambit-mesh/ambit/identity"
)

// servingCertTTL is the lifetime of the control plane's own serving
// certificate (renewed at half-life while running).
const servingCertTTL = 30 * 24 * time.Hour

func newControlPlaneCmd() *cobra.Command {
	var (
		addr, httpAddr, trustDomain, stateDir, configDir, rootCert, rootKey, extraRoots string
		kubeconfig, namespace, clusterID, trustedNodeAccounts, waypointImage            string
		defaultTTL, maxTTL, tokenCacheTTL                                               time.Duration
	)
	cmd := &cobra.Command{
		Use:   "controlplane --config DIR | --kubeconfig PATH",
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

With --kubeconfig (or, without --config, in a pod: the in-cluster
configuration) the control plane watches that Kubernetes API server
instead, and writes waypoint Gateway and route status back while it holds
the status Lease in --namespace: several replicas may run, all serve xDS,
one writes status.

On Kubernetes, proxies authenticate as Istio's do: a projected
service-account token (audience istio-ca) as "authorization: Bearer",
checked with TokenReview. A Gateway of class istio-waypoint gets its
waypoint: a ServiceAccount, Service and Deployment of --waypoint-image
(running "ambit waypoint run"), owned by the Gateway. A pod-bound token of a --trusted-node-accounts
service account (ztunnel) may ask for the identities of pods on its own
node; any other token gets its own identity only. The root is published as
ConfigMap istio-ca-root-cert in every namespace.

Callers may also authenticate with a client certificate from this CA. A workload
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
			cfg, err := configSource(configDir, kubeconfig, namespace, log)
			if err != nil {
				return err
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
			ctx, cancel := context.WithCancel(cmd.Context())
			defer cancel()
			var cp *controlplane.ControlPlane
			if cfg.status != nil {
				cfg.status.SetObjects(kubestatus.GetterFunc(func(k config.Key) (config.Object, bool) { return cp.Controller.Store().Get(k) }))
			}
			opts := controlplane.Options{
				Authority: auth, TrustDomain: trustDomain, DefaultTTL: defaultTTL, MaxTTL: maxTTL, ExtraRoots: extra,
				ServingCertTTL: servingCertTTL, Sources: []config.Source{cfg.source}, Logger: log,
				ConfigErrors: cfg.errors, OnStatus: cfg.onStatus,
			}
			var cs kubernetes.Interface
			if cfg.rc != nil {
				// On Kubernetes, proxies authenticate with their
				// service-account tokens (TokenReview), as with istiod.
				if cs, err = kubernetes.NewForConfig(cfg.rc); err != nil {
					return err
				}
				accounts, err := ca.ParseNodeAccounts(trustedNodeAccounts)
				if err != nil {
					return fmt.Errorf("--trusted-node-accounts: %w", err)
				}
				pods, err := kubeauth.NewPods(cs)
				if err != nil {
					return err
				}
				if err := pods.Start(ctx); err != nil {
					return err
				}
				tokens, err := kubeauth.New(kubeauth.Options{Client: cs, ClusterID: clusterID, Pods: pods, CacheTTL: tokenCacheTTL, Logger: log.With("component", "kubeauth")})
				if err != nil {
					return err
				}
				opts.Tokens, opts.Pods, opts.TrustedNodeAccounts = tokens, pods, accounts
			}
			if cs != nil && waypointImage != "" {
				gw, err := gwclient.NewForConfig(cfg.rc)
				if err != nil {
					return err
				}
				ns := namespace
				if ns == "" {
					ns = envOr("POD_NAMESPACE", kubestatus.DefaultNamespace)
				}
				dep := kubewaypoint.New(cs, gw, kubewaypoint.Options{Image: waypointImage, ClusterID: clusterID, TrustDomain: trustDomain,
					ControlPlane: "istiod." + ns + ".svc:15012", Logger: log.With("component", "waypoints")})
				onStatus := opts.OnStatus
				opts.OnStatus = func(st controller.Status) {
					if onStatus != nil {
						onStatus(st)
					}
					dep.OnStatus(st)
				}
				go func() {
					if err := dep.Run(ctx); err != nil {
						log.Error("waypoint deployer stopped", "err", err)
					}
				}()
			} else if cs != nil {
				log.Info("no --waypoint-image: waypoint Gateways get no Deployment from this control plane")
			}
			cp, err = controlplane.New(ctx, opts)
			if err != nil {
				return err
			}
			if cs != nil {
				pub, err := rootcert.New(cs, cp.CA.Bundle().PEM(), log.With("component", "rootcert"))
				if err != nil {
					return err
				}
				go func() {
					if err := pub.Run(ctx); err != nil && ctx.Err() == nil {
						log.Error("root certificate publisher stopped", "err", err)
					}
				}()
			}
			if cfg.status == nil {
				return serveControlPlane(ctx, cp, addr, httpAddr, log)
			}
			statusDone := make(chan struct{})
			go func() {
				defer close(statusDone)
				if err := cfg.status.Run(ctx); err != nil {
					log.Error("status writer stopped", "err", err)
				}
			}()
			err = serveControlPlane(ctx, cp, addr, httpAddr, log)
			cancel()
			<-statusDone // releases the Lease
			return err
		},
	}
	f, pf := cmd.Flags(), cmd.PersistentFlags()
	f.StringVar(&addr, "listen", ":15012", "address of the TLS gRPC endpoint (CA and xDS)")
	f.StringVar(&httpAddr, "http", ":15014", "address of the HTTP endpoint (/ready, /metrics, /debug/store, /debug/proxies); empty: none")
	pf.StringVar(&trustDomain, "trust-domain", identity.DefaultTrustDomain, "SPIFFE trust domain")
	pf.StringVar(&stateDir, "state-dir", "/var/lib/ambit/ca", "where the generated root is persisted")
	f.StringVar(&configDir, "config", "", "directory of manifests (watched)")
	f.StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig of the Kubernetes API server to watch (instead of --config; in a pod, the in-cluster configuration is the default)")
	f.StringVar(&namespace, "namespace", "", "the control plane's namespace, holding the status Lease (default $POD_NAMESPACE, else istio-system)")
	f.StringVar(&configDir, "config-dir", "", "old name of --config")
	_ = f.MarkHidden("config-dir")
	pf.StringVar(&rootCert, "root-cert", "", "CA certificate file (PEM, ending with the root); with --root-key, instead of a generated root")
	pf.StringVar(&rootKey, "root-key", "", "CA key file (PEM)")
	f.StringVar(&extraRoots, "extra-roots", "", "PEM file of further roots to trust and publish (root rotation)")
	f.DurationVar(&defaultTTL, "default-ttl", 24*time.Hour, "lifetime of issued workload certificates")
	f.StringVar(&clusterID, "cluster-id", envOr("CLUSTER_ID", kubeauth.DefaultClusterID), "this cluster's id (Kubernetes): a caller's clusterid header must match it to impersonate")
	f.StringVar(&waypointImage, "waypoint-image", os.Getenv("AMBIT_WAYPOINT_IMAGE"), "image of the waypoints deployed for Gateways of class istio-waypoint (Kubernetes; empty: none deployed)")
	f.StringVar(&trustedNodeAccounts, "trusted-node-accounts", "istio-system/ztunnel", "comma-separated namespace/service-account list whose pod-bound tokens may ask for the identities of pods on their node (istiod's CA_TRUSTED_NODE_ACCOUNTS)")
	f.DurationVar(&tokenCacheTTL, "token-cache-ttl", time.Minute, "how long a successful TokenReview is reused, never past the token's expiry; negative: no cache")
	f.DurationVar(&maxTTL, "max-ttl", 90*24*time.Hour, "longest lifetime a request may ask for (longer ones are capped)")
	cmd.AddCommand(newNodeCredentialCmd(&stateDir, &rootCert, &rootKey, &trustDomain))
	return cmd
}

// sourceConfig is where the control plane's config comes from.
type sourceConfig struct {
	source   config.Source
	rc       *rest.Config            // the API server (Kubernetes), else nil
	errors   func() int              // rejected config files (file source)
	status   *kubestatus.Writer      // status write-back (Kubernetes)
	onStatus func(controller.Status) // status.OnStatus
}

// configSource picks the config source: the manifest directory of
// --config, else the API server of --kubeconfig, else (in a pod) the
// in-cluster one.
func configSource(configDir, kubeconfig, namespace string, log *slog.Logger) (*sourceConfig, error) {
	if configDir != "" {
		if kubeconfig != "" {
			return nil, errors.New("--config and --kubeconfig exclude each other")
		}
		if fi, err := os.Stat(configDir); err != nil || !fi.IsDir() {
			return nil, fmt.Errorf("--config %s: not a readable directory", configDir)
		}
		src := filesource.New(configDir, log)
		return &sourceConfig{source: src, errors: func() int { return len(src.Errors()) }}, nil
	}
	var rc *rest.Config
	var err error
	switch {
	case kubeconfig != "":
		if rc, err = clientcmd.BuildConfigFromFlags("", kubeconfig); err != nil {
			return nil, fmt.Errorf("--kubeconfig %s: %w", kubeconfig, err)
		}
	default:
		if rc, err = rest.InClusterConfig(); err != nil {
			return nil, errors.New("--config DIR or --kubeconfig PATH is required (the in-cluster configuration works only in a pod)")
		}
	}
	// client-go logs through klog: send it to the same handler.
	klog.SetSlogLogger(log.With("component", "client-go"))
	src, err := kubesource.New(rc, kubesource.Options{Logger: log})
	if err != nil {
		return nil, err
	}
	sw, err := kubestatus.New(rc, kubestatus.Options{Logger: log, Namespace: namespace})
	if err != nil {
		return nil, err
	}
	log.Info("watching the Kubernetes API", "server", rc.Host, "statusLease", sw.Lease(), "identity", sw.Identity())
	return &sourceConfig{source: src, rc: rc, status: sw, onStatus: sw.OnStatus}, nil
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

// envOr returns the environment variable key, or def when it is unset or empty.
func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
