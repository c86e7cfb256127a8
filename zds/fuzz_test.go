package zds

import (
	"context"
	"errors"
	"io"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
	"istio.io/istio/pkg/zdsapi"
)

// FuzzClientMessage sends one arbitrary datagram (with or without a
// descriptor, before or after the snapshot, and padded past the 1024-byte
// buffer when oversize is set) to ztunnel's side of a session
// over a real SEQPACKET socket pair, and checks that it is answered with a
// well-formed Ack that fits the agent's buffer, that whatever ends the
// session was nacked first, that a well-formed AddWorkload hands the very
// descriptor sent to the handler, that descriptors are accepted on nothing
// else, and that no descriptor leaks.
func FuzzClientMessage(f *testing.F) {
	seed := func(m proto.Message) []byte {
		b, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	f.Add(seed(addReq("a", wlInfo("a"))), true, false, false)
	f.Add(seed(addReq("a", wlInfo("a"))), true, false, true)
	f.Add(seed(keepReq("k")), false, true, false)
	f.Add(seed(delReq("d")), true, true, false)
	f.Add(seed(snapReq()), false, true, false)
	f.Add([]byte{0x48, 0x01}, false, false, false)
	f.Add([]byte{}, false, false, false)

	netns := netnsFile(f)
	// One socket pair serves every input: each datagram is read exactly
	// once and each answer drained, so no state carries over.
	agent, zt := seqpacketPair(f)
	buf := make([]byte, maxDatagram)
	f.Fuzz(func(t *testing.T, data []byte, withFD, synced, oversize bool) {
		// Inputs stay short so that Go's minimizer (quadratic in the
		// length) stays fast; oversize reaches the truncation path.
		if len(data) > 256 {
			data = data[:256]
		}
		if oversize {
			padded := make([]byte, maxDatagram+1) // not in place: inputs are read-only
			copy(padded, data)
			data = padded
		}
		rec := newRecorder()
		s := newSession(NewClient("fuzz", rec, nil))
		if synced {
			s.synced, s.snapshot = true, nil
		}
		before := openFDs(t)

		var oob []byte
		if withFD {
			oob = unix.UnixRights(int(netns.Fd()))
		}
		if _, _, err := agent.WriteMsgUnix(data, oob, nil); err != nil {
			t.Fatalf("sending %d bytes: %v", len(data), err)
		}
		zt.SetDeadline(time.Now().Add(wait))
		err := s.step(context.Background(), zt)

		// Go sends one byte when the data is empty but a descriptor is not.
		if len(data) == 0 && !withFD {
			if !errors.Is(err, io.EOF) {
				t.Fatalf("empty datagram: %v, want the end of the stream", err)
			}
		} else {
			agent.SetReadDeadline(time.Now().Add(wait))
			b, _, rerr := readDatagram(agent, buf, nil)
			if rerr != nil {
				t.Fatalf("no readable answer (session error %v): %v", err, rerr)
			}
			resp := &zdsapi.WorkloadResponse{}
			if uerr := proto.Unmarshal(b, resp); uerr != nil || resp.GetAck() == nil {
				t.Fatalf("answer %x is not an Ack: %v", b, uerr)
			}
			nack := resp.GetAck().GetError()
			if err != nil && (nack == "" || !errors.Is(err, ErrProtocol)) {
				t.Fatalf("session ended with %v after answer %q", err, nack)
			}

			req := &zdsapi.WorkloadRequest{}
			decodes := len(data) > 0 && len(data) <= maxDatagram && proto.Unmarshal(data, req) == nil
			add := req.GetAdd()
			switch {
			case decodes && add != nil && withFD && add.GetUid() != "" && add.GetWorkloadInfo() != nil:
				if err != nil || nack != "" {
					t.Fatalf("well-formed AddWorkload refused: %q %v", nack, err)
				}
				if !sameFile(t, rec.file(add.GetUid()), netns) {
					t.Fatal("the handler did not get the descriptor sent")
				}
			case withFD && err == nil:
				t.Fatalf("a descriptor was accepted on %s", describe(req))
			case decodes && add != nil && err == nil:
				t.Fatal("AddWorkload without a descriptor accepted")
			case decodes && synced && (req.GetKeep() != nil || req.GetSnapshotSent() != nil) && err == nil:
				t.Fatalf("%s after the snapshot accepted", describe(req))
			case !decodes && err == nil:
				t.Fatal("an undecodable datagram accepted")
			}
		}
		rec.closeAll()
		// Only growth is a leak: finalizers of earlier tests' files may
		// close descriptors meanwhile.
		if after := openFDs(t); after > before {
			t.Fatalf("descriptor leak: %d open before, %d after", before, after)
		}
	})
}

func openFDs(t *testing.T) int {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(entries)
}
