// Package hbone implements HBONE, the ambient mesh's tunnel: one HTTP/2
// CONNECT stream per proxied TCP connection, over mutual TLS 1.3 (ALPN h2,
// no SNI, no resumption) on port 15008, wire-compatible with Istio's
// ztunnel and its Go HBONE package.
//
// Server accepts connections, checks each CONNECT in upstream's order and
// hands it to a caller-supplied Handler, in the manner of net/http: the
// handler authorizes it and either refuses it with one of upstream's
// status codes (400, 401, 503) or accepts it (200) and gets the stream as
// a net.Conn with half-close (CloseWrite sends END_STREAM), resets and
// deadlines, to relay as it sees fit; the server drains with GOAWAY. Pool
// is the client: it multiplexes up to 100 streams per connection among
// user connections that share source identity, expected destination
// identities and destination address, verifies the server's identity,
// keeps connections alive with PINGs and releases idle ones.
//
// The HTTP/2 layer is our own (HPACK comes from golang.org/x/net): it
// implements the parts of RFC 9113 a CONNECT tunnel uses, with upstream's
// settings (4 MiB stream and 16 MiB connection windows, 1 MiB frames).
// Stream owners write their DATA frames themselves (no writer goroutine in
// between), one reader per connection reads payloads straight into stream
// buffers, and io.Copy takes WriteTo/ReadFrom fast paths. TLS
// configurations come from the caller (see package identity); the package
// pins HBONE's TLS profile on a copy of them.
package hbone
