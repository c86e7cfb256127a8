package zds

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"istio.io/istio/pkg/zdsapi"
)

// recorder is a Handler that records calls.
type recorder struct {
	mu      sync.Mutex
	added   map[string]*os.File
	deleted []string
	kept    []map[string]bool
	failUID string
}

func newRecorder() *recorder { return &recorder{added: map[string]*os.File{}} }

func (r *recorder) AddWorkload(_ context.Context, uid string, _ *zdsapi.WorkloadInfo, netns *os.File) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if uid == r.failUID {
		netns.Close()
		return errors.New("cannot bind 15008")
	}
	r.added[uid] = netns
	return nil
}

func (r *recorder) DelWorkload(_ context.Context, uid string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.deleted = append(r.deleted, uid)
	if f, ok := r.added[uid]; ok {
		f.Close()
		delete(r.added, uid)
	}
	return nil
}

func (r *recorder) Reconcile(_ context.Context, keep map[string]bool) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.kept = append(r.kept, keep)
	for uid, f := range r.added {
		if !keep[uid] {
			f.Close()
			delete(r.added, uid)
		}
	}
	return nil
}

func (r *recorder) uids() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for u := range r.added {
		out = append(out, u)
	}
	sort.Strings(out)
	return out
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func openNetns(t *testing.T) *os.File {
	t.Helper()
	f, err := os.Open("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func info(name string) *zdsapi.WorkloadInfo {
	return &zdsapi.WorkloadInfo{Name: name, Namespace: "demo", ServiceAccount: "sa"}
}

func startServer(t *testing.T, path string) (*Server, context.CancelFunc) {
	t.Helper()
	s, err := NewServer(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.Run(ctx) }()
	stop := func() { cancel(); <-done }
	t.Cleanup(stop)
	return s, stop
}

func TestSnapshotAddDel(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ztunnel.sock")
	s, _ := startServer(t, path)
	ns := openNetns(t)
	ctx := context.Background()
	for _, uid := range []string{"a", "b"} {
		if err := s.AddWorkload(ctx, uid, info(uid), ns); !errors.Is(err, ErrNoZtunnel) {
			t.Fatalf("add before any ztunnel: %v, want ErrNoZtunnel", err)
		}
	}
	rec := newRecorder()
	c := &Client{Path: path, Handler: rec}
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go c.Run(cctx)
	eventually(t, "snapshot", c.Ready)
	if got := strings.Join(rec.uids(), ","); got != "a,b" {
		t.Fatalf("after snapshot: %s", got)
	}
	rec.mu.Lock()
	if len(rec.kept) != 1 || !rec.kept[0]["a"] || !rec.kept[0]["b"] {
		t.Fatalf("reconcile: %v", rec.kept)
	}
	rec.mu.Unlock()
	eventually(t, "server sees the ztunnel", func() bool { return s.Connected() == 1 })

	// After the snapshot: adds and deletes, each acknowledged.
	if err := s.AddWorkload(ctx, "c", info("c"), ns); err != nil {
		t.Fatal(err)
	}
	_, wantIno, _ := NetnsID(ns)
	rec.mu.Lock()
	_, gotIno, err := NetnsID(rec.added["c"])
	rec.mu.Unlock()
	if err != nil || gotIno != wantIno {
		t.Fatalf("received descriptor is not the netns sent: %d vs %d (%v)", gotIno, wantIno, err)
	}
	if err := s.DelWorkload(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(rec.uids(), ","); got != "b,c" {
		t.Fatalf("after add c, del a: %s", got)
	}

	// A failed add is a nack; the session goes on.
	rec.mu.Lock()
	rec.failUID = "bad"
	rec.mu.Unlock()
	err = s.AddWorkload(ctx, "bad", info("bad"), ns)
	var nack *NackError
	if !errors.As(err, &nack) || !strings.Contains(nack.Msg, "cannot bind 15008") {
		t.Fatalf("nack not propagated: %v", err)
	}
	if err := s.AddWorkload(ctx, "d", info("d"), ns); err != nil {
		t.Fatalf("add after a nack: %v", err)
	}
}

func TestReconnectGetsSnapshotAgain(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ztunnel.sock")
	s, stop := startServer(t, path)
	ns := openNetns(t)
	rec := newRecorder()
	c := &Client{Path: path, Handler: rec}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go c.Run(ctx)
	eventually(t, "first snapshot", c.Ready)
	if err := s.AddWorkload(ctx, "x", info("x"), ns); err != nil {
		t.Fatal(err)
	}
	stop()
	eventually(t, "client notices", func() bool { return !c.Ready() })

	// A new agent that knows only y: x must go after its snapshot.
	s2, _ := startServer(t, path)
	s2.AddWorkload(ctx, "y", info("y"), ns)
	eventually(t, "second snapshot", c.Ready)
	eventually(t, "x dropped", func() bool { return strings.Join(rec.uids(), ",") == "y" })
}

// fakeAgent speaks raw datagrams to a client.
type fakeAgent struct {
	t *testing.T
	l *net.UnixListener
	c *net.UnixConn
}

func newFakeAgent(t *testing.T) (*fakeAgent, string) {
	path := filepath.Join(t.TempDir(), "z.sock")
	l, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return &fakeAgent{t: t, l: l}, path
}

func (a *fakeAgent) accept() {
	a.t.Helper()
	a.l.SetDeadline(time.Now().Add(5 * time.Second))
	c, err := a.l.AcceptUnix()
	if err != nil {
		a.t.Fatal(err)
	}
	a.c = c
	a.t.Cleanup(func() { c.Close() })
	m, err := readMessage(c, readBuffer)
	if err != nil {
		a.t.Fatal(err)
	}
	hello := &zdsapi.ZdsHello{}
	if proto.Unmarshal(m.data, hello) != nil || hello.Version != zdsapi.Version_V1 {
		a.t.Fatalf("bad hello %x", m.data)
	}
}

// send writes raw bytes (with an optional fd) and returns the ack text, or
// an error if the connection was dropped instead.
func (a *fakeAgent) send(data []byte, fd *os.File) (string, error) {
	var oob []byte
	if fd != nil {
		oob = unixRights(fd)
	}
	if _, _, err := a.c.WriteMsgUnix(data, oob, nil); err != nil {
		return "", err
	}
	a.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	m, err := readMessage(a.c, readBuffer)
	if err != nil {
		return "", err
	}
	resp := &zdsapi.WorkloadResponse{}
	if err := proto.Unmarshal(m.data, resp); err != nil {
		return "", err
	}
	return resp.GetAck().GetError(), nil
}

func marshal(r *zdsapi.WorkloadRequest) []byte { b, _ := proto.Marshal(r); return b }

func add(uid string) []byte {
	return marshal(&zdsapi.WorkloadRequest{Payload: &zdsapi.WorkloadRequest_Add{Add: &zdsapi.AddWorkload{Uid: uid, WorkloadInfo: info(uid)}}})
}
func keep(uid string) []byte {
	return marshal(&zdsapi.WorkloadRequest{Payload: &zdsapi.WorkloadRequest_Keep{Keep: &zdsapi.KeepWorkload{Uid: uid}}})
}
func snapshotSent() []byte {
	return marshal(&zdsapi.WorkloadRequest{Payload: &zdsapi.WorkloadRequest_SnapshotSent{SnapshotSent: &zdsapi.SnapshotSent{}}})
}

func TestClientProtocol(t *testing.T) {
	ns := openNetns(t)
	tests := []struct {
		name      string
		steps     func(a *fakeAgent) (string, error) // the step under test
		wantNack  string
		wantDrop  bool
		beforeSnp bool
	}{
		{"keep before snapshot is fine", func(a *fakeAgent) (string, error) { return a.send(keep("k"), nil) }, "", false, true},
		{"add without descriptor", func(a *fakeAgent) (string, error) { return a.send(add("a"), nil) }, "carried 0 descriptors", true, true},
		{"descriptor on a non-add", func(a *fakeAgent) (string, error) { return a.send(keep("k"), ns) }, "only AddWorkload may carry a descriptor", true, true},
		{"keep after snapshot", func(a *fakeAgent) (string, error) { return a.send(keep("k"), nil) }, "KeepWorkload after the snapshot", true, false},
		{"second snapshot", func(a *fakeAgent) (string, error) { return a.send(snapshotSent(), nil) }, "second SnapshotSent", true, false},
		{"garbage", func(a *fakeAgent) (string, error) { return a.send([]byte{0xff, 0xff, 0xff, 0x01}, nil) }, "malformed request", true, true},
		{"oversized datagram", func(a *fakeAgent) (string, error) { return a.send(make([]byte, 4096), nil) }, "", true, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a, path := newFakeAgent(t)
			rec := newRecorder()
			c := &Client{Path: path, Handler: rec}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			go c.Run(ctx)
			a.accept()
			if !tc.beforeSnp {
				if nack, err := a.send(snapshotSent(), nil); err != nil || nack != "" {
					t.Fatalf("snapshot: %q %v", nack, err)
				}
			}
			nack, err := tc.steps(a)
			if tc.wantNack != "" && (err != nil || !strings.Contains(nack, tc.wantNack)) {
				t.Fatalf("nack %q (%v), want %q", nack, err, tc.wantNack)
			}
			if tc.wantDrop {
				// The client drops the connection and comes back with a hello.
				a.c.SetReadDeadline(time.Now().Add(5 * time.Second))
				for {
					if _, err := readMessage(a.c, readBuffer); err != nil {
						break
					}
				}
				a.accept()
			}
			// Either way the client still works.
			if nack, err := a.send(add("ok"), ns); err != nil || nack != "" {
				t.Fatalf("add after the step: %q %v", nack, err)
			}
		})
	}
}

func FuzzClientMessage(f *testing.F) {
	f.Add(add("a"))
	f.Add(keep("k"))
	f.Add(snapshotSent())
	f.Add(marshal(&zdsapi.WorkloadRequest{Payload: &zdsapi.WorkloadRequest_Del{Del: &zdsapi.DelWorkload{Uid: "d"}}}))
	f.Add([]byte{0x0a, 0x00})
	f.Fuzz(func(t *testing.T, data []byte) {
		s := &clientSession{c: &Client{Handler: newRecorder()}, snapshot: map[string]bool{}}
		nack, err := s.handle(context.Background(), message{data: data})
		if err != nil && nack == "" {
			t.Fatalf("a protocol error without a nack text: %v", err)
		}
	})
}
