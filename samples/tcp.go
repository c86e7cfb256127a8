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

// countingConn counts the bytes read from and written to a connection.
type countingConn struct {
	net.Conn
	in, out int64
}

func (c *countingConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.in += int64(n)
	return n, err
}

func (c *countingConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.out += int64(n)
	return n, err
}

// CloseWrite half-closes the connection if it can.
func (c *countingConn) CloseWrite() error {
	closeWrite(c.Conn)
	return nil
}

// closeWrite half-closes c if it can, so that the peer reads EOF after what
// was sent.
func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
}

// serveConns accepts on l until ctx is done and runs handle for every
// connection in its own goroutine, logging one line per connection when it
// ends. When ctx is done it closes l and every open connection, and it
// returns (nil) only after every handler has finished. Accept errors other
// than a closed listener are retried with backoff, as net/http does.
func serveConns(ctx context.Context, l net.Listener, log *slog.Logger, handle func(net.Conn)) error {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns = map[net.Conn]struct{}{}
	)
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
	var backoff time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("accept on %s: %w", l.Addr(), err)
			}
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			log.Warn("accept failed; retrying", "err", err, "in", backoff)
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
				return nil
			}
			continue
		}
		backoff = 0
		mu.Lock()
		if ctx.Err() != nil { // raced with shutdown: the AfterFunc already ran
			mu.Unlock()
			c.Close()
			return nil
		}
		conns[c] = struct{}{}
		mu.Unlock()
		wg.Go(func() {
			start := time.Now()
			cc := &countingConn{Conn: c}
			defer func() {
				mu.Lock()
				delete(conns, c)
				mu.Unlock()
				c.Close()
				log.Info("connection", "source", c.RemoteAddr().String(), "bytesIn", cc.in, "bytesOut", cc.out,
					"duration", time.Since(start).Round(time.Microsecond))
			}()
			handle(cc)
		})
	}
}

// TCPEchoServer writes back every byte it reads, and half-closes when the
// client does. It is client-first: it sends nothing before the client does.
type TCPEchoServer struct {
	Name   string       // the pod name, for logs
	Logger *slog.Logger // nil: no logs
}

// Serve serves on l until ctx is done, then closes every connection.
func (s *TCPEchoServer) Serve(ctx context.Context, l net.Listener) error {
	log := s.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return serveConns(ctx, l, log, func(c net.Conn) {
		_, _ = io.Copy(c, c)
		closeWrite(c)
	})
}

// BannerServer speaks a server-first, line-based protocol like SMTP: it
// greets with "220 <name> ambit banner ready" before reading anything,
// answers each line with "250 <line>", and "QUIT" with "221 bye" before
// closing. Lines end with "\n" or "\r\n"; a line longer than 64 KiB gets
// "500 line too long" and the connection is closed.
type BannerServer struct {
	Name   string       // the pod name, in the greeting
	Logger *slog.Logger // nil: no logs
}

// maxBannerLine bounds the line a banner client may send.
const maxBannerLine = 64 << 10

// BannerGreeting is the first line the banner server writes, without "\r\n".
func BannerGreeting(name string) string { return "220 " + name + " ambit banner ready" }

// Serve serves on l until ctx is done, then closes every connection.
func (s *BannerServer) Serve(ctx context.Context, l net.Listener) error {
	log := s.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return serveConns(ctx, l, log, s.handle)
}

func (s *BannerServer) handle(c net.Conn) {
	w := bufio.NewWriter(c)
	reply := func(line string) bool {
		w.WriteString(line)
		w.WriteString("\r\n")
		return w.Flush() == nil
	}
	if !reply(BannerGreeting(s.Name)) {
		return
	}
	sc := bufio.NewScanner(c)
	sc.Buffer(make([]byte, 0, 4096), maxBannerLine)
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		if strings.EqualFold(line, "QUIT") {
			reply("221 bye")
			lingerClose(c)
			return
		}
		if !reply("250 " + line) {
			return
		}
	}
	if errors.Is(sc.Err(), bufio.ErrTooLong) {
		reply("500 line too long")
		lingerClose(c)
	}
}

// lingerClose half-closes c and reads what the peer still sends for a
// moment, so that closing with unread input does not reset the connection
// before the peer has read our last reply.
func lingerClose(c net.Conn) {
	closeWrite(c)
	_ = c.SetReadDeadline(time.Now().Add(time.Second))
	_, _ = io.Copy(io.Discard, io.LimitReader(c, 1<<20))
}
