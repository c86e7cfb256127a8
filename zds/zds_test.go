package zds

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
	"istio.io/istio/pkg/zdsapi"
)

// wait bounds every wait in these tests.
const wait = 5 * time.Second

// recorder is a Handler that keeps what it is given.
type recorder struct {
	mu        sync.Mutex
	files     map[string]*os.File // running "proxies"
	infos     map[string]*zdsapi.WorkloadInfo
	events    []string
	kept      []map[string]bool
	failAdd   map[string]error
	failDel   map[string]error
	failRecon error
}

func newRecorder() *recorder {
	return &recorder{files: map[string]*os.File{}, infos: map[string]*zdsapi.WorkloadInfo{}, failAdd: map[string]error{}, failDel: map[string]error{}}
}

func (r *recorder) AddWorkload(_ context.Context, uid string, info *zdsapi.WorkloadInfo, netns *os.File) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, "add "+uid)
	if err := r.failAdd[uid]; err != nil {
		netns.Close()
		return err
	}
	if old := r.files[uid]; old != nil {
		old.Close()
	}
	r.files[uid] = netns
	r.infos[uid] = info
	return nil
}

func (r *recorder) DelWorkload(_ context.Context, uid string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, "del "+uid)
	if err := r.failDel[uid]; err != nil {
		return err
	}
	if f := r.files[uid]; f != nil {
		f.Close()
		delete(r.files, uid)
	}
	return nil
}

func (r *recorder) Reconcile(_ context.Context, keep map[string]bool) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, "reconcile "+strings.Join(sortedKeys(keep), ","))
	r.kept = append(r.kept, keep)
	if r.failRecon != nil {
		return r.failRecon
	}
	for uid, f := range r.files {
		if !keep[uid] {
			f.Close()
			delete(r.files, uid)
		}
	}
	return nil
}

// running lists the uids with a "proxy", sorted.
func (r *recorder) running() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return strings.Join(sortedKeys(r.files), ",")
}

func (r *recorder) file(uid string) *os.File {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.files[uid]
}

func (r *recorder) log() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.events)
}

func (r *recorder) closeAll() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for uid, f := range r.files {
		f.Close()
		delete(r.files, uid)
	}
}

func sortedKeys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", wait, what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// netnsFile stands in for a pod's netns: any open file travels the same
// way, and each has its own inode so that mix-ups show.
func netnsFile(t testing.TB) *os.File {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), "netns-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func sameFile(t *testing.T, a, b *os.File) bool {
	t.Helper()
	if a == nil || b == nil {
		return false
	}
	d1, i1, err1 := NetnsID(a)
	d2, i2, err2 := NetnsID(b)
	if err := errors.Join(err1, err2); err != nil {
		t.Fatal(err)
	}
	return d1 == d2 && i1 == i2
}

func wlInfo(name string) *zdsapi.WorkloadInfo {
	return &zdsapi.WorkloadInfo{Name: name, Namespace: "demo", ServiceAccount: "sa-" + name}
}

func sockPath(t testing.TB) string { return filepath.Join(t.TempDir(), "ztunnel.sock") }

// startServer runs a server; the returned stop ends it and waits for Run.
func startServer(t testing.TB, path string, tune func(*Server)) (*Server, func()) {
	t.Helper()
	s, err := NewServer(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if tune != nil {
		tune(s)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("server Run: %v", err)
				}
			case <-time.After(wait):
				t.Errorf("server Run did not return within %v", wait)
			}
		})
	}
	t.Cleanup(stop)
	return s, stop
}

func startClient(t testing.TB, path string, h Handler) (*Client, func()) {
	t.Helper()
	c := NewClient(path, h, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("client Run: %v", err)
				}
			case <-time.After(wait):
				t.Errorf("client Run did not return within %v", wait)
			}
		})
	}
	t.Cleanup(stop)
	return c, stop
}

