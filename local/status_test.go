package local

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/ambit-mesh/ambit/controlplane/filesource"
)

func TestConfigErrors(t *testing.T) {
	// What the loader really says about a file with an unknown field.
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: demo}\nspec:\n  containers:\n  - name: c\n    command: [x]\n    bogus: 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, loadErr := filesource.LoadDir(dir)
	if loadErr == nil {
		t.Fatal("LoadDir accepted a file with an unknown field")
	}

	e1 := &filesource.Error{File: "/cfg/a.yaml", Line: 3, Kind: "Pod", Namespace: "demo", Name: "x", Field: "spec.bogus", Msg: "unknown field"}
	e2 := &filesource.Error{File: "/cfg/a.yaml", Line: 9, Msg: "invalid YAML: did not find expected key"}
	e3 := &filesource.Error{File: "/cfg/b.yaml", Msg: "cannot read: permission denied"}
	tests := []struct {
		name string
		errs []error
		want []ConfigError
	}{
		{"no problems", nil, nil},
		{"one problem", []error{e1}, []ConfigError{
			{File: "/cfg/a.yaml", Line: 3, Message: "/cfg/a.yaml:3: Pod demo/x: spec.bogus: unknown field"},
		}},
		{"a file with two problems, another without a line", []error{errors.Join(e1, e2), e3}, []ConfigError{
			{File: "/cfg/a.yaml", Line: 3, Message: "/cfg/a.yaml:3: Pod demo/x: spec.bogus: unknown field"},
			{File: "/cfg/a.yaml", Line: 9, Message: "/cfg/a.yaml:9: invalid YAML: did not find expected key"},
			{File: "/cfg/b.yaml", Message: "/cfg/b.yaml: cannot read: permission denied"},
		}},
		{"a wrapped problem", []error{fmt.Errorf("loading: %w", e3)}, []ConfigError{
			{File: "/cfg/b.yaml", Message: "/cfg/b.yaml: cannot read: permission denied"},
		}},
		{"the directory itself, then a file", []error{errors.New("reading config directory: open /cfg: permission denied"), e3}, []ConfigError{
			{File: "/cfg", Message: "reading config directory: open /cfg: permission denied"},
			{File: "/cfg/b.yaml", Message: "/cfg/b.yaml: cannot read: permission denied"},
		}},
		{"the loader's own error", []error{loadErr}, []ConfigError{
			{File: bad, Line: 8, Message: bad + ":8: Pod demo/p: spec.containers[0].bogus: unknown field"},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := configErrors(tc.errs, "/cfg")
			if len(got) != len(tc.want) {
				t.Fatalf("configErrors = %+v, want %+v", got, tc.want)
			}
			for i := range got {
				// The loader's wording after the field path is its own.
				if got[i].File != tc.want[i].File || got[i].Line != tc.want[i].Line || !strings.HasPrefix(got[i].Message, tc.want[i].Message) {
					t.Errorf("configErrors[%d] = %+v, want %+v", i, got[i], tc.want[i])
				}
			}
		})
	}
}

// TestSetConfigErrors: the state file carries the current problems, and
// they go once the source has none.
func TestSetConfigErrors(t *testing.T) {
	s := &Supervisor{StateDir: t.TempDir(), Logger: slog.New(slog.DiscardHandler)}
	errs := []ConfigError{{File: "/cfg/a.yaml", Line: 3, Message: "/cfg/a.yaml:3: Pod demo/x: spec.bogus: unknown field"}}
	s.setConfigErrors(errs)
	st, err := ReadState(s.StateDir)
	if err != nil || !slices.Equal(st.ConfigErrors, errs) {
		t.Fatalf("state after a rejection: %+v, %v; want config errors %+v", st, err, errs)
	}
	s.setConfigErrors(nil)
	data, err := os.ReadFile(Paths{s.StateDir}.State())
	if err != nil || bytes.Contains(data, []byte("a.yaml")) {
		t.Fatalf("state after the fix still has the error (%v):\n%s", err, data)
	}
}

