package waypoint

import (
	"regexp"
	"strconv"
	"strings"
	"testing"
)

func TestNormalizePath(t *testing.T) {
	for in, want := range map[string]string{
		"":                   "/",
		"/":                  "/",
		"/public":            "/public",
		"/public/":           "/public/",
		"//public//a":        "/public/a",
		"/public/../admin":   "/admin",
		"/../../admin":       "/admin",
		"/a/./b":             "/a/b",
		"/a/b/..":            "/a/",
		"/a/b/.":             "/a/b/",
		"/a%2F..":            "/a%2F..", // encoded slashes are not separators here (the decoded path is what the caller passes)
		"/public/..%2Fadmin": "/public/..%2Fadmin",
	} {
		if got := normalizePath(in); got != want {
			t.Errorf("normalizePath(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestLooksHTTP(t *testing.T) {
	for in, want := range map[string]bool{
		"GET / HTTP/1.1\r\n":               true,
		"POST /x HTTP/1.1":                 true,
		"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n": true,
		"PRI * HT":                         true,
		"":                                 false, // silence: a server-first protocol
		"\x16\x03\x01\x02":                 false, // TLS
		"*3\r\n$3\r\nSET":                  false, // redis
		"get / HTTP/1.1":                   false, // methods are upper case tokens
		" GET":                             false,
		"GE":                               true, // too short to tell: HTTP decides
	} {
		if got := looksHTTP([]byte(in)); got != want {
			t.Errorf("looksHTTP(%q) = %v, want %v", in, got, want)
		}
	}
}

func TestForwardedFor(t *testing.T) {
	for in, want := range map[string]string{
		`for="10.244.1.2:5555"`:                    "10.244.1.2",
		`for="10.244.1.2:5555";host=echo.demo.svc`: "10.244.1.2",
		`host=x;for=10.0.0.1`:                      "10.0.0.1",
		`for="[fd00::1]:80"`:                       "fd00::1",
		`for=unknown`:                              "invalid IP",
		``:                                         "invalid IP",
	} {
		if got := forwardedFor(in).String(); got != want {
			t.Errorf("forwardedFor(%q) = %s, want %s", in, got, want)
		}
	}
}

func TestChildTraceparent(t *testing.T) {
	in := "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	got := childTraceparent(in)
	p := strings.Split(got, "-")
	if len(p) != 4 || p[1] != "4bf92f3577b34da6a3ce929d0e0e4736" || p[2] == "00f067aa0ba902b7" || len(p[2]) != 16 || p[3] != "01" {
		t.Errorf("child of %s = %s: want the same trace and flags, a new span", in, got)
	}
	for _, bad := range []string{"", "garbage", "00-00000000000000000000000000000000-00f067aa0ba902b7-01", "00-xyz-00f067aa0ba902b7-01",
		"0X-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-zz"} {
		got := childTraceparent(bad)
		p := strings.Split(got, "-")
		if len(p) != 4 || len(p[1]) != 32 || len(p[2]) != 16 || p[1] == strings.Repeat("0", 32) || p[0] != "00" || (len(bad) >= 35 && strings.Contains(got, bad[3:35])) {
			t.Errorf("childTraceparent(%q) = %s: want a fresh valid traceparent", bad, got)
		}
	}
}

func TestParseClusterName(t *testing.T) {
	for in, want := range map[string]string{
		"outbound|8080||echo.demo.svc.cluster.local": "echo.demo.svc.cluster.local:8080",
		"outbound|0||echo":                           "",
		"outbound|8080||":                            "",
		"inbound|8080||echo":                         "",
		"invalid-backend|demo/x:80":                  "",
		"outbound|99999||echo":                       "",
	} {
		h, p, ok := parseClusterName(in)
		got := ""
		if ok {
			got = h + ":" + strconv.Itoa(int(p))
		}
		if got != want {
			t.Errorf("parseClusterName(%q) = %q, want %q", in, got, want)
		}
	}
}

// FuzzRequestHeaders: what a waypoint reads from peers and clients
// (forwarded, traceparent, the path, the first bytes of a stream) never
// panics, and what it writes is well formed.
func FuzzRequestHeaders(f *testing.F) {
	for _, s := range []string{`for="10.0.0.1:5"`, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "/a/../b//c/", "GET / HTTP/1.1", ""} {
		f.Add(s)
	}
	tp := regexp.MustCompile(`^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$`)
	f.Fuzz(func(t *testing.T, s string) {
		_ = forwardedFor(s)
		_ = looksHTTP([]byte(s))
		_, _, _ = parseClusterName(s)
		if got := childTraceparent(s); !tp.MatchString(got) {
			t.Fatalf("childTraceparent(%q) = %q: not a traceparent", s, got)
		}
		p := normalizePath(s)
		if !strings.HasPrefix(p, "/") || strings.Contains(p, "//") || normalizePath(p) != p {
			t.Fatalf("normalizePath(%q) = %q: not a clean absolute path (or not idempotent)", s, p)
		}
		for _, seg := range strings.Split(p, "/") {
			if seg == "." || seg == ".." {
				t.Fatalf("normalizePath(%q) = %q keeps a dot segment", s, p)
			}
		}
	})
}
