package main

import (
	"fmt"
	"sort"
	"strings"
	"time"
)

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[len(s)/2]
}

func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

// row is a line of the main table: a path of one mesh run, and the direct
// path of the same run for the ratios.
type row struct {
	label     string
	p, direct *PathRounds
}

func rows(res *Results) []row {
	var out []row
	for i, r := range res.Runs {
		d := r.path("direct")
		for _, p := range r.Paths {
			switch {
			case p.Name == "waypoint" || p.Name == "nginx":
				continue // the L7 table's
			case p.Name == "direct" && i > 0:
				continue // the reference for this run's ambit row only
			case p.Name == "ambit":
				out = append(out, row{label: fmt.Sprintf("ambit (w%d)", r.Workers), p: p, direct: d})
			default:
				out = append(out, row{label: p.Name, p: p, direct: d})
			}
		}
	}
	// direct, ambit rows, then the peers.
	order := func(r row) int {
		switch {
		case r.p.Name == "direct":
			return 0
		case r.p.Name == "ambit":
			return 1
		}
		return 2
	}
	sort.SliceStable(out, func(i, j int) bool { return order(out[i]) < order(out[j]) })
	return out
}

func render(res *Results) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# Ambit L4 benchmark, %s\n\n", res.Started.Format(time.RFC3339))
	workers := make([]string, len(res.Runs))
	for i, r := range res.Runs {
		workers[i] = fmt.Sprint(r.Workers)
	}
	fmt.Fprintf(&b, "Two local-mode nodes (network namespaces joined by an underlay bridge) on a shared 2-vCPU machine, client pod on node1, server pod on node2. "+
		"Paths: direct pod-to-pod TCP; ambit (pod, ztunnel on node1, HBONE mTLS, ztunnel on node2, pod) with ztunnel `--workers` %s, each on its own mesh; "+
		"a stunnel4 mutual-TLS pair and upstream Istio's Go HBONE client and server (`istio.io/istio/pkg/hbone`, mTLS, HTTP/2 CONNECT) between the plain pods. "+
		"%d rounds of %s per measurement, paths alternating within each round; every figure is the median over rounds, and ratios use the direct path of the same mesh run. "+
		"1-byte RTT: one TCP connection, one byte echoed back and forth for %s (ambit-benchtool). Latency: fortio at 1000 req/s over 4 connections, 1 KB payload. "+
		"Max: fortio, 16 connections, no rate limit. New connection: fortio without keep-alive at 500 req/s. Throughput: iperf3 with 1 and 8 parallel streams. "+
		"CPU: each ztunnel's utime+stime from /proc over the fortio run divided by the requests served (CPU seconds per 1000 requests = vCPU per 1000 req/s), 16 connections for the scaling table. "+
		"Memory: each ztunnel's VmRSS right after the mesh is up and one request has crossed every path, then with %s idle connections held open through both ztunnels (one byte exchanged on each first); bytes per connection = RSS delta / N. "+
		"Idle vCPUs: %s (0: a halted vCPU wakes through the hypervisor, which every wake-up of a proxy pays). "+
		"Whole run: %.0f s. Raw per-round numbers: the .json file beside this one.\n\n",
		strings.Join(workers, " and "), res.Rounds, res.Duration, res.Duration, heldCounts(res), res.CPUIdle, res.Elapsed)

	b.WriteString("## Paths\n\n")
	b.WriteString("| path | 1-byte RTT p50 / p99 µs (x direct) | p50 ms (+ vs direct) | p90 ms (+) | p99 ms (+) | max req/s (x direct) | new conn p50 ms (+) | iperf3 1 stream Gbit/s (x) | iperf3 8 streams Gbit/s (x) |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range rows(res) {
		p, d := r.p, r.direct
		fmt.Fprintf(&b, "| %s | %.0f / %.0f (%.2f / %.2f) | %.3f (%+.3f) | %.3f (%+.3f) | %.3f (%+.3f) | %.0f (%.2f) | %.3f (%+.3f) | %.2f (%.2f) | %.2f (%.2f) |\n", r.label,
			median(p.RTTP50us), median(p.RTTP99us), ratio(median(p.RTTP50us), median(d.RTTP50us)), ratio(median(p.RTTP99us), median(d.RTTP99us)),
			median(p.P50ms), median(p.P50ms)-median(d.P50ms),
			median(p.P90ms), median(p.P90ms)-median(d.P90ms),
			median(p.P99ms), median(p.P99ms)-median(d.P99ms),
			median(p.MaxQPS), ratio(median(p.MaxQPS), median(d.MaxQPS)),
			median(p.NewConnMs), median(p.NewConnMs)-median(d.NewConnMs),
			median(p.Gbps1), ratio(median(p.Gbps1), median(d.Gbps1)),
			median(p.Gbps8), ratio(median(p.Gbps8), median(d.Gbps8)))
	}
	if len(res.Runs) > 1 {
		b.WriteString("\nDirect in the later mesh runs (reference for their ambit rows):")
		for _, r := range res.Runs[1:] {
			d := r.path("direct")
			fmt.Fprintf(&b, " w%d run: RTT p50 %.0f µs, p99 at 1000 req/s %.3f ms, max %.0f req/s, iperf3 %.2f / %.2f Gbit/s.", r.Workers,
				median(d.RTTP50us), median(d.P99ms), median(d.MaxQPS), median(d.Gbps1), median(d.Gbps8))
		}
		b.WriteString("\n")
	}

	b.WriteString(l7Table(res))
	b.WriteString("\n## ztunnel CPU as the rate grows (ambit path)\n\n")
	b.WriteString("| workers | req/s asked | req/s achieved | node1 (outbound) vCPU per 1000 req/s | node2 (inbound) vCPU per 1000 req/s |\n|---|---|---|---|---|\n")
	for _, r := range res.Runs {
		a := r.path("ambit")
		fmt.Fprintf(&b, "| %d | 1000 (latency run: 4 conns, 1 KB) | %.0f | %.4f | %.4f |\n", r.Workers, median(a.QPS1000), median(a.CPU1000[0]), median(a.CPU1000[1]))
		for _, s := range r.Scale {
			got := median(s.AchievedQPS)
			note := ""
			if got < 0.95*float64(s.AskedQPS) {
				note = " (path maximum: the rate asked was not reached)"
			}
			fmt.Fprintf(&b, "| %d | %d | %.0f%s | %.4f | %.4f |\n", r.Workers, s.AskedQPS, got, note, median(s.CPU1000[0]), median(s.CPU1000[1]))
		}
	}
	b.WriteString("\nIdle ztunnel CPU (nothing sent, 3 s):")
	for _, r := range res.Runs {
		fmt.Fprintf(&b, " w%d node1 %.3f, node2 %.3f vCPU;", r.Workers, r.IdleVCPU[0], r.IdleVCPU[1])
	}
	b.WriteString(" it is part of every CPU figure above.\n")
	for _, r := range res.Runs {
		if len(r.Scale) < 2 {
			continue
		}
		first, last := r.Scale[0], r.Scale[len(r.Scale)-1]
		fmt.Fprintf(&b, "\nLinearity, workers %d: the cost per 1000 req/s at %.0f req/s achieved is %.2fx (node1) and %.2fx (node2) the cost at %.0f req/s (1.00x = linear; below 1 = cheaper per request under load).",
			r.Workers, median(last.AchievedQPS), ratio(median(last.CPU1000[0]), median(first.CPU1000[0])), ratio(median(last.CPU1000[1]), median(first.CPU1000[1])), median(first.AchievedQPS))
	}
	b.WriteString("\n")

	b.WriteString("\n## ztunnel memory (ambit path, idle connections held through both ztunnels)\n\n")
	b.WriteString("| workers | ztunnel | RSS idle MB (private MB) |")
	held := res.Runs[0].Held
	for _, h := range held {
		fmt.Fprintf(&b, " RSS, %d held MB | bytes per connection |", h.N)
	}
	b.WriteString("\n|---|---|---|" + strings.Repeat("---|---|", len(held)) + "\n")
	for _, r := range res.Runs {
		for i, n := range nodes() {
			dir := "outbound"
			if i == 1 {
				dir = "inbound"
			}
			fmt.Fprintf(&b, "| %d | %s (%s) | %.1f (%.1f) |", r.Workers, n, dir, r.IdleRSSKB[i]/1024, r.IdlePrivateKB[i]/1024)
			for _, h := range r.Held {
				fmt.Fprintf(&b, " %.1f | %.0f |", h.RSSKB[i]/1024, perConn(h, r.IdleRSSKB[i], i))
			}
			b.WriteString("\n")
		}
	}
	b.WriteString("\nOpening them took:")
	for _, r := range res.Runs {
		for _, h := range r.Held {
			fmt.Fprintf(&b, " w%d %d in %.1f s;", r.Workers, h.N, h.Open)
		}
	}
	b.WriteString(" one measurement each (memory is not noisy the way latency is). Private memory is RSS less the pages of the binary that every process mapping it shares.\n")

	b.WriteString("\n## Targets\n\n")
	b.WriteString(targets(res))
	return b.String()
}

