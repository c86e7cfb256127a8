package ztunnel

import (
	"io"
	"net"
	"sync"

	"github.com/ambit-mesh/ambit/hbone"
)

// relay is the one bidirectional copy of every path: between the client
// side (the pod's app on outbound, the HBONE stream or the plaintext peer
// on inbound) and the upstream side, then the record of the connection.
// It closes upstream when done; the caller owns client.
func (p *podProxy) relay(client, upstream net.Conn, rec *connRecord) {
	untrack := p.track(upstream)
	rec.open(p.z.cfg.Metrics)
	fromClient, toClient := pipe(client, upstream)
	fromClient += rec.early
	upstream.Close()
	untrack()
	rec.done(p.z.cfg.AccessLog, fromClient, toClient)
}

// pipe copies both ways and returns the bytes a->b and b->a. An orderly
// end of one side (EOF; END_STREAM on an HBONE stream) becomes a
// half-close of the other; an error (a reset, a broken connection) aborts
// the other side instead (Close: a reset on an HBONE stream), so that an
// abort is never passed on as an orderly end. The conns are used as they
// are, so the HBONE stream's WriteTo and ReadFrom and TCP's writev and
// splice paths apply: a wrapper here costs milliseconds per connection.
func pipe(a, b net.Conn) (aToB, bToA int64) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		aToB = copyHalf(b, a)
	}()
	bToA = copyHalf(a, b)
	wg.Wait()
	return aToB, bToA
}

// copyHalf copies src to dst, then half-closes dst, or aborts it if the
// copy failed.
func copyHalf(dst, src net.Conn) int64 {
	var n int64
	var err error
	if s, ok := dst.(*hbone.Conn); ok {
		// Into a stream, the stream's ReadFrom: it reads a socket with a
		// buffer taken only once the socket is readable. io.Copy would
		// prefer the socket's WriteTo, which hides the socket from it.
		n, err = s.ReadFrom(src)
	} else {
		n, err = io.Copy(dst, src)
	}
	if err != nil {
		dst.Close()
		return n
	}
	closeWrite(dst)
	return n
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	} else {
		c.Close()
	}
}
