// Command bench is Ambit's data-path benchmark harness (`make bench`). It
// brings up a local-mode mesh of two nodes and measures, in one run and
// alternating round by round, three paths between a client pod on node1
// and a server pod on node2:
//
//	direct   plain pod-to-pod TCP (a namespace outside the mesh)
//	ambit    the L4 mesh: pod -> ztunnel -> HBONE mTLS -> ztunnel -> pod
//	stunnel  a stunnel4 mutual-TLS pair on the same two pods
//
// with fortio (latency at 1000 req/s over 4 connections with 1 KB
// payloads, max req/s over 16 connections, a new connection per request at
// 500/s) and iperf3 (one stream), plus ztunnel CPU per 1000 requests and
// RSS. It prints a table of medians with ratios to direct and writes it to
// bench/results/.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/ambit-mesh/ambit/identity"
)

type options struct {
	binDir   string
	rounds   int
	duration time.Duration
	outDir   string
	stateDir string
}

func main() {
	var o options
	flag.StringVar(&o.binDir, "bin", "bin", "directory with ambit, the CNI plugins and fortio")
	flag.IntVar(&o.rounds, "rounds", 3, "rounds; the paths alternate within each round")
	flag.DurationVar(&o.duration, "duration", 5*time.Second, "length of each measurement")
	flag.StringVar(&o.outDir, "out", "bench/results", "where to write the result table")
	flag.StringVar(&o.stateDir, "state-dir", "/run/ambit/bench", "state directory of the benchmark's mesh")
	flag.Parse()
	if err := run(context.Background(), o); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

const manifests = `apiVersion: v1
kind: Namespace
metadata:
  name: mesh
  labels: {istio.io/dataplane-mode: ambient}
---
apiVersion: v1
kind: Namespace
metadata: {name: plain}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: client, namespace: mesh}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: server, namespace: mesh}
`

func pod(ns, name, node, sa string, cmd ...string) string {
	q := make([]string, len(cmd))
	for i, c := range cmd {
		q[i] = strconv.Quote(c)
	}
	acct := ""
	if sa != "" {
		acct = "\n  serviceAccountName: " + sa
	}
	return fmt.Sprintf("---\napiVersion: v1\nkind: Pod\nmetadata: {name: %s, namespace: %s}\nspec:\n  nodeName: %s%s\n  containers:\n  - name: main\n    command: [%s]\n",
		name, ns, node, acct, strings.Join(q, ", "))
}

type env struct {
	o        options
	ambit    string
	fortio   string
	stateDir string
	ips      map[string]string // ns/name -> IP
	netns    map[string]string
	procs    []*exec.Cmd
}

func (e *env) run(ctx context.Context, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, e.ambit, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("ambit %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// exec runs a command in a pod and returns its output.
func (e *env) exec(ctx context.Context, pod string, argv ...string) (string, error) {
	return e.run(ctx, append([]string{"local", "exec", "--state-dir", e.stateDir, pod, "--"}, argv...)...)
}

// background starts a long-running command in a pod.
func (e *env) background(pod string, argv ...string) error {
	cmd := exec.Command(e.ambit, append([]string{"local", "exec", "--state-dir", e.stateDir, pod, "--"}, argv...)...)
	if err := cmd.Start(); err != nil {
		return err
	}
	e.procs = append(e.procs, cmd)
	return nil
}

func run(ctx context.Context, o options) error {
	if os.Geteuid() != 0 {
		return errors.New("needs root (it builds a local mesh)")
	}
	bin, err := filepath.Abs(o.binDir)
	if err != nil {
		return err
	}
	e := &env{o: o, ambit: filepath.Join(bin, "ambit"), fortio: filepath.Join(bin, "fortio"), stateDir: o.stateDir, ips: map[string]string{}, netns: map[string]string{}}
	for _, tool := range []string{e.ambit, e.fortio} {
		if _, err := os.Stat(tool); err != nil {
			return fmt.Errorf("%s missing: run `make build bench-tools`", tool)
		}
	}
	for _, tool := range []string{"iperf3", "stunnel4"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s missing: run ./scripts/install-deps.sh", tool)
		}
	}
	cfg, err := os.MkdirTemp("", "ambit-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(cfg)
	m := manifests
	for _, ns := range []string{"mesh", "plain"} {
		sa := ""
		if ns == "mesh" {
			sa = "server"
		}
		m += pod(ns, "server", "node2", sa, e.fortio, "server", "-http-port", "8080", "-grpc-port", "disabled", "-redirect-port", "disabled", "-loglevel", "Warning")
		if ns == "mesh" {
			sa = "client"
		}
		m += pod(ns, "client", "node1", sa, e.ambit, "sample", "tcp-echo", "--port", "9000")
	}
	if err := os.WriteFile(filepath.Join(cfg, "bench.yaml"), []byte(m), 0o644); err != nil {
		return err
	}
	fmt.Println("bringing up the benchmark mesh ...")
	if _, err := e.run(ctx, "local", "up", "-f", cfg, "--state-dir", e.stateDir); err != nil {
		return err
	}
	defer func() {
		for _, p := range e.procs {
			_ = p.Process.Kill()
			_ = p.Wait()
		}
		_, _ = e.run(context.Background(), "local", "down", "--state-dir", e.stateDir)
	}()
	out, err := e.run(ctx, "local", "status", "-o", "json", "--state-dir", e.stateDir)
	if err != nil {
		return err
	}
	var st struct {
		Pods []struct{ Namespace, Name, IP, Netns string } `json:"pods"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		return err
	}
	for _, p := range st.Pods {
		e.ips[p.Namespace+"/"+p.Name] = p.IP
		e.netns[p.Namespace+"/"+p.Name] = p.Netns
	}
	// iperf3 servers, and the stunnel pair between the plain pods.
	for _, p := range []string{"plain/server", "mesh/server"} {
		if err := e.background(p, "iperf3", "-s", "-p", "5201"); err != nil {
			return err
		}
	}
	if err := e.startStunnel(cfg); err != nil {
		return fmt.Errorf("stunnel: %w", err)
	}
	time.Sleep(time.Second)

	paths := []path{
		{name: "direct", pod: "plain/client", http: "http://" + e.ips["plain/server"] + ":8080/echo", iperfHost: e.ips["plain/server"], iperfPort: "5201"},
		{name: "ambit", pod: "mesh/client", http: "http://" + e.ips["mesh/server"] + ":8080/echo", iperfHost: e.ips["mesh/server"], iperfPort: "5201"},
		{name: "stunnel", pod: "plain/client", http: "http://127.0.0.1:18080/echo", iperfHost: "127.0.0.1", iperfPort: "15201"},
	}
	results := map[string]*pathResult{}
	for _, p := range paths {
		results[p.name] = &pathResult{}
	}
	for r := 1; r <= o.rounds; r++ {
		for _, p := range paths {
			fmt.Printf("round %d/%d: %s\n", r, o.rounds, p.name)
			if err := e.measure(ctx, p, results[p.name]); err != nil {
				return fmt.Errorf("%s: %w", p.name, err)
			}
		}
	}
	table := render(o, paths, results)
	fmt.Print(table)
	if err := os.MkdirAll(o.outDir, 0o755); err != nil {
		return err
	}
	file := filepath.Join(o.outDir, time.Now().UTC().Format("2006-01-02T15-04-05Z")+".md")
	if err := os.WriteFile(file, []byte(table), 0o644); err != nil {
		return err
	}
	fmt.Println("written to", file)
	return nil
}

type path struct {
	name, pod, http, iperfHost, iperfPort string
}

type pathResult struct {
	p50, p90, p99 []float64 // ms at 1000 qps
	maxQPS        []float64
	newConnP50    []float64 // ms, a connection per request at 500/s
	gbps          []float64
	cpuPer1000    []float64 // ztunnel CPU seconds per 1000 requests (both ztunnels)
	rssKB         []float64 // ztunnel RSS after the run (both)
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

func (e *env) runFortio(ctx context.Context, pod string, args ...string) (*fortioResult, error) {
	// -r: 10 µs histogram resolution (the default, 1 ms, hides sub-ms tails).
	out, err := e.exec(ctx, pod, append([]string{e.fortio, "load", "-quiet", "-r", "0.00001", "-json", "-"}, args...)...)
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

func (r *fortioResult) percentile(p float64) float64 {
	for _, q := range r.DurationHistogram.Percentiles {
		if q.Percentile == p {
			return q.Value * 1000
		}
	}
	return 0
}

func (e *env) measure(ctx context.Context, p path, res *pathResult) error {
	d := e.o.duration.String()
	var cpu0 float64
	if p.name == "ambit" {
		cpu0, _ = ztunnelUsage()
	}
	r, err := e.runFortio(ctx, p.pod, "-qps", "1000", "-c", "4", "-t", d, "-payload-size", "1024", "-uniform", p.http)
	if err != nil {
		return err
	}
	res.p50 = append(res.p50, r.percentile(50))
	res.p90 = append(res.p90, r.percentile(90))
	res.p99 = append(res.p99, r.percentile(99))
	if p.name == "ambit" {
		cpu1, rss := ztunnelUsage()
		if n := r.DurationHistogram.Count; n > 0 {
			res.cpuPer1000 = append(res.cpuPer1000, (cpu1-cpu0)/float64(n)*1000)
		}
		res.rssKB = append(res.rssKB, rss)
	}
	r, err = e.runFortio(ctx, p.pod, "-qps", "0", "-c", "16", "-t", d, p.http)
	if err != nil {
		return err
	}
	res.maxQPS = append(res.maxQPS, r.ActualQPS)
	r, err = e.runFortio(ctx, p.pod, "-qps", "500", "-c", "4", "-t", d, "-keepalive=false", "-uniform", p.http)
	if err != nil {
		return err
	}
	res.newConnP50 = append(res.newConnP50, r.percentile(50))
	out, err := e.exec(ctx, p.pod, "iperf3", "-c", p.iperfHost, "-p", p.iperfPort, "-t", strconv.Itoa(int(e.o.duration.Seconds())), "-J")
	if err != nil {
		return err
	}
	var ip struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal([]byte(out[strings.Index(out, "{"):]), &ip); err != nil {
		return fmt.Errorf("iperf3 JSON: %w", err)
	}
	res.gbps = append(res.gbps, ip.End.SumReceived.BitsPerSecond/1e9)
	return nil
}

// ztunnelUsage returns the CPU seconds used so far and the RSS (KB) of
// every ztunnel process.
func ztunnelUsage() (cpu, rssKB float64) {
	entries, _ := os.ReadDir("/proc")
	tick := 100.0 // USER_HZ
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if !strings.Contains(string(cmd), "ztunnel\x00--node") || strings.Contains(string(cmd), "nsexec") {
			continue
		}
		stat, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if i := strings.LastIndexByte(string(stat), ')'); i > 0 {
			f := strings.Fields(string(stat)[i+2:])
			if len(f) > 12 {
				u, _ := strconv.ParseFloat(f[11], 64)
				s, _ := strconv.ParseFloat(f[12], 64)
				cpu += (u + s) / tick
			}
		}
		status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		for _, line := range strings.Split(string(status), "\n") {
			if strings.HasPrefix(line, "VmRSS:") {
				v, _ := strconv.ParseFloat(strings.Fields(line)[1], 64)
				rssKB += v
			}
		}
	}
	return cpu, rssKB
}

// startStunnel runs a mutual-TLS stunnel pair: a client side in
// plain/client (127.0.0.1:18080 and :15201) and a server side in
// plain/server in front of fortio and iperf3.
func (e *env) startStunnel(dir string) error {
	auth, err := identity.NewRootAuthority("bench.local", 24*time.Hour, time.Now())
	if err != nil {
		return err
	}
	write := func(name string, id identity.SPIFFE) (string, string, error) {
		cert, err := auth.IssueTLS(id, 24*time.Hour, time.Now(), nil)
		if err != nil {
			return "", "", err
		}
		certPath, keyPath := filepath.Join(dir, name+"-cert.pem"), filepath.Join(dir, name+"-key.pem")
		if err := writeTLS(cert, certPath, keyPath); err != nil {
			return "", "", err
		}
		return certPath, keyPath, nil
	}
	caPath := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caPath, identity.EncodeCerts(auth.Root()), 0o644); err != nil {
		return err
	}
	sc, sk, err := write("server", identity.SPIFFE{TrustDomain: "bench.local", Namespace: "plain", ServiceAccount: "server"})
	if err != nil {
		return err
	}
	cc, ck, err := write("client", identity.SPIFFE{TrustDomain: "bench.local", Namespace: "plain", ServiceAccount: "client"})
	if err != nil {
		return err
	}
	common := "foreground = yes\npid =\nsslVersionMin = TLSv1.3\nverifyChain = yes\nCAfile = %s\ncert = %s\nkey = %s\nsocket = l:TCP_NODELAY=1\nsocket = r:TCP_NODELAY=1\n"
	server := fmt.Sprintf(common, caPath, sc, sk) +
		"[http]\naccept = 8443\nconnect = 127.0.0.1:8080\n[iperf]\naccept = 5202\nconnect = 127.0.0.1:5201\n"
	client := fmt.Sprintf(common, caPath, cc, ck) +
		fmt.Sprintf("client = yes\n[http]\naccept = 127.0.0.1:18080\nconnect = %s:8443\n[iperf]\naccept = 127.0.0.1:15201\nconnect = %s:5202\n", e.ips["plain/server"], e.ips["plain/server"])
	for name, conf := range map[string]string{"plain/server": server, "plain/client": client} {
		path := filepath.Join(dir, strings.ReplaceAll(name, "/", "-")+".conf")
		if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
			return err
		}
		if err := e.background(name, "stunnel4", path); err != nil {
			return err
		}
	}
	return nil
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[len(s)/2]
}

func render(o options, paths []path, res map[string]*pathResult) string {
	d := res["direct"]
	var b strings.Builder
	fmt.Fprintf(&b, "# Ambit L4 benchmark, %s\n\n", time.Now().UTC().Format(time.RFC3339))
	fmt.Fprintf(&b, "Two local-mode nodes (network namespaces joined by an underlay bridge), client pod on node1, server pod on node2; %d rounds of %s per measurement, paths alternating; medians over rounds. Latency: fortio, 1000 req/s over 4 connections, 1 KB payload. Max: fortio, 16 connections, no rate limit. New connection: fortio without keep-alive at 500 req/s. Throughput: iperf3, one stream.\n\n", o.rounds, o.duration)
	fmt.Fprintf(&b, "| path | p50 ms (+ vs direct) | p90 ms | p99 ms (+ vs direct) | max req/s (x direct) | new conn p50 ms (+) | iperf3 Gbit/s (x direct) |\n|---|---|---|---|---|---|---|\n")
	for _, p := range paths {
		r := res[p.name]
		fmt.Fprintf(&b, "| %s | %.3f (%+.3f) | %.3f | %.3f (%+.3f) | %.0f (%.2f) | %.3f (%+.3f) | %.2f (%.2f) |\n", p.name,
			median(r.p50), median(r.p50)-median(d.p50), median(r.p90), median(r.p99), median(r.p99)-median(d.p99),
			median(r.maxQPS), median(r.maxQPS)/median(d.maxQPS), median(r.newConnP50), median(r.newConnP50)-median(d.newConnP50),
			median(r.gbps), median(r.gbps)/median(d.gbps))
	}
	a := res["ambit"]
	fmt.Fprintf(&b, "\nztunnel (both nodes together): %.4f CPU-seconds per 1000 requests at 1000 req/s (= %.3f vCPU per 1000 req/s), RSS %.1f MB total after the run.\n",
		median(a.cpuPer1000), median(a.cpuPer1000), median(a.rssKB)/1024)
	return b.String()
}

func writeTLS(cert *tls.Certificate, certPath, keyPath string) error {
	var chain []byte
	for _, der := range cert.Certificate {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		return err
	}
	if err := os.WriteFile(certPath, chain, 0o644); err != nil {
		return err
	}
	return os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600)
}
