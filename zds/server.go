package zds

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
	"istio.io/istio/pkg/zdsapi"
)

// AckTimeout bounds the wait for ztunnel's answer to one request.
const AckTimeout = 5 * time.Second

// ErrNoZtunnel means no ztunnel is connected: the pod is kept and will be
// sent in the next ztunnel's snapshot.
var ErrNoZtunnel = errors.New("no ztunnel connected")

// Server is the node agent's side.
type Server struct {
	path   string
	logger *slog.Logger
	l      *net.UnixListener

	mu    sync.Mutex
	pods  map[string]*pod // by uid
	order []string        // uids in the order they were added
	conns []*serverConn   // ready connections, newest last
}

type pod struct {
	info  *zdsapi.WorkloadInfo
	netns *os.File // nil: known but no netns (sent as KeepWorkload)
}

type serverConn struct {
	mu sync.Mutex // one request at a time
	c  *net.UnixConn
}

// NewServer listens on socketPath (replacing a stale socket), owner-only.
func NewServer(socketPath string, logger *slog.Logger) (*Server, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(filepath.Dir(socketPath), 0o755); err != nil {
		return nil, fmt.Errorf("ZDS socket directory: %w", err)
	}
	_ = os.Remove(socketPath)
	l, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: socketPath, Net: "unixpacket"})
	if err != nil {
		return nil, fmt.Errorf("ZDS listen on %s: %w", socketPath, err)
	}
	if err := os.Chmod(socketPath, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("ZDS socket permissions: %w", err)
	}
	return &Server{path: socketPath, logger: logger, l: l, pods: map[string]*pod{}}, nil
}

// Run accepts ztunnel connections until ctx is done.
func (s *Server) Run(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { s.l.Close() })
	defer stop()
	defer os.Remove(s.path)
	limiter := time.NewTicker(200 * time.Millisecond) // at most 5 accepts a second, as upstream
	defer limiter.Stop()
	for {
		c, err := s.l.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("ZDS accept: %w", err)
		}
		go s.serve(ctx, c)
		select {
		case <-limiter.C:
		case <-ctx.Done():
			return nil
		}
	}
}

// Connected is the number of ztunnels that have taken a snapshot.
func (s *Server) Connected() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

func (s *Server) serve(ctx context.Context, c *net.UnixConn) {
	sc := &serverConn{c: c}
	defer c.Close()
	if err := s.handshake(sc); err != nil {
		s.logger.Warn("ZDS client refused", "err", err)
		return
	}
	s.mu.Lock()
	s.conns = append(s.conns, sc)
	s.mu.Unlock()
	s.logger.Info("ztunnel connected")
	// Watch for the peer going away: a read only returns on close or error.
	buf := make([]byte, readBuffer)
	for {
		sc.mu.Lock()
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
		_, err := c.Read(buf)
		_ = c.SetReadDeadline(time.Time{})
		sc.mu.Unlock()
		var ne net.Error
		if err != nil && !(errors.As(err, &ne) && ne.Timeout()) || ctx.Err() != nil {
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(500 * time.Millisecond):
		}
	}
	s.mu.Lock()
	for i, o := range s.conns {
		if o == sc {
			s.conns = append(s.conns[:i], s.conns[i+1:]...)
			break
		}
	}
	s.mu.Unlock()
	s.logger.Info("ztunnel disconnected")
}

// handshake reads the hello and sends the snapshot.
func (s *Server) handshake(sc *serverConn) error {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	_ = sc.c.SetReadDeadline(time.Now().Add(AckTimeout))
	m, err := readMessage(sc.c, readBuffer)
	if err != nil {
		return fmt.Errorf("reading hello: %w", err)
	}
	m.closeFds()
	hello := &zdsapi.ZdsHello{}
	if err := proto.Unmarshal(m.data, hello); err != nil || hello.GetVersion() != zdsapi.Version_V1 {
		return fmt.Errorf("%w: bad hello (want version V1)", ErrProtocol)
	}
	s.mu.Lock()
	var reqs []*zdsapi.WorkloadRequest
	var files []*os.File
	for _, uid := range s.order {
		p := s.pods[uid]
		if p.netns != nil {
			reqs = append(reqs, &zdsapi.WorkloadRequest{Payload: &zdsapi.WorkloadRequest_Add{Add: &zdsapi.AddWorkload{Uid: uid, WorkloadInfo: p.info}}})
		} else {
			reqs = append(reqs, &zdsapi.WorkloadRequest{Payload: &zdsapi.WorkloadRequest_Keep{Keep: &zdsapi.KeepWorkload{Uid: uid}}})
		}
		files = append(files, p.netns)
	}
	s.mu.Unlock()
	for i, r := range reqs {
		if err := sc.requestLocked(r, files[i]); err != nil && !isNack(err) {
			return err
		}
	}
	return sc.requestLocked(&zdsapi.WorkloadRequest{Payload: &zdsapi.WorkloadRequest_SnapshotSent{SnapshotSent: &zdsapi.SnapshotSent{}}}, nil)
}

