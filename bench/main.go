// Command bench is Ambit's data-path benchmark harness (`make bench`). It
// brings up a local-mode mesh of two nodes and measures, in one run and
// alternating path by path within each round, four paths between a client
// pod on node1 and a server pod on node2:
//
//	direct       plain pod-to-pod TCP (a namespace outside the mesh)
//	ambit        the L4 mesh: pod -> ztunnel -> HBONE mTLS -> ztunnel -> pod
//	stunnel      a stunnel4 mutual-TLS pair on the plain pods
//	istio-hbone  upstream Istio's Go HBONE client and server as a pair on
//	             the plain pods (bin/istio-hbone-pair, from test/interop)
//
// Per path: 1-byte round trip (bin/ambit-benchtool), fortio latency at
// 1000 req/s, max req/s, a new connection per request, and iperf3 with one
// and eight streams. On the ambit path also: each ztunnel's CPU per 1000
// req/s at 1000, 5000 and 20000 req/s, and each ztunnel's RSS idle and with
// 1,000 and 10,000 idle connections held. Then the mesh comes up again with
// `--ztunnel-workers 1` and direct and ambit are measured again. It writes
// a markdown report of medians, ratios and targets, and the raw per-round
// numbers as JSON, to bench/results/.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

type options struct {
	binDir   string
	rounds   int
	duration time.Duration
	outDir   string
	stateDir string
	workers  []int // ztunnel worker counts; the first run also measures the peers
	held     []int // idle connections to hold
	rates    []int // req/s for the CPU scaling
}

func main() {
	var o options
	var workers, held, rates string
	flag.StringVar(&o.binDir, "bin", "bin", "directory with ambit, the CNI plugins, fortio, ambit-benchtool and istio-hbone-pair")
	flag.IntVar(&o.rounds, "rounds", 3, "rounds; the paths alternate within each round")
	flag.DurationVar(&o.duration, "duration", 3*time.Second, "length of each measurement")
	flag.StringVar(&o.outDir, "out", "bench/results", "where to write the report and raw JSON")
	flag.StringVar(&o.stateDir, "state-dir", "/run/ambit/bench", "state directory of the benchmark's mesh")
	flag.StringVar(&workers, "workers", "2,1", "ztunnel --workers of each mesh run, in order")
	flag.StringVar(&held, "held", "1000,10000", "idle connections to hold for the memory figures")
	flag.StringVar(&rates, "rates", "1000,5000,20000", "req/s asked for the CPU scaling")
	flag.Parse()
	var err error
	for _, f := range []struct {
		name, val string
		dst       *[]int
	}{{"workers", workers, &o.workers}, {"held", held, &o.held}, {"rates", rates, &o.rates}} {
		if *f.dst, err = ints(f.val); err != nil || len(*f.dst) == 0 {
			fmt.Fprintf(os.Stderr, "bench: -%s %q: want a comma-separated list of numbers\n", f.name, f.val)
			os.Exit(2)
		}
	}
	if err := run(context.Background(), o); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func ints(s string) ([]int, error) {
	var v []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 0 {
			return nil, fmt.Errorf("%q: not a count", f)
		}
		v = append(v, n)
	}
	return v, nil
}

// Results is the raw record of a bench run (the .json next to the report).
type Results struct {
	Started  time.Time  `json:"started"`
	Elapsed  float64    `json:"elapsed_seconds"`
	Rounds   int        `json:"rounds"`
	Duration string     `json:"duration_per_measurement"`
	Runs     []*MeshRun `json:"runs"`
	// CPUIdle is how the machine's idle vCPUs wait (cpuidle driver and,
	// for haltpoll, its guest_halt_poll_ns): a vCPU that halts without
	// polling first pays tens of µs to wake, on every hop of every path.
	CPUIdle string `json:"cpuidle"`
}

// cpuIdle describes the machine's cpuidle driver and halt polling.
func cpuIdle() string {
	read := func(p string) string {
		b, err := os.ReadFile(p)
		if err != nil {
			return "unknown"
		}
		return strings.TrimSpace(string(b))
	}
	s := "cpuidle driver " + read("/sys/devices/system/cpu/cpuidle/current_driver")
	if poll := read("/sys/module/haltpoll/parameters/guest_halt_poll_ns"); poll != "unknown" {
		s += ", guest_halt_poll_ns " + poll
	}
	return s
}

