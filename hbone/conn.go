package hbone

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2/hpack"
)

// conn is one HTTP/2 connection, client or server side, carrying CONNECT
// streams.
//
// Goroutines: one reader (readLoop) parses every incoming frame and never
// blocks on a write; one control writer (ctrlLoop) sends the frames the
// reader owes the peer (SETTINGS and PING acks, RST_STREAM, GOAWAY,
// WINDOW_UPDATE). Stream owners write their HEADERS and DATA frames
// themselves, under wmu, with no hand-off. Lock order: wmu before mu.
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
	hdec     *hpack.Decoder
	hfields  []hpack.HeaderField
	hsize    uint32
	htooBig  bool
	hblock   []byte
	hstream  uint32
	hend     bool
	inBlock  bool
	scratch  []byte
	fresh    []*chunk
	hdrBuf   [frameHeaderLen]byte
	settings bool // reader saw the peer's first SETTINGS
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

// ctrlFrame is a frame queued for the control writer.
type ctrlFrame struct {
	typ      frameType
	flags    uint8
	stream   uint32
	s        *stream // RST_STREAM: no frame may follow it on this stream
	val      uint32  // WINDOW_UPDATE increment, RST_STREAM/GOAWAY code
	last     uint32  // GOAWAY last stream id
	data     [8]byte // PING payload
	table    uint32  // SETTINGS ack: the peer's HPACK table size limit
	hasTable bool
	close    bool // after the frames before it, close the connection
}

var (
	errConnClosed       = errors.New("hbone: HTTP/2 connection closed")
	errKeepaliveTimeout = errors.New("hbone: HTTP/2 keepalive PING not answered in time")
	errGoAwayRefused    = errors.New("hbone: stream refused: the server is draining (GOAWAY)")
)

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

// lockWrite takes the write lock; unlockWrite flushes (unless another
// writer is queued and will flush after it) and releases it.
func (c *conn) lockWrite() {
	c.wwait.Add(1)
	c.wmu.Lock()
	c.wwait.Add(-1)
	if c.batch != nil {
		c.batch.begin()
	}
}

func (c *conn) unlockWrite() error {
	if c.werr == nil && c.wwait.Load() == 0 {
		err := c.bw.Flush()
		if c.batch != nil {
			if berr := c.batch.end(); err == nil {
				err = berr
			}
		}
		if err != nil {
			c.werr = fmt.Errorf("hbone: writing to %v: %w", c.nc.RemoteAddr(), err)
		}
	}
	err := c.werr
	c.wmu.Unlock()
	if err != nil {
		c.close(err)
	}
	return err
}

// writeFrameLocked writes one frame (wmu held).
func (c *conn) writeFrameLocked(h frameHeader, payload []byte) {
	if c.werr != nil {
		return
	}
	h.length = uint32(len(payload))
	putFrameHeader(c.whdr[:], h)
	if _, err := c.bw.Write(c.whdr[:]); err != nil {
		c.werr = err
		return
	}
	if _, err := c.bw.Write(payload); err != nil {
		c.werr = err
	}
}

// writeHeadersLocked encodes fields and writes HEADERS (and CONTINUATION)
// frames (wmu held).
func (c *conn) writeHeadersLocked(id uint32, fields []hpack.HeaderField, endStream bool) {
	c.encBuf.Reset()
	for _, f := range fields {
		_ = c.enc.WriteField(f) // writes to a bytes.Buffer: cannot fail
	}
	block := c.encBuf.Bytes()
	maxFrame := int(c.peerMaxFrame.Load())
	typ := frameHeaders
	for first := true; first || len(block) > 0; first = false {
		n := min(len(block), maxFrame)
		var flags uint8
		if first && endStream {
			flags |= flagEndStream
		}
		if n == len(block) {
			flags |= flagEndHeaders
		}
		c.writeFrameLocked(frameHeader{typ: typ, flags: flags, stream: id}, block[:n])
		block = block[n:]
		typ = frameContinuation
	}
}

