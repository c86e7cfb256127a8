package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
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

// podName is the default name a sample reports: $POD_NAME, $HOSTNAME, or the host name.
func podName() string {
	for _, v := range []string{"POD_NAME", "HOSTNAME"} {
		if s := os.Getenv(v); s != "" {
			return s
		}
	}
	h, _ := os.Hostname()
	return h
}

func sampleLogger(name string) *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, nil)).With("sample", name)
}

func listen(port int) (net.Listener, error) {
	l, err := net.Listen("tcp", net.JoinHostPort("", strconv.Itoa(port)))
	if err != nil {
		return nil, fmt.Errorf("listen on port %d: %w", port, err)
	}
	return l, nil
}

func newSampleEchoCmd() *cobra.Command {
	var port int
	var name string
	cmd := &cobra.Command{
		Use:   "echo",
		Short: "Echo server: HTTP/1.1, h2c and gRPC on one port; replies with the source address, headers and pod name",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := listen(port)
			if err != nil {
				return err
			}
			log := sampleLogger("echo")
			log.Info("serving", "addr", l.Addr().String(), "pod", name)
			return (&samples.EchoServer{Name: name, Logger: log}).Serve(cmd.Context(), l)
		},
	}
	cmd.Flags().IntVar(&port, "port", 8080, "TCP port")
	cmd.Flags().StringVar(&name, "name", podName(), "pod name to report (default $POD_NAME, $HOSTNAME)")
	return cmd
}

func newSampleTCPEchoCmd() *cobra.Command {
	var port int
	cmd := &cobra.Command{
		Use:   "tcp-echo",
		Short: "TCP echo server (client-first)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := listen(port)
			if err != nil {
				return err
			}
			log := sampleLogger("tcp-echo")
			log.Info("serving", "addr", l.Addr().String())
			return (&samples.TCPEchoServer{Logger: log}).Serve(cmd.Context(), l)
		},
	}
	cmd.Flags().IntVar(&port, "port", 9000, "TCP port")
	return cmd
}

func newSampleBannerCmd() *cobra.Command {
	var port int
	var name string
	cmd := &cobra.Command{
		Use:   "banner",
		Short: "Server-first line protocol (like SMTP): greets before reading",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := listen(port)
			if err != nil {
				return err
			}
			log := sampleLogger("banner")
			log.Info("serving", "addr", l.Addr().String(), "pod", name)
			return (&samples.BannerServer{Name: name, Logger: log}).Serve(cmd.Context(), l)
		},
	}
	cmd.Flags().IntVar(&port, "port", 2525, "TCP port")
	cmd.Flags().StringVar(&name, "name", podName(), "pod name to report (default $POD_NAME, $HOSTNAME)")
	return cmd
}

func newSampleClientCmd() *cobra.Command {
	var cfg samples.ClientConfig
	var output string
	var quiet bool
	cmd := &cobra.Command{
		Use:   "client URL",
		Short: "Send requests (http://, h2c://, grpc://, tcp://, banner://) and summarise codes, pods and latency",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg.URL = args[0]
			if output != "text" && output != "json" {
				return fmt.Errorf("-o: want text or json, got %q", output)
			}
			out := cmd.OutOrStdout()
			var onResult func(samples.Result)
			if output == "text" && !quiet {
				onResult = func(r samples.Result) { fmt.Fprintln(out, samples.FormatResult(r)) }
			}
			sum, err := samples.Run(cmd.Context(), cfg, onResult)
			if err != nil {
				return err
			}
			if output == "json" {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				if err := enc.Encode(sum); err != nil {
					return err
				}
			} else {
				sum.WriteText(out)
			}
			if sum.Errors > 0 {
				return errors.New("some requests failed")
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.IntVarP(&cfg.Requests, "requests", "n", 10, "number of requests")
	f.IntVarP(&cfg.Concurrency, "concurrency", "c", 1, "requests in flight")
	f.DurationVar(&cfg.Timeout, "timeout", 0, "per-request timeout (default 2s)")
	f.DurationVar(&cfg.Interval, "interval", 0, "pause between requests of one worker")
	f.IntVar(&cfg.Payload, "payload", 0, "extra bytes sent with each request")
	f.BoolVar(&cfg.NewConn, "new-conn-per-request", false, "open a new connection for every request")
	f.StringVarP(&output, "output", "o", "text", "output format: text or json")
	f.BoolVarP(&quiet, "quiet", "q", false, "print only the summary")
	return cmd
}
