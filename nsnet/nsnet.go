// Package nsnet runs work and opens sockets inside network namespaces. A
// network namespace is a property of an OS thread, so each operation locks
// the caller's thread, enters the namespace, does its work and returns; a
// socket keeps the namespace it was created in, so one process can serve
// many pods, and only a socket's creation needs the namespace: a dial
// connects from any thread. A Netns holds a namespace open for repeated
// use (a pod's, for ztunnel); Do, Listen and DialFunc take a path.
//
// A thread that cannot return to its original namespace is never unlocked:
// the Go runtime then retires it rather than reuse it elsewhere.
package nsnet

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Netns is a network namespace held open for repeated work inside it: a
// pod's, for the life of the pod's proxy. Methods may be called from any
// goroutine; after Close they fail.
type Netns struct {
	f    *os.File // the namespace
	home *os.File // the namespace of the process's unlocked threads
}

// OpenNetns opens the namespace at path. Call it outside Do: the caller's
// namespace is taken as home, where threads go back after their work.
func OpenNetns(path string) (*Netns, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("opening netns: %w", err)
	}
	n, err := NewNetns(f)
	if err != nil {
		f.Close()
		return nil, err
	}
	return n, nil
}

// NewNetns takes ownership of f, an open network namespace (as received
// over ZDS). Call it outside Do, as OpenNetns.
func NewNetns(f *os.File) (*Netns, error) {
	home, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		return nil, fmt.Errorf("opening current netns: %w", err)
	}
	return &Netns{f: f, home: home}, nil
}

// Close closes the namespace's file. Work already inside it completes.
func (n *Netns) Close() error {
	return errors.Join(n.f.Close(), n.home.Close())
}

// Do runs fn on the calling goroutine's own thread, inside the namespace,
// with the thread locked for the duration: no other goroutine runs there
// meanwhile, and no thread switch is paid.
func (n *Netns) Do(fn func() error) error {
	var err error
	cerr := control(n.f, func(target int) {
		cerr := control(n.home, func(home int) { err = do(target, home, fn) })
		if cerr != nil {
			err = cerr
		}
	})
	if cerr != nil {
		return fmt.Errorf("netns: %w", cerr)
	}
	return err
}

// control runs fn with f's descriptor, which stays open meanwhile even if
// f is closed concurrently.
func control(f *os.File, fn func(fd int)) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	return rc.Control(func(fd uintptr) { fn(int(fd)) })
}

func do(target, home int, fn func() error) error {
	runtime.LockOSThread()
	if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("entering netns: %w", err)
	}
	ferr := fn()
	if err := unix.Setns(home, unix.CLONE_NEWNET); err != nil {
		// The thread stays locked to this goroutine and is retired when
		// the goroutine exits: no other goroutine ever runs in the
		// wrong namespace.
		return errors.Join(ferr, fmt.Errorf("leaving netns: %w", err))
	}
	runtime.UnlockOSThread()
	return ferr
}

// Do runs fn on a thread inside the network namespace at path.
func Do(path string, fn func() error) error {
	n, err := OpenNetns(path)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	defer n.Close()
	return n.Do(fn)
}

// SocketOptions are applied to sockets before bind or connect.
type SocketOptions struct {
	Mark        uint32 // SO_MARK (0: none)
	ReusePort   bool   // SO_REUSEPORT
	Transparent bool   // IP_TRANSPARENT (bind to non-local addresses)
}

// Control returns a net.ListenConfig/net.Dialer Control function setting o.
func (o SocketOptions) Control() func(network, address string, c syscall.RawConn) error {
	return func(network, address string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) { serr = o.apply(int(fd)) }); err != nil {
			return err
		}
		return serr
	}
}

func (o SocketOptions) apply(fd int) error {
	if o.Mark != 0 {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, int(o.Mark)); err != nil {
			return fmt.Errorf("SO_MARK: %w", err)
		}
	}
	if o.ReusePort {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
			return fmt.Errorf("SO_REUSEPORT: %w", err)
		}
	}
	if o.Transparent {
		if err := unix.SetsockoptInt(fd, unix.SOL_IP, unix.IP_TRANSPARENT, 1); err != nil {
			return fmt.Errorf("IP_TRANSPARENT: %w", err)
		}
	}
	return nil
}

