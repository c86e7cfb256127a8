package routes_test

import (
	"strings"
	"testing"

	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambit-mesh/ambit/controlplane/routes"
)

func TestTimeoutsAndRetries(t *testing.T) {
	const v1 = `cluster: "outbound|8080||v1.demo.svc.cluster.local"`
	dur := func(s string) *gatewayv1.Duration { return ptr(gatewayv1.Duration(s)) }
	codes := func(cs ...int) []gatewayv1.HTTPRouteRetryStatusCode {
		var out []gatewayv1.HTTPRouteRetryStatusCode
		for _, c := range cs {
			out = append(out, gatewayv1.HTTPRouteRetryStatusCode(c))
		}
		return out
	}
	for _, tc := range []struct {
		name     string
		timeouts *gatewayv1.HTTPRouteTimeouts
		retry    *gatewayv1.HTTPRouteRetry
		action   string // the route action, or a direct_response
		invalid  string // Accepted False message part
	}{
		{"none: timeout explicitly 0, no retries", nil, nil, `route: {` + v1 + ` timeout: {}}`, ""},
		{"request timeout", &gatewayv1.HTTPRouteTimeouts{Request: dur("200ms")}, nil, `route: {` + v1 + ` timeout: {nanos: 200000000}}`, ""},
		{"request timeout 0s", &gatewayv1.HTTPRouteTimeouts{Request: dur("0s")}, nil, `route: {` + v1 + ` timeout: {}}`, ""},
		{"compound duration", &gatewayv1.HTTPRouteTimeouts{Request: dur("1m30s")}, nil, `route: {` + v1 + ` timeout: {seconds: 90}}`, ""},
		{"backend request timeout only", &gatewayv1.HTTPRouteTimeouts{BackendRequest: dur("1s")}, nil,
			`route: {` + v1 + ` timeout: {} retry_policy: {num_retries: {} per_try_timeout: {seconds: 1}}}`, ""},
		{"both timeouts", &gatewayv1.HTTPRouteTimeouts{Request: dur("10s"), BackendRequest: dur("2s")}, nil,
			`route: {` + v1 + ` timeout: {seconds: 10} retry_policy: {num_retries: {} per_try_timeout: {seconds: 2}}}`, ""},
		{"retry with codes, attempts, backoff", nil, &gatewayv1.HTTPRouteRetry{Codes: codes(500, 503), Attempts: ptr(3), Backoff: dur("100ms")},
			`route: {` + v1 + ` timeout: {} retry_policy: {retry_on: "retriable-status-codes,connect-failure,refused-stream,reset"
				num_retries: {value: 3} retriable_status_codes: [500, 503] retry_back_off: {base_interval: {nanos: 100000000}}}}`, ""},
		{"retry without codes retries connection errors once", nil, &gatewayv1.HTTPRouteRetry{},
			`route: {` + v1 + ` timeout: {} retry_policy: {retry_on: "connect-failure,refused-stream,reset" num_retries: {value: 1}}}`, ""},
		{"retry and per-try timeout", &gatewayv1.HTTPRouteTimeouts{BackendRequest: dur("250ms")}, &gatewayv1.HTTPRouteRetry{Attempts: ptr(2)},
			`route: {` + v1 + ` timeout: {} retry_policy: {retry_on: "connect-failure,refused-stream,reset" num_retries: {value: 2} per_try_timeout: {nanos: 250000000}}}`, ""},
		{"invalid duration", &gatewayv1.HTTPRouteTimeouts{Request: dur("1.5s")}, nil, "", "not a Gateway API duration"},
		{"invalid duration unit", &gatewayv1.HTTPRouteTimeouts{Request: dur("1d")}, nil, "", "not a Gateway API duration"},
		{"too many digits", &gatewayv1.HTTPRouteTimeouts{Request: dur("123456s")}, nil, "", "not a Gateway API duration"},
		{"empty duration", &gatewayv1.HTTPRouteTimeouts{Request: dur("")}, nil, "", "not a Gateway API duration"},
		{"backend request longer than request", &gatewayv1.HTTPRouteTimeouts{Request: dur("1s"), BackendRequest: dur("2s")}, nil, "", "exceeds"},
		{"retry code out of range", nil, &gatewayv1.HTTPRouteRetry{Codes: codes(200)}, "", "outside 400..599"},
		{"negative attempts", nil, &gatewayv1.HTTPRouteRetry{Attempts: ptr(-1)}, "", "retry.attempts"},
		{"bad backoff", nil, &gatewayv1.HTTPRouteRetry{Backoff: dur("soon")}, "", "retry.backoff"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := mesh()
			in.HTTPRoutes = []*gatewayv1.HTTPRoute{httpRoute("r", 0, gatewayv1.HTTPRouteRule{
				BackendRefs: []gatewayv1.HTTPBackendRef{to("v1", 8080)},
				Timeouts:    tc.timeouts,
				Retry:       tc.retry,
			})}
			out := routes.Build(in)
			rs := echoRoutes(t, out)
			c := cond(t, out, "HTTPRoute", "r", "Accepted")
			if tc.invalid != "" {
				if rs[0].GetDirectResponse().GetStatus() != 500 {
					t.Errorf("route %v, want a 500", rs[0])
				}
				if c.Status != "False" || c.Reason != "UnsupportedValue" || !strings.Contains(c.Message, tc.invalid) {
					t.Errorf("Accepted = %+v, want False mentioning %q", c, tc.invalid)
				}
				return
			}
			assertRoute(t, rs[0], `name: "HTTPRoute/demo/r/rule/0/match/0" match: {prefix: "/"} `+tc.action)
			if c.Status != "True" {
				t.Errorf("Accepted = %+v", c)
			}
		})
	}
}

func TestSessionPersistenceUnsupported(t *testing.T) {
	in := mesh()
	in.HTTPRoutes = []*gatewayv1.HTTPRoute{httpRoute("r", 0, gatewayv1.HTTPRouteRule{
		BackendRefs:        []gatewayv1.HTTPBackendRef{to("v1", 8080)},
		SessionPersistence: &gatewayv1.SessionPersistence{},
	})}
	out := routes.Build(in)
	if echoRoutes(t, out)[0].GetDirectResponse().GetStatus() != 500 {
		t.Error("want a 500")
	}
	if c := cond(t, out, "HTTPRoute", "r", "Accepted"); c.Status != "False" || !strings.Contains(c.Message, "sessionPersistence") {
		t.Errorf("Accepted = %+v", c)
	}
}
