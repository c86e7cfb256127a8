package hbone

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2/hpack"
)

// The HTTP/2 connection and its lifecycle: set-up (preface and SETTINGS),
// opening client streams, the bookkeeping of streams, and closing.

// conn is one HTTP/2 connection, client or server side, carrying CONNECT
// streams.
//
// Goroutines: one reader (readLoop) parses every incoming frame and never
// blocks on a write; one control writer (ctrlLoop) sends the frames the
// reader owes the peer (SETTINGS and PING acks, RST_STREAM, GOAWAY,
// WINDOW_UPDATE). Stream owners write their HEADERS and DATA frames
// themselves, under wmu, with no hand-off. Lock order: wmu before mu.
// The read path is in read.go, the write path in write.go, control frames
// and flow control in control.go.
type conn struct {
	cfg   connConfig
	nc    net.Conn // the TLS connection
	raw   net.Conn // the socket under it
	br    *bufio.Reader
	start time.Time

	// Write side.
	wmu    sync.Mutex
	bw     *bufio.Writer
	batch  *batchConn // under the TLS layer, if batching
	enc    *hpack.Encoder
	encBuf bytes.Buffer
	werr   error // sticky write error
	whdr   [frameHeaderLen]byte
	wwait  atomic.Int32 // writers waiting for wmu: the last one flushes

	peerMaxFrame atomic.Uint32 // largest frame the peer accepts
	lastRead     atomic.Int64  // nanoseconds since start of the last frame read

	mu          sync.Mutex
	streams     map[uint32]*stream
	nextID      uint32 // client: next stream id to open
	lastPeerID  uint32 // server: highest stream id the peer opened
	reserved    int    // client: streams promised to callers, not yet opened
	peerStreams uint32 // peer's SETTINGS_MAX_CONCURRENT_STREAMS
	peerWindow  int64  // peer's SETTINGS_INITIAL_WINDOW_SIZE
	sendWindow  int64  // connection-level credit for our DATA
	recvWindow  int64  // connection-level credit we granted the peer
	recvUnacked int64  // consumed since our last connection WINDOW_UPDATE
	connWaiters map[*stream]struct{}
	goAwayRecv  bool
	goAwayLast  uint32
	draining    bool // we sent the first GOAWAY
	goAwaySent  bool // we sent the final GOAWAY
	drainLast   uint32
	drainPing   [8]byte
	pingOut     bool
	pingData    [8]byte
	pingSent    time.Time
	closed      bool
	err         error
	failErr     *connError // the protocol error we are closing for
	ctrl, ctrl2 []ctrlFrame
	ctrlWake    chan struct{}
	done        chan struct{}
	kaTimer     *time.Timer
	drainTimer  *time.Timer

	// Reader-only state.
	hdec    *hpack.Decoder
	hfields []hpack.HeaderField
	hsize   uint32
	htooBig bool
	hblock  []byte
	hstream uint32
	hend    bool
	inBlock bool
	scratch []byte
	fresh   []*chunk
	// The reader's state for direct delivery to a sink (stream.deliverLocked).
	deliverBufs [][]byte
	deliverFn   func(uintptr) bool // c.deliver
	deliverN    int
	deliverErr  error
	hdrBuf      [frameHeaderLen]byte
	settings    bool // reader saw the peer's first SETTINGS
}

type connConfig struct {
	server           bool
	maxStreams       uint32 // server: concurrent streams we accept
	maxHeaderList    uint32 // header list size we accept
	streamWindow     int64
	connWindow       int64
	maxFrame         uint32
	keepalive        time.Duration
	keepaliveTimeout time.Duration
	logger           *slog.Logger
	buffers          *buffers
	// onStream is called (on the reader goroutine, so it must not block)
	// for each new request stream on a server connection.
	onStream func(s *stream, fields []hpack.HeaderField, tooBig bool)
	// onClose is called once when the connection has closed.
	onClose func(c *conn)
}

