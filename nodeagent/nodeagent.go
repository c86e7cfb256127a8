// Package nodeagent enrolls pods into the ambient mesh on one node: it
// programs the capture rules inside the pod's network namespace and hands
// the namespace to the node's ztunnel over ZDS; removal undoes both. The
// decision of which pods are enrolled is model.Enrolled; the agent is told
// about pods by its host (the local runtime, or a Kubernetes informer).
package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
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

// Agent enrolls pods of one node.
type Agent struct {
	Node     string
	ZDS      ZDS
	Redirect redirect.Config
	Logger   *slog.Logger
}

// Enroll captures the pod's traffic and gives it to ztunnel. It returns the
// redirection state: Enabled, or Pending when no ztunnel is connected (the
// pod goes to the next ztunnel that connects).
func (a *Agent) Enroll(ctx context.Context, p Pod) (string, error) {
	if err := redirect.Install(ctx, p.Netns, redirect.ConfigForPod(p.Annotations, a.Redirect)); err != nil {
		return "", fmt.Errorf("enrolling %s/%s: %w", p.Namespace, p.Name, err)
	}
	f, err := os.Open(p.Netns)
	if err != nil {
		return "", fmt.Errorf("enrolling %s/%s: %w", p.Namespace, p.Name, err)
	}
	defer f.Close()
	sa := p.ServiceAccount
	if sa == "" {
		sa = "default"
	}
	err = a.ZDS.AddWorkload(ctx, p.UID, &zdsapi.WorkloadInfo{Name: p.Name, Namespace: p.Namespace, ServiceAccount: sa}, f)
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

// Unenroll gives the pod back its direct network: ztunnel drops its proxy
// and the rules go.
func (a *Agent) Unenroll(ctx context.Context, p Pod) error {
	zerr := a.ZDS.DelWorkload(ctx, p.UID)
	rerr := redirect.Remove(ctx, p.Netns)
	if err := errors.Join(zerr, rerr); err != nil {
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
