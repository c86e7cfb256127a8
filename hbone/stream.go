package hbone

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

const (
	chunkSize     = 64 << 10  // receive buffer unit
	maxWriteChunk = 256 << 10 // most bytes one write takes the write lock for
	minCopyBuf    = 4 << 10   // ReadFrom buffer sizes adapt from this, doubling
	copyClasses   = 7         // up to 256 KiB
)

var (
	errWriteAfterClose = errors.New("hbone: write after CloseWrite")
)

// buffers recycles receive chunks and copy buffers among the streams of a
// Server or Pool.
type buffers struct {
	chunks  sync.Pool
	copies  [copyClasses]sync.Pool // minCopyBuf << i
	batches sync.Pool              // batchConn buffers
}

func newBuffers() *buffers {
	b := &buffers{chunks: sync.Pool{New: func() any { return &chunk{b: make([]byte, chunkSize)} }}}
	b.batches.New = func() any { s := make([]byte, 0, 64<<10); return &s }
	for i := range b.copies {
		size := minCopyBuf << i
		b.copies[i].New = func() any { s := make([]byte, size); return &s }
	}
	return b
}

// chunk is a piece of a stream's receive buffer: b[r:w] is unread.
type chunk struct {
	b    []byte
	r, w int
}

// chunkQueue is a stream's receive buffer. The connection's reader may
// fill the tail chunk past w without the lock while busy is set; the
// consumer reads only below w and never recycles the tail while busy.
type chunkQueue struct {
	q    []*chunk
	busy bool
	pool *buffers
}

func (b *chunkQueue) reserveTail() (*chunk, int) {
	b.busy = true
	if n := len(b.q); n > 0 {
		if t := b.q[n-1]; t.w < len(t.b) {
			return t, t.w
		}
	}
	return nil, 0
}

func (b *chunkQueue) commit(tail *chunk, end int, fresh []*chunk) {
	if tail != nil {
		tail.w = end
	}
	b.q = append(b.q, fresh...)
	b.busy = false
}

// read copies unread bytes into p and consumes them.
func (b *chunkQueue) read(p []byte) int {
	n := 0
	for n < len(p) && len(b.q) > 0 {
		ch := b.q[0]
		k := copy(p[n:], ch.b[ch.r:ch.w])
		n += k
		ch.r += k
		if !b.popIfDone() {
			break
		}
	}
	return n
}

// popIfDone recycles the head chunk if it is fully read, and reports
// whether it did.
func (b *chunkQueue) popIfDone() bool {
	ch := b.q[0]
	if ch.r < ch.w || (len(b.q) == 1 && b.busy) {
		return false
	}
	n := copy(b.q, b.q[1:]) // short queue: shifting keeps its capacity
	b.q[n] = nil
	b.q = b.q[:n]
	b.pool.chunks.Put(ch.reset())
	return true
}

func (ch *chunk) reset() *chunk {
	ch.r, ch.w = 0, 0
	return ch
}

// appendBuffers appends the unread regions, without consuming them.
func (b *chunkQueue) appendBuffers(dst net.Buffers) net.Buffers {
	for _, ch := range b.q {
		if ch.r < ch.w {
			dst = append(dst, ch.b[ch.r:ch.w])
		}
	}
	return dst
}

// advance consumes n bytes.
func (b *chunkQueue) advance(n int) {
	for n > 0 && len(b.q) > 0 {
		ch := b.q[0]
		k := min(n, ch.w-ch.r)
		ch.r += k
		n -= k
		if !b.popIfDone() {
			break
		}
	}
}

// release drops everything unread (except a tail being filled).
func (b *chunkQueue) release() {
	for len(b.q) > 0 {
		b.q[0].r = b.q[0].w
		if !b.popIfDone() {
			break
		}
	}
}

// stream is one CONNECT stream, either side.
type stream struct {
	c       *conn
	id      uint32
	cond    sync.Cond // L is &c.mu
	rmu     sync.Mutex
	wmu     sync.Mutex
	rstSent atomic.Bool // RST_STREAM is on the wire (either way): no frame may follow

	// Guarded by c.mu.
	sendWindow  int64
	recvWindow  int64
	recvUnacked int64
	buf         chunkQueue
	buffered    int
	reading     bool // WriteTo, or the reader delivering to sink, is writing out of buf without the lock
	// sink is the socket a parked WriteTo copies to: while WriteTo waits
	// for data, the connection's reader writes new DATA to it directly,
	// without blocking (see deliverLocked), so a message crosses no
	// goroutine hand-off; WriteTo takes over what the socket did not take.
	sink         syscall.RawConn
	delivered    int64 // bytes written to sink by the reader, not yet counted by WriteTo
	sinkErr      error // the reader's write to sink failed
	wbufs        net.Buffers
	remoteClosed bool // END_STREAM received
	localClosed  bool // END_STREAM sent
	closed       bool // Close called
	removed      bool // forgotten by the connection
	refused      bool // client: refused by GOAWAY, never processed
	reset        *ResetError
	gotResponse  bool
	status       int
	respHeader   http.Header
	rdeadline    time.Time
	wdeadline    time.Time
	rtimer       *time.Timer
	wtimer       *time.Timer
	cancel       context.CancelFunc // server: ends the handler's context
}