func marshal(t testing.TB, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func addReq(uid string, info *zdsapi.WorkloadInfo) *zdsapi.WorkloadRequest {
	return &zdsapi.WorkloadRequest{Payload: &zdsapi.WorkloadRequest_Add{Add: &zdsapi.AddWorkload{Uid: uid, WorkloadInfo: info}}}
}

func keepReq(uid string) *zdsapi.WorkloadRequest {
	return &zdsapi.WorkloadRequest{Payload: &zdsapi.WorkloadRequest_Keep{Keep: &zdsapi.KeepWorkload{Uid: uid}}}
}

func delReq(uid string) *zdsapi.WorkloadRequest {
	return &zdsapi.WorkloadRequest{Payload: &zdsapi.WorkloadRequest_Del{Del: &zdsapi.DelWorkload{Uid: uid}}}
}

func snapReq() *zdsapi.WorkloadRequest {
	return &zdsapi.WorkloadRequest{Payload: &zdsapi.WorkloadRequest_SnapshotSent{SnapshotSent: &zdsapi.SnapshotSent{}}}
}

// describe renders a request as "add uid", "keep uid", "del uid" or "snapshot".
func describe(r *zdsapi.WorkloadRequest) string {
	switch p := r.GetPayload().(type) {
	case *zdsapi.WorkloadRequest_Add:
		return "add " + p.Add.GetUid()
	case *zdsapi.WorkloadRequest_Keep:
		return "keep " + p.Keep.GetUid()
	case *zdsapi.WorkloadRequest_Del:
		return "del " + p.Del.GetUid()
	case *zdsapi.WorkloadRequest_SnapshotSent:
		return "snapshot"
	}
	return "?"
}

// writeRaw sends bytes with the given descriptors attached.
func writeRaw(t *testing.T, c *net.UnixConn, data []byte, fds ...*os.File) {
	t.Helper()
	var oob []byte
	if len(fds) > 0 {
		raw := make([]int, len(fds))
		for i, f := range fds {
			raw[i] = int(f.Fd())
		}
		oob = unix.UnixRights(raw...)
	}
	if err := c.SetWriteDeadline(time.Now().Add(wait)); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.WriteMsgUnix(data, oob, nil); err != nil {
		t.Fatalf("writing %d bytes: %v", len(data), err)
	}
}

// seqpacketPair returns two connected SEQPACKET sockets.
func seqpacketPair(t testing.TB) (a, b *net.UnixConn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conv := func(fd int) *net.UnixConn {
		f := os.NewFile(uintptr(fd), "seqpacket")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c.(*net.UnixConn)
	}
	return conv(fds[0]), conv(fds[1])
}

// pipeClosedEverywhere reports whether every copy of w (sent away and
// ours) is closed: our read end then sees EOF.
func pipeClosedEverywhere(t *testing.T, r, w *os.File) bool {
	t.Helper()
	w.Close()
	if err := r.SetReadDeadline(time.Now().Add(wait)); err != nil {
		t.Fatal(err)
	}
	_, err := r.Read(make([]byte, 1))
	return errors.Is(err, io.EOF)
}

func TestReadDatagram(t *testing.T) {
	tests := []struct {
		name     string
		size     int
		fds      int
		wantErr  string // "" for success
		wantEOF  bool
		wantFile bool
	}{
		{name: "plain", size: 10},
		{name: "largest that fits", size: maxDatagram},
		{name: "one descriptor", size: 10, fds: 1, wantFile: true},
		{name: "one byte too long", size: maxDatagram + 1, wantErr: "longer than 1024"},
		{name: "too long with descriptor", size: 4000, fds: 1, wantErr: "longer than 1024"},
		// Control room for one descriptor is 8-byte aligned, as upstream's:
		// a second fits and is refused by count, a third truncates.
		{name: "two descriptors", size: 10, fds: 2, wantErr: "2 descriptors in one datagram"},
		{name: "three descriptors", size: 10, fds: 3, wantErr: "control data truncated"},
		{name: "empty is end of stream", size: 0, wantEOF: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a, b := seqpacketPair(t)
			pr, pw, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			defer pr.Close()
			fds := make([]*os.File, tc.fds)
			for i := range fds {
				fds[i] = pw
			}
			writeRaw(t, a, make([]byte, tc.size), fds...)
			b.SetReadDeadline(time.Now().Add(wait))
			data, f, err := readDatagram(b, make([]byte, maxDatagram), make([]byte, unix.CmsgSpace(4)))
			switch {
			case tc.wantEOF:
				if !errors.Is(err, io.EOF) {
					t.Fatalf("err %v, want EOF", err)
				}
			case tc.wantErr != "":
				if !errors.Is(err, ErrProtocol) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want a protocol error with %q", err, tc.wantErr)
				}
			case err != nil:
				t.Fatal(err)
			case len(data) != tc.size:
				t.Fatalf("got %d bytes, want %d", len(data), tc.size)
			}
			if (f != nil) != tc.wantFile {
				t.Fatalf("file %v, want one: %v", f, tc.wantFile)
			}
			if f != nil {
				if !sameFile(t, f, pw) {
					t.Fatal("received descriptor is not the one sent")
				}
				f.Close()
			}
			if !pipeClosedEverywhere(t, pr, pw) {
				t.Fatal("a received descriptor was left open")
			}
		})
	}
}

