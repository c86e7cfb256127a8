package main

import (
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/ambit-mesh/ambit/internal/install"
	"github.com/ambit-mesh/ambit/manifests"
	"github.com/ambit-mesh/ambit/version"
)

// kubeFlags are the cluster connection flags of install, uninstall and
// check.
type kubeFlags struct{ kubeconfig, context string }

func (k *kubeFlags) add(f *pflag.FlagSet) {
	f.StringVar(&k.kubeconfig, "kubeconfig", "", "kubeconfig file (default $KUBECONFIG, ~/.kube/config, else the in-cluster configuration)")
	f.StringVar(&k.context, "context", "", "kubeconfig context (default: the current one)")
}

// config loads the client configuration as kubectl does, falling back to
// the in-cluster one in a pod.
func (k *kubeFlags) config() (*rest.Config, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = k.kubeconfig
	cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: k.context})
	rc, err := cc.ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("Kubernetes client configuration: %w", err)
	}
	return rc, nil
}

// crdFlags choose the CRDs: the ones embedded at build time (make
// manifests), or a directory.
type crdFlags struct {
	dir     string
	install bool
}

func (c *crdFlags) add(f *pflag.FlagSet, verb string) {
	f.StringVar(&c.dir, "crds", "", "directory of CRD YAML to "+verb+" (default: the upstream Istio and Gateway API CRDs embedded at build time by make manifests)")
}

func (c *crdFlags) load() ([]manifests.Object, error) {
	if c.dir != "" {
		return manifests.LoadCRDs(c.dir)
	}
	return manifests.EmbeddedCRDs()
}

// valueFlags are the template values.
type valueFlags struct {
	v                 manifests.Values
	hub, tag          string
	ambitImg, ztunImg string
}

func (vf *valueFlags) add(f *pflag.FlagSet) {
	vf.v = manifests.Defaults(version.Version)
	f.StringVar(&vf.hub, "hub", manifests.DefaultHub, "image repository prefix: images are <hub>/ambit:<tag> and <hub>/ambit-ztunnel:<tag> (make images)")
	f.StringVar(&vf.tag, "tag", version.Version, "image tag (this binary's version by default)")
	f.StringVar(&vf.ambitImg, "ambit-image", "", "image of the control plane and the node agent (overrides --hub and --tag)")
	f.StringVar(&vf.ztunImg, "ztunnel-image", "", "image of ztunnel (overrides --hub and --tag)")
	f.StringVar(&vf.v.ImagePullPolicy, "image-pull-policy", vf.v.ImagePullPolicy, "Always, IfNotPresent or Never (for images imported with ctr -n k8s.io images import: IfNotPresent or Never)")
	f.StringVar(&vf.v.TrustDomain, "trust-domain", vf.v.TrustDomain, "SPIFFE trust domain (of the generated CA, and the proxies')")
	f.StringVar(&vf.v.ClusterID, "cluster-id", vf.v.ClusterID, "cluster id (Istio's CLUSTER_ID)")
	f.IntVar(&vf.v.ControlPlaneReplicas, "controlplane-replicas", vf.v.ControlPlaneReplicas, "control plane replicas")
	f.StringVar(&vf.v.CNIConfDir, "cni-conf-dir", vf.v.CNIConfDir, "the nodes' CNI config directory")
	f.StringVar(&vf.v.CNIBinDir, "cni-bin-dir", vf.v.CNIBinDir, "the nodes' CNI plugin directory")
}

func (vf *valueFlags) values() manifests.Values {
	v := vf.v
	v.AmbitImage, v.ZtunnelImage = manifests.Images(vf.hub, vf.tag)
	if vf.ambitImg != "" {
		v.AmbitImage = vf.ambitImg
	}
	if vf.ztunImg != "" {
		v.ZtunnelImage = vf.ztunImg
	}
	return v
}

