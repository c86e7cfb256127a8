// Package cpconn opens a proxy's gRPC connection to the control plane (CA
// and xDS on one port) with the credential in a directory: cert-chain.pem
// and key.pem (the client certificate), root-cert.pem (the control plane's
// root). ztunnel and the waypoint both connect this way.
package cpconn

import (
	"crypto/tls"
	"fmt"
	"os"
	"path/filepath"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/ambit-mesh/ambit/identity"
)

// Dial returns a client connection to the control plane at addr, which
// must prove the control plane's identity in trustDomain.
func Dial(addr, credDir, trustDomain string) (*grpc.ClientConn, error) {
	cred, err := tls.LoadX509KeyPair(filepath.Join(credDir, "cert-chain.pem"), filepath.Join(credDir, "key.pem"))
	if err != nil {
		return nil, fmt.Errorf("credential in %s: %w", credDir, err)
	}
	rootPEM, err := os.ReadFile(filepath.Join(credDir, "root-cert.pem"))
	if err != nil {
		return nil, fmt.Errorf("control plane root: %w", err)
	}
	roots, err := identity.ParseBundle(rootPEM)
	if err != nil {
		return nil, fmt.Errorf("control plane root: %w", err)
	}
	conf := identity.ClientTLSConfig(func() (*tls.Certificate, error) { return &cred, nil },
		func() *identity.Bundle { return roots }, []identity.SPIFFE{identity.ControlPlane(trustDomain)}, nil)
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(conf)))
	if err != nil {
		return nil, fmt.Errorf("control plane %s: %w", addr, err)
	}
	return conn, nil
}
