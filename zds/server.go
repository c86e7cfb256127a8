package zds

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"google.golang.org/protobuf/proto"
	"istio.io/istio/pkg/zdsapi"
)

// acceptInterval spaces accepted connections: at most 5 a second, as
// upstream, so that a ztunnel stuck in a reconnect loop cannot exhaust the
// agent.
const acceptInterval = 200 * time.Millisecond

// maxQueue bounds the requests waiting for one connection.
const maxQueue = 256

// maxSocketPath is what fits in sockaddr_un.sun_path with its NUL.
const maxSocketPath = 107

// Server is the node agent's end of ZDS. It holds the pods the agent has
// handed to ztunnel and serves every ztunnel that connects: it waits for
// the hello, replays its pods as a snapshot, then forwards AddWorkload to
// the newest connection and DelWorkload to all of them. Each request waits
// for ztunnel's answer before the next is sent on that connection.
type Server struct {
	path     string
	logger   *slog.Logger
	ln       *net.UnixListener
	sockDev  uint64 // identity of the socket file we created, so that
	sockIno  uint64 // we never remove a newer agent's socket
	timeout  time.Duration
	interval time.Duration

	mu      sync.Mutex
	closed  bool
	running bool
	pods    map[string]*podEntry // by pod uid
	seq     uint64               // order of the pods in the snapshot
	conns   []*conn              // oldest first
	nextID  uint64
	wg      sync.WaitGroup // connection goroutines
}

type podEntry struct {
	seq   uint64
	info  *zdsapi.WorkloadInfo
	netns *os.File // our own duplicate; nil: known without netns (KeepWorkload)
}

// conn is one ztunnel connection. Its goroutine alone writes to the socket;
// other goroutines hand it requests through queue.
type conn struct {
	id   uint64
	uc   *net.UnixConn
	log  *slog.Logger
	wake chan struct{} // capacity 1: queue has work

	// Guarded by Server.mu.
	queue  []*request
	synced bool // the snapshot was answered
	gone   bool // takes no more requests
}

// request is one message for ztunnel and the wait for its answer.
type request struct {
	msg    *zdsapi.WorkloadRequest
	netns  *os.File   // owned by the request: closed once sent or dropped
	result chan error // capacity 1; nil when nobody waits (snapshot)
}

// finish releases the request's descriptor and reports err to its waiter.
func (r *request) finish(err error) {
	if r.netns != nil {
		r.netns.Close()
		r.netns = nil
	}
	if r.result != nil {
		r.result <- err
	}
}

// inbound is one datagram read from ztunnel, or the read error that ended
// the connection.
type inbound struct {
	data []byte
	err  error
}

// NewServer creates the listening socket at socketPath (mode 0600, created
// in a private directory and renamed into place, replacing a stale socket
// left by an earlier agent). A nil logger discards logs.
func NewServer(socketPath string, logger *slog.Logger) (*Server, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	ln, dev, ino, err := listenPrivate(socketPath)
	if err != nil {
		return nil, err
	}
	return &Server{
		path:     socketPath,
		logger:   logger.With("component", "zds-server"),
		ln:       ln,
		sockDev:  dev,
		sockIno:  ino,
		timeout:  AckTimeout,
		interval: acceptInterval,
		pods:     map[string]*podEntry{},
	}, nil
}

