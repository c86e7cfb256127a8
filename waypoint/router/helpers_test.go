package router_test

import (
	"net/http"
	"testing"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/encoding/prototext"

	"github.com/ambit-mesh/ambit/waypoint/router"
)

// compileText compiles a RouteConfiguration written in text format.
func compileText(t *testing.T, text string) *router.Router {
	t.Helper()
	rc := &routev3.RouteConfiguration{}
	if err := prototext.Unmarshal([]byte(text), rc); err != nil {
		t.Fatalf("bad test config: %v\n%s", err, text)
	}
	r, err := router.Compile(rc)
	if err != nil {
		t.Fatalf("Compile: %v", err)
	}
	return r
}

// oneHost wraps routes (text) in a config with one "*" virtual host.
func oneHost(routes string) string {
	return `name: "test" virtual_hosts: {name: "vh" domains: "*" ` + routes + `}`
}

// req builds a request; headers are name, value pairs.
func req(method, path string, headers ...string) router.Request {
	h := http.Header{}
	for i := 0; i+1 < len(headers); i += 2 {
		h.Add(headers[i], headers[i+1])
	}
	return router.Request{Method: method, Host: "echo.demo.svc.cluster.local:8080", Path: path, Header: h}
}

func get(path string, headers ...string) router.Request { return req("GET", path, headers...) }

// first always picks the first weighted cluster and mirrors everything.
func first(uint64) uint64 { return 0 }

// routeName decides r and returns the route name, or "404".
func routeName(r *router.Router, rq router.Request) string {
	d, ok := r.Decide(rq, first)
	if !ok {
		return "404"
	}
	return d.RouteName
}

func prototextUnmarshal(text string, rc *routev3.RouteConfiguration) error {
	return prototext.Unmarshal([]byte(text), rc)
}
