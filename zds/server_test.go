package zds

import (
	"context"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
	"istio.io/istio/pkg/zdsapi"
)

// fakeZtunnel speaks raw datagrams to a Server.
type fakeZtunnel struct {
	t *testing.T
	c *net.UnixConn
}

func dialFake(t *testing.T, path string) *fakeZtunnel {
	t.Helper()
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &fakeZtunnel{t: t, c: c}
}

// connectFake dials and says hello.
func connectFake(t *testing.T, path string) *fakeZtunnel {
	t.Helper()
	z := dialFake(t, path)
	writeRaw(t, z.c, marshal(t, &zdsapi.ZdsHello{Version: zdsapi.Version_V1}))
	return z
}

// recv reads one request within d (a failure is fatal).
func (z *fakeZtunnel) recv(d time.Duration) (*zdsapi.WorkloadRequest, *os.File) {
	z.t.Helper()
	req, f, err := z.tryRecv(d)
	if err != nil {
		z.t.Fatalf("reading a request: %v", err)
	}
	return req, f
}

func (z *fakeZtunnel) tryRecv(d time.Duration) (*zdsapi.WorkloadRequest, *os.File, error) {
	z.c.SetReadDeadline(time.Now().Add(d))
	data, f, err := readDatagram(z.c, make([]byte, maxDatagram), make([]byte, unix.CmsgSpace(4)))
	if err != nil {
		return nil, nil, err
	}
	req := &zdsapi.WorkloadRequest{}
	if err := proto.Unmarshal(data, req); err != nil {
		return nil, f, err
	}
	return req, f, nil
}

// quiet asserts that nothing arrives within d.
func (z *fakeZtunnel) quiet(d time.Duration) {
	z.t.Helper()
	req, f, err := z.tryRecv(d)
	if f != nil {
		f.Close()
	}
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		z.t.Fatalf("expected silence, got %v (%v)", describe(req), err)
	}
}

// closedByPeer asserts that the server ends the connection within wait
// (after any messages still in flight).
func (z *fakeZtunnel) closedByPeer() {
	z.t.Helper()
	z.c.SetReadDeadline(time.Now().Add(wait))
	for {
		_, f, err := readDatagram(z.c, make([]byte, maxDatagram), make([]byte, unix.CmsgSpace(4)))
		if f != nil {
			f.Close()
		}
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded):
			z.t.Fatal("server kept the connection open")
		case err != nil && !errors.Is(err, ErrProtocol):
			return
		}
	}
}

func (z *fakeZtunnel) answer(text string) {
	z.t.Helper()
	writeRaw(z.t, z.c, marshal(z.t, ackMessage(text)))
}

// snapshot reads and acks requests up to SnapshotSent, returning them
// described and the files that came with them by uid.
func (z *fakeZtunnel) snapshot() ([]string, map[string]*os.File) {
	z.t.Helper()
	var got []string
	files := map[string]*os.File{}
	for {
		req, f := z.recv(wait)
		d := describe(req)
		got = append(got, d)
		if f != nil {
			z.t.Cleanup(func() { f.Close() })
			files[req.GetAdd().GetUid()] = f
		}
		z.answer("")
		if d == "snapshot" {
			return got, files
		}
	}
}