func run(ctx context.Context, o options) error {
	if os.Geteuid() != 0 {
		return errors.New("needs root (it builds a local mesh)")
	}
	bin, err := filepath.Abs(o.binDir)
	if err != nil {
		return err
	}
	t := tools{ambit: filepath.Join(bin, "ambit"), fortio: filepath.Join(bin, "fortio"),
		benchtool: filepath.Join(bin, "ambit-benchtool"), istioPair: filepath.Join(bin, "istio-hbone-pair")}
	for _, tool := range []string{t.ambit, t.fortio, t.benchtool, t.istioPair} {
		if _, err := os.Stat(tool); err != nil {
			return fmt.Errorf("%s missing: run `make build bench-tools`", tool)
		}
	}
	for _, tool := range []string{"iperf3", "stunnel4", "nginx"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s missing: run ./scripts/install-deps.sh", tool)
		}
	}
	cfg, err := os.MkdirTemp("", "ambit-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(cfg)
	c, err := mintCerts(cfg)
	if err != nil {
		return err
	}
	res := &Results{Started: time.Now().UTC(), Rounds: o.rounds, Duration: o.duration.String(), CPUIdle: cpuIdle()}
	for i, w := range o.workers {
		r, err := runMesh(ctx, o, t, cfg, c, w, i == 0)
		if err != nil {
			return fmt.Errorf("mesh with ztunnel --workers %d: %w", w, err)
		}
		res.Runs = append(res.Runs, r)
	}
	res.Elapsed = time.Since(res.Started).Seconds()

	report := render(res)
	fmt.Print(report)
	if err := os.MkdirAll(o.outDir, 0o755); err != nil {
		return err
	}
	stem := filepath.Join(o.outDir, res.Started.Format("2006-01-02T15-04-05Z"))
	if err := os.WriteFile(stem+".md", []byte(report), 0o644); err != nil {
		return err
	}
	raw, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding the raw results: %w", err)
	}
	if err := os.WriteFile(stem+".json", append(raw, '\n'), 0o644); err != nil {
		return err
	}
	fmt.Printf("written to %s.md and %s.json (%.0f s)\n", stem, stem, res.Elapsed)
	return nil
}

// runMesh brings a mesh up with the given ztunnel worker count, measures
// it, and takes it down. With peers, the stunnel and istio-hbone paths are
// measured too.
func runMesh(ctx context.Context, o options, t tools, cfg string, c certs, workers int, peers bool) (*MeshRun, error) {
	m, err := up(ctx, t, o.stateDir, cfg, workers)
	if err != nil {
		return nil, err
	}
	defer m.down()
	if peers {
		if err := m.startPeers(cfg, c); err != nil {
			return nil, err
		}
	}
	paths := m.paths(peers)
	if err := m.warm(ctx, paths); err != nil {
		return nil, err
	}
	run := &MeshRun{Workers: workers}

	// Memory first: idle right after one warming request, then held idle
	// connections.
	zt, err := ztunnels()
	if err != nil {
		return nil, err
	}
	for i, n := range nodes() {
		run.IdleRSSKB[i] = zt[n].rssKB
		run.IdlePrivateKB[i] = zt[n].privateKB
	}
	const idle = 3 * time.Second
	time.Sleep(idle)
	zt1, err := ztunnels()
	if err != nil {
		return nil, err
	}
	for i, n := range nodes() {
		run.IdleVCPU[i] = (zt1[n].cpu - zt[n].cpu) / idle.Seconds()
	}
	ambit := paths[1]
	for _, n := range o.held {
		fmt.Printf("workers %d: holding %d idle connections\n", workers, n)
		h, err := m.hold(ctx, ambit, n)
		if err != nil {
			return nil, err
		}
		run.Held = append(run.Held, h)
	}

	for _, p := range paths {
		run.Paths = append(run.Paths, &PathRounds{Name: p.name})
	}
	for _, q := range o.rates {
		run.Scale = append(run.Scale, &ScaleRounds{AskedQPS: q})
	}
	for r := 1; r <= o.rounds; r++ {
		for i, p := range paths {
			fmt.Printf("workers %d, round %d/%d: %s\n", workers, r, o.rounds, p.name)
			if err := m.measure(ctx, o.duration, p, run.Paths[i]); err != nil {
				return nil, fmt.Errorf("%s: %w", p.name, err)
			}
			if p.name == "ambit" {
				if err := m.scale(ctx, o.duration, p, run.Scale); err != nil {
					return nil, fmt.Errorf("%s CPU scaling: %w", p.name, err)
				}
			}
		}
	}
	return run, nil
}

// warm waits until every path answers (the servers and pairs were just
// started) with one request each.
func (m *mesh) warm(ctx context.Context, paths []path) error {
	for _, p := range paths {
		var err error
		for try := 0; try < 20; try++ {
			if _, err = m.exec(ctx, 10*time.Second, p.pod, m.t.fortio, "curl", "-quiet", p.http); err == nil {
				break
			}
			time.Sleep(500 * time.Millisecond)
		}
		if err != nil {
			return fmt.Errorf("%s path does not answer: %w", p.name, err)
		}
	}
	return nil
}
