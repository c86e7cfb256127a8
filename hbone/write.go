package hbone

import (
	"fmt"

	"golang.org/x/net/http2/hpack"
)

// The write path: stream owners write their HEADERS and DATA frames
// themselves under the write lock, and the last writer waiting flushes, so
// that frames from several streams share TLS records (see batch.go).

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
		c.endStreamLocked(s, true)
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
		c.endStreamLocked(s, true)
		c.mu.Unlock()
	}
	return c.unlockWrite()
}