func newInstallCmd() *cobra.Command {
	var (
		kf      kubeFlags
		cf      crdFlags
		vf      valueFlags
		dryRun  bool
		wait    bool
		timeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   "install",
		Short: "Install Ambit on the current Kubernetes cluster (server-side apply), or print the manifests with --dry-run",
		Long: `Install Ambit into namespace istio-system: the upstream Istio and Gateway
API CRDs (applied first, waited for until Established), service accounts,
least-privilege RBAC, the control plane (Deployment and Service istiod,
15012 and 15014), and the ztunnel and node agent DaemonSets. Objects are
server-side applied with field manager "ambit", so installing again
updates in place and changes nothing that is already as wanted.

The control plane's CA lives in Secret istio-system/cacerts, in Istio's
plug-in CA layout (ca-cert.pem, ca-key.pem, cert-chain.pem, root-cert.pem).
Create it before installing to bring your own root or intermediate;
otherwise install generates a root once and never replaces it.

Then install waits, a line per object, until the control plane and the
DaemonSets are ready (--wait=false: do not wait).

--dry-run prints every manifest as YAML instead (CRDs included, the
generated CA secret not) and contacts no cluster.

Images come from "make images" (static binaries on an empty base,
imported on each node with "ctr -n k8s.io images import"):
<hub>/ambit:<tag> and <hub>/ambit-ztunnel:<tag>.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			objs, err := manifests.Render(vf.values())
			if err != nil {
				return err
			}
			var crds []manifests.Object
			if cf.install {
				if crds, err = cf.load(); err != nil {
					if errors.Is(err, manifests.ErrNoCRDs) {
						err = fmt.Errorf("%w (or --install-crds=false when the cluster has them)", err)
					}
					return err
				}
			}
			out := cmd.OutOrStdout()
			if dryRun {
				return printManifests(out, objs, crds)
			}
			rc, err := kf.config()
			if err != nil {
				return err
			}
			c, err := install.NewClient(rc, out)
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "installing Ambit %s into %s (%s)\n", version.Version, rc.Host, manifests.Namespace)
			err = c.Install(cmd.Context(), objs, install.InstallOptions{CRDs: crds, TrustDomain: vf.v.TrustDomain, Wait: wait, Timeout: timeout})
			if err != nil {
				return err
			}
			if wait {
				fmt.Fprintln(out, "Ambit is installed and ready. Enroll a namespace with: kubectl label namespace NAME istio.io/dataplane-mode=ambient")
			} else {
				fmt.Fprintln(out, "Ambit is applied (not waiting for the workloads to be ready).")
			}
			return nil
		},
	}
	f := cmd.Flags()
	kf.add(f)
	cf.add(f, "apply")
	vf.add(f)
	f.BoolVar(&cf.install, "install-crds", true, "apply the CRDs (false: the cluster already has them)")
	f.BoolVar(&dryRun, "dry-run", false, "print the manifests as YAML instead of applying them")
	f.BoolVar(&wait, "wait", true, "wait until the control plane and the DaemonSets are ready")
	f.DurationVar(&timeout, "timeout", 5*time.Minute, "how long each wait may take")
	return cmd
}

// printManifests writes the manifests for --dry-run: the namespace, the
// CRDs, then the rest, the order install applies them in.
func printManifests(w io.Writer, objs, crds []manifests.Object) error {
	fmt.Fprintf(w, "# Ambit %s: the objects `ambit install` applies, in its order.\n", version.Version)
	fmt.Fprintf(w, "# Not included: Secret %s/%s (the CA; install generates it when absent:\n", manifests.Namespace, install.CASecret)
	fmt.Fprintln(w, "# create it first, in Istio's plug-in CA layout, to apply these yourself).")
	var ns, rest []manifests.Object
	for _, o := range objs {
		if o.GetKind() == "Namespace" {
			ns = append(ns, o)
		} else {
			rest = append(rest, o)
		}
	}
	for _, part := range [][]manifests.Object{ns, crds, rest} {
		if err := manifests.WriteYAML(w, part); err != nil {
			return err
		}
	}
	return nil
}
