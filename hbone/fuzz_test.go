package hbone

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/identity/identitytest"
)

// FuzzServerRequest drives the server's request handling with arbitrary
// methods, authorities, headers and bodies: it must never panic and must
// answer only with upstream's status codes.
func FuzzServerRequest(f *testing.F) {
	f.Add("CONNECT", "10.244.1.5:8080", "forwarded", `for="1.2.3.4:5"`, []byte("hello"))
	f.Add("GET", "10.244.1.5:8080", "baggage", "k8s.namespace.name=demo", []byte{})
	f.Add("CONNECT", "[fd00::1]:443", "traceparent", "00-00000000000000000000000000000000-0000000000000000-00", []byte{0})
	f.Add("CONNECT", "10.244.1.5:401", "x", "y", []byte("z"))
	f.Add("CONNECT", "10.244.1.5:503", "", "", []byte(nil))
	f.Add("CONNECT", "a.b:65535", "", "", []byte(nil))
	f.Add("CONNECT", "::1:80", "", "", []byte(nil))
	ca := identitytest.NewCA(f, "cluster.local")
	peer := ca.Issue(f, ca.ID("demo", "client"), time.Hour)
	s := &Server{Handler: HandlerFunc(func(ctx context.Context, r *Request) (net.Conn, error) {
		switch r.Target.Port {
		case 401:
			return nil, &StatusError{Code: 401, Reason: "denied"}
		case 503:
			return nil, &StatusError{Code: 503, Reason: "unknown"}
		}
		a, b := net.Pipe()
		go func() { b.Write([]byte("upstream")); b.Close() }()
		return a, nil
	})}
	s.TLSConfig = &tls.Config{}
	s.init()
	f.Fuzz(func(t *testing.T, method, authority, hk, hv string, body []byte) {
		r := httptest.NewRequest("GET", "https://x/", bytes.NewReader(body))
		r.Method, r.Host, r.ProtoMajor, r.Proto = method, authority, 2, "HTTP/2.0"
		if hk != "" {
			r.Header[hk] = []string{hv}
		}
		r.TLS = &tls.ConnectionState{PeerCertificates: []*x509.Certificate{peer.Leaf}}
		w := httptest.NewRecorder()
		s.serveHTTP(w, r)
		switch w.Code {
		case http.StatusOK, http.StatusBadRequest, http.StatusUnauthorized, http.StatusServiceUnavailable:
		default:
			t.Fatalf("%s %q: status %d", method, authority, w.Code)
		}
		if w.Code == http.StatusOK && method != "CONNECT" {
			t.Fatalf("%s answered 200", method)
		}
	})
}
