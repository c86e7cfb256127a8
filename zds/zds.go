// Package zds implements both ends of ZDS, the protocol by which the node
// agent hands enrolled pods to ztunnel, wire-compatible with Istio's
// istio-cni agent and ztunnel.
//
// The transport is a SOCK_SEQPACKET unix socket on which the node agent
// listens (Server) and ztunnel connects (Client). Every datagram holds one
// protobuf message from istio.io/istio/pkg/zdsapi, with no length prefix and
// at most 1024 bytes. A pod's network namespace travels as exactly one
// SCM_RIGHTS descriptor, on AddWorkload and on nothing else.
//
// A session: ztunnel sends ZdsHello{V1}; the agent replays every pod it
// knows (AddWorkload with the netns, or KeepWorkload when it holds no netns)
// and then SnapshotSent, and ztunnel drops every pod that was not in that
// snapshot. After that only AddWorkload and DelWorkload flow. ztunnel
// answers every request with an Ack whose error text is empty (ack) or not
// (nack), and the agent waits for that answer before it sends the next one.
package zds

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"
	"unicode/utf8"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
	"istio.io/istio/pkg/zdsapi"
)

// DefaultSocketPath is where the node agent listens, as upstream
// (ztunnel's INPOD_UDS).
const DefaultSocketPath = "/var/run/ztunnel/ztunnel.sock"

// AckTimeout bounds the agent's wait for ztunnel's hello and for each
// answer, and every write on either side, as upstream.
const AckTimeout = 5 * time.Second

// maxDatagram is the size of ztunnel's read buffer (and the agent's):
// longer datagrams arrive truncated and are refused.
const maxDatagram = 1024

// maxNackText bounds the error text of a nack so that the answer always fits
// in the agent's 1024-byte read buffer.
const maxNackText = 900

var (
	// ErrProtocol marks a violation of the protocol by the peer. The side
	// that sees one ends the connection (after a nack, on ztunnel's side).
	ErrProtocol = errors.New("ZDS protocol violation")
	// ErrNoZtunnel is returned by Server.AddWorkload when no ztunnel is
	// connected. The pod stays in the agent's cache and goes out with the
	// snapshot of the next ztunnel that connects.
	ErrNoZtunnel = errors.New("no ztunnel connected")
	// ErrServerClosed is returned by the Server's methods after Close.
	ErrServerClosed = errors.New("ZDS server closed")
)

// NackError is ztunnel's refusal of a request: the text of a non-empty
// Ack.error.
type NackError struct {
	Request string // "AddWorkload", "DelWorkload", ...
	UID     string
	Reason  string
}

func (e *NackError) Error() string {
	return fmt.Sprintf("ztunnel refused %s of pod %s: %s", e.Request, e.UID, e.Reason)
}

// NetnsID identifies the network namespace that f refers to by device and
// inode, so that ztunnel can tell whether a re-sent pod still has the
// namespace its proxy runs in.
func NetnsID(f *os.File) (dev, ino uint64, err error) {
	if f == nil {
		return 0, 0, errors.New("netns identity: no file")
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return 0, 0, fmt.Errorf("netns identity of %s: %w", f.Name(), err)
	}
	var st unix.Stat_t
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.Fstat(int(fd), &st) }); err != nil {
		return 0, 0, fmt.Errorf("netns identity of %s: %w", f.Name(), err)
	}
	if serr != nil {
		return 0, 0, fmt.Errorf("netns identity of %s: fstat: %w", f.Name(), serr)
	}
	return uint64(st.Dev), st.Ino, nil // Dev is narrower on some architectures
}

// dupFile returns an independent close-on-exec duplicate of f.
func dupFile(f *os.File) (*os.File, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("duplicating %s: %w", f.Name(), err)
	}
	nfd, derr := -1, error(nil)
	if err := rc.Control(func(fd uintptr) { nfd, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return nil, fmt.Errorf("duplicating %s: %w", f.Name(), err)
	}
	if derr != nil {
		return nil, fmt.Errorf("duplicating %s: %w", f.Name(), derr)
	}
	return os.NewFile(uintptr(nfd), f.Name()), nil
}

