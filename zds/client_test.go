package zds

import (
	"context"
	"errors"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
	"istio.io/istio/pkg/zdsapi"
)

func TestClientAndServer(t *testing.T) {
	path := sockPath(t)
	s, _ := startServer(t, path, nil)
	ctx := context.Background()
	fa, fb := netnsFile(t), netnsFile(t)
	for _, p := range []struct {
		uid string
		f   *os.File
	}{{"a", fa}, {"k", nil}, {"b", fb}} {
		if err := s.AddWorkload(ctx, p.uid, wlInfo(p.uid), p.f); err != nil && !errors.Is(err, ErrNoZtunnel) {
			t.Fatal(err)
		}
	}
	rec := newRecorder()
	c, _ := startClient(t, path, rec)
	if c.Ready() {
		t.Fatal("ready before any snapshot")
	}
	eventually(t, "client ready", c.Ready)
	eventually(t, "server sees it", func() bool { return s.Connected() == 1 })

	if got := strings.Join(rec.log(), ";"); got != "add a;add b;reconcile a,b,k" {
		t.Fatalf("handler calls %q", got)
	}
	for uid, f := range map[string]*os.File{"a": fa, "b": fb} {
		if !sameFile(t, rec.file(uid), f) {
			t.Fatalf("pod %s: received descriptor is not the one sent", uid)
		}
		rec.mu.Lock()
		info := rec.infos[uid]
		rec.mu.Unlock()
		if !proto.Equal(info, wlInfo(uid)) {
			t.Fatalf("pod %s: info %v", uid, info)
		}
	}

	// Live changes, each acknowledged before the call returns.
	fc := netnsFile(t)
	if err := s.AddWorkload(ctx, "c", wlInfo("c"), fc); err != nil {
		t.Fatal(err)
	}
	if !sameFile(t, rec.file("c"), fc) {
		t.Fatal("pod c: received descriptor is not the one sent")
	}
	if err := s.DelWorkload(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if got := rec.running(); got != "b,c" {
		t.Fatalf("running %q after add c, del a", got)
	}

	// A failed add is a nack with the handler's words; the stream stays up.
	rec.mu.Lock()
	rec.failAdd["bad"] = errors.New("cannot bind 15008: address in use")
	rec.failDel["c"] = errors.New("still draining")
	rec.mu.Unlock()
	err := s.AddWorkload(ctx, "bad", wlInfo("bad"), netnsFile(t))
	var nack *NackError
	if !errors.As(err, &nack) || !strings.Contains(nack.Reason, "cannot bind 15008: address in use") {
		t.Fatalf("nack not propagated: %v", err)
	}
	if err := s.DelWorkload(ctx, "c"); !errors.As(err, &nack) || !strings.Contains(nack.Reason, "still draining") {
		t.Fatalf("delete nack not propagated: %v", err)
	}
	fd := netnsFile(t)
	if err := s.AddWorkload(ctx, "d", wlInfo("d"), fd); err != nil {
		t.Fatalf("add after nacks: %v", err)
	}
	if !sameFile(t, rec.file("d"), fd) || !c.Ready() || s.Connected() != 1 {
		t.Fatal("session did not survive the nacks")
	}
}

func TestClientReconnectsAndReconciles(t *testing.T) {
	path := sockPath(t)
	s1, stop1 := startServer(t, path, nil)
	rec := newRecorder()
	c, _ := startClient(t, path, rec)
	eventually(t, "first snapshot", c.Ready)
	ctx := context.Background()
	fx, fk := netnsFile(t), netnsFile(t)
	for uid, f := range map[string]*os.File{"x": fx, "k": fk, "gone": netnsFile(t)} {
		if err := s1.AddWorkload(ctx, uid, wlInfo(uid), f); err != nil {
			t.Fatal(err)
		}
	}
	stop1()
	eventually(t, "client notices the agent is gone", func() bool { return !c.Ready() })

	// The restarted agent: x with the same netns, k without one (Keep),
	// y new, and "gone" deleted while nobody listened.
	s2, _ := startServer(t, path, nil)
	fy := netnsFile(t)
	for uid, f := range map[string]*os.File{"x": fx, "k": nil, "y": fy} {
		if err := s2.AddWorkload(ctx, uid, wlInfo(uid), f); err != nil && !errors.Is(err, ErrNoZtunnel) {
			t.Fatal(err)
		}
	}
	start := time.Now()
	eventually(t, "second snapshot", c.Ready)
	t.Logf("reconnected and synced %v after the new agent started", time.Since(start))
	eventually(t, "stale pod dropped", func() bool { return rec.running() == "k,x,y" })
	if !sameFile(t, rec.file("k"), fk) {
		t.Fatal("kept pod lost its netns")
	}
	if !sameFile(t, rec.file("x"), fx) || !sameFile(t, rec.file("y"), fy) {
		t.Fatal("re-sent pods have the wrong netns")
	}
	rec.mu.Lock()
	last := rec.kept[len(rec.kept)-1]
	rec.mu.Unlock()
	if strings.Join(sortedKeys(last), ",") != "k,x,y" {
		t.Fatalf("keep set %v", last)
	}
}

func TestClientWaitsForAgent(t *testing.T) {
	path := sockPath(t)
	rec := newRecorder()
	c, _ := startClient(t, path, rec)
	time.Sleep(300 * time.Millisecond) // a few failed dials, backing off
	if c.Ready() {
		t.Fatal("ready with no agent")
	}
	startServer(t, path, nil)
	start := time.Now()
	eventually(t, "client connects once the agent is up", c.Ready)
	// After ~300 ms of failures the backoff is at most 640 ms.
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("connected %v after the agent started", d)
	}
}