// listenPrivate binds a SEQPACKET socket that nobody but its owner can
// reach at any moment: it is bound inside a fresh 0700 directory, set to
// 0600 and only then renamed to path.
func listenPrivate(path string) (ln *net.UnixListener, dev, ino uint64, err error) {
	if path == "" || len(path) > maxSocketPath {
		return nil, 0, 0, fmt.Errorf("ZDS socket path %q: want 1 to %d bytes", path, maxSocketPath)
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, 0, 0, fmt.Errorf("ZDS socket directory: %w", err)
	}
	switch fi, err := os.Lstat(path); {
	case err == nil && fi.Mode().Type() != fs.ModeSocket:
		return nil, 0, 0, fmt.Errorf("ZDS socket path %s exists and is a %v, not a socket; refusing to replace it", path, fi.Mode().Type())
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		return nil, 0, 0, fmt.Errorf("ZDS socket path: %w", err)
	}
	tmp, err := os.MkdirTemp(dir, ".zds-")
	if err != nil {
		return nil, 0, 0, fmt.Errorf("ZDS socket: private directory: %w", err)
	}
	defer os.RemoveAll(tmp)
	name := filepath.Join(tmp, "sock")
	bindName := name
	if len(bindName) > maxSocketPath {
		// Too long for sun_path: bind through a descriptor of the directory.
		d, err := os.Open(tmp)
		if err != nil {
			return nil, 0, 0, fmt.Errorf("ZDS socket: private directory: %w", err)
		}
		defer d.Close()
		bindName = "/proc/self/fd/" + strconv.Itoa(int(d.Fd())) + "/sock"
	}
	ln, err = net.ListenUnix("unixpacket", &net.UnixAddr{Name: bindName, Net: "unixpacket"})
	if err != nil {
		return nil, 0, 0, fmt.Errorf("ZDS socket: listen: %w", err)
	}
	ln.SetUnlinkOnClose(false) // it will not be at bindName; Close removes path
	fail := func(what string, err error) (*net.UnixListener, uint64, uint64, error) {
		ln.Close()
		return nil, 0, 0, fmt.Errorf("ZDS socket: %s: %w", what, err)
	}
	if err := os.Chmod(name, 0o600); err != nil {
		return fail("permissions", err)
	}
	if err := os.Rename(name, path); err != nil {
		return fail("moving into place", err)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		return fail("stat", err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fail("stat", errors.New("no device and inode"))
	}
	return ln, uint64(st.Dev), st.Ino, nil // Dev is narrower on some architectures
}

// Run accepts ztunnel connections until ctx is done or Close is called,
// then ends every connection, releases the pods' descriptors, removes the
// socket and returns nil.
func (s *Server) Run(ctx context.Context) error {
	s.mu.Lock()
	switch {
	case s.closed:
		s.mu.Unlock()
		return ErrServerClosed
	case s.running:
		s.mu.Unlock()
		return errors.New("ZDS server: Run called twice")
	}
	s.running = true
	s.mu.Unlock()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { s.ln.Close() })
	defer stop()
	s.logger.Info("listening for ztunnel", "socket", s.path)
	var last time.Time
	for {
		if wait := time.Until(last.Add(s.interval)); wait > 0 && !sleep(ctx, wait) {
			break
		}
		uc, err := s.ln.AcceptUnix()
		last = time.Now()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				break
			}
			s.logger.Warn("accepting a ztunnel connection failed", "err", err)
			continue
		}
		s.mu.Lock()
		s.nextID++
		c := &conn{id: s.nextID, uc: uc, wake: make(chan struct{}, 1)}
		s.mu.Unlock()
		c.log = s.logger.With("conn", c.id)
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.serve(ctx, c)
		}()
	}
	cancel()
	s.wg.Wait()
	if err := s.Close(); err != nil {
		s.logger.Warn("closing", "err", err)
	}
	return nil
}

// Close stops the server: the listener and every connection are closed,
// the pods' descriptors released and the socket file removed (unless a
// newer agent has replaced it). A running Run returns.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	pods := s.pods
	s.pods = nil
	conns := slices.Clone(s.conns)
	s.mu.Unlock()

	err := s.ln.Close()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	for _, c := range conns {
		c.uc.Close()
	}
	for _, p := range pods {
		if p.netns != nil {
			p.netns.Close()
		}
	}
	if fi, serr := os.Lstat(s.path); serr == nil {
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && uint64(st.Dev) == s.sockDev && st.Ino == s.sockIno {
			if rerr := os.Remove(s.path); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
				err = errors.Join(err, fmt.Errorf("removing ZDS socket: %w", rerr))
			}
		}
	}
	return err
}

// Connected is the number of ztunnels connected that have answered their
// snapshot.
func (s *Server) Connected() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, c := range s.conns {
		if c.synced && !c.gone {
			n++
		}
	}
	return n
}

