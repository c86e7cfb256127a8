package cniconf

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

const bridgeConf = `{"cniVersion":"1.0.0","name":"k8s","type":"bridge","bridge":"cni0","mtu":1450,"ipam":{"type":"host-local","ranges":[[{"subnet":"10.88.0.0/24"}]]}}`

const flannelList = `{"cniVersion":"0.3.1","name":"cbr0","plugins":[{"type":"flannel","delegate":{"hairpinMode":true,"isDefaultGateway":true}},{"type":"portmap","capabilities":{"portMappings":true}}]}`

var ours = map[string]any{"agentSocket": "/var/run/ambit/cni.sock", "excludeNamespaces": []string{"kube-system"}}

// pluginTypes reads a conflist and returns its plugins' types.
func pluginTypes(t *testing.T, path string) []string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		Name       string
		CNIVersion string
		Plugins    []map[string]any
	}
	if err := json.Unmarshal(data, &c); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	var types []string
	for _, p := range c.Plugins {
		types = append(types, p["type"].(string))
	}
	return types
}

func names(dir string) []string {
	entries, _ := os.ReadDir(dir)
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out
}

func TestInstall(t *testing.T) {
	ourList := `{"cniVersion":"0.3.1","name":"cbr0","plugins":[{"type":"flannel"},{"type":"ambit-cni","agentSocket":"/var/run/ambit/cni.sock","excludeNamespaces":["kube-system"]}]}`
	tests := []struct {
		name  string
		files map[string]string // initial directory
		// want
		path    string   // file holding our entry
		types   []string // its plugins, in order
		files2  []string // directory afterwards
		changed bool
		err     string // Install's error; the files must stay as they were
	}{
		{name: "conflist", files: map[string]string{"10-flannel.conflist": flannelList},
			path: "10-flannel.conflist", types: []string{"flannel", "portmap", "ambit-cni"}, files2: []string{"10-flannel.conflist"}, changed: true},
		{name: "conf becomes conflist", files: map[string]string{"10-bridge.conf": bridgeConf},
			path: "10-bridge.conflist", types: []string{"bridge", "ambit-cni"}, files2: []string{"10-bridge.conflist"}, changed: true},
		{name: "lowest sorted wins", files: map[string]string{"20-b.conflist": flannelList, "10-a.conflist": flannelList, "05-notes.txt": "x", ".05-hidden.conflist": "{"},
			path: "10-a.conflist", types: []string{"flannel", "portmap", "ambit-cni"}, files2: []string{".05-hidden.conflist", "05-notes.txt", "10-a.conflist", "20-b.conflist"}, changed: true},
		{name: "already present", files: map[string]string{"10-flannel.conflist": ourList},
			path: "10-flannel.conflist", types: []string{"flannel", "ambit-cni"}, files2: []string{"10-flannel.conflist"}, changed: false},
		{name: "present but not last, old config", files: map[string]string{"10-x.conflist": `{"cniVersion":"1.0.0","name":"x","plugins":[{"type":"ambit-cni","agentSocket":"/old"},{"type":"ptp"}]}`},
			path: "10-x.conflist", types: []string{"ptp", "ambit-cni"}, files2: []string{"10-x.conflist"}, changed: true},
		{name: "malformed JSON", files: map[string]string{"10-flannel.conflist": `{"cniVersion":"0.3.1","plugins":[{"type":"flannel"},]}`},
			err: "malformed JSON"},
		{name: "malformed conf", files: map[string]string{"10-bridge.conf": `{"type":"bridge"`},
			err: "malformed JSON"},
		{name: "conflist without plugins", files: map[string]string{"10-x.conflist": `{"cniVersion":"1.0.0","name":"x"}`},
			err: `without "plugins"`},
		{name: "plugins not objects", files: map[string]string{"10-x.conflist": `{"name":"x","plugins":["bridge"]}`},
			err: "plugins[0] is not an object"},
		{name: "conf without type", files: map[string]string{"10-x.conf": `{"name":"x"}`},
			err: `without "type"`},
		{name: "no config", files: map[string]string{"README": "x"},
			err: "no CNI network configuration"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			for name, data := range tc.files {
				if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o640); err != nil {
					t.Fatal(err)
				}
			}
			in := &Installer{ConfDir: dir, Plugin: ours}
			path, changed, err := in.Install()
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("Install error = %v, want %q", err, tc.err)
				}
				for name, data := range tc.files {
					got, _ := os.ReadFile(filepath.Join(dir, name))
					if string(got) != data {
						t.Errorf("%s was touched: %s", name, got)
					}
				}
				if len(names(dir)) != len(tc.files) {
					t.Errorf("files after a failed Install: %v", names(dir))
				}
				if in.Installed() != "" {
					t.Errorf("Installed() = %q after a failure", in.Installed())
				}
				return
			}
			if err != nil {
				t.Fatalf("Install: %v", err)
			}
			if path != filepath.Join(dir, tc.path) || changed != tc.changed {
				t.Errorf("Install = %s, changed %v; want %s, %v", path, changed, tc.path, tc.changed)
			}
			if got := pluginTypes(t, path); !slices.Equal(got, tc.types) {
				t.Errorf("plugins = %v, want %v", got, tc.types)
			}
			if got := names(dir); !slices.Equal(got, tc.files2) {
				t.Errorf("directory = %v, want %v", got, tc.files2)
			}
			if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o640 {
				t.Errorf("mode %v, want the original 0640", fi.Mode().Perm())
			}
			if in.Installed() != path {
				t.Errorf("Installed() = %q", in.Installed())
			}
			// A second Install writes nothing.
			before, _ := os.ReadFile(path)
			if _, changed, err := in.Install(); err != nil || changed {
				t.Errorf("second Install: changed %v, %v", changed, err)
			}
			if after, _ := os.ReadFile(path); string(after) != string(before) {
				t.Error("second Install rewrote the file")
			}
			// Our entry keeps the agent's settings; the others are intact.
			var c struct{ Plugins []map[string]any }
			json.Unmarshal(before, &c)
			last := c.Plugins[len(c.Plugins)-1]
			if last["agentSocket"] != "/var/run/ambit/cni.sock" {
				t.Errorf("our entry = %v", last)
			}
			if tc.name == "conf becomes conflist" {
				if c.Plugins[0]["mtu"].(float64) != 1450 || c.Plugins[0]["bridge"] != "cni0" {
					t.Errorf("the converted plugin lost settings: %v", c.Plugins[0])
				}
				var l struct{ Name, CNIVersion string }
				json.Unmarshal(before, &l)
				if l.Name != "k8s" || l.CNIVersion != "1.0.0" {
					t.Errorf("converted list name/version = %+v", l)
				}
			}

			// Uninstall takes our entry out and leaves the rest.
			if _, err := in.Uninstall(); err != nil {
				t.Fatal(err)
			}
			if got := pluginTypes(t, path); slices.Contains(got, PluginType) || len(got) != len(tc.types)-1 {
				t.Errorf("after Uninstall: plugins %v", got)
			}
			if got, err := in.Uninstall(); err != nil || len(got) != 0 {
				t.Errorf("second Uninstall rewrote %v, %v", got, err)
			}
		})
	}
}

