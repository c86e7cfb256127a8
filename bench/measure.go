package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// nodes are the two ztunnels: node1 carries the client pods (outbound),
// node2 the server pods (inbound).
func nodes() [2]string { return [2]string{"node1", "node2"} }

// PathRounds holds one path's raw numbers, one entry per round.
type PathRounds struct {
	Name      string       `json:"name"`
	RTTP50us  []float64    `json:"rtt_p50_us"` // 1-byte ping-pong
	RTTP99us  []float64    `json:"rtt_p99_us"`
	QPS1000   []float64    `json:"latency_run_qps"` // achieved in the 1000 req/s run
	P50ms     []float64    `json:"p50_ms"`          // fortio, 1000 req/s, 4 connections, 1 KB
	P90ms     []float64    `json:"p90_ms"`
	P99ms     []float64    `json:"p99_ms"`
	MaxQPS    []float64    `json:"max_qps"`        // fortio, 16 connections, no limit
	NewConnMs []float64    `json:"newconn_p50_ms"` // fortio, no keep-alive, 500 req/s
	Gbps1     []float64    `json:"iperf3_1_gbps"`
	Gbps8     []float64    `json:"iperf3_8_gbps"`
	CPU1000   [2][]float64 `json:"ztunnel_vcpu_per_1000rps,omitempty"` // per node, at the 1000 req/s run (ambit)
	// ProxyCPU1000 is the L7 proxy's (waypoint or nginx) vCPU per 1000
	// req/s at the 1000 req/s run.
	ProxyCPU1000 []float64 `json:"proxy_vcpu_per_1000rps,omitempty"`
}

// ScaleRounds is ztunnel CPU at one asked rate (ambit path, 16
// connections), one entry per round.
type ScaleRounds struct {
	AskedQPS    int          `json:"asked_qps"`
	AchievedQPS []float64    `json:"achieved_qps"`
	CPU1000     [2][]float64 `json:"vcpu_per_1000rps"` // per node
}

// Held is each ztunnel's RSS with N idle connections held open.
type Held struct {
	N     int        `json:"n"`
	RSSKB [2]float64 `json:"rss_kb"`
	Open  float64    `json:"open_seconds"` // time to open them all
}

// MeshRun is everything measured on one mesh (one ztunnel worker count).
type MeshRun struct {
	Workers   int        `json:"workers"`
	IdleRSSKB [2]float64 `json:"idle_rss_kb"`
	// IdlePrivateKB is the idle ztunnels' private memory (Private_Clean +
	// Private_Dirty of smaps_rollup): RSS less the binary's pages that
	// every process mapping it shares.
	IdlePrivateKB [2]float64     `json:"idle_private_kb"`
	IdleVCPU      [2]float64     `json:"idle_vcpu"` // CPU while nothing is sent, over a few seconds
	Held          []Held         `json:"held"`
	Paths         []*PathRounds  `json:"paths"`
	Scale         []*ScaleRounds `json:"cpu_scaling"`
}

func (r *MeshRun) path(name string) *PathRounds {
	for _, p := range r.Paths {
		if p.Name == name {
			return p
		}
	}
	return nil
}

type fortioResult struct {
	ActualQPS         float64
	DurationHistogram struct {
		Count       int
		Percentiles []struct {
			Percentile float64
			Value      float64
		}
	}
}

func (r *fortioResult) percentile(p float64) float64 {
	for _, q := range r.DurationHistogram.Percentiles {
		if q.Percentile == p {
			return q.Value * 1000
		}
	}
	return 0
}

func (m *mesh) fortio(ctx context.Context, d time.Duration, pod string, args ...string) (*fortioResult, error) {
	// -r: 10 µs histogram resolution (the default, 1 ms, hides sub-ms tails).
	argv := append([]string{m.t.fortio, "load", "-quiet", "-r", "0.00001", "-json", "-", "-t", d.String()}, args...)
	out, err := m.exec(ctx, d+30*time.Second, pod, argv...)
	if err != nil {
		return nil, err
	}
	i := strings.Index(out, "{")
	if i < 0 {
		return nil, fmt.Errorf("fortio printed no JSON: %s", out)
	}
	var r fortioResult
	if err := json.NewDecoder(strings.NewReader(out[i:])).Decode(&r); err != nil {
		return nil, fmt.Errorf("fortio JSON: %w", err)
	}
	return &r, nil
}

