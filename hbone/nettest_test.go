package hbone

import (
	"context"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/nettest"
)

// TestStreamConnConformance runs x/net's net.Conn conformance suite over a
// client stream and the server's accepted stream: basic and concurrent I/O,
// close semantics, and deadlines (past, future, changed while a read or
// write is blocked, cleared), which the streams arm lazily.
func TestStreamConnConformance(t *testing.T) {
	nettest.TestConn(t, func() (c1, c2 net.Conn, stop func(), err error) {
		client, server, stop, err := streamPair(t)
		if err != nil {
			return nil, nil, nil, err
		}
		return &orderlyClose{Conn: client}, &orderlyClose{Conn: server}, stop, nil
	})
}

// streamPair returns a client stream and the server handler's accepted
// stream of one CONNECT; stop ends both.
func streamPair(t *testing.T) (client, server net.Conn, stop func(), err error) {
	{
		e := newEnv(t)
		accepted := make(chan net.Conn, 1)
		release := make(chan struct{})
		srv := &Server{TLSConfig: e.serverTLS, Handler: HandlerFunc(func(ctx context.Context, r *Request) {
			c, err := r.Accept(nil)
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c
			<-release // the stream lives while the handler runs
		})}
		e.addr = e.serve(t, srv, "127.0.0.1:0")
		c, err := e.pool.Dial(context.Background(), e.key(), "10.244.1.5:8080", http.Header{})
		if err != nil {
			close(release)
			return nil, nil, nil, err
		}
		client = c
		server, ok := <-accepted
		if !ok {
			close(release)
			return nil, nil, nil, net.ErrClosed
		}
		stop = func() {
			client.Close()
			server.Close()
			close(release)
		}
		return client, server, stop, nil
	}
}

// orderlyClose maps Close to what TCP's close does when nothing is left
// unread, the suite's assumption: END_STREAM after the data (CloseWrite),
// then refuse further use locally. A stream's own Close aborts (RST_STREAM)
// when the peer has not finished, as SO_LINGER 0 would; the real Close runs
// in stop.
type orderlyClose struct {
	net.Conn
	mu     sync.Mutex
	closed bool
}

func (o *orderlyClose) isClosed() bool { o.mu.Lock(); defer o.mu.Unlock(); return o.closed }

func (o *orderlyClose) Read(p []byte) (int, error) {
	if o.isClosed() {
		return 0, net.ErrClosed
	}
	return o.Conn.Read(p)
}

func (o *orderlyClose) Write(p []byte) (int, error) {
	if o.isClosed() {
		return 0, net.ErrClosed
	}
	return o.Conn.Write(p)
}

func (o *orderlyClose) Close() error {
	o.mu.Lock()
	o.closed = true
	o.mu.Unlock()
	err := o.Conn.(interface{ CloseWrite() error }).CloseWrite()
	// Wake a Read blocked in another goroutine, as closing a socket does.
	_ = o.Conn.SetReadDeadline(time.Unix(1, 0))
	return err
}

// TestStreamDeadlines: a blocked read or write with nothing else happening
// on the stream is ended by its deadline (the lazily armed timer alone must
// wake it), whether the deadline was set before it blocked, while it was
// blocked, or moved while it was blocked.
func TestStreamDeadlines(t *testing.T) {
	cases := []struct {
		name  string
		write bool          // block in Write (flow control) instead of Read
		set   time.Duration // deadline from now, set before blocking
		later time.Duration // if set: moved to this from now, 50 ms into the wait
		want  time.Duration // about when the call returns
	}{
		{name: "read, deadline before blocking", set: 150 * time.Millisecond, want: 150 * time.Millisecond},
		{name: "read, deadline set while blocked", later: 150 * time.Millisecond, want: 200 * time.Millisecond},
		{name: "read, deadline brought forward", set: 10 * time.Second, later: 100 * time.Millisecond, want: 150 * time.Millisecond},
		{name: "read, deadline pushed back", set: 100 * time.Millisecond, later: 300 * time.Millisecond, want: 350 * time.Millisecond},
		{name: "write, deadline before blocking", write: true, set: 300 * time.Millisecond, want: 300 * time.Millisecond},
		{name: "write, deadline set while blocked", write: true, later: 300 * time.Millisecond, want: 350 * time.Millisecond},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			client, _, stop, err := streamPair(t)
			if err != nil {
				t.Fatal(err)
			}
			defer stop()
			setDL := client.SetReadDeadline
			if tc.write {
				setDL = client.SetWriteDeadline
			}
			start := time.Now()
			if tc.set > 0 {
				setDL(start.Add(tc.set))
			}
			if tc.later > 0 {
				go func() {
					time.Sleep(50 * time.Millisecond)
					setDL(time.Now().Add(tc.later))
				}()
			}
			if tc.write {
				buf := make([]byte, 64<<10) // the peer never reads: the window runs out
				for err == nil {
					_, err = client.Write(buf)
				}
			} else {
				_, err = client.Read(make([]byte, 1))
			}
			took := time.Since(start)
			if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
				t.Fatalf("err %v, want a timeout", err)
			}
			if took < tc.want-30*time.Millisecond || took > tc.want+500*time.Millisecond {
				t.Errorf("returned after %v, want about %v", took, tc.want)
			}
		})
	}
}
