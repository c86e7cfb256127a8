// Package cniconf keeps Ambit's chained CNI plugin in a Kubernetes node's
// CNI configuration, as istio-cni's installer does: the node's primary
// network configuration is the lowest-sorted *.conf or *.conflist file in
// the configuration directory (the one the container runtime uses); our
// plugin goes last in its plugins list (a .conf file is turned into a
// .conflist first), written atomically. Watch puts the entry back when
// someone rewrites the file (the network plugin's own installer usually
// does, at its restarts). Uninstall takes our entry out of every file.
// The plugin binary is copied into the CNI bin directory the same way.
//
// With Installer.OwnFile set, the primary file is never written: our own
// file, named to sort before it, holds a copy of the primary network's
// configuration with our plugin last (as istio-cni's
// istio-owned-cni-config). The runtime then uses ours; a network plugin
// that rewrites its own file (at every boot, before the node agent is back)
// no longer takes our plugin out of the chain, so pods started then are
// still held until the node agent captures them. Watch refreshes the copy
// when the primary changes; Uninstall deletes our file, leaving the
// primary as it always was.
package cniconf

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
)

// PluginType is our plugin's "type": the name of its binary in the CNI
// bin directory.
const PluginType = "ambit-cni"

// ErrNoConfig means the directory holds no network configuration yet (the
// network plugin has not installed its own).
var ErrNoConfig = errors.New("no CNI network configuration (*.conf, *.conflist)")

func isConfName(name string) bool {
	if strings.HasPrefix(name, ".") {
		return false
	}
	ext := filepath.Ext(name)
	return ext == ".conf" || ext == ".conflist"
}

// configFiles lists the configuration files of dir, sorted by name.
func configFiles(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("CNI config dir: %w", err)
	}
	var out []string
	for _, e := range entries {
		if !isConfName(e.Name()) {
			continue
		}
		p := filepath.Join(dir, e.Name())
		if fi, err := os.Stat(p); err != nil || !fi.Mode().IsRegular() {
			continue
		}
		out = append(out, p)
	}
	slices.Sort(out)
	return out, nil
}

// PrimaryConfig returns the node's primary network configuration file: the
// lowest-sorted *.conf or *.conflist of dir (what libcni, and so containerd
// and CRI-O, load).
func PrimaryConfig(dir string) (string, error) {
	files, err := configFiles(dir)
	if err != nil {
		return "", err
	}
	if len(files) == 0 {
		return "", fmt.Errorf("%w in %s", ErrNoConfig, dir)
	}
	return files[0], nil
}

func decode(data []byte) (map[string]any, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		return nil, err
	}
	if dec.More() {
		return nil, errors.New("trailing data after the JSON object")
	}
	if m == nil {
		return nil, errors.New("not a JSON object")
	}
	return m, nil
}

func isOurs(p any) bool {
	m, ok := p.(map[string]any)
	return ok && m["type"] == PluginType
}

// pluginsOf returns the plugins list of a conflist.
func pluginsOf(conf map[string]any) ([]any, error) {
	raw, ok := conf["plugins"]
	if !ok {
		return nil, errors.New(`a .conflist without "plugins"`)
	}
	list, ok := raw.([]any)
	if !ok {
		return nil, errors.New(`"plugins" is not a list`)
	}
	for i, p := range list {
		if _, ok := p.(map[string]any); !ok {
			return nil, fmt.Errorf("plugins[%d] is not an object", i)
		}
	}
	return list, nil
}

// InsertPlugin returns the configuration data (a conflist, or with isList
// false a single network .conf, which becomes a conflist) with plugin last
// in its plugins list, replacing any earlier entry of ours; changed is
// false when data already said exactly that.
func InsertPlugin(data []byte, isList bool, plugin map[string]any) (out []byte, changed bool, err error) {
	conf, err := decode(data)
	if err != nil {
		return nil, false, fmt.Errorf("malformed JSON: %w", err)
	}
	ours, err := normalize(plugin)
	if err != nil {
		return nil, false, err
	}
	list := conf
	var plugins []any
	if isList {
		if plugins, err = pluginsOf(conf); err != nil {
			return nil, false, err
		}
	} else {
		if _, ok := conf["type"]; !ok {
			return nil, false, errors.New(`a .conf without "type"`)
		}
		plugins = []any{conf}
		list = map[string]any{}
		for _, k := range []string{"cniVersion", "name"} {
			if v, ok := conf[k]; ok {
				list[k] = v
			}
		}
	}
	next := slices.DeleteFunc(slices.Clone(plugins), isOurs)
	next = append(next, ours)
	if isList && reflect.DeepEqual(next, plugins) {
		return data, false, nil
	}
	list["plugins"] = next
	out, err = json.MarshalIndent(list, "", "  ")
	if err != nil {
		return nil, false, err
	}
	return append(out, '\n'), true, nil
}

