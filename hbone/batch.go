package hbone

import (
	"net"
	"sync"
)

// batchConn sits under the TLS layer and, while a batch is open, gathers
// the TLS records of one write-lock hold into a single socket write:
// crypto/tls writes each 16 KiB record separately, and on a fast path the
// per-write cost in the kernel outweighs one more copy. The buffer comes
// from a pool shared by the connections of a Server or Pool, so an idle
// connection holds none.
type batchConn struct {
	net.Conn
	pool *sync.Pool // of *[]byte
	mu   sync.Mutex
	on   bool
	buf  *[]byte
	werr error
}

const maxBatch = 512 << 10

func (b *batchConn) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.werr != nil {
		return 0, b.werr
	}
	if !b.on {
		return b.Conn.Write(p)
	}
	if b.buf != nil && len(*b.buf)+len(p) > maxBatch {
		if err := b.flushLocked(); err != nil {
			return 0, err
		}
	}
	if len(p) > maxBatch {
		return b.Conn.Write(p)
	}
	if b.buf == nil {
		b.buf = b.pool.Get().(*[]byte)
	}
	*b.buf = append(*b.buf, p...)
	return len(p), nil
}

// flushLocked writes the batch out and returns the buffer to the pool.
func (b *batchConn) flushLocked() error {
	if b.buf == nil {
		return nil
	}
	var err error
	if len(*b.buf) > 0 {
		if _, err = b.Conn.Write(*b.buf); err != nil {
			b.werr = err
		}
	}
	*b.buf = (*b.buf)[:0]
	b.pool.Put(b.buf)
	b.buf = nil
	return err
}

// begin opens a batch; end writes it out and closes it.
func (b *batchConn) begin() {
	b.mu.Lock()
	b.on = true
	b.mu.Unlock()
}

func (b *batchConn) end() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.on = false
	return b.flushLocked()
}