// Listen opens a TCP listener inside the namespace.
func (n *Netns) Listen(ctx context.Context, addr string, o SocketOptions) (net.Listener, error) {
	var l net.Listener
	err := n.Do(func() error {
		var err error
		l, err = (&net.ListenConfig{Control: o.Control()}).Listen(ctx, "tcp", addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", addr, err)
	}
	return l, nil
}

// Listen opens a TCP listener inside the namespace at path ("" for the
// current one).
func Listen(ctx context.Context, path, addr string, o SocketOptions) (net.Listener, error) {
	if path == "" {
		l, err := (&net.ListenConfig{Control: o.Control()}).Listen(ctx, "tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("listening on %s: %w", addr, err)
		}
		return l, nil
	}
	n, err := OpenNetns(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	defer n.Close()
	l, err := n.Listen(ctx, addr, o)
	if err != nil {
		return nil, fmt.Errorf("%w in %s", err, path)
	}
	return l, nil
}

// DialFunc returns a dial function that creates its sockets inside the
// namespace. Only the socket(2) call runs on a thread inside it: a socket
// keeps the namespace it was created in, so options, bind, connect and
// the wait for the handshake run on any thread, and no thread stays
// locked while the peer answers. addr must be IP:port.
func (n *Netns) DialFunc(o SocketOptions, local net.Addr) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, n.Do, o, local, network, addr)
		if err != nil {
			return nil, &net.OpError{Op: "dial", Net: network, Addr: tcpAddr(addr), Err: err}
		}
		return c, nil
	}
}

// DialFunc is Netns.DialFunc for the namespace at path ("" for the
// current one), opened for each dial.
func DialFunc(path string, o SocketOptions, local net.Addr) func(ctx context.Context, network, addr string) (net.Conn, error) {
	in := func(fn func() error) error { return fn() }
	if path != "" {
		in = func(fn func() error) error { return Do(path, fn) }
	}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, in, o, local, network, addr)
		if err != nil {
			return nil, &net.OpError{Op: "dial", Net: network, Addr: tcpAddr(addr), Err: err}
		}
		return c, nil
	}
}

func tcpAddr(addr string) net.Addr {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil
	}
	return net.TCPAddrFromAddrPort(ap)
}

func dial(ctx context.Context, in func(func() error) error, o SocketOptions, local net.Addr, network, addr string) (net.Conn, error) {
	if network != "tcp" && network != "tcp4" && network != "tcp6" {
		return nil, fmt.Errorf("network %q: only tcp", network)
	}
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, fmt.Errorf("address %q: want IP:port: %w", addr, err)
	}
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	family := unix.AF_INET
	if ap.Addr().Is6() {
		family = unix.AF_INET6
	}
	var fd int
	open := func() error {
		var err error
		fd, err = unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
		if err != nil {
			return fmt.Errorf("socket: %w", err)
		}
		return nil
	}
	if err := in(open); err != nil {
		return nil, err
	}
	// From here on the file owns fd: closing it closes the socket.
	f := os.NewFile(uintptr(fd), "tcp:"+addr)
	defer f.Close()
	if err := o.apply(fd); err != nil {
		return nil, err
	}
	if local != nil {
		la, ok := local.(*net.TCPAddr)
		if !ok {
			return nil, fmt.Errorf("local address %v: want *net.TCPAddr", local)
		}
		lap := la.AddrPort()
		if err := unix.Bind(fd, sockaddr(netip.AddrPortFrom(lap.Addr().Unmap(), lap.Port()), family)); err != nil {
			return nil, fmt.Errorf("bind %v: %w", local, err)
		}
	}
	if err := connect(ctx, f, sockaddr(ap, family)); err != nil {
		return nil, err
	}
	c, err := net.FileConn(f) // a duplicate of fd, registered with the poller
	if err != nil {
		return nil, fmt.Errorf("wrapping socket: %w", err)
	}
	return c, nil
}

// connect starts a non-blocking connect on f's socket and waits, in the
// runtime's poller, until the handshake ends or ctx does.
func connect(ctx context.Context, f *os.File, sa unix.Sockaddr) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	if d, ok := ctx.Deadline(); ok {
		_ = f.SetWriteDeadline(d)
	}
	stop := context.AfterFunc(ctx, func() { _ = f.SetWriteDeadline(time.Unix(1, 0)) })
	defer stop()
	var cerr error
	err = rc.Write(func(fd uintptr) bool {
		// connect again until it says how the first one ended: EALREADY
		// while in progress, EISCONN once established, else its error.
		switch err := unix.Connect(int(fd), sa); err {
		case unix.EINPROGRESS, unix.EALREADY, unix.EINTR:
			return false
		case nil, unix.EISCONN:
			cerr = nil
		default:
			cerr = err
		}
		return true
	})
	if err != nil {
		if cerr := ctx.Err(); cerr != nil {
			return cerr
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return context.DeadlineExceeded
		}
		return err
	}
	return cerr
}

func sockaddr(ap netip.AddrPort, family int) unix.Sockaddr {
	if family == unix.AF_INET6 {
		return &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
	}
	return &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
}
