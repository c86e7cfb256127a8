package samples

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// serve starts srv on a loopback port and returns its address.
func serve(t *testing.T, srv interface {
	Serve(context.Context, net.Listener) error
}) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("server did not stop")
		}
	})
	return l.Addr().String()
}

func TestEchoProtocols(t *testing.T) {
	addr := serve(t, &EchoServer{Name: "echo-x"})
	for _, scheme := range []string{"http", "h2c", "grpc"} {
		t.Run(scheme, func(t *testing.T) {
			sum, err := Run(context.Background(), ClientConfig{URL: scheme + "://" + addr + "/", Requests: 5, Concurrency: 2}, nil)
			if err != nil {
				t.Fatal(err)
			}
			wantCode := "200"
			if scheme == "grpc" {
				wantCode = "OK"
			}
			if sum.Codes[wantCode] != 5 || sum.Errors != 0 {
				t.Fatalf("codes %v errors %d, want 5x %s", sum.Codes, sum.Errors, wantCode)
			}
			if sum.Pods["echo-x"] != 5 {
				t.Errorf("pods %v, want echo-x x5", sum.Pods)
			}
			if sum.Sources["127.0.0.1"] != 5 {
				t.Errorf("sources %v, want 127.0.0.1 x5", sum.Sources)
			}
		})
	}
}

func TestEchoReplyText(t *testing.T) {
	addr := serve(t, &EchoServer{Name: "echo-y"})
	tests := []struct {
		path     string
		header   string
		wantCode int
		want     []string
	}{
		{"/", "", 200, []string{"pod=echo-y", "source=127.0.0.1:", "proto=HTTP/1.1", "method=GET", "header X-Test=hello"}},
		{"/status/503", "", 503, []string{"pod=echo-y"}},
		{"/?format=json", "", 200, []string{`"pod":"echo-y"`, `"X-Test":["hello"]`}},
		{"/size/1000", "", 200, []string{strings.Repeat("a", 1000)}},
		{"/delay/10ms", "", 200, []string{"url=/delay/10ms"}},
		{"/status/abc", "", 400, []string{"bad status code"}},
	}
	for _, tc := range tests {
		t.Run(tc.path, func(t *testing.T) {
			req, _ := http.NewRequest("GET", "http://"+addr+tc.path, nil)
			req.Header.Set("X-Test", "hello")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.wantCode {
				t.Errorf("status %d, want %d", resp.StatusCode, tc.wantCode)
			}
			for _, w := range tc.want {
				if !strings.Contains(string(body), w) {
					t.Errorf("body %q lacks %q", body, w)
				}
			}
		})
	}
}

func TestTCPEcho(t *testing.T) {
	addr := serve(t, &TCPEchoServer{})
	sum, err := Run(context.Background(), ClientConfig{URL: "tcp://" + addr, Requests: 4, Concurrency: 2, Payload: 100000}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if sum.Codes["ok"] != 4 {
		t.Fatalf("codes %v", sum.Codes)
	}
}

func TestBannerIsServerFirst(t *testing.T) {
	addr := serve(t, &BannerServer{Name: "banner-1"})
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	rd := bufio.NewReader(c)
	// Read before writing anything: the server must speak first.
	line, err := rd.ReadString('\n')
	if err != nil || strings.TrimSpace(line) != BannerGreeting("banner-1") {
		t.Fatalf("greeting %q, %v", line, err)
	}
	io.WriteString(c, "hello\r\nQUIT\r\n")
	for _, want := range []string{"250 hello", "221 bye"} {
		got, err := rd.ReadString('\n')
		if err != nil || strings.TrimSpace(got) != want {
			t.Fatalf("got %q (%v), want %q", got, err, want)
		}
	}
	sum, err := Run(context.Background(), ClientConfig{URL: "banner://" + addr, Requests: 3, Concurrency: 3}, nil)
	if err != nil || sum.Codes["ok"] != 3 || sum.Pods["banner-1"] != 3 {
		t.Fatalf("client summary %+v, %v", sum, err)
	}
}

func TestClientErrors(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := l.Addr().String()
	l.Close()
	for _, scheme := range []string{"http", "tcp", "banner"} {
		sum, err := Run(context.Background(), ClientConfig{URL: scheme + "://" + closed + "/", Requests: 2}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if sum.Errors != 2 || sum.Codes["error"] != 2 {
			t.Errorf("%s: summary %+v, want 2 errors", scheme, sum)
		}
	}
	if _, err := Run(context.Background(), ClientConfig{URL: "ftp://x:1"}, nil); err == nil || !strings.Contains(err.Error(), "unsupported scheme") {
		t.Errorf("want unsupported scheme error, got %v", err)
	}
}

func TestParseEchoText(t *testing.T) {
	r := &EchoReply{Pod: "p", Source: "1.2.3.4:5", Proto: "HTTP/1.1", Method: "GET", URL: "/", Headers: map[string][]string{"A": {"b"}}}
	got, err := ParseEchoText(r.Text())
	if err != nil || got.Pod != "p" || got.Source != "1.2.3.4:5" || got.Headers["A"][0] != "b" {
		t.Fatalf("round trip: %+v %v", got, err)
	}
	if _, err := ParseEchoText("garbage"); err == nil {
		t.Fatal("accepted garbage")
	}
}
