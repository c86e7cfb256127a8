// Command ambit-benchtool is the benchmark's helper inside pods (built to
// bin/ambit-benchtool by `make bench-tools`, started with `ambit local exec
// POD -- ambit-benchtool ...`). Subcommands:
//
//	echo -listen :9100            echo every byte back on every connection
//	rtt  -addr HOST:PORT -duration 3s
//	                              one connection, 1-byte ping-pong; prints
//	                              JSON {count, p50_us, p99_us}
//	hold -addr HOST:PORT -n 10000 open n connections, exchange one byte on
//	                              each, print "ready N", hold them until
//	                              stdin closes (or -max-hold), close them
//
// Everything is bounded in time; errors go to stderr with a non-zero exit.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"sort"
	"sync"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: ambit-benchtool echo|rtt|hold [flags]")
		os.Exit(2)
	}
	raiseNoFile()
	var err error
	switch os.Args[1] {
	case "echo":
		err = echo(os.Args[2:])
	case "rtt":
		err = rtt(os.Args[2:])
	case "hold":
		err = hold(os.Args[2:])
	default:
		err = fmt.Errorf("unknown subcommand %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "ambit-benchtool:", err)
		os.Exit(1)
	}
}

// raiseNoFile lifts RLIMIT_NOFILE so that tens of thousands of sockets fit.
// Go already raises the soft limit to the hard one; as root we may also
// raise the hard one. Failure is not fatal: hold reports dial errors.
func raiseNoFile() {
	const want = 1 << 17
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil || l.Cur >= want {
		return
	}
	n := syscall.Rlimit{Cur: want, Max: want}
	if l.Max > want {
		n.Max = l.Max
	}
	if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &n) != nil {
		l.Cur = l.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
	}
}

func echo(args []string) error {
	fs := flag.NewFlagSet("echo", flag.ExitOnError)
	listen := fs.String("listen", ":9100", "address to listen on")
	_ = fs.Parse(args)
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("echo: %w", err)
	}
	for {
		c, err := l.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("echo: accept: %w", err)
		}
		go func() {
			defer c.Close()
			// A small buffer: held connections are many, and ping-pong
			// carries one byte at a time.
			buf := make([]byte, 1024)
			_, _ = io.CopyBuffer(struct{ io.Writer }{c}, struct{ io.Reader }{c}, buf)
		}()
	}
}

// rttResult is what rtt prints.
type rttResult struct {
	Count int     `json:"count"`
	P50us float64 `json:"p50_us"`
	P99us float64 `json:"p99_us"`
}

func rtt(args []string) error {
	fs := flag.NewFlagSet("rtt", flag.ExitOnError)
	addr := fs.String("addr", "", "echo server address")
	duration := fs.Duration("duration", 3*time.Second, "how long to ping-pong")
	maxN := fs.Int("n", 1_000_000, "at most this many round trips")
	warm := fs.Int("warmup", 200, "round trips not counted at the start")
	_ = fs.Parse(args)
	c, err := net.DialTimeout("tcp", *addr, 5*time.Second)
	if err != nil {
		return fmt.Errorf("rtt: %w", err)
	}
	defer c.Close()
	end := time.Now().Add(*duration)
	if err := c.SetDeadline(end.Add(5 * time.Second)); err != nil {
		return fmt.Errorf("rtt: %w", err)
	}
	b := []byte{'x'}
	samples := make([]time.Duration, 0, 1<<16)
	for i := 0; i < *maxN+*warm; i++ {
		t0 := time.Now()
		if t0.After(end) && i > *warm {
			break
		}
		if _, err := c.Write(b); err != nil {
			return fmt.Errorf("rtt: write: %w", err)
		}
		if _, err := io.ReadFull(c, b); err != nil {
			return fmt.Errorf("rtt: read: %w", err)
		}
		if i >= *warm {
			samples = append(samples, time.Since(t0))
		}
	}
	if len(samples) == 0 {
		return errors.New("rtt: no samples")
	}
	sort.Slice(samples, func(i, j int) bool { return samples[i] < samples[j] })
	q := func(p float64) float64 {
		return float64(samples[int(p*float64(len(samples)-1))].Nanoseconds()) / 1e3
	}
	return json.NewEncoder(os.Stdout).Encode(rttResult{Count: len(samples), P50us: q(0.50), P99us: q(0.99)})
}

func hold(args []string) error {
	fs := flag.NewFlagSet("hold", flag.ExitOnError)
	addr := fs.String("addr", "", "echo server address")
	n := fs.Int("n", 1000, "connections to open and hold")
	parallel := fs.Int("parallel", 32, "dials in flight")
	timeout := fs.Duration("timeout", 90*time.Second, "time allowed to open them all")
	maxHold := fs.Duration("max-hold", 2*time.Minute, "release after this long even if stdin stays open")
	_ = fs.Parse(args)
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	conns := make([]net.Conn, *n)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
	)
	next := make(chan int)
	for w := 0; w < *parallel; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				c, err := open(ctx, *addr)
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = fmt.Errorf("connection %d: %w", i, err)
					}
					mu.Unlock()
					cancel()
					continue
				}
				conns[i] = c
			}
		}()
	}
	t0 := time.Now()
	for i := 0; i < *n && ctx.Err() == nil; i++ {
		next <- i
	}
	close(next)
	wg.Wait()
	if firstErr != nil {
		return fmt.Errorf("hold: %w", firstErr)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("hold: opening %d connections: %w", *n, err)
	}
	fmt.Printf("ready %d %.1fs\n", *n, time.Since(t0).Seconds())
	released := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, bufio.NewReader(os.Stdin))
		close(released)
	}()
	select {
	case <-released:
	case <-time.After(*maxHold):
	}
	return nil
}

// open dials addr and completes a 1-byte exchange, so every proxy on the
// way has set the connection up end to end.
func open(ctx context.Context, addr string) (net.Conn, error) {
	c, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	b := []byte{'h'}
	if _, err := c.Write(b); err != nil {
		c.Close()
		return nil, err
	}
	if _, err := io.ReadFull(c, b); err != nil {
		c.Close()
		return nil, err
	}
	_ = c.SetDeadline(time.Time{})
	return c, nil
}
