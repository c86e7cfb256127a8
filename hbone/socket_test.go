package hbone

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/internal/perftest"
)

// The fast paths between a stream and a socket: the connection's reader
// delivering DATA straight to the socket a parked WriteTo copies to
// (stream.deliverLocked), and ReadFrom reading a socket with a buffer
// taken only once it is readable (stream.readFromRaw). These tests run the
// shapes a relay meets: a socket that keeps up, one that falls behind (the
// delivery falls back to WriteTo), one that resets, a stream that is
// closed or times out while WriteTo is parked, and a source socket that
// ends, fails or times out.

// sendHandler accepts and writes payload in chunks of the given sizes,
// then ends the stream.
func sendHandler(payload []byte, sizes []int) HandlerFunc {
	return func(_ context.Context, r *Request) {
		c, err := r.Accept(nil)
		if err != nil {
			return
		}
		defer c.Close()
		for i := 0; len(payload) > 0; i++ {
			n := min(sizes[i%len(sizes)], len(payload))
			if _, err := c.Write(payload[:n]); err != nil {
				return
			}
			payload = payload[n:]
		}
		c.CloseWrite()
		io.Copy(io.Discard, c)
	}
}

func TestWriteToSocket(t *testing.T) {
	payload := make([]byte, 8<<20)
	rnd := rand.New(rand.NewPCG(1, 2))
	for i := range payload {
		payload[i] = byte(rnd.Uint32())
	}
	cases := []struct {
		name  string
		size  int   // bytes the server sends
		sizes []int // its write sizes
		// reader of the socket's far end: how fast it takes the bytes
		readChunk int
		pause     time.Duration
	}{
		{name: "small messages, reader keeps up", size: 200 << 10, sizes: []int{1, 7, 100, 1024, 3000}, readChunk: 64 << 10},
		{name: "bulk, reader keeps up", size: 8 << 20, sizes: []int{64 << 10}, readChunk: 256 << 10},
		{name: "bulk, slow reader (delivery falls back to WriteTo)", size: 4 << 20, sizes: []int{16 << 10, 100 << 10}, readChunk: 4 << 10, pause: 100 * time.Microsecond},
		{name: "one byte", size: 1, sizes: []int{1}, readChunk: 1},
		{name: "nothing", size: 0, sizes: []int{1}, readChunk: 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			noLeaks(t)
			want := payload[:tc.size]
			e, k := handlerEnv(t, sendHandler(want, tc.sizes))
			c := openStream(t, e, k)
			near, far := perftest.TCPPair(t)
			got := make(chan []byte, 1)
			go func() {
				var buf bytes.Buffer
				p := make([]byte, tc.readChunk)
				for {
					n, err := far.Read(p)
					buf.Write(p[:n])
					if err != nil {
						got <- buf.Bytes()
						return
					}
					if tc.pause > 0 {
						time.Sleep(tc.pause)
					}
				}
			}()
			n, err := c.WriteTo(near) // io.Copy(near, c) calls this
			if err != nil {
				t.Fatalf("WriteTo: %v", err)
			}
			if n != int64(len(want)) {
				t.Errorf("WriteTo counted %d bytes, want %d", n, len(want))
			}
			near.CloseWrite()
			select {
			case b := <-got:
				if sha256.Sum256(b) != sha256.Sum256(want) {
					t.Errorf("socket got %d bytes, not the %d sent (or out of order)", len(b), len(want))
				}
			case <-time.After(20 * time.Second):
				t.Fatal("socket reader never saw EOF")
			}
		})
	}
}