// AddWorkload records the pod and sends AddWorkload with its netns to the
// newest ztunnel connection, returning ztunnel's answer (a *NackError when
// it refused). The server keeps its own duplicate of netnsFile until
// DelWorkload or Close; the caller keeps ownership of netnsFile. With no
// ztunnel connected it returns ErrNoZtunnel, and the pod goes out with the
// next snapshot. A nil netnsFile records a pod the agent knows but whose
// netns it cannot open (after an agent restart): nothing is sent now, and
// snapshots carry it as KeepWorkload so that ztunnel keeps its proxy.
// Re-adding a uid replaces the recorded pod.
func (s *Server) AddWorkload(ctx context.Context, uid string, info *zdsapi.WorkloadInfo, netnsFile *os.File) error {
	if uid == "" {
		return errors.New("ZDS AddWorkload: empty pod uid")
	}
	if info == nil {
		// ztunnel treats an AddWorkload without workload_info as a
		// protocol error and would drop the connection.
		return fmt.Errorf("ZDS AddWorkload of pod %s: no workload info", uid)
	}
	info = proto.CloneOf(info)
	msg := &zdsapi.WorkloadRequest{Payload: &zdsapi.WorkloadRequest_Add{Add: &zdsapi.AddWorkload{Uid: uid, WorkloadInfo: info}}}
	if n := proto.Size(msg); n > maxDatagram {
		return fmt.Errorf("ZDS AddWorkload of pod %s: message is %d bytes, more than ztunnel reads (%d)", uid, n, maxDatagram)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("ZDS AddWorkload of pod %s: %w", uid, err)
	}
	var own *os.File
	if netnsFile != nil {
		var err error
		if own, err = dupFile(netnsFile); err != nil {
			return fmt.Errorf("ZDS AddWorkload of pod %s: %w", uid, err)
		}
	}

	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		if own != nil {
			own.Close()
		}
		return ErrServerClosed
	}
	if old := s.pods[uid]; old != nil && old.netns != nil {
		old.netns.Close()
	}
	s.seq++
	s.pods[uid] = &podEntry{seq: s.seq, info: info, netns: own}
	if own == nil {
		s.mu.Unlock()
		return nil
	}
	var c *conn
	for i := len(s.conns) - 1; i >= 0 && c == nil; i-- {
		if !s.conns[i].gone {
			c = s.conns[i]
		}
	}
	if c == nil {
		s.mu.Unlock()
		return fmt.Errorf("ZDS AddWorkload of pod %s: %w", uid, ErrNoZtunnel)
	}
	send, err := dupFile(own)
	if err != nil {
		s.mu.Unlock()
		return fmt.Errorf("ZDS AddWorkload of pod %s: %w", uid, err)
	}
	r := &request{msg: msg, netns: send, result: make(chan error, 1)}
	if err := s.enqueueLocked(c, r); err != nil {
		s.mu.Unlock()
		send.Close()
		return fmt.Errorf("ZDS AddWorkload of pod %s: %w", uid, err)
	}
	s.mu.Unlock()
	return await(ctx, r)
}

// DelWorkload forgets the pod and sends DelWorkload to every ztunnel
// connection (also for a pod it does not know), returning their refusals
// and failures joined.
func (s *Server) DelWorkload(ctx context.Context, uid string) error {
	if uid == "" {
		return errors.New("ZDS DelWorkload: empty pod uid")
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrServerClosed
	}
	if p := s.pods[uid]; p != nil {
		if p.netns != nil {
			p.netns.Close()
		}
		delete(s.pods, uid)
	}
	var errs []error
	var reqs []*request
	for _, c := range s.conns {
		if c.gone {
			continue
		}
		r := &request{
			msg:    &zdsapi.WorkloadRequest{Payload: &zdsapi.WorkloadRequest_Del{Del: &zdsapi.DelWorkload{Uid: uid}}},
			result: make(chan error, 1),
		}
		if err := s.enqueueLocked(c, r); err != nil {
			errs = append(errs, fmt.Errorf("ZDS DelWorkload of pod %s: %w", uid, err))
			continue
		}
		reqs = append(reqs, r)
	}
	s.mu.Unlock()
	for _, r := range reqs {
		if err := await(ctx, r); err != nil {
			errs = append(errs, err)
			if ctx.Err() != nil {
				break
			}
		}
	}
	return errors.Join(errs...)
}

func (s *Server) enqueueLocked(c *conn, r *request) error {
	if len(c.queue) >= maxQueue {
		return fmt.Errorf("ztunnel connection %d has %d requests waiting", c.id, len(c.queue))
	}
	c.queue = append(c.queue, r)
	select {
	case c.wake <- struct{}{}:
	default:
	}
	return nil
}

