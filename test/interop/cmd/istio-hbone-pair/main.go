// Command istio-hbone-pair runs upstream Istio's own Go HBONE
// (istio.io/istio/pkg/hbone) as a proxy pair, the benchmark's fourth path
// (`make bench`, row istio-hbone), beside stunnel:
//
//	istio-hbone-pair server -listen :15008 -ca CA -cert C -key K
//	    Istio's HBONE server (HTTP/2 CONNECT over TLS 1.3) requiring a
//	    client certificate from the trust domain; each CONNECT dials the
//	    target in its authority (host:port).
//	istio-hbone-pair client -server HOST:15008 -ca CA -cert C -key K \
//	    -expect spiffe://TD/ns/NS/sa/SA -forward LISTEN=TARGET ...
//	    for each TCP connection accepted on LISTEN, Istio's HBONE dialer
//	    opens a CONNECT stream to TARGET through the server (one pooled
//	    HTTP/2 connection, mutual TLS, the server's SPIFFE id checked) and
//	    copies both ways.
//
// The TLS profile is Ambit's (identity.ServerTLSConfig/ClientTLSConfig), so
// the pair is as strict as ztunnel's HBONE. It lives in the test/interop
// module so that istio.io/istio never enters the main module.
package main

import (
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strings"

	istiohbone "istio.io/istio/pkg/hbone"
	istiolog "istio.io/istio/pkg/log"

	"github.com/ambit-mesh/ambit/identity"
)

type forwards []string

func (f *forwards) String() string     { return strings.Join(*f, ",") }
func (f *forwards) Set(s string) error { *f = append(*f, s); return nil }

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: istio-hbone-pair server|client [flags]")
		os.Exit(2)
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	caPath := fs.String("ca", "", "trust bundle (PEM)")
	certPath := fs.String("cert", "", "certificate chain (PEM)")
	keyPath := fs.String("key", "", "private key (PEM)")
	listen := fs.String("listen", ":15008", "server: HBONE listen address")
	trustDomain := fs.String("trust-domain", "bench.local", "server: trust domain required of clients")
	server := fs.String("server", "", "client: HBONE server address")
	expect := fs.String("expect", "", "client: SPIFFE id the server must present")
	var fwd forwards
	fs.Var(&fwd, "forward", "client: LISTEN=TARGET (repeatable)")
	_ = fs.Parse(os.Args[2:])

	quiet()
	var err error
	switch os.Args[1] {
	case "server":
		err = runServer(*listen, *caPath, *certPath, *keyPath, *trustDomain)
	case "client":
		err = runClient(*server, *expect, *caPath, *certPath, *keyPath, fwd)
	default:
		err = fmt.Errorf("unknown mode %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "istio-hbone-pair:", err)
		os.Exit(1)
	}
}

// quiet turns Istio's hbone scope down to warnings: it logs every stream
// at info, which would be part of the measured path.
func quiet() {
	if s := istiolog.FindScope("hbone"); s != nil {
		s.SetOutputLevel(istiolog.WarnLevel)
	}
}

func load(caPath, certPath, keyPath string) (*tls.Certificate, *identity.Bundle, error) {
	cert, err := tls.LoadX509KeyPair(certPath, keyPath)
	if err != nil {
		return nil, nil, fmt.Errorf("loading %s: %w", certPath, err)
	}
	pemBytes, err := os.ReadFile(caPath)
	if err != nil {
		return nil, nil, fmt.Errorf("reading the bundle: %w", err)
	}
	b, err := identity.ParseBundle(pemBytes)
	if err != nil {
		return nil, nil, fmt.Errorf("parsing %s: %w", caPath, err)
	}
	return &cert, b, nil
}

func runServer(listen, caPath, certPath, keyPath, trustDomain string) error {
	cert, bundle, err := load(caPath, certPath, keyPath)
	if err != nil {
		return err
	}
	srv := istiohbone.NewServer()
	srv.Protocols.SetHTTP2(true) // Istio enables only HTTP/1 and h2c by default
	srv.TLSConfig = identity.ServerTLSConfig(identity.StaticCert(cert), identity.StaticBundle(bundle), trustDomain, nil)
	l, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("server: %w", err)
	}
	return fmt.Errorf("server: %w", srv.ServeTLS(l, "", ""))
}

func runClient(server, expect, caPath, certPath, keyPath string, fwd forwards) error {
	if server == "" || len(fwd) == 0 {
		return errors.New("client: -server and at least one -forward are required")
	}
	want, err := identity.ParseSPIFFE(expect)
	if err != nil {
		return fmt.Errorf("client: -expect: %w", err)
	}
	cert, bundle, err := load(caPath, certPath, keyPath)
	if err != nil {
		return err
	}
	d := istiohbone.NewDialer(istiohbone.Config{
		ProxyAddress: server,
		TLS:          identity.ClientTLSConfig(identity.StaticCert(cert), identity.StaticBundle(bundle), []identity.SPIFFE{want}, nil),
	})
	errc := make(chan error, len(fwd))
	for _, f := range fwd {
		listen, target, ok := strings.Cut(f, "=")
		if !ok {
			return fmt.Errorf("client: -forward %q: want LISTEN=TARGET", f)
		}
		l, err := net.Listen("tcp", listen)
		if err != nil {
			return fmt.Errorf("client: %w", err)
		}
		go func() { errc <- forward(l, target, d) }()
	}
	return <-errc
}

func forward(l net.Listener, target string, d istiohbone.Dialer) error {
	for {
		c, err := l.Accept()
		if err != nil {
			return fmt.Errorf("client: accept on %s: %w", l.Addr(), err)
		}
		go func() {
			defer c.Close()
			up, err := d.Dial("tcp", target)
			if err != nil {
				fmt.Fprintf(os.Stderr, "istio-hbone-pair: CONNECT %s: %v\n", target, err)
				return
			}
			defer up.Close()
			pipe(c, up)
		}()
	}
}

// pipe copies both ways and closes both ends once either direction ends
// (Istio's dialer returns a net.Pipe end, which has no half-close).
func pipe(a, b net.Conn) {
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		done <- struct{}{}
	}
	go cp(a, b)
	go cp(b, a)
	<-done
	a.Close()
	b.Close()
	<-done
}