func TestNextBackoff(t *testing.T) {
	tests := []struct{ in, want time.Duration }{
		{10 * time.Millisecond, 20 * time.Millisecond},
		{20 * time.Millisecond, 40 * time.Millisecond},
		{5 * time.Second, 10 * time.Second},
		{10 * time.Second, 15 * time.Second},
		{15 * time.Second, 15 * time.Second},
	}
	for _, tc := range tests {
		if got := nextBackoff(tc.in); got != tc.want {
			t.Errorf("nextBackoff(%v) = %v, want %v", tc.in, got, tc.want)
		}
	}
	d, n := minBackoff, 0
	for ; d < maxBackoff; n++ {
		d = nextBackoff(d)
	}
	if n != 11 {
		t.Errorf("reached the 15 s cap after %d doublings, want 11", n)
	}
}

// fakeAgent speaks raw datagrams to a Client.
type fakeAgent struct {
	t *testing.T
	l *net.UnixListener
	c *net.UnixConn
}

func newFakeAgent(t *testing.T) (*fakeAgent, string) {
	t.Helper()
	path := sockPath(t)
	l, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return &fakeAgent{t: t, l: l}, path
}

// accept takes the next connection and its hello.
func (a *fakeAgent) accept() {
	a.t.Helper()
	a.l.SetDeadline(time.Now().Add(wait))
	c, err := a.l.AcceptUnix()
	if err != nil {
		a.t.Fatalf("no connection from the client: %v", err)
	}
	a.t.Cleanup(func() { c.Close() })
	a.c = c
	c.SetReadDeadline(time.Now().Add(wait))
	data, _, err := readDatagram(c, make([]byte, maxDatagram), nil)
	if err != nil {
		a.t.Fatal(err)
	}
	hello := &zdsapi.ZdsHello{}
	if err := proto.Unmarshal(data, hello); err != nil || hello.GetVersion() != zdsapi.Version_V1 {
		a.t.Fatalf("bad hello %x", data)
	}
}

// send writes raw bytes with descriptors and returns the answer's text.
func (a *fakeAgent) send(data []byte, fds ...*os.File) (string, error) {
	a.t.Helper()
	writeRaw(a.t, a.c, data, fds...)
	a.c.SetReadDeadline(time.Now().Add(wait))
	resp, _, err := readDatagram(a.c, make([]byte, maxDatagram), nil)
	if err != nil {
		return "", err
	}
	r := &zdsapi.WorkloadResponse{}
	if err := proto.Unmarshal(resp, r); err != nil || r.GetAck() == nil {
		a.t.Fatalf("answer %x is not an Ack (%v)", resp, err)
	}
	return r.GetAck().GetError(), nil
}