func (s *Server) pop(c *conn) *request {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(c.queue) == 0 {
		return nil
	}
	r := c.queue[0]
	c.queue[0] = nil
	c.queue = c.queue[1:]
	return r
}

// await waits for the answer to r. If ctx ends first, r still goes out in
// order; only the wait is abandoned.
func await(ctx context.Context, r *request) error {
	select {
	case err := <-r.result:
		return err
	case <-ctx.Done():
		kind, uid := requestKind(r.msg)
		return fmt.Errorf("ZDS %s of pod %s: waiting for ztunnel: %w", kind, uid, ctx.Err())
	}
}

// serve runs one connection until it fails or ctx ends.
func (s *Server) serve(ctx context.Context, c *conn) {
	ctx, cancel := context.WithCancel(ctx)
	in := make(chan inbound)
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		c.readLoop(ctx, in)
	}()
	stop := context.AfterFunc(ctx, func() { c.uc.Close() })
	err := s.session(ctx, c, in)
	stopping := ctx.Err() != nil
	stop()
	cancel()
	c.uc.Close()
	<-readerDone

	s.mu.Lock()
	c.gone = true
	s.conns = slices.DeleteFunc(s.conns, func(o *conn) bool { return o == c })
	queued := c.queue
	c.queue = nil
	s.mu.Unlock()
	for _, r := range queued {
		kind, uid := requestKind(r.msg)
		r.finish(fmt.Errorf("ZDS %s of pod %s: ztunnel connection %d ended before it was sent", kind, uid, c.id))
	}
	switch {
	case stopping:
		c.log.Info("ztunnel connection closed: server stopping")
	case errors.Is(err, ErrProtocol):
		c.log.Warn("ztunnel connection dropped", "err", err)
	default:
		c.log.Info("ztunnel disconnected", "err", err)
	}
}

// readLoop hands every datagram from ztunnel to the session, then the
// error that ends the connection.
func (c *conn) readLoop(ctx context.Context, in chan<- inbound) {
	buf := make([]byte, maxDatagram)
	for {
		// No control buffer: a descriptor from ztunnel arrives as
		// MSG_CTRUNC (and the kernel closes it), a protocol error.
		data, _, err := readDatagram(c.uc, buf, nil)
		m := inbound{data: bytes.Clone(data), err: err}
		select {
		case in <- m:
		case <-ctx.Done():
			return
		}
		if err != nil {
			return
		}
	}
}

// session takes the hello, sends the snapshot, then serves the queue.
func (s *Server) session(ctx context.Context, c *conn, in <-chan inbound) error {
	if err := c.awaitHello(ctx, in, s.timeout); err != nil {
		return err
	}
	snap, err := s.register(c)
	if err != nil {
		return err
	}
	c.log.Info("ztunnel said hello; sending snapshot", "pods", len(snap))
	for i, r := range snap {
		nack, err := c.exchange(ctx, in, r, s.timeout)
		r.finish(nil)
		if err != nil {
			for _, rest := range snap[i+1:] {
				rest.finish(nil)
			}
			kind, uid := requestKind(r.msg)
			return fmt.Errorf("snapshot: %s of pod %s: %w", kind, uid, err)
		}
		if nack != "" {
			// As upstream: the pod stays recorded and the snapshot goes on;
			// ztunnel retries it on its side.
			kind, uid := requestKind(r.msg)
			c.log.Warn("ztunnel refused a snapshot entry", "request", kind, "uid", uid, "reason", nack)
		}
	}
	sent := &request{msg: &zdsapi.WorkloadRequest{Payload: &zdsapi.WorkloadRequest_SnapshotSent{SnapshotSent: &zdsapi.SnapshotSent{}}}}
	nack, err := c.exchange(ctx, in, sent, s.timeout)
	if err != nil {
		return fmt.Errorf("snapshot: SnapshotSent: %w", err)
	}
	if nack != "" {
		c.log.Warn("ztunnel refused SnapshotSent", "reason", nack)
	}
	s.mu.Lock()
	c.synced = true
	s.mu.Unlock()
	c.log.Info("ztunnel connected and has the snapshot")

	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case m := <-in:
			// ztunnel speaks only when asked: a read that returns is the end
			// of the connection or a protocol error.
			if m.err != nil {
				return fmt.Errorf("connection ended: %w", m.err)
			}
			return fmt.Errorf("%w: unsolicited message from ztunnel", ErrProtocol)
		case <-c.wake:
			for r := s.pop(c); r != nil; r = s.pop(c) {
				kind, uid := requestKind(r.msg)
				nack, err := c.exchange(ctx, in, r, s.timeout)
				switch {
				case err != nil:
					r.finish(fmt.Errorf("ZDS %s of pod %s: %w", kind, uid, err))
					return err
				case nack != "":
					c.log.Warn("ztunnel refused a request", "request", kind, "uid", uid, "reason", nack)
					r.finish(&NackError{Request: kind, UID: uid, Reason: nack})
				default:
					c.log.Debug("ztunnel acknowledged", "request", kind, "uid", uid)
					r.finish(nil)
				}
			}
		}
	}
}