func heldCounts(res *Results) string {
	var s []string
	for _, h := range res.Runs[0].Held {
		s = append(s, fmt.Sprintf("%d", h.N))
	}
	return strings.Join(s, " and ")
}

func perConn(h Held, idleKB float64, node int) float64 {
	if h.N == 0 {
		return 0
	}
	return (h.RSSKB[node] - idleKB) * 1024 / float64(h.N)
}

// target is one line of the targets table: a figure of a mesh run and
// whether it is met.
type target struct {
	figure, goal string
	value        func(r *MeshRun) (string, bool)
}

func targets(res *Results) string {
	amb := func(r *MeshRun) (a, d *PathRounds) { return r.path("ambit"), r.path("direct") }
	perNode := func(v [2]float64, format string, ok func(float64) bool) (string, bool) {
		return fmt.Sprintf("node1 "+format+", node2 "+format, v[0], v[1]), ok(v[0]) && ok(v[1])
	}
	list := []target{
		{"iperf3 one stream, x direct", ">= 0.50", func(r *MeshRun) (string, bool) {
			a, d := amb(r)
			x := ratio(median(a.Gbps1), median(d.Gbps1))
			return fmt.Sprintf("%.2f", x), x >= 0.50
		}},
		{"added p99 at 1000 req/s (fortio, 1 KB, 4 connections)", "<= +0.15 ms", func(r *MeshRun) (string, bool) {
			a, d := amb(r)
			v := median(a.P99ms) - median(d.P99ms)
			return fmt.Sprintf("%+.3f ms", v), v <= 0.15
		}},
		{"max req/s, 16 connections, x direct", ">= 0.45", func(r *MeshRun) (string, bool) {
			a, d := amb(r)
			x := ratio(median(a.MaxQPS), median(d.MaxQPS))
			return fmt.Sprintf("%.2f", x), x >= 0.45
		}},
		{"a new connection per request at 500/s, added p50", "<= +0.30 ms", func(r *MeshRun) (string, bool) {
			a, d := amb(r)
			v := median(a.NewConnMs) - median(d.NewConnMs)
			return fmt.Sprintf("%+.3f ms", v), v <= 0.30
		}},
		{"ztunnel CPU per 1000 req/s at 1000 req/s (latency run), per ztunnel", "<= 0.05 vCPU", func(r *MeshRun) (string, bool) {
			a, _ := amb(r)
			return perNode([2]float64{median(a.CPU1000[0]), median(a.CPU1000[1])}, "%.4f", func(v float64) bool { return v <= 0.05 })
		}},
		{"ztunnel RSS idle (bench pods, warmed by one request), per ztunnel", "<= 15 MB", func(r *MeshRun) (string, bool) {
			return perNode([2]float64{r.IdleRSSKB[0] / 1024, r.IdleRSSKB[1] / 1024}, "%.1f MB", func(v float64) bool { return v <= 15 })
		}},
		{"ztunnel memory per open idle connection (most held), per ztunnel", "<= 4 KB", func(r *MeshRun) (string, bool) {
			if len(r.Held) == 0 {
				return "not measured", false
			}
			h := r.Held[len(r.Held)-1]
			v := [2]float64{perConn(h, r.IdleRSSKB[0], 0) / 1024, perConn(h, r.IdleRSSKB[1], 1) / 1024}
			s, ok := perNode(v, "%.2f KB", func(v float64) bool { return v <= 4 })
			return fmt.Sprintf("%s (%d held)", s, h.N), ok
		}},
		{"1-byte round trip through both ztunnels (p50), x direct", "<= 3x", func(r *MeshRun) (string, bool) {
			a, d := amb(r)
			x := ratio(median(a.RTTP50us), median(d.RTTP50us))
			return fmt.Sprintf("%.2fx", x), x <= 3
		}},
	}
	var b strings.Builder
	b.WriteString("| figure | target |")
	sep := "|---|---|"
	for _, r := range res.Runs {
		fmt.Fprintf(&b, " ambit w%d | met? |", r.Workers)
		sep += "---|---|"
	}
	b.WriteString("\n" + sep + "\n")
	for _, t := range list {
		fmt.Fprintf(&b, "| %s | %s |", t.figure, t.goal)
		for _, r := range res.Runs {
			v, ok := t.value(r)
			met := "not met"
			if ok {
				met = "met"
			}
			fmt.Fprintf(&b, " %s | %s |", v, met)
		}
		b.WriteString("\n")
	}
	return b.String()
}

