package samples

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/structpb"
)

// recordingDialer dials TCP and remembers the local address of the last
// connection, which is the source address the server must report.
type recordingDialer struct {
	mu    sync.Mutex
	local string
}

func (d *recordingDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
	if err == nil {
		d.mu.Lock()
		d.local = c.LocalAddr().String()
		d.mu.Unlock()
	}
	return c, err
}

func (d *recordingDialer) last() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.local
}

// httpEcho asks the echo server at addr for a JSON echo over HTTP/1.1 or
// h2c, from a connection whose local address it returns.
func httpEcho(t *testing.T, addr string, h2c bool) (*EchoReply, string) {
	t.Helper()
	d := &recordingDialer{}
	tr := &http.Transport{DialContext: d.DialContext}
	defer tr.CloseIdleConnections()
	if h2c {
		var p http.Protocols
		p.SetUnencryptedHTTP2(true)
		tr.Protocols = &p
	}
	req, err := http.NewRequest(http.MethodPost, "http://"+addr+"/some/path?q=1", strings.NewReader("12345"))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-Test", "hello")
	req.Header.Set("Accept", "application/json")
	req.Host = "echo.demo:8080"
	resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("status %d, content type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	var rep EchoReply
	if err := json.NewDecoder(resp.Body).Decode(&rep); err != nil {
		t.Fatal(err)
	}
	if resp.Header.Get(HeaderPod) != rep.Pod || resp.Header.Get(HeaderSource) != rep.Source {
		t.Errorf("headers %s=%q %s=%q differ from the body %+v", HeaderPod, resp.Header.Get(HeaderPod),
			HeaderSource, resp.Header.Get(HeaderSource), rep)
	}
	return &rep, d.last()
}

// grpcEchoCall calls Echo on addr and returns the reply and the local
// address of the connection.
func grpcEchoCall(t *testing.T, addr string) (*EchoReply, string) {
	t.Helper()
	d := &recordingDialer{}
	conn, err := grpc.NewClient("passthrough:///"+addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithAuthority("echo.demo:8080"),
		grpc.WithContextDialer(func(ctx context.Context, a string) (net.Conn, error) { return d.DialContext(ctx, "tcp", a) }))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, "x-test", "hello")
	in, _ := structpb.NewStruct(map[string]any{"payload": "12345"})
	out := &structpb.Struct{}
	if err := conn.Invoke(ctx, EchoMethod, in, out); err != nil {
		t.Fatal(err)
	}
	return EchoReplyFromStruct(out), d.last()
}

// TestEchoProtocolsOnOnePort checks that HTTP/1.1, h2c and gRPC on the same
// listener all report the exact source address of the client's connection,
// the protocol, the authority and the request headers.
func TestEchoProtocolsOnOnePort(t *testing.T) {
	addr := serve(t, &EchoServer{Name: "echo-x"})
	tests := []struct {
		name       string
		call       func(t *testing.T) (*EchoReply, string)
		wantProto  string
		wantURL    string
		wantHeader string // the header name as the server saw it
	}{
		{"HTTP/1.1", func(t *testing.T) (*EchoReply, string) { return httpEcho(t, addr, false) }, "HTTP/1.1", "/some/path?q=1", "X-Test"},
		{"h2c", func(t *testing.T) (*EchoReply, string) { return httpEcho(t, addr, true) }, "HTTP/2.0", "/some/path?q=1", "X-Test"},
		{"gRPC", func(t *testing.T) (*EchoReply, string) { return grpcEchoCall(t, addr) }, "gRPC", EchoMethod, "x-test"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rep, local := tc.call(t)
			if rep.Pod != "echo-x" {
				t.Errorf("pod %q, want echo-x", rep.Pod)
			}
			if rep.Source != local || local == "" {
				t.Errorf("source %q, want the client's local address %q", rep.Source, local)
			}
			if rep.Proto != tc.wantProto || rep.URL != tc.wantURL || rep.Method != "POST" {
				t.Errorf("proto %q url %q method %q, want %q %q POST", rep.Proto, rep.URL, rep.Method, tc.wantProto, tc.wantURL)
			}
			if rep.Host != "echo.demo:8080" {
				t.Errorf("host %q, want echo.demo:8080", rep.Host)
			}
			if got := rep.Headers[tc.wantHeader]; len(got) != 1 || got[0] != "hello" {
				t.Errorf("header %s = %q, want [hello]; all: %v", tc.wantHeader, got, rep.Headers)
			}
			if rep.BodyBytes < 5 {
				t.Errorf("bodyBytes %d, want at least the 5 sent", rep.BodyBytes)
			}
		})
	}
}

