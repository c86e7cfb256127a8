package samples

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/protobuf/types/known/structpb"
)

// EchoReply is what the echo server answers, over HTTP and gRPC alike.
type EchoReply struct {
	Pod     string              `json:"pod"`
	Source  string              `json:"source"`
	Proto   string              `json:"proto"`
	Method  string              `json:"method"`
	URL     string              `json:"url"`
	Host    string              `json:"host"`
	Headers map[string][]string `json:"headers"`
}

// Text renders the reply as the plain-text body: one "key=value" per line.
func (r *EchoReply) Text() string {
	var b strings.Builder
	fmt.Fprintf(&b, "pod=%s\nsource=%s\nproto=%s\nmethod=%s\nurl=%s\nhost=%s\n", r.Pod, r.Source, r.Proto, r.Method, r.URL, r.Host)
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

// ParseEchoText parses the body Text produces.
func ParseEchoText(body string) (*EchoReply, error) {
	r := &EchoReply{Headers: map[string][]string{}}
	for _, line := range strings.Split(strings.TrimSpace(body), "\n") {
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
		}
	}
	if r.Pod == "" {
		return nil, errors.New("echo reply: no pod= line")
	}
	return r, nil
}

// EchoServer serves HTTP/1.1, cleartext HTTP/2 (h2c) and gRPC on one port.
//
// Paths: / echoes; /status/<code> answers that status; /delay/<duration>
// waits first; /size/<bytes> answers that many bytes. ?format=json or
// "Accept: application/json" selects JSON.
type EchoServer struct {
	Name   string // the pod name reported in replies
	Logger *slog.Logger
}

// echoServiceName is the gRPC service the echo server registers.
const echoServiceName = "ambit.samples.Echo"

// echoMethod is the full gRPC method name of Echo.
const echoMethod = "/" + echoServiceName + "/Echo"

func (s *EchoServer) reply(r *http.Request) *EchoReply {
	return &EchoReply{Pod: s.Name, Source: r.RemoteAddr, Proto: r.Proto, Method: r.Method, URL: r.URL.String(), Host: r.Host, Headers: r.Header}
}

// ServeHTTP implements http.Handler for the HTTP side.
func (s *EchoServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	code := http.StatusOK
	path := r.URL.Path
	switch {
	case strings.HasPrefix(path, "/status/"):
		c, err := strconv.Atoi(strings.TrimPrefix(path, "/status/"))
		if err != nil || c < 200 || c > 599 {
			http.Error(w, "bad status code", http.StatusBadRequest)
			return
		}
		code = c
	case strings.HasPrefix(path, "/delay/"):
		d, err := time.ParseDuration(strings.TrimPrefix(path, "/delay/"))
		if err != nil || d < 0 || d > time.Minute {
			http.Error(w, "bad delay (want a duration up to 1m)", http.StatusBadRequest)
			return
		}
		select {
		case <-time.After(d):
		case <-r.Context().Done():
			return
		}
	case strings.HasPrefix(path, "/size/"):
		n, err := strconv.Atoi(strings.TrimPrefix(path, "/size/"))
		if err != nil || n < 0 || n > 1<<30 {
			http.Error(w, "bad size (want 0 to 1 GiB)", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.Itoa(n))
		buf := make([]byte, min(n, 64<<10))
		for i := range buf {
			buf[i] = 'a'
		}
		for n > 0 {
			k, err := w.Write(buf[:min(n, len(buf))])
			if err != nil {
				return
			}
			n -= k
		}
		return
	}
	rep := s.reply(r)
	w.Header().Set("X-Ambit-Pod", s.Name)
	if r.URL.Query().Get("format") == "json" || strings.Contains(r.Header.Get("Accept"), "application/json") {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		_ = json.NewEncoder(w).Encode(rep)
	} else {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(code)
		_, _ = w.Write([]byte(rep.Text()))
	}
	s.Logger.Info("request", "proto", r.Proto, "method", r.Method, "url", r.URL.String(), "source", r.RemoteAddr, "code", code)
}

// grpcEcho answers the Echo RPC: the request is a google.protobuf.Struct
// (ignored but logged), the reply a Struct with the EchoReply fields.
func (s *EchoServer) grpcEcho(_ any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
	in := &structpb.Struct{}
	if err := dec(in); err != nil {
		return nil, err
	}
	rep := &EchoReply{Pod: s.Name, Proto: "gRPC", Method: echoMethod, URL: echoMethod, Headers: map[string][]string{}}
	if p, ok := peer.FromContext(ctx); ok {
		rep.Source = p.Addr.String()
	}
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		for k, v := range md {
			rep.Headers[k] = v
		}
		if a := md.Get(":authority"); len(a) > 0 {
			rep.Host = a[0]
		}
	}
	s.Logger.Info("request", "proto", "gRPC", "method", echoMethod, "source", rep.Source)
	return structpb.NewStruct(rep.asMap())
}

func (r *EchoReply) asMap() map[string]any {
	h := map[string]any{}
	for k, v := range r.Headers {
		vs := make([]any, len(v))
		for i := range v {
			vs[i] = v[i]
		}
		h[k] = vs
	}
	return map[string]any{"pod": r.Pod, "source": r.Source, "proto": r.Proto, "method": r.Method, "url": r.URL, "host": r.Host, "headers": h}
}

func echoReplyFromStruct(st *structpb.Struct) *EchoReply {
	m := st.AsMap()
	str := func(k string) string { s, _ := m[k].(string); return s }
	return &EchoReply{Pod: str("pod"), Source: str("source"), Proto: str("proto"), Method: str("method"), URL: str("url"), Host: str("host")}
}

// Serve serves on l until ctx is done, then shuts down gracefully.
func (s *EchoServer) Serve(ctx context.Context, l net.Listener) error {
	if s.Logger == nil {
		s.Logger = slog.New(slog.DiscardHandler)
	}
	gs := grpc.NewServer()
	gs.RegisterService(&grpc.ServiceDesc{
		ServiceName: echoServiceName,
		HandlerType: (*any)(nil),
		Methods:     []grpc.MethodDesc{{MethodName: "Echo", Handler: s.grpcEcho}},
	}, struct{}{})
	healthpb.RegisterHealthServer(gs, health.NewServer())

	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	srv := &http.Server{
		Protocols:         &protocols,
		ReadHeaderTimeout: 10 * time.Second,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.ProtoMajor == 2 && strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
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
		return fmt.Errorf("echo server: %w", err)
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	gs.Stop()
	if err := srv.Shutdown(shutdown); err != nil {
		return fmt.Errorf("echo server shutdown: %w", err)
	}
	return nil
}
