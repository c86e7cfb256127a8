package samples

import (
	"bytes"
	"context"
	"encoding/json"
	"maps"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

// closedAddr returns a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// TestClientSummary runs the client against real servers and checks every
// count of the summary.
func TestClientSummary(t *testing.T) {
	echo := serve(t, &EchoServer{Name: "echo-x"})
	tcp := serve(t, &TCPEchoServer{})
	banner := serve(t, &BannerServer{Name: "banner-1"})
	tests := []struct {
		url         string
		payload     int
		wantCode    string
		wantPod     string
		wantSources bool
		wantErrors  bool
	}{
		{"http://" + echo + "/", 0, "200", "echo-x", true, false},
		{"http://" + echo + "/size/200000", 0, "200", "echo-x", true, false},
		{"http://" + echo + "/?format=json", 1000, "200", "echo-x", true, false},
		{"h2c://" + echo + "/", 1000, "200", "echo-x", true, false},
		{"grpc://" + echo, 1000, "OK", "echo-x", true, false},
		{"http://" + echo + "/status/503", 0, "503", "echo-x", true, true},
		{"h2c://" + echo + "/status/404", 0, "404", "echo-x", true, false},
		{"tcp://" + tcp, 0, "ok", "", false, false},
		{"tcp://" + tcp, 1 << 20, "ok", "", false, false},
		{"banner://" + banner, 0, "ok", "banner-1", false, false},
		{"banner://" + banner, 1000, "ok", "banner-1", false, false},
	}
	for _, tc := range tests {
		t.Run(tc.url, func(t *testing.T) {
			const n = 6
			var seen []int
			var mu sync.Mutex
			sum, err := Run(context.Background(), ClientConfig{URL: tc.url, Requests: n, Concurrency: 3, Payload: tc.payload, Timeout: 5 * time.Second},
				func(r Result) {
					mu.Lock()
					seen = append(seen, r.Seq)
					mu.Unlock()
				})
			if err != nil {
				t.Fatal(err)
			}
			if sum.Requests != n || len(sum.Results) != n || len(seen) != n {
				t.Fatalf("requests %d, results %d, callbacks %d; want %d", sum.Requests, len(sum.Results), len(seen), n)
			}
			if want := map[string]int{tc.wantCode: n}; !maps.Equal(sum.Codes, want) {
				t.Errorf("codes %v, want %v (results %+v)", sum.Codes, want, sum.Results)
			}
			wantErrors := 0
			if tc.wantErrors {
				wantErrors = n
			}
			if sum.Errors != wantErrors {
				t.Errorf("errors %d, want %d", sum.Errors, wantErrors)
			}
			wantPods := map[string]int{}
			if tc.wantPod != "" {
				wantPods[tc.wantPod] = n
			}
			if !maps.Equal(sum.Pods, wantPods) {
				t.Errorf("pods %v, want %v", sum.Pods, wantPods)
			}
			wantSources := map[string]int{}
			if tc.wantSources {
				wantSources["127.0.0.1"] = n
			}
			if !maps.Equal(sum.Sources, wantSources) {
				t.Errorf("sources %v, want %v", sum.Sources, wantSources)
			}
			l := sum.Latency
			if l.Min <= 0 || l.Min > l.P50 || l.P50 > l.P90 || l.P90 > l.P99 || l.P99 > l.Max {
				t.Errorf("latency quantiles out of order: %+v", l)
			}
			for i, r := range sum.Results {
				if r.Seq != i+1 || r.Bytes == 0 {
					t.Errorf("result %d: %+v", i, r)
				}
			}
		})
	}
}

// TestClientErrors checks that failures are counted, not hidden, for every
// scheme against a closed port, and that bad configurations are refused.
func TestClientErrors(t *testing.T) {
	closed := closedAddr(t)
	for _, tc := range []struct{ scheme, wantCode string }{
		{"http", "error"}, {"h2c", "error"}, {"grpc", "Unavailable"}, {"tcp", "error"}, {"banner", "error"},
	} {
		t.Run(tc.scheme, func(t *testing.T) {
			sum, err := Run(context.Background(), ClientConfig{URL: tc.scheme + "://" + closed + "/", Requests: 2}, nil)
			if err != nil {
				t.Fatal(err)
			}
			if sum.Requests != 2 || sum.Errors != 2 || sum.Codes[tc.wantCode] != 2 || len(sum.Pods) != 0 {
				t.Fatalf("summary %+v, want 2 requests, 2 errors with code %s", sum, tc.wantCode)
			}
			for _, r := range sum.Results {
				if r.Err == "" {
					t.Errorf("result without an error message: %+v", r)
				}
			}
		})
	}
	bad := []struct {
		cfg  ClientConfig
		want string
	}{
		{ClientConfig{URL: "ftp://x:1"}, "unsupported scheme"},
		{ClientConfig{URL: "http:///nohost"}, "no host"},
		{ClientConfig{URL: "http://[::1"}, "target"},
		{ClientConfig{URL: "http://x:1", Requests: -1}, "requests"},
		{ClientConfig{URL: "http://x:1", Concurrency: -2}, "concurrency"},
		{ClientConfig{URL: "http://x:1", Timeout: -time.Second}, "timeout"},
		{ClientConfig{URL: "http://x:1", Payload: -1}, "payload"},
	}
	for _, tc := range bad {
		if _, err := Run(context.Background(), tc.cfg, nil); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: error %v, want one mentioning %q", tc.cfg, err, tc.want)
		}
	}
}

