package main

import (
	"archive/tar"
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// staticBinary builds a tiny static Go program.
func staticBinary(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	src := filepath.Join(dir, "main.go")
	if err := os.WriteFile(src, []byte("package main\nfunc main() {}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "hello")
	cmd := exec.Command("go", "build", "-o", out, src)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, b)
	}
	return out
}

func TestBuildWritesAnImportableArchive(t *testing.T) {
	bin := staticBinary(t)
	spec := Spec{
		Ref:        "ambit.local/test:v1",
		Entrypoint: []string{"/usr/local/bin/a"},
		Files:      []File{{bin, "/usr/local/bin/a"}, {bin, "/usr/local/bin/b"}},
		Labels:     map[string]string{"org.opencontainers.image.version": "v1"},
		Created:    time.Unix(0, 0).UTC(),
	}
	img, err := Build(spec)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "img.tar")
	if err := Write(out, spec.Ref, img); err != nil {
		t.Fatal(err)
	}

	// Read it back as docker-archive, by its tag.
	tag, _ := name.NewTag(spec.Ref)
	back, err := tarball.ImageFromPath(out, &tag)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := back.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.OS != "linux" || cf.Architecture != runtime.GOARCH {
		t.Errorf("platform %s/%s", cf.OS, cf.Architecture)
	}
	if !slices.Equal(cf.Config.Entrypoint, spec.Entrypoint) || cf.Config.Labels["org.opencontainers.image.version"] != "v1" {
		t.Errorf("config %+v", cf.Config)
	}
	layers, err := back.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("layers %d, %v", len(layers), err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	var names []string
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Uid != 0 || h.Gid != 0 || !h.ModTime.Equal(spec.Created) {
			t.Errorf("%s: owner %d:%d, mtime %v", h.Name, h.Uid, h.Gid, h.ModTime)
		}
		names = append(names, h.Name)
	}
	want := []string{"tmp/", "usr/", "usr/local/", "usr/local/bin/", "usr/local/bin/a", "usr/local/bin/b"}
	if !slices.Equal(names, want) {
		t.Errorf("layer holds %v, want %v", names, want)
	}

	// The same inputs give the same image.
	again, err := Build(spec)
	if err != nil {
		t.Fatal(err)
	}
	d1, _ := img.Digest()
	d2, _ := again.Digest()
	if d1 != d2 {
		t.Errorf("not reproducible: %s vs %s", d1, d2)
	}

	// The archive's manifest.json names the tag (what ctr import reads).
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr = tar.NewReader(f)
	found := false
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Name == "manifest.json" {
			b, _ := io.ReadAll(tr)
			found = bytes.Contains(b, []byte(`"ambit.local/test:v1"`))
		}
	}
	if !found {
		t.Error("manifest.json does not carry the tag")
	}
}

func TestBuildRefusesWhatCannotRunOnAnEmptyBase(t *testing.T) {
	script := filepath.Join(t.TempDir(), "script")
	if err := os.WriteFile(script, []byte("#!/bin/sh\necho hi\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, spec := range map[string]Spec{
		"not ELF":         {Ref: "a/b:c", Entrypoint: []string{"/x"}, Files: []File{{script, "/x"}}},
		"dynamic ELF":     {Ref: "a/b:c", Entrypoint: []string{"/x"}, Files: []File{{"/bin/sh", "/x"}}},
		"no files":        {Ref: "a/b:c", Entrypoint: []string{"/x"}},
		"no entrypoint":   {Ref: "a/b:c", Files: []File{{staticBinary(t), "/x"}}},
		"two files at /x": {Ref: "a/b:c", Entrypoint: []string{"/x"}, Files: []File{{staticBinary(t), "/x"}, {staticBinary(t), "/x"}}},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := Build(spec); err == nil {
				t.Error("built")
			}
		})
	}
}
