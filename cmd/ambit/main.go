// Command ambit is Ambit's multi-call binary: the control plane, the node
// components, the local-mode runtime, the samples and the inspection CLI are
// all subcommands of it.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/ambit-mesh/ambit/cmd/internal/waypointcmd"
	"github.com/ambit-mesh/ambit/cmd/internal/ztunnelcmd"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := newRootCmd()
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "ambit:", err)
		os.Exit(1)
	}
}

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "ambit",
		Short:         "Ambit: a sidecar-less service mesh, compatible with Istio ambient",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(
		newVersionCmd(),
		newLocalCmd(),                     // local.go: the local-mode runtime
		newSampleCmd(),                    // sample.go: sample workloads
		newControlPlaneCmd(),              // controlplane.go: control plane (CA, later xDS)
		newNodeAgentCmd(),                 // nodeagent.go: the node agent on Kubernetes (DaemonSet)
		newHBONEBenchCmd(),                // hbonebench.go: HBONE micro-benchmark
		ztunnelcmd.New(),                  // the node proxy (also the ambit-ztunnel binary)
		newWaypointCmd(waypointcmd.New()), // waypoint.go: run the L7 proxy, manage waypoints
		newZtunnelConfigCmd(),             // inspect.go: what a ztunnel knows
		newAuthzCmd(),                     // inspect.go: explain authorization decisions
		newInstallCmd(),                   // install.go: install on a Kubernetes cluster
		newUninstallCmd(),                 // uninstall.go: remove it
		newCheckCmd(),                     // check.go: pre-flight checks
	)
	return root
}
