package hbone

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"golang.org/x/net/http2/hpack"
)

// The read path: one reader per connection parses every frame, reads DATA
// payloads straight into stream buffers, and decodes header blocks.

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

// readFrame reads and handles one frame.
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

// readData reads a DATA frame's payload into its stream's buffer, after
// flow-control checks; data for a closed or reset stream is dropped.
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
	wake := true
	// Deliver straight to the socket only when no further frame is already
	// read in: under load, the streams' own WriteTo goroutines write in
	// parallel, and the reader goes on reading.
	if !h.has(flagEndStream) && c.br.Buffered() == 0 {
		wake = s.deliverLocked()
	}
	if h.has(flagEndStream) {
		c.endStreamLocked(s, false)
	}
	if wake {
		s.cond.Broadcast()
	}
	c.mu.Unlock()
	return nil
}

// readHeaders collects a header block over HEADERS and CONTINUATION
// frames and decodes it.
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

// emitField receives one decoded header field, enforcing our header list
// size limit.
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

// serverHeaders opens a stream for a request (or takes trailers on an open
// one) and hands it to onStream.
func (c *conn) serverHeaders(id uint32, fields []hpack.HeaderField, end, tooBig bool) error {
	c.mu.Lock()
	if s := c.streams[id]; s != nil {
		// Trailers: they must end the stream; their content is ignored.
		if !end {
			s.resetLocked(errCodeProtocol)
		} else {
			c.endStreamLocked(s, false)
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

// clientHeaders takes a response (informational, final, or trailers) on a
// stream we opened.
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
	}
	if end {
		c.endStreamLocked(s, false)
	}
	s.cond.Broadcast()
	return nil
}

// readRST ends a stream the peer reset.
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