// newStream makes a stream (c.mu held).
func newStream(c *conn, id uint32) *stream {
	s := &stream{c: c, id: id, sendWindow: c.peerWindow, recvWindow: c.cfg.streamWindow}
	s.cond.L = &c.mu
	s.buf.pool = c.cfg.buffers
	return s
}

func (s *stream) cancelCtx() {
	if s.cancel != nil {
		s.cancel()
	}
}

// resetLocked resets the stream from our side (c.mu held).
func (s *stream) resetLocked(code errCode) {
	if s.reset == nil {
		s.reset = &ResetError{Code: uint32(code)}
	}
	if !s.rstSent.Load() {
		s.c.queueLocked(ctrlFrame{typ: frameRSTStream, stream: s.id, s: s, val: uint32(code)})
	}
	s.cancelCtx()
	s.c.removeLocked(s)
	s.cond.Broadcast()
}

// refusedLocked fails a client stream the server will never process.
func (s *stream) refusedLocked() {
	s.refused = true
	if s.reset == nil {
		s.reset = &ResetError{Code: uint32(errCodeRefusedStream), Remote: true}
	}
	s.rstSent.Store(true)
	s.c.removeLocked(s)
	s.cond.Broadcast()
}

func (s *stream) connClosedLocked() {
	s.cancelCtx()
	s.cond.Broadcast()
}

func expired(t time.Time) bool { return !t.IsZero() && !time.Now().Before(t) }

// readableLocked says whether a read can return now: with data (nil) or
// with an error; wait reports that it must wait.
func (s *stream) readableLocked() (wait bool, err error) {
	switch {
	case s.closed:
		return false, net.ErrClosed
	case s.buffered > 0:
		return false, nil
	case s.remoteClosed:
		return false, io.EOF
	case s.reset != nil:
		return false, s.reset
	case s.c.closed:
		return false, s.c.err
	case expired(s.rdeadline):
		return false, os.ErrDeadlineExceeded
	}
	return true, nil
}

func (s *stream) waitReadableLocked() error {
	for {
		wait, err := s.readableLocked()
		if !wait {
			return err
		}
		if s.armLocked(s.rdeadline, &s.rtimer) {
			s.cond.Wait()
		}
	}
}

func (s *stream) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	s.rmu.Lock()
	defer s.rmu.Unlock()
	c := s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := s.waitReadableLocked(); err != nil {
		return 0, err
	}
	n := s.buf.read(p)
	s.buffered -= n
	c.creditLocked(s, int64(n))
	return n, nil
}

// WriteTo copies everything the peer sends to w until END_STREAM (then it
// returns a nil error), writing straight out of the receive buffer. When w
// is a socket, the connection's reader delivers to it directly while
// WriteTo waits (see deliverLocked).
func (s *stream) WriteTo(w io.Writer) (int64, error) {
	s.rmu.Lock()
	defer s.rmu.Unlock()
	c := s.c
	var sink syscall.RawConn
	if sc, ok := w.(*net.TCPConn); ok {
		sink, _ = sc.SyscallConn()
	}
	var total int64
	var backing net.Buffers
	for {
		c.mu.Lock()
		s.sink = sink
		err := s.waitWritableOutLocked()
		s.sink = nil
		total += s.delivered
		s.delivered = 0
		if err != nil {
			c.mu.Unlock()
			if err == io.EOF {
				err = nil
			}
			return total, err
		}
		backing = s.buf.appendBuffers(backing[:0])
		s.reading = true
		c.mu.Unlock()

		s.wbufs = backing // a field, so that WriteTo's pointer does not allocate
		n, err := s.wbufs.WriteTo(w)
		s.wbufs = nil

		c.mu.Lock()
		s.doneReadingLocked(n)
		c.mu.Unlock()
		clear(backing)
		total += n
		if err != nil {
			return total, err
		}
	}
}