func TestServerSocketFile(t *testing.T) {
	t.Run("owner only", func(t *testing.T) {
		path := sockPath(t)
		startServer(t, path, nil)
		fi, err := os.Lstat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != 0o600 {
			t.Fatalf("socket mode %v, want a socket with 0600", fi.Mode())
		}
		entries, _ := os.ReadDir(filepath.Dir(path))
		if len(entries) != 1 {
			t.Fatalf("directory holds %d entries, want only the socket", len(entries))
		}
	})
	t.Run("stale socket replaced", func(t *testing.T) {
		path := sockPath(t)
		stale, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
		if err != nil {
			t.Fatal(err)
		}
		stale.SetUnlinkOnClose(false)
		stale.Close()
		s, _ := startServer(t, path, nil)
		connectFake(t, path).snapshot()
		eventually(t, "ztunnel connected", func() bool { return s.Connected() == 1 })
	})
	t.Run("other file kept", func(t *testing.T) {
		path := sockPath(t)
		if err := os.WriteFile(path, []byte("precious"), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := NewServer(path, nil); err == nil || !strings.Contains(err.Error(), "not a socket") {
			t.Fatalf("NewServer over a regular file: %v", err)
		}
		if b, err := os.ReadFile(path); err != nil || string(b) != "precious" {
			t.Fatalf("file changed: %q %v", b, err)
		}
	})
	t.Run("longest path", func(t *testing.T) {
		// The private directory's name would not fit in sun_path: the
		// socket is bound through a descriptor of that directory.
		dir := t.TempDir()
		path := filepath.Join(dir, strings.Repeat("d", maxSocketPath-len(dir)-len("/z.sock")-1), "z.sock")
		if len(path) != maxSocketPath {
			t.Fatalf("built a %d-byte path", len(path))
		}
		s, _ := startServer(t, path, nil)
		if fi, err := os.Lstat(path); err != nil || fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != 0o600 {
			t.Fatalf("socket %v %v", fi, err)
		}
		connectFake(t, path).snapshot()
		eventually(t, "ztunnel connected", func() bool { return s.Connected() == 1 })
	})
	t.Run("path too long", func(t *testing.T) {
		if _, err := NewServer("/tmp/"+strings.Repeat("x", 120), nil); err == nil {
			t.Fatal("NewServer with a 125-byte path: no error")
		}
	})
	t.Run("removed on stop, unless replaced", func(t *testing.T) {
		path := sockPath(t)
		_, stop1 := startServer(t, path, nil)
		stop1()
		if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("socket left behind: %v", err)
		}
		s1, err := NewServer(path, nil)
		if err != nil {
			t.Fatal(err)
		}
		s2, _ := startServer(t, path, nil) // a newer agent takes the path
		if err := s1.Close(); err != nil {
			t.Fatal(err)
		}
		connectFake(t, path).snapshot()
		eventually(t, "newer agent still reachable", func() bool { return s2.Connected() == 1 })
	})
}

func TestServerSnapshotOrderAndAcks(t *testing.T) {
	path := sockPath(t)
	s, _ := startServer(t, path, nil)
	ctx := context.Background()
	fa, fc := netnsFile(t), netnsFile(t)
	for _, p := range []struct {
		uid string
		f   *os.File
	}{{"a", fa}, {"k", nil}, {"c", fc}} {
		err := s.AddWorkload(ctx, p.uid, wlInfo(p.uid), p.f)
		if p.f == nil && err != nil || p.f != nil && !errors.Is(err, ErrNoZtunnel) {
			t.Fatalf("AddWorkload(%s) with no ztunnel: %v", p.uid, err)
		}
	}
	z := connectFake(t, path)

	// The first entry, and nothing more until it is answered.
	req, f := z.recv(wait)
	if describe(req) != "add a" || f == nil || !sameFile(t, f, fa) {
		t.Fatalf("first snapshot entry %v with file %v", describe(req), f)
	}
	f.Close()
	if !proto.Equal(req.GetAdd().GetWorkloadInfo(), wlInfo("a")) {
		t.Fatalf("workload info %v", req.GetAdd().GetWorkloadInfo())
	}
	z.quiet(100 * time.Millisecond)

	// A change made during the snapshot queues behind SnapshotSent.
	fd := netnsFile(t)
	addDone := make(chan error, 1)
	go func() { addDone <- s.AddWorkload(ctx, "d", wlInfo("d"), fd) }()
	time.Sleep(20 * time.Millisecond)
	z.answer("")
	req, f = z.recv(wait)
	if describe(req) != "keep k" || f != nil {
		t.Fatalf("second entry %v with file %v", describe(req), f)
	}
	z.answer("refused in the snapshot: goes on")
	req, f = z.recv(wait)
	if describe(req) != "add c" || !sameFile(t, f, fc) {
		t.Fatalf("third entry %v", describe(req))
	}
	f.Close()
	z.answer("")
	if req, _ = z.recv(wait); describe(req) != "snapshot" {
		t.Fatalf("fourth message %v, want SnapshotSent", describe(req))
	}
	if s.Connected() != 0 {
		t.Fatal("connected before the snapshot was answered")
	}
	z.answer("")
	req, f = z.recv(wait)
	if describe(req) != "add d" || !sameFile(t, f, fd) {
		t.Fatalf("after the snapshot: %v", describe(req))
	}
	f.Close()
	select {
	case err := <-addDone:
		t.Fatalf("AddWorkload returned %v before its answer", err)
	case <-time.After(20 * time.Millisecond):
	}
	z.answer("")
	select {
	case err := <-addDone:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(wait):
		t.Fatal("AddWorkload did not return after the ack")
	}
	eventually(t, "connected", func() bool { return s.Connected() == 1 })

	// A second ztunnel gets the same pods, in the same order, d last.
	got, _ := connectFake(t, path).snapshot()
	if strings.Join(got, ";") != "add a;keep k;add c;add d;snapshot" {
		t.Fatalf("second snapshot %v", got)
	}
}