func (c *conn) awaitHello(ctx context.Context, in <-chan inbound, timeout time.Duration) error {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case m := <-in:
		if m.err != nil {
			return fmt.Errorf("reading hello: %w", m.err)
		}
		hello := &zdsapi.ZdsHello{}
		if err := proto.Unmarshal(m.data, hello); err != nil {
			return fmt.Errorf("%w: hello does not decode: %v", ErrProtocol, err)
		}
		if hello.GetVersion() != zdsapi.Version_V1 {
			return fmt.Errorf("%w: hello with version %v, want V1", ErrProtocol, hello.GetVersion())
		}
		return nil
	case <-t.C:
		return fmt.Errorf("no hello within %v", timeout)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// register takes the snapshot and makes c a target for later requests, in
// one step, so that every change to the pods either is in the snapshot or
// is queued behind it.
func (s *Server) register(c *conn) ([]*request, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrServerClosed
	}
	uids := make([]string, 0, len(s.pods))
	for uid := range s.pods {
		uids = append(uids, uid)
	}
	slices.SortFunc(uids, func(a, b string) int { return cmp.Compare(s.pods[a].seq, s.pods[b].seq) })
	snap := make([]*request, 0, len(uids))
	for _, uid := range uids {
		p := s.pods[uid]
		var f *os.File
		if p.netns != nil {
			var err error
			if f, err = dupFile(p.netns); err != nil {
				c.log.Warn("cannot duplicate a pod's netns; sending KeepWorkload", "uid", uid, "err", err)
			}
		}
		if f == nil {
			snap = append(snap, &request{msg: &zdsapi.WorkloadRequest{Payload: &zdsapi.WorkloadRequest_Keep{Keep: &zdsapi.KeepWorkload{Uid: uid}}}})
			continue
		}
		snap = append(snap, &request{
			msg:   &zdsapi.WorkloadRequest{Payload: &zdsapi.WorkloadRequest_Add{Add: &zdsapi.AddWorkload{Uid: uid, WorkloadInfo: p.info}}},
			netns: f,
		})
	}
	s.conns = append(s.conns, c)
	return snap, nil
}

// exchange sends one request (closing its descriptor once sent) and waits
// for the answer. It returns the nack text ("" for an ack), or an error
// after which the connection cannot be trusted.
func (c *conn) exchange(ctx context.Context, in <-chan inbound, r *request, timeout time.Duration) (string, error) {
	err := writeMessage(c.uc, r.msg, r.netns)
	if r.netns != nil {
		r.netns.Close() // the kernel holds ztunnel's copy now
		r.netns = nil
	}
	if err != nil {
		return "", fmt.Errorf("sending: %w", err)
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case m := <-in:
		if m.err != nil {
			return "", fmt.Errorf("waiting for the answer: %w", m.err)
		}
		resp := &zdsapi.WorkloadResponse{}
		if err := proto.Unmarshal(m.data, resp); err != nil || resp.GetAck() == nil {
			return "", fmt.Errorf("%w: the answer is not an Ack", ErrProtocol)
		}
		return resp.GetAck().GetError(), nil
	case <-t.C:
		// A late answer would be taken for the next request's: drop the
		// connection; ztunnel reconnects and gets a fresh snapshot.
		return "", fmt.Errorf("no answer within %v", timeout)
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

// sleep waits for d or until ctx is done; it reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
