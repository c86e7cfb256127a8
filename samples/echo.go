package samples

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// Response headers the echo server sets on every HTTP answer, so that a
// client learns who answered and what source it saw whatever the body is
// (/size, /status, JSON or text).
const (
	HeaderPod    = "X-Ambit-Pod"
	HeaderSource = "X-Ambit-Source"
)

// Limits of the test helpers, so that no request can hold the server long
// or make it allocate much.
const (
	maxDelay     = time.Minute
	maxSize      = 1 << 30 // /size/<bytes>
	maxBodyBytes = 1 << 30 // request bodies are read and counted, up to this
)

// shutdownGrace is how long Serve lets in-flight requests finish once its
// context is done.
const shutdownGrace = 5 * time.Second

// EchoReply is what the echo server reports, over HTTP and gRPC alike.
type EchoReply struct {
	Pod       string              `json:"pod"`       // the server's pod name
	Source    string              `json:"source"`    // the peer address the server saw, ip:port
	Proto     string              `json:"proto"`     // HTTP/1.1, HTTP/2.0 or gRPC
	Method    string              `json:"method"`    // HTTP method (POST for gRPC)
	URL       string              `json:"url"`       // request URI (the full method for gRPC)
	Host      string              `json:"host"`      // Host header or :authority
	BodyBytes int64               `json:"bodyBytes"` // request body size (request message size for gRPC)
	Headers   map[string][]string `json:"headers"`   // request headers (metadata for gRPC)
}

// Text renders the reply as the plain-text body: one "key=value" per line,
// then one "header Name=value" line per header value, names sorted.
func (r *EchoReply) Text() string {
	var b strings.Builder
	fmt.Fprintf(&b, "pod=%s\nsource=%s\nproto=%s\nmethod=%s\nurl=%s\nhost=%s\nbodyBytes=%d\n",
		r.Pod, r.Source, r.Proto, r.Method, r.URL, r.Host, r.BodyBytes)
	keys := make([]string, 0, len(r.Headers))
	for k := range r.Headers {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		for _, v := range r.Headers[k] {
			fmt.Fprintf(&b, "header %s=%s\n", k, v)
		}
	}
	return b.String()
}

// ParseEchoText parses the body Text produces. Unknown keys are ignored so
// that older clients read newer servers.
func ParseEchoText(body string) (*EchoReply, error) {
	r := &EchoReply{Headers: map[string][]string{}}
	for _, line := range strings.Split(strings.TrimSpace(body), "\n") {
		line = strings.TrimRight(line, "\r")
		if h, ok := strings.CutPrefix(line, "header "); ok {
			k, v, _ := strings.Cut(h, "=")
			r.Headers[k] = append(r.Headers[k], v)
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return nil, fmt.Errorf("echo reply: malformed line %q", line)
		}
		switch k {
		case "pod":
			r.Pod = v
		case "source":
			r.Source = v
		case "proto":
			r.Proto = v
		case "method":
			r.Method = v
		case "url":
			r.URL = v
		case "host":
			r.Host = v
		case "bodyBytes":
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return nil, fmt.Errorf("echo reply: bodyBytes %q: %w", v, err)
			}
			r.BodyBytes = n
		}
	}
	if r.Pod == "" {
		return nil, errors.New("echo reply: no pod= line")
	}
	return r, nil
}

// EchoServer serves HTTP/1.1, cleartext HTTP/2 with prior knowledge (h2c)
// and gRPC on one port. (The h2c Upgrade dance is not offered: RFC 9113
// deprecates it and net/http does not implement it.)
//
// HTTP paths: any path echoes; /status/<code> answers with that status
// (200-599); /flaky/<n> answers 503 to every n-th request to a /flaky/
// path (counted per server) and echoes the others; /delay/<duration> waits
// up to 1m first; /size/<bytes> answers
// with that many bytes (up to 1 GiB) instead of the echo. ?format=json or
// "Accept: application/json" selects JSON. Every answer carries the
// X-Ambit-Pod and X-Ambit-Source headers.
//
// gRPC: ambit.samples.Echo/Echo takes and returns a google.protobuf.Struct
// (the reply has the EchoReply fields); grpc.health.v1.Health reports
// SERVING until shutdown.
type EchoServer struct {
	Name   string       // the pod name reported in replies
	Logger *slog.Logger // nil: no logs

	flaky atomic.Uint64 // requests to /flaky/<n> so far
}

func (s *EchoServer) log() *slog.Logger {
	if s.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Logger
}

// wantsJSON reports whether the client asked for a JSON reply.
func wantsJSON(r *http.Request) bool {
	return r.URL.Query().Get("format") == "json" || strings.Contains(r.Header.Get("Accept"), "application/json")
}

// ServeHTTP implements http.Handler for the HTTP side (not gRPC).
func (s *EchoServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	w.Header().Set(HeaderPod, s.Name)
	w.Header().Set(HeaderSource, r.RemoteAddr)
	code, sent := s.serveHTTP(w, r)
	s.log().Info("request", "proto", r.Proto, "method", r.Method, "url", r.URL.String(), "host", r.Host,
		"source", r.RemoteAddr, "code", code, "bytes", sent, "duration", time.Since(start).Round(time.Microsecond))
}

