package zds

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"
	"istio.io/istio/pkg/zdsapi"
)

// Handler is what ztunnel does with the pods the node agent sends.
type Handler interface {
	// AddWorkload starts (or keeps, if the netns is the same) the proxy of
	// a pod; it owns netns from then on.
	AddWorkload(ctx context.Context, uid string, info *zdsapi.WorkloadInfo, netns *os.File) error
	// DelWorkload stops a pod's proxy.
	DelWorkload(ctx context.Context, uid string) error
	// Reconcile runs after a snapshot: every pod not in keep is stopped.
	Reconcile(ctx context.Context, keep map[string]bool) error
}

// Client is ztunnel's side: it connects to the node agent and reconnects
// (10 ms backoff doubling to 15 s) when the connection drops.
type Client struct {
	Path    string
	Handler Handler
	Logger  *slog.Logger

	ready atomic.Bool
}

// Ready reports whether the client is connected and has processed a
// snapshot.
func (c *Client) Ready() bool { return c.ready.Load() }

// Run keeps a session with the node agent until ctx is done.
func (c *Client) Run(ctx context.Context) error {
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	backoff := 10 * time.Millisecond
	for ctx.Err() == nil {
		err := c.session(ctx)
		c.ready.Store(false)
		if ctx.Err() != nil {
			return nil
		}
		c.Logger.Warn("ZDS session ended; reconnecting", "socket", c.Path, "err", err, "backoff", backoff)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 15*time.Second)
		if err == nil {
			backoff = 10 * time.Millisecond
		}
	}
	return nil
}

func (c *Client) session(ctx context.Context) error {
	conn, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: c.Path, Net: "unixpacket"})
	if err != nil {
		return fmt.Errorf("connecting to node agent at %s: %w", c.Path, err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	if err := writeMessage(conn, &zdsapi.ZdsHello{Version: zdsapi.Version_V1}, nil); err != nil {
		return fmt.Errorf("hello: %w", err)
	}
	s := &clientSession{c: c, snapshot: map[string]bool{}}
	for {
		m, err := readMessage(conn, readBuffer)
		if err != nil {
			return err
		}
		reply, err := s.handle(ctx, m)
		if werr := writeMessage(conn, ack(reply), nil); werr != nil {
			return fmt.Errorf("ack: %w", werr)
		}
		if err != nil {
			return err // protocol violations end the session
		}
	}
}

type clientSession struct {
	c            *Client
	snapshot     map[string]bool
	snapshotDone bool
}

// handle processes one request; it returns the nack text ("" to ack) and,
// for protocol violations, an error that ends the session.
func (s *clientSession) handle(ctx context.Context, m message) (string, error) {
	req := &zdsapi.WorkloadRequest{}
	if err := proto.Unmarshal(m.data, req); err != nil {
		m.closeFds()
		return "malformed request", fmt.Errorf("%w: %v", ErrProtocol, err)
	}
	violation := func(format string, args ...any) (string, error) {
		m.closeFds()
		msg := fmt.Sprintf(format, args...)
		return msg, fmt.Errorf("%w: %s", ErrProtocol, msg)
	}
	switch p := req.Payload.(type) {
	case *zdsapi.WorkloadRequest_Add:
		if len(m.fds) != 1 {
			return violation("AddWorkload %s carried %d descriptors, want exactly 1", p.Add.GetUid(), len(m.fds))
		}
		if p.Add.GetUid() == "" {
			return violation("AddWorkload without uid")
		}
		netns := os.NewFile(uintptr(m.fds[0]), "netns-"+p.Add.GetUid())
		if !s.snapshotDone {
			s.snapshot[p.Add.GetUid()] = true
		}
		if err := s.c.Handler.AddWorkload(ctx, p.Add.GetUid(), p.Add.GetWorkloadInfo(), netns); err != nil {
			s.c.Logger.Warn("adding workload failed", "uid", p.Add.GetUid(), "err", err)
			return err.Error(), nil // a nack; the session goes on
		}
		return "", nil
	}
	if len(m.fds) > 0 {
		return violation("only AddWorkload may carry a descriptor")
	}
	switch p := req.Payload.(type) {
	case *zdsapi.WorkloadRequest_Keep:
		if s.snapshotDone {
			return violation("KeepWorkload after the snapshot")
		}
		s.snapshot[p.Keep.GetUid()] = true
		return "", nil
	case *zdsapi.WorkloadRequest_Del:
		delete(s.snapshot, p.Del.GetUid())
		if err := s.c.Handler.DelWorkload(ctx, p.Del.GetUid()); err != nil {
			return err.Error(), nil
		}
		return "", nil
	case *zdsapi.WorkloadRequest_SnapshotSent:
		if s.snapshotDone {
			return violation("second SnapshotSent")
		}
		s.snapshotDone = true
		if err := s.c.Handler.Reconcile(ctx, s.snapshot); err != nil {
			return err.Error(), nil
		}
		s.c.ready.Store(true)
		return "", nil
	}
	return violation("unknown request")
}
