package routes_test

import (
	"strings"
	"testing"

	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambit-mesh/ambit/controlplane/routes"
)

func headerFilter(set, add map[string]string, remove ...string) *gatewayv1.HTTPHeaderFilter {
	f := &gatewayv1.HTTPHeaderFilter{Remove: remove}
	for _, k := range sortedKeys(set) {
		f.Set = append(f.Set, gatewayv1.HTTPHeader{Name: gatewayv1.HTTPHeaderName(k), Value: set[k]})
	}
	for _, k := range sortedKeys(add) {
		f.Add = append(f.Add, gatewayv1.HTTPHeader{Name: gatewayv1.HTTPHeaderName(k), Value: add[k]})
	}
	return f
}

func sortedKeys(m map[string]string) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	for i := range ks {
		for j := i + 1; j < len(ks); j++ {
			if ks[j] < ks[i] {
				ks[i], ks[j] = ks[j], ks[i]
			}
		}
	}
	return ks
}

func redirectFilter(f gatewayv1.HTTPRequestRedirectFilter) gatewayv1.HTTPRouteFilter {
	return gatewayv1.HTTPRouteFilter{Type: gatewayv1.HTTPRouteFilterRequestRedirect, RequestRedirect: &f}
}

func rewriteFilter(f gatewayv1.HTTPURLRewriteFilter) gatewayv1.HTTPRouteFilter {
	return gatewayv1.HTTPRouteFilter{Type: gatewayv1.HTTPRouteFilterURLRewrite, URLRewrite: &f}
}

func fullPath(p string) *gatewayv1.HTTPPathModifier {
	return &gatewayv1.HTTPPathModifier{Type: gatewayv1.FullPathHTTPPathModifier, ReplaceFullPath: ptr(p)}
}

func prefixPath(p string) *gatewayv1.HTTPPathModifier {
	return &gatewayv1.HTTPPathModifier{Type: gatewayv1.PrefixMatchHTTPPathModifier, ReplacePrefixMatch: ptr(p)}
}

func hostname(h string) *gatewayv1.PreciseHostname { return ptr(gatewayv1.PreciseHostname(h)) }

