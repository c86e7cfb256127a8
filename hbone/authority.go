package hbone

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"github.com/ambit-mesh/ambit/internal/dnsname"
)

// Port is the HBONE port.
const Port = 15008

// Authority is the target of a CONNECT: an IP and port, or (for
// service-addressed traffic across networks) a hostname and port.
type Authority struct {
	Addr netip.AddrPort // valid when the target is an IP
	Host string         // set when the target is a hostname
	Port uint16
}

// IsIP reports whether the target is an address rather than a hostname.
func (a Authority) IsIP() bool { return a.Addr.IsValid() }

func (a Authority) String() string {
	if a.IsIP() {
		return a.Addr.String()
	}
	return net.JoinHostPort(a.Host, strconv.Itoa(int(a.Port)))
}

// maxAuthority bounds the length of an authority we parse.
const maxAuthority = 300

// ParseAuthority parses a CONNECT :authority strictly: "ip:port",
// "[ipv6]:port" or "hostname:port", with a decimal port 1-65535 without
// leading zeros, no IPv6 zone and no userinfo.
func ParseAuthority(s string) (Authority, error) {
	if len(s) == 0 {
		return Authority{}, errors.New("empty authority")
	}
	if len(s) > maxAuthority {
		return Authority{}, fmt.Errorf("authority longer than %d bytes", maxAuthority)
	}
	i := strings.LastIndexByte(s, ':')
	if i < 0 {
		return Authority{}, fmt.Errorf("authority %q has no port", s)
	}
	host, portStr := s[:i], s[i+1:]
	port, err := parsePort(portStr)
	if err != nil {
		return Authority{}, fmt.Errorf("authority %q: %w", s, err)
	}
	if strings.HasPrefix(host, "[") {
		if !strings.HasSuffix(host, "]") {
			return Authority{}, fmt.Errorf("authority %q: unterminated IPv6 literal", s)
		}
		ip, err := netip.ParseAddr(host[1 : len(host)-1])
		if err != nil || !ip.Is6() || ip.Zone() != "" || ip.Is4In6() {
			return Authority{}, fmt.Errorf("authority %q: invalid IPv6 address", s)
		}
		return Authority{Addr: netip.AddrPortFrom(ip, port), Port: port}, nil
	}
	if strings.ContainsAny(host, ":[]") {
		return Authority{}, fmt.Errorf("authority %q: IPv6 addresses must be in brackets", s)
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		if !ip.Is4() {
			return Authority{}, fmt.Errorf("authority %q: invalid address", s)
		}
		return Authority{Addr: netip.AddrPortFrom(ip, port), Port: port}, nil
	}
	if dnsname.Subdomain(host) != nil {
		return Authority{}, fmt.Errorf("authority %q: host is neither an IP address nor a valid hostname", s)
	}
	if looksNumeric(host) {
		return Authority{}, fmt.Errorf("authority %q: invalid IPv4 address", s)
	}
	return Authority{Host: host, Port: port}, nil
}

// looksNumeric catches malformed IPv4 literals (such as 010.1.1.1 or
// 1.2.3) that would otherwise pass as hostnames.
func looksNumeric(h string) bool {
	for _, c := range h {
		if (c < '0' || c > '9') && c != '.' {
			return false
		}
	}
	return true
}

func parsePort(s string) (uint16, error) {
	if len(s) == 0 || len(s) > 5 || (len(s) > 1 && s[0] == '0') {
		return 0, fmt.Errorf("invalid port %q", s)
	}
	n := 0
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("invalid port %q", s)
		}
		n = n*10 + int(c-'0')
	}
	if n < 1 || n > 65535 {
		return 0, fmt.Errorf("port %d out of range", n)
	}
	return uint16(n), nil
}
