// Package xdspart names the parts of a delta xDS response that Ambit's
// control plane split to keep each under gRPC's message limit, so that a
// proxy can apply the parts as one response.
//
// Every part but the last carries the response's nonce with a suffix
// (Nonce); the last carries the nonce alone. A proxy acknowledges every
// part and applies what they carry together when the last arrives (Ambit's
// ztunnel and waypoint do): a stream's first state is whole before the
// proxy reports ready, and a split change is applied at once. A proxy that
// knows nothing of parts (Istio's ztunnel) applies each as a delta of its
// own, which delta xDS allows. Istio's istiod does not split responses and
// its nonces never carry the suffix.
package xdspart

import (
	"strconv"
	"strings"
)

// marker separates a response's nonce from a part's number. It cannot
// occur in the control plane's own nonces (decimal counters).
const marker = "+part"

// Nonce returns the nonce of part i (from 1) of a response with nonce n
// that has parts after it.
func Nonce(n string, i int) string { return n + marker + strconv.Itoa(i) }

// More reports whether a response with this nonce is a part that others
// follow.
func More(nonce string) bool {
	i := strings.LastIndex(nonce, marker)
	if i < 0 {
		return false
	}
	_, err := strconv.Atoi(nonce[i+len(marker):])
	return err == nil
}