// waitWritableOutLocked waits until WriteTo has data to write out or must
// return, and no direct delivery is in flight.
func (s *stream) waitWritableOutLocked() error {
	for {
		if s.sinkErr != nil {
			return s.sinkErr
		}
		if s.reading {
			s.cond.Wait() // for the delivery in flight to end
			continue
		}
		wait, err := s.readableLocked()
		if !wait {
			return err
		}
		if s.armLocked(s.rdeadline, &s.rtimer) {
			s.cond.Wait()
		}
	}
}

// deliver is the reader's one non-blocking writev to a sink (as a method
// value made once per connection, so a delivery allocates nothing).
func (c *conn) deliver(fd uintptr) bool {
	for {
		c.deliverN, c.deliverErr = unix.Writev(int(fd), c.deliverBufs)
		if c.deliverErr != unix.EINTR {
			return true // never wait: WriteTo takes over what is left
		}
	}
}

// doneReadingLocked ends a write out of the buffer that took n bytes.
func (s *stream) doneReadingLocked(n int64) {
	s.reading = false
	if s.closed {
		s.buf.release()
		return
	}
	s.buf.advance(int(n))
	s.buffered -= int(n)
	s.c.creditLocked(s, n)
}

// deliverLocked writes the buffer to the sink of a waiting WriteTo,
// without blocking, outside c.mu (called and returning with it held). It
// reports whether WriteTo must wake up: data is left over, the write
// failed, or the stream changed meanwhile.
func (s *stream) deliverLocked() (wake bool) {
	if s.sink == nil || s.reading || s.buffered == 0 || s.closed || s.reset != nil {
		return true
	}
	c := s.c
	sink := s.sink
	c.deliverBufs = s.buf.appendBuffers(c.deliverBufs[:0])
	s.reading = true
	c.mu.Unlock()
	err := sink.Write(c.deliverFn)
	n, werr := c.deliverN, c.deliverErr
	if n < 0 {
		n = 0
	}
	if werr == unix.EAGAIN {
		werr = nil
	}
	if err == nil && werr != nil {
		err = os.NewSyscallError("writev", werr)
	}
	clear(c.deliverBufs)
	c.deliverBufs = c.deliverBufs[:0]
	c.mu.Lock()
	s.doneReadingLocked(int64(n))
	s.delivered += int64(n)
	if err != nil {
		s.sinkErr = err
		return true
	}
	// Anything that changed while the lock was out (data left over, a
	// close, a reset, a deadline) found WriteTo waiting for this delivery.
	wait, _ := s.readableLocked()
	return !wait
}
func (s *stream) writeErrLocked() error {
	switch {
	case s.closed:
		return net.ErrClosed
	case s.localClosed:
		return errWriteAfterClose
	case s.reset != nil:
		return s.reset
	case s.c.closed:
		return s.c.err
	case expired(s.wdeadline):
		return os.ErrDeadlineExceeded
	}
	return nil
}

// awaitSendCredit waits for flow-control credit and takes up to want.
func (s *stream) awaitSendCredit(want int) (int, error) {
	c := s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		if err := s.writeErrLocked(); err != nil {
			return 0, err
		}
		credit := min(s.sendWindow, c.sendWindow)
		if credit > 0 {
			n := min(int64(want), credit)
			s.sendWindow -= n
			c.sendWindow -= n
			return int(n), nil
		}
		if c.sendWindow <= 0 {
			c.connWaiters[s] = struct{}{}
		}
		if s.armLocked(s.wdeadline, &s.wtimer) {
			s.cond.Wait()
		}
	}
}

// write sends p as DATA frames (s.wmu held).
func (s *stream) write(p []byte) (int, error) {
	total := 0
	for len(p) > 0 {
		n, err := s.awaitSendCredit(min(len(p), maxWriteChunk))
		if err != nil {
			return total, err
		}
		if err := s.c.writeData(s, p[:n], false); err != nil {
			return total, err
		}
		total += n
		p = p[n:]
	}
	return total, nil
}

func (s *stream) Write(p []byte) (int, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	return s.write(p)
}

// ReadFrom sends everything r yields until EOF (it does not end the
// stream), with a buffer that grows while r keeps filling it and shrinks
// back when it does not. A socket is read with a buffer taken only once it
// is readable, so an idle stream holds none.
func (s *stream) ReadFrom(r io.Reader) (int64, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	pools := &s.c.cfg.buffers.copies
	if tc, ok := r.(*net.TCPConn); ok {
		if rc, err := tc.SyscallConn(); err == nil {
			return s.readFromRaw(rc)
		}
	}
	class := 0
	var total int64
	for {
		bp := pools[class].Get().(*[]byte)
		buf := *bp
		n, rerr := r.Read(buf)
		var werr error
		if n > 0 {
			var m int
			m, werr = s.write(buf[:n])
			total += int64(m)
		}
		pools[class].Put(bp)
		if werr != nil {
			return total, werr
		}
		if rerr == io.EOF {
			return total, nil
		}
		if rerr != nil {
			return total, rerr
		}
		class = nextClass(class, n, len(buf))
	}
}