// writeData writes p as DATA frames on s, with END_STREAM if end, unless
// the stream was reset (credit for p was taken by the caller).
func (c *conn) writeData(s *stream, p []byte, end bool) error {
	c.lockWrite()
	if s.rstSent.Load() {
		c.unlockWrite()
		c.mu.Lock()
		defer c.mu.Unlock()
		if s.reset != nil {
			return s.reset
		}
		return &ResetError{Code: uint32(errCodeCancel)}
	}
	maxFrame := int(c.peerMaxFrame.Load())
	for first := true; first || len(p) > 0; first = false {
		n := min(len(p), maxFrame)
		var flags uint8
		if end && n == len(p) {
			flags = flagEndStream
		}
		c.writeFrameLocked(frameHeader{typ: frameData, flags: flags, stream: s.id}, p[:n])
		p = p[n:]
	}
	if end {
		c.mu.Lock()
		s.localClosed = true
		if s.remoteClosed {
			c.removeLocked(s)
		}
		c.mu.Unlock()
	}
	return c.unlockWrite()
}

// writeResponse sends the response HEADERS of a server stream.
func (c *conn) writeResponse(s *stream, fields []hpack.HeaderField, end bool) error {
	c.lockWrite()
	if s.rstSent.Load() {
		c.unlockWrite()
		return &ResetError{Code: uint32(errCodeCancel)}
	}
	c.writeHeadersLocked(s.id, fields, end)
	if end {
		c.mu.Lock()
		s.localClosed = true
		if s.remoteClosed {
			c.removeLocked(s)
		}
		c.mu.Unlock()
	}
	return c.unlockWrite()
}

// openStream opens a client stream with a request and waits for the
// response headers (the caller holds a reservation).
func (c *conn) openStream(ctx context.Context, fields []hpack.HeaderField) (*stream, error) {
	c.lockWrite()
	c.mu.Lock()
	c.reserved--
	if c.closed {
		err := c.err
		c.mu.Unlock()
		c.unlockWrite()
		return nil, err
	}
	if c.goAwayRecv {
		c.mu.Unlock()
		c.unlockWrite()
		return nil, errGoAwayRefused
	}
	s := newStream(c, c.nextID)
	c.nextID += 2
	c.streams[s.id] = s
	c.mu.Unlock()
	c.writeHeadersLocked(s.id, fields, false)
	if err := c.unlockWrite(); err != nil {
		return nil, err
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
			return nil, errGoAwayRefused
		case s.reset != nil:
			return nil, s.reset
		case c.closed:
			return nil, c.err
		case ctx.Err() != nil:
			s.resetLocked(errCodeCancel)
			return nil, ctx.Err()
		}
		s.cond.Wait()
	}
	return s, nil
}

// queueLocked queues a control frame (mu held).
func (c *conn) queueLocked(f ctrlFrame) {
	if c.closed {
		return
	}
	c.ctrl = append(c.ctrl, f)
	if len(c.ctrl) > maxControlQueue {
		// A peer that makes us owe more than this is not reading.
		go c.close(connErrorf(errCodeEnhanceYourCalm, "%d control frames queued", len(c.ctrl)))
		return
	}
	select {
	case c.ctrlWake <- struct{}{}:
	default:
	}
}

func (c *conn) ctrlLoop() {
	for {
		select {
		case <-c.ctrlWake:
		case <-c.done:
			return
		}
		c.mu.Lock()
		q := c.ctrl
		c.ctrl, c.ctrl2 = c.ctrl2[:0], q
		c.mu.Unlock()
		if len(q) == 0 {
			continue
		}
		closeAfter := false
		c.lockWrite()
		for i := range q {
			f := &q[i]
			var p [8]byte
			switch f.typ {
			case frameSettings:
				if f.hasTable {
					c.enc.SetMaxDynamicTableSizeLimit(f.table)
				}
				c.writeFrameLocked(frameHeader{typ: frameSettings, flags: flagAck}, nil)
			case framePing:
				c.writeFrameLocked(frameHeader{typ: framePing, flags: f.flags}, f.data[:])
			case frameWindowUpdate:
				binary.BigEndian.PutUint32(p[:4], f.val)
				c.writeFrameLocked(frameHeader{typ: frameWindowUpdate, stream: f.stream}, p[:4])
			case frameRSTStream:
				if f.s == nil || !f.s.rstSent.Swap(true) {
					binary.BigEndian.PutUint32(p[:4], f.val)
					c.writeFrameLocked(frameHeader{typ: frameRSTStream, stream: f.stream}, p[:4])
				}
			case frameGoAway:
				binary.BigEndian.PutUint32(p[:4], f.last)
				binary.BigEndian.PutUint32(p[4:], f.val)
				c.writeFrameLocked(frameHeader{typ: frameGoAway}, p[:])
			}
			if f.close {
				closeAfter = true
				break
			}
		}
		clear(q)
		err := c.unlockWrite()
		if closeAfter && err == nil {
			c.close(nil)
		}
	}
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

// keepaliveTick sends a PING after a quiet interval and drops the
// connection if it is not answered in time.
func (c *conn) keepaliveTick() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	now := time.Since(c.start)
	next := c.cfg.keepalive
	if c.pingOut {
		waited := time.Since(c.pingSent)
		if waited >= c.cfg.keepaliveTimeout {
			go c.close(errKeepaliveTimeout)
			return
		}
		next = c.cfg.keepaliveTimeout - waited
	} else if idle := now - time.Duration(c.lastRead.Load()); idle >= c.cfg.keepalive {
		_, _ = rand.Read(c.pingData[:])
		c.pingOut, c.pingSent = true, time.Now()
		c.queueLocked(ctrlFrame{typ: framePing, data: c.pingData})
		next = c.cfg.keepaliveTimeout
	} else {
		next = c.cfg.keepalive - idle
	}
	c.kaTimer.Reset(next)
}

