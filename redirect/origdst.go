package redirect

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ip6tSoOriginalDst is IP6T_SO_ORIGINAL_DST (level SOL_IPV6); x/sys/unix
// only has the IPv4 SO_ORIGINAL_DST (level SOL_IP). Both are 80.
const ip6tSoOriginalDst = 80

// OriginalDst returns the destination a redirected connection had before
// REDIRECT rewrote it: SO_ORIGINAL_DST for IPv4 (also on IPv4 connections
// accepted by a dual-stack listener), IP6T_SO_ORIGINAL_DST for IPv6. For a
// connection conntrack tracks but did not NAT it is the connection's own
// local address; one conntrack does not know gives an error wrapping ENOENT.
func OriginalDst(conn *net.TCPConn) (netip.AddrPort, error) {
	if conn == nil {
		return netip.AddrPort{}, errors.New("original destination of a nil connection")
	}
	local, ok := conn.LocalAddr().(*net.TCPAddr)
	if !ok || local == nil {
		return netip.AddrPort{}, errors.New("original destination: connection has no local TCP address")
	}
	v4 := local.IP.To4() != nil
	raw, err := conn.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination of %s: %w", local, err)
	}
	var (
		orig netip.AddrPort
		serr error
	)
	cerr := raw.Control(func(fd uintptr) {
		if v4 {
			orig, serr = originalDst4(fd)
		} else {
			orig, serr = originalDst6(fd)
		}
	})
	if cerr != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination of %s: %w", local, cerr)
	}
	if serr != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination of %s: %w", local, serr)
	}
	return orig, nil
}

func originalDst4(fd uintptr) (netip.AddrPort, error) {
	var sa unix.RawSockaddrInet4
	size := uint32(unsafe.Sizeof(sa))
	if err := getsockopt(fd, unix.SOL_IP, unix.SO_ORIGINAL_DST, unsafe.Pointer(&sa), &size); err != nil {
		return netip.AddrPort{}, fmt.Errorf("getsockopt SO_ORIGINAL_DST: %w", err)
	}
	if sa.Family != unix.AF_INET {
		return netip.AddrPort{}, fmt.Errorf("getsockopt SO_ORIGINAL_DST: address family %d, want AF_INET", sa.Family)
	}
	return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), netPort(sa.Port)), nil
}

func originalDst6(fd uintptr) (netip.AddrPort, error) {
	var sa unix.RawSockaddrInet6
	size := uint32(unsafe.Sizeof(sa))
	if err := getsockopt(fd, unix.SOL_IPV6, ip6tSoOriginalDst, unsafe.Pointer(&sa), &size); err != nil {
		return netip.AddrPort{}, fmt.Errorf("getsockopt IP6T_SO_ORIGINAL_DST: %w", err)
	}
	if sa.Family != unix.AF_INET6 {
		return netip.AddrPort{}, fmt.Errorf("getsockopt IP6T_SO_ORIGINAL_DST: address family %d, want AF_INET6", sa.Family)
	}
	return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), netPort(sa.Port)), nil
}

func getsockopt(fd uintptr, level, name int, val unsafe.Pointer, size *uint32) error {
	_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, fd, uintptr(level), uintptr(name), uintptr(val), uintptr(unsafe.Pointer(size)), 0)
	if errno != 0 {
		return errno
	}
	return nil
}

// netPort converts a port stored in network byte order.
func netPort(p uint16) uint16 {
	return binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&p))[:])
}

// MarkControl returns a net.Dialer / net.ListenConfig Control function that
// sets SO_MARK to mark on the socket before it connects or binds. ztunnel
// uses it with ZtunnelMark so that its own traffic is never redirected.
func MarkControl(mark uint32) func(network, address string, c syscall.RawConn) error {
	return func(network, address string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(int32(mark)))
		}); err != nil {
			return fmt.Errorf("setting SO_MARK %#x on %s socket for %s: %w", mark, network, address, err)
		}
		if serr != nil {
			return fmt.Errorf("setting SO_MARK %#x on %s socket for %s: %w", mark, network, address, serr)
		}
		return nil
	}
}
