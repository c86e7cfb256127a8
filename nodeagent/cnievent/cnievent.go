// Package cnievent is how the ambit-cni plugin tells the node agent about
// a pod it just networked, before the pod starts: one JSON event over a
// unix socket, answered with the agent's verdict. It stays small because
// the plugin links it.
package cnievent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"
)

// CNIEvent is what the ambit-cni plugin tells the node agent about a pod
// it just networked, before the pod's process starts.
type CNIEvent struct {
	Namespace string   `json:"namespace"`
	Name      string   `json:"name"`
	UID       string   `json:"uid"` // may be empty: not every runtime passes K8S_POD_UID
	Netns     string   `json:"netns"`
	IPs       []string `json:"ips"`
}

type cniReply struct {
	Error string `json:"error,omitempty"`
}

// maxEvent bounds an event's size.
const maxEvent = 64 << 10

// NotifyTimeout bounds the plugin's wait for the agent.
const NotifyTimeout = 10 * time.Second

// Notify sends an event to the agent at socket and waits for its verdict:
// an error means the pod must not start (the runtime retries it).
func Notify(ctx context.Context, socket string, ev CNIEvent) error {
	ctx, cancel := context.WithTimeout(ctx, NotifyTimeout)
	defer cancel()
	c, err := (&net.Dialer{}).DialContext(ctx, "unix", socket)
	if err != nil {
		return fmt.Errorf("no node agent at %s: %w", socket, err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	if err := json.NewEncoder(c).Encode(ev); err != nil {
		return fmt.Errorf("telling the node agent: %w", err)
	}
	var r cniReply
	if err := json.NewDecoder(io.LimitReader(c, maxEvent)).Decode(&r); err != nil {
		return fmt.Errorf("node agent's answer: %w", err)
	}
	if r.Error != "" {
		return errors.New("node agent: " + r.Error)
	}
	return nil
}

// CNIServer receives the plugin's events on a unix socket.
type CNIServer struct {
	l      net.Listener
	handle func(context.Context, CNIEvent) error
	logger *slog.Logger
}

// ListenCNI listens on socket (owner-only) and passes each event to handle.
func ListenCNI(socket string, handle func(context.Context, CNIEvent) error, logger *slog.Logger) (*CNIServer, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(filepath.Dir(socket), 0o700); err != nil {
		return nil, err
	}
	_ = os.Remove(socket)
	l, err := net.Listen("unix", socket)
	if err != nil {
		return nil, fmt.Errorf("CNI event socket: %w", err)
	}
	if err := os.Chmod(socket, 0o600); err != nil {
		l.Close()
		return nil, err
	}
	return &CNIServer{l: l, handle: handle, logger: logger}, nil
}

// Run serves until ctx is done.
func (s *CNIServer) Run(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { s.l.Close() })
	defer stop()
	for {
		c, err := s.l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("CNI event socket: %w", err)
		}
		go s.serve(ctx, c)
	}
}

func (s *CNIServer) serve(ctx context.Context, c net.Conn) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(NotifyTimeout))
	var ev CNIEvent
	reply := cniReply{}
	if err := json.NewDecoder(io.LimitReader(c, maxEvent)).Decode(&ev); err != nil {
		reply.Error = "malformed event: " + err.Error()
	} else if ev.Namespace == "" || ev.Name == "" || ev.Netns == "" {
		// The UID may be missing: not every runtime passes K8S_POD_UID.
		reply.Error = "event lacks namespace, name or netns"
	} else if err := s.handle(ctx, ev); err != nil {
		reply.Error = err.Error()
		s.logger.Warn("CNI event refused", "pod", ev.Namespace+"/"+ev.Name, "err", err)
	}
	_ = json.NewEncoder(c).Encode(reply)
}
