// Command imgbuild writes a one-layer container image holding static
// binaries on an empty base, as a docker-archive tarball that
// `ctr -n k8s.io images import` (and `docker load`) accept. No Docker, no
// registry: go-containerregistry as a library. It lives in its own module
// so the main module does not depend on go-containerregistry.
//
//	imgbuild -ref ambit.local/ambit:v1 -out bin/images/ambit.tar \
//	    -entrypoint /usr/local/bin/ambit \
//	    bin/ambit=/usr/local/bin/ambit bin/ambit-cni=/usr/local/bin/ambit-cni
//
// Every file must be a statically linked ELF executable (no interpreter):
// the base is empty, there is no libc to link against. The layer is
// reproducible: entries are sorted, owned by 0:0 and dated SOURCE_DATE_EPOCH
// (default 0).
package main

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"path"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// File is one binary of the image: Src on this machine, Dst in the image.
type File struct{ Src, Dst string }

// Spec describes an image.
type Spec struct {
	Ref        string // e.g. ambit.local/ambit:v1
	Entrypoint []string
	Files      []File
	Labels     map[string]string
	Arch       string // GOARCH; default runtime.GOARCH
	Created    time.Time
	// AllowDynamic skips the static-binary check (tests only).
	AllowDynamic bool
}

type labelFlag map[string]string

func (l labelFlag) String() string { return fmt.Sprint(map[string]string(l)) }
func (l labelFlag) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return fmt.Errorf("label %q: want key=value", s)
	}
	l[k] = v
	return nil
}

func main() {
	log.SetFlags(0)
	log.SetPrefix("imgbuild: ")
	var (
		ref, out, entry string
		labels          = labelFlag{}
	)
	flag.StringVar(&ref, "ref", "", "image reference to tag the image with (repository:tag)")
	flag.StringVar(&out, "out", "", "docker-archive tarball to write")
	flag.StringVar(&entry, "entrypoint", "", "entrypoint path in the image (default: the first file's destination)")
	flag.Var(labels, "label", "image label key=value (repeatable)")
	flag.Usage = func() {
		fmt.Fprintln(flag.CommandLine.Output(), "usage: imgbuild -ref REPO:TAG -out FILE.tar [-entrypoint PATH] [-label K=V]... SRC=DST...")
		flag.PrintDefaults()
	}
	flag.Parse()
	if ref == "" || out == "" || flag.NArg() == 0 {
		flag.Usage()
		os.Exit(2)
	}
	spec := Spec{Ref: ref, Labels: labels, Arch: os.Getenv("GOARCH")}
	for _, a := range flag.Args() {
		src, dst, ok := strings.Cut(a, "=")
		if !ok || src == "" || !path.IsAbs(dst) {
			log.Fatalf("%q: want SRC=/absolute/destination", a)
		}
		spec.Files = append(spec.Files, File{Src: src, Dst: dst})
	}
	if entry == "" {
		entry = spec.Files[0].Dst
	}
	spec.Entrypoint = []string{entry}
	created, err := sourceDateEpoch()
	if err != nil {
		log.Fatal(err)
	}
	spec.Created = created
	img, err := Build(spec)
	if err != nil {
		log.Fatal(err)
	}
	if err := Write(out, spec.Ref, img); err != nil {
		log.Fatal(err)
	}
	fi, err := os.Stat(out)
	if err != nil {
		log.Fatal(err)
	}
	layers, _ := img.Layers()
	var compressed int64
	for _, l := range layers {
		s, _ := l.Size()
		compressed += s
	}
	fmt.Printf("%s: %s, %.1f MB tarball, %.1f MB compressed layer\n", out, spec.Ref, mb(fi.Size()), mb(compressed))
}

func mb(n int64) float64 { return float64(n) / 1e6 }

func sourceDateEpoch() (time.Time, error) {
	s := os.Getenv("SOURCE_DATE_EPOCH")
	if s == "" {
		return time.Unix(0, 0).UTC(), nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH %q: %w", s, err)
	}
	return time.Unix(n, 0).UTC(), nil
}

// Build returns the image of spec.
func Build(spec Spec) (v1.Image, error) {
	if len(spec.Files) == 0 {
		return nil, errors.New("no files")
	}
	if len(spec.Entrypoint) == 0 {
		return nil, errors.New("no entrypoint")
	}
	arch := spec.Arch
	if arch == "" {
		arch = runtime.GOARCH
	}
	layerTar, err := layer(spec)
	if err != nil {
		return nil, err
	}
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(layerTar)), nil })
	if err != nil {
		return nil, err
	}
	img, err := mutate.AppendLayers(empty.Image, l)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", arch
	cf.Created = v1.Time{Time: spec.Created}
	cf.Config = v1.Config{
		Entrypoint: spec.Entrypoint,
		Env:        []string{"PATH=/usr/local/bin:/usr/bin:/bin"},
		Labels:     spec.Labels,
	}
	return mutate.ConfigFile(img, cf)
}

// Write writes img as a docker-archive tarball tagged ref.
func Write(out, ref string, img v1.Image) error {
	tag, err := name.NewTag(ref, name.StrictValidation)
	if err != nil {
		return fmt.Errorf("-ref %s: %w", ref, err)
	}
	tmp := out + ".tmp"
	if err := tarball.WriteToFile(tmp, tag, img); err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, out)
}

// layer returns the uncompressed tar of the image's only layer: the
// parent directories of every file, then the files, all sorted.
func layer(spec Spec) ([]byte, error) {
	dirs := map[string]bool{}
	files := map[string][]byte{}
	for _, f := range spec.Files {
		data, err := os.ReadFile(f.Src)
		if err != nil {
			return nil, err
		}
		if !spec.AllowDynamic {
			if err := checkStatic(f.Src, data); err != nil {
				return nil, err
			}
		}
		dst := strings.TrimPrefix(path.Clean(f.Dst), "/")
		if _, dup := files[dst]; dup {
			return nil, fmt.Errorf("%s: two files for one destination", f.Dst)
		}
		files[dst] = data
		for d := path.Dir(dst); d != "." && d != "/"; d = path.Dir(d) {
			dirs[d] = true
		}
	}
	// /tmp, as programs expect one (a pod mounts an emptyDir over it when
	// the root file system is read-only).
	dirs["tmp"] = true
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, d := range sortedKeys(dirs) {
		mode := int64(0o755)
		if d == "tmp" {
			mode = 0o1777
		}
		if err := tw.WriteHeader(&tar.Header{Name: d + "/", Typeflag: tar.TypeDir, Mode: mode, ModTime: spec.Created, Format: tar.FormatPAX}); err != nil {
			return nil, err
		}
	}
	for _, f := range sortedKeys(files) {
		data := files[f]
		if err := tw.WriteHeader(&tar.Header{Name: f, Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(data)), ModTime: spec.Created, Format: tar.FormatPAX}); err != nil {
			return nil, err
		}
		if _, err := tw.Write(data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// checkStatic refuses anything but a statically linked ELF executable.
func checkStatic(name string, data []byte) error {
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		return fmt.Errorf("%s: not an ELF executable: %w", name, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked (build it with CGO_ENABLED=0): the image has no libc", name)
		}
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
