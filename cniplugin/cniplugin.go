// Package cniplugin is the logic of the ambit-cni chained CNI plugin. On
// ADD it tells the node agent about the pod (namespace, name, UID, network
// namespace and the IPs the previous plugin assigned) over the agent's
// event socket and waits for its verdict, and passes the previous result
// through unchanged; with a state directory it also records the pod there
// (DEL forgets it, CHECK verifies the record).
//
// Fail closed: with agentSocket set (local mode, and Kubernetes, where
// `ambit node-agent` writes this entry into the node's CNI config), ADD
// fails when the agent cannot be reached or refuses the pod (it belongs
// in the mesh and could not be enrolled). The runtime then does not start
// the pod and retries its sandbox later, so no pod of an ambient
// namespace ever runs uncaptured, also right after a node reboot, before
// the agent is back. Pods of excludeNamespaces (kube-system by default on
// Kubernetes) are passed through without asking, so that the node's
// system pods never wait for the agent.
package cniplugin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/ambit-mesh/ambit/nodeagent/cnievent"
)

// Config is the plugin's network configuration.
type Config struct {
	types.NetConf
	// StateDir, if set, is where pod records are written.
	StateDir string `json:"stateDir,omitempty"`
	// AgentSocket, if set, is the node agent's event socket: ADD waits for
	// the agent to enroll the pod, and fails (so the pod does not start
	// unprotected) when the agent refuses or is not there.
	AgentSocket string `json:"agentSocket,omitempty"`
	// ExcludeNamespaces are namespaces whose pods pass through without
	// the agent being asked (they are never enrolled).
	ExcludeNamespaces []string `json:"excludeNamespaces,omitempty"`
}

// Record is what the plugin writes for each pod.
type Record struct {
	ContainerID string   `json:"containerID"`
	Namespace   string   `json:"namespace"`
	Name        string   `json:"name"`
	UID         string   `json:"uid"`
	Netns       string   `json:"netns"`
	IfName      string   `json:"ifName"`
	IPs         []string `json:"ips"`
}

var containerIDRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.\-]*$`)

func parseConfig(stdin []byte) (*Config, error) {
	conf := &Config{}
	if err := json.Unmarshal(stdin, conf); err != nil {
		return nil, fmt.Errorf("ambit-cni: parsing network configuration: %w", err)
	}
	if conf.StateDir == "" && conf.AgentSocket == "" {
		return nil, errors.New("ambit-cni: network configuration lacks both stateDir and agentSocket")
	}
	if conf.RawPrevResult != nil {
		if err := version.ParsePrevResult(&conf.NetConf); err != nil {
			return nil, fmt.Errorf("ambit-cni: parsing prevResult: %w", err)
		}
	}
	return conf, nil
}

// podArgs reads the Kubernetes keys of CNI_ARGS.
func podArgs(args string) (ns, name, uid string) {
	for _, kv := range strings.Split(args, ";") {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "K8S_POD_NAMESPACE":
			ns = v
		case "K8S_POD_NAME":
			name = v
		case "K8S_POD_UID":
			uid = v
		}
	}
	return ns, name, uid
}

func recordPath(conf *Config, containerID string) (string, error) {
	if !containerIDRE.MatchString(containerID) || len(containerID) > 256 {
		return "", fmt.Errorf("ambit-cni: invalid container ID %q", containerID)
	}
	return filepath.Join(conf.StateDir, containerID+".json"), nil
}

// Add tells the node agent about the pod and waits for its verdict (with
// agentSocket), records it (with stateDir), and returns the previous
// result unchanged.
func Add(args *skel.CmdArgs) error {
	conf, err := parseConfig(args.StdinData)
	if err != nil {
		return err
	}
	if conf.PrevResult == nil {
		return errors.New("ambit-cni: must be chained after a plugin that assigns addresses (no prevResult)")
	}
	prev, err := current.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return fmt.Errorf("ambit-cni: reading prevResult: %w", err)
	}
	ns, name, uid := podArgs(args.Args)
	if ns == "" || name == "" {
		return errors.New("ambit-cni: CNI_ARGS lacks K8S_POD_NAMESPACE or K8S_POD_NAME")
	}
	rec := Record{ContainerID: args.ContainerID, Namespace: ns, Name: name, UID: uid, Netns: args.Netns, IfName: args.IfName}
	for _, ip := range prev.IPs {
		rec.IPs = append(rec.IPs, ip.Address.IP.String())
	}
	if slices.Contains(conf.ExcludeNamespaces, ns) {
		return types.PrintResult(prev, conf.CNIVersion)
	}
	path := ""
	if conf.StateDir != "" {
		if path, err = writeRecord(conf, rec); err != nil {
			return err
		}
	}
	if conf.AgentSocket != "" {
		if args.Netns == "" {
			return fmt.Errorf("ambit-cni: pod %s/%s: no network namespace (CNI_NETNS)", ns, name)
		}
		ev := cnievent.CNIEvent{Namespace: ns, Name: name, UID: uid, Netns: args.Netns, IPs: rec.IPs}
		if err := cnievent.Notify(context.Background(), conf.AgentSocket, ev); err != nil {
			if path != "" {
				_ = os.Remove(path)
			}
			return fmt.Errorf("ambit-cni: pod %s/%s: %w", ns, name, err)
		}
	}
	return types.PrintResult(prev, conf.CNIVersion)
}

func writeRecord(conf *Config, rec Record) (string, error) {
	path, err := recordPath(conf, rec.ContainerID)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(conf.StateDir, 0o755); err != nil {
		return "", fmt.Errorf("ambit-cni: %w", err)
	}
	data, _ := json.Marshal(rec)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return "", fmt.Errorf("ambit-cni: writing pod record: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return "", fmt.Errorf("ambit-cni: writing pod record: %w", err)
	}
	return path, nil
}

// Del forgets the pod. A pod never recorded is fine (DEL must be
// idempotent). Without a state directory there is nothing to forget: the
// node agent learns of deleted pods from the API server.
func Del(args *skel.CmdArgs) error {
	conf, err := parseConfig(args.StdinData)
	if err != nil {
		return err
	}
	if conf.StateDir == "" {
		return nil
	}
	path, err := recordPath(conf, args.ContainerID)
	if err != nil {
		return err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("ambit-cni: %w", err)
	}
	return nil
}

// Check verifies the pod is recorded (with a state directory).
func Check(args *skel.CmdArgs) error {
	conf, err := parseConfig(args.StdinData)
	if err != nil {
		return err
	}
	if conf.StateDir == "" {
		return nil
	}
	path, err := recordPath(conf, args.ContainerID)
	if err != nil {
		return err
	}
	if _, err := ReadRecord(path); err != nil {
		return err
	}
	return nil
}

// ReadRecord reads one pod record.
func ReadRecord(path string) (*Record, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("ambit-cni: pod record: %w", err)
	}
	rec := &Record{}
	if err := json.Unmarshal(data, rec); err != nil {
		return nil, fmt.Errorf("ambit-cni: pod record %s: %w", path, err)
	}
	return rec, nil
}
