package samples

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// serve starts srv on a loopback port and returns its address. The server
// is stopped at the end of the test, which fails if it does not stop in
// time or returns an error.
func serve(t *testing.T, srv interface {
	Serve(context.Context, net.Listener) error
}) string {
	t.Helper()
	addr, stop := serveStoppable(t, srv)
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Error(err)
		}
	})
	return addr
}

// serveStoppable is serve with an explicit stop, which returns the error
// of Serve (or a timeout).
func serveStoppable(t *testing.T, srv interface {
	Serve(context.Context, net.Listener) error
}) (string, func() error) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, l) }()
	var once sync.Once
	var stopErr error
	return l.Addr().String(), func() error {
		once.Do(func() {
			cancel()
			select {
			case stopErr = <-done:
			case <-time.After(10 * time.Second):
				stopErr = context.DeadlineExceeded
			}
		})
		return stopErr
	}
}

// dialT connects to addr with a deadline for the whole exchange.
func dialT(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return c
}

func TestDefaultName(t *testing.T) {
	host, _ := os.Hostname()
	tests := []struct {
		podName, hostname, want string
	}{
		{"echo-1", "h", "echo-1"},
		{"", "h", "h"},
		{"", "", host},
	}
	for _, tc := range tests {
		t.Setenv("POD_NAME", tc.podName)
		t.Setenv("HOSTNAME", tc.hostname)
		want := tc.want
		if want == "" {
			want = "unknown"
		}
		if got := DefaultName(); got != want {
			t.Errorf("POD_NAME=%q HOSTNAME=%q: got %q, want %q", tc.podName, tc.hostname, got, want)
		}
	}
}

func TestTCPEcho(t *testing.T) {
	addr := serve(t, &TCPEchoServer{Name: "client"})
	tests := []struct {
		name string
		data []byte
	}{
		{"line", []byte("hello\n")},
		{"binary", []byte{0, 1, 2, 255, '\r', '\n', 0}},
		{"1MiB", bytes.Repeat([]byte("0123456789abcdef"), 1<<16)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := dialT(t, addr)
			// Client-first: nothing arrives before we write.
			_ = c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
			if n, err := c.Read(make([]byte, 1)); n != 0 || !isTimeout(err) {
				t.Fatalf("server spoke first: %d bytes, %v", n, err)
			}
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			go func() {
				c.Write(tc.data)
				c.(*net.TCPConn).CloseWrite()
			}()
			got, err := io.ReadAll(c) // the server half-closes after our half-close
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, tc.data) {
				t.Fatalf("echoed %d bytes, want the %d sent", len(got), len(tc.data))
			}
		})
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

func TestBannerIsServerFirst(t *testing.T) {
	addr := serve(t, &BannerServer{Name: "banner-1"})
	tests := []struct {
		name  string
		send  string
		wants []string
	}{
		{"lines and QUIT", "hello\r\nMAIL FROM:<a@b>\r\nQUIT\r\n", []string{"250 hello", "250 MAIL FROM:<a@b>", "221 bye"}},
		{"bare LF and lower-case quit", "x\nquit\n", []string{"250 x", "221 bye"}},
		{"empty line", "\r\nQUIT\r\n", []string{"250 ", "221 bye"}},
		{"line too long", strings.Repeat("a", maxBannerLine+10) + "\r\n", []string{"500 line too long"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := dialT(t, addr)
			rd := bufio.NewReader(c)
			// Read before writing anything: the server must speak first.
			line, err := rd.ReadString('\n')
			if err != nil || line != BannerGreeting("banner-1")+"\r\n" {
				t.Fatalf("greeting %q, %v", line, err)
			}
			go io.WriteString(c, tc.send)
			for _, want := range tc.wants {
				got, err := rd.ReadString('\n')
				if err != nil || got != want+"\r\n" {
					t.Fatalf("got %q (%v), want %q", got, err, want)
				}
			}
			// The server half-closes at once after its last reply.
			_ = c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
			if rest, err := io.ReadAll(rd); err != nil || len(rest) != 0 {
				t.Fatalf("after the last reply: %q, %v; want EOF", rest, err)
			}
		})
	}
}

func TestBannerManyConnections(t *testing.T) {
	addr := serve(t, &BannerServer{Name: "b"})
	const n = 100
	conns := make([]net.Conn, n)
	readers := make([]*bufio.Reader, n)
	// All open at once, each greeted before any of them writes.
	for i := range conns {
		conns[i] = dialT(t, addr)
		readers[i] = bufio.NewReader(conns[i])
		if g, err := readers[i].ReadString('\n'); err != nil || !strings.HasPrefix(g, "220 b ") {
			t.Fatalf("conn %d: greeting %q, %v", i, g, err)
		}
	}
	for i, c := range conns {
		if _, err := io.WriteString(c, "ping "+strings.Repeat("z", i)+"\r\n"); err != nil {
			t.Fatal(err)
		}
	}
	for i, rd := range readers {
		want := "250 ping " + strings.Repeat("z", i) + "\r\n"
		if got, err := rd.ReadString('\n'); err != nil || got != want {
			t.Fatalf("conn %d: %q, %v; want %q", i, got, err, want)
		}
	}
}

// TestServersStopWithOpenConnections checks that the TCP servers return
// promptly (and close connections) when their context ends.
func TestServersStopWithOpenConnections(t *testing.T) {
	tests := []struct {
		name string
		srv  interface {
			Serve(context.Context, net.Listener) error
		}
	}{
		{"tcp-echo", &TCPEchoServer{}},
		{"banner", &BannerServer{Name: "b"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			addr, stop := serveStoppable(t, tc.srv)
			c := dialT(t, addr)
			io.WriteString(c, "hi\n")
			c.Read(make([]byte, 64)) // the connection is being served
			if err := stop(); err != nil {
				t.Fatalf("Serve: %v", err)
			}
			if _, err := io.ReadAll(c); err != nil && !strings.Contains(err.Error(), "reset") {
				t.Fatalf("after stop: %v", err)
			}
			if c2, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
				c2.Close()
				t.Fatal("listener still accepts after stop")
			}
		})
	}
}