// startDrain begins a graceful shutdown (server): a GOAWAY that still
// admits streams in flight plus a PING; when the PING comes back (or after
// a second) the final GOAWAY names the last stream we will serve, and the
// connection closes once its streams are done.
func (c *conn) startDrain() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || c.draining {
		return
	}
	c.draining = true
	_, _ = rand.Read(c.drainPing[:])
	c.drainPing[0] |= 0x80 // never equal to a keepalive ping by chance
	c.queueLocked(ctrlFrame{typ: frameGoAway, last: maxStreamID, val: uint32(errCodeNo)})
	c.queueLocked(ctrlFrame{typ: framePing, data: c.drainPing})
	c.drainTimer = time.AfterFunc(time.Second, func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		c.finishDrainLocked()
	})
}

func (c *conn) finishDrainLocked() {
	if c.closed || c.goAwaySent {
		return
	}
	c.goAwaySent = true
	c.drainLast = c.lastPeerID
	c.queueLocked(ctrlFrame{typ: frameGoAway, last: c.drainLast, val: uint32(errCodeNo)})
	c.closeIfIdleLocked()
}

// closeIfIdleLocked closes a connection that has said or heard GOAWAY once
// its last stream is done.
func (c *conn) closeIfIdleLocked() {
	if len(c.streams) == 0 && (c.goAwaySent || c.goAwayRecv) && !c.closed {
		c.queueLocked(ctrlFrame{close: true})
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

// usable reports whether new streams may still be opened (client).
func (c *conn) usable() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return !c.closed && !c.goAwayRecv
}

// credit accounts n bytes the application consumed from s (or that were
// dropped) and queues WINDOW_UPDATEs once half a window is owed (mu held).
func (c *conn) creditLocked(s *stream, n int64) {
	if n <= 0 {
		return
	}
	if s != nil && !s.removed && !s.remoteClosed {
		s.recvUnacked += n
		if s.recvUnacked >= c.cfg.streamWindow/2 {
			c.queueLocked(ctrlFrame{typ: frameWindowUpdate, stream: s.id, val: uint32(s.recvUnacked)})
			s.recvWindow += s.recvUnacked
			s.recvUnacked = 0
		}
	}
	c.recvUnacked += n
	if c.recvUnacked >= c.cfg.connWindow/2 {
		c.queueLocked(ctrlFrame{typ: frameWindowUpdate, val: uint32(c.recvUnacked)})
		c.recvWindow += c.recvUnacked
		c.recvUnacked = 0
	}
}

// readLoop reads frames until the connection ends.
func (c *conn) readLoop() {
	for {
		err := c.readFrame()
		if err == nil {
			continue
		}
		var ce *connError
		if errors.As(err, &ce) {
			c.fail(ce)
			return
		}
		c.mu.Lock()
		graceful := c.closed
		c.mu.Unlock()
		if !graceful && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
			c.cfg.logger.Debug("HBONE connection read failed", "peer", c.nc.RemoteAddr(), "error", err)
		}
		c.close(fmt.Errorf("hbone: reading from %v: %w", c.nc.RemoteAddr(), err))
		return
	}
}