// readDatagram reads one datagram into buf, with room in oob for at most
// one descriptor (nil oob: none). It returns the message bytes and the
// descriptor that came with them, if any; the caller owns that file. A
// truncated datagram, truncated control data or more than one descriptor
// is a protocol error, and any descriptors received are closed. An empty
// datagram is taken as the end of the stream, as upstream does.
func readDatagram(c *net.UnixConn, buf, oob []byte) ([]byte, *os.File, error) {
	n, oobn, flags, _, err := c.ReadMsgUnix(buf, oob)
	if err != nil {
		return nil, nil, err
	}
	var fds []int
	if oobn > 0 {
		msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil {
			return nil, nil, fmt.Errorf("%w: unreadable control data: %v", ErrProtocol, err)
		}
		for i := range msgs {
			if msgs[i].Header.Level != unix.SOL_SOCKET || msgs[i].Header.Type != unix.SCM_RIGHTS {
				continue
			}
			rights, err := unix.ParseUnixRights(&msgs[i])
			if err == nil {
				fds = append(fds, rights...)
			}
		}
	}
	closeAll := func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}
	switch {
	case flags&unix.MSG_TRUNC != 0:
		closeAll()
		return nil, nil, fmt.Errorf("%w: datagram longer than %d bytes", ErrProtocol, len(buf))
	case flags&unix.MSG_CTRUNC != 0:
		closeAll()
		return nil, nil, fmt.Errorf("%w: control data truncated (more than one descriptor, or one where none is allowed)", ErrProtocol)
	case len(fds) > 1:
		closeAll()
		return nil, nil, fmt.Errorf("%w: %d descriptors in one datagram, want at most one", ErrProtocol, len(fds))
	case n == 0:
		closeAll()
		return nil, nil, io.EOF
	}
	var f *os.File
	if len(fds) == 1 {
		f = os.NewFile(uintptr(fds[0]), "zds-netns")
	}
	return buf[:n], f, nil
}

// writeMessage sends msg as one datagram, with f's descriptor attached when
// f is not nil. It refuses messages that the peer could not read whole.
func writeMessage(c *net.UnixConn, msg proto.Message, f *os.File) error {
	b, err := proto.Marshal(msg)
	if err != nil {
		return fmt.Errorf("encoding %T: %w", msg, err)
	}
	if len(b) > maxDatagram {
		return fmt.Errorf("encoded %T is %d bytes, more than the peer reads (%d)", msg, len(b), maxDatagram)
	}
	if err := c.SetWriteDeadline(time.Now().Add(AckTimeout)); err != nil {
		return err
	}
	if f == nil {
		_, _, err = c.WriteMsgUnix(b, nil, nil)
		return err
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return fmt.Errorf("attaching %s: %w", f.Name(), err)
	}
	var werr error
	if err := rc.Control(func(fd uintptr) { _, _, werr = c.WriteMsgUnix(b, unix.UnixRights(int(fd)), nil) }); err != nil {
		return fmt.Errorf("attaching %s: %w", f.Name(), err)
	}
	return werr
}

// ackMessage is ztunnel's answer: an ack when text is empty, else a nack
// carrying text (made valid UTF-8 and cut to fit the agent's buffer).
func ackMessage(text string) *zdsapi.WorkloadResponse {
	text = strings.ToValidUTF8(text, "\uFFFD")
	if len(text) > maxNackText {
		cut := maxNackText
		for cut > 0 && !utf8.RuneStart(text[cut]) {
			cut--
		}
		text = text[:cut]
	}
	return &zdsapi.WorkloadResponse{Payload: &zdsapi.WorkloadResponse_Ack{Ack: &zdsapi.Ack{Error: text}}}
}

// requestKind names a request for logs and errors.
func requestKind(r *zdsapi.WorkloadRequest) (kind, uid string) {
	switch p := r.GetPayload().(type) {
	case *zdsapi.WorkloadRequest_Add:
		return "AddWorkload", p.Add.GetUid()
	case *zdsapi.WorkloadRequest_Keep:
		return "KeepWorkload", p.Keep.GetUid()
	case *zdsapi.WorkloadRequest_Del:
		return "DelWorkload", p.Del.GetUid()
	case *zdsapi.WorkloadRequest_SnapshotSent:
		return "SnapshotSent", ""
	}
	return "empty request", ""
}
