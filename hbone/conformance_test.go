package hbone

import (
	"bytes"
	"context"
	"encoding/binary"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2/hpack"

	"github.com/ambit-mesh/ambit/identity"
)

func headerBlock(fields ...string) []byte {
	var b bytes.Buffer
	enc := hpack.NewEncoder(&b)
	for i := 0; i+1 < len(fields); i += 2 {
		enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
	}
	return b.Bytes()
}

func u32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// TestServerConformance sends frame sequences to the server over a pipe and
// checks its answer: a GOAWAY or RST_STREAM with the right code, or the
// right frame (RFC 9113 §5, §6, §8).
func TestServerConformance(t *testing.T) {
	connect := headerBlock(":method", "CONNECT", ":authority", "10.0.0.1:80")
	type want struct {
		typ    frameType
		stream uint32
		code   errCode // GOAWAY and RST_STREAM
		check  func(rawFrame) bool
	}
	goaway := func(code errCode) want { return want{typ: frameGoAway, code: code} }
	rst := func(stream uint32, code errCode) want { return want{typ: frameRSTStream, stream: stream, code: code} }
	status := func(code string) want {
		return want{typ: frameHeaders, stream: 1, check: func(f rawFrame) bool {
			fields, err := hpack.NewDecoder(defaultHPACK, nil).DecodeFull(f.payload)
			return err == nil && len(fields) > 0 && fields[0].Value == code
		}}
	}
	big := frameHeader{length: MaxFrameSize + 1, typ: framePing}
	cases := []struct {
		name     string
		start    []byte // default: preface and SETTINGS
		send     []byte
		streams  int // server MaxStreams (default 200)
		expected want
	}{
		{name: "first frame not SETTINGS", start: []byte(clientPreface), send: frameBytes(framePing, 0, 0, make([]byte, 8)), expected: goaway(errCodeProtocol)},
		{name: "DATA on stream 0", send: frameBytes(frameData, 0, 0, []byte("x")), expected: goaway(errCodeProtocol)},
		{name: "DATA on an idle stream", send: frameBytes(frameData, 0, 5, []byte("x")), expected: goaway(errCodeProtocol)},
		{name: "HEADERS on an even stream", send: frameBytes(frameHeaders, flagEndHeaders, 2, connect), expected: goaway(errCodeProtocol)},
		{name: "frame above our maximum size", send: appendFrameHeader(nil, big), expected: goaway(errCodeFrameSize)},
		{name: "CONTINUATION without HEADERS", send: frameBytes(frameContinuation, flagEndHeaders, 1, connect), expected: goaway(errCodeProtocol)},
		{name: "frame inside a header block", send: cat(frameBytes(frameHeaders, 0, 1, connect[:2]), frameBytes(framePing, 0, 0, make([]byte, 8))), expected: goaway(errCodeProtocol)},
		{name: "PUSH_PROMISE from a client", send: frameBytes(framePushPromise, flagEndHeaders, 1, cat(u32(2), connect)), expected: goaway(errCodeProtocol)},
		{name: "connection WINDOW_UPDATE of 0", send: frameBytes(frameWindowUpdate, 0, 0, u32(0)), expected: goaway(errCodeProtocol)},
		{name: "connection window overflow", send: frameBytes(frameWindowUpdate, 0, 0, u32(maxWindow)), expected: goaway(errCodeFlowControl)},
		{name: "undecodable header block", send: frameBytes(frameHeaders, flagEndHeaders, 1, []byte{0xff, 0xff, 0xff, 0xff}), expected: goaway(errCodeCompression)},
		{name: "RST_STREAM on an idle stream", send: frameBytes(frameRSTStream, 0, 7, u32(8)), expected: goaway(errCodeProtocol)},
		{name: "SETTINGS of a bad length", send: frameBytes(frameSettings, 0, 0, []byte{1, 2, 3}), expected: goaway(errCodeFrameSize)},
		{name: "SETTINGS_MAX_FRAME_SIZE below the floor", send: frameBytes(frameSettings, 0, 0, cat([]byte{0, 5}, u32(100))), expected: goaway(errCodeProtocol)},
		{name: "SETTINGS_INITIAL_WINDOW_SIZE too large", send: frameBytes(frameSettings, 0, 0, cat([]byte{0, 4}, u32(1<<31))), expected: goaway(errCodeFlowControl)},
		{name: "PING of a bad length", send: frameBytes(framePing, 0, 0, make([]byte, 7)), expected: goaway(errCodeFrameSize)},
		{name: "PING is answered", send: frameBytes(framePing, 0, 0, []byte("pingpong")), expected: want{typ: framePing, check: func(f rawFrame) bool {
			return f.h.has(flagAck) && string(f.payload) == "pingpong"
		}}},
		{name: "SETTINGS are acknowledged", expected: want{typ: frameSettings, check: func(f rawFrame) bool { return f.h.has(flagAck) }}},
		{name: "server SETTINGS", expected: want{typ: frameSettings, check: func(f rawFrame) bool {
			got := map[uint16]uint32{}
			for p := f.payload; len(p) >= 6; p = p[6:] {
				got[binary.BigEndian.Uint16(p)] = binary.BigEndian.Uint32(p[2:])
			}
			return !f.h.has(flagAck) && got[settingMaxConcurrentStreams] == 200 && got[settingInitialWindowSize] == StreamWindow &&
				got[settingMaxFrameSize] == MaxFrameSize && got[settingMaxHeaderListSize] == ServerMaxHeaderBytes
		}}},
		{name: "connection window raised", expected: want{typ: frameWindowUpdate, check: func(f rawFrame) bool {
			return f.h.stream == 0 && binary.BigEndian.Uint32(f.payload) == ConnWindow-initialWindow
		}}},
		{name: "GET", send: frameBytes(frameHeaders, flagEndHeaders|flagEndStream, 1, headerBlock(":method", "GET", ":scheme", "https", ":path", "/", ":authority", "a:1")), expected: status("400")},
		{name: "CONNECT without authority", send: frameBytes(frameHeaders, flagEndHeaders, 1, headerBlock(":method", "CONNECT")), expected: status("400")},
		{name: "CONNECT", send: frameBytes(frameHeaders, flagEndHeaders, 1, connect), expected: status("200")},
		{name: "CONNECT split over CONTINUATION", send: cat(frameBytes(frameHeaders, 0, 1, connect[:3]), frameBytes(frameContinuation, 0, 1, connect[3:5]), frameBytes(frameContinuation, flagEndHeaders, 1, connect[5:])), expected: status("200")},
		{name: "CONNECT with padding and priority", send: frameBytes(frameHeaders, flagEndHeaders|flagPadded|flagPriority, 1, cat([]byte{3}, []byte{0, 0, 0, 0, 16}, connect, []byte{0, 0, 0})), expected: status("200")},
		{name: "CONNECT with :path", send: frameBytes(frameHeaders, flagEndHeaders, 1, headerBlock(":method", "CONNECT", ":authority", "10.0.0.1:80", ":path", "/")), expected: rst(1, errCodeProtocol)},
		{name: "extended CONNECT", send: frameBytes(frameHeaders, flagEndHeaders, 1, headerBlock(":method", "CONNECT", ":protocol", "websocket", ":authority", "10.0.0.1:80")), expected: rst(1, errCodeProtocol)},
		{name: "pseudo-header after a regular one", send: frameBytes(frameHeaders, flagEndHeaders, 1, headerBlock(":method", "CONNECT", "x", "y", ":authority", "10.0.0.1:80")), expected: rst(1, errCodeProtocol)},
		{name: "upper-case header name", send: frameBytes(frameHeaders, flagEndHeaders, 1, headerBlock(":method", "CONNECT", ":authority", "10.0.0.1:80", "X-Up", "y")), expected: rst(1, errCodeProtocol)},
		{name: "connection header", send: frameBytes(frameHeaders, flagEndHeaders, 1, headerBlock(":method", "CONNECT", ":authority", "10.0.0.1:80", "connection", "close")), expected: rst(1, errCodeProtocol)},
		{name: "header list too large", send: frameBytes(frameHeaders, flagEndHeaders, 1, headerBlock(":method", "CONNECT", ":authority", "10.0.0.1:80", "x", strings.Repeat("v", ServerMaxHeaderBytes))), expected: status("400")},
		{name: "trailers without END_STREAM", send: cat(frameBytes(frameHeaders, flagEndHeaders, 1, connect), frameBytes(frameHeaders, flagEndHeaders, 1, headerBlock("x", "y"))), expected: rst(1, errCodeProtocol)},
		{name: "stream WINDOW_UPDATE of 0", send: cat(frameBytes(frameHeaders, flagEndHeaders, 1, connect), frameBytes(frameWindowUpdate, 0, 1, u32(0))), expected: rst(1, errCodeProtocol)},
		{name: "PRIORITY of a bad length", send: frameBytes(framePriority, 0, 1, make([]byte, 4)), expected: rst(1, errCodeFrameSize)},
		{name: "streams over the limit are refused", streams: 1, send: cat(frameBytes(frameHeaders, flagEndHeaders, 1, connect), frameBytes(frameHeaders, flagEndHeaders, 3, connect)), expected: rst(3, errCodeRefusedStream)},
		{name: "padded DATA reaches the upstream", send: cat(frameBytes(frameHeaders, flagEndHeaders, 1, connect), frameBytes(frameData, flagPadded, 1, cat([]byte{4}, []byte("hi!"), make([]byte, 4)))), expected: want{typ: frameData, stream: 1, check: func(f rawFrame) bool {
			return bytes.Contains(f.payload, []byte("hi!"))
		}}},
	}
	peer := identity.SPIFFE{TrustDomain: "cluster.local", Namespace: "demo", ServiceAccount: "client"}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := fuzzServer()
			s.MaxStreams = tc.streams
			c := pipeServer(t, s, peer)
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			frames := readFrames(c)
			start := tc.start
			if start == nil {
				start = clientStart()
			}
			go c.Write(cat(start, tc.send))
			var seen []string
			for f := range frames {
				seen = append(seen, f.h.String())
				w := tc.expected
				if f.h.typ != w.typ || (w.stream != 0 && f.h.stream != w.stream) {
					if f.h.typ == frameGoAway || (f.h.typ == frameRSTStream && w.typ != frameRSTStream) {
						t.Fatalf("got %v %x, want %v; frames: %v", f.h, f.payload, w.typ, seen)
					}
					continue
				}
				switch {
				case w.typ == frameGoAway:
					if got := errCode(binary.BigEndian.Uint32(f.payload[4:8])); got != w.code {
						t.Fatalf("GOAWAY %v, want %v", got, w.code)
					}
				case w.typ == frameRSTStream:
					if got := errCode(binary.BigEndian.Uint32(f.payload)); got != w.code {
						t.Fatalf("RST_STREAM %v, want %v", got, w.code)
					}
				case w.check != nil && !w.check(f):
					continue
				}
				return
			}
			t.Fatalf("no %v; frames: %v", tc.expected.typ, seen)
		})
	}
}

