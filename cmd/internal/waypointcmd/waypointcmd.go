// Package waypointcmd is `ambit waypoint run`: the L7 proxy of one
// waypoint Gateway, fed by the control plane over xDS and identified by a
// certificate from its CA. (`ambit waypoint apply|list|status|delete`,
// which manage waypoints in local mode, live with the CLI.)
package waypointcmd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"os"
	"time"

	"github.com/spf13/cobra"
	securityapi "istio.io/api/security/v1alpha1"

	"github.com/ambit-mesh/ambit/cmd/internal/cpconn"
	"github.com/ambit-mesh/ambit/identity"
	"github.com/ambit-mesh/ambit/identity/caclient"
	"github.com/ambit-mesh/ambit/internal/logbuf"
	"github.com/ambit-mesh/ambit/waypoint"
	"github.com/ambit-mesh/ambit/ztunnel"
)

// New returns the `run` command.
func New() *cobra.Command {
	var (
		ns, name, sa, node, cpAddr, credDir, listen, metricsAddr, readyAddr, adminAddr, trustDomain, domain, logFormat string
		// Istio's dialect towards the control plane (Kubernetes).
		tokenFile, clusterID, cpSAN, rootCert, podName, podIP string
	)
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run a waypoint: the L7 proxy (routes, L7 authorization, request telemetry) for the services and workloads bound to one waypoint Gateway",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// A line per request: buffered, one write per batch (at most
			// 100 ms late), flushed when the waypoint exits.
			logOut := logbuf.New(os.Stderr, 100*time.Millisecond, 0)
			defer logOut.Close()
			var h slog.Handler = slog.NewTextHandler(logOut, nil)
			if logFormat == "json" {
				h = slog.NewJSONHandler(logOut, nil)
			}
			log := slog.New(h).With("waypoint", ns+"/"+name)
			if ns == "" || name == "" || node == "" || cpAddr == "" {
				return errors.New("--namespace, --name, --node and --control-plane are required")
			}
			if credDir == "" && tokenFile == "" {
				return errors.New("--credential-dir (node credential) or --token-file (service-account token) is required")
			}
			if sa == "" {
				sa = name
			}
			id := identity.SPIFFE{TrustDomain: trustDomain, Namespace: ns, ServiceAccount: sa}
			if err := id.Validate(); err != nil {
				return err
			}
			self := cpconn.Node{Type: "waypoint", PodName: podName, PodNamespace: ns, PodIP: podIP, NodeName: node,
				ServiceAccount: sa, ClusterID: clusterID, DNSDomain: ns + ".svc." + domain,
				Legacy: "waypoint~" + ns + "~" + name + "~" + node}
			if err := self.Validate(); err != nil {
				return err
			}
			conn, err := cpconn.Dial(cpconn.Options{Addr: cpAddr, CredDir: credDir, RootCert: rootCert, TokenFile: tokenFile, ClusterID: clusterID, ServerName: cpSAN})
			if err != nil {
				return err
			}
			defer conn.Close()
			// With a node credential (local mode) the waypoint asks for its
			// identity as the node's proxy; with its own service-account
			// token it asks for the token's identity, as Istio's waypoints.
			impersonate := tokenFile == ""
			certs := caclient.NewManager(&caclient.GRPCFetcher{Client: securityapi.NewIstioCertificateServiceClient(conn), Impersonate: impersonate}, nil, log)
			defer certs.Close()
			index := ztunnel.NewIndex()
			l7 := waypoint.NewL7Config(log)
			metrics := waypoint.NewMetrics()
			wp := waypoint.New(waypoint.Config{Namespace: ns, Name: name, Hostname: name + "." + ns + ".svc." + domain,
				Identity: id, TrustDomain: trustDomain, Certs: certs, Index: index, L7: l7,
				Logger: log, AccessLog: log.With("scope", "access"), Metrics: metrics})
			xds := &ztunnel.WDSClient{Conn: conn, Index: index, NodeID: self.ID(), Metadata: self.Metadata(os.Environ()), Logger: log, Extra: l7.Handlers()}
			ctx := cmd.Context()
			runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
			defer cancel()
			go func() { _ = xds.Run(runCtx) }()
			go func() { _, _ = certs.Get(runCtx, id) }()

			mux := http.NewServeMux()
			mux.Handle("/metrics", metrics.Handler())
			mux.Handle("/stats/prometheus", metrics.Handler())
			mux.HandleFunc("/healthz/ready", func(w http.ResponseWriter, _ *http.Request) {
				select {
				case <-l7.Ready():
				default:
					http.Error(w, "no routes and policies yet", http.StatusServiceUnavailable)
					return
				}
				if !xds.Synced() {
					http.Error(w, "no workloads yet", http.StatusServiceUnavailable)
					return
				}
				_, _ = w.Write([]byte("ready\n"))
			})
			// The admin port (local only) explains decisions.
			admin := http.NewServeMux()
			admin.HandleFunc("/debug/pprof/", pprof.Index)
			admin.HandleFunc("/debug/pprof/profile", pprof.Profile)
			admin.HandleFunc("/debug/authz", func(rw http.ResponseWriter, r *http.Request) {
				q := r.URL.Query()
				target, err := netip.ParseAddrPort(q.Get("target"))
				if err != nil {
					http.Error(rw, "target: want IP:port", http.StatusBadRequest)
					return
				}
				src, _ := netip.ParseAddr(q.Get("source"))
				method := q.Get("method")
				if method == "" {
					method = http.MethodGet
				}
				rw.Header().Set("Content-Type", "application/json")
				_ = json.NewEncoder(rw).Encode(wp.Explain(target, q.Get("principal"), src, method, q.Get("path"), q.Get("host")))
			})
			var servers []*http.Server
			for _, h := range []struct {
				addr string
				mux  http.Handler
			}{{metricsAddr, mux}, {readyAddr, mux}, {adminAddr, admin}} {
				l, err := net.Listen("tcp", h.addr)
				if err != nil {
					return fmt.Errorf("listen %s: %w", h.addr, err)
				}
				s := &http.Server{Handler: h.mux, ReadHeaderTimeout: 5 * time.Second}
				servers = append(servers, s)
				go func() { _ = s.Serve(l) }()
			}
			l, err := net.Listen("tcp", listen)
			if err != nil {
				return fmt.Errorf("listen %s: %w", listen, err)
			}
			errc := make(chan error, 1)
			go func() { errc <- wp.Serve(l) }()
			log.Info("waypoint running", "identity", id.String(), "listen", listen, "controlPlane", cpAddr)
			select {
			case <-ctx.Done():
			case err := <-errc:
				return err
			}
			sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer scancel()
			for _, s := range servers {
				_ = s.Close()
			}
			return wp.Shutdown(sctx)
		},
	}
	f := cmd.Flags()
	f.StringVar(&ns, "namespace", os.Getenv("POD_NAMESPACE"), "namespace of the waypoint Gateway")
	f.StringVar(&name, "name", "", "name of the waypoint Gateway")
	f.StringVar(&sa, "service-account", "", "service account the waypoint runs as (default: the Gateway's name)")
	f.StringVar(&node, "node", os.Getenv("NODE_NAME"), "node the waypoint runs on")
	f.StringVar(&cpAddr, "control-plane", "", "control plane address (CA and xDS), host:port")
	f.StringVar(&credDir, "credential-dir", "", "directory with the credential for the control plane: cert-chain.pem, key.pem, root-cert.pem (local mode)")
	f.StringVar(&tokenFile, "token-file", "", "service-account token to authenticate with (Kubernetes: the projected istio-ca token, "+cpconn.DefaultTokenFile+"); re-read when it changes")
	f.StringVar(&clusterID, "cluster-id", cpconn.EnvOr("ISTIO_META_CLUSTER_ID", cpconn.EnvOr("CLUSTER_ID", cpconn.DefaultClusterID)), "cluster id, sent in the clusterid header and node metadata")
	f.StringVar(&cpSAN, "control-plane-san", "", "DNS name the control plane's certificate must carry (default: the address's host name, or "+cpconn.DefaultServerName+" for an IP address)")
	f.StringVar(&rootCert, "root-cert", "", "mesh root certificate (PEM) that verifies the control plane (default: root-cert.pem in --credential-dir, else "+cpconn.DefaultRootCert+")")
	f.StringVar(&podName, "pod-name", os.Getenv("POD_NAME"), "the waypoint's pod name; with it the xDS node id is Istio's waypoint~<pod-ip>~<pod>.<ns>~<ns>.svc.<domain>")
	f.StringVar(&podIP, "pod-ip", os.Getenv("INSTANCE_IP"), "the waypoint's pod IP")
	f.StringVar(&listen, "listen", ":15008", "HBONE listen address")
	f.StringVar(&metricsAddr, "metrics", ":15020", "Prometheus metrics address")
	f.StringVar(&readyAddr, "readiness", ":15021", "readiness address (/healthz/ready)")
	f.StringVar(&adminAddr, "admin", "127.0.0.1:15000", "admin address (/debug/authz explains a request's authorization)")
	f.StringVar(&trustDomain, "trust-domain", identity.DefaultTrustDomain, "trust domain")
	f.StringVar(&domain, "domain", "cluster.local", "cluster DNS domain")
	f.StringVar(&logFormat, "log-format", "text", "log format: text or json")
	return cmd
}