func TestUninstallEveryFile(t *testing.T) {
	dir, bin := t.TempDir(), t.TempDir()
	both := `{"name":"a","plugins":[{"type":"bridge"},{"type":"ambit-cni"}]}`
	files := map[string]string{
		"10-a.conflist":   both,
		"20-b.conflist":   both,
		"30-c.conflist":   `{"name":"c","plugins":[{"type":"ptp"}]}`,
		"40-bad.conflist": `{"ambit-cni"`,
	}
	for name, data := range files {
		os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644)
	}
	os.WriteFile(filepath.Join(bin, PluginType), []byte("binary"), 0o755)
	in := &Installer{ConfDir: dir, BinDir: bin}
	changed, err := in.Uninstall()
	if err == nil || !strings.Contains(err.Error(), "40-bad.conflist") {
		t.Errorf("the malformed file is not reported: %v", err)
	}
	if len(changed) != 2 {
		t.Errorf("rewrote %v, want 10-a and 20-b", changed)
	}
	for _, name := range []string{"10-a.conflist", "20-b.conflist"} {
		if got := pluginTypes(t, filepath.Join(dir, name)); !slices.Equal(got, []string{"bridge"}) {
			t.Errorf("%s: %v", name, got)
		}
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "40-bad.conflist")); string(got) != files["40-bad.conflist"] {
		t.Error("the malformed file was touched")
	}
	if _, err := os.Stat(filepath.Join(bin, PluginType)); !errors.Is(err, os.ErrNotExist) {
		t.Error("the binary is still there")
	}
}

