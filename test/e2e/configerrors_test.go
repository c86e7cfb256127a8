package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// configStatus is the part of `ambit local status -o json` this file reads.
type configStatus struct {
	Pods []struct {
		Namespace string `json:"namespace"`
		Name      string `json:"name"`
		Phase     string `json:"phase"`
		PID       int    `json:"pid"`
	} `json:"pods"`
	ConfigErrors []struct {
		File    string `json:"file"`
		Line    int    `json:"line"`
		Message string `json:"message"`
	} `json:"configErrors"`
}

func readConfigStatus(t *testing.T, stateDir string) *configStatus {
	t.Helper()
	out := mustAmbit(t, 10*time.Second, "local", "status", "-o", "json", "--state-dir", stateDir)
	var st configStatus
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status -o json is not JSON: %v\n%s", err, out)
	}
	if st.ConfigErrors == nil && !strings.Contains(out, `"configErrors": []`) {
		t.Fatalf("status -o json has no configErrors list:\n%s", out)
	}
	return &st
}

// replaceConfigFile replaces a file as editors do (a hidden temporary file, then
// a rename), so that the watcher never reads half of it.
func replaceConfigFile(path, data string) error {
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	if err := os.WriteFile(tmp, []byte(data), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func (s *configStatus) pod(ns, name string) (phase string, pid int, ok bool) {
	for _, p := range s.Pods {
		if p.Namespace == ns && p.Name == name {
			return p.Phase, p.PID, true
		}
	}
	return "", 0, false
}

// TestConfigErrors: a file the loader rejects while the mesh runs is shown,
// with its file:line message, by `ambit local status` and its -o json,
// within seconds; the file's previous objects stay; the error goes once the
// file is fixed or removed.
func TestConfigErrors(t *testing.T) {
	stateDir := filepath.Join(t.TempDir(), "state")
	cfg := copyDir(t, filepath.Join(repoRoot(), "samples", "demo"))
	t.Cleanup(func() { _, _ = ambit(t, 60*time.Second, "local", "down", "--state-dir", stateDir) })
	mustAmbit(t, 90*time.Second, "local", "up", "-f", cfg, "--state-dir", stateDir)
	if st := readConfigStatus(t, stateDir); len(st.ConfigErrors) != 0 {
		t.Fatalf("config errors on a clean start: %+v", st.ConfigErrors)
	}

	// shown waits until both views show exactly one rejected file, with a
	// problem at line whose message starts with want.
	shown := func(t *testing.T, file string, line int, want string) {
		t.Helper()
		var text string
		var st *configStatus
		deadline := time.Now().Add(5 * time.Second)
		for {
			text = mustAmbit(t, 10*time.Second, "local", "status", "--state-dir", stateDir)
			st = readConfigStatus(t, stateDir)
			okText := strings.Contains(text, "\nCONFIG ERRORS") && strings.Contains(text, "\n  "+file+"\n") &&
				strings.Contains(text, "\n    "+want) && strings.Contains(text, "1 file rejected")
			okJSON := len(st.ConfigErrors) == 1 && st.ConfigErrors[0].File == file && st.ConfigErrors[0].Line == line &&
				strings.HasPrefix(st.ConfigErrors[0].Message, want)
			if okText && okJSON {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("status does not show %s:%d %q within 5s:\n%s\njson config errors: %+v", file, line, want, text, st.ConfigErrors)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	// cleared waits until neither view has a config error.
	cleared := func(t *testing.T, file string) {
		t.Helper()
		waitFor(t, 5*time.Second, "the config error of "+file+" to go", func() bool {
			text := mustAmbit(t, 10*time.Second, "local", "status", "--state-dir", stateDir)
			return len(readConfigStatus(t, stateDir).ConfigErrors) == 0 &&
				!strings.Contains(text, "CONFIG ERRORS") && !strings.Contains(text, file) && !strings.Contains(text, "rejected")
		})
	}
	running := func(t *testing.T, ns, name string) int {
		t.Helper()
		var pid int
		waitFor(t, 20*time.Second, "pod "+ns+"/"+name+" running", func() bool {
			phase, p, _ := readConfigStatus(t, stateDir).pod(ns, name)
			pid = p
			return phase == "Running" && p > 0
		})
		return pid
	}

	bad := filepath.Join(cfg, "bad.yaml")
	t.Run("a new file with an unknown field, then fixed", func(t *testing.T) {
		pod := "apiVersion: v1\nkind: Pod\nmetadata: {name: bad, namespace: demo}\nspec:\n  containers:\n  - name: c\n    command: [ambit, sample, tcp-echo]\n"
		if err := replaceConfigFile(bad, pod+"    bogus: true\n"); err != nil {
			t.Fatal(err)
		}
		shown(t, bad, 8, bad+":8: Pod demo/bad: spec.containers[0].bogus: unknown field")
		if _, _, ok := readConfigStatus(t, stateDir).pod("demo", "bad"); ok {
			t.Fatal("the pod of a rejected file was created")
		}
		if err := replaceConfigFile(bad, pod); err != nil {
			t.Fatal(err)
		}
		cleared(t, bad)
		running(t, "demo", "bad")
	})

	t.Run("an existing file broken keeps its objects, then restored", func(t *testing.T) {
		echo := filepath.Join(cfg, "echo.yaml")
		orig, err := os.ReadFile(echo)
		if err != nil {
			t.Fatal(err)
		}
		pid := running(t, "demo", "echo-1")
		body := strings.TrimRight(string(orig), "\n") + "\n"
		line := strings.Count(body, "\n") + 6
		broken := body + "---\napiVersion: v1\nkind: Service\nmetadata: {name: broken, namespace: demo}\nspec:\n  bogus: 1\n"
		if err := replaceConfigFile(echo, broken); err != nil {
			t.Fatal(err)
		}
		shown(t, echo, line, fmt.Sprintf("%s:%d: Service demo/broken: spec.bogus: unknown field", echo, line))
		text := mustAmbit(t, 10*time.Second, "local", "status", "--state-dir", stateDir)
		if !strings.Contains(text, "stays in force until they are fixed or removed") {
			t.Errorf("status does not say that the rejected file's objects are kept:\n%s", text)
		}
		if phase, now, _ := readConfigStatus(t, stateDir).pod("demo", "echo-1"); phase != "Running" || now != pid {
			t.Errorf("echo-1 after its file was rejected: %s pid %d, want Running pid %d (kept as it was)", phase, now, pid)
		}
		if err := replaceConfigFile(echo, string(orig)); err != nil {
			t.Fatal(err)
		}
		cleared(t, echo)
		if phase, now, _ := readConfigStatus(t, stateDir).pod("demo", "echo-1"); phase != "Running" || now != pid {
			t.Errorf("echo-1 after its file was restored: %s pid %d, want Running pid %d", phase, now, pid)
		}
	})

	t.Run("a broken file removed", func(t *testing.T) {
		if err := replaceConfigFile(bad, "kind: [\n"); err != nil {
			t.Fatal(err)
		}
		shown(t, bad, 1, bad+":1: invalid YAML")
		if err := os.Remove(bad); err != nil {
			t.Fatal(err)
		}
		cleared(t, bad)
		waitFor(t, 20*time.Second, "pod bad gone with its file", func() bool {
			_, _, ok := readConfigStatus(t, stateDir).pod("demo", "bad")
			return !ok
		})
	})
}
