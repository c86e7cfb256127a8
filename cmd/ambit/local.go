package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/ambit-mesh/ambit/local"
	"github.com/spf13/cobra"
)

func newLocalCmd() *cobra.Command {
	var stateDir string
	cmd := &cobra.Command{
		Use:   "local",
		Short: "Run a whole mesh on this machine: nodes and pods as network namespaces, config from YAML (needs root)",
	}
	cmd.PersistentFlags().StringVar(&stateDir, "state-dir", local.DefaultStateDir, "where the local mesh keeps its state and logs")

	var upDir string
	var upNodes, upWorkers int
	up := &cobra.Command{
		Use:   "up -f DIR",
		Short: "Bring up a local mesh from a directory of Kubernetes YAML",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if upDir == "" {
				return errors.New("-f DIR is required")
			}
			return local.Up(cmd.Context(), local.UpOptions{ConfigDir: upDir, StateDir: stateDir, Nodes: upNodes, ZtunnelWorkers: upWorkers, Out: cmd.OutOrStdout()})
		},
	}
	up.Flags().StringVarP(&upDir, "filename", "f", "", "directory of manifests (Namespace, ServiceAccount, Pod, Service, AuthorizationPolicy, ...)")
	up.Flags().IntVar(&upWorkers, "ztunnel-workers", 0, "each ztunnel's --workers (0: ztunnel's default, 2)")
	up.Flags().IntVar(&upNodes, "nodes", 0, "number of nodes (default: spec.nodes of a LocalCluster in DIR, else 2)")

	down := &cobra.Command{
		Use:   "down",
		Short: "Tear down the local mesh: every namespace, link, process and file it made",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return local.Down(cmd.Context(), stateDir, cmd.OutOrStdout())
		},
	}

	var output string
	status := &cobra.Command{
		Use:   "status",
		Short: "Show nodes, pods (node, IP, phase, mesh), services, policy warnings and rejected config files",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "" && output != "json" && output != "text" {
				return errors.New("-o: want text or json")
			}
			st, err := local.ReadState(stateDir)
			if err != nil {
				return err
			}
			return local.PrintStatus(cmd.OutOrStdout(), st, output == "json")
		},
	}
	status.Flags().StringVarP(&output, "output", "o", "text", "output format: text or json")

	exec := &cobra.Command{
		Use:   "exec POD -- CMD [ARGS...]",
		Short: "Run a command inside a pod's network namespace, with the pod's environment",
		Args:  cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if cmd.ArgsLenAtDash() != 1 {
				return errors.New("usage: ambit local exec POD -- CMD [ARGS...]")
			}
			return local.Exec(stateDir, args[0], args[1:])
		},
	}

	controlplane := &cobra.Command{
		Use:   "controlplane [/ready|/metrics|/debug/store|/debug/proxies]",
		Short: "Fetch one of the local control plane's HTTP endpoints (default /debug/store)",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			path := "/debug/store"
			if len(args) == 1 {
				path = args[0]
			}
			if !strings.HasPrefix(path, "/") {
				return fmt.Errorf("path %q: must start with /", path)
			}
			body, err := local.ControlPlaneGet(stateDir, path)
			if err != nil {
				return err
			}
			_, err = cmd.OutOrStdout().Write(body)
			return err
		},
	}

	var runDir string
	var runNodes, runWorkers int
	run := &cobra.Command{
		Use:    "run",
		Short:  "The supervisor (started by up; not for direct use)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s := &local.Supervisor{ConfigDir: runDir, StateDir: stateDir, Nodes: runNodes, ZtunnelWorkers: runWorkers,
				Logger: slog.New(slog.NewTextHandler(os.Stderr, nil))}
			return s.Run(cmd.Context())
		},
	}
	run.Flags().StringVarP(&runDir, "filename", "f", "", "directory of manifests")
	run.Flags().IntVar(&runWorkers, "ztunnel-workers", 0, "each ztunnel's --workers")
	run.Flags().IntVar(&runNodes, "nodes", 2, "number of nodes")

	nsexec := &cobra.Command{
		Use:                "nsexec [--die-with-parent] NETNS -- CMD [ARGS...]",
		Short:              "Exec a command in a network namespace (used for pods, ztunnels and CNI plugins)",
		Hidden:             true,
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			netns, argv, opts, err := local.ParseNSExecArgs(args)
			if err != nil {
				return err
			}
			return local.NSExec(netns, argv, os.Environ(), opts)
		},
	}
	cmd.AddCommand(up, down, status, exec, controlplane, run, nsexec)
	return cmd
}