var (
	errConnClosed       = errors.New("hbone: HTTP/2 connection closed")
	errKeepaliveTimeout = errors.New("hbone: HTTP/2 keepalive PING not answered in time")
	errGoAwayRefused    = errors.New("hbone: stream refused: the server is draining (GOAWAY)")
)

// newConn wraps an established TLS connection nc (raw is the socket under
// it); startConn then begins HTTP/2 on it.
func newConn(nc, raw net.Conn, cfg connConfig) *conn {
	c := &conn{
		cfg:         cfg,
		nc:          nc,
		raw:         raw,
		br:          bufio.NewReaderSize(nc, 32<<10),
		bw:          bufio.NewWriterSize(nc, 16<<10),
		start:       time.Now(),
		streams:     map[uint32]*stream{},
		nextID:      1,
		peerStreams: 100, // until the peer's SETTINGS say otherwise
		peerWindow:  initialWindow,
		sendWindow:  initialWindow,
		recvWindow:  cfg.connWindow,
		connWaiters: map[*stream]struct{}{},
		ctrlWake:    make(chan struct{}, 1),
		done:        make(chan struct{}),
	}
	c.peerMaxFrame.Store(minMaxFrameSize)
	c.deliverFn = c.deliver
	c.enc = hpack.NewEncoder(&c.encBuf)
	c.hdec = hpack.NewDecoder(defaultHPACK, c.emitField)
	c.hdec.SetMaxStringLength(maxHeaderBlock)
	return c
}

// start writes our preface and SETTINGS and starts the control writer and
// keepalive; the caller then runs readLoop.
func (c *conn) startConn() error {
	var b []byte
	if !c.cfg.server {
		b = append(b, clientPreface...)
	}
	var settings []byte
	put := func(id uint16, v uint32) {
		settings = binary.BigEndian.AppendUint16(settings, id)
		settings = binary.BigEndian.AppendUint32(settings, v)
	}
	if c.cfg.server {
		put(settingMaxConcurrentStreams, c.cfg.maxStreams)
	} else {
		put(settingEnablePush, 0)
	}
	put(settingInitialWindowSize, uint32(c.cfg.streamWindow))
	put(settingMaxFrameSize, c.cfg.maxFrame)
	put(settingMaxHeaderListSize, c.cfg.maxHeaderList)
	b = appendFrameHeader(b, frameHeader{length: uint32(len(settings)), typ: frameSettings})
	b = append(b, settings...)
	if inc := c.cfg.connWindow - initialWindow; inc > 0 {
		b = appendFrameHeader(b, frameHeader{length: 4, typ: frameWindowUpdate})
		b = binary.BigEndian.AppendUint32(b, uint32(inc))
	}
	c.lockWrite()
	c.bw.Write(b)
	err := c.unlockWrite()
	if err != nil {
		c.close(err)
		return err
	}
	c.lastRead.Store(int64(time.Since(c.start)))
	go c.ctrlLoop()
	if c.cfg.keepalive > 0 {
		c.mu.Lock()
		if !c.closed {
			c.kaTimer = time.AfterFunc(c.cfg.keepalive, c.keepaliveTick)
		}
		c.mu.Unlock()
	}
	return nil
}