func TestPrintStatus(t *testing.T) {
	base := func() *State {
		return &State{
			Ready: true, Supervisor: 42, ConfigDir: "/cfg",
			Nodes: []NodeStatus{{Name: "node1", Netns: "/run/netns/ambit-node1", PodCIDR: "10.244.1.0/24", UnderlayIP: "172.30.0.11"}},
			Pods: []PodStatus{
				{Namespace: "demo", Name: "client", Node: "node1", IP: "10.244.1.2", Phase: "Running", ServiceAccount: "sleep",
					Restarts: 2, Message: "exited with code 1; restarting in 2s", Redirection: "enabled", Env: []string{"SECRET=1"}},
				{Namespace: "demo", Name: "echo", Node: "node1", Phase: "Pending", ServiceAccount: "default", Redirection: "pending"},
				{Namespace: "plain", Name: "web", Node: "node1", IP: "10.244.1.4", Phase: "Running", ServiceAccount: "default"},
			},
			Services: []ServiceStatus{{Namespace: "demo", Name: "echo", ClusterIP: "10.96.0.10", Ports: []ServicePort{{Port: 8080, TargetPort: "8080", Protocol: "TCP"}}}},
		}
	}
	badA := ConfigError{File: "/cfg/a.yaml", Line: 3, Message: "/cfg/a.yaml:3: Pod demo/x: spec.bogus: unknown field"}
	badA2 := ConfigError{File: "/cfg/a.yaml", Line: 9, Message: "/cfg/a.yaml:9: invalid YAML: did not find expected key"}
	badB := ConfigError{File: "/cfg/b.yaml", Line: 1, Message: "/cfg/b.yaml:1: unknown kind Foo"}
	warning := "AuthorizationPolicy demo/p: rule 0: HTTP fields need a waypoint; the rule is dropped"

	tests := []struct {
		name     string
		edit     func(*State)
		text     []string // in the text view, in this order
		notText  []string
		wantJSON func(t *testing.T, v map[string]any)
	}{
		{
			name: "a clean mesh",
			text: []string{
				"LOCAL MESH: ready; supervisor pid 42; config /cfg\n",
				"node1", "10.244.1.0/24", "172.30.0.11",
				"SERVICE ACCOUNT", "MESH", "RESTARTS", "MESSAGE",
				"client", "10.244.1.2", "sleep", "Running", "ambient (HBONE)", "2", "exited with code 1; restarting in 2s",
				"echo", "-", "default", "Pending", "ambient (waiting for ztunnel)",
				"web",
				"echo", "10.96.0.10", "8080->8080/TCP",
			},
			notText: []string{"CONFIG ERRORS", "rejected", "POLICY WARNINGS", "SECRET"},
			wantJSON: func(t *testing.T, v map[string]any) {
				for _, k := range []string{"policyWarnings", "configErrors"} {
					if l, ok := v[k].([]any); !ok || len(l) != 0 {
						t.Errorf("%s = %#v, want []", k, v[k])
					}
				}
			},
		},
		{
			name: "rejected files",
			edit: func(st *State) { st.ConfigErrors = []ConfigError{badA, badA2, badB} },
			text: []string{
				"LOCAL MESH: ready; supervisor pid 42; config /cfg; 2 files rejected (see CONFIG ERRORS below)\n",
				"\nCONFIG ERRORS (these files are rejected: nothing new is applied from them, and what they defined before, if anything, stays in force until they are fixed or removed)\n",
				"  /cfg/a.yaml\n",
				"    " + badA.Message + "\n",
				"    " + badA2.Message + "\n",
				"  /cfg/b.yaml\n",
				"    " + badB.Message + "\n",
			},
			wantJSON: func(t *testing.T, v map[string]any) {
				l, _ := v["configErrors"].([]any)
				if len(l) != 3 {
					t.Fatalf("configErrors = %#v, want 3", v["configErrors"])
				}
				first, _ := l[0].(map[string]any)
				if first["file"] != "/cfg/a.yaml" || first["line"] != 3.0 || first["message"] != badA.Message {
					t.Errorf("configErrors[0] = %#v, want %+v", first, badA)
				}
			},
		},
		{
			name: "one rejected file and policy warnings",
			edit: func(st *State) { st.ConfigErrors, st.PolicyWarnings = []ConfigError{badB}, []string{warning} },
			text: []string{
				"; 1 file rejected (see CONFIG ERRORS below)\n",
				"\nPOLICY WARNINGS\n  " + warning + "\n",
				"\nCONFIG ERRORS", "  /cfg/b.yaml\n    " + badB.Message + "\n",
			},
			wantJSON: func(t *testing.T, v map[string]any) {
				if w, _ := v["policyWarnings"].([]any); len(w) != 1 || w[0] != warning {
					t.Errorf("policyWarnings = %#v", v["policyWarnings"])
				}
				if l, _ := v["configErrors"].([]any); len(l) != 1 {
					t.Errorf("configErrors = %#v, want 1", v["configErrors"])
				}
			},
		},
		{
			name: "starting",
			edit: func(st *State) { st.Ready = false },
			text: []string{"LOCAL MESH: starting; supervisor pid 42"},
			wantJSON: func(t *testing.T, v map[string]any) {
				if v["ready"] != false {
					t.Errorf("ready = %#v", v["ready"])
				}
			},
		},
		{
			name: "failed",
			edit: func(st *State) { st.Ready, st.Error = false, "mesh: no ztunnel" },
			text: []string{"LOCAL MESH: FAILED: mesh: no ztunnel; supervisor pid 42"},
			wantJSON: func(t *testing.T, v map[string]any) {
				if v["error"] != "mesh: no ztunnel" {
					t.Errorf("error = %#v", v["error"])
				}
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st := base()
			if tc.edit != nil {
				tc.edit(st)
			}
			var text bytes.Buffer
			if err := PrintStatus(&text, st, false); err != nil {
				t.Fatal(err)
			}
			rest := text.String()
			for _, want := range tc.text {
				i := strings.Index(rest, want)
				if i < 0 {
					t.Fatalf("text view lacks %q (in order) in:\n%s", want, text.String())
				}
				rest = rest[i+len(want):]
			}
			for _, bad := range tc.notText {
				if strings.Contains(text.String(), bad) {
					t.Errorf("text view has %q:\n%s", bad, text.String())
				}
			}

			var js bytes.Buffer
			if err := PrintStatus(&js, st, true); err != nil {
				t.Fatal(err)
			}
			var v map[string]any
			if err := json.Unmarshal(js.Bytes(), &v); err != nil {
				t.Fatalf("-o json is not JSON: %v\n%s", err, js.String())
			}
			checkJSONCarriesText(t, v, st)
			if strings.Contains(js.String(), "SECRET") {
				t.Errorf("-o json has the pods' environment:\n%s", js.String())
			}
			tc.wantJSON(t, v)
		})
	}
}

