package local

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/ambit-mesh/ambit/controlplane/controller"
	"github.com/ambit-mesh/ambit/controlplane/filesource"
	"github.com/ambit-mesh/ambit/controlplane/model"
)

// DefaultStateDir is where the runtime keeps its state, logs and the CNI
// plugins' files.
const DefaultStateDir = "/run/ambit/local"

// State is what the supervisor keeps current in the state directory;
// `ambit local status` shows it (PrintStatus, text or JSON).
type State struct {
	Nodes    []NodeStatus    `json:"nodes"`
	Pods     []PodStatus     `json:"pods"`
	Services []ServiceStatus `json:"services"`
	// Ready is true once every pod of the first configuration has started.
	Ready bool `json:"ready"`
	// Error is set when the supervisor could not bring the mesh up.
	Error string `json:"error,omitempty"`
	// Supervisor is the PID of the supervisor process.
	Supervisor int `json:"supervisorPID"`
	// ConfigDir is the manifest directory the supervisor watches.
	ConfigDir string `json:"configDir"`
	// BinDir holds the ambit binary and the CNI plugins.
	BinDir string `json:"binDir"`
	// PolicyWarnings say how policies were accepted with changes or not
	// sent to ztunnel (e.g. HTTP rules without a waypoint).
	PolicyWarnings []string `json:"policyWarnings,omitempty"`
	// ConfigErrors are the problems of the files of ConfigDir the
	// supervisor currently rejects, sorted by file (a problem with the
	// directory itself comes first). A rejected file keeps
	// the objects it had before (if any) until it is fixed or removed; its
	// entries go once it is.
	ConfigErrors []ConfigError `json:"configErrors,omitempty"`
	// Waypoints, the use-waypoint labels that did not bind, and route
	// conditions, as the control plane reports them.
	Waypoints       []model.WaypointStatus   `json:"waypoints,omitempty"`
	BindingProblems []model.BindingProblem   `json:"bindingProblems,omitempty"`
	Routes          []controller.RouteStatus `json:"routes,omitempty"`
}

// ConfigError is one problem that makes the config source reject a file.
type ConfigError struct {
	// File is the rejected file, or the config directory when the
	// directory itself cannot be read.
	File string `json:"file"`
	// Line is the 1-based line of the problem, 0 when unknown.
	Line int `json:"line,omitempty"`
	// Message is the loader's full text, such as
	// "/cfg/demo.yaml:14: Pod demo/client: spec.foo: unknown field".
	Message string `json:"message"`
}

// configErrors turns the config source's problems (filesource.Source.Errors:
// the directory's own problem, then one error per failing file joining its
// *filesource.Error values) into ConfigErrors, one per problem, in order.
// A problem that is not a *filesource.Error is attributed to dir.
func configErrors(errs []error, dir string) []ConfigError {
	var out []ConfigError
	for _, err := range errs {
		fes := filesource.Errors(err)
		if len(fes) == 0 {
			out = append(out, ConfigError{File: dir, Message: err.Error()})
			continue
		}
		for _, fe := range fes {
			out = append(out, ConfigError{File: fe.File, Line: fe.Line, Message: fe.Error()})
		}
	}
	return out
}

// NodeStatus describes one node.
type NodeStatus struct {
	Name       string `json:"name"`
	Netns      string `json:"netns"`
	PodCIDR    string `json:"podCIDR"`
	UnderlayIP string `json:"underlayIP"`
}

// PodStatus describes one pod.
type PodStatus struct {
	Namespace      string   `json:"namespace"`
	Name           string   `json:"name"`
	UID            string   `json:"uid"`
	Node           string   `json:"node"`
	IP             string   `json:"ip"`
	Netns          string   `json:"netns"`
	Phase          string   `json:"phase"` // Pending, Running, Succeeded, Failed
	Message        string   `json:"message,omitempty"`
	ServiceAccount string   `json:"serviceAccount"`
	PID            int      `json:"pid,omitempty"`
	Restarts       int      `json:"restarts"`
	Log            string   `json:"log"`
	Env            []string `json:"env,omitempty"` // resolved container environment
	// Redirection is "enabled" once the pod is in the ambient mesh
	// ("pending" while no ztunnel has taken it), empty otherwise.
	Redirection string `json:"redirection,omitempty"`
}

// ServiceStatus describes one service.
type ServiceStatus struct {
	Namespace string        `json:"namespace"`
	Name      string        `json:"name"`
	ClusterIP string        `json:"clusterIP"`
	Ports     []ServicePort `json:"ports"`
}

// ServicePort is one port of a service.
type ServicePort struct {
	Name       string `json:"name,omitempty"`
	Port       int32  `json:"port"`
	TargetPort string `json:"targetPort"`
	Protocol   string `json:"protocol"`
}

// Paths names the files of a state directory.
type Paths struct{ Dir string }

func (p Paths) State() string         { return filepath.Join(p.Dir, "state.json") }
func (p Paths) PIDFile() string       { return filepath.Join(p.Dir, "supervisor.pid") }
func (p Paths) SupervisorLog() string { return filepath.Join(p.Dir, "supervisor.log") }
func (p Paths) PodLog(ns, name string) string {
	return filepath.Join(p.Dir, "pods", ns+"_"+name+".log")
}
func (p Paths) CNIDir() string { return filepath.Join(p.Dir, "cni") }

// ReadState reads the state the supervisor wrote.
func ReadState(dir string) (*State, error) {
	data, err := os.ReadFile(Paths{dir}.State())
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("no local mesh is running (no %s); start one with `ambit local up -f DIR`", Paths{dir}.State())
	}
	if err != nil {
		return nil, fmt.Errorf("reading local mesh state: %w", err)
	}
	var s State
	if err := json.Unmarshal(data, &s); err != nil {
		return nil, fmt.Errorf("reading local mesh state %s: %w", Paths{dir}.State(), err)
	}
	return &s, nil
}

// writeState replaces the state file atomically.
func writeState(dir string, s *State) error {
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	tmp := Paths{dir}.State() + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return fmt.Errorf("writing state: %w", err)
	}
	if err := os.Rename(tmp, Paths{dir}.State()); err != nil {
		return fmt.Errorf("writing state: %w", err)
	}
	return nil
}

// FindPod finds a pod by "namespace/name", or by "name" when exactly one
// namespace has a pod of that name.
func (s *State) FindPod(ref string) (*PodStatus, error) {
	ns, name, qualified := cutRef(ref)
	var found []*PodStatus
	for i := range s.Pods {
		p := &s.Pods[i]
		if p.Name == name && (!qualified || p.Namespace == ns) {
			found = append(found, p)
		}
	}
	switch len(found) {
	case 0:
		return nil, fmt.Errorf("no pod %q", ref)
	case 1:
		return found[0], nil
	}
	var names []string
	for _, p := range found {
		names = append(names, p.Namespace+"/"+p.Name)
	}
	return nil, fmt.Errorf("pod name %q is ambiguous: %v; say namespace/name", ref, names)
}

func cutRef(ref string) (ns, name string, qualified bool) {
	for i := 0; i < len(ref); i++ {
		if ref[i] == '/' {
			return ref[:i], ref[i+1:], true
		}
	}
	return "", ref, false
}
