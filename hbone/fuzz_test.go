package hbone

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"testing"
	"time"

	"golang.org/x/net/http2/hpack"

	"github.com/ambit-mesh/ambit/identity"
)

// pipeServer runs the server side of one HTTP/2 connection over an
// in-memory pipe (no TLS: the peer identity is given), for tests that
// speak raw frames. It returns the client end.
func pipeServer(tb testing.TB, s *Server, peer identity.SPIFFE) net.Conn {
	tb.Helper()
	s.init()
	cli, srv := net.Pipe()
	var c *conn
	c = newConn(srv, srv, connConfig{
		server: true, maxStreams: uint32(s.MaxStreams), maxHeaderList: ServerMaxHeaderBytes,
		streamWindow: StreamWindow, connWindow: ConnWindow, maxFrame: MaxFrameSize,
		keepalive: time.Hour, keepaliveTimeout: time.Hour, logger: s.Logger, buffers: s.bufs,
		onStream: func(st *stream, fields []hpack.HeaderField, tooBig bool) {
			go s.serveStream(c, st, fields, tooBig, peer, nil)
		},
	})
	go func() {
		var preface [len(clientPreface)]byte
		if _, err := io.ReadFull(srv, preface[:]); err != nil || string(preface[:]) != clientPreface {
			srv.Close()
			return
		}
		if c.startConn() == nil {
			c.readLoop()
		}
	}()
	return cli
}

// fuzzServer is a server whose handler refuses by target port and
// otherwise tunnels to an in-memory upstream that greets and echoes.
func fuzzServer() *Server {
	return &Server{TLSConfig: nil, Handler: HandlerFunc(func(ctx context.Context, r *Request) {
		switch r.Target.Port {
		case 401:
			r.Refuse(http.StatusUnauthorized, "denied")
			return
		case 503:
			r.Refuse(http.StatusServiceUnavailable, "unknown")
			return
		case 418:
			r.Refuse(http.StatusTeapot, "not an HBONE status")
			return
		case 1:
			r.Refuse(http.StatusServiceUnavailable, "connection refused")
			return
		case 2:
			return // no answer: 503
		}
		a, b := net.Pipe()
		go func() {
			defer b.Close()
			b.SetDeadline(time.Now().Add(2 * time.Second))
			b.Write([]byte("upstream"))
			io.Copy(b, b)
		}()
		defer a.Close()
		c, err := r.Accept(nil)
		if err != nil {
			return
		}
		relay(c, a)
	})}
}

func frameBytes(typ frameType, flags uint8, stream uint32, payload []byte) []byte {
	b := appendFrameHeader(nil, frameHeader{length: uint32(len(payload)), typ: typ, flags: flags, stream: stream})
	return append(b, payload...)
}

// clientStart is the client preface and an empty SETTINGS frame.
func clientStart() []byte {
	return append([]byte(clientPreface), frameBytes(frameSettings, 0, 0, nil)...)
}

// frameReader collects the frames a pipe's peer sends.
type rawFrame struct {
	h       frameHeader
	payload []byte
}

func readFrames(c net.Conn) <-chan rawFrame {
	ch := make(chan rawFrame, 64)
	go func() {
		defer close(ch)
		var hb [frameHeaderLen]byte
		for {
			if _, err := io.ReadFull(c, hb[:]); err != nil {
				return
			}
			h := parseFrameHeader(hb[:])
			p := make([]byte, h.length)
			if _, err := io.ReadFull(c, p); err != nil {
				return
			}
			ch <- rawFrame{h, p}
		}
	}()
	return ch
}

