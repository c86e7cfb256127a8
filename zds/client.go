package zds

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
	"istio.io/istio/pkg/zdsapi"
)

// Reconnect backoff of the client, as upstream ztunnel.
const (
	minBackoff = 10 * time.Millisecond
	maxBackoff = 15 * time.Second
)

// Handler is what ztunnel does with the pods the node agent hands over.
// Calls come one at a time, from the client's goroutine, and the agent
// waits for each to return (at most AckTimeout), so they must not block
// for long.
type Handler interface {
	// AddWorkload starts the proxy of a pod in netns, or keeps the running
	// one if it already serves the same namespace (see NetnsID). The
	// handler owns netns from then on, also when it returns an error; an
	// error is sent as a nack and the stream stays up, so the handler may
	// keep the pod and retry later.
	AddWorkload(ctx context.Context, uid string, info *zdsapi.WorkloadInfo, netns *os.File) error
	// DelWorkload stops a pod's proxy at once. Unknown uids are no error.
	DelWorkload(ctx context.Context, uid string) error
	// Reconcile comes when a snapshot is complete: every pod not in keep
	// must be stopped (including pods the handler holds for a retry).
	Reconcile(ctx context.Context, keep map[string]bool) error
}

// Client is ztunnel's end of ZDS. Run connects to the node agent, says
// hello, passes the requests to the Handler and answers each, and
// reconnects with backoff when the session ends.
type Client struct {
	path    string
	handler Handler
	logger  *slog.Logger
	ready   atomic.Bool
}

// NewClient returns a client of the node agent's socket at socketPath. A
// nil logger discards logs.
func NewClient(socketPath string, h Handler, logger *slog.Logger) *Client {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Client{path: socketPath, handler: h, logger: logger.With("component", "zds-client")}
}

// Ready reports whether the client is connected to the node agent and has
// processed the agent's snapshot (ztunnel's readiness also waits for the
// handler's pending pods, which the handler knows).
func (c *Client) Ready() bool { return c.ready.Load() }

// Run keeps a session with the node agent until ctx is done, reconnecting
// after 10 ms, doubling to 15 s while sessions keep failing before their
// snapshot. It returns nil when ctx is done.
func (c *Client) Run(ctx context.Context) error {
	if c.handler == nil {
		return errors.New("ZDS client: no handler")
	}
	backoff := minBackoff
	for {
		synced, err := c.session(ctx)
		c.ready.Store(false)
		if ctx.Err() != nil {
			return nil
		}
		if synced {
			backoff = minBackoff
		}
		c.logger.Warn("ZDS session with the node agent ended; reconnecting", "socket", c.path, "err", err, "in", backoff)
		if !sleep(ctx, backoff) {
			return nil
		}
		backoff = nextBackoff(backoff)
	}
}

func nextBackoff(d time.Duration) time.Duration { return min(2*d, maxBackoff) }

// session runs one connection; it reports whether the snapshot was
// processed and why the session ended.
func (c *Client) session(ctx context.Context) (synced bool, err error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unixpacket", c.path)
	if err != nil {
		return false, fmt.Errorf("connecting to the node agent: %w", err)
	}
	uc, ok := nc.(*net.UnixConn)
	if !ok {
		nc.Close()
		return false, fmt.Errorf("connecting to the node agent: got a %T", nc)
	}
	defer uc.Close()
	stop := context.AfterFunc(ctx, func() { uc.Close() })
	defer stop()
	if err := writeMessage(uc, &zdsapi.ZdsHello{Version: zdsapi.Version_V1}, nil); err != nil {
		return false, fmt.Errorf("sending hello: %w", err)
	}
	c.logger.Info("connected to the node agent", "socket", c.path)
	s := newSession(c)
	for {
		err := s.step(ctx, uc)
		if err != nil {
			return s.ok, err
		}
	}
}

// session is the state of one connection.
type session struct {
	c        *Client
	snapshot map[string]bool // uids sent before SnapshotSent
	synced   bool            // SnapshotSent was received
	ok       bool            // and reconciled without error
	buf      []byte
	oob      []byte
}

func newSession(c *Client) *session {
	return &session{
		c:        c,
		snapshot: map[string]bool{},
		buf:      make([]byte, maxDatagram),
		oob:      make([]byte, unix.CmsgSpace(4)), // exactly one descriptor, as upstream
	}
}