func TestServerAnswers(t *testing.T) {
	tests := []struct {
		name     string
		respond  func(z *fakeZtunnel)
		wantErr  string // "" for success
		wantNack string // the Reason of a *NackError
		dropped  bool
	}{
		{name: "ack", respond: func(z *fakeZtunnel) { z.answer("") }},
		{name: "nack", respond: func(z *fakeZtunnel) { z.answer("failure to start proxy: port in use") }, wantNack: "failure to start proxy: port in use"},
		{name: "garbage answer", respond: func(z *fakeZtunnel) { writeRaw(z.t, z.c, []byte{0xff, 0xff, 0x01}) }, wantErr: "not an Ack", dropped: true},
		{name: "hello instead of ack", respond: func(z *fakeZtunnel) {
			writeRaw(z.t, z.c, marshal(z.t, &zdsapi.ZdsHello{Version: zdsapi.Version_V1}))
		}, wantErr: "not an Ack", dropped: true},
		{name: "oversized answer", respond: func(z *fakeZtunnel) { writeRaw(z.t, z.c, make([]byte, 2000)) }, wantErr: "longer than 1024", dropped: true},
		{name: "answer with a descriptor", respond: func(z *fakeZtunnel) {
			writeRaw(z.t, z.c, marshal(z.t, ackMessage("")), netnsFile(z.t))
		}, wantErr: "control data truncated", dropped: true},
		{name: "no answer", respond: func(z *fakeZtunnel) {}, wantErr: "no answer within", dropped: true},
		{name: "ztunnel goes away", respond: func(z *fakeZtunnel) { z.c.Close() }, wantErr: "waiting for the answer", dropped: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := sockPath(t)
			s, _ := startServer(t, path, func(s *Server) { s.timeout = 300 * time.Millisecond })
			z := connectFake(t, path)
			z.snapshot()
			eventually(t, "connected", func() bool { return s.Connected() == 1 })
			f := netnsFile(t)
			done := make(chan error, 1)
			go func() { done <- s.AddWorkload(context.Background(), "p", wlInfo("p"), f) }()
			req, rf := z.recv(wait)
			if describe(req) != "add p" || !sameFile(t, rf, f) {
				t.Fatalf("got %v", describe(req))
			}
			rf.Close()
			tc.respond(z)
			var err error
			select {
			case err = <-done:
			case <-time.After(wait):
				t.Fatal("AddWorkload did not return")
			}
			var nack *NackError
			switch {
			case tc.wantNack != "":
				if !errors.As(err, &nack) || nack.Reason != tc.wantNack || nack.UID != "p" || nack.Request != "AddWorkload" {
					t.Fatalf("err %v, want a nack %q", err, tc.wantNack)
				}
			case tc.wantErr != "":
				if err == nil || errors.As(err, &nack) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want %q", err, tc.wantErr)
				}
			case err != nil:
				t.Fatal(err)
			}
			if tc.dropped {
				eventually(t, "connection dropped", func() bool { return s.Connected() == 0 })
				if tc.name != "ztunnel goes away" {
					z.closedByPeer()
				}
				if err := s.AddWorkload(context.Background(), "q", wlInfo("q"), f); !errors.Is(err, ErrNoZtunnel) {
					t.Fatalf("AddWorkload after the drop: %v, want ErrNoZtunnel", err)
				}
				// The pods are still known: a new ztunnel gets them.
				got, _ := connectFake(t, path).snapshot()
				if strings.Join(got, ";") != "add p;add q;snapshot" {
					t.Fatalf("snapshot after the drop: %v", got)
				}
				return
			}
			// The connection still serves.
			go func() { done <- s.DelWorkload(context.Background(), "p") }()
			if req, _ := z.recv(wait); describe(req) != "del p" {
				t.Fatalf("got %v, want del p", describe(req))
			}
			z.answer("")
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			if s.Connected() != 1 {
				t.Fatal("connection lost")
			}
		})
	}
}

