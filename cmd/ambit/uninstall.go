package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/ambit-mesh/ambit/internal/install"
	"github.com/ambit-mesh/ambit/manifests"
)

func newUninstallCmd() *cobra.Command {
	var (
		kf      kubeFlags
		cf      crdFlags
		purge   bool
		wait    bool
		timeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   "uninstall",
		Short: "Remove Ambit from the current Kubernetes cluster",
		Long: `Remove what "ambit install" applied, in reverse order, waiting for each
object to be gone before the next:

  1. the node agent DaemonSet, and its pods: a node agent stopped while its
     DaemonSet is gone (or being deleted) takes its node out of the mesh:
     its entry in the CNI config, the ambit-cni binary and the host's probe
     SNAT table, and releases every enrolled pod: its capture rules go and
     its ambient.istio.io/redirection annotation with them, so pods keep
     running with their direct network, no restart (an agent stopped while
     the DaemonSet remains, an upgrade, leaves the node as it is for the
     next one);
  2. the ztunnel DaemonSet, then the control plane;
  3. the RBAC and service accounts;
  4. what the control plane left: its status Lease and the
     istio-ca-root-cert ConfigMaps it published, and Secret cacerts if
     install generated it (a CA you brought stays).

Namespace istio-system and the CRDs stay: deleting a CRD deletes every
resource of its kind, your AuthorizationPolicies, Gateways and routes
with it. --purge deletes them too.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// Only the objects' names matter here, which no value changes.
			objs, err := manifests.Render(manifests.Defaults("uninstall"))
			if err != nil {
				return err
			}
			var crds []manifests.Object
			if purge {
				if crds, err = cf.load(); err != nil {
					return err
				}
			}
			rc, err := kf.config()
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			c, err := install.NewClient(rc, out)
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "uninstalling Ambit from %s\n", rc.Host)
			if err := c.Uninstall(cmd.Context(), objs, install.UninstallOptions{Purge: purge, CRDs: crds, Wait: wait, Timeout: timeout}); err != nil {
				return err
			}
			fmt.Fprintln(out, "Ambit is uninstalled.")
			return nil
		},
	}
	f := cmd.Flags()
	kf.add(f)
	cf.add(f, "delete with --purge")
	f.BoolVar(&purge, "purge", false, "also delete the CRDs (and every Istio and Gateway API resource in the cluster) and namespace istio-system")
	f.BoolVar(&wait, "wait", true, "wait for each object (and a workload's pods) to be gone before deleting the next")
	f.DurationVar(&timeout, "timeout", 5*time.Minute, "how long each wait may take")
	return cmd
}
