package main

import (
	"context"
	"errors"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"

	"github.com/ambit-mesh/ambit/internal/preflight"
)

func newCheckCmd() *cobra.Command {
	var (
		kf            kubeFlags
		node, cluster bool
		o             = preflight.DefaultOptions()
	)
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Pre-flight checks for an install: this node's kernel, CNI and ports, and the cluster",
		Long: `Check, before "ambit install", what the mesh needs (as "istioctl x
precheck"):

  on this node (run it on a node, or --node=false): a kernel of 5.2 or
  later with nftables (inet family, NAT, REDIRECT, conntrack marks),
  policy routing, network namespaces and SO_REUSEPORT; a CNI network
  config in --cni-conf-dir for ambit-cni to chain onto; the mesh's ports
  (15001 15006 15008 15012 15014 15020 15021, and 8000, the node agent's
  readiness on the host's network) not listened on;

  on the cluster (--cluster=false to skip): the API server reachable,
  Kubernetes 1.30 or later, no istiod that Ambit did not install, and
  permission to create CRDs, cluster roles and DaemonSets.

Prints a table and, for each failure or warning, what to do; exits
non-zero when a check fails.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var rs []preflight.Result
			if node {
				rs = append(rs, preflight.CheckNode(preflight.LocalNode(), o)...)
			}
			if cluster {
				rc, err := kf.config()
				if err != nil {
					rs = append(rs, preflight.Result{Check: "API server", Status: preflight.Fail, Detail: err.Error(),
						Fix: "check --kubeconfig and --context (or $KUBECONFIG)"})
				} else {
					rc.Timeout = 10 * time.Second
					cs, err := kubernetes.NewForConfig(rc)
					if err != nil {
						return err
					}
					ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
					rs = append(rs, preflight.CheckCluster(ctx, preflight.KubeCluster{Client: cs}, rc.Host, o)...)
					cancel()
				}
			}
			if err := preflight.Print(cmd.OutOrStdout(), rs); err != nil {
				return err
			}
			if preflight.Failed(rs) {
				return errors.New("pre-flight checks failed")
			}
			return nil
		},
	}
	f := cmd.Flags()
	kf.add(f)
	f.BoolVar(&node, "node", true, "check this machine as a node")
	f.BoolVar(&cluster, "cluster", true, "check the cluster")
	f.StringVar(&o.CNIConfDir, "cni-conf-dir", o.CNIConfDir, "the node's CNI config directory")
	return cmd
}