// checkJSONCarriesText checks that the JSON view has every field the text
// view shows, with the state's values.
func checkJSONCarriesText(t *testing.T, v map[string]any, st *State) {
	t.Helper()
	if v["supervisorPID"] != float64(st.Supervisor) || v["configDir"] != st.ConfigDir || v["ready"] != st.Ready {
		t.Errorf("json header = pid %v, configDir %v, ready %v; want %d, %s, %v", v["supervisorPID"], v["configDir"], v["ready"], st.Supervisor, st.ConfigDir, st.Ready)
	}
	nodes, _ := v["nodes"].([]any)
	if len(nodes) != len(st.Nodes) {
		t.Fatalf("json nodes = %#v", v["nodes"])
	}
	for i, n := range st.Nodes {
		got, _ := nodes[i].(map[string]any)
		want := map[string]any{"name": n.Name, "netns": n.Netns, "podCIDR": n.PodCIDR, "underlayIP": n.UnderlayIP}
		for k, w := range want {
			if got[k] != w {
				t.Errorf("json node %s: %s = %#v, want %#v", n.Name, k, got[k], w)
			}
		}
	}
	pods, _ := v["pods"].([]any)
	if len(pods) != len(st.Pods) {
		t.Fatalf("json pods = %#v", v["pods"])
	}
	for i, p := range st.Pods {
		got, _ := pods[i].(map[string]any)
		want := map[string]any{
			"namespace": p.Namespace, "name": p.Name, "node": p.Node, "ip": p.IP, "serviceAccount": p.ServiceAccount,
			"phase": p.Phase, "mesh": meshState(p.Redirection), "redirection": p.Redirection,
			"restarts": float64(p.Restarts), "message": p.Message,
		}
		for k, w := range want {
			if got[k] != w {
				t.Errorf("json pod %s/%s: %s = %#v, want %#v", p.Namespace, p.Name, k, got[k], w)
			}
		}
	}
	svcs, _ := v["services"].([]any)
	if len(svcs) != len(st.Services) {
		t.Fatalf("json services = %#v", v["services"])
	}
	for i, s := range st.Services {
		got, _ := svcs[i].(map[string]any)
		if got["namespace"] != s.Namespace || got["name"] != s.Name || got["clusterIP"] != s.ClusterIP {
			t.Errorf("json service %d = %#v, want %+v", i, got, s)
		}
		if ports, _ := got["ports"].([]any); len(ports) != len(s.Ports) {
			t.Errorf("json service %s/%s ports = %#v", s.Namespace, s.Name, got["ports"])
		}
	}
}