// TestFilters: each case is one rule (match /foo unless set, backend v1
// unless it redirects) with the filters; want is the route's text after
// its name and match.
func TestFilters(t *testing.T) {
	const v1 = `cluster: "outbound|8080||v1.demo.svc.cluster.local" timeout: {}`
	const fooMatch = `match: {path_separated_prefix: "/foo"} `
	for _, tc := range []struct {
		name     string
		match    *gatewayv1.HTTPPathMatch
		filters  []gatewayv1.HTTPRouteFilter
		redirect bool // the rule has no backendRefs
		want     string
		accepted string // "" = True; else the False reason
	}{
		{
			name: "request header modifier",
			filters: []gatewayv1.HTTPRouteFilter{{Type: gatewayv1.HTTPRouteFilterRequestHeaderModifier,
				RequestHeaderModifier: headerFilter(map[string]string{"X-Set": "s"}, map[string]string{"X-Add": "a%b"}, "X-Gone")}},
			want: fooMatch + `route: {` + v1 + `}
				request_headers_to_add: {header: {key: "x-set" value: "s"} append_action: OVERWRITE_IF_EXISTS_OR_ADD}
				request_headers_to_add: {header: {key: "x-add" value: "a%%b"} append_action: APPEND_IF_EXISTS_OR_ADD}
				request_headers_to_remove: "x-gone"`,
		},
		{
			name: "response header modifier",
			filters: []gatewayv1.HTTPRouteFilter{{Type: gatewayv1.HTTPRouteFilterResponseHeaderModifier,
				ResponseHeaderModifier: headerFilter(map[string]string{"x-set": "s"}, nil, "server")}},
			want: fooMatch + `route: {` + v1 + `}
				response_headers_to_add: {header: {key: "x-set" value: "s"} append_action: OVERWRITE_IF_EXISTS_OR_ADD}
				response_headers_to_remove: "server"`,
		},
		{
			name: "host header cannot be modified",
			filters: []gatewayv1.HTTPRouteFilter{{Type: gatewayv1.HTTPRouteFilterRequestHeaderModifier,
				RequestHeaderModifier: headerFilter(map[string]string{"Host": "x"}, nil)}},
			want:     fooMatch + `direct_response: {status: 500 body: {inline_string: "rule 0: filter 0 (RequestHeaderModifier): set: header \"Host\" cannot be modified"}}`,
			accepted: "UnsupportedValue",
		},
		{
			name:     "redirect defaults: 302, listener port",
			filters:  []gatewayv1.HTTPRouteFilter{redirectFilter(gatewayv1.HTTPRequestRedirectFilter{Hostname: hostname("example.org")})},
			redirect: true,
			want:     fooMatch + `redirect: {host_redirect: "example.org" port_redirect: 8080 response_code: FOUND}`,
		},
		{
			name:     "redirect scheme https: port 443, 301",
			filters:  []gatewayv1.HTTPRouteFilter{redirectFilter(gatewayv1.HTTPRequestRedirectFilter{Scheme: ptr("https"), StatusCode: ptr(301)})},
			redirect: true,
			want:     fooMatch + `redirect: {scheme_redirect: "https" port_redirect: 443 response_code: MOVED_PERMANENTLY}`,
		},
		{
			name:     "redirect port",
			filters:  []gatewayv1.HTTPRouteFilter{redirectFilter(gatewayv1.HTTPRequestRedirectFilter{Port: ptr(gatewayv1.PortNumber(8443)), StatusCode: ptr(308)})},
			redirect: true,
			want:     fooMatch + `redirect: {port_redirect: 8443 response_code: PERMANENT_REDIRECT}`,
		},
		{
			name:     "redirect full path",
			filters:  []gatewayv1.HTTPRouteFilter{redirectFilter(gatewayv1.HTTPRequestRedirectFilter{Path: fullPath("/new")})},
			redirect: true,
			want:     fooMatch + `redirect: {port_redirect: 8080 path_redirect: "/new" response_code: FOUND}`,
		},
		{
			name:     "redirect prefix",
			filters:  []gatewayv1.HTTPRouteFilter{redirectFilter(gatewayv1.HTTPRequestRedirectFilter{Path: prefixPath("/bar/")})},
			redirect: true,
			want:     fooMatch + `redirect: {port_redirect: 8080 prefix_rewrite: "/bar" response_code: FOUND}`,
		},
		{
			name:     "redirect prefix to /",
			filters:  []gatewayv1.HTTPRouteFilter{redirectFilter(gatewayv1.HTTPRequestRedirectFilter{Path: prefixPath("/")})},
			redirect: true,
			want:     fooMatch + `redirect: {port_redirect: 8080 regex_rewrite: {pattern: {regex: "^/foo/*"} substitution: "/"} response_code: FOUND}`,
		},
		{
			name:     "redirect status code 305 is unsupported",
			filters:  []gatewayv1.HTTPRouteFilter{redirectFilter(gatewayv1.HTTPRequestRedirectFilter{StatusCode: ptr(305)})},
			redirect: true,
			want:     fooMatch + `direct_response: {status: 500 body: {inline_string: "redirect status code 305 is not supported"}}`,
			accepted: "UnsupportedValue",
		},
		{
			name:     "redirect scheme ftp is unsupported",
			filters:  []gatewayv1.HTTPRouteFilter{redirectFilter(gatewayv1.HTTPRequestRedirectFilter{Scheme: ptr("ftp")})},
			redirect: true,
			want:     fooMatch + `direct_response: {status: 500 body: {inline_string: "redirect scheme \"ftp\" is not supported"}}`,
			accepted: "UnsupportedValue",
		},
		{
			name:     "redirect with backendRefs",
			filters:  []gatewayv1.HTTPRouteFilter{redirectFilter(gatewayv1.HTTPRequestRedirectFilter{Scheme: ptr("https")})},
			want:     fooMatch + `direct_response: {status: 500 body: {inline_string: "rule 0: RequestRedirect cannot be combined with backendRefs"}}`,
			accepted: "IncompatibleFilters",
		},
		{
			name: "redirect and rewrite",
			filters: []gatewayv1.HTTPRouteFilter{
				redirectFilter(gatewayv1.HTTPRequestRedirectFilter{}),
				rewriteFilter(gatewayv1.HTTPURLRewriteFilter{Hostname: hostname("x")}),
			},
			redirect: true,
			want:     fooMatch + `direct_response: {status: 500 body: {inline_string: "rule 0: RequestRedirect and URLRewrite cannot be combined"}}`,
			accepted: "IncompatibleFilters",
		},
		{
			name:    "rewrite hostname",
			filters: []gatewayv1.HTTPRouteFilter{rewriteFilter(gatewayv1.HTTPURLRewriteFilter{Hostname: hostname("internal.example")})},
			want:    fooMatch + `route: {` + v1 + ` host_rewrite_literal: "internal.example"}`,
		},
		{
			name:    "rewrite full path",
			filters: []gatewayv1.HTTPRouteFilter{rewriteFilter(gatewayv1.HTTPURLRewriteFilter{Path: fullPath(`/a\b`)})},
			want:    fooMatch + `route: {` + v1 + ` regex_rewrite: {pattern: {regex: "^/.*$"} substitution: "/a\\\\b"}}`,
		},
		{
			name:    "rewrite prefix /foo -> /xyz",
			filters: []gatewayv1.HTTPRouteFilter{rewriteFilter(gatewayv1.HTTPURLRewriteFilter{Path: prefixPath("/xyz")})},
			want:    fooMatch + `route: {` + v1 + ` prefix_rewrite: "/xyz"}`,
		},
		{
			name:    "rewrite prefix /foo -> /xyz/",
			filters: []gatewayv1.HTTPRouteFilter{rewriteFilter(gatewayv1.HTTPURLRewriteFilter{Path: prefixPath("/xyz/")})},
			want:    fooMatch + `route: {` + v1 + ` prefix_rewrite: "/xyz"}`,
		},
		{
			name:    "rewrite prefix /foo -> /",
			filters: []gatewayv1.HTTPRouteFilter{rewriteFilter(gatewayv1.HTTPURLRewriteFilter{Path: prefixPath("/")})},
			want:    fooMatch + `route: {` + v1 + ` regex_rewrite: {pattern: {regex: "^/foo/*"} substitution: "/"}}`,
		},
		{
			name:    "rewrite prefix /foo -> empty",
			filters: []gatewayv1.HTTPRouteFilter{rewriteFilter(gatewayv1.HTTPURLRewriteFilter{Path: prefixPath("")})},
			want:    fooMatch + `route: {` + v1 + ` regex_rewrite: {pattern: {regex: "^/foo/*"} substitution: "/"}}`,
		},
		{
			name:    "rewrite prefix / -> /xyz",
			match:   prefix("/"),
			filters: []gatewayv1.HTTPRouteFilter{rewriteFilter(gatewayv1.HTTPURLRewriteFilter{Path: prefixPath("/xyz")})},
			want:    `match: {prefix: "/"} route: {` + v1 + ` prefix_rewrite: "/xyz/"}`,
		},
		{
			name:    "rewrite prefix regex special characters are quoted",
			match:   prefix("/a.b+"),
			filters: []gatewayv1.HTTPRouteFilter{rewriteFilter(gatewayv1.HTTPURLRewriteFilter{Path: prefixPath("/")})},
			want:    `match: {path_separated_prefix: "/a.b+"} route: {` + v1 + ` regex_rewrite: {pattern: {regex: "^/a\\.b\\+/*"} substitution: "/"}}`,
		},
		{
			name:     "rewrite prefix needs a prefix match",
			match:    exact("/foo"),
			filters:  []gatewayv1.HTTPRouteFilter{rewriteFilter(gatewayv1.HTTPURLRewriteFilter{Path: prefixPath("/xyz")})},
			want:     `match: {path: "/foo"} direct_response: {status: 500 body: {inline_string: "rewrite: ReplacePrefixMatch needs a PathPrefix match, not Exact"}}`,
			accepted: "UnsupportedValue",
		},
		{
			name: "mirror, 100%",
			filters: []gatewayv1.HTTPRouteFilter{{Type: gatewayv1.HTTPRouteFilterRequestMirror,
				RequestMirror: &gatewayv1.HTTPRequestMirrorFilter{BackendRef: ref("v2", 8080).BackendObjectReference}}},
			want: fooMatch + `route: {` + v1 + ` request_mirror_policies: {cluster: "outbound|8080||v2.demo.svc.cluster.local"}}`,
		},
		{
			name: "mirror percent",
			filters: []gatewayv1.HTTPRouteFilter{{Type: gatewayv1.HTTPRouteFilterRequestMirror,
				RequestMirror: &gatewayv1.HTTPRequestMirrorFilter{BackendRef: ref("v2", 8080).BackendObjectReference, Percent: ptr(int32(25))}}},
			want: fooMatch + `route: {` + v1 + ` request_mirror_policies: {cluster: "outbound|8080||v2.demo.svc.cluster.local"
				runtime_fraction: {default_value: {numerator: 25}}}}`,
		},
		{
			name: "mirror fraction",
			filters: []gatewayv1.HTTPRouteFilter{{Type: gatewayv1.HTTPRouteFilterRequestMirror,
				RequestMirror: &gatewayv1.HTTPRequestMirrorFilter{BackendRef: ref("v2", 8080).BackendObjectReference,
					Fraction: &gatewayv1.Fraction{Numerator: 1, Denominator: ptr(int32(3))}}}},
			want: fooMatch + `route: {` + v1 + ` request_mirror_policies: {cluster: "outbound|8080||v2.demo.svc.cluster.local"
				runtime_fraction: {default_value: {numerator: 333333 denominator: MILLION}}}}`,
		},
		{
			name: "mirror of a missing backend is dropped",
			filters: []gatewayv1.HTTPRouteFilter{{Type: gatewayv1.HTTPRouteFilterRequestMirror,
				RequestMirror: &gatewayv1.HTTPRequestMirrorFilter{BackendRef: ref("gone", 8080).BackendObjectReference}}},
			want: fooMatch + `route: {` + v1 + `}`,
		},
		{
			name:     "ExtensionRef is unsupported",
			filters:  []gatewayv1.HTTPRouteFilter{{Type: gatewayv1.HTTPRouteFilterExtensionRef, ExtensionRef: &gatewayv1.LocalObjectReference{Name: "x"}}},
			want:     fooMatch + `direct_response: {status: 500 body: {inline_string: "rule 0: filter 0 (ExtensionRef) is not supported by the waypoint"}}`,
			accepted: "UnsupportedValue",
		},
		{
			name:     "CORS is unsupported",
			filters:  []gatewayv1.HTTPRouteFilter{{Type: gatewayv1.HTTPRouteFilterCORS, CORS: &gatewayv1.HTTPCORSFilter{}}},
			want:     fooMatch + `direct_response: {status: 500 body: {inline_string: "rule 0: filter 0 (CORS) is not supported by the waypoint"}}`,
			accepted: "UnsupportedValue",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := tc.match
			if m == nil {
				m = prefix("/foo")
			}
			r := gatewayv1.HTTPRouteRule{Matches: []gatewayv1.HTTPRouteMatch{{Path: m}}, Filters: tc.filters}
			if !tc.redirect {
				r.BackendRefs = []gatewayv1.HTTPBackendRef{to("v1", 8080)}
			}
			in := mesh()
			in.HTTPRoutes = []*gatewayv1.HTTPRoute{httpRoute("r", 0, r)}
			out := routes.Build(in)
			rs := echoRoutes(t, out)
			if len(rs) != 1 {
				t.Fatalf("%d routes", len(rs))
			}
			assertRoute(t, rs[0], `name: "HTTPRoute/demo/r/rule/0/match/0" `+tc.want)
			c := cond(t, out, "HTTPRoute", "r", "Accepted")
			if tc.accepted == "" && c.Status != "True" || tc.accepted != "" && (c.Status != "False" || c.Reason != tc.accepted) {
				t.Errorf("Accepted = %s/%s (%s), want %q", c.Status, c.Reason, c.Message, tc.accepted)
			}
		})
	}
}