// payload reads a non-DATA frame's payload into the scratch buffer.
func (c *conn) payload(h frameHeader) ([]byte, error) {
	if cap(c.scratch) < int(h.length) {
		c.scratch = make([]byte, h.length)
	}
	p := c.scratch[:h.length]
	_, err := io.ReadFull(c.br, p)
	if cap(c.scratch) > 64<<10 {
		c.scratch = nil // do not keep a large buffer for a rare big frame
	}
	return p, err
}

func (c *conn) readFrame() error {
	if _, err := io.ReadFull(c.br, c.hdrBuf[:]); err != nil {
		return err
	}
	h := parseFrameHeader(c.hdrBuf[:])
	c.lastRead.Store(int64(time.Since(c.start)))
	if h.length > c.cfg.maxFrame {
		return connErrorf(errCodeFrameSize, "%v is larger than our maximum %d", h, c.cfg.maxFrame)
	}
	if !c.settings {
		if h.typ != frameSettings || h.has(flagAck) {
			return connErrorf(errCodeProtocol, "first frame is %v, not SETTINGS", h)
		}
		c.settings = true
	}
	if c.inBlock && (h.typ != frameContinuation || h.stream != c.hstream) {
		return connErrorf(errCodeProtocol, "%v inside a header block of stream %d", h, c.hstream)
	}
	switch h.typ {
	case frameData:
		return c.readData(h)
	case frameHeaders, frameContinuation:
		return c.readHeaders(h)
	}
	p, err := c.payload(h)
	if err != nil {
		return err
	}
	switch h.typ {
	case framePriority:
		if h.stream == 0 {
			return connErrorf(errCodeProtocol, "PRIORITY on stream 0")
		}
		if len(p) != 5 {
			return c.streamErr(h.stream, &streamError{errCodeFrameSize, "PRIORITY of wrong length"})
		}
		return nil
	case frameRSTStream:
		return c.readRST(h, p)
	case frameSettings:
		return c.readSettings(h, p)
	case framePushPromise:
		return connErrorf(errCodeProtocol, "PUSH_PROMISE, but push is disabled")
	case framePing:
		return c.readPing(h, p)
	case frameGoAway:
		return c.readGoAway(h, p)
	case frameWindowUpdate:
		return c.readWindowUpdate(h, p)
	}
	return nil // unknown frame types are ignored
}

// idleLocked reports whether id names a stream that was never opened.
func (c *conn) idleLocked(id uint32) bool {
	if c.cfg.server {
		return id > c.lastPeerID
	}
	return id >= c.nextID
}

// streamErr resets stream id with the error's code.
func (c *conn) streamErr(id uint32, se *streamError) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s := c.streams[id]; s != nil {
		s.resetLocked(se.code)
	} else {
		c.queueLocked(ctrlFrame{typ: frameRSTStream, stream: id, val: uint32(se.code)})
	}
	c.cfg.logger.Debug("HBONE stream error", "peer", c.nc.RemoteAddr(), "stream", id, "error", se)
	return nil
}

