package router_test

import (
	"net/http"
	"testing"

	"github.com/ambit-mesh/ambit/waypoint/router"
)

const act = ` route: {cluster: "c"}`

func TestPathMatching(t *testing.T) {
	r := compileText(t, oneHost(`
		routes: {name: "exact" match: {path: "/exact"}`+act+`}
		routes: {name: "sep" match: {path_separated_prefix: "/foo"}`+act+`}
		routes: {name: "regex" match: {safe_regex: {regex: "/v[0-9]+"}}`+act+`}
		routes: {name: "nocase" match: {path: "/CaSe" case_sensitive: {value: false}}`+act+`}
		routes: {name: "nocase-prefix" match: {prefix: "/Up" case_sensitive: {}}`+act+`}
		routes: {name: "prefix" match: {prefix: "/pre"}`+act+`}
	`))
	for _, tc := range []struct{ path, want string }{
		{"/exact", "exact"},
		{"/exact?x=1", "exact"},
		{"/exact/", "404"},
		{"/Exact", "404"},
		{"/foo", "sep"},
		{"/foo/", "sep"},
		{"/foo/bar", "sep"},
		{"/foo?q", "sep"},
		{"/foobar", "404"},
		{"/fo", "404"},
		{"/v1", "regex"},
		{"/v12", "regex"},
		{"/v1/x", "404"}, // safe_regex is a full match
		{"/xv1", "404"},
		{"/case", "nocase"},
		{"/CASE", "nocase"},
		{"/upper", "nocase-prefix"},
		{"/prefix", "prefix"},
		{"/pre", "prefix"},
		{"/Prefix", "404"},
		{"/", "404"},
		{"", "404"},
	} {
		if got := routeName(r, get(tc.path)); got != tc.want {
			t.Errorf("%q: route %s, want %s", tc.path, got, tc.want)
		}
	}
}

func TestHeaderMatching(t *testing.T) {
	r := compileText(t, oneHost(`
		routes: {name: "method" match: {prefix: "/m" headers: {name: ":method" string_match: {exact: "POST"}}}`+act+`}
		routes: {name: "exact" match: {prefix: "/e" headers: {name: "X-Version" string_match: {exact: "v2"}}}`+act+`}
		routes: {name: "regex" match: {prefix: "/r" headers: {name: "x-user" string_match: {safe_regex: {regex: "a.c"}}}}`+act+`}
		routes: {name: "present" match: {prefix: "/p" headers: {name: "x-p" present_match: true}}`+act+`}
		routes: {name: "absent" match: {prefix: "/a" headers: {name: "x-p" present_match: false}}`+act+`}
		routes: {name: "inverted" match: {prefix: "/i" headers: {name: "x-v" string_match: {exact: "bad"} invert_match: true}}`+act+`}
		routes: {name: "authority" match: {prefix: "/h" headers: {name: ":authority" string_match: {prefix: "echo."}}}`+act+`}
		routes: {name: "path" match: {prefix: "/q" headers: {name: ":path" string_match: {suffix: "?x=1"}}}`+act+`}
		routes: {name: "nocase" match: {prefix: "/n" headers: {name: "x-n" string_match: {exact: "abc" ignore_case: true}}}`+act+`}
		routes: {name: "joined" match: {prefix: "/j" headers: {name: "x-j" string_match: {exact: "1,2"}}}`+act+`}
		routes: {name: "contains" match: {prefix: "/c" headers: {name: "x-c" string_match: {contains: "mid"}}}`+act+`}
		routes: {name: "two" match: {prefix: "/2" headers: {name: "a" string_match: {exact: "1"}} headers: {name: "b" string_match: {exact: "2"}}}`+act+`}
	`))
	for _, tc := range []struct {
		name string
		req  router.Request
		want string
	}{
		{"method matches", req("POST", "/m"), "method"},
		{"method differs", req("GET", "/m"), "404"},
		{"exact, name case-insensitive", get("/e", "x-version", "v2"), "exact"},
		{"exact, value case-sensitive", get("/e", "X-Version", "V2"), "404"},
		{"exact, missing", get("/e"), "404"},
		{"regex full match", get("/r", "X-User", "abc"), "regex"},
		{"regex is not a search", get("/r", "X-User", "xabcx"), "404"},
		{"present", get("/p", "X-P", ""), "present"},
		{"present, missing", get("/p"), "404"},
		{"absent", get("/a"), "absent"},
		{"absent, present", get("/a", "X-P", "1"), "404"},
		{"inverted, other value", get("/i", "X-V", "good"), "inverted"},
		{"inverted, that value", get("/i", "X-V", "bad"), "404"},
		{"inverted, missing header does not match", get("/i"), "404"},
		{":authority", get("/h"), "authority"},
		{":path has the query", get("/q?x=1"), "path"},
		{"ignore_case", get("/n", "X-N", "ABC"), "nocase"},
		{"repeated header joined with ,", get("/j", "X-J", "1", "X-J", "2"), "joined"},
		{"contains", get("/c", "X-C", "amidst"), "contains"},
		{"all headers must match", get("/2", "A", "1"), "404"},
		{"both headers", get("/2", "A", "1", "B", "2"), "two"},
	} {
		if got := routeName(r, tc.req); got != tc.want {
			t.Errorf("%s: route %s, want %s", tc.name, got, tc.want)
		}
	}
	// A Header map with non-canonical keys is still read case-insensitively.
	rq := get("/e")
	rq.Header = http.Header{"x-version": {"v2"}}
	if got := routeName(r, rq); got != "exact" {
		t.Errorf("non-canonical header key: route %s", got)
	}
	// Host may come from the Header.
	rq = get("/h")
	rq.Host = ""
	rq.Header.Set("Host", "echo.demo")
	if got := routeName(r, rq); got != "authority" {
		t.Errorf("Host header: route %s", got)
	}
}