// TestRedirectListenerPort: without port or scheme, the redirect port is
// the Service port the request came to.
func TestRedirectListenerPort(t *testing.T) {
	in := mesh()
	in.HTTPRoutes = []*gatewayv1.HTTPRoute{httpRoute("r", 0, gatewayv1.HTTPRouteRule{
		Filters: []gatewayv1.HTTPRouteFilter{redirectFilter(gatewayv1.HTTPRequestRedirectFilter{Hostname: hostname("x")})},
	})}
	out := routes.Build(in)
	for name, port := range map[string]uint32{echo8080: 8080, echo9090: 9090} {
		if got := routesAt(t, out, name)[0].GetRedirect().GetPortRedirect(); got != port {
			t.Errorf("%s: port_redirect %d, want %d", name, got, port)
		}
	}
}

func TestBackendFilters(t *testing.T) {
	b1 := weighted("v1", 8080, 1)
	b1.Filters = []gatewayv1.HTTPRouteFilter{{Type: gatewayv1.HTTPRouteFilterRequestHeaderModifier,
		RequestHeaderModifier: headerFilter(map[string]string{"x-backend": "v1"}, nil)}}
	b2 := weighted("v2", 8080, 1)
	b2.Filters = []gatewayv1.HTTPRouteFilter{{Type: gatewayv1.HTTPRouteFilterResponseHeaderModifier,
		ResponseHeaderModifier: headerFilter(nil, map[string]string{"x-from": "v2"}, "x-drop")}}
	single := to("v1", 8080)
	single.Filters = b1.Filters
	mirror := to("v1", 8080)
	mirror.Filters = []gatewayv1.HTTPRouteFilter{{Type: gatewayv1.HTTPRouteFilterRequestMirror,
		RequestMirror: &gatewayv1.HTTPRequestMirrorFilter{BackendRef: ref("v2", 8080).BackendObjectReference}}}
	for _, tc := range []struct {
		name     string
		backends []gatewayv1.HTTPBackendRef
		want     string
	}{
		{"per-backend headers on weighted clusters", []gatewayv1.HTTPBackendRef{b1, b2}, `route: {weighted_clusters: {
			clusters: {name: "outbound|8080||v1.demo.svc.cluster.local" weight: {value: 1}
				request_headers_to_add: {header: {key: "x-backend" value: "v1"} append_action: OVERWRITE_IF_EXISTS_OR_ADD}}
			clusters: {name: "outbound|8080||v2.demo.svc.cluster.local" weight: {value: 1}
				response_headers_to_add: {header: {key: "x-from" value: "v2"} append_action: APPEND_IF_EXISTS_OR_ADD}
				response_headers_to_remove: "x-drop"}} timeout: {}}`},
		{"a single backend with filters stays weighted", []gatewayv1.HTTPBackendRef{single}, `route: {weighted_clusters: {
			clusters: {name: "outbound|8080||v1.demo.svc.cluster.local" weight: {value: 1}
				request_headers_to_add: {header: {key: "x-backend" value: "v1"} append_action: OVERWRITE_IF_EXISTS_OR_ADD}}} timeout: {}}`},
		{"per-backend mirror is unsupported", []gatewayv1.HTTPBackendRef{mirror},
			`direct_response: {status: 500 body: {inline_string: "rule 0: backendRef filter 0 (RequestMirror) is not supported by the waypoint"}}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := mesh()
			in.HTTPRoutes = []*gatewayv1.HTTPRoute{httpRoute("r", 0, gatewayv1.HTTPRouteRule{BackendRefs: tc.backends})}
			rs := echoRoutes(t, routes.Build(in))
			assertRoute(t, rs[0], `name: "HTTPRoute/demo/r/rule/0/match/0" match: {prefix: "/"} `+tc.want)
		})
	}
}

func TestGRPCFilters(t *testing.T) {
	in := mesh()
	in.GRPCRoutes = []*gatewayv1.GRPCRoute{grpcRoute("g", 0,
		gatewayv1.GRPCRouteRule{
			Filters: []gatewayv1.GRPCRouteFilter{{Type: gatewayv1.GRPCRouteFilterRequestHeaderModifier,
				RequestHeaderModifier: headerFilter(nil, map[string]string{"x-grpc": "1"})}},
			BackendRefs: []gatewayv1.GRPCBackendRef{{BackendRef: ref("v1", 8080)}},
		},
		gatewayv1.GRPCRouteRule{
			Filters:     []gatewayv1.GRPCRouteFilter{{Type: gatewayv1.GRPCRouteFilterExtensionRef, ExtensionRef: &gatewayv1.LocalObjectReference{Name: "e"}}},
			BackendRefs: []gatewayv1.GRPCBackendRef{{BackendRef: ref("v1", 8080)}},
		},
	)}
	out := routes.Build(in)
	rs := echoRoutes(t, out)
	assertRoute(t, rs[0], `name: "GRPCRoute/demo/g/rule/0/match/0" match: {prefix: "/" grpc: {}} `+toV1+`
		request_headers_to_add: {header: {key: "x-grpc" value: "1"} append_action: APPEND_IF_EXISTS_OR_ADD}`)
	assertRoute(t, rs[1], `name: "GRPCRoute/demo/g/rule/1/match/0" match: {prefix: "/" grpc: {}}
		direct_response: {status: 500 body: {inline_string: "rule 1: filter 0 (ExtensionRef) is not supported by the waypoint"}}`)
	if c := cond(t, out, "GRPCRoute", "g", "Accepted"); c.Status != "False" || c.Reason != "UnsupportedValue" || !strings.Contains(c.Message, "ExtensionRef") {
		t.Errorf("Accepted = %+v", c)
	}
}