// openStream opens a client stream with a request and waits for the
// response headers (the caller holds a reservation).
// openStream sends HEADERS, and early as DATA in the same write when the
// peer's windows take all of it (sentEarly reports whether they did), then
// waits for the response.
func (c *conn) openStream(ctx context.Context, fields []hpack.HeaderField, early []byte) (s *stream, sentEarly bool, err error) {
	c.lockWrite()
	c.mu.Lock()
	c.reserved--
	if c.closed {
		err := c.err
		c.mu.Unlock()
		c.unlockWrite()
		return nil, false, err
	}
	if c.goAwayRecv {
		c.mu.Unlock()
		c.unlockWrite()
		return nil, false, errGoAwayRefused
	}
	s = newStream(c, c.nextID)
	c.nextID += 2
	c.streams[s.id] = s
	n := int64(len(early))
	sentEarly = n > 0 && n <= s.sendWindow && n <= c.sendWindow && len(early) <= int(c.peerMaxFrame.Load())
	if sentEarly {
		s.sendWindow -= n
		c.sendWindow -= n
	}
	c.mu.Unlock()
	c.writeHeadersLocked(s.id, fields, false)
	if sentEarly {
		c.writeFrameLocked(frameHeader{typ: frameData, stream: s.id}, early)
	}
	if err := c.unlockWrite(); err != nil {
		return nil, sentEarly, err
	}
	stop := context.AfterFunc(ctx, func() {
		c.mu.Lock()
		s.cond.Broadcast()
		c.mu.Unlock()
	})
	defer stop()
	c.mu.Lock()
	defer c.mu.Unlock()
	for !s.gotResponse {
		switch {
		case s.refused:
			return nil, sentEarly, errGoAwayRefused
		case s.reset != nil:
			return nil, sentEarly, s.reset
		case c.closed:
			return nil, sentEarly, c.err
		case ctx.Err() != nil:
			s.resetLocked(errCodeCancel)
			return nil, sentEarly, ctx.Err()
		}
		s.cond.Wait()
	}
	return s, sentEarly, nil
}

// close ends the connection; err nil means an orderly close.
func (c *conn) close(err error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	if err == nil && c.failErr != nil {
		err = c.failErr
	}
	if err == nil {
		err = errConnClosed
	}
	c.err = err
	close(c.done)
	if c.kaTimer != nil {
		c.kaTimer.Stop()
	}
	if c.drainTimer != nil {
		c.drainTimer.Stop()
	}
	for _, s := range c.streams {
		s.connClosedLocked()
	}
	c.mu.Unlock()
	if err == errConnClosed {
		c.nc.Close() // orderly: with TLS close_notify
	} else {
		c.raw.Close() // the peer may not be reading: do not wait to tell it
	}
	if c.cfg.onClose != nil {
		c.cfg.onClose(c)
	}
}

// fail ends the connection after a protocol error: GOAWAY with the code,
// then close (forced after a second if the write cannot get through).
func (c *conn) fail(ce *connError) {
	c.cfg.logger.Debug("HBONE connection error", "peer", c.nc.RemoteAddr(), "error", ce)
	c.mu.Lock()
	c.failErr = ce
	c.queueLocked(ctrlFrame{typ: frameGoAway, last: c.lastPeerID, val: uint32(ce.code), close: true})
	c.mu.Unlock()
	select {
	case <-c.done:
	case <-time.After(time.Second):
	}
	c.close(ce)
}

// closeIfIdleLocked closes a connection that has said or heard GOAWAY once
// its last stream is done.
func (c *conn) closeIfIdleLocked() {
	if len(c.streams) == 0 && (c.goAwaySent || c.goAwayRecv) && !c.closed {
		c.queueLocked(ctrlFrame{close: true})
	}
}

// endStreamLocked records an END_STREAM on s, sent (local) or received,
// and forgets the stream once both directions have ended (mu held).
func (c *conn) endStreamLocked(s *stream, local bool) {
	if local {
		s.localClosed = true
	} else {
		s.remoteClosed = true
	}
	if s.localClosed && s.remoteClosed {
		c.removeLocked(s)
	}
}

// removeLocked forgets a finished stream.
func (c *conn) removeLocked(s *stream) {
	if s.removed {
		return
	}
	s.removed = true
	delete(c.streams, s.id)
	delete(c.connWaiters, s)
	c.closeIfIdleLocked()
}

// reserve promises the caller a stream on this connection (client).
func (c *conn) reserve() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || c.goAwayRecv || c.nextID > maxStreamID-2*uint32(c.reserved) {
		return false
	}
	if uint32(len(c.streams)+c.reserved) >= c.peerStreams {
		return false
	}
	c.reserved++
	return true
}

// idleLocked reports whether id names a stream that was never opened.
func (c *conn) idleLocked(id uint32) bool {
	if c.cfg.server {
		return id > c.lastPeerID
	}
	return id >= c.nextID
}