func (m *mesh) iperf(ctx context.Context, d time.Duration, p path, streams int) (float64, error) {
	secs := strconv.Itoa(max(1, int(d.Round(time.Second).Seconds())))
	out, err := m.exec(ctx, d+30*time.Second, p.pod, "iperf3", "-c", p.iperfHost, "-p", strconv.Itoa(p.iperfPort), "-t", secs, "-P", strconv.Itoa(streams), "-J")
	if err != nil {
		return 0, err
	}
	var ip struct {
		Error string `json:"error"`
		End   struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	i := strings.Index(out, "{")
	if i < 0 {
		return 0, fmt.Errorf("iperf3 printed no JSON: %s", out)
	}
	if err := json.Unmarshal([]byte(out[i:]), &ip); err != nil {
		return 0, fmt.Errorf("iperf3 JSON: %w", err)
	}
	if ip.Error != "" {
		return 0, fmt.Errorf("iperf3 -P %d: %s", streams, ip.Error)
	}
	return ip.End.SumReceived.BitsPerSecond / 1e9, nil
}

func (m *mesh) rtt(ctx context.Context, d time.Duration, p path) (p50, p99 float64, err error) {
	out, err := m.exec(ctx, d+20*time.Second, p.pod, m.t.benchtool, "rtt", "-addr", p.echo, "-duration", d.String())
	if err != nil {
		return 0, 0, err
	}
	var r struct {
		P50 float64 `json:"p50_us"`
		P99 float64 `json:"p99_us"`
	}
	if err := json.Unmarshal([]byte(out[strings.Index(out, "{"):]), &r); err != nil {
		return 0, 0, fmt.Errorf("rtt output %q: %w", out, err)
	}
	return r.P50, r.P99, nil
}

// measure runs one round of the main columns on a path.
func (m *mesh) measure(ctx context.Context, d time.Duration, p path, res *PathRounds) error {
	if !p.l7 {
		p50, p99, err := m.rtt(ctx, d, p)
		if err != nil {
			return fmt.Errorf("1-byte RTT: %w", err)
		}
		res.RTTP50us = append(res.RTTP50us, p50)
		res.RTTP99us = append(res.RTTP99us, p99)
	}
	px0 := proxyCPU(p.proxy)
	zt0, err := ztunnels()
	if err != nil {
		return err
	}
	r, err := m.fortio(ctx, d, p.pod, "-qps", "1000", "-c", "4", "-payload-size", "1024", "-uniform", p.http)
	if err != nil {
		return fmt.Errorf("latency at 1000 req/s: %w", err)
	}
	res.QPS1000 = append(res.QPS1000, r.ActualQPS)
	res.P50ms = append(res.P50ms, r.percentile(50))
	res.P90ms = append(res.P90ms, r.percentile(90))
	res.P99ms = append(res.P99ms, r.percentile(99))
	if p.proxy != "" {
		res.ProxyCPU1000 = append(res.ProxyCPU1000, per1000(proxyCPU(p.proxy)-px0, r.DurationHistogram.Count))
	}
	if p.name == "ambit" {
		zt1, err := ztunnels()
		if err != nil {
			return err
		}
		for i, n := range nodes() {
			res.CPU1000[i] = append(res.CPU1000[i], per1000(zt1[n].cpu-zt0[n].cpu, r.DurationHistogram.Count))
		}
	}

	if r, err = m.fortio(ctx, d, p.pod, "-qps", "0", "-c", "16", p.http); err != nil {
		return fmt.Errorf("max req/s: %w", err)
	}
	res.MaxQPS = append(res.MaxQPS, r.ActualQPS)
	if r, err = m.fortio(ctx, d, p.pod, "-qps", "500", "-c", "4", "-keepalive=false", "-uniform", p.http); err != nil {
		return fmt.Errorf("new connection per request: %w", err)
	}
	res.NewConnMs = append(res.NewConnMs, r.percentile(50))
	if p.l7 {
		return nil
	}
	for _, streams := range []int{1, 8} {
		g, err := m.iperf(ctx, d, p, streams)
		if err != nil {
			return err
		}
		if streams == 1 {
			res.Gbps1 = append(res.Gbps1, g)
		} else {
			res.Gbps8 = append(res.Gbps8, g)
		}
	}
	return nil
}

// scale runs one round of fortio at each asked rate over the ambit path and
// records each ztunnel's CPU per 1000 req/s.
func (m *mesh) scale(ctx context.Context, d time.Duration, p path, res []*ScaleRounds) error {
	for _, s := range res {
		zt0, err := ztunnels()
		if err != nil {
			return err
		}
		r, err := m.fortio(ctx, d, p.pod, "-qps", strconv.Itoa(s.AskedQPS), "-c", "16", "-uniform", p.http)
		if err != nil {
			return fmt.Errorf("fortio at %d req/s: %w", s.AskedQPS, err)
		}
		zt1, err := ztunnels()
		if err != nil {
			return err
		}
		s.AchievedQPS = append(s.AchievedQPS, r.ActualQPS)
		for i, n := range nodes() {
			s.CPU1000[i] = append(s.CPU1000[i], per1000(zt1[n].cpu-zt0[n].cpu, r.DurationHistogram.Count))
		}
	}
	return nil
}

// per1000 turns CPU seconds spent on n requests into vCPU per 1000 req/s
// (which is CPU seconds per 1000 requests).
func per1000(cpuSeconds float64, n int) float64 {
	if n == 0 {
		return 0
	}
	return cpuSeconds / float64(n) * 1000
}

// hold opens n idle connections from the ambit client to the server's echo
// (through both ztunnels), reads each ztunnel's RSS while they are held,
// and closes them.
func (m *mesh) hold(ctx context.Context, p path, n int) (Held, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	cmd := m.podCmd(ctx, p.pod, m.t.benchtool, "hold", "-addr", p.echo, "-n", strconv.Itoa(n), "-timeout", "90s", "-max-hold", "2m")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return Held{}, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return Held{}, err
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return Held{}, fmt.Errorf("starting hold: %w", err)
	}
	defer func() {
		_ = stdin.Close()
		_ = cmd.Wait()
	}()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "ready") {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return Held{}, fmt.Errorf("holding %d connections: %q %v: %s", n, line, err, stderr.String())
	}
	h := Held{N: n}
	if f := strings.Fields(line); len(f) == 3 {
		h.Open, _ = strconv.ParseFloat(strings.TrimSuffix(f[2], "s"), 64)
	}
	time.Sleep(2 * time.Second) // let the ztunnels settle
	zt, err := ztunnels()
	if err != nil {
		return Held{}, err
	}
	for i, node := range nodes() {
		h.RSSKB[i] = zt[node].rssKB
	}
	_ = stdin.Close()
	if err := cmd.Wait(); err != nil {
		return h, fmt.Errorf("hold: %w: %s", err, stderr.String())
	}
	time.Sleep(2 * time.Second) // let the ztunnels tear them down
	return h, nil
}

