package samples

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
)

// ClientConfig says what the load client sends.
type ClientConfig struct {
	// URL is the target: http://host:port/path, h2c://host:port/path
	// (HTTP/2 with prior knowledge), grpc://host:port (the echo server's
	// Echo RPC), tcp://host:port (a line echoed back by tcp-echo) or
	// banner://host:port (greeting, one line, QUIT).
	URL         string
	Requests    int           // total requests (default 1)
	Concurrency int           // requests in flight (default 1)
	Timeout     time.Duration // per request (default 2s)
	Interval    time.Duration // pause between requests of one worker
	Payload     int           // extra bytes sent with each request (HTTP body, TCP line)
	NewConn     bool          // a new connection per request
}

// Result is the outcome of one request.
type Result struct {
	Seq     int           `json:"seq"`
	Code    string        `json:"code"` // HTTP status, gRPC code, "ok", or "error"
	Pod     string        `json:"pod,omitempty"`
	Source  string        `json:"source,omitempty"`
	Latency time.Duration `json:"-"`
	Micros  int64         `json:"latencyMicros"`
	Err     string        `json:"error,omitempty"`
}

// Failed reports whether the request failed: a transport error, an HTTP
// 5xx, or a gRPC status other than OK.
func (r *Result) Failed() bool {
	if r.Err != "" {
		return true
	}
	if n, err := strconv.Atoi(r.Code); err == nil {
		return n >= 500
	}
	return r.Code != "ok" && r.Code != "OK"
}

// Summary aggregates the results of a run.
type Summary struct {
	Target   string         `json:"target"`
	Requests int            `json:"requests"`
	Errors   int            `json:"errors"`
	Codes    map[string]int `json:"codes"`
	Pods     map[string]int `json:"pods"`
	Sources  map[string]int `json:"sources"` // source IPs the servers reported
	Latency  LatencySummary `json:"latencyMicros"`
	Results  []Result       `json:"results,omitempty"`
}

// LatencySummary holds latency quantiles in microseconds.
type LatencySummary struct {
	Min, P50, P90, P99, Max int64
}

// MarshalJSON spells the quantile names in lower case.
func (l LatencySummary) MarshalJSON() ([]byte, error) {
	return json.Marshal(map[string]int64{"min": l.Min, "p50": l.P50, "p90": l.P90, "p99": l.P99, "max": l.Max})
}

// UnmarshalJSON reads what MarshalJSON writes.
func (l *LatencySummary) UnmarshalJSON(b []byte) error {
	var m map[string]int64
	if err := json.Unmarshal(b, &m); err != nil {
		return err
	}
	*l = LatencySummary{Min: m["min"], P50: m["p50"], P90: m["p90"], P99: m["p99"], Max: m["max"]}
	return nil
}

// Run sends the requests and returns every result and the summary. onResult,
// if set, is called as each result arrives (from several goroutines, one at
// a time).
func Run(ctx context.Context, cfg ClientConfig, onResult func(Result)) (*Summary, error) {
	if cfg.Requests <= 0 {
		cfg.Requests = 1
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 1
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 2 * time.Second
	}
	u, err := url.Parse(cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("target %q: %w", cfg.URL, err)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("target %q: no host:port", cfg.URL)
	}
	do, closeFn, err := requester(u, cfg)
	if err != nil {
		return nil, err
	}
	defer closeFn()

	results := make([]Result, cfg.Requests)
	var mu sync.Mutex
	next := 0
	var wg sync.WaitGroup
	for w := 0; w < cfg.Concurrency; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				i := next
				next++
				mu.Unlock()
				if i >= cfg.Requests || ctx.Err() != nil {
					return
				}
				rctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
				start := time.Now()
				r := do(rctx, i)
				r.Latency = time.Since(start)
				r.Micros = r.Latency.Microseconds()
				cancel()
				r.Seq = i + 1
				results[i] = r
				if onResult != nil {
					mu.Lock()
					onResult(r)
					mu.Unlock()
				}
				if cfg.Interval > 0 {
					select {
					case <-time.After(cfg.Interval):
					case <-ctx.Done():
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	done := results[:min(next, cfg.Requests)]
	return summarize(cfg.URL, done), nil
}

func summarize(target string, results []Result) *Summary {
	s := &Summary{Target: target, Requests: len(results), Codes: map[string]int{}, Pods: map[string]int{}, Sources: map[string]int{}, Results: results}
	var lat []int64
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
		q := func(p float64) int64 { return lat[min(len(lat)-1, int(p*float64(len(lat))))] }
		s.Latency = LatencySummary{Min: lat[0], P50: q(0.5), P90: q(0.9), P99: q(0.99), Max: lat[len(lat)-1]}
	}
	return s
}

type requestFunc func(ctx context.Context, i int) Result

func errResult(err error) Result { return Result{Code: "error", Err: err.Error()} }

func requester(u *url.URL, cfg ClientConfig) (requestFunc, func(), error) {
	payload := strings.Repeat("x", cfg.Payload)
	switch u.Scheme {
	case "http", "h2c":
		var rt http.RoundTripper
		if u.Scheme == "h2c" {
			rt = &http2.Transport{AllowHTTP: true, DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, network, addr)
			}}
		} else {
			rt = &http.Transport{DisableKeepAlives: cfg.NewConn, MaxIdleConnsPerHost: cfg.Concurrency}
		}
		client := &http.Client{Transport: rt}
		target := *u
		target.Scheme = "http"
		do := func(ctx context.Context, _ int) Result {
			var body io.Reader
			method := http.MethodGet
			if payload != "" {
				method, body = http.MethodPost, strings.NewReader(payload)
			}
			req, err := http.NewRequestWithContext(ctx, method, target.String(), body)
			if err != nil {
				return errResult(err)
			}
			req.Close = cfg.NewConn
			resp, err := client.Do(req)
			if err != nil {
				return errResult(err)
			}
			defer resp.Body.Close()
			data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
			if err != nil {
				return errResult(fmt.Errorf("reading response: %w", err))
			}
			r := Result{Code: strconv.Itoa(resp.StatusCode), Pod: resp.Header.Get("X-Ambit-Pod")}
			if rep, err := ParseEchoText(string(data)); err == nil {
				r.Pod, r.Source = rep.Pod, rep.Source
			}
			return r
		}
		return do, func() {
			if t, ok := rt.(interface{ CloseIdleConnections() }); ok {
				t.CloseIdleConnections()
			}
		}, nil
	case "grpc":
		conn, err := grpc.NewClient(u.Host, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return nil, nil, fmt.Errorf("grpc target %s: %w", u.Host, err)
		}
		do := func(ctx context.Context, _ int) Result {
			in, _ := structpb.NewStruct(map[string]any{"payload": payload})
			out := &structpb.Struct{}
			if err := conn.Invoke(ctx, echoMethod, in, out); err != nil {
				st, _ := status.FromError(err)
				return Result{Code: st.Code().String(), Err: st.Message()}
			}
			rep := echoReplyFromStruct(out)
			return Result{Code: "OK", Pod: rep.Pod, Source: rep.Source}
		}
		return do, func() { conn.Close() }, nil
	case "tcp":
		return func(ctx context.Context, i int) Result { return tcpRequest(ctx, u.Host, i, payload) }, func() {}, nil
	case "banner":
		return func(ctx context.Context, i int) Result { return bannerRequest(ctx, u.Host, i) }, func() {}, nil
	}
	return nil, nil, fmt.Errorf("target %q: unsupported scheme %q (want http, h2c, grpc, tcp or banner)", u.String(), u.Scheme)
}