func TestInstallBinary(t *testing.T) {
	src := filepath.Join(t.TempDir(), "ambit-cni")
	os.WriteFile(src, []byte("v1"), 0o600)
	bin := filepath.Join(t.TempDir(), "opt", "cni", "bin")
	for i, want := range []bool{true, false} {
		changed, err := InstallBinary(src, bin)
		if err != nil || changed != want {
			t.Fatalf("InstallBinary #%d = %v, %v; want changed %v", i, changed, err, want)
		}
	}
	fi, err := os.Stat(filepath.Join(bin, PluginType))
	if err != nil || fi.Mode().Perm() != 0o755 {
		t.Fatalf("installed binary: %v, %v", fi, err)
	}
	os.WriteFile(src, []byte("v2"), 0o600)
	if changed, err := InstallBinary(src, bin); err != nil || !changed {
		t.Fatalf("a new binary was not copied: %v, %v", changed, err)
	}
	if got, _ := os.ReadFile(filepath.Join(bin, PluginType)); string(got) != "v2" {
		t.Errorf("binary = %q", got)
	}
	if names(bin)[0] != PluginType || len(names(bin)) != 1 {
		t.Errorf("bin dir holds %v (a temporary file left?)", names(bin))
	}
	if _, err := InstallBinary(filepath.Join(t.TempDir(), "missing"), bin); err == nil {
		t.Error("a missing source is no error")
	}
}

// TestWatch: a network plugin that rewrites its configuration (without our
// entry) gets it back; a config that appears later is taken; the binary is
// put back too.
func TestWatch(t *testing.T) {
	dir, bin := t.TempDir(), t.TempDir()
	src := filepath.Join(t.TempDir(), "ambit-cni")
	os.WriteFile(src, []byte("plugin"), 0o755)
	in := &Installer{ConfDir: dir, Plugin: ours, PluginSrc: src, BinDir: bin}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- in.Watch(ctx, time.Hour) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Watch: %v", err)
		}
	}()
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	path := filepath.Join(dir, "10-flannel.conflist")
	hasOurs := func() bool {
		data, err := os.ReadFile(path)
		if err != nil {
			return false
		}
		var c struct{ Plugins []map[string]any }
		if json.Unmarshal(data, &c) != nil || len(c.Plugins) == 0 {
			return false
		}
		return c.Plugins[len(c.Plugins)-1]["type"] == PluginType
	}
	time.Sleep(100 * time.Millisecond) // no config yet: Watch waits
	if in.Installed() != "" {
		t.Fatal("installed without a config")
	}
	os.WriteFile(path, []byte(flannelList), 0o644)
	waitFor("the entry in a config that appeared", hasOurs)
	waitFor("Installed()", func() bool { return in.Installed() == path })
	for i := range 3 {
		// The network plugin rewrites its file, atomically or in place.
		if i%2 == 0 {
			WriteAtomic(path, []byte(flannelList), 0o644)
		} else {
			os.WriteFile(path, []byte(flannelList), 0o644)
		}
		waitFor("the entry back after a rewrite", hasOurs)
	}
	os.Remove(filepath.Join(bin, PluginType))
	waitFor("the binary back", func() bool {
		_, err := os.Stat(filepath.Join(bin, PluginType))
		return err == nil
	})
}

