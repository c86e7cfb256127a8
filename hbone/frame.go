package hbone

import (
	"encoding/binary"
	"fmt"
)

// HTTP/2 framing (RFC 9113 §4 and §6), just what HBONE needs. Frames are
// parsed and written here rather than through x/net/http2's Framer so that
// DATA payloads move between the socket and stream buffers without extra
// copies.

const (
	clientPreface   = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
	frameHeaderLen  = 9
	minMaxFrameSize = 1 << 14        // the protocol's floor and default
	maxMaxFrameSize = 1<<24 - 1      // the protocol's ceiling
	maxWindow       = 1<<31 - 1      // largest flow-control window
	initialWindow   = 65535          // the protocol's default windows
	maxStreamID     = 1<<31 - 1      // largest stream id
	defaultHPACK    = 4096           // default HPACK dynamic table size
	maxControlQueue = 10000          // queued control frames before we give up on a peer
	maxHeaderBlock  = 4 * (64 << 10) // raw (compressed) header block ceiling
)

type frameType uint8

const (
	frameData         frameType = 0x0
	frameHeaders      frameType = 0x1
	framePriority     frameType = 0x2
	frameRSTStream    frameType = 0x3
	frameSettings     frameType = 0x4
	framePushPromise  frameType = 0x5
	framePing         frameType = 0x6
	frameGoAway       frameType = 0x7
	frameWindowUpdate frameType = 0x8
	frameContinuation frameType = 0x9
)

var frameNames = [...]string{"DATA", "HEADERS", "PRIORITY", "RST_STREAM", "SETTINGS", "PUSH_PROMISE", "PING", "GOAWAY", "WINDOW_UPDATE", "CONTINUATION"}

func (t frameType) String() string {
	if int(t) < len(frameNames) {
		return frameNames[t]
	}
	return fmt.Sprintf("UNKNOWN_FRAME_%d", t)
}

// Frame flags.
const (
	flagEndStream  = 0x1
	flagAck        = 0x1
	flagEndHeaders = 0x4
	flagPadded     = 0x8
	flagPriority   = 0x20
)

// errCode is an HTTP/2 error code (RFC 9113 §7).
type errCode uint32

const (
	errCodeNo                 errCode = 0x0
	errCodeProtocol           errCode = 0x1
	errCodeInternal           errCode = 0x2
	errCodeFlowControl        errCode = 0x3
	errCodeSettingsTimeout    errCode = 0x4
	errCodeStreamClosed       errCode = 0x5
	errCodeFrameSize          errCode = 0x6
	errCodeRefusedStream      errCode = 0x7
	errCodeCancel             errCode = 0x8
	errCodeCompression        errCode = 0x9
	errCodeConnect            errCode = 0xa
	errCodeEnhanceYourCalm    errCode = 0xb
	errCodeInadequateSecurity errCode = 0xc
	errCodeHTTP11Required     errCode = 0xd
)

var errCodeNames = [...]string{"NO_ERROR", "PROTOCOL_ERROR", "INTERNAL_ERROR", "FLOW_CONTROL_ERROR", "SETTINGS_TIMEOUT",
	"STREAM_CLOSED", "FRAME_SIZE_ERROR", "REFUSED_STREAM", "CANCEL", "COMPRESSION_ERROR", "CONNECT_ERROR",
	"ENHANCE_YOUR_CALM", "INADEQUATE_SECURITY", "HTTP_1_1_REQUIRED"}

func (e errCode) String() string {
	if int(e) < len(errCodeNames) {
		return errCodeNames[e]
	}
	return fmt.Sprintf("error code 0x%x", uint32(e))
}

// SETTINGS parameters (RFC 9113 §6.5.2).
const (
	settingHeaderTableSize      = 0x1
	settingEnablePush           = 0x2
	settingMaxConcurrentStreams = 0x3
	settingInitialWindowSize    = 0x4
	settingMaxFrameSize         = 0x5
	settingMaxHeaderListSize    = 0x6
)

type frameHeader struct {
	length uint32
	typ    frameType
	flags  uint8
	stream uint32
}

func (h frameHeader) has(f uint8) bool { return h.flags&f != 0 }

func (h frameHeader) String() string {
	return fmt.Sprintf("%s stream=%d len=%d flags=0x%x", h.typ, h.stream, h.length, h.flags)
}

func parseFrameHeader(b []byte) frameHeader {
	_ = b[8]
	return frameHeader{
		length: uint32(b[0])<<16 | uint32(b[1])<<8 | uint32(b[2]),
		typ:    frameType(b[3]),
		flags:  b[4],
		stream: binary.BigEndian.Uint32(b[5:9]) & (1<<31 - 1), // the reserved bit is ignored
	}
}

func putFrameHeader(b []byte, h frameHeader) {
	_ = b[8]
	b[0], b[1], b[2] = byte(h.length>>16), byte(h.length>>8), byte(h.length)
	b[3] = byte(h.typ)
	b[4] = h.flags
	binary.BigEndian.PutUint32(b[5:9], h.stream)
}

func appendFrameHeader(b []byte, h frameHeader) []byte {
	var hb [frameHeaderLen]byte
	putFrameHeader(hb[:], h)
	return append(b, hb[:]...)
}

// connError ends the whole connection with GOAWAY.
type connError struct {
	code   errCode
	reason string
}

func (e *connError) Error() string {
	return fmt.Sprintf("HTTP/2 connection error %s: %s", e.code, e.reason)
}

func connErrorf(code errCode, format string, args ...any) *connError {
	return &connError{code: code, reason: fmt.Sprintf(format, args...)}
}

// streamError resets one stream with RST_STREAM.
type streamError struct {
	code   errCode
	reason string
}

func (e *streamError) Error() string {
	return fmt.Sprintf("HTTP/2 stream error %s: %s", e.code, e.reason)
}

// ResetError is returned by stream reads and writes after the peer reset
// the stream (RST_STREAM) or the connection ended with an error code.
type ResetError struct {
	Code   uint32 // HTTP/2 error code
	Remote bool   // the peer sent it
}

func (e *ResetError) Error() string {
	who := "locally"
	if e.Remote {
		who = "by peer"
	}
	return fmt.Sprintf("hbone: stream reset %s: %s", who, errCode(e.Code))
}

// stripPadding removes the padding of a PADDED DATA or HEADERS payload.
func stripPadding(h frameHeader, p []byte) ([]byte, error) {
	if !h.has(flagPadded) {
		return p, nil
	}
	if len(p) < 1 {
		return nil, connErrorf(errCodeProtocol, "%v: padded frame without pad length", h)
	}
	pad := int(p[0])
	if pad > len(p)-1 {
		return nil, connErrorf(errCodeProtocol, "%v: padding %d longer than the payload", h, pad)
	}
	return p[1 : len(p)-pad], nil
}