// step is one datagram of a protocol test.
type step struct {
	data     []byte
	fds      int    // pipe write ends attached (the same one, fds times)
	wantNack string // "" for an ack
	noAnswer bool   // the client drops the connection without answering
	freed    bool   // every received copy of the descriptor must be closed
}

func TestClientProtocol(t *testing.T) {
	addB := func(uid string) []byte { return marshal(t, addReq(uid, wlInfo(uid))) }
	keepB := func(uid string) []byte { return marshal(t, keepReq(uid)) }
	delB := func(uid string) []byte { return marshal(t, delReq(uid)) }
	snapB := marshal(t, snapReq())
	// An AddWorkload of exactly 1024 bytes, and one of 1025.
	sized := func(n int) []byte {
		for pad := 0; ; pad++ {
			b := marshal(t, addReq("big"+strings.Repeat("x", pad), wlInfo("big")))
			if len(b) >= n {
				if len(b) != n {
					t.Fatalf("cannot build a %d-byte request", n)
				}
				return b
			}
		}
	}
	tests := []struct {
		name    string
		steps   []step
		dropped bool // the client ends the session after the last step
		check   func(t *testing.T, rec *recorder)
	}{
		{name: "add and keep before the snapshot, then snapshot", steps: []step{
			{data: addB("a"), fds: 1}, {data: keepB("k")}, {data: snapB},
		}, check: func(t *testing.T, rec *recorder) {
			if got := strings.Join(rec.log(), ";"); got != "add a;reconcile a,k" {
				t.Fatalf("handler calls %q", got)
			}
		}},
		{name: "delete before the snapshot leaves the keep set", steps: []step{
			{data: addB("a"), fds: 1}, {data: addB("b"), fds: 1}, {data: delB("a")}, {data: snapB},
		}, check: func(t *testing.T, rec *recorder) {
			if got := strings.Join(rec.log(), ";"); got != "add a;add b;del a;reconcile b" {
				t.Fatalf("handler calls %q", got)
			}
		}},
		{name: "keep after the snapshot", steps: []step{{data: snapB}, {data: keepB("k"), wantNack: "KeepWorkload of pod k after the snapshot"}}, dropped: true},
		{name: "second snapshot", steps: []step{{data: snapB}, {data: snapB, wantNack: "second SnapshotSent"}}, dropped: true},
		{name: "add without descriptor", steps: []step{{data: addB("a"), wantNack: "carries no netns descriptor"}}, dropped: true},
		{name: "add with two descriptors", steps: []step{{data: addB("a"), fds: 2, wantNack: "2 descriptors in one datagram", freed: true}}, dropped: true},
		{name: "add with three descriptors", steps: []step{{data: addB("a"), fds: 3, wantNack: "control data truncated", freed: true}}, dropped: true},
		{name: "keep with descriptor", steps: []step{{data: keepB("k"), fds: 1, wantNack: "KeepWorkload carries a descriptor", freed: true}}, dropped: true},
		{name: "delete with descriptor", steps: []step{{data: snapB}, {data: delB("a"), fds: 1, wantNack: "DelWorkload carries a descriptor", freed: true}}, dropped: true},
		{name: "snapshot with descriptor", steps: []step{{data: snapB, fds: 1, wantNack: "SnapshotSent carries a descriptor", freed: true}}, dropped: true},
		{name: "garbage", steps: []step{{data: []byte{0xff, 0xff, 0xff, 0x01}, wantNack: "does not decode"}}, dropped: true},
		{name: "garbage with descriptor", steps: []step{{data: []byte{0x0a, 0x7f, 0x01}, fds: 1, wantNack: "does not decode", freed: true}}, dropped: true},
		{name: "no payload", steps: []step{{data: []byte{0x48, 0x01}, wantNack: "without payload"}}, dropped: true},
		{name: "add without uid", steps: []step{{data: marshal(t, addReq("", wlInfo("a"))), fds: 1, wantNack: "AddWorkload without pod uid", freed: true}}, dropped: true},
		{name: "add without info", steps: []step{{data: marshal(t, addReq("a", nil)), fds: 1, wantNack: "has no workload info", freed: true}}, dropped: true},
		{name: "oversized datagram", steps: []step{{data: sized(maxDatagram + 1), fds: 1, wantNack: "longer than 1024", freed: true}}, dropped: true},
		{name: "largest datagram", steps: []step{{data: sized(maxDatagram), fds: 1}}},
		{name: "empty datagram ends the stream", steps: []step{{data: nil, noAnswer: true}}, dropped: true},
		{name: "handler add failure is a nack only", steps: []step{
			{data: snapB}, {data: addB("fail"), fds: 1, wantNack: "failure to start proxy: no room", freed: true},
		}},
		{name: "handler delete failure is a nack only", steps: []step{{data: snapB}, {data: delB("faildel"), wantNack: "still draining"}}},
		{name: "long handler error still fits", steps: []step{{data: snapB}, {data: addB("long"), fds: 1, wantNack: strings.Repeat("y", 500), freed: true}}},
		{name: "reconcile failure restarts the session", steps: []step{{data: snapB, wantNack: "reconciling with the snapshot: busy"}}, dropped: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a, path := newFakeAgent(t)
			rec := newRecorder()
			rec.failAdd["fail"] = errors.New("no room")
			rec.failAdd["long"] = errors.New(strings.Repeat("y", 5000))
			rec.failDel["faildel"] = errors.New("still draining")
			if strings.HasPrefix(tc.name, "reconcile failure") {
				rec.failRecon = errors.New("busy")
			}
			c, _ := startClient(t, path, rec)
			a.accept()
			for i, st := range tc.steps {
				var fds []*os.File
				var pr, pw *os.File
				if st.fds > 0 {
					var err error
					if pr, pw, err = os.Pipe(); err != nil {
						t.Fatal(err)
					}
					defer pr.Close()
					defer pw.Close()
					for range st.fds {
						fds = append(fds, pw)
					}
				}
				nack, err := a.send(st.data, fds...)
				switch {
				case st.noAnswer:
					if err == nil {
						t.Fatalf("step %d: answered %q, want the connection closed", i, nack)
					}
				case err != nil:
					t.Fatalf("step %d: %v", i, err)
				case st.wantNack == "" && nack != "":
					t.Fatalf("step %d: nack %q, want ack", i, nack)
				case !strings.Contains(nack, st.wantNack):
					t.Fatalf("step %d: answer %q, want %q", i, nack, st.wantNack)
				}
				if st.freed && !pipeClosedEverywhere(t, pr, pw) {
					t.Fatalf("step %d: the client kept a descriptor it refused", i)
				}
			}
			if tc.check != nil {
				tc.check(t, rec)
			}
			if tc.dropped {
				a.c.SetReadDeadline(time.Now().Add(wait))
				if _, _, err := readDatagram(a.c, make([]byte, maxDatagram), nil); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
					t.Fatalf("client kept the session: %v", err)
				}
				eventually(t, "not ready after a broken session", func() bool { return !c.Ready() })
				rec.mu.Lock()
				rec.failRecon = nil
				rec.mu.Unlock()
				a.accept() // it comes back
			}
			// Either way the client still works and can get ready.
			f := netnsFile(t)
			if nack, err := a.send(addB("ok"), f); err != nil || nack != "" {
				t.Fatalf("add after the test: %q %v", nack, err)
			}
			if !sameFile(t, rec.file("ok"), f) {
				t.Fatal("the descriptor received is not the one sent")
			}
			if !c.Ready() {
				if nack, err := a.send(snapB); err != nil || nack != "" {
					t.Fatalf("snapshot after the test: %q %v", nack, err)
				}
				eventually(t, "ready", c.Ready)
			}
		})
	}
}

// TestClientReadsLikeUpstream checks the receive buffers against upstream
// ztunnel's: 1024 data bytes and control room for exactly one descriptor.
func TestClientReadsLikeUpstream(t *testing.T) {
	s := newSession(NewClient("", newRecorder(), nil))
	if len(s.buf) != 1024 || len(s.oob) != unix.CmsgSpace(4) {
		t.Fatalf("buffers %d and %d bytes", len(s.buf), len(s.oob))
	}
}
