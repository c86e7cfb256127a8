package local

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
)

// cniNetworkName names the pod network in the CNI configuration.
const cniNetworkName = "ambit-pods"

// cni attaches pods to their node's bridge through the CNI protocol.
type cni struct {
	self   string // the ambit binary, used to enter a node's namespace
	binDir string // where bridge, host-local and ambit-cni are
	dir    string // CNI state: IPAM data, libcni cache, ambit-cni records
	stderr io.Writer
	// agentSocket returns the node agent's CNI event socket of a node
	// ("" when no mesh runs).
	agentSocket func(node string) string
}

// confList is the node's CNI configuration: bridge with host-local IPAM,
// then ambit-cni chained last.
func (c *cni) confList(node NodeStatus) (*libcni.NetworkConfigList, error) {
	conf := map[string]any{
		"cniVersion": "1.0.0",
		"name":       cniNetworkName,
		"plugins": []any{
			map[string]any{
				"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
				"ipam": map[string]any{
					"type":    "host-local",
					"ranges":  [][]map[string]string{{{"subnet": node.PodCIDR}}},
					"routes":  []map[string]string{{"dst": "0.0.0.0/0"}},
					"dataDir": filepath.Join(c.dir, "ipam", node.Name),
				},
			},
			c.ambitPlugin(node),
		},
	}
	data, err := json.Marshal(conf)
	if err != nil {
		return nil, err
	}
	return libcni.ConfListFromBytes(data)
}

func (c *cni) runtimeConf(pod *PodStatus) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{
		ContainerID: pod.UID,
		NetNS:       pod.Netns,
		IfName:      "eth0",
		Args: [][2]string{
			{"IgnoreUnknown", "1"},
			{"K8S_POD_NAMESPACE", pod.Namespace},
			{"K8S_POD_NAME", pod.Name},
			{"K8S_POD_INFRA_CONTAINER_ID", pod.UID},
			{"K8S_POD_UID", pod.UID},
		},
	}
}

func (c *cni) config(node NodeStatus) *libcni.CNIConfig {
	return libcni.NewCNIConfigWithCacheDir([]string{c.binDir}, filepath.Join(c.dir, "cache"),
		&nodeExec{self: c.self, netns: node.Netns, stderr: c.stderr})
}

// add runs CNI ADD for the pod and returns its IPv4 address.
func (c *cni) add(ctx context.Context, node NodeStatus, pod *PodStatus) (string, error) {
	list, err := c.confList(node)
	if err != nil {
		return "", err
	}
	res, err := c.config(node).AddNetworkList(ctx, list, c.runtimeConf(pod))
	if err != nil {
		return "", fmt.Errorf("CNI ADD for pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	r, err := current.NewResultFromResult(res)
	if err != nil {
		return "", fmt.Errorf("CNI ADD for pod %s/%s: reading result: %w", pod.Namespace, pod.Name, err)
	}
	for _, ip := range r.IPs {
		if ip.Address.IP.To4() != nil {
			return ip.Address.IP.String(), nil
		}
	}
	return "", fmt.Errorf("CNI ADD for pod %s/%s: no IPv4 address in result", pod.Namespace, pod.Name)
}

// del runs CNI DEL for the pod.
func (c *cni) del(ctx context.Context, node NodeStatus, pod *PodStatus) error {
	list, err := c.confList(node)
	if err != nil {
		return err
	}
	if err := c.config(node).DelNetworkList(ctx, list, c.runtimeConf(pod)); err != nil {
		return fmt.Errorf("CNI DEL for pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	return nil
}

// nodeExec runs CNI plugins inside a node's network namespace, as a
// container runtime on that node would (the bridge plugin creates its bridge
// in the namespace it runs in).
type nodeExec struct {
	version.PluginDecoder
	self   string
	netns  string
	stderr io.Writer
}

func (e *nodeExec) ExecPlugin(ctx context.Context, pluginPath string, stdin []byte, environ []string) ([]byte, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, e.self, "local", "nsexec", e.netns, "--", pluginPath)
	cmd.Env, cmd.Stdin, cmd.Stdout, cmd.Stderr = environ, bytes.NewReader(stdin), &stdout, &stderr
	if err := cmd.Run(); err != nil {
		perr := &types.Error{}
		if stdout.Len() == 0 || json.Unmarshal(stdout.Bytes(), perr) != nil || perr.Msg == "" {
			perr = &types.Error{Msg: fmt.Sprintf("plugin %s failed: %v: %s%s", filepath.Base(pluginPath), err, stdout.String(), stderr.String())}
		}
		return nil, perr
	}
	if e.stderr != nil && stderr.Len() > 0 {
		_, _ = e.stderr.Write(stderr.Bytes())
	}
	return stdout.Bytes(), nil
}

func (e *nodeExec) FindInPath(plugin string, paths []string) (string, error) {
	return invoke.FindInPath(plugin, paths)
}

func (c *cni) ambitPlugin(node NodeStatus) map[string]any {
	conf := map[string]any{"type": "ambit-cni", "stateDir": filepath.Join(c.dir, "pods")}
	if c.agentSocket != nil {
		if sock := c.agentSocket(node.Name); sock != "" {
			conf["agentSocket"] = sock
		}
	}
	return conf
}