func TestAckMessageFits(t *testing.T) {
	tests := []struct {
		name, text string
	}{
		{"ack", ""},
		{"short nack", "cannot bind 15008"},
		{"long ascii", strings.Repeat("x", 5000)},
		{"long multibyte", strings.Repeat("é", 3000)},
		{"invalid utf-8", "bad \xff\xfe bytes " + strings.Repeat("\xc3", 2000)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b, err := proto.Marshal(ackMessage(tc.text))
			if err != nil {
				t.Fatal(err)
			}
			if len(b) > maxDatagram {
				t.Fatalf("answer is %d bytes", len(b))
			}
			resp := &zdsapi.WorkloadResponse{}
			if err := proto.Unmarshal(b, resp); err != nil {
				t.Fatal(err)
			}
			got := resp.GetAck().GetError()
			if !utf8.ValidString(got) || (tc.text == "") != (got == "") {
				t.Fatalf("ack text %q from %q", got, tc.text)
			}
			if utf8.ValidString(tc.text) && !strings.HasPrefix(tc.text, got) {
				t.Fatalf("ack text %q is not a prefix of %q", got, tc.text)
			}
		})
	}
}

func TestNetnsID(t *testing.T) {
	own, err := os.Open("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	defer own.Close()
	again, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	other := netnsFile(t)
	dup, err := dupFile(other)
	if err != nil {
		t.Fatal(err)
	}
	defer dup.Close()
	closed := netnsFile(t)
	closed.Close()
	tests := []struct {
		name string
		a, b *os.File
		same bool
	}{
		{"same netns opened twice", own, again, true},
		{"duplicate descriptor", other, dup, true},
		{"different files", own, other, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := sameFile(t, tc.a, tc.b); got != tc.same {
				t.Fatalf("same = %v, want %v", got, tc.same)
			}
		})
	}
	if _, _, err := NetnsID(closed); err == nil {
		t.Fatal("NetnsID of a closed file: no error")
	}
	if _, _, err := NetnsID(nil); err == nil {
		t.Fatal("NetnsID(nil): no error")
	}
}

func TestNackErrorText(t *testing.T) {
	err := fmt.Errorf("wrapped: %w", &NackError{Request: "AddWorkload", UID: "u1", Reason: "bind failed"})
	var nack *NackError
	if !errors.As(err, &nack) || nack.Reason != "bind failed" || !strings.Contains(err.Error(), "AddWorkload of pod u1: bind failed") {
		t.Fatalf("%v", err)
	}
}
