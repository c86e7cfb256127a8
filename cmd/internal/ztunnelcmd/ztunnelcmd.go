// Package ztunnelcmd is the ztunnel command: flags, the node credential,
// the CA and xDS clients, the ZDS socket and the admin endpoints around
// package ztunnel. Both `ambit ztunnel` and the small ambit-ztunnel binary
// (what local mode and a node DaemonSet run) use it.
package ztunnelcmd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	securityapi "istio.io/api/security/v1alpha1"

	"github.com/ambit-mesh/ambit/cmd/internal/cpconn"
	"github.com/ambit-mesh/ambit/identity"
	"github.com/ambit-mesh/ambit/identity/caclient"
	"github.com/ambit-mesh/ambit/internal/logbuf"
	"github.com/ambit-mesh/ambit/zds"
	"github.com/ambit-mesh/ambit/ztunnel"
)

// listenRetry listens on addr, retrying for a few seconds while the port
// is still held (by the ztunnel this one replaces, until it has freed its
// node-level ports).
func listenRetry(ctx context.Context, addr string) (net.Listener, error) {
	deadline := time.Now().Add(5 * time.Second)
	for {
		l, err := net.Listen("tcp", addr)
		if err == nil || !errors.Is(err, syscall.EADDRINUSE) || time.Now().After(deadline) {
			if err != nil {
				return nil, fmt.Errorf("listen %s: %w", addr, err)
			}
			return l, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// New returns the ztunnel command.
func New() *cobra.Command {
	var (
		cpAddr, credDir, node, zdsSocket, adminAddr, readyAddr, metricsAddr, trustDomain, logFormat string
		drainNotifyFD, workers                                                                      int
		handoffTimeout, drainTimeout                                                                time.Duration
		// Istio's dialect towards the control plane (Kubernetes, istiod).
		xdsAddr, caAddr, tokenFile, clusterID, cpSAN, rootCert string
		podName, podNamespace, podIP, serviceAccount           string
	)
	cmd := &cobra.Command{
		Use:   "ztunnel",
		Short: "Run the node proxy: in-pod listeners, HBONE mTLS, workload identities from the CA, WDS from the control plane",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if workers < 0 {
				return fmt.Errorf("--workers %d: want 0 (every CPU) or more", workers)
			}
			if workers > 0 {
				runtime.GOMAXPROCS(workers)
			}
			// A line per connection: buffered, one write per batch (at
			// most 100 ms late), flushed when ztunnel exits.
			logOut := logbuf.New(os.Stderr, 100*time.Millisecond, 0)
			defer logOut.Close()
			var h slog.Handler = slog.NewTextHandler(logOut, nil)
			if logFormat == "json" {
				h = slog.NewJSONHandler(logOut, nil)
			}
			log := slog.New(h).With("node", node)
			if xdsAddr == "" {
				xdsAddr = cpAddr
			}
			if caAddr == "" {
				caAddr = cpAddr
			}
			if node == "" || xdsAddr == "" || caAddr == "" {
				return errors.New("--node and --control-plane (or --xds-address and --ca-address) are required")
			}
			if credDir == "" && tokenFile == "" {
				return errors.New("--credential-dir (node credential) or --token-file (service-account token) is required")
			}
			self := cpconn.Node{Type: "ztunnel", PodName: podName, PodNamespace: podNamespace, PodIP: podIP, NodeName: node,
				ServiceAccount: serviceAccount, ClusterID: clusterID, Legacy: "ztunnel~" + node}
			if err := self.Validate(); err != nil {
				return err
			}
			dial := func(addr string) (*grpc.ClientConn, error) {
				return cpconn.Dial(cpconn.Options{Addr: addr, CredDir: credDir, RootCert: rootCert, TokenFile: tokenFile, ClusterID: clusterID, ServerName: cpSAN})
			}
			conn, err := dial(xdsAddr)
			if err != nil {
				return err
			}
			defer conn.Close()
			caConn := conn
			if caAddr != xdsAddr {
				if caConn, err = dial(caAddr); err != nil {
					return err
				}
				defer caConn.Close()
			}
			ctx := cmd.Context()

			certs := caclient.NewManager(&caclient.GRPCFetcher{Client: securityapi.NewIstioCertificateServiceClient(caConn), Impersonate: true}, nil, log)
			defer certs.Close()
			index := ztunnel.NewIndex()
			metrics := ztunnel.NewMetrics()
			zt := ztunnel.New(ztunnel.Config{Index: index, Certs: certs, TrustDomain: trustDomain, Logger: log, AccessLog: log.With("scope", "access"), Metrics: metrics})
			wds := &ztunnel.WDSClient{Conn: conn, Index: index, NodeID: self.ID(), Metadata: self.Metadata(os.Environ()), Logger: log}
			zc := zds.NewClient(zdsSocket, zt, log)
			ready := func() bool { return wds.Synced() && zc.Ready() }

			runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
			defer cancel()
			go func() { _ = wds.Run(runCtx) }()
			go func() { _ = zc.Run(runCtx) }()
			admin := &http.Server{Handler: zt.AdminHandler(ready), ReadHeaderTimeout: 5 * time.Second}
			for _, addr := range []string{adminAddr, readyAddr} {
				l, err := listenRetry(ctx, addr)
				if err != nil {
					return err
				}
				go func() { _ = admin.Serve(l) }()
			}
			mux := http.NewServeMux()
			mux.Handle("/metrics", metrics.Handler())
			mux.Handle("/stats/prometheus", metrics.Handler())
			ml, err := listenRetry(ctx, metricsAddr)
			if err != nil {
				return err
			}
			msrv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
			go func() { _ = msrv.Serve(ml) }()
			defer msrv.Close()
			// SIGINT means stop without waiting for a replacement (the
			// local runtime sends it when the whole mesh goes down).
			interrupted := make(chan os.Signal, 1)
			signal.Notify(interrupted, os.Interrupt)
			defer signal.Stop(interrupted)
			log.Info("ztunnel running", "xds", xdsAddr, "ca", caAddr, "nodeID", self.ID(), "token", tokenFile != "", "zds", zdsSocket, "admin", adminAddr)
			<-ctx.Done()
			select {
			case <-interrupted:
				handoffTimeout = 0
			default:
			}

			// Drain (as upstream ztunnel), without a refused connection when a
			// replacement comes: free the node-level ports for it, say we
			// are draining (the local runtime then starts the
			// replacement at once), keep every pod's listeners until the
			// replacement has bound its own next to them, then let open
			// connections finish within the drain deadline.
			log.Info("draining", "handoffTimeout", handoffTimeout, "drainTimeout", drainTimeout)
			_ = admin.Close()
			_ = msrv.Close()
			if drainNotifyFD > 0 {
				f := os.NewFile(uintptr(drainNotifyFD), "drain-notify")
				if _, err := f.WriteString("draining\n"); err != nil {
					log.Warn("drain notification", "err", err)
				}
				f.Close()
			}
			if handoffTimeout > 0 {
				hctx, hcancel := context.WithTimeout(context.Background(), handoffTimeout)
				handed := zt.Handoff(hctx)
				hcancel()
				log.Info("listeners closed", "pods", len(zt.Pods()), "handedOver", handed)
			}
			drainCtx, dcancel := context.WithTimeout(context.Background(), drainTimeout)
			defer dcancel()
			zt.Drain(drainCtx)
			cancel()
			log.Info("drained")
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&cpAddr, "control-plane", "", "control plane address (CA and xDS), host:port")
	f.StringVar(&xdsAddr, "xds-address", os.Getenv("XDS_ADDRESS"), "xDS address, host:port (default: --control-plane)")
	f.StringVar(&caAddr, "ca-address", os.Getenv("CA_ADDRESS"), "CA address, host:port (default: --control-plane)")
	f.StringVar(&credDir, "credential-dir", "", "directory with the node credential: cert-chain.pem, key.pem, root-cert.pem (local mode)")
	f.StringVar(&tokenFile, "token-file", "", "service-account token to authenticate with (Kubernetes: the projected istio-ca token, "+cpconn.DefaultTokenFile+"); re-read when it changes")
	f.StringVar(&clusterID, "cluster-id", cpconn.EnvOr("ISTIO_META_CLUSTER_ID", cpconn.EnvOr("CLUSTER_ID", cpconn.DefaultClusterID)), "cluster id, sent in the clusterid header and node metadata")
	f.StringVar(&cpSAN, "control-plane-san", "", "DNS name the control plane's certificate must carry (default: the address's host name, or "+cpconn.DefaultServerName+" for an IP address)")
	f.StringVar(&rootCert, "root-cert", "", "mesh root certificate (PEM) that verifies the control plane (default: root-cert.pem in --credential-dir, else "+cpconn.DefaultRootCert+")")
	f.StringVar(&node, "node", os.Getenv("NODE_NAME"), "name of this node")
	f.StringVar(&podName, "pod-name", os.Getenv("POD_NAME"), "this ztunnel's pod name; with it the xDS node id is Istio's ztunnel~<pod-ip>~<pod>.<ns>~<ns>.svc.cluster.local")
	f.StringVar(&podNamespace, "pod-namespace", os.Getenv("POD_NAMESPACE"), "this ztunnel's pod namespace")
	f.StringVar(&podIP, "pod-ip", os.Getenv("INSTANCE_IP"), "this ztunnel's pod IP")
	f.StringVar(&serviceAccount, "service-account", os.Getenv("SERVICE_ACCOUNT"), "this ztunnel's service account (node metadata)")
	f.StringVar(&zdsSocket, "zds-socket", "/var/run/ztunnel/ztunnel.sock", "the node agent's ZDS socket")
	f.StringVar(&adminAddr, "admin", "127.0.0.1:15000", "admin address (/config_dump)")
	f.StringVar(&readyAddr, "readiness", ":15021", "readiness address (/healthz/ready)")
	f.StringVar(&metricsAddr, "metrics", ":15020", "Prometheus metrics address (/metrics, /stats/prometheus)")
	f.StringVar(&trustDomain, "trust-domain", identity.DefaultTrustDomain, "trust domain")
	f.StringVar(&logFormat, "log-format", "text", "log format: text or json")
	f.IntVar(&drainNotifyFD, "drain-notify-fd", 0, "file descriptor to write \"draining\" to on SIGTERM (the local runtime starts the replacement then)")
	f.DurationVar(&handoffTimeout, "handoff-timeout", 5*time.Second, "on SIGTERM, how long each pod's listeners wait for a replacement ztunnel to bind its own before closing")
	f.IntVar(&workers, "workers", 2, "worker threads for the data path (GOMAXPROCS), as upstream ztunnel's default of 2 on a shared node; 0: one per CPU")
	f.DurationVar(&drainTimeout, "drain-timeout", 25*time.Second, "on SIGTERM, how long open connections may take to finish before they are cut")
	return cmd
}