func TestServerRefusesBadHello(t *testing.T) {
	tests := []struct {
		name  string
		hello func(z *fakeZtunnel)
	}{
		{"wrong version", func(z *fakeZtunnel) {
			writeRaw(z.t, z.c, marshal(z.t, &zdsapi.ZdsHello{Version: zdsapi.Version_NOT_USED + 7}))
		}},
		{"no version", func(z *fakeZtunnel) { writeRaw(z.t, z.c, []byte{0x10, 0x01}) }},
		{"garbage", func(z *fakeZtunnel) { writeRaw(z.t, z.c, []byte{0xff, 0xff, 0xff}) }},
		{"hello with a descriptor", func(z *fakeZtunnel) {
			writeRaw(z.t, z.c, marshal(z.t, &zdsapi.ZdsHello{Version: zdsapi.Version_V1}), netnsFile(z.t))
		}},
		{"oversized hello", func(z *fakeZtunnel) { writeRaw(z.t, z.c, make([]byte, 1500)) }},
		{"silence", func(z *fakeZtunnel) {}},
		{"ack instead of hello", func(z *fakeZtunnel) { z.answer("") }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := sockPath(t)
			s, _ := startServer(t, path, func(s *Server) { s.timeout = 200 * time.Millisecond })
			if err := s.AddWorkload(context.Background(), "a", wlInfo("a"), netnsFile(t)); !errors.Is(err, ErrNoZtunnel) {
				t.Fatal(err)
			}
			z := dialFake(t, path)
			tc.hello(z)
			z.closedByPeer()
			if s.Connected() != 0 {
				t.Fatal("a refused ztunnel counts as connected")
			}
			got, _ := connectFake(t, path).snapshot()
			if strings.Join(got, ";") != "add a;snapshot" {
				t.Fatalf("good ztunnel after a bad one: %v", got)
			}
		})
	}
}

func TestServerDetectsDeadConnection(t *testing.T) {
	tests := []struct {
		name string
		kill func(z *fakeZtunnel)
	}{
		{"close", func(z *fakeZtunnel) { z.c.Close() }},
		{"unsolicited message", func(z *fakeZtunnel) { z.answer("") }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := sockPath(t)
			s, _ := startServer(t, path, nil)
			z := connectFake(t, path)
			z.snapshot()
			eventually(t, "connected", func() bool { return s.Connected() == 1 })
			start := time.Now()
			tc.kill(z)
			eventually(t, "dead connection noticed", func() bool { return s.Connected() == 0 })
			if d := time.Since(start); d > time.Second {
				t.Fatalf("noticed after %v", d)
			}
			if err := s.AddWorkload(context.Background(), "a", wlInfo("a"), netnsFile(t)); !errors.Is(err, ErrNoZtunnel) {
				t.Fatalf("AddWorkload: %v, want ErrNoZtunnel", err)
			}
		})
	}
}

func TestServerAddsToNewestDeletesToAll(t *testing.T) {
	path := sockPath(t)
	s, _ := startServer(t, path, nil)
	ctx := context.Background()
	old := connectFake(t, path)
	old.snapshot()
	eventually(t, "first ztunnel", func() bool { return s.Connected() == 1 })
	newer := connectFake(t, path)
	newer.snapshot()
	eventually(t, "second ztunnel", func() bool { return s.Connected() == 2 })

	done := make(chan error, 1)
	f := netnsFile(t)
	go func() { done <- s.AddWorkload(ctx, "x", wlInfo("x"), f) }()
	if req, rf := newer.recv(wait); describe(req) != "add x" || !sameFile(t, rf, f) {
		t.Fatalf("newest got %v", describe(req))
	} else {
		rf.Close()
	}
	newer.answer("")
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	old.quiet(50 * time.Millisecond)

	go func() { done <- s.DelWorkload(ctx, "x") }()
	var wg sync.WaitGroup
	for _, z := range []*fakeZtunnel{old, newer} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _, err := z.tryRecv(wait)
			if err != nil || describe(req) != "del x" {
				t.Errorf("got %v (%v), want del x", describe(req), err)
				return
			}
			writeRaw(t, z.c, marshal(t, ackMessage("")))
		}()
	}
	wg.Wait()
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	// Refusals from every connection come back joined.
	go func() { done <- s.DelWorkload(ctx, "y") }()
	for i, z := range []*fakeZtunnel{old, newer} {
		if req, _ := z.recv(wait); describe(req) != "del y" {
			t.Fatalf("got %v", describe(req))
		}
		z.answer("no " + string(rune('1'+i)))
	}
	err := <-done
	if err == nil || !strings.Contains(err.Error(), "no 1") || !strings.Contains(err.Error(), "no 2") {
		t.Fatalf("joined refusals: %v", err)
	}
}