// TestWriteToSocketEnds checks that a WriteTo parked on an idle stream
// returns when the stream or its socket ends, and how.
func TestWriteToSocketEnds(t *testing.T) {
	cases := []struct {
		name    string
		end     func(c *Conn, far *net.TCPConn)
		wantErr func(error) bool
	}{
		{name: "stream closed", end: func(c *Conn, _ *net.TCPConn) { c.Close() },
			wantErr: func(err error) bool { return errors.Is(err, net.ErrClosed) }},
		{name: "read deadline", end: func(c *Conn, _ *net.TCPConn) { c.SetReadDeadline(time.Now().Add(50 * time.Millisecond)) },
			wantErr: func(err error) bool { return errors.Is(err, os.ErrDeadlineExceeded) }},
		{name: "socket reset while data flows", end: func(_ *Conn, far *net.TCPConn) {
			far.SetLinger(0)
			far.Close()
		}, wantErr: func(err error) bool { return err != nil }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			noLeaks(t)
			// The server trickles data: deliveries happen while WriteTo is parked.
			e, k := handlerEnv(t, func(_ context.Context, r *Request) {
				c, err := r.Accept(nil)
				if err != nil {
					return
				}
				defer c.Close()
				if tc.name != "socket reset while data flows" {
					io.Copy(io.Discard, c)
					return
				}
				for {
					if _, err := c.Write(make([]byte, 1000)); err != nil {
						return
					}
					time.Sleep(time.Millisecond)
				}
			})
			c := openStream(t, e, k)
			near, far := perftest.TCPPair(t)
			done := make(chan error, 1)
			go func() {
				_, err := c.WriteTo(near)
				done <- err
			}()
			time.Sleep(50 * time.Millisecond) // WriteTo parks
			tc.end(c, far)
			select {
			case err := <-done:
				if !tc.wantErr(err) {
					t.Errorf("WriteTo returned %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("WriteTo still parked")
			}
			c.Close()
		})
	}
}

// TestReadFromSocket checks ReadFrom on a socket source: every byte sent,
// in order, and the right result when the source ends, fails or times out.
func TestReadFromSocket(t *testing.T) {
	cases := []struct {
		name    string
		size    int
		end     func(near, far *net.TCPConn) // after far wrote size bytes
		wantErr func(error) bool
	}{
		{name: "EOF after bulk", size: 6 << 20, end: func(_, far *net.TCPConn) { far.CloseWrite() },
			wantErr: func(err error) bool { return err == nil }},
		{name: "EOF at once", size: 0, end: func(_, far *net.TCPConn) { far.CloseWrite() },
			wantErr: func(err error) bool { return err == nil }},
		{name: "source reset", size: 1000, end: func(_, far *net.TCPConn) { far.SetLinger(0); far.Close() },
			wantErr: func(err error) bool { return err != nil }},
		{name: "source read deadline", size: 1000, end: func(near, _ *net.TCPConn) { near.SetReadDeadline(time.Now().Add(50 * time.Millisecond)) },
			wantErr: func(err error) bool { return errors.Is(err, os.ErrDeadlineExceeded) }},
		{name: "source closed locally", size: 1000, end: func(near, _ *net.TCPConn) { near.Close() },
			wantErr: func(err error) bool { return errors.Is(err, net.ErrClosed) }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			noLeaks(t)
			sums := make(chan [32]byte, 1)
			e, k := handlerEnv(t, func(_ context.Context, r *Request) {
				c, err := r.Accept(nil)
				if err != nil {
					return
				}
				defer c.Close()
				h := sha256.New()
				io.Copy(h, c)
				var s [32]byte
				copy(s[:], h.Sum(nil))
				sums <- s
			})
			c := openStream(t, e, k)
			near, far := perftest.TCPPair(t)
			payload := bytes.Repeat([]byte("0123456789abcdef"), tc.size/16+1)[:tc.size]
			go func() {
				far.Write(payload)
				time.Sleep(20 * time.Millisecond)
				tc.end(near, far)
			}()
			n, err := c.ReadFrom(near)
			if !tc.wantErr(err) {
				t.Fatalf("ReadFrom returned %v", err)
			}
			if n != int64(len(payload)) {
				t.Errorf("ReadFrom sent %d bytes, want %d", n, len(payload))
			}
			c.CloseWrite()
			select {
			case s := <-sums:
				if s != sha256.Sum256(payload) {
					t.Error("server got other bytes than were sent")
				}
			case <-time.After(10 * time.Second):
				t.Fatal("server never saw END_STREAM")
			}
		})
	}
}