// step reads one request, dispatches it and answers it. It returns an
// error when the session must end: the connection failed, or the agent
// broke the protocol (which is nacked first, as upstream).
func (s *session) step(ctx context.Context, uc *net.UnixConn) error {
	data, fd, err := readDatagram(uc, s.buf, s.oob)
	if err != nil {
		if errors.Is(err, ErrProtocol) {
			if werr := writeMessage(uc, ackMessage("failure to read message: "+err.Error()), nil); werr != nil {
				return errors.Join(err, fmt.Errorf("sending nack: %w", werr))
			}
		}
		return err
	}
	nack, fatal := s.dispatch(ctx, data, fd)
	if werr := writeMessage(uc, ackMessage(nack), nil); werr != nil {
		return errors.Join(fatal, fmt.Errorf("sending answer: %w", werr))
	}
	return fatal
}

// dispatch handles one decoded datagram and the descriptor that came with
// it, which it always consumes (to the handler, or closed). It returns the
// nack text ("" to ack) and, when the session must end, an error.
func (s *session) dispatch(ctx context.Context, data []byte, fd *os.File) (nack string, fatal error) {
	violation := func(format string, args ...any) (string, error) {
		if fd != nil {
			fd.Close()
		}
		err := fmt.Errorf("%w: %s", ErrProtocol, fmt.Sprintf(format, args...))
		s.c.logger.Warn("node agent broke the protocol", "err", err)
		return "failure to process message: " + err.Error(), err
	}
	req := &zdsapi.WorkloadRequest{}
	if err := proto.Unmarshal(data, req); err != nil {
		return violation("request does not decode: %v", err)
	}
	kind, uid := requestKind(req)
	if req.GetPayload() == nil {
		return violation("request without payload")
	}
	if uid == "" && kind != "SnapshotSent" {
		return violation("%s without pod uid", kind)
	}
	if add := req.GetAdd(); add != nil {
		if fd == nil {
			return violation("AddWorkload of pod %s carries no netns descriptor", uid)
		}
		if add.GetWorkloadInfo() == nil {
			return violation("AddWorkload of pod %s has no workload info", uid)
		}
		if !s.synced {
			s.snapshot[uid] = true
		}
		info := add.GetWorkloadInfo()
		log := s.c.logger.With("uid", uid, "pod", info.GetNamespace()+"/"+info.GetName())
		if err := s.c.handler.AddWorkload(ctx, uid, info, fd); err != nil {
			log.Warn("starting the pod's proxy failed", "err", err)
			return "failure to start proxy: " + err.Error(), nil
		}
		log.Info("pod added")
		return "", nil
	}
	if fd != nil {
		return violation("%s carries a descriptor; only AddWorkload may", kind)
	}
	switch req.GetPayload().(type) {
	case *zdsapi.WorkloadRequest_Keep:
		if s.synced {
			return violation("KeepWorkload of pod %s after the snapshot", uid)
		}
		s.snapshot[uid] = true
		s.c.logger.Info("pod kept without netns", "uid", uid)
		return "", nil
	case *zdsapi.WorkloadRequest_Del:
		if !s.synced {
			// Upstream leaves a pod deleted during the snapshot to the
			// reconcile; stopping it now ends the same way, sooner.
			delete(s.snapshot, uid)
		}
		if err := s.c.handler.DelWorkload(ctx, uid); err != nil {
			s.c.logger.Warn("deleting a pod failed", "uid", uid, "err", err)
			return "failure to delete proxy: " + err.Error(), nil
		}
		s.c.logger.Info("pod deleted", "uid", uid)
		return "", nil
	case *zdsapi.WorkloadRequest_SnapshotSent:
		if s.synced {
			return violation("second SnapshotSent")
		}
		s.synced = true
		keep := s.snapshot
		s.snapshot = nil
		if err := s.c.handler.Reconcile(ctx, keep); err != nil {
			// Stale proxies may still run: start over with a new session
			// and a fresh snapshot.
			err = fmt.Errorf("reconciling with the snapshot: %w", err)
			return err.Error(), err
		}
		s.ok = true
		s.c.ready.Store(true)
		s.c.logger.Info("snapshot processed", "pods", len(keep))
		return "", nil
	}
	return violation("unknown request")
}