// TestClientConnectionReuse checks --new-conn-per-request: with it every
// request comes from its own source port; without it, one worker reuses one
// connection.
func TestClientConnectionReuse(t *testing.T) {
	echo := serve(t, &EchoServer{Name: "e"})
	for _, scheme := range []string{"http", "h2c", "grpc"} {
		for _, newConn := range []bool{false, true} {
			t.Run(scheme+map[bool]string{false: "/reuse", true: "/new"}[newConn], func(t *testing.T) {
				const n = 5
				sum, err := Run(context.Background(), ClientConfig{URL: scheme + "://" + echo + "/", Requests: n, NewConn: newConn}, nil)
				if err != nil || sum.Errors != 0 {
					t.Fatalf("%+v, %v", sum, err)
				}
				ports := map[string]bool{}
				for _, r := range sum.Results {
					ports[r.Source] = true
				}
				want := 1
				if newConn {
					want = n
				}
				if len(ports) != want {
					t.Fatalf("%d distinct source addresses %v, want %d", len(ports), ports, want)
				}
			})
		}
	}
}

func TestClientTimeout(t *testing.T) {
	echo, stopEcho := serveStoppable(t, &EchoServer{Name: "e"})
	t.Cleanup(func() { stopEcho() })
	// A server that accepts and never answers nor greets.
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	go func() {
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	tests := []string{
		"http://" + echo + "/delay/5s",
		"h2c://" + echo + "/delay/5s",
		"http://" + silent.Addr().String() + "/",
		"tcp://" + silent.Addr().String(),
		"banner://" + silent.Addr().String(),
	}
	for _, url := range tests {
		t.Run(url, func(t *testing.T) {
			start := time.Now()
			sum, err := Run(context.Background(), ClientConfig{URL: url, Requests: 2, Concurrency: 2, Timeout: 100 * time.Millisecond}, nil)
			if err != nil {
				t.Fatal(err)
			}
			if took := time.Since(start); took > 2*time.Second {
				t.Errorf("took %s with a 100ms timeout", took)
			}
			if sum.Errors != 2 || sum.Codes["error"] != 2 {
				t.Fatalf("summary %+v, want 2 errors", sum)
			}
			for _, r := range sum.Results {
				if !strings.Contains(r.Err, "timeout") && !strings.Contains(r.Err, "deadline") {
					t.Errorf("error %q does not say it timed out", r.Err)
				}
			}
		})
	}
	// The client left no connection open: the echo server's graceful
	// shutdown has nothing to wait for (an HTTP/2 connection left behind
	// would hold it for the 1s GOAWAY timeout).
	start := time.Now()
	if err := stopEcho(); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 500*time.Millisecond {
		t.Errorf("echo server took %s to stop: the client left connections open", took)
	}
}

// TestClientInterrupted checks that cancelling the context stops the run
// early and that the summary holds only requests really made.
func TestClientInterrupted(t *testing.T) {
	echo := serve(t, &EchoServer{Name: "e"})
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	sum, err := Run(ctx, ClientConfig{URL: "http://" + echo + "/delay/50ms", Requests: 1000, Concurrency: 2}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("took %s after cancellation at 300ms", took)
	}
	if sum.Requests == 0 || sum.Requests >= 100 || len(sum.Results) != sum.Requests {
		t.Fatalf("requests %d (results %d), want a few", sum.Requests, len(sum.Results))
	}
	for _, r := range sum.Results {
		if r.Code == "" || r.Seq == 0 {
			t.Fatalf("summary holds a request never made: %+v", r)
		}
	}
}

// TestClientHeaders checks that -H headers reach the server: as HTTP
// headers (Host as the Host) and as gRPC metadata (Host as :authority).
func TestClientHeaders(t *testing.T) {
	type seen struct {
		host string
		test []string
	}
	var mu sync.Mutex
	var got []seen
	record := func(s seen) {
		mu.Lock()
		got = append(got, s)
		mu.Unlock()
	}
	echo := &EchoServer{Name: "e"}
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Protocols: &p, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		record(seen{r.Host, r.Header.Values("X-Test")})
		echo.ServeHTTP(w, r)
	})}
	go hs.Serve(hl)
	defer hs.Close()
	gl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(grpc.UnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		md, _ := metadata.FromIncomingContext(ctx)
		record(seen{strings.Join(md.Get(":authority"), ","), md.Get("x-test")})
		return h(ctx, req)
	}))
	gs.RegisterService(&echoServiceDesc, echo)
	go gs.Serve(gl)
	defer gs.Stop()

	headers := http.Header{}
	for _, h := range []string{"X-Test: a", "x-test: b", "Host: echo.demo"} {
		k, v, err := ParseHeader(h)
		if err != nil {
			t.Fatal(err)
		}
		headers.Add(k, v)
	}
	for _, url := range []string{"http://" + hl.Addr().String() + "/", "h2c://" + hl.Addr().String() + "/", "grpc://" + gl.Addr().String()} {
		mu.Lock()
		got = nil
		mu.Unlock()
		sum, err := Run(context.Background(), ClientConfig{URL: url, Headers: headers}, nil)
		if err != nil || sum.Errors != 0 || sum.Pods["e"] != 1 {
			t.Fatalf("%s: %+v, %v", url, sum, err)
		}
		mu.Lock()
		got := got
		mu.Unlock()
		if len(got) != 1 || got[0].host != "echo.demo" || strings.Join(got[0].test, ",") != "a,b" {
			t.Errorf("%s: server saw %+v, want host echo.demo and X-Test a,b", url, got)
		}
	}
}

