package router

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
)

// RetryPolicy is what to retry and how often.
type RetryPolicy struct {
	NumRetries           uint32   // retries after the first try
	RetryOn              []string // Envoy retry_on conditions, e.g. "connect-failure"
	RetriableStatusCodes []uint32 // for "retriable-status-codes"
	BaseInterval         time.Duration
	MaxInterval          time.Duration
}

// RetriesOn reports whether cond is one of the retry conditions.
func (p *RetryPolicy) RetriesOn(cond string) bool {
	return p != nil && slices.Contains(p.RetryOn, cond)
}

// RetriableStatus reports whether an upstream response status calls for a
// retry: "5xx", "gateway-error" (502, 503, 504), "retriable-4xx" (409) and
// "retriable-status-codes".
func (p *RetryPolicy) RetriableStatus(code int) bool {
	switch {
	case p == nil:
		return false
	case code >= 500 && p.RetriesOn("5xx"):
		return true
	case (code == 502 || code == 503 || code == 504) && p.RetriesOn("gateway-error"):
		return true
	case code == 409 && p.RetriesOn("retriable-4xx"):
		return true
	}
	return p.RetriesOn("retriable-status-codes") && code >= 0 && slices.Contains(p.RetriableStatusCodes, uint32(code))
}

func (p *RetryPolicy) clone() *RetryPolicy {
	if p == nil {
		return nil
	}
	c := *p
	c.RetryOn = slices.Clone(p.RetryOn)
	c.RetriableStatusCodes = slices.Clone(p.RetriableStatusCodes)
	return &c
}

// knownRetryOn is Envoy's list of HTTP and gRPC retry conditions.
func knownRetryOn(cond string) bool {
	switch cond {
	case "5xx", "gateway-error", "reset", "reset-before-request", "connect-failure",
		"envoy-ratelimited", "retriable-4xx", "refused-stream", "retriable-status-codes",
		"http3-post-connect-failure", "cancelled", "deadline-exceeded", "internal",
		"resource-exhausted", "unavailable":
		return true
	}
	return false
}

// compileRetry reads a retry policy. The policy is nil when it never
// retries (num_retries 0 or no condition); perTry applies regardless.
func compileRetry(rp *routev3.RetryPolicy) (p *RetryPolicy, perTry time.Duration, err error) {
	if rp.PerTryTimeout != nil {
		if perTry, err = duration(rp.PerTryTimeout, "retry_policy.per_try_timeout"); err != nil {
			return nil, 0, err
		}
	}
	p = &RetryPolicy{NumRetries: 1, RetriableStatusCodes: slices.Clone(rp.GetRetriableStatusCodes())}
	if rp.NumRetries != nil {
		p.NumRetries = rp.NumRetries.GetValue()
	}
	for _, c := range strings.Split(rp.GetRetryOn(), ",") {
		c = strings.TrimSpace(c)
		if c == "" {
			continue
		}
		if !knownRetryOn(c) {
			return nil, 0, fmt.Errorf("retry_policy.retry_on: unknown condition %q", c)
		}
		p.RetryOn = append(p.RetryOn, c)
	}
	if err := retryBackoff(p, rp.GetRetryBackOff()); err != nil {
		return nil, 0, err
	}
	if p.NumRetries == 0 || len(p.RetryOn) == 0 {
		return nil, perTry, nil
	}
	return p, perTry, nil
}

func retryBackoff(p *RetryPolicy, b *routev3.RetryPolicy_RetryBackOff) error {
	p.BaseInterval = defaultRetryBase
	if b != nil && b.BaseInterval != nil {
		d, err := duration(b.BaseInterval, "retry_policy.retry_back_off.base_interval")
		if err != nil {
			return err
		}
		if d <= 0 {
			return errors.New("retry_policy.retry_back_off.base_interval must be positive")
		}
		p.BaseInterval = d
	}
	p.MaxInterval = 10 * p.BaseInterval
	if b != nil && b.MaxInterval != nil {
		d, err := duration(b.MaxInterval, "retry_policy.retry_back_off.max_interval")
		if err != nil {
			return err
		}
		if d < p.BaseInterval {
			return errors.New("retry_policy.retry_back_off.max_interval is less than base_interval")
		}
		p.MaxInterval = d
	}
	return nil
}
