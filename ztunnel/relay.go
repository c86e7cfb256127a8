package ztunnel

import (
	"io"
	"net"
	"sync"
)

// relay is the one bidirectional copy of every path: between the client
// side (the pod's app on outbound, the HBONE stream or the plaintext peer
// on inbound) and the upstream side, then the record of the connection.
// It closes upstream when done; the caller owns client.
func (p *podProxy) relay(client, upstream net.Conn, rec *connRecord) {
	untrack := p.track(upstream)
	rec.open(p.z.cfg.Metrics)
	fromClient, toClient := pipe(client, upstream)
	upstream.Close()
	untrack()
	rec.done(p.z.cfg.AccessLog, fromClient, toClient)
}

// pipe copies both ways with half-close and returns the bytes a->b and b->a.
func pipe(a, b net.Conn) (aToB, bToA int64) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		aToB, _ = io.CopyBuffer(b, a, make([]byte, 32<<10))
		closeWrite(b)
	}()
	bToA, _ = io.CopyBuffer(a, b, make([]byte, 32<<10))
	closeWrite(a)
	wg.Wait()
	return aToB, bToA
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	} else {
		c.Close()
	}
}