func (c *conn) readData(h frameHeader) error {
	if h.stream == 0 {
		return connErrorf(errCodeProtocol, "DATA on stream 0")
	}
	length := int(h.length)
	pad := 0
	if h.has(flagPadded) {
		if length < 1 {
			return connErrorf(errCodeProtocol, "padded DATA without pad length")
		}
		b, err := c.br.ReadByte()
		if err != nil {
			return err
		}
		pad = int(b)
		if pad > length-1 {
			return connErrorf(errCodeProtocol, "DATA padding %d longer than the payload", pad)
		}
	}
	dataLen := length - pad
	if h.has(flagPadded) {
		dataLen--
	}

	c.mu.Lock()
	if int64(length) > c.recvWindow {
		c.mu.Unlock()
		return connErrorf(errCodeFlowControl, "DATA of %d bytes exceeds the connection window %d", length, c.recvWindow)
	}
	c.recvWindow -= int64(length)
	s := c.streams[h.stream]
	var drop *streamError
	switch {
	case s == nil && c.idleLocked(h.stream):
		c.mu.Unlock()
		return connErrorf(errCodeProtocol, "DATA on idle stream %d", h.stream)
	case s == nil:
		// A stream we already closed or reset: drop, but keep the
		// connection window whole.
	case s.remoteClosed:
		drop = &streamError{errCodeStreamClosed, "DATA after END_STREAM"}
	case int64(length) > s.recvWindow:
		drop = &streamError{errCodeFlowControl, fmt.Sprintf("DATA of %d bytes exceeds the stream window %d", length, s.recvWindow)}
	}
	if s == nil || drop != nil {
		c.creditLocked(nil, int64(length))
		if drop != nil {
			s.resetLocked(drop.code)
		}
		c.mu.Unlock()
		_, err := c.br.Discard(dataLen + pad)
		return err
	}
	s.recvWindow -= int64(length)
	if pad > 0 || h.has(flagPadded) {
		c.creditLocked(s, int64(length-dataLen))
	}
	tail, start := s.buf.reserveTail()
	c.mu.Unlock()

	// Read the payload straight into the stream's buffer, outside the lock:
	// only this goroutine writes past the committed end of the tail chunk.
	fresh := c.fresh[:0]
	rest := dataLen
	var err error
	tailEnd := start
	if tail != nil && rest > 0 {
		n := min(rest, len(tail.b)-start)
		_, err = io.ReadFull(c.br, tail.b[start:start+n])
		tailEnd = start + n // published under mu below; readers never look past w
		rest -= n
	}
	for err == nil && rest > 0 {
		ch := c.cfg.buffers.chunks.Get().(*chunk)
		n := min(rest, len(ch.b))
		_, err = io.ReadFull(c.br, ch.b[:n])
		ch.w = n
		fresh = append(fresh, ch)
		rest -= n
	}
	if err == nil && pad > 0 {
		_, err = c.br.Discard(pad)
	}

	if err != nil {
		// The connection is lost; drop the partial frame.
		for _, ch := range fresh {
			c.cfg.buffers.chunks.Put(ch.reset())
		}
		c.mu.Lock()
		s.buf.commit(tail, start, nil)
		c.mu.Unlock()
		return err
	}
	c.mu.Lock()
	s.buf.commit(tail, tailEnd, fresh)
	clear(fresh)
	c.fresh = fresh[:0]
	if s.closed || s.reset != nil {
		// Nobody will read it: give the connection window back. (A WriteTo
		// still writing out of the buffer releases it when it returns.)
		c.creditLocked(nil, int64(dataLen))
		if !s.reading {
			s.buf.release()
		}
	} else {
		s.buffered += dataLen
	}
	if h.has(flagEndStream) {
		s.remoteClosed = true
		if s.localClosed {
			c.removeLocked(s)
		}
	}
	s.cond.Broadcast()
	c.mu.Unlock()
	return nil
}

func (c *conn) readHeaders(h frameHeader) error {
	if h.stream == 0 {
		return connErrorf(errCodeProtocol, "%v on stream 0", h.typ)
	}
	if h.typ == frameContinuation && !c.inBlock {
		return connErrorf(errCodeProtocol, "CONTINUATION without HEADERS")
	}
	p, err := c.payload(h)
	if err != nil {
		return err
	}
	if h.typ == frameHeaders {
		if p, err = stripPadding(h, p); err != nil {
			return err
		}
		if h.has(flagPriority) {
			if len(p) < 5 {
				return connErrorf(errCodeProtocol, "HEADERS with priority too short")
			}
			p = p[5:]
		}
		c.hstream, c.hend = h.stream, h.has(flagEndStream)
		c.hblock = c.hblock[:0]
	}
	if !h.has(flagEndHeaders) {
		if len(c.hblock)+len(p) > maxHeaderBlock {
			return connErrorf(errCodeEnhanceYourCalm, "header block longer than %d bytes", maxHeaderBlock)
		}
		c.hblock = append(c.hblock, p...)
		c.inBlock = true
		return nil
	}
	block := p
	if c.inBlock {
		c.hblock = append(c.hblock, p...)
		block = c.hblock
	}
	c.inBlock = false
	c.hfields, c.hsize, c.htooBig = c.hfields[:0], 0, false
	c.hdec.SetEmitEnabled(true)
	if _, err := c.hdec.Write(block); err != nil {
		return connErrorf(errCodeCompression, "decoding headers: %v", err)
	}
	if err := c.hdec.Close(); err != nil {
		return connErrorf(errCodeCompression, "decoding headers: %v", err)
	}
	if cap(c.hblock) > 64<<10 {
		c.hblock = nil
	}
	fields := c.hfields
	c.hfields = nil // handed over
	if c.cfg.server {
		return c.serverHeaders(c.hstream, fields, c.hend, c.htooBig)
	}
	return c.clientHeaders(c.hstream, fields, c.hend)
}