// l7Table compares the waypoint path (client, ztunnel, waypoint, ztunnel,
// server) with nginx in the same role (client, nginx, server, plaintext):
// each proxy's added cost is against the path it adds a hop to (the
// ambit L4 path for the waypoint, direct for nginx).
func l7Table(res *Results) string {
	if len(res.Runs) == 0 {
		return ""
	}
	r := res.Runs[0]
	wp, ngx, amb, d := r.path("waypoint"), r.path("nginx"), r.path("ambit"), r.path("direct")
	if wp == nil || ngx == nil || amb == nil || d == nil {
		return ""
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\n## L7 proxies (w%d mesh): the waypoint beside nginx in the same role\n\n", r.Workers)
	b.WriteString("The waypoint path is client, ztunnel, waypoint, ztunnel, server (HBONE mTLS on each hop); nginx is client, nginx, server in plaintext, its pod on node1 where the waypoint runs. Added per L7 hop: the waypoint path less the ambit L4 path, nginx less direct.\n\n")
	b.WriteString("| path | p50 ms | p99 ms | added p99 per L7 hop ms | max req/s | new conn p50 ms | proxy vCPU per 1000 req/s |\n|---|---|---|---|---|---|---|\n")
	for _, x := range []struct {
		name     string
		p, under *PathRounds
	}{{"waypoint", wp, amb}, {"nginx", ngx, d}} {
		fmt.Fprintf(&b, "| %s | %.3f | %.3f | %+.3f | %.0f | %.3f | %.3f |\n", x.name, median(x.p.P50ms), median(x.p.P99ms),
			median(x.p.P99ms)-median(x.under.P99ms), median(x.p.MaxQPS), median(x.p.NewConnMs), median(x.p.ProxyCPU1000))
	}
	added := median(wp.P99ms) - median(amb.P99ms)
	cpu := median(wp.ProxyCPU1000)
	b.WriteString("\n| waypoint target | goal | measured | met? |\n|---|---|---|---|\n")
	fmt.Fprintf(&b, "| added p99 per L7 hop at 1000 req/s | <= +0.4 ms | %+.3f ms | %s |\n", added, metStr(added <= 0.4))
	fmt.Fprintf(&b, "| waypoint vCPU per 1000 req/s | <= 0.2 | %.3f | %s |\n", cpu, metStr(cpu <= 0.2))
	fmt.Fprintf(&b, "| max req/s, at least nginx's | >= %.0f | %.0f | %s |\n", median(ngx.MaxQPS), median(wp.MaxQPS), metStr(median(wp.MaxQPS) >= median(ngx.MaxQPS)))
	return b.String()
}

func metStr(ok bool) string {
	if ok {
		return "met"
	}
	return "not met"
}
