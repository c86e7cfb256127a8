package samples

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ClientConfig says what the load client sends.
type ClientConfig struct {
	// URL is the target: http://host:port/path, h2c://host:port/path
	// (HTTP/2 with prior knowledge), grpc://host:port (the echo server's
	// Echo RPC), tcp://host:port (one line, echoed back by tcp-echo) or
	// banner://host:port (greeting, one line, QUIT).
	URL         string
	Requests    int           // total requests (0: 1)
	Concurrency int           // requests in flight (0: 1)
	Timeout     time.Duration // per request, connecting included (0: DefaultTimeout)
	Interval    time.Duration // pause between two requests of one worker
	Payload     int           // bytes sent with each request: HTTP POST body, gRPC field, TCP or banner line
	NewConn     bool          // open a new connection for every request
	// Headers are added to HTTP requests (gRPC: sent as metadata). "Host"
	// sets the HTTP Host header or the gRPC :authority.
	Headers http.Header
}

// Result is the outcome of one request.
type Result struct {
	Seq     int           `json:"seq"`              // 1-based
	Code    string        `json:"code"`             // HTTP status ("200"), gRPC code ("OK", "Unavailable"), "ok", or "error"
	Pod     string        `json:"pod,omitempty"`    // the pod that answered, as it reported itself
	Source  string        `json:"source,omitempty"` // the source address the server saw, ip:port
	Bytes   int64         `json:"bytes"`            // bytes received: HTTP body, echoed TCP bytes, banner bytes
	Latency time.Duration `json:"-"`
	Micros  int64         `json:"latencyMicros"`
	Err     string        `json:"error,omitempty"`
}

// Failed reports whether the request failed: a transport or protocol error,
// an HTTP 5xx, or a gRPC status other than OK.
func (r *Result) Failed() bool {
	if r.Err != "" || r.Code == "error" {
		return true
	}
	if n, err := strconv.Atoi(r.Code); err == nil {
		return n >= 500
	}
	return r.Code != "ok" && r.Code != "OK"
}

// Summary aggregates the results of a run. It is what `ambit sample client
// -o json` prints.
type Summary struct {
	Target        string         `json:"target"`
	Requests      int            `json:"requests"` // requests made (fewer than asked if interrupted)
	Errors        int            `json:"errors"`   // requests that Failed
	Codes         map[string]int `json:"codes"`    // Result.Code -> count
	Pods          map[string]int `json:"pods"`     // responding pod -> count
	Sources       map[string]int `json:"sources"`  // source IP the servers reported (no port) -> count
	Latency       LatencySummary `json:"latencyMicros"`
	ElapsedMicros int64          `json:"elapsedMicros"` // wall time of the whole run
	Results       []Result       `json:"results,omitempty"`
}

// LatencySummary holds latency quantiles (nearest rank) in microseconds.
type LatencySummary struct {
	Min int64 `json:"min"`
	P50 int64 `json:"p50"`
	P90 int64 `json:"p90"`
	P99 int64 `json:"p99"`
	Max int64 `json:"max"`
}

// DefaultTimeout is the per-request timeout when ClientConfig.Timeout is 0.
const DefaultTimeout = 2 * time.Second

// maxPayload bounds ClientConfig.Payload.
const maxPayload = 256 << 20

// requester makes one request of a kind.
type requester interface {
	do(ctx context.Context, seq int) Result
	close()
}