type ztUsage struct {
	pid   int
	cpu   float64 // seconds
	rssKB float64
	// privateKB is the process's own memory, not shared with any other
	// process (smaps_rollup's Private_Clean + Private_Dirty).
	privateKB float64
}

// ztunnels returns CPU seconds used so far and VmRSS of each node's
// ztunnel, found by its command line (ambit-ztunnel --node NODE ...).
// proxyCPU is the CPU seconds used so far by the L7 proxy's processes:
// the waypoint (`ambit waypoint run`) or nginx (master and workers).
func proxyCPU(proxy string) float64 {
	if proxy == "" {
		return 0
	}
	entries, _ := os.ReadDir("/proc")
	total := 0.0
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		raw, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		args := strings.Split(string(raw), "\x00")
		switch {
		case proxy == "waypoint" && len(args) > 2 && args[1] == "waypoint" && args[2] == "run":
		case proxy == "nginx" && strings.HasPrefix(args[0], "nginx"):
		default:
			continue
		}
		stat, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if i := strings.LastIndexByte(string(stat), ')'); i > 0 {
			f := strings.Fields(string(stat)[i+2:])
			if len(f) > 12 {
				ut, _ := strconv.ParseFloat(f[11], 64)
				st, _ := strconv.ParseFloat(f[12], 64)
				total += (ut + st) / 100
			}
		}
	}
	return total
}

func ztunnels() (map[string]ztUsage, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("reading /proc: %w", err)
	}
	const tick = 100.0 // USER_HZ
	found := map[string]ztUsage{}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		raw, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		args := strings.Split(string(raw), "\x00")
		// `ambit-ztunnel --node N` (what local mode runs) or `ambit ztunnel --node N`.
		if len(args) < 4 || (filepath.Base(args[0]) != "ambit-ztunnel" && args[1] != "ztunnel") {
			continue
		}
		node := ""
		for i := 1; i+1 < len(args); i++ {
			if args[i] == "--node" {
				node = args[i+1]
			}
		}
		if node == "" {
			continue
		}
		u := ztUsage{pid: pid}
		stat, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if i := strings.LastIndexByte(string(stat), ')'); i > 0 {
			f := strings.Fields(string(stat)[i+2:])
			if len(f) > 12 {
				ut, _ := strconv.ParseFloat(f[11], 64)
				st, _ := strconv.ParseFloat(f[12], 64)
				u.cpu = (ut + st) / tick
			}
		}
		status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		for _, line := range strings.Split(string(status), "\n") {
			if strings.HasPrefix(line, "VmRSS:") {
				u.rssKB, _ = strconv.ParseFloat(strings.Fields(line)[1], 64)
			}
		}
		rollup, _ := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
		for _, line := range strings.Split(string(rollup), "\n") {
			if f := strings.Fields(line); len(f) >= 2 && (f[0] == "Private_Clean:" || f[0] == "Private_Dirty:") {
				v, _ := strconv.ParseFloat(f[1], 64)
				u.privateKB += v
			}
		}
		found[node] = u
	}
	for _, n := range nodes() {
		if _, ok := found[n]; !ok {
			return nil, errors.New("no ztunnel process for " + n)
		}
	}
	return found, nil
}
