// Package zds implements both sides of ZDS, the protocol by which the node
// agent hands pods to ztunnel, wire-compatible with Istio's: a SOCK_SEQPACKET
// unix socket, one protobuf message per datagram, and each pod's network
// namespace passed as exactly one SCM_RIGHTS file descriptor on AddWorkload.
//
// The node agent is the server. A ztunnel connects, says hello, receives
// the agent's whole set of pods (AddWorkload, or KeepWorkload when the
// agent cannot give a netns), then SnapshotSent, after which it drops every
// pod not in the snapshot. Every request is acknowledged (or refused with
// an error) before the next is sent.
package zds

import (
	"errors"
	"fmt"
	"net"
	"os"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
	"istio.io/istio/pkg/zdsapi"
)

// DefaultSocket is where the node agent listens (as upstream).
const DefaultSocket = "/var/run/ztunnel/ztunnel.sock"

// readBuffer is the largest datagram ztunnel reads (as upstream); longer
// ones are truncated and refused.
const readBuffer = 1024

// ErrProtocol marks violations after which the connection is dropped.
var ErrProtocol = errors.New("ZDS protocol violation")

// message is one datagram: its bytes and the descriptors it carried.
type message struct {
	data []byte
	fds  []int
}

func (m message) closeFds() {
	for _, fd := range m.fds {
		unix.Close(fd)
	}
}

// readMessage reads one datagram, refusing truncated data or control data.
func readMessage(c *net.UnixConn, bufSize int) (message, error) {
	buf := make([]byte, bufSize)
	oob := make([]byte, unix.CmsgSpace(4*4)) // room to detect extra fds
	n, oobn, flags, _, err := c.ReadMsgUnix(buf, oob)
	if err != nil {
		return message{}, err
	}
	var m message
	if oobn > 0 {
		scms, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil {
			return message{}, fmt.Errorf("%w: control data: %v", ErrProtocol, err)
		}
		for _, scm := range scms {
			fds, err := unix.ParseUnixRights(&scm)
			if err != nil {
				continue
			}
			m.fds = append(m.fds, fds...)
		}
	}
	if flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0 {
		m.closeFds()
		return message{}, fmt.Errorf("%w: truncated datagram (more than %d bytes or too many descriptors)", ErrProtocol, bufSize)
	}
	if n == 0 {
		m.closeFds()
		return message{}, errors.New("connection closed")
	}
	m.data = buf[:n]
	return m, nil
}

func writeMessage(c *net.UnixConn, msg proto.Message, fd *os.File) error {
	b, err := proto.Marshal(msg)
	if err != nil {
		return err
	}
	var oob []byte
	if fd != nil {
		oob = unixRights(fd)
	}
	_, _, err = c.WriteMsgUnix(b, oob, nil)
	return err
}

// NetnsID identifies a network namespace file by device and inode, so a
// re-sent pod can be told apart from a pod with a new namespace.
func NetnsID(f *os.File) (dev, ino uint64, err error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return 0, 0, err
	}
	return st.Dev, st.Ino, nil
}

func ack(errText string) *zdsapi.WorkloadResponse {
	return &zdsapi.WorkloadResponse{Payload: &zdsapi.WorkloadResponse_Ack{Ack: &zdsapi.Ack{Error: errText}}}
}

func unixRights(f *os.File) []byte { return unix.UnixRights(int(f.Fd())) }