// normalize returns plugin as decode would read it back (numbers as
// json.Number), with our type.
func normalize(plugin map[string]any) (map[string]any, error) {
	p := map[string]any{}
	for k, v := range plugin {
		p[k] = v
	}
	p["type"] = PluginType
	b, err := json.Marshal(p)
	if err != nil {
		return nil, fmt.Errorf("our plugin's configuration: %w", err)
	}
	return decode(b)
}

// RemovePlugin returns a conflist without our entries; changed is false
// when there was none.
func RemovePlugin(data []byte) (out []byte, changed bool, err error) {
	conf, err := decode(data)
	if err != nil {
		return nil, false, fmt.Errorf("malformed JSON: %w", err)
	}
	plugins, err := pluginsOf(conf)
	if err != nil {
		return nil, false, err
	}
	next := slices.DeleteFunc(slices.Clone(plugins), isOurs)
	if len(next) == len(plugins) {
		return data, false, nil
	}
	conf["plugins"] = next
	out, err = json.MarshalIndent(conf, "", "  ")
	if err != nil {
		return nil, false, err
	}
	return append(out, '\n'), true, nil
}

// WriteAtomic replaces path with data: a temporary file in the same
// directory (hidden and without a .conf extension, so no runtime reads it
// half written), synced, then renamed over path.
func WriteAtomic(path string, data []byte, mode fs.FileMode) error {
	var b [6]byte
	_, _ = rand.Read(b[:])
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".ambit-"+hex.EncodeToString(b[:])+".tmp")
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	fail := func(err error) error {
		f.Close()
		os.Remove(tmp)
		return err
	}
	if _, err := f.Write(data); err != nil {
		return fail(err)
	}
	if err := f.Chmod(mode); err != nil { // umask
		return fail(err)
	}
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}

// Installer keeps our plugin in the primary configuration of ConfDir.
type Installer struct {
	ConfDir string
	// Plugin is our entry in the plugins list ("type" is set to
	// PluginType).
	Plugin map[string]any
	// PluginSrc and BinDir, if set, name the plugin binary and the CNI
	// bin directory it is copied into (as BinDir/ambit-cni) before the
	// configuration refers to it.
	PluginSrc, BinDir string
	// OwnFile, if set, is the name (in ConfDir) of our own configuration
	// file, which must sort before the primary's (see the package
	// comment); empty, or a primary that sorts before it: our entry goes
	// into the primary file.
	OwnFile string
	Logger  *slog.Logger

	mu        sync.Mutex
	installed string // the file holding our entry after the last Install
}

func (in *Installer) logger() *slog.Logger {
	if in.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return in.Logger
}

// Installed returns the configuration file our entry was last put in, or
// "" if Install has not succeeded (yet, or since a failure).
func (in *Installer) Installed() string {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.installed
}

