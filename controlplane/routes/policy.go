package routes

import (
	"fmt"
	"strings"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// defaultRetryAttempts is used when a retry stanza leaves attempts unset
// (Gateway API: implementation-specific). It is Envoy's own default.
const defaultRetryAttempts = 1

// retryOnConnectionErrors are the retry conditions any retry stanza gets:
// Gateway API says to retry on connection errors when retries are on.
const retryOnConnectionErrors = "connect-failure,refused-stream,reset"

// gepDuration parses a GEP-2257 duration: one to four groups of one to
// five digits and a unit (h, m, s, ms), a strict subset of Go's syntax.
func gepDuration(s string) (time.Duration, error) {
	if !isGEPDuration(s) {
		return 0, fmt.Errorf("duration %q is not a Gateway API duration (GEP-2257)", s)
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("duration %q: %w", s, err)
	}
	return d, nil
}

func isGEPDuration(s string) bool {
	groups := 0
	for s != "" {
		digits := 0
		for digits < len(s) && s[digits] >= '0' && s[digits] <= '9' {
			digits++
		}
		if digits == 0 || digits > 5 {
			return false
		}
		s = s[digits:]
		switch {
		case strings.HasPrefix(s, "ms"):
			s = s[2:]
		case strings.HasPrefix(s, "h"), strings.HasPrefix(s, "m"), strings.HasPrefix(s, "s"):
			s = s[1:]
		default:
			return false
		}
		groups++
	}
	return groups >= 1 && groups <= 4
}

// timeouts reads rule.timeouts: the request timeout (0 = none) and the
// per-try (backend request) timeout (0 = none).
func timeouts(t *gatewayv1.HTTPRouteTimeouts) (request, backend time.Duration, err error) {
	if t == nil {
		return 0, 0, nil
	}
	if t.Request != nil {
		if request, err = gepDuration(string(*t.Request)); err != nil {
			return 0, 0, fmt.Errorf("timeouts.request: %w", err)
		}
	}
	if t.BackendRequest != nil {
		if backend, err = gepDuration(string(*t.BackendRequest)); err != nil {
			return 0, 0, fmt.Errorf("timeouts.backendRequest: %w", err)
		}
	}
	if request > 0 && backend > request {
		return 0, 0, fmt.Errorf("timeouts.backendRequest %s exceeds timeouts.request %s", backend, request)
	}
	return request, backend, nil
}

// retryPolicy builds the Envoy retry policy from rule.retry and the
// backend request timeout; nil when neither is set. Without rule.retry the
// policy only carries the per-try timeout, with num_retries 0 (Envoy's
// default would be one retry).
func retryPolicy(r *gatewayv1.HTTPRouteRetry, perTry time.Duration) (*routev3.RetryPolicy, error) {
	if r == nil && perTry == 0 {
		return nil, nil
	}
	p := &routev3.RetryPolicy{NumRetries: wrapperspb.UInt32(0)}
	if perTry > 0 {
		p.PerTryTimeout = durationpb.New(perTry)
	}
	if r == nil {
		return p, nil
	}
	attempts := defaultRetryAttempts
	if r.Attempts != nil {
		attempts = *r.Attempts
	}
	if attempts < 0 || attempts > 1000 {
		return nil, fmt.Errorf("retry.attempts %d is outside 0..1000", attempts)
	}
	p.NumRetries = wrapperspb.UInt32(uint32(attempts))
	on := []string{retryOnConnectionErrors}
	for _, c := range r.Codes {
		if c < 400 || c > 599 {
			return nil, fmt.Errorf("retry code %d is outside 400..599", c)
		}
		p.RetriableStatusCodes = append(p.RetriableStatusCodes, uint32(c))
	}
	if len(p.RetriableStatusCodes) > 0 {
		on = append([]string{"retriable-status-codes"}, on...)
	}
	p.RetryOn = strings.Join(on, ",")
	if r.Backoff != nil {
		d, err := gepDuration(string(*r.Backoff))
		if err != nil {
			return nil, fmt.Errorf("retry.backoff: %w", err)
		}
		if d > 0 {
			p.RetryBackOff = &routev3.RetryPolicy_RetryBackOff{BaseInterval: durationpb.New(d)}
		}
	}
	return p, nil
}