// FuzzServerRequest drives the server's request handling with arbitrary
// methods, authorities, an extra header field (any name, including
// pseudo-headers and forbidden ones) and a body, over real HTTP/2 frames.
// The server must never panic and must answer stream 1 with upstream's
// status codes (200, 400, 401, 503) or reset it; only CONNECT may get 200.
func FuzzServerRequest(f *testing.F) {
	f.Add("CONNECT", "10.244.1.5:8080", "forwarded", `for="1.2.3.4:5"`, []byte("hello"))
	f.Add("GET", "10.244.1.5:8080", "baggage", "k8s.namespace.name=demo", []byte{})
	f.Add("CONNECT", "[fd00::1]:443", "traceparent", "00-00000000000000000000000000000000-0000000000000000-00", []byte{0})
	f.Add("CONNECT", "10.244.1.5:401", "x", "y", []byte("z"))
	f.Add("CONNECT", "10.244.1.5:503", "", "", []byte(nil))
	f.Add("CONNECT", "10.244.1.5:418", "", "", []byte(nil))
	f.Add("CONNECT", "10.244.1.5:1", "", "", []byte(nil))
	f.Add("CONNECT", "10.244.1.5:2", "", "", []byte(nil))
	f.Add("CONNECT", "a.b:65535", ":path", "/", []byte(nil))
	f.Add("CONNECT", "::1:80", "Upper", "v", []byte(nil))
	f.Add("CONNECT", "", "connection", "close", []byte(nil))
	f.Add("", "10.0.0.1:80", ":protocol", "websocket", []byte(nil))
	s := fuzzServer()
	peer := identity.SPIFFE{TrustDomain: "cluster.local", Namespace: "demo", ServiceAccount: "client"}
	f.Fuzz(func(t *testing.T, method, authority, hk, hv string, body []byte) {
		c := pipeServer(t, s, peer)
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		frames := readFrames(c)

		var block bytes.Buffer
		enc := hpack.NewEncoder(&block)
		if method != "" {
			enc.WriteField(hpack.HeaderField{Name: ":method", Value: method})
		}
		if authority != "" {
			enc.WriteField(hpack.HeaderField{Name: ":authority", Value: authority})
		}
		if hk != "" {
			enc.WriteField(hpack.HeaderField{Name: hk, Value: hv})
		}
		msg := clientStart()
		msg = append(msg, frameBytes(frameHeaders, flagEndHeaders, 1, block.Bytes())...)
		if len(body) > 0 {
			msg = append(msg, frameBytes(frameData, 0, 1, body)...)
		}
		if _, err := c.Write(msg); err != nil {
			t.Fatalf("writing the request: %v", err)
		}
		dec := hpack.NewDecoder(defaultHPACK, nil)
		for fr := range frames {
			switch {
			case fr.h.typ == frameGoAway:
				t.Fatalf("connection error for a request-level problem: %x", fr.payload)
			case fr.h.stream != 1:
				continue
			case fr.h.typ == frameRSTStream:
				return
			case fr.h.typ == frameHeaders:
				fields, err := dec.DecodeFull(fr.payload)
				if err != nil || len(fields) == 0 || fields[0].Name != ":status" {
					t.Fatalf("bad response headers %v %v", fields, err)
				}
				code, _ := strconv.Atoi(fields[0].Value)
				switch code {
				case http.StatusOK, http.StatusBadRequest, http.StatusUnauthorized, http.StatusServiceUnavailable:
				default:
					t.Fatalf("%q %q: status %d", method, authority, code)
				}
				if code == http.StatusOK && method != http.MethodConnect {
					t.Fatalf("%q answered 200", method)
				}
				return
			}
		}
		t.Fatalf("%q %q %q: no answer on stream 1", method, authority, hk)
	})
}

// FuzzServerFrames feeds arbitrary bytes after a valid preface and
// SETTINGS: the server must not panic, and must either keep serving or end
// the connection.
func FuzzServerFrames(f *testing.F) {
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	enc.WriteField(hpack.HeaderField{Name: ":method", Value: "CONNECT"})
	enc.WriteField(hpack.HeaderField{Name: ":authority", Value: "10.0.0.1:80"})
	req := frameBytes(frameHeaders, flagEndHeaders, 1, block.Bytes())
	wu := make([]byte, 4)
	binary.BigEndian.PutUint32(wu, 1000)
	f.Add(req)
	f.Add(append(append([]byte{}, req...), frameBytes(frameData, flagEndStream, 1, []byte("hi"))...))
	f.Add(append(frameBytes(frameHeaders, 0, 1, block.Bytes()[:3]), frameBytes(frameContinuation, flagEndHeaders, 1, block.Bytes()[3:])...))
	f.Add(frameBytes(frameData, flagPadded, 1, []byte{200, 1, 2}))
	f.Add(frameBytes(frameWindowUpdate, 0, 0, wu))
	f.Add(frameBytes(framePing, 0, 0, make([]byte, 8)))
	f.Add(frameBytes(frameRSTStream, 0, 3, make([]byte, 4)))
	f.Add(frameBytes(frameSettings, 0, 0, []byte{0, 4, 0x7f, 0xff, 0xff, 0xff}))
	f.Add(frameBytes(frameGoAway, 0, 0, make([]byte, 8)))
	f.Add(frameBytes(framePriority, 0, 1, make([]byte, 5)))
	f.Add(append(append([]byte{}, req...), frameBytes(frameRSTStream, 0, 1, []byte{0, 0, 0, 8})...))
	s := fuzzServer()
	peer := identity.SPIFFE{TrustDomain: "cluster.local", Namespace: "demo", ServiceAccount: "client"}
	f.Fuzz(func(t *testing.T, data []byte) {
		c := pipeServer(t, s, peer)
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		frames := readFrames(c)
		go func() {
			for range frames {
			}
		}()
		c.Write(append(clientStart(), data...))
	})
}