func (c *conn) emitField(f hpack.HeaderField) {
	c.hsize += f.Size()
	if c.hsize > c.cfg.maxHeaderList {
		c.htooBig = true
		c.hfields = c.hfields[:0]
		c.hdec.SetEmitEnabled(false) // keep decoding for the table, drop the fields
		return
	}
	c.hfields = append(c.hfields, f)
}

func (c *conn) serverHeaders(id uint32, fields []hpack.HeaderField, end, tooBig bool) error {
	c.mu.Lock()
	if s := c.streams[id]; s != nil {
		// Trailers: they must end the stream; their content is ignored.
		if !end {
			s.resetLocked(errCodeProtocol)
		} else {
			s.remoteClosed = true
			if s.localClosed {
				c.removeLocked(s)
			}
			s.cond.Broadcast()
		}
		c.mu.Unlock()
		return nil
	}
	if id%2 == 0 {
		c.mu.Unlock()
		return connErrorf(errCodeProtocol, "client opened even stream %d", id)
	}
	if id <= c.lastPeerID {
		c.mu.Unlock()
		return nil // a stream we already closed
	}
	c.lastPeerID = id
	if c.goAwaySent && id > c.drainLast || uint32(len(c.streams)) >= c.cfg.maxStreams || c.closed {
		c.queueLocked(ctrlFrame{typ: frameRSTStream, stream: id, val: uint32(errCodeRefusedStream)})
		c.mu.Unlock()
		return nil
	}
	s := newStream(c, id)
	s.remoteClosed = end
	c.streams[id] = s
	c.mu.Unlock()
	c.cfg.onStream(s, fields, tooBig)
	return nil
}

func (c *conn) clientHeaders(id uint32, fields []hpack.HeaderField, end bool) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if id%2 == 0 || id >= c.nextID {
		return connErrorf(errCodeProtocol, "HEADERS on stream %d, which we never opened", id)
	}
	s := c.streams[id]
	if s == nil {
		return nil // closed or reset already
	}
	if s.gotResponse {
		if !end {
			s.resetLocked(errCodeProtocol)
			return nil
		}
		s.remoteClosed = true
	} else {
		status, hdr, err := parseResponse(fields)
		var se *streamError
		if errors.As(err, &se) {
			s.resetLocked(se.code)
			return nil
		}
		if status < 200 {
			if end {
				s.resetLocked(errCodeProtocol)
			}
			return nil // informational: the final response follows
		}
		s.status, s.respHeader, s.gotResponse = status, hdr, true
		s.remoteClosed = end
	}
	if s.remoteClosed && s.localClosed {
		c.removeLocked(s)
	}
	s.cond.Broadcast()
	return nil
}

func (c *conn) readRST(h frameHeader, p []byte) error {
	if h.stream == 0 {
		return connErrorf(errCodeProtocol, "RST_STREAM on stream 0")
	}
	if len(p) != 4 {
		return connErrorf(errCodeFrameSize, "RST_STREAM of %d bytes", len(p))
	}
	code := errCode(binary.BigEndian.Uint32(p))
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.idleLocked(h.stream) {
		return connErrorf(errCodeProtocol, "RST_STREAM on idle stream %d", h.stream)
	}
	if s := c.streams[h.stream]; s != nil {
		s.reset = &ResetError{Code: uint32(code), Remote: true}
		s.rstSent.Store(true) // never answer a reset with frames
		s.cancelCtx()
		c.removeLocked(s)
		s.cond.Broadcast()
	}
	return nil
}

