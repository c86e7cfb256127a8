// Package interop proves Ambit's HBONE is wire-compatible with upstream
// Istio's: Istio's own Go HBONE dialer tunnels through Ambit's server, and
// Ambit's client tunnels through Istio's server, with certificates that
// Ambit's CA issued through its real gRPC API (a node proxy impersonating
// workloads on its node). It is a separate module so that istio.io/istio
// never enters the main module.
package interop

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"

	securityapi "istio.io/api/security/v1alpha1"
	istiohbone "istio.io/istio/pkg/hbone"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambit-mesh/ambit/controlplane"
	"github.com/ambit-mesh/ambit/controlplane/ca"
	"github.com/ambit-mesh/ambit/hbone"
	"github.com/ambit-mesh/ambit/identity"
	"github.com/ambit-mesh/ambit/identity/caclient"
)

type pods []*corev1.Pod

func (p pods) Pods() []*corev1.Pod { return p }

// certs runs Ambit's CA on loopback and fetches workload certificates for
// demo/client and demo/echo as node1's proxy would.
func certs(t *testing.T) (client, server *caclient.Cert) {
	t.Helper()
	auth, err := identity.NewRootAuthority("cluster.local", 24*time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	podList := pods{
		{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "client"}, Spec: corev1.PodSpec{NodeName: "node1", ServiceAccountName: "client"}},
		{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "echo"}, Spec: corev1.PodSpec{NodeName: "node1", ServiceAccountName: "echo"}},
	}
	srv, err := ca.NewServer(auth, ca.Options{TrustDomain: "cluster.local",
		Pods: controlplane.PodIndex{Snapshot: func() controlplane.PodLister { return podList }}})
	if err != nil {
		t.Fatal(err)
	}
	serving, err := auth.IssueTLS(identity.ControlPlane("cluster.local"), time.Hour, time.Now(), nil)
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(ca.ServerTLSConfig(serving))))
	srv.Register(g)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(l)
	t.Cleanup(g.Stop)

	nodeCred, err := ca.IssueNodeCredential(auth, "cluster.local", "node1", time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	bundle := srv.Bundle()
	conn, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(identity.ClientTLSConfig(
		func() (*tls.Certificate, error) { return nodeCred, nil }, func() *identity.Bundle { return bundle },
		[]identity.SPIFFE{identity.ControlPlane("cluster.local")}, nil))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	m := caclient.NewManager(&caclient.GRPCFetcher{Client: securityapi.NewIstioCertificateServiceClient(conn), Impersonate: true}, nil, nil)
	t.Cleanup(m.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	client, err = m.Get(ctx, identity.SPIFFE{TrustDomain: "cluster.local", Namespace: "demo", ServiceAccount: "client"})
	if err != nil {
		t.Fatal(err)
	}
	server, err = m.Get(ctx, identity.SPIFFE{TrustDomain: "cluster.local", Namespace: "demo", ServiceAccount: "echo"})
	if err != nil {
		t.Fatal(err)
	}
	return client, server
}

// echoServer is the application behind the tunnel.
func echoServer(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	return l.Addr().String()
}

func serverTLS(c *caclient.Cert) *tls.Config {
	return identity.ServerTLSConfig(func() (*tls.Certificate, error) { return c.TLS, nil }, func() *identity.Bundle { return c.Bundle }, "cluster.local", nil)
}

func clientTLS(c *caclient.Cert, expect identity.SPIFFE) *tls.Config {
	return identity.ClientTLSConfig(func() (*tls.Certificate, error) { return c.TLS, nil }, func() *identity.Bundle { return c.Bundle }, []identity.SPIFFE{expect}, nil)
}

// exchange sends lines and checks they come back, plus a large payload.
func exchange(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	r := bufio.NewReader(c)
	for i := 0; i < 3; i++ {
		msg := fmt.Sprintf("interop line %d\n", i)
		if _, err := io.WriteString(c, msg); err != nil {
			t.Fatalf("write: %v", err)
		}
		got, err := r.ReadString('\n')
		if err != nil || got != msg {
			t.Fatalf("echo %q, %v; want %q", got, err, msg)
		}
	}
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	go c.Write(big)
	got := make([]byte, len(big))
	if _, err := io.ReadFull(r, got); err != nil || !bytes.Equal(got, big) {
		t.Fatalf("1 MiB payload: %v", err)
	}
}

// TestIstioClientToAmbitServer: istio.io/istio/pkg/hbone's dialer through
// Ambit's hbone.Server.
func TestIstioClientToAmbitServer(t *testing.T) {
	client, server := certs(t)
	echo := echoServer(t)
	seen := make(chan identity.SPIFFE, 1)
	srv := &hbone.Server{TLSConfig: serverTLS(server), Handler: hbone.HandlerFunc(func(ctx context.Context, r *hbone.Request) {
		seen <- r.Peer
		up, err := (&net.Dialer{}).DialContext(ctx, "tcp", r.Target.String())
		if err != nil {
			r.Refuse(http.StatusServiceUnavailable, err.Error())
			return
		}
		defer up.Close()
		c, err := r.Accept(nil)
		if err != nil {
			return
		}
		relay(c, up)
	})}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })

	d := istiohbone.NewDialer(istiohbone.Config{ProxyAddress: l.Addr().String(), TLS: clientTLS(client, server.ID)})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", echo)
	if err != nil {
		t.Fatalf("Istio's dialer through Ambit's server: %v", err)
	}
	defer c.Close()
	if got := <-seen; got != client.ID {
		t.Errorf("Ambit's server saw peer %v, want %v", got, client.ID)
	}
	exchange(t, c)
}