// nextClass grows the copy buffer class while reads fill the buffer and
// shrinks it when they use less than a quarter.
func nextClass(class, n, size int) int {
	switch {
	case n == size && class < copyClasses-1:
		return class + 1
	case n < size/4 && class > 0:
		return class - 1
	}
	return class
}

// readFromRaw is ReadFrom for a socket: each read attempt takes a buffer
// from the pool and gives it back if the socket had nothing, so the
// buffer is held only while there is data to send.
func (s *stream) readFromRaw(rc syscall.RawConn) (int64, error) {
	pools := &s.c.cfg.buffers.copies
	class := 0
	var total int64
	var bp *[]byte
	var n int
	var rerr error
	attempt := func(fd uintptr) bool {
		bp = pools[class].Get().(*[]byte)
		for {
			n, rerr = unix.Read(int(fd), *bp)
			if rerr != unix.EINTR {
				break
			}
		}
		if rerr == unix.EAGAIN {
			pools[class].Put(bp)
			bp = nil
			return false // wait until readable, then try again
		}
		return true
	}
	for {
		err := rc.Read(attempt)
		if err == nil && rerr != nil {
			err = os.NewSyscallError("read", rerr)
		}
		if err != nil {
			if bp != nil {
				pools[class].Put(bp)
				bp = nil
			}
			return total, err
		}
		if n <= 0 {
			pools[class].Put(bp)
			bp = nil
			return total, nil // EOF
		}
		m, werr := s.write((*bp)[:n])
		total += int64(m)
		size := len(*bp)
		pools[class].Put(bp)
		bp = nil
		if werr != nil {
			return total, werr
		}
		class = nextClass(class, n, size)
	}
}

// CloseWrite sends END_STREAM: the peer reads EOF; reading goes on.
func (s *stream) CloseWrite() error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	c := s.c
	c.mu.Lock()
	if s.localClosed {
		c.mu.Unlock()
		return nil
	}
	err := s.writeErrLocked()
	c.mu.Unlock()
	if err != nil {
		return err
	}
	return c.writeData(s, nil, true)
}

// Close ends the stream both ways: if either side had not finished, the
// stream is reset (CANCEL; a server that already sent its whole response
// uses NO_ERROR, RFC 9113 §8.1). Unread data is discarded.
func (s *stream) Close() error {
	c := s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	if !s.removed && !c.closed {
		code := errCodeCancel
		if c.cfg.server && s.localClosed {
			code = errCodeNo
		}
		s.resetLocked(code)
	}
	s.cancelCtx()
	c.removeLocked(s)
	// Give the connection window back for what nobody will read.
	c.creditLocked(nil, int64(s.buffered))
	s.buffered = 0
	if !s.reading {
		s.buf.release()
	}
	if s.rtimer != nil {
		s.rtimer.Stop()
	}
	if s.wtimer != nil {
		s.wtimer.Stop()
	}
	s.cond.Broadcast()
	return nil
}

// setDeadline records a deadline. The timer that wakes waiters is armed
// lazily, only when a read or write must actually wait (armLocked): the
// common case, a deadline set and cleared around a read that finds data
// buffered (net/http does this per request), touches no timer at all.
func (s *stream) setDeadline(t time.Time, which *time.Time, timer **time.Timer) {
	c := s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if t.Equal(*which) {
		return
	}
	*which = t
	if *timer != nil {
		(*timer).Stop()
		*timer = nil
	}
	// Waiters re-check: the new deadline may have passed, or they must arm
	// a timer for it.
	s.cond.Broadcast()
}

// armLocked makes sure a waiter with deadline set is woken when it passes;
// it reports false when the deadline has already passed (do not wait).
func (s *stream) armLocked(deadline time.Time, timer **time.Timer) bool {
	if deadline.IsZero() || *timer != nil {
		return true
	}
	d := time.Until(deadline)
	if d <= 0 {
		return false
	}
	c := s.c
	*timer = time.AfterFunc(d, func() {
		c.mu.Lock()
		s.cond.Broadcast()
		c.mu.Unlock()
	})
	return true
}

func (s *stream) SetReadDeadline(t time.Time) error {
	s.setDeadline(t, &s.rdeadline, &s.rtimer)
	return nil
}

// SetWriteDeadline bounds waiting for flow-control credit; a write already
// handed to the connection completes with it.
func (s *stream) SetWriteDeadline(t time.Time) error {
	s.setDeadline(t, &s.wdeadline, &s.wtimer)
	return nil
}