func TestEchoPaths(t *testing.T) {
	addr := serve(t, &EchoServer{Name: "echo-y"})
	tests := []struct {
		method, path, accept string
		body                 string
		wantCode             int
		wantType             string
		want                 []string // substrings of the body
		wantLen              int      // if > 0, the exact body length
	}{
		{"GET", "/", "*/*", "", 200, "text/plain", []string{"pod=echo-y\n", "source=127.0.0.1:", "proto=HTTP/1.1\n", "method=GET\n", "url=/\n", "header Accept=*/*\n", "header X-Test=hello\n"}, 0},
		{"GET", "/status/503", "", "", 503, "text/plain", []string{"pod=echo-y\n", "url=/status/503\n"}, 0},
		{"GET", "/status/418", "", "", 418, "text/plain", []string{"pod=echo-y\n"}, 0},
		{"GET", "/?format=json", "", "", 200, "application/json", []string{`"pod":"echo-y"`, `"X-Test":["hello"]`, `"proto":"HTTP/1.1"`}, 0},
		{"GET", "/x", "application/json", "", 200, "application/json", []string{`"url":"/x"`}, 0},
		{"GET", "/size/100000", "", "", 200, "application/octet-stream", nil, 100000},
		{"GET", "/size/0", "", "", 200, "application/octet-stream", nil, 0},
		{"GET", "/delay/20ms", "", "", 200, "text/plain", []string{"url=/delay/20ms\n"}, 0},
		{"POST", "/", "", strings.Repeat("b", 300000), 200, "text/plain", []string{"method=POST\n", "bodyBytes=300000\n"}, 0},
		{"GET", "/status/abc", "", "", 400, "text/plain", []string{"bad status code"}, 0},
		{"GET", "/status/100", "", "", 400, "text/plain", []string{"bad status code"}, 0},
		{"GET", "/status/600", "", "", 400, "text/plain", []string{"bad status code"}, 0},
		{"GET", "/delay/-1s", "", "", 400, "text/plain", []string{"bad delay"}, 0},
		{"GET", "/delay/2m", "", "", 400, "text/plain", []string{"bad delay"}, 0},
		{"GET", "/size/-1", "", "", 400, "text/plain", []string{"bad size"}, 0},
		{"GET", "/size/99999999999", "", "", 400, "text/plain", []string{"bad size"}, 0},
	}
	client := &http.Client{Timeout: 5 * time.Second}
	for _, tc := range tests {
		t.Run(tc.method+tc.path, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, "http://"+addr+tc.path, strings.NewReader(tc.body))
			req.Header.Set("X-Test", "hello")
			if tc.accept != "" {
				req.Header.Set("Accept", tc.accept)
			}
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tc.wantCode {
				t.Errorf("status %d, want %d", resp.StatusCode, tc.wantCode)
			}
			if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, tc.wantType) {
				t.Errorf("content type %q, want %q", ct, tc.wantType)
			}
			if resp.Header.Get(HeaderPod) != "echo-y" || !strings.HasPrefix(resp.Header.Get(HeaderSource), "127.0.0.1:") {
				t.Errorf("%s %q %s %q", HeaderPod, resp.Header.Get(HeaderPod), HeaderSource, resp.Header.Get(HeaderSource))
			}
			for _, w := range tc.want {
				if !strings.Contains(string(body), w) {
					t.Errorf("body %.300q lacks %q", body, w)
				}
			}
			if tc.wantType == "application/octet-stream" && len(body) != tc.wantLen {
				t.Errorf("body is %d bytes, want %d", len(body), tc.wantLen)
			}
		})
	}
}

// TestEchoGracefulShutdown checks that requests in flight when the context
// ends are answered, over HTTP/1.1, h2c and gRPC health, and that Serve
// then returns nil.
func TestEchoGracefulShutdown(t *testing.T) {
	addr, stop := serveStoppable(t, &EchoServer{Name: "e"})
	type outcome struct {
		name string
		code int
		err  error
	}
	results := make(chan outcome, 2)
	for _, h2c := range []bool{false, true} {
		tr := &http.Transport{}
		name := "HTTP/1.1"
		if h2c {
			var p http.Protocols
			p.SetUnencryptedHTTP2(true)
			tr.Protocols = &p
			name = "h2c"
		}
		go func() {
			resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Get("http://" + addr + "/delay/400ms")
			if err != nil {
				results <- outcome{name, 0, err}
				return
			}
			_, err = io.ReadAll(resp.Body)
			resp.Body.Close()
			results <- outcome{name, resp.StatusCode, err}
		}()
	}
	time.Sleep(150 * time.Millisecond) // both requests are in the handler
	if err := stop(); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	for range 2 {
		o := <-results
		if o.err != nil || o.code != 200 {
			t.Errorf("%s: in-flight request got %d, %v; want 200", o.name, o.code, o.err)
		}
	}
}

func TestEchoGRPCHealth(t *testing.T) {
	addr := serve(t, &EchoServer{Name: "e"})
	conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, svc := range []string{"", echoServiceName} {
		resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: svc})
		if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("health %q: %v, %v; want SERVING", svc, resp.GetStatus(), err)
		}
	}
}

func TestEchoTextRoundTrip(t *testing.T) {
	r := &EchoReply{Pod: "p", Source: "1.2.3.4:5", Proto: "HTTP/1.1", Method: "GET", URL: "/a?b=c=d", Host: "h:1",
		BodyBytes: 42, Headers: map[string][]string{"A": {"b", "c=d"}, "E": {""}}}
	tests := []struct {
		name    string
		body    string
		want    *EchoReply
		wantErr bool
	}{
		{"round trip", r.Text(), r, false},
		{"CRLF and unknown keys", "pod=p\r\nfuture=1\r\n", &EchoReply{Pod: "p", Headers: map[string][]string{}}, false},
		{"garbage", "garbage", nil, true},
		{"no pod", "source=1.2.3.4:5\n", nil, true},
		{"bad bodyBytes", "pod=p\nbodyBytes=x\n", nil, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseEchoText(tc.body)
			if (err != nil) != tc.wantErr {
				t.Fatalf("error %v, want error %v", err, tc.wantErr)
			}
			if tc.want != nil && !sameReply(got, tc.want) {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
	st, err := r.toStruct()
	if err != nil {
		t.Fatal(err)
	}
	if got := EchoReplyFromStruct(st); !sameReply(got, r) {
		t.Fatalf("Struct round trip: got %+v, want %+v", got, r)
	}
	if got := EchoReplyFromStruct(nil); got.Pod != "" || len(got.Headers) != 0 {
		t.Fatalf("nil Struct: %+v", got)
	}
}

func sameReply(a, b *EchoReply) bool {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return string(ja) == string(jb)
}