func TestQueryMatching(t *testing.T) {
	r := compileText(t, oneHost(`
		routes: {name: "exact" match: {prefix: "/" query_parameters: {name: "animal" string_match: {exact: "whale"}}}`+act+`}
		routes: {name: "regex" match: {prefix: "/" query_parameters: {name: "n" string_match: {safe_regex: {regex: "[0-9]+"}}}}`+act+`}
		routes: {name: "present" match: {prefix: "/" query_parameters: {name: "flag" present_match: true}}`+act+`}
		routes: {name: "raw" match: {prefix: "/" query_parameters: {name: "s" string_match: {exact: "a%20b"}}}`+act+`}
	`))
	for _, tc := range []struct{ path, want string }{
		{"/?animal=whale", "exact"},
		{"/x?a=1&animal=whale&b", "exact"},
		{"/?animal=dolphin&animal=whale", "404"}, // the first value counts
		{"/?animal=whale&animal=dolphin", "exact"},
		{"/?Animal=whale", "404"}, // names are case-sensitive
		{"/?n=42", "regex"},
		{"/?n=42x", "404"},
		{"/?flag", "present"},
		{"/?flag=", "present"},
		{"/?s=a%20b", "raw"}, // values are compared undecoded
		{"/?s=a b", "404"},
		{"/", "404"},
	} {
		if got := routeName(r, get(tc.path)); got != tc.want {
			t.Errorf("%q: route %s, want %s", tc.path, got, tc.want)
		}
	}
}

func TestGRPCMatching(t *testing.T) {
	r := compileText(t, oneHost(`
		routes: {name: "grpc" match: {prefix: "/" grpc: {}}`+act+`}
		routes: {name: "http" match: {prefix: "/"}`+act+`}
	`))
	for _, tc := range []struct{ ct, want string }{
		{"application/grpc", "grpc"},
		{"application/grpc+proto", "grpc"},
		{"application/grpc;charset=utf-8", "grpc"},
		{"application/grpc-web", "http"},
		{"application/json", "http"},
		{"", "http"},
	} {
		rq := req("POST", "/pkg.Svc/Method")
		if tc.ct != "" {
			rq.Header.Set("Content-Type", tc.ct)
		}
		if got := routeName(r, rq); got != tc.want {
			t.Errorf("content-type %q: route %s, want %s", tc.ct, got, tc.want)
		}
	}
}

func TestVirtualHosts(t *testing.T) {
	r := compileText(t, `name: "t"
		virtual_hosts: {name: "any" domains: "*" routes: {name: "any" match: {prefix: "/"}`+act+`}}
		virtual_hosts: {name: "exact" domains: ["echo.demo", "echo.demo:8080"] routes: {name: "exact" match: {prefix: "/"}`+act+`}}
		virtual_hosts: {name: "suffix" domains: "*.demo" routes: {name: "suffix" match: {prefix: "/"}`+act+`}}
		virtual_hosts: {name: "longer-suffix" domains: "*.b.demo" routes: {name: "longer-suffix" match: {prefix: "/"}`+act+`}}
		virtual_hosts: {name: "prefix" domains: "api.*" routes: {name: "prefix" match: {prefix: "/"}`+act+`}}
		virtual_hosts: {name: "none" domains: "nothing" routes: {name: "none" match: {path: "/never"}`+act+`}}
	`)
	for _, tc := range []struct{ host, want string }{
		{"echo.demo", "exact"},
		{"ECHO.demo:8080", "exact"},
		{"a.demo", "suffix"},
		{"a.b.demo", "longer-suffix"},
		{"a.b.demo:80", "longer-suffix"}, // port dropped when nothing matches with it
		{"api.example", "prefix"},
		{"other", "any"},
		{"nothing", "404"}, // its host matched, its route did not
	} {
		rq := get("/")
		rq.Host = tc.host
		if got := routeName(r, rq); got != tc.want {
			t.Errorf("host %q: route %s, want %s", tc.host, got, tc.want)
		}
	}
	noStar := compileText(t, `name: "t" virtual_hosts: {name: "x" domains: "x" routes: {name: "x" match: {prefix: "/"}`+act+`}}`)
	if _, ok := noStar.Decide(get("/"), first); ok {
		t.Error("no virtual host for the authority: want no route")
	}
	var nilRouter *router.Router
	if _, ok := nilRouter.Decide(get("/"), first); ok {
		t.Error("nil Router decided")
	}
}
