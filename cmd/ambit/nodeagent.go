package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/ambit-mesh/ambit/nodeagent/kubeagent"
	"github.com/ambit-mesh/ambit/zds"
)

func newNodeAgentCmd() *cobra.Command {
	var (
		o          kubeagent.Options
		kubeconfig string
		excludeNs  string
		kubeletUID int64
		uninstall  bool
	)
	cmd := &cobra.Command{
		Use:   "node-agent",
		Short: "Run the node agent on Kubernetes (a DaemonSet): CNI plugin install, pod enrollment, ZDS to ztunnel, kubelet probe SNAT",
		Long: `Run the node agent of one Kubernetes node, as a DaemonSet pod with
hostNetwork and hostPID, privileged (or NET_ADMIN, SYS_ADMIN, SYS_PTRACE).

It copies --cni-plugin-src into --cni-bin-dir as ambit-cni, and keeps the
plugin chained last in the node's primary CNI configuration (the
lowest-sorted *.conf or *.conflist of --cni-conf-dir; a .conf becomes a
.conflist), putting it back when the file is rewritten. It watches the
node's pods and all namespaces, and enrolls pods live (namespace or pod
label istio.io/dataplane-mode=ambient; pod label =none, sidecar-injected
pods, hostNetwork pods, kube-system and ztunnel's pods never): capture
rules in the pod's network namespace, the namespace handed to ztunnel over
ZDS (--zds-socket, where ztunnel connects), the kubelet's probes SNATed to
169.254.7.127 on the host, and the pod annotated
ambient.istio.io/redirection: enabled. Removing the label undoes it all.

New pods are reported by the CNI plugin over --cni-event-socket before
they start; a pod that should be enrolled but cannot be (agent not
reachable, no ztunnel connected within 5 s, an error) does not start, and
the runtime retries it. After a restart the agent finds running pods' network
namespaces by their IPs under --host-proc, and reconciles every pod before
it reports ready (--ready-addr /readyz).

On SIGTERM the agent leaves the plugin, the rules and the probe SNAT in
place (an upgrade, a restart, a node shutdown: pods stay captured and new
ones wait for the agent), unless its own DaemonSet ($POD_NAME and
$POD_NAMESPACE name its pod) is gone or being deleted: then it takes the
node out of the mesh: the plugin entry and the binary, the capture rules
in every pod's network namespace (pods get their direct network back, no
restart) and their redirection annotation, then the probe SNAT table.
--uninstall does that at once, without the API server, and exits.

RBAC: pods get/list/watch/patch (its node's), namespaces get/list/watch,
daemonsets get (its own namespace).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log := slog.New(slog.NewTextHandler(os.Stderr, nil))
			o.Logger = log
			if excludeNs != "" {
				o.ExcludeNamespaces = strings.Split(excludeNs, ",")
			} else {
				o.ExcludeNamespaces = []string{}
			}
			if kubeletUID >= 0 {
				u := uint32(kubeletUID)
				o.KubeletUID = &u
			}
			if uninstall {
				return kubeagent.Uninstall(cmd.Context(), o)
			}
			var rc *rest.Config
			var err error
			if kubeconfig != "" {
				if rc, err = clientcmd.BuildConfigFromFlags("", kubeconfig); err != nil {
					return fmt.Errorf("--kubeconfig %s: %w", kubeconfig, err)
				}
			} else if rc, err = rest.InClusterConfig(); err != nil {
				return errors.New("--kubeconfig PATH is required outside a pod (the in-cluster configuration works only in a pod)")
			}
			klog.SetSlogLogger(log.With("component", "client-go"))
			if o.Client, err = kubernetes.NewForConfig(rc); err != nil {
				return err
			}
			a, err := kubeagent.New(o)
			if err != nil {
				return err
			}
			return a.Run(cmd.Context())
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.NodeName, "node-name", os.Getenv("NODE_NAME"), "this node's name (default $NODE_NAME)")
	f.StringVar(&o.CNIConfDir, "cni-conf-dir", kubeagent.DefaultCNIConfDir, "the node's CNI configuration directory")
	f.StringVar(&o.CNIOwnFile, "cni-own-config", kubeagent.DefaultCNIOwnFile, "the agent's own conflist in --cni-conf-dir (the primary network's copied, our plugin last; it survives a network plugin rewriting its file at boot); empty: chain into the primary file")
	f.StringVar(&o.CNIBinDir, "cni-bin-dir", kubeagent.DefaultCNIBinDir, "the node's CNI plugin directory")
	f.StringVar(&o.CNIPluginSrc, "cni-plugin-src", kubeagent.DefaultCNIPluginSrc, "the ambit-cni binary to copy (atomically) into --cni-bin-dir")
	f.StringVar(&o.ZDSSocket, "zds-socket", zds.DefaultSocketPath, "the ZDS socket ztunnel connects to")
	f.StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig of the API server (empty: the in-cluster configuration)")
	f.StringVar(&o.CNIEventSocket, "cni-event-socket", kubeagent.DefaultCNIEventSocket, "where the CNI plugin reaches the agent (the same path on the host)")
	f.StringVar(&o.HostProc, "host-proc", kubeagent.DefaultHostProc, "the host's /proc (hostPID), scanned for pods' network namespaces")
	f.StringVar(&excludeNs, "exclude-namespaces", strings.Join(kubeagent.DefaultExcludeNamespaces, ","), "comma-separated namespaces never enrolled")
	f.StringVar(&o.SystemNamespace, "system-namespace", kubeagent.DefaultSystemNs, "ztunnel's namespace (its app=ztunnel pods are never enrolled)")
	f.Int64Var(&kubeletUID, "kubelet-uid", -1, "uid of the kubelet, whose sockets' probes are SNATed (-1: found under --host-proc, else any local socket)")
	f.StringVar(&o.ReadyAddr, "ready-addr", ":8000", "address serving /readyz and /healthz (empty: none)")
	f.StringVar(&o.PodName, "pod-name", os.Getenv("POD_NAME"), "the agent's pod (default $POD_NAME), to tell a DaemonSet deletion on exit")
	f.StringVar(&o.PodNamespace, "pod-namespace", os.Getenv("POD_NAMESPACE"), "the agent's namespace (default $POD_NAMESPACE)")
	f.BoolVar(&uninstall, "uninstall", false, "take this node out of the mesh (plugin entry and binary, pods' capture rules, probe SNAT table) and exit")
	return cmd
}