func TestServerAcceptRate(t *testing.T) {
	path := sockPath(t)
	startServer(t, path, nil)
	start := time.Now()
	var wg sync.WaitGroup
	for range 3 {
		z := connectFake(t, path)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if req, _, err := z.tryRecv(wait); err != nil || describe(req) != "snapshot" {
				t.Errorf("got %v (%v), want the snapshot", describe(req), err)
			}
		}()
	}
	wg.Wait()
	if d := time.Since(start); d < 2*acceptInterval-20*time.Millisecond {
		t.Fatalf("3 connections accepted in %v, want at least %v", d, 2*acceptInterval)
	}
}

func TestServerCache(t *testing.T) {
	path := sockPath(t)
	s, stop := startServer(t, path, nil)
	ctx := context.Background()
	f1, f2, f3 := netnsFile(t), netnsFile(t), netnsFile(t)
	for _, step := range []struct {
		uid string
		f   *os.File
	}{{"a", f1}, {"b", f2}, {"a", f3}} {
		if err := s.AddWorkload(ctx, step.uid, wlInfo(step.uid), step.f); !errors.Is(err, ErrNoZtunnel) {
			t.Fatal(err)
		}
	}
	if err := s.DelWorkload(ctx, "b"); err != nil {
		t.Fatalf("DelWorkload with no ztunnel: %v", err)
	}
	// The caller's file is its own: closing it changes nothing.
	dev3, ino3, err := NetnsID(f3)
	if err != nil {
		t.Fatal(err)
	}
	f3.Close()
	got, files := connectFake(t, path).snapshot()
	if strings.Join(got, ";") != "add a;snapshot" {
		t.Fatalf("snapshot %v", got)
	}
	if d, i, err := NetnsID(files["a"]); err != nil || d != dev3 || i != ino3 {
		t.Fatalf("replayed file is not the last one added for a (%v)", err)
	}

	bad := []struct {
		name string
		uid  string
		info *zdsapi.WorkloadInfo
	}{
		{"empty uid", "", wlInfo("x")},
		{"no info", "x", nil},
		{"too large", "x", &zdsapi.WorkloadInfo{Name: strings.Repeat("n", 1100)}},
	}
	for _, b := range bad {
		if err := s.AddWorkload(ctx, b.uid, b.info, f1); err == nil {
			t.Errorf("%s: no error", b.name)
		}
	}
	if err := s.DelWorkload(ctx, ""); err == nil {
		t.Error("DelWorkload of an empty uid: no error")
	}
	stop()
	if err := s.AddWorkload(ctx, "z", wlInfo("z"), f1); !errors.Is(err, ErrServerClosed) {
		t.Fatalf("after stop: %v", err)
	}
	if err := s.Run(ctx); !errors.Is(err, ErrServerClosed) {
		t.Fatalf("Run after stop: %v", err)
	}
}

func TestServerAddHonoursContext(t *testing.T) {
	path := sockPath(t)
	s, _ := startServer(t, path, nil)
	z := connectFake(t, path)
	z.snapshot()
	eventually(t, "connected", func() bool { return s.Connected() == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := s.AddWorkload(ctx, "slow", wlInfo("slow"), netnsFile(t))
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > time.Second {
		t.Fatalf("err %v after %v", err, time.Since(start))
	}
	// The request still went out, in order.
	if req, f := z.recv(wait); describe(req) != "add slow" {
		t.Fatalf("got %v", describe(req))
	} else {
		f.Close()
	}
	z.answer("")
}