// pipeClient runs the client side of one HTTP/2 connection over an
// in-memory pipe; the test plays the server on the returned end, after
// the client preface (already consumed).
func pipeClient(tb testing.TB) (*conn, net.Conn) {
	tb.Helper()
	cli, srv := net.Pipe()
	c := newConn(cli, cli, connConfig{
		maxHeaderList: ClientMaxHeaderBytes, streamWindow: StreamWindow, connWindow: ConnWindow, maxFrame: MaxFrameSize,
		keepalive: time.Hour, keepaliveTimeout: time.Hour, logger: slog.New(slog.DiscardHandler), buffers: newBuffers(),
	})
	srv.SetDeadline(time.Now().Add(5 * time.Second))
	started := make(chan error, 1)
	go func() { started <- c.startConn() }()
	var preface [len(clientPreface)]byte
	if _, err := io.ReadFull(srv, preface[:]); err != nil || string(preface[:]) != clientPreface {
		tb.Fatalf("client preface: %q %v", preface, err)
	}
	go func() {
		if <-started == nil {
			c.readLoop()
		}
	}()
	tb.Cleanup(func() { c.close(nil); srv.Close() })
	return c, srv
}

// FuzzClientFrames: whatever a server sends after its SETTINGS, the
// client's connection and an open CONNECT must not panic, and a Dial-like
// open must end (with a stream or an error).
func FuzzClientFrames(f *testing.F) {
	ok := headerBlock(":status", "200")
	f.Add(frameBytes(frameHeaders, flagEndHeaders, 1, ok))
	f.Add(cat(frameBytes(frameHeaders, flagEndHeaders, 1, headerBlock(":status", "100")), frameBytes(frameHeaders, flagEndHeaders, 1, ok)))
	f.Add(cat(frameBytes(frameHeaders, flagEndHeaders, 1, ok), frameBytes(frameData, flagEndStream, 1, []byte("bye"))))
	f.Add(frameBytes(frameHeaders, flagEndHeaders|flagEndStream, 1, headerBlock(":status", "401")))
	f.Add(frameBytes(frameGoAway, 0, 0, make([]byte, 8)))
	f.Add(frameBytes(frameRSTStream, 0, 1, u32(7)))
	f.Add(frameBytes(framePushPromise, flagEndHeaders, 1, cat(u32(2), ok)))
	f.Add(frameBytes(frameHeaders, flagEndHeaders, 1, headerBlock("x", "y")))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, srv := pipeClient(t)
		go serveRawFrames(srv, data)
		if !c.reserve() {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		defer cancel()
		if s, _, err := c.openStream(ctx, []hpack.HeaderField{{Name: ":method", Value: "CONNECT"}, {Name: ":authority", Value: "10.0.0.1:80"}}, nil); err == nil {
			s.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
			s.Read(make([]byte, 16))
			s.Close()
		}
	})
}

// serveRawFrames plays a server on a pipe: it sends SETTINGS, then reply
// once the client's first HEADERS has arrived, and drains the rest.
func serveRawFrames(srv net.Conn, reply []byte) {
	go srv.Write(frameBytes(frameSettings, 0, 0, nil))
	sent := false
	for f := range readFrames(srv) {
		if f.h.typ == frameHeaders && !sent {
			sent = true
			go srv.Write(reply)
		}
	}
}
