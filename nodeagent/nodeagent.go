// Package nodeagent enrolls pods into the ambient mesh on one node: it
// programs the capture rules inside the pod's network namespace, hands the
// namespace to the node's ztunnel over ZDS and (on Kubernetes) lets the
// kubelet's probes of the pod through the capture (HostProbes); removal
// undoes all three. The decision of which pods are enrolled is
// model.Enrolled; the agent is told about pods by its host (the local
// runtime, or the Kubernetes node agent in nodeagent/kubeagent). It also
// finds a running pod's network namespace from its IP (ScanNetns), for an
// agent that restarted and lost what the CNI plugin told it.
//
// The package stays free of Kubernetes libraries: local mode links it.
package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"

	"istio.io/istio/pkg/zdsapi"

	"github.com/ambit-mesh/ambit/redirect"
	"github.com/ambit-mesh/ambit/zds"
)

// Pod is what the agent needs to know about a pod.
type Pod struct {
	UID, Namespace, Name, ServiceAccount string
	Netns                                string // path of its network namespace
	Annotations                          map[string]string
	// IPs are the pod's addresses: with an IPv6 one the capture covers
	// IPv6 too, and they go into the host's probe SNAT set (Agent.Probes).
	IPs []netip.Addr
}

// Redirection states, as the pod annotation ambient.istio.io/redirection.
const (
	Enabled = "enabled" // rules in place and ztunnel took the pod
	Pending = "pending" // rules in place, no ztunnel yet: traffic waits for one
)

// ZDS is the part of the ZDS server the agent uses.
type ZDS interface {
	AddWorkload(ctx context.Context, uid string, info *zdsapi.WorkloadInfo, netns *os.File) error
	DelWorkload(ctx context.Context, uid string) error
}

// Probes is the part of HostProbes the agent uses: the addresses whose
// kubelet probes the node SNATs to the probe address that the in-pod rules
// let through.
type Probes interface {
	AddPodIPs(ctx context.Context, ips []netip.Addr) error
	RemovePodIPs(ctx context.Context, ips []netip.Addr) error
}

// Agent enrolls pods of one node.
type Agent struct {
	Node     string
	ZDS      ZDS
	Redirect redirect.Config
	// Probes, if set, gets the IPs of every enrolled pod (Kubernetes:
	// kubelet probes come from the node). Local mode has no kubelet.
	Probes Probes
	Logger *slog.Logger
}

// Enroll captures the pod's traffic and gives it to ztunnel. It returns the
// redirection state: Enabled, or Pending when no ztunnel is connected (the
// pod goes to the next ztunnel that connects).
func (a *Agent) Enroll(ctx context.Context, p Pod) (string, error) {
	cfg := redirect.ConfigForPod(p.Annotations, a.Redirect)
	for _, ip := range p.IPs {
		if ip.Unmap().Is6() {
			cfg.IPv6 = true
		}
	}
	// The probe exemption first: from the moment the rules are in, the
	// kubelet's probes must arrive from the probe address.
	if a.Probes != nil && len(p.IPs) > 0 {
		if err := a.Probes.AddPodIPs(ctx, p.IPs); err != nil {
			return "", fmt.Errorf("enrolling %s/%s: %w", p.Namespace, p.Name, err)
		}
	}
	if err := redirect.Install(ctx, p.Netns, cfg); err != nil {
		return "", fmt.Errorf("enrolling %s/%s: %w", p.Namespace, p.Name, err)
	}
	f, err := os.Open(p.Netns)
	if err != nil {
		return "", fmt.Errorf("enrolling %s/%s: %w", p.Namespace, p.Name, err)
	}
	defer f.Close()
	err = a.ZDS.AddWorkload(ctx, p.UID, workloadInfo(p), f)
	switch {
	case errors.Is(err, zds.ErrNoZtunnel):
		a.logger().Warn("pod enrolled, waiting for ztunnel", "pod", p.Namespace+"/"+p.Name)
		return Pending, nil
	case err != nil:
		return "", fmt.Errorf("enrolling %s/%s: ztunnel: %w", p.Namespace, p.Name, err)
	}
	a.logger().Info("pod enrolled", "pod", p.Namespace+"/"+p.Name, "uid", p.UID)
	return Enabled, nil
}

// Keep records a pod that was enrolled before (by an earlier run of the
// agent) but whose network namespace cannot be found now: ztunnel keeps
// its proxy (ZDS KeepWorkload in the next snapshot) instead of dropping it.
func (a *Agent) Keep(ctx context.Context, p Pod) error {
	if err := a.ZDS.AddWorkload(ctx, p.UID, workloadInfo(p), nil); err != nil {
		return fmt.Errorf("keeping %s/%s: %w", p.Namespace, p.Name, err)
	}
	return nil
}

func workloadInfo(p Pod) *zdsapi.WorkloadInfo {
	sa := p.ServiceAccount
	if sa == "" {
		sa = "default"
	}
	return &zdsapi.WorkloadInfo{Name: p.Name, Namespace: p.Namespace, ServiceAccount: sa}
}

// Unenroll gives the pod back its direct network: ztunnel drops its proxy
// and the rules go. With p.Netns empty (the pod is gone, or its namespace
// was never found) only ztunnel and the probe set are told.
func (a *Agent) Unenroll(ctx context.Context, p Pod) error {
	zerr := a.ZDS.DelWorkload(ctx, p.UID)
	var rerr, perr error
	if p.Netns != "" {
		rerr = redirect.Remove(ctx, p.Netns)
	}
	if a.Probes != nil && len(p.IPs) > 0 {
		perr = a.Probes.RemovePodIPs(ctx, p.IPs)
	}
	if err := errors.Join(zerr, rerr, perr); err != nil {
		return fmt.Errorf("unenrolling %s/%s: %w", p.Namespace, p.Name, err)
	}
	a.logger().Info("pod unenrolled", "pod", p.Namespace+"/"+p.Name)
	return nil
}

func (a *Agent) logger() *slog.Logger {
	if a.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return a.Logger.With("node", a.Node)
}