// NackError is ztunnel's refusal of a request.
type NackError struct{ Msg string }

func (e *NackError) Error() string { return "ztunnel refused: " + e.Msg }

func isNack(err error) bool {
	var n *NackError
	return errors.As(err, &n)
}

// requestLocked sends one request and waits for its answer.
func (sc *serverConn) requestLocked(r *zdsapi.WorkloadRequest, fd *os.File) error {
	_ = sc.c.SetDeadline(time.Now().Add(AckTimeout))
	defer sc.c.SetDeadline(time.Time{})
	if err := writeMessage(sc.c, r, fd); err != nil {
		return fmt.Errorf("sending to ztunnel: %w", err)
	}
	m, err := readMessage(sc.c, readBuffer)
	if err != nil {
		return fmt.Errorf("waiting for ztunnel's ack: %w", err)
	}
	m.closeFds()
	resp := &zdsapi.WorkloadResponse{}
	if err := proto.Unmarshal(m.data, resp); err != nil || resp.GetAck() == nil {
		return fmt.Errorf("%w: answer is not an ack", ErrProtocol)
	}
	if e := resp.GetAck().GetError(); e != "" {
		return &NackError{Msg: e}
	}
	return nil
}

// AddWorkload records the pod and sends it to the newest ztunnel. The
// server keeps its own duplicate of netns; the caller keeps ownership of
// the file it passed. With no ztunnel connected it returns ErrNoZtunnel
// (the pod goes out with the next snapshot).
func (s *Server) AddWorkload(ctx context.Context, uid string, info *zdsapi.WorkloadInfo, netns *os.File) error {
	fd, err := unix.Dup(int(netns.Fd()))
	if err != nil {
		return fmt.Errorf("duplicating netns descriptor: %w", err)
	}
	unix.CloseOnExec(fd)
	own := os.NewFile(uintptr(fd), netns.Name())
	s.mu.Lock()
	if old, ok := s.pods[uid]; ok && old.netns != nil {
		old.netns.Close()
	} else if !ok {
		s.order = append(s.order, uid)
	}
	s.pods[uid] = &pod{info: info, netns: own}
	var target *serverConn
	if len(s.conns) > 0 {
		target = s.conns[len(s.conns)-1]
	}
	s.mu.Unlock()
	if target == nil {
		return ErrNoZtunnel
	}
	target.mu.Lock()
	defer target.mu.Unlock()
	return target.requestLocked(&zdsapi.WorkloadRequest{Payload: &zdsapi.WorkloadRequest_Add{Add: &zdsapi.AddWorkload{Uid: uid, WorkloadInfo: info}}}, own)
}

// DelWorkload forgets the pod and tells every ztunnel.
func (s *Server) DelWorkload(ctx context.Context, uid string) error {
	s.mu.Lock()
	if p, ok := s.pods[uid]; ok {
		if p.netns != nil {
			p.netns.Close()
		}
		delete(s.pods, uid)
		for i, u := range s.order {
			if u == uid {
				s.order = append(s.order[:i], s.order[i+1:]...)
				break
			}
		}
	}
	conns := append([]*serverConn(nil), s.conns...)
	s.mu.Unlock()
	var errs []error
	for _, sc := range conns {
		sc.mu.Lock()
		err := sc.requestLocked(&zdsapi.WorkloadRequest{Payload: &zdsapi.WorkloadRequest_Del{Del: &zdsapi.DelWorkload{Uid: uid}}}, nil)
		sc.mu.Unlock()
		if err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
