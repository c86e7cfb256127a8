// Package nsnet runs work and opens sockets inside network namespaces. A
// network namespace is a property of an OS thread, so each operation locks
// a thread, enters the namespace, does its work and returns; a socket keeps
// the namespace it was created in, so one process can serve many pods.
//
// A thread that cannot return to its original namespace is never unlocked:
// the Go runtime then retires it rather than reuse it elsewhere.
package nsnet

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"
)

// Do runs fn on a thread inside the network namespace at path.
func Do(path string, fn func() error) error {
	target, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("opening netns %s: %w", path, err)
	}
	defer unix.Close(target)
	return DoFd(target, fn)
}

// DoFd is Do for a namespace given as an open file descriptor.
func DoFd(fd int, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("opening current netns: %w", err)
			return
		}
		defer unix.Close(orig)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("entering netns: %w", err)
			return
		}
		ferr := fn()
		if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("leaving netns: %w", err)) // thread stays locked and dies
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
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
		err := c.Control(func(fd uintptr) {
			if o.Mark != 0 {
				if err := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(o.Mark)); err != nil {
					serr = fmt.Errorf("SO_MARK: %w", err)
					return
				}
			}
			if o.ReusePort {
				if err := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
					serr = fmt.Errorf("SO_REUSEPORT: %w", err)
					return
				}
			}
			if o.Transparent {
				if err := unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT, 1); err != nil {
					serr = fmt.Errorf("IP_TRANSPARENT: %w", err)
					return
				}
			}
		})
		if err != nil {
			return err
		}
		return serr
	}
}

// Listen opens a TCP listener inside the namespace at path ("" for the
// current one).
func Listen(ctx context.Context, path, addr string, o SocketOptions) (net.Listener, error) {
	var l net.Listener
	listen := func() error {
		var err error
		l, err = (&net.ListenConfig{Control: o.Control()}).Listen(ctx, "tcp", addr)
		return err
	}
	var err error
	if path == "" {
		err = listen()
	} else {
		err = Do(path, listen)
	}
	if err != nil {
		return nil, fmt.Errorf("listening on %s in %s: %w", addr, orSelf(path), err)
	}
	return l, nil
}

// DialFunc returns a dial function that creates its sockets inside the
// namespace at path. The connect itself happens in the namespace the socket
// was created in, whatever thread completes it.
func DialFunc(path string, o SocketOptions, local net.Addr) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := Do(path, func() error {
			var err error
			c, err = (&net.Dialer{Control: o.Control(), LocalAddr: local}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}

func orSelf(path string) string {
	if path == "" {
		return "the current netns"
	}
	return path
}