func dial(ctx context.Context, addr string) (net.Conn, error) {
	c, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	return c, nil
}

func tcpRequest(ctx context.Context, addr string, i int, payload string) Result {
	c, err := dial(ctx, addr)
	if err != nil {
		return errResult(err)
	}
	defer c.Close()
	msg := fmt.Sprintf("ambit-tcp-check %d %s\n", i, payload)
	if _, err := io.WriteString(c, msg); err != nil {
		return errResult(fmt.Errorf("write: %w", err))
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return errResult(fmt.Errorf("read echo: %w", err))
	}
	if !bytes.Equal(got, []byte(msg)) {
		return errResult(fmt.Errorf("echo mismatch: sent %q, got %q", msg, got))
	}
	return Result{Code: "ok"}
}

func bannerRequest(ctx context.Context, addr string, i int) Result {
	c, err := dial(ctx, addr)
	if err != nil {
		return errResult(err)
	}
	defer c.Close()
	rd := bufio.NewReader(c)
	greeting, err := rd.ReadString('\n')
	if err != nil {
		return errResult(fmt.Errorf("read greeting: %w", err))
	}
	fields := strings.Fields(greeting)
	if len(fields) < 2 || fields[0] != "220" {
		return errResult(fmt.Errorf("bad greeting %q", greeting))
	}
	r := Result{Code: "ok", Pod: fields[1]}
	line := fmt.Sprintf("HELO %d", i)
	if _, err := fmt.Fprintf(c, "%s\r\nQUIT\r\n", line); err != nil {
		return errResult(fmt.Errorf("write: %w", err))
	}
	for _, want := range []string{"250 " + line, "221 bye"} {
		got, err := rd.ReadString('\n')
		if err != nil {
			return errResult(fmt.Errorf("read reply: %w", err))
		}
		if strings.TrimRight(got, "\r\n") != want {
			return errResult(fmt.Errorf("got %q, want %q", strings.TrimSpace(got), want))
		}
	}
	return r
}

// WriteText prints the summary for people.
func (s *Summary) WriteText(w io.Writer) {
	fmt.Fprintf(w, "target %s: %d requests, %d failed\n", s.Target, s.Requests, s.Errors)
	fmt.Fprintf(w, "  codes:   %s\n", countList(s.Codes))
	fmt.Fprintf(w, "  pods:    %s\n", countList(s.Pods))
	fmt.Fprintf(w, "  sources: %s\n", countList(s.Sources))
	l := s.Latency
	fmt.Fprintf(w, "  latency: min %s  p50 %s  p90 %s  p99 %s  max %s\n", us(l.Min), us(l.P50), us(l.P90), us(l.P99), us(l.Max))
}

func us(v int64) string { return (time.Duration(v) * time.Microsecond).String() }

func countList(m map[string]int) string {
	if len(m) == 0 {
		return "-"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s x%d", k, m[k]))
	}
	return strings.Join(parts, ", ")
}

// FormatResult prints one result as a line.
func FormatResult(r Result) string {
	s := fmt.Sprintf("#%d %s", r.Seq, r.Code)
	if r.Pod != "" {
		s += " pod=" + r.Pod
	}
	if r.Source != "" {
		s += " source=" + r.Source
	}
	s += " " + r.Latency.Round(time.Microsecond).String()
	if r.Err != "" {
		s += " error=" + r.Err
	}
	return s
}