// TestInstallOwnFile: with OwnFile the primary is never written; our file
// sorts first and holds the primary's network with our plugin last.
func TestInstallOwnFile(t *testing.T) {
	const own = "01-ambit.conflist"
	bridge := `{"cniVersion":"1.0.0","name":"k8s","plugins":[{"type":"bridge","bridge":"cni0"},{"type":"portmap"}]}` + "\n"
	chained := `{"cniVersion":"1.0.0","name":"k8s","plugins":[{"type":"bridge","bridge":"cni0"},{"type":"ambit-cni"}]}` + "\n"
	tests := []struct {
		name    string
		files   map[string]string
		wantErr string
		types   []string // our file's plugins
		primary string   // the primary's name
		// primaryAfter: the primary's bytes after Install ("" = as before)
		primaryAfter []string // its plugin types, when it was rewritten
	}{
		{name: "conflist", files: map[string]string{"10-k8s.conflist": bridge},
			types: []string{"bridge", "portmap", PluginType}, primary: "10-k8s.conflist"},
		{name: "conf", files: map[string]string{"10-k8s.conf": `{"cniVersion":"1.0.0","name":"k8s","type":"bridge","mtu":1450}`},
			types: []string{"bridge", PluginType}, primary: "10-k8s.conf"},
		{name: "lowest other file is the primary", files: map[string]string{"10-k8s.conflist": bridge, "20-other.conflist": `{"name":"x","plugins":[{"type":"ptp"}]}`},
			types: []string{"bridge", "portmap", PluginType}, primary: "10-k8s.conflist"},
		{name: "an entry chained into the primary moves to ours", files: map[string]string{"10-k8s.conflist": chained},
			types: []string{"bridge", PluginType}, primary: "10-k8s.conflist", primaryAfter: []string{"bridge"}},

		{name: "no configuration", files: map[string]string{}, wantErr: "no CNI network configuration"},
		{name: "malformed primary", files: map[string]string{"10-k8s.conflist": `{"name":`}, wantErr: "malformed JSON"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			for name, data := range tc.files {
				os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644)
			}
			in := &Installer{ConfDir: dir, OwnFile: own, Plugin: map[string]any{"agentSocket": "/var/run/ambit/cni.sock"}}
			path, changed, err := in.Install()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Install: %v, want an error with %q", err, tc.wantErr)
				}
				if _, serr := os.Stat(filepath.Join(dir, own)); serr == nil {
					t.Error("our file written despite the error")
				}
				for name, data := range tc.files {
					if got, _ := os.ReadFile(filepath.Join(dir, name)); string(got) != data {
						t.Errorf("%s was touched", name)
					}
				}
				return
			}
			if err != nil || !changed || path != filepath.Join(dir, own) || in.Installed() != path {
				t.Fatalf("Install = %s, %v, %v; Installed %q", path, changed, err, in.Installed())
			}
			if got := pluginTypes(t, path); !slices.Equal(got, tc.types) {
				t.Errorf("our plugins = %v, want %v", got, tc.types)
			}
			var l struct{ Name, CNIVersion string }
			b, _ := os.ReadFile(path)
			json.Unmarshal(b, &l)
			if l.Name != "k8s" || l.CNIVersion != "1.0.0" {
				t.Errorf("our file's network = %+v, want the primary's", l)
			}
			if primary, _ := PrimaryConfig(dir); primary != path {
				t.Errorf("the runtime's file is %s, not ours", primary)
			}
			pp := filepath.Join(dir, tc.primary)
			if tc.primaryAfter == nil {
				if got, _ := os.ReadFile(pp); string(got) != tc.files[tc.primary] {
					t.Errorf("the primary was rewritten: %s", got)
				}
			} else if got := pluginTypes(t, pp); !slices.Equal(got, tc.primaryAfter) {
				t.Errorf("the primary's plugins = %v, want %v", got, tc.primaryAfter)
			}
			primaryNow, _ := os.ReadFile(pp)
			if _, changed, err := in.Install(); err != nil || changed {
				t.Errorf("second Install: changed %v, %v", changed, err)
			}
			// The network plugin rewrites its file (a boot): ours follows.
			if filepath.Ext(pp) == ".conflist" {
				os.WriteFile(pp, []byte(`{"cniVersion":"1.0.0","name":"k8s","plugins":[{"type":"bridge","bridge":"cni1"}]}`), 0o644)
				if _, changed, err := in.Install(); err != nil || !changed {
					t.Errorf("Install after the primary changed: changed %v, %v", changed, err)
				}
				b, _ := os.ReadFile(path)
				if !strings.Contains(string(b), "cni1") || !slices.Equal(pluginTypes(t, path), []string{"bridge", PluginType}) {
					t.Errorf("our copy after the primary changed: %s", b)
				}
				primaryNow, _ = os.ReadFile(pp)
			}
			// Uninstall deletes ours; the primary stays byte for byte.
			if _, err := in.Uninstall(); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(path); !os.IsNotExist(err) {
				t.Errorf("our file after Uninstall: %v", err)
			}
			if got, _ := os.ReadFile(pp); string(got) != string(primaryNow) {
				t.Errorf("Uninstall touched the primary: %s", got)
			}
		})
	}
}

// TestInstallOwnFileSortsLater: a primary that sorts before our own file
// gets our entry chained into it (the runtime would not read ours).
func TestInstallOwnFileSortsLater(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "00-k8s.conflist")
	os.WriteFile(p, []byte(`{"cniVersion":"1.0.0","name":"k8s","plugins":[{"type":"bridge"}]}`), 0o644)
	in := &Installer{ConfDir: dir, OwnFile: "01-ambit.conflist", Plugin: map[string]any{}}
	path, changed, err := in.Install()
	if err != nil || !changed || path != p {
		t.Fatalf("Install = %s, %v, %v; want the primary", path, changed, err)
	}
	if got := pluginTypes(t, p); !slices.Equal(got, []string{"bridge", PluginType}) {
		t.Errorf("plugins %v", got)
	}
	if got := names(dir); !slices.Equal(got, []string{"00-k8s.conflist"}) {
		t.Errorf("directory %v", got)
	}
}