// Install copies the binary (if configured) and puts our entry last in the
// primary configuration. It returns the file that holds it and whether
// anything was written. A file that does not parse is left untouched.
func (in *Installer) Install() (path string, changed bool, err error) {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.installed = ""
	if in.PluginSrc != "" {
		bin, err := InstallBinary(in.PluginSrc, in.BinDir)
		if err != nil {
			return "", false, err
		}
		changed = bin
	}
	if in.OwnFile != "" {
		p, c, err := in.installOwn()
		if !errors.Is(err, errSortsFirst) {
			return p, changed || c, err
		}
		in.logger().Warn("chaining into the primary configuration instead of our own file", "err", err)
		_ = os.Remove(filepath.Join(in.ConfDir, in.OwnFile))
	}
	path, err = PrimaryConfig(in.ConfDir)
	if err != nil {
		return "", changed, err
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return "", changed, fmt.Errorf("CNI config %s: %w", path, err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return "", changed, fmt.Errorf("CNI config %s: %w", path, err)
	}
	isList := filepath.Ext(path) == ".conflist"
	out, conf, err := InsertPlugin(data, isList, in.Plugin)
	if err != nil {
		return "", changed, fmt.Errorf("CNI config %s: %w (left as it is)", path, err)
	}
	if !conf {
		in.installed = path
		return path, changed, nil
	}
	target := path
	if !isList {
		target = strings.TrimSuffix(path, ".conf") + ".conflist"
	}
	if err := WriteAtomic(target, out, fi.Mode().Perm()); err != nil {
		return "", changed, fmt.Errorf("CNI config %s: %w", target, err)
	}
	if target != path {
		// The .conflist takes over; it sorts right after the .conf, so it
		// is the primary once the .conf is gone.
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return "", true, fmt.Errorf("CNI config: removing %s after converting it to %s: %w", path, target, err)
		}
	}
	in.installed = target
	in.logger().Info("CNI plugin entry installed", "config", target, "from", path)
	return target, true, nil
}

// errSortsFirst: the primary file sorts before OwnFile, so the runtime
// would not use ours; Install chains into the primary instead.
var errSortsFirst = errors.New("sorts before our own file")

// installOwn writes OwnFile: the primary network's configuration (the
// lowest-sorted other file) with our plugin last. An entry of ours in the
// primary (an earlier install that chained into it) is taken out.
func (in *Installer) installOwn() (string, bool, error) {
	own := filepath.Join(in.ConfDir, in.OwnFile)
	if !isConfName(in.OwnFile) || filepath.Ext(in.OwnFile) != ".conflist" || filepath.Base(in.OwnFile) != in.OwnFile {
		return "", false, fmt.Errorf("CNI config: our own file %q must be a *.conflist name in %s", in.OwnFile, in.ConfDir)
	}
	files, err := configFiles(in.ConfDir)
	if err != nil {
		return "", false, err
	}
	files = slices.DeleteFunc(files, func(f string) bool { return f == own })
	if len(files) == 0 {
		return "", false, fmt.Errorf("%w in %s", ErrNoConfig, in.ConfDir)
	}
	primary := files[0]
	if filepath.Base(primary) < in.OwnFile {
		return "", false, fmt.Errorf("CNI config %s %w %s", primary, errSortsFirst, in.OwnFile)
	}
	data, err := os.ReadFile(primary)
	if err != nil {
		return "", false, fmt.Errorf("CNI config %s: %w", primary, err)
	}
	fi, err := os.Stat(primary)
	if err != nil {
		return "", false, fmt.Errorf("CNI config %s: %w", primary, err)
	}
	isList := filepath.Ext(primary) == ".conflist"
	changed := false
	if isList && bytes.Contains(data, []byte(PluginType)) {
		if clean, ok, err := RemovePlugin(data); err == nil && ok {
			if err := WriteAtomic(primary, clean, fi.Mode().Perm()); err != nil {
				return "", false, fmt.Errorf("CNI config %s: %w", primary, err)
			}
			in.logger().Info("CNI plugin entry moved out of the primary configuration", "config", primary, "own", own)
			data, changed = clean, true
		}
	}
	out, _, err := InsertPlugin(data, isList, in.Plugin)
	if err != nil {
		return "", false, fmt.Errorf("CNI config %s: %w (ours not written)", primary, err)
	}
	if cur, err := os.ReadFile(own); err == nil && bytes.Equal(cur, out) {
		in.installed = own
		return own, changed, nil
	}
	if err := WriteAtomic(own, out, fi.Mode().Perm()); err != nil {
		return "", changed, fmt.Errorf("CNI config %s: %w", own, err)
	}
	in.installed = own
	in.logger().Info("CNI configuration of our own written", "config", own, "from", primary)
	return own, true, nil
}