// serveHTTP answers r and returns the status and the body bytes written.
func (s *EchoServer) serveHTTP(w http.ResponseWriter, r *http.Request) (int, int64) {
	// Read the body first: its size is part of the report, and a drained
	// HTTP/1.1 request leaves its connection reusable.
	n, err := io.Copy(io.Discard, io.LimitReader(r.Body, maxBodyBytes))
	if err != nil {
		return httpError(w, http.StatusBadRequest, fmt.Sprintf("reading request body: %v", err))
	}
	code := http.StatusOK
	path := r.URL.Path
	switch {
	case strings.HasPrefix(path, "/status/"):
		c, err := strconv.Atoi(strings.TrimPrefix(path, "/status/"))
		if err != nil || c < 200 || c > 599 {
			return httpError(w, http.StatusBadRequest, "bad status code (want /status/200 to /status/599)")
		}
		code = c
	case strings.HasPrefix(path, "/flaky/"):
		every, err := strconv.ParseUint(strings.TrimPrefix(path, "/flaky/"), 10, 32)
		if err != nil || every == 0 {
			return httpError(w, http.StatusBadRequest, "bad period (want /flaky/<n>, n >= 1: every n-th request fails)")
		}
		if s.flaky.Add(1)%every == 0 {
			code = http.StatusServiceUnavailable
		}
	case strings.HasPrefix(path, "/delay/"):
		d, err := time.ParseDuration(strings.TrimPrefix(path, "/delay/"))
		if err != nil || d < 0 || d > maxDelay {
			return httpError(w, http.StatusBadRequest, "bad delay (want a duration from 0 to 1m, like /delay/250ms)")
		}
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
		case <-r.Context().Done():
			return 499, 0 // the client went away (nginx's code, for the log only)
		}
	case strings.HasPrefix(path, "/size/"):
		size, err := strconv.Atoi(strings.TrimPrefix(path, "/size/"))
		if err != nil || size < 0 || size > maxSize {
			return httpError(w, http.StatusBadRequest, "bad size (want 0 to 1073741824 bytes, like /size/1024)")
		}
		return http.StatusOK, writeSize(w, size)
	}
	rep := &EchoReply{Pod: s.Name, Source: r.RemoteAddr, Proto: r.Proto, Method: r.Method, URL: r.URL.String(),
		Host: r.Host, BodyBytes: n, Headers: r.Header}
	var body []byte
	if wantsJSON(r) {
		w.Header().Set("Content-Type", "application/json")
		body, err = json.Marshal(rep)
		if err != nil {
			return httpError(w, http.StatusInternalServerError, fmt.Sprintf("encoding reply: %v", err))
		}
		body = append(body, '\n')
	} else {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		body = []byte(rep.Text())
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(code)
	k, _ := w.Write(body)
	return code, int64(k)
}

func httpError(w http.ResponseWriter, code int, msg string) (int, int64) {
	http.Error(w, msg, code)
	return code, int64(len(msg) + 1)
}

// writeSize writes size bytes of 'a' and returns how many went out.
func writeSize(w http.ResponseWriter, size int) int64 {
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.Itoa(size))
	w.WriteHeader(http.StatusOK)
	buf := []byte(strings.Repeat("a", min(size, 32<<10)))
	var sent int64
	for left := size; left > 0; {
		k, err := w.Write(buf[:min(left, len(buf))])
		sent += int64(k)
		if err != nil {
			break
		}
		left -= k
	}
	return sent
}

// isGRPC reports whether r is a gRPC call rather than plain HTTP.
func isGRPC(r *http.Request) bool {
	return r.ProtoMajor == 2 && strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc")
}

// Serve serves on l until ctx is done, then shuts down gracefully: it stops
// accepting, lets in-flight requests finish for up to 5s, then closes what
// is left. It returns nil after a shutdown caused by ctx.
func (s *EchoServer) Serve(ctx context.Context, l net.Listener) error {
	log := s.log()
	gs := grpc.NewServer()
	gs.RegisterService(&echoServiceDesc, s)
	hs := health.NewServer()
	hs.SetServingStatus(echoServiceName, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(gs, hs)

	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	srv := &http.Server{
		Protocols:         &protocols,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if isGRPC(r) {
				gs.ServeHTTP(w, r)
				return
			}
			s.ServeHTTP(w, r)
		}),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	select {
	case err := <-errc:
		gs.Stop()
		return fmt.Errorf("echo server on %s: %w", l.Addr(), err)
	case <-ctx.Done():
	}
	log.Info("shutting down", "grace", shutdownGrace)
	hs.Shutdown() // health checks now answer NOT_SERVING
	grace, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownGrace)
	defer cancel()
	if err := srv.Shutdown(grace); err != nil {
		log.Warn("requests still running after the grace period; closing their connections", "err", err)
		_ = srv.Close()
	}
	gs.Stop()
	<-errc // http.ErrServerClosed
	return nil
}
