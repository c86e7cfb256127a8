package zds

import (
	"context"
	"errors"
	"fmt"
	"testing"
)

// BenchmarkAddWorkload measures one live AddWorkload: the agent's send
// with the descriptor, ztunnel's handler and the ack.
func BenchmarkAddWorkload(b *testing.B) {
	path := sockPath(b)
	s, _ := startServer(b, path, nil)
	c, _ := startClient(b, path, newRecorder())
	eventually(b, "client ready", c.Ready)
	f := netnsFile(b)
	info := wlInfo("p")
	ctx := context.Background()
	for b.Loop() {
		if err := s.AddWorkload(ctx, "p", info, f); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSnapshot measures a ztunnel (re)connecting to an agent that
// holds pods: hello, every AddWorkload with its ack, SnapshotSent.
func BenchmarkSnapshot(b *testing.B) {
	for _, pods := range []int{100, 1000} {
		b.Run(fmt.Sprintf("pods=%d", pods), func(b *testing.B) {
			path := sockPath(b)
			s, _ := startServer(b, path, func(s *Server) { s.interval = 0 })
			f := netnsFile(b)
			for i := range pods {
				uid := fmt.Sprintf("pod-%04d", i)
				if err := s.AddWorkload(context.Background(), uid, wlInfo(uid), f); err != nil && !isNoZtunnel(err) {
					b.Fatal(err)
				}
			}
			for b.Loop() {
				rec := newRecorder()
				c, stop := startClient(b, path, rec)
				eventually(b, "snapshot", c.Ready)
				stop()
				rec.closeAll()
			}
		})
	}
}

func isNoZtunnel(err error) bool { return err != nil && errors.Is(err, ErrNoZtunnel) }