// Run sends cfg.Requests requests, cfg.Concurrency at a time, and returns
// the summary. onResult, if set, is called as each result arrives, one call
// at a time. If ctx ends early, Run stops starting requests and summarises
// the ones made; the caller tells an interruption by ctx.Err().
func Run(ctx context.Context, cfg ClientConfig, onResult func(Result)) (*Summary, error) {
	switch {
	case cfg.Requests < 0:
		return nil, fmt.Errorf("client: requests %d: want at least 1", cfg.Requests)
	case cfg.Concurrency < 0:
		return nil, fmt.Errorf("client: concurrency %d: want at least 1", cfg.Concurrency)
	case cfg.Timeout < 0:
		return nil, fmt.Errorf("client: timeout %s is negative", cfg.Timeout)
	case cfg.Interval < 0:
		return nil, fmt.Errorf("client: interval %s is negative", cfg.Interval)
	case cfg.Payload < 0 || cfg.Payload > maxPayload:
		return nil, fmt.Errorf("client: payload %d: want 0 to %d bytes", cfg.Payload, maxPayload)
	}
	if cfg.Requests == 0 {
		cfg.Requests = 1
	}
	if cfg.Concurrency == 0 {
		cfg.Concurrency = 1
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	cfg.Concurrency = min(cfg.Concurrency, cfg.Requests)
	u, err := url.Parse(cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("client: target %q: %w", cfg.URL, err)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("client: target %q has no host:port", cfg.URL)
	}
	req, err := newRequester(u, cfg)
	if err != nil {
		return nil, err
	}
	defer req.close()

	start := time.Now()
	results := make([]Result, cfg.Requests)
	made := make([]bool, cfg.Requests)
	jobs := make(chan int)
	go func() {
		defer close(jobs)
		for i := range cfg.Requests {
			select {
			case jobs <- i:
			case <-ctx.Done():
				return
			}
		}
	}()
	var (
		wg    sync.WaitGroup
		outMu sync.Mutex
	)
	for range cfg.Concurrency {
		wg.Go(func() {
			for i := range jobs {
				if ctx.Err() != nil {
					continue // drain: the feeder stops soon
				}
				rctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
				t0 := time.Now()
				r := req.do(rctx, i+1)
				cancel()
				r.Seq = i + 1
				r.Latency = time.Since(t0)
				r.Micros = r.Latency.Microseconds()
				results[i], made[i] = r, true
				if onResult != nil {
					outMu.Lock()
					onResult(r)
					outMu.Unlock()
				}
				if cfg.Interval > 0 {
					t := time.NewTimer(cfg.Interval)
					select {
					case <-t.C:
					case <-ctx.Done():
						t.Stop()
					}
				}
			}
		})
	}
	wg.Wait()
	var done []Result
	for i, r := range results {
		if made[i] {
			done = append(done, r)
		}
	}
	sum := summarize(cfg.URL, done)
	sum.ElapsedMicros = time.Since(start).Microseconds()
	return sum, nil
}

func summarize(target string, results []Result) *Summary {
	s := &Summary{Target: target, Requests: len(results), Codes: map[string]int{}, Pods: map[string]int{},
		Sources: map[string]int{}, Results: results}
	lat := make([]int64, 0, len(results))
	for _, r := range results {
		s.Codes[r.Code]++
		if r.Failed() {
			s.Errors++
		}
		if r.Pod != "" {
			s.Pods[r.Pod]++
		}
		if r.Source != "" {
			ip := r.Source
			if h, _, err := net.SplitHostPort(r.Source); err == nil {
				ip = h
			}
			s.Sources[ip]++
		}
		lat = append(lat, r.Latency.Microseconds())
	}
	if len(lat) > 0 {
		sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
		s.Latency = LatencySummary{Min: lat[0], P50: quantile(lat, 0.5), P90: quantile(lat, 0.9),
			P99: quantile(lat, 0.99), Max: lat[len(lat)-1]}
	}
	return s
}

// quantile returns the nearest-rank q-quantile of sorted, which is not empty.
func quantile(sorted []int64, q float64) int64 {
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// WriteText prints the summary for people.
func (s *Summary) WriteText(w io.Writer) error {
	l := s.Latency
	_, err := fmt.Fprintf(w, "target %s: %d requests, %d failed, %s\n  codes:   %s\n  pods:    %s\n  sources: %s\n  latency: min %s  p50 %s  p90 %s  p99 %s  max %s\n",
		s.Target, s.Requests, s.Errors, us(s.ElapsedMicros), countList(s.Codes), countList(s.Pods), countList(s.Sources),
		us(l.Min), us(l.P50), us(l.P90), us(l.P99), us(l.Max))
	return err
}

func us(v int64) string { return (time.Duration(v) * time.Microsecond).String() }

// countList prints a count map as "a x2, b x1", keys sorted.
func countList(m map[string]int) string {
	if len(m) == 0 {
		return "-"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s x%d", k, m[k])
	}
	return strings.Join(parts, ", ")
}

// FormatResult prints one result as a line:
// "#3 200 pod=echo-1 source=10.244.1.5:43210 1.234ms".
func FormatResult(r Result) string {
	var b strings.Builder
	fmt.Fprintf(&b, "#%d %s", r.Seq, r.Code)
	if r.Pod != "" {
		b.WriteString(" pod=" + r.Pod)
	}
	if r.Source != "" {
		b.WriteString(" source=" + r.Source)
	}
	b.WriteString(" " + r.Latency.Truncate(time.Microsecond).String())
	if r.Err != "" {
		b.WriteString(" error=" + r.Err)
	}
	return b.String()
}

// ParseHeader parses a "Name: value" header flag.
func ParseHeader(s string) (name, value string, err error) {
	name, value, ok := strings.Cut(s, ":")
	name = strings.TrimSpace(name)
	if !ok || name == "" || strings.ContainsAny(name, " \t\r\n") || strings.ContainsAny(value, "\r\n") {
		return "", "", fmt.Errorf("header %q: want \"Name: value\"", s)
	}
	return name, strings.TrimSpace(value), nil
}

// decodeReply finds the pod and source in an HTTP answer: the echo
// server's headers, else its text or JSON body (up to head bytes of it).
func decodeReply(h http.Header, head []byte) (pod, source string) {
	if pod = h.Get(HeaderPod); pod != "" {
		return pod, h.Get(HeaderSource)
	}
	var rep EchoReply
	if strings.HasPrefix(h.Get("Content-Type"), "application/json") {
		if json.Unmarshal(head, &rep) == nil {
			return rep.Pod, rep.Source
		}
		return "", ""
	}
	if r, err := ParseEchoText(string(head)); err == nil {
		return r.Pod, r.Source
	}
	return "", ""
}

func errResult(err error) Result { return Result{Code: "error", Err: err.Error()} }

// describe marks err as a timeout when the request ran out of time, which
// the wrapped errors do not always say.
func describe(ctx context.Context, err error) error {
	if ue, ok := err.(*url.Error); ok {
		err = ue.Err // the method and URL are the target, printed already
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("timeout: %w", err)
	}
	return err
}