// Uninstall takes our entry out of every configuration file of ConfDir and
// removes the binary (if configured); our own file (OwnFile) is deleted.
// Files that do not parse are left alone. It returns the files it rewrote
// or deleted.
func (in *Installer) Uninstall() ([]string, error) {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.installed = ""
	files, err := configFiles(in.ConfDir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	var changed []string
	var errs []error
	for _, path := range files {
		if filepath.Ext(path) != ".conflist" {
			continue
		}
		if in.OwnFile != "" && path == filepath.Join(in.ConfDir, in.OwnFile) {
			if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, fmt.Errorf("CNI config: removing our %s: %w", path, err))
				continue
			}
			changed = append(changed, path)
			in.logger().Info("CNI configuration of our own removed", "config", path)
			continue
		}
		data, err := os.ReadFile(path)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if !bytes.Contains(data, []byte(PluginType)) {
			continue
		}
		out, ok, err := RemovePlugin(data)
		if err != nil {
			errs = append(errs, fmt.Errorf("CNI config %s: %w (left as it is)", path, err))
			continue
		}
		if !ok {
			continue
		}
		fi, err := os.Stat(path)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if err := WriteAtomic(path, out, fi.Mode().Perm()); err != nil {
			errs = append(errs, fmt.Errorf("CNI config %s: %w", path, err))
			continue
		}
		changed = append(changed, path)
		in.logger().Info("CNI plugin entry removed", "config", path)
	}
	if in.BinDir != "" {
		if err := RemoveBinary(in.BinDir); err != nil {
			errs = append(errs, err)
		}
	}
	return changed, errors.Join(errs...)
}

// Watch keeps our entry installed until ctx is done: it installs at once,
// again whenever a configuration file of ConfDir changes (debounced), and
// every resync as a safety net. Install failures are logged and retried
// on the next change or resync.
func (in *Installer) Watch(ctx context.Context, resync time.Duration) error {
	if err := os.MkdirAll(in.ConfDir, 0o755); err != nil {
		return fmt.Errorf("CNI config dir: %w", err)
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watching %s: %w", in.ConfDir, err)
	}
	defer w.Close()
	if err := w.Add(in.ConfDir); err != nil {
		return fmt.Errorf("watching %s: %w", in.ConfDir, err)
	}
	if in.BinDir != "" {
		if err := os.MkdirAll(in.BinDir, 0o755); err == nil {
			_ = w.Add(in.BinDir)
		}
	}
	const debounce = 100 * time.Millisecond
	timer := time.NewTimer(0) // install at once
	defer timer.Stop()
	tick := time.NewTicker(resync)
	defer tick.Stop()
	var lastErr string
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return errors.New("CNI config watch closed")
			}
			name := filepath.Base(ev.Name)
			if isConfName(name) || name == PluginType {
				timer.Reset(debounce)
			}
		case err, ok := <-w.Errors:
			if !ok {
				return errors.New("CNI config watch closed")
			}
			in.logger().Warn("CNI config watch", "err", err)
			timer.Reset(debounce)
		case <-tick.C:
			timer.Reset(0)
		case <-timer.C:
			if _, _, err := in.Install(); err != nil {
				if err.Error() != lastErr {
					in.logger().Error("installing the CNI plugin entry", "err", err)
				}
				lastErr = err.Error()
			} else {
				lastErr = ""
			}
		}
	}
}

// InstallBinary copies src to binDir/ambit-cni (temporary file, renamed
// into place, mode 0755) unless it already holds the same bytes; it
// reports whether it wrote.
func InstallBinary(src, binDir string) (bool, error) {
	data, err := os.ReadFile(src)
	if err != nil {
		return false, fmt.Errorf("CNI plugin binary: %w", err)
	}
	dst := filepath.Join(binDir, PluginType)
	if old, err := os.ReadFile(dst); err == nil && bytes.Equal(old, data) {
		if fi, err := os.Stat(dst); err == nil && fi.Mode().Perm()&0o111 != 0 {
			return false, nil
		}
	}
	if err := os.MkdirAll(binDir, 0o755); err != nil {
		return false, fmt.Errorf("CNI bin dir: %w", err)
	}
	if err := WriteAtomic(dst, data, 0o755); err != nil {
		return false, fmt.Errorf("installing CNI plugin binary %s: %w", dst, err)
	}
	return true, nil
}

// RemoveBinary removes binDir/ambit-cni (a missing one is fine).
func RemoveBinary(binDir string) error {
	err := os.Remove(filepath.Join(binDir, PluginType))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing the CNI plugin binary: %w", err)
	}
	return nil
}
