package samples

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"
)

// serveConns accepts on l until ctx is done and runs handle for every
// connection. On return every connection has been closed and every handler
// has finished.
func serveConns(ctx context.Context, l net.Listener, logger *slog.Logger, handle func(net.Conn)) error {
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]struct{}{}
	stop := context.AfterFunc(ctx, func() {
		l.Close()
		mu.Lock()
		defer mu.Unlock()
		for c := range conns {
			c.Close()
		}
	})
	defer stop()
	defer wg.Wait()
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			return fmt.Errorf("accept: %w", err)
		}
		mu.Lock()
		conns[c] = struct{}{}
		mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() {
				mu.Lock()
				delete(conns, c)
				mu.Unlock()
				c.Close()
			}()
			logger.Info("connection", "source", c.RemoteAddr().String())
			handle(c)
		}()
	}
}

// TCPEchoServer writes back every byte it reads. It is client-first: it
// sends nothing before the client does.
type TCPEchoServer struct {
	Logger *slog.Logger
}

// Serve serves on l until ctx is done.
func (s *TCPEchoServer) Serve(ctx context.Context, l net.Listener) error {
	if s.Logger == nil {
		s.Logger = slog.New(slog.DiscardHandler)
	}
	return serveConns(ctx, l, s.Logger, func(c net.Conn) {
		_, _ = io.Copy(c, c)
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
	})
}

// BannerServer speaks a server-first, line-based protocol like SMTP: it
// greets with "220 <name> ambit banner ready" before reading anything,
// answers each line with "250 <line>", and "QUIT" with "221 bye".
type BannerServer struct {
	Name   string
	Logger *slog.Logger
}

// BannerGreeting is the first line the banner server writes.
func BannerGreeting(name string) string { return "220 " + name + " ambit banner ready" }

// Serve serves on l until ctx is done.
func (s *BannerServer) Serve(ctx context.Context, l net.Listener) error {
	if s.Logger == nil {
		s.Logger = slog.New(slog.DiscardHandler)
	}
	return serveConns(ctx, l, s.Logger, func(c net.Conn) {
		w := bufio.NewWriter(c)
		fmt.Fprintf(w, "%s\r\n", BannerGreeting(s.Name))
		if w.Flush() != nil {
			return
		}
		sc := bufio.NewScanner(c)
		for sc.Scan() {
			line := strings.TrimRight(sc.Text(), "\r")
			if strings.EqualFold(line, "QUIT") {
				fmt.Fprintf(w, "221 bye\r\n")
				_ = w.Flush()
				return
			}
			fmt.Fprintf(w, "250 %s\r\n", line)
			if w.Flush() != nil {
				return
			}
		}
	})
}
