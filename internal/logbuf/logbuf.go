// Package logbuf is a buffered, goroutine-safe log writer for proxies that
// log a line per request or connection: lines gather in memory and reach
// the underlying writer in one write when the buffer fills or a short delay
// after the first unflushed line, so a busy proxy pays one write system
// call per batch instead of one per line, and an idle one arms no timer.
//
// Each Write is taken to be one whole record (slog handlers write a record
// per call) and is never split across flushes.
package logbuf

import (
	"io"
	"sync"
	"time"
)

// Writer buffers records for an underlying writer.
type Writer struct {
	w     io.Writer
	delay time.Duration
	max   int

	mu     sync.Mutex
	buf    []byte
	timer  *time.Timer // armed while buf holds unflushed records
	err    error       // the first write error, reported by Flush and Close
	closed bool
}

// New returns a Writer that flushes to w at most delay after a record
// arrives, or as soon as max bytes are buffered. delay <= 0 means 100 ms,
// max <= 0 means 64 KiB.
func New(w io.Writer, delay time.Duration, max int) *Writer {
	if delay <= 0 {
		delay = 100 * time.Millisecond
	}
	if max <= 0 {
		max = 64 << 10
	}
	return &Writer{w: w, delay: delay, max: max}
}

// Write buffers one record. It never blocks on the underlying writer
// unless the buffer is full. After Close it writes through.
func (b *Writer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return b.w.Write(p)
	}
	b.buf = append(b.buf, p...)
	if len(b.buf) >= b.max {
		b.flushLocked()
	} else if b.timer == nil {
		b.timer = time.AfterFunc(b.delay, func() { _ = b.Flush() })
	}
	return len(p), nil
}

// Flush writes what is buffered now.
func (b *Writer) Flush() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.flushLocked()
	return b.err
}

func (b *Writer) flushLocked() {
	if b.timer != nil {
		b.timer.Stop()
		b.timer = nil
	}
	if len(b.buf) == 0 {
		return
	}
	if _, err := b.w.Write(b.buf); err != nil && b.err == nil {
		b.err = err
	}
	if cap(b.buf) > 4*b.max {
		b.buf = nil // do not keep a burst's buffer forever
	} else {
		b.buf = b.buf[:0]
	}
}

// Close flushes and makes later writes go straight through.
func (b *Writer) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.flushLocked()
	b.closed = true
	return b.err
}
