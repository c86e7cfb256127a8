package hbone

import (
	"crypto/rand"
	"encoding/binary"
	"time"
)

// Control frames: the queue the reader fills and the control writer
// drains (SETTINGS and PING acks, RST_STREAM, WINDOW_UPDATE, GOAWAY), flow
// control credit, keepalive PINGs, and the GOAWAY drain.

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

// ctrlLoop is the control writer: it sends the queued control frames, in
// order, until the connection closes.
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

// readSettings applies the peer's SETTINGS and queues the ack.
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

// readPing answers a PING, or matches an ack to our keepalive or drain
// PING.
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

// keepaliveTick sends a PING after a quiet interval and drops the
// connection if it is not answered in time.
func (c *conn) keepaliveTick() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	now := time.Since(c.start)
	var next time.Duration
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

// readGoAway records the peer's GOAWAY: a client fails the streams the
// server will not process, and the connection closes once idle.
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

// finishDrainLocked sends the final GOAWAY of a drain (mu held).
func (c *conn) finishDrainLocked() {
	if c.closed || c.goAwaySent {
		return
	}
	c.goAwaySent = true
	c.drainLast = c.lastPeerID
	c.queueLocked(ctrlFrame{typ: frameGoAway, last: c.drainLast, val: uint32(errCodeNo)})
	c.closeIfIdleLocked()
}

// readWindowUpdate adds send credit to the connection or a stream and
// wakes the writers waiting for it.
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
