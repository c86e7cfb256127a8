package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/identity"
)

// TestPair runs the pair on loopback: bytes cross it through a real CONNECT
// over mutual TLS, a client without a certificate is refused, and a client
// expecting another identity refuses the server.
func TestPair(t *testing.T) {
	quiet()
	dir := t.TempDir()
	auth, err := identity.NewRootAuthority("bench.local", time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	ca := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(ca, identity.EncodeCerts(auth.Root()), 0o644); err != nil {
		t.Fatal(err)
	}
	issue := func(name, sa string) (string, string) {
		c, err := auth.IssueTLS(identity.SPIFFE{TrustDomain: "bench.local", Namespace: "plain", ServiceAccount: sa}, time.Hour, time.Now(), nil)
		if err != nil {
			t.Fatal(err)
		}
		var chain []byte
		for _, der := range c.Certificate {
			chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
		}
		key, err := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
		if err != nil {
			t.Fatal(err)
		}
		cp, kp := filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
		if err := os.WriteFile(cp, chain, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(kp, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: key}), 0o600); err != nil {
			t.Fatal(err)
		}
		return cp, kp
	}
	sc, sk := issue("server", "server")
	cc, ck := issue("client", "client")

	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	go func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	srvAddr := freeAddr(t)
	go func() { t.Log(runServer(srvAddr, ca, sc, sk, "bench.local")) }()
	good, wrong := freeAddr(t), freeAddr(t)
	go func() {
		t.Log(runClient(srvAddr, "spiffe://bench.local/ns/plain/sa/server", ca, cc, ck, forwards{good + "=" + echo.Addr().String()}))
	}()
	go func() {
		t.Log(runClient(srvAddr, "spiffe://bench.local/ns/plain/sa/impostor", ca, cc, ck, forwards{wrong + "=" + echo.Addr().String()}))
	}()
	time.Sleep(300 * time.Millisecond)

	if got := roundTrip(t, good); got != "ping" {
		t.Fatalf("through the pair: got %q, want ping", got)
	}
	if got := roundTrip(t, wrong); got != "" {
		t.Fatalf("client expecting another server identity passed %q", got)
	}
	// No client certificate: the TLS handshake (or the first read) fails.
	conn, err := tls.Dial("tcp", srvAddr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}, MinVersion: tls.VersionTLS13})
	if err == nil {
		conn.SetDeadline(time.Now().Add(2 * time.Second))
		_, err = conn.Read(make([]byte, 1))
		conn.Close()
	}
	if err == nil {
		t.Fatal("server accepted a client without a certificate")
	}
}

func roundTrip(t *testing.T, addr string) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := io.WriteString(c, "ping"); err != nil {
		return ""
	}
	b := make([]byte, 4)
	n, _ := io.ReadFull(c, b)
	return string(b[:n])
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