func TestParseHeader(t *testing.T) {
	tests := []struct {
		in, name, value string
		ok              bool
	}{
		{"X-A: b", "X-A", "b", true},
		{"X-A:b:c", "X-A", "b:c", true},
		{"X-A:", "X-A", "", true},
		{"X-A", "", "", false},
		{": b", "", "", false},
		{"X A: b", "", "", false},
		{"X-A: b\r\nX-B: c", "", "", false},
	}
	for _, tc := range tests {
		name, value, err := ParseHeader(tc.in)
		if (err == nil) != tc.ok || name != tc.name || value != tc.value {
			t.Errorf("ParseHeader(%q) = %q, %q, %v", tc.in, name, value, err)
		}
	}
}

func TestQuantile(t *testing.T) {
	ten := []int64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	tests := []struct {
		sorted []int64
		q      float64
		want   int64
	}{
		{ten, 0.5, 5},
		{ten, 0.9, 9},
		{ten, 0.99, 10},
		{ten, 0, 1},
		{ten, 1, 10},
		{[]int64{7}, 0.5, 7},
		{[]int64{1, 2}, 0.5, 1},
	}
	for _, tc := range tests {
		if got := quantile(tc.sorted, tc.q); got != tc.want {
			t.Errorf("quantile(%v, %v) = %d, want %d", tc.sorted, tc.q, got, tc.want)
		}
	}
}

// TestSummaryOutput pins the JSON field names tests and scripts parse, and
// the text lines people read.
func TestSummaryOutput(t *testing.T) {
	sum := summarize("http://x/", []Result{
		{Seq: 1, Code: "200", Pod: "echo-1", Source: "10.0.0.1:1000", Latency: 1000 * time.Microsecond},
		{Seq: 2, Code: "200", Pod: "echo-2", Source: "10.0.0.1:1001", Latency: 3000 * time.Microsecond},
		{Seq: 3, Code: "error", Err: "connection refused", Latency: 2000 * time.Microsecond},
	})
	b, err := json.Marshal(sum)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"target", "requests", "errors", "codes", "pods", "sources", "latencyMicros", "elapsedMicros", "results"} {
		if _, ok := m[k]; !ok {
			t.Errorf("JSON summary lacks %q: %s", k, b)
		}
	}
	var back Summary
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	wantLat := LatencySummary{Min: 1000, P50: 2000, P90: 3000, P99: 3000, Max: 3000}
	if back.Requests != 3 || back.Errors != 1 || back.Codes["200"] != 2 || back.Codes["error"] != 1 ||
		back.Pods["echo-1"] != 1 || back.Sources["10.0.0.1"] != 2 || back.Latency != wantLat {
		t.Errorf("summary %+v", back)
	}
	var text bytes.Buffer
	if err := sum.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"3 requests, 1 failed", "codes:   200 x2, error x1", "pods:    echo-1 x1, echo-2 x1", "sources: 10.0.0.1 x2", "p50 2ms"} {
		if !strings.Contains(text.String(), w) {
			t.Errorf("text summary lacks %q:\n%s", w, text.String())
		}
	}
	if got, want := FormatResult(sum.Results[0]), "#1 200 pod=echo-1 source=10.0.0.1:1000 1ms"; got != want {
		t.Errorf("FormatResult = %q, want %q", got, want)
	}
	if got := FormatResult(sum.Results[2]); !strings.HasSuffix(got, "error=connection refused") {
		t.Errorf("FormatResult = %q", got)
	}
}
