package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"

	"github.com/ambit-mesh/ambit/samples"
	"github.com/spf13/cobra"
)

func newSampleCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "sample",
		Short: "Sample workloads for demos and tests (run them inside pods)",
	}
	cmd.AddCommand(newSampleEchoCmd(), newSampleTCPEchoCmd(), newSampleBannerCmd(), newSampleClientCmd())
	return cmd
}

// sampleServer is what every sample server does.
type sampleServer interface {
	Serve(ctx context.Context, l net.Listener) error
}

// sampleLogger logs text lines to stderr, tagged with the sample and pod.
func sampleLogger(sample, name string) *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, nil)).With("sample", sample, "pod", name)
}

// serveSample listens on port (all addresses) and serves until the
// command's context ends (SIGINT, SIGTERM).
func serveSample(cmd *cobra.Command, port int, log *slog.Logger, srv sampleServer) error {
	if port < 0 || port > 65535 {
		return fmt.Errorf("--port %d: want 0 to 65535", port)
	}
	l, err := net.Listen("tcp", net.JoinHostPort("", strconv.Itoa(port)))
	if err != nil {
		return fmt.Errorf("listen on port %d: %w", port, err)
	}
	log.Info("serving", "addr", l.Addr().String())
	if err := srv.Serve(cmd.Context(), l); err != nil {
		return err
	}
	log.Info("stopped")
	return nil
}

// addServerFlags adds --port and --name.
func addServerFlags(cmd *cobra.Command, port *int, defPort int, name *string) {
	cmd.Flags().IntVar(port, "port", defPort, "TCP port to listen on (all addresses)")
	cmd.Flags().StringVar(name, "name", "", "pod name to report (default $POD_NAME, else $HOSTNAME, else the host name)")
}

func nameOr(name string) string {
	if name != "" {
		return name
	}
	return samples.DefaultName()
}

func newSampleEchoCmd() *cobra.Command {
	var port int
	var name string
	cmd := &cobra.Command{
		Use:   "echo",
		Short: "Echo server: HTTP/1.1, h2c and gRPC on one port; replies with the pod name, source address, protocol and headers",
		Long: `Echo server: HTTP/1.1, cleartext HTTP/2 (prior knowledge) and gRPC on one port.

HTTP: any path answers with the pod name, the source address the server saw,
protocol, method, URL, Host, request body size and headers, as text lines
(pod=..., source=..., header Name=value) or JSON (?format=json or
Accept: application/json). /status/<code> answers that status, /delay/<duration>
waits first (up to 1m), /size/<bytes> answers that many bytes (up to 1 GiB).
Every answer carries the X-Ambit-Pod and X-Ambit-Source headers.

gRPC: ambit.samples.Echo/Echo (google.protobuf.Struct in and out; the reply
has the same fields) and the standard grpc.health.v1.Health service.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			name = nameOr(name)
			log := sampleLogger("echo", name)
			return serveSample(cmd, port, log, &samples.EchoServer{Name: name, Logger: log})
		},
	}
	addServerFlags(cmd, &port, 8080, &name)
	return cmd
}

func newSampleTCPEchoCmd() *cobra.Command {
	var port int
	var name string
	cmd := &cobra.Command{
		Use:   "tcp-echo",
		Short: "TCP echo server (client-first: it writes nothing until it reads)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			name = nameOr(name)
			log := sampleLogger("tcp-echo", name)
			return serveSample(cmd, port, log, &samples.TCPEchoServer{Name: name, Logger: log})
		},
	}
	addServerFlags(cmd, &port, 9000, &name)
	return cmd
}

func newSampleBannerCmd() *cobra.Command {
	var port int
	var name string
	cmd := &cobra.Command{
		Use:   "banner",
		Short: "Server-first line protocol like SMTP: greets '220 <name> ambit banner ready', answers '250 <line>', QUIT -> '221 bye'",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			name = nameOr(name)
			log := sampleLogger("banner", name)
			return serveSample(cmd, port, log, &samples.BannerServer{Name: name, Logger: log})
		},
	}
	addServerFlags(cmd, &port, 2525, &name)
	return cmd
}

func newSampleClientCmd() *cobra.Command {
	var (
		cfg     samples.ClientConfig
		headers []string
		output  string
		quiet   bool
	)
	cmd := &cobra.Command{
		Use:   "client URL",
		Short: "Send requests (http://, h2c://, grpc://, tcp://, banner://) and summarise codes, pods, sources and latency",
		Long: `Send requests and summarise them. URL schemes:
  http://host:port/path    HTTP/1.1 (POST with --payload, else GET)
  h2c://host:port/path     cleartext HTTP/2 with prior knowledge
  grpc://host:port         the echo server's ambit.samples.Echo/Echo
  tcp://host:port          one line, which tcp-echo must echo back
  banner://host:port       read the greeting, send a line, QUIT

Prints one line per request (code, responding pod, source address the server
saw, latency), then a summary. A request fails on a transport error, an HTTP
5xx or a gRPC status other than OK; the exit status is 1 if any failed or
the run was interrupted. -o json prints only the summary, as JSON, with
every result in it.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg.URL = args[0]
			if output != "text" && output != "json" {
				return fmt.Errorf("-o %q: want text or json", output)
			}
			if cfg.Requests < 1 || cfg.Concurrency < 1 {
				return fmt.Errorf("-n %d -c %d: both must be at least 1", cfg.Requests, cfg.Concurrency)
			}
			for _, h := range headers {
				k, v, err := samples.ParseHeader(h)
				if err != nil {
					return fmt.Errorf("-H: %w", err)
				}
				if cfg.Headers == nil {
					cfg.Headers = http.Header{}
				}
				cfg.Headers.Add(k, v)
			}
			out := cmd.OutOrStdout()
			var onResult func(samples.Result)
			if output == "text" && !quiet {
				onResult = func(r samples.Result) { fmt.Fprintln(out, samples.FormatResult(r)) }
			}
			ctx := cmd.Context()
			sum, err := samples.Run(ctx, cfg, onResult)
			if err != nil {
				return err
			}
			if output == "json" {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				if err := enc.Encode(sum); err != nil {
					return fmt.Errorf("writing the summary: %w", err)
				}
			} else if err := sum.WriteText(out); err != nil {
				return fmt.Errorf("writing the summary: %w", err)
			}
			switch {
			case ctx.Err() != nil:
				return fmt.Errorf("interrupted after %d of %d requests", sum.Requests, cfg.Requests)
			case sum.Errors > 0:
				return fmt.Errorf("%d of %d requests failed", sum.Errors, sum.Requests)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.IntVarP(&cfg.Requests, "requests", "n", 10, "number of requests")
	f.IntVarP(&cfg.Concurrency, "concurrency", "c", 1, "requests in flight")
	f.DurationVar(&cfg.Timeout, "timeout", samples.DefaultTimeout, "per-request timeout, connecting included")
	f.DurationVar(&cfg.Interval, "interval", 0, "pause between two requests of one worker")
	f.IntVar(&cfg.Payload, "payload", 0, "bytes sent with each request (HTTP POST body, gRPC field, TCP or banner line)")
	f.BoolVar(&cfg.NewConn, "new-conn-per-request", false, "open a new connection for every request")
	f.StringArrayVarP(&headers, "header", "H", nil, `extra request header "Name: value" (gRPC metadata; Host sets the authority); repeatable`)
	f.StringVarP(&output, "output", "o", "text", "output: text (a line per request, then the summary) or json (the summary and every result)")
	f.BoolVarP(&quiet, "quiet", "q", false, "text output: print only the summary")
	return cmd
}