// relay copies both ways between an accepted stream and its upstream with
// half-close (END_STREAM becomes CloseWrite and EOF becomes END_STREAM);
// an error either way aborts both.
func relay(c *hbone.Conn, up net.Conn) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		if _, err := io.Copy(up, c); err == nil {
			up.(*net.TCPConn).CloseWrite()
			return
		}
		up.Close()
	}()
	if _, err := io.Copy(c, up); err == nil {
		c.CloseWrite()
	} else {
		c.Close()
	}
	<-done
}

// TestAmbitClientToIstioServer: Ambit's hbone.Pool through
// istio.io/istio/pkg/hbone's server.
func TestAmbitClientToIstioServer(t *testing.T) {
	client, server := certs(t)
	echo := echoServer(t)
	srv := istiohbone.NewServer()
	srv.Protocols.SetHTTP2(true) // Istio's server enables only HTTP/1 and h2c by default
	srv.TLSConfig = serverTLS(server)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.ServeTLS(l, "", "")
	t.Cleanup(func() { srv.Close() })

	pool := &hbone.Pool{TLSConfig: func(context.Context, hbone.Key) (*tls.Config, error) { return clientTLS(client, server.ID), nil }}
	t.Cleanup(pool.Close)
	key := hbone.Key{Src: client.ID, Dst: []identity.SPIFFE{server.ID}, DstAddr: netip.MustParseAddrPort(l.Addr().String())}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pool.Dial(ctx, key, echo, nil)
	if err != nil {
		t.Fatalf("Ambit's client through Istio's server: %v", err)
	}
	defer c.Close()
	if c.Peer != server.ID {
		t.Errorf("Ambit's client saw server %v, want %v", c.Peer, server.ID)
	}
	exchange(t, c)

	// The first bytes sent with the CONNECT (what ztunnel does for a
	// client-first app) reach the target through Istio's server too.
	ce, err := pool.DialEarly(ctx, key, echo, nil, []byte("early line\n"))
	if err != nil {
		t.Fatalf("DialEarly through Istio's server: %v", err)
	}
	defer ce.Close()
	ce.SetDeadline(time.Now().Add(10 * time.Second))
	if got, err := bufio.NewReader(ce).ReadString('\n'); err != nil || got != "early line\n" {
		t.Fatalf("early bytes through Istio's server: echo %q, %v", got, err)
	}

	// A wrong expected identity is refused against Istio's server too.
	bad := key
	bad.Dst = []identity.SPIFFE{{TrustDomain: "cluster.local", Namespace: "demo", ServiceAccount: "impostor"}}
	pool2 := &hbone.Pool{TLSConfig: func(_ context.Context, k hbone.Key) (*tls.Config, error) { return clientTLS(client, k.Dst[0]), nil }}
	t.Cleanup(pool2.Close)
	if _, err := pool2.Dial(ctx, bad, echo, nil); err == nil {
		t.Error("dial with the wrong expected server identity succeeded")
	}
}