// TestClientConformance plays the server against our client's connection
// and checks how an open (the core of Pool.Dial) ends.
func TestClientConformance(t *testing.T) {
	ok := headerBlock(":status", "200")
	connect := []hpack.HeaderField{{Name: ":method", Value: "CONNECT"}, {Name: ":authority", Value: "10.0.0.1:80"}}
	cases := []struct {
		name   string
		send   []byte
		status int    // the stream opens with this status
		errIs  string // or the open fails with an error containing this
	}{
		{name: "200", send: frameBytes(frameHeaders, flagEndHeaders, 1, ok), status: 200},
		{name: "informational first", send: cat(frameBytes(frameHeaders, flagEndHeaders, 1, headerBlock(":status", "100")), frameBytes(frameHeaders, flagEndHeaders, 1, ok)), status: 200},
		{name: "response over CONTINUATION", send: cat(frameBytes(frameHeaders, 0, 1, ok[:0]), frameBytes(frameContinuation, flagEndHeaders, 1, ok)), status: 200},
		{name: "refusal", send: frameBytes(frameHeaders, flagEndHeaders|flagEndStream, 1, headerBlock(":status", "401")), status: 401},
		{name: "no :status", send: frameBytes(frameHeaders, flagEndHeaders, 1, headerBlock("x", "y")), errIs: "PROTOCOL_ERROR"},
		{name: "two :status", send: frameBytes(frameHeaders, flagEndHeaders, 1, headerBlock(":status", "200", ":status", "200")), errIs: "PROTOCOL_ERROR"},
		{name: "request pseudo-header", send: frameBytes(frameHeaders, flagEndHeaders, 1, headerBlock(":status", "200", ":path", "/")), errIs: "PROTOCOL_ERROR"},
		{name: "stream reset", send: frameBytes(frameRSTStream, 0, 1, u32(uint32(errCodeRefusedStream))), errIs: "reset by peer: REFUSED_STREAM"},
		{name: "GOAWAY before the stream", send: frameBytes(frameGoAway, 0, 0, make([]byte, 8)), errIs: "draining"},
		{name: "PUSH_PROMISE", send: frameBytes(framePushPromise, flagEndHeaders, 1, cat(u32(2), ok)), errIs: "PUSH_PROMISE"},
		{name: "HEADERS on a stream never opened", send: frameBytes(frameHeaders, flagEndHeaders, 3, ok), errIs: "never opened"},
		{name: "server-initiated stream", send: frameBytes(frameHeaders, flagEndHeaders, 2, ok), errIs: "never opened"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, srv := pipeClient(t)
			go serveRawFrames(srv, tc.send)
			if !c.reserve() {
				t.Fatal("no room for a stream")
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			s, _, err := c.openStream(ctx, connect, nil)
			switch {
			case tc.errIs != "":
				if err == nil || !strings.Contains(err.Error(), tc.errIs) {
					t.Fatalf("open = %v, want an error with %q", err, tc.errIs)
				}
			case err != nil:
				t.Fatalf("open: %v", err)
			case s.status != tc.status:
				t.Fatalf("status %d, want %d", s.status, tc.status)
			}
		})
	}
}