func (c *conn) readSettings(h frameHeader, p []byte) error {
	if h.stream != 0 {
		return connErrorf(errCodeProtocol, "SETTINGS on stream %d", h.stream)
	}
	if h.has(flagAck) {
		if len(p) != 0 {
			return connErrorf(errCodeFrameSize, "SETTINGS ack with payload")
		}
		return nil
	}
	if len(p)%6 != 0 {
		return connErrorf(errCodeFrameSize, "SETTINGS of %d bytes", len(p))
	}
	ack := ctrlFrame{typ: frameSettings}
	c.mu.Lock()
	defer c.mu.Unlock()
	for ; len(p) > 0; p = p[6:] {
		id, v := binary.BigEndian.Uint16(p), binary.BigEndian.Uint32(p[2:])
		switch id {
		case settingHeaderTableSize:
			ack.table, ack.hasTable = v, true
		case settingEnablePush:
			if v > 1 {
				return connErrorf(errCodeProtocol, "SETTINGS_ENABLE_PUSH %d", v)
			}
		case settingMaxConcurrentStreams:
			c.peerStreams = v
		case settingInitialWindowSize:
			if v > maxWindow {
				return connErrorf(errCodeFlowControl, "SETTINGS_INITIAL_WINDOW_SIZE %d", v)
			}
			delta := int64(v) - c.peerWindow
			c.peerWindow = int64(v)
			for _, s := range c.streams {
				s.sendWindow += delta
				if s.sendWindow > maxWindow {
					return connErrorf(errCodeFlowControl, "stream %d window overflows", s.id)
				}
				if delta > 0 {
					s.cond.Broadcast()
				}
			}
		case settingMaxFrameSize:
			if v < minMaxFrameSize || v > maxMaxFrameSize {
				return connErrorf(errCodeProtocol, "SETTINGS_MAX_FRAME_SIZE %d", v)
			}
			c.peerMaxFrame.Store(v)
		}
	}
	c.queueLocked(ack)
	return nil
}

func (c *conn) readPing(h frameHeader, p []byte) error {
	if h.stream != 0 {
		return connErrorf(errCodeProtocol, "PING on stream %d", h.stream)
	}
	if len(p) != 8 {
		return connErrorf(errCodeFrameSize, "PING of %d bytes", len(p))
	}
	var data [8]byte
	copy(data[:], p)
	c.mu.Lock()
	defer c.mu.Unlock()
	if !h.has(flagAck) {
		c.queueLocked(ctrlFrame{typ: framePing, flags: flagAck, data: data})
		return nil
	}
	if c.pingOut && data == c.pingData {
		c.pingOut = false
	}
	if c.draining && data == c.drainPing {
		c.finishDrainLocked()
	}
	return nil
}

func (c *conn) readGoAway(h frameHeader, p []byte) error {
	if h.stream != 0 {
		return connErrorf(errCodeProtocol, "GOAWAY on stream %d", h.stream)
	}
	if len(p) < 8 {
		return connErrorf(errCodeFrameSize, "GOAWAY of %d bytes", len(p))
	}
	last := binary.BigEndian.Uint32(p) & maxStreamID
	code := errCode(binary.BigEndian.Uint32(p[4:]))
	c.mu.Lock()
	defer c.mu.Unlock()
	if code != errCodeNo {
		c.cfg.logger.Debug("HBONE peer sent GOAWAY", "peer", c.nc.RemoteAddr(), "code", code.String(), "debug", string(p[8:]))
	}
	if c.goAwayRecv && last > c.goAwayLast {
		last = c.goAwayLast // a later GOAWAY may only lower the bound
	}
	c.goAwayRecv, c.goAwayLast = true, last
	if !c.cfg.server {
		for id, s := range c.streams {
			if id > last {
				s.refusedLocked()
			}
		}
	}
	c.closeIfIdleLocked()
	return nil
}

func (c *conn) readWindowUpdate(h frameHeader, p []byte) error {
	if len(p) != 4 {
		return connErrorf(errCodeFrameSize, "WINDOW_UPDATE of %d bytes", len(p))
	}
	inc := int64(binary.BigEndian.Uint32(p) & (1<<31 - 1))
	c.mu.Lock()
	defer c.mu.Unlock()
	if h.stream == 0 {
		if inc == 0 {
			return connErrorf(errCodeProtocol, "connection WINDOW_UPDATE of 0")
		}
		c.sendWindow += inc
		if c.sendWindow > maxWindow {
			return connErrorf(errCodeFlowControl, "connection window overflows")
		}
		for s := range c.connWaiters {
			s.cond.Broadcast()
		}
		clear(c.connWaiters)
		return nil
	}
	if c.idleLocked(h.stream) {
		return connErrorf(errCodeProtocol, "WINDOW_UPDATE on idle stream %d", h.stream)
	}
	s := c.streams[h.stream]
	if s == nil {
		return nil
	}
	if inc == 0 {
		s.resetLocked(errCodeProtocol)
		return nil
	}
	s.sendWindow += inc
	if s.sendWindow > maxWindow {
		s.resetLocked(errCodeFlowControl)
		return nil
	}
	s.cond.Broadcast()
	return nil
}
