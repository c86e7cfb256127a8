// Package cpconn opens a proxy's gRPC connection to the control plane (CA
// and xDS; one port on Ambit's control plane and on istiod), the way
// Istio's ztunnel does, so that ztunnel and the waypoint run against either:
//
//   - the server is verified against the mesh root (root-cert.pem, re-read
//     when it changes) by DNS name: istiod.istio-system.svc unless the
//     address or an override names another (ServerName);
//   - the caller proves who it is with a client certificate (local mode: a
//     credential directory with cert-chain.pem and key.pem) and/or a
//     service-account token (Kubernetes: a projected token, audience
//     istio-ca), sent as "authorization: Bearer <token>" on every call and
//     stream, re-read from its file when the kubelet rotates it;
//   - every call carries the "clusterid" header.
//
// Node describes the proxy to xDS: Istio's four-part node id and node
// metadata.
package cpconn

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/ambit-mesh/ambit/identity"
)

// Defaults, as Istio's ztunnel and its Helm chart.
const (
	// DefaultServerName is the DNS name the control plane's certificate
	// is verified for when the address does not name one (istiod's).
	DefaultServerName = "istiod.istio-system.svc"
	// DefaultRootCert is where the istio-ca-root-cert ConfigMap is mounted.
	DefaultRootCert = "/var/run/secrets/istio/root-cert.pem"
	// DefaultTokenFile is where the projected istio-ca token is mounted.
	DefaultTokenFile = "/var/run/secrets/tokens/istio-token"
	// DefaultClusterID is the cluster id when none is configured.
	DefaultClusterID = "Kubernetes"
)

// Options say how to reach and authenticate to the control plane.
type Options struct {
	// Addr is host:port (an https:// prefix, as in Istio's XDS_ADDRESS and
	// CA_ADDRESS, is accepted).
	Addr string
	// CredDir, if set, holds the client certificate (cert-chain.pem,
	// key.pem) and, by default, the mesh root (root-cert.pem).
	CredDir string
	// RootCert is the mesh root's PEM file (default: CredDir/root-cert.pem,
	// or DefaultRootCert without CredDir).
	RootCert string
	// TokenFile, if set, is the service-account token to send.
	TokenFile string
	// ClusterID is sent in the clusterid header (default DefaultClusterID).
	ClusterID string
	// ServerName overrides the DNS name the server is verified for (see
	// ServerName).
	ServerName string
}

// ServerName is the DNS name a control plane at addr is verified for, as
// Istio's ztunnel: override if set, else the address's host, except that an
// IP address (which istiod's certificate never carries) means
// DefaultServerName.
func ServerName(addr, override string) string {
	if override != "" {
		return override
	}
	host := trimScheme(addr)
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.Trim(host, "[]"), ".")
	if _, err := netip.ParseAddr(host); err == nil || host == "" {
		return DefaultServerName
	}
	return host
}

func trimScheme(addr string) string {
	for _, p := range []string{"https://", "http://"} {
		if strings.HasPrefix(addr, p) {
			return strings.TrimSuffix(strings.TrimPrefix(addr, p), "/")
		}
	}
	return addr
}

// Dial returns a client connection to the control plane.
func Dial(o Options) (*grpc.ClientConn, error) {
	if o.Addr == "" {
		return nil, errors.New("control plane address required")
	}
	if o.CredDir == "" && o.TokenFile == "" {
		return nil, errors.New("control plane: a credential directory or a token file is required")
	}
	var cert *tls.Certificate
	if o.CredDir != "" {
		c, err := tls.LoadX509KeyPair(filepath.Join(o.CredDir, "cert-chain.pem"), filepath.Join(o.CredDir, "key.pem"))
		if err != nil {
			return nil, fmt.Errorf("credential in %s: %w", o.CredDir, err)
		}
		cert = &c
	}
	rootPath := o.RootCert
	if rootPath == "" {
		rootPath = DefaultRootCert
		if o.CredDir != "" {
			rootPath = filepath.Join(o.CredDir, "root-cert.pem")
		}
	}
	roots := &rootFile{file: newWatchedFile(rootPath)}
	if _, err := roots.bundle(); err != nil {
		return nil, fmt.Errorf("control plane root: %w", err)
	}
	name := ServerName(o.Addr, o.ServerName)
	conf := clientTLS(name, cert, roots)
	clusterID := o.ClusterID
	if clusterID == "" {
		clusterID = DefaultClusterID
	}
	creds := &callCreds{clusterID: clusterID}
	if o.TokenFile != "" {
		creds.token = newWatchedFile(o.TokenFile)
		if _, err := creds.readToken(); err != nil {
			return nil, err
		}
	}
	conn, err := grpc.NewClient(trimScheme(o.Addr), grpc.WithTransportCredentials(credentials.NewTLS(conf)), grpc.WithPerRPCCredentials(creds))
	if err != nil {
		return nil, fmt.Errorf("control plane %s: %w", o.Addr, err)
	}
	return conn, nil
}

// clientTLS verifies the server's chain against the roots in force at each
// handshake, for DNS name name, and presents cert (nil: none).
func clientTLS(name string, cert *tls.Certificate, roots *rootFile) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		ServerName: name, // SNI, as Istio's ztunnel sends
		// Verified below against the live roots (the file may rotate), not
		// the fixed pool crypto/tls would need.
		InsecureSkipVerify: true,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			if cert == nil {
				return &tls.Certificate{}, nil // none: the server decides by token
			}
			return cert, nil
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("control plane presented no certificate")
			}
			b, err := roots.bundle()
			if err != nil {
				return fmt.Errorf("control plane root: %w", err)
			}
			inter := x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				inter.AddCert(c)
			}
			if _, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: b.Pool(), Intermediates: inter,
				DNSName: name, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
				return fmt.Errorf("control plane certificate (want DNS name %s from the mesh root): %w", name, err)
			}
			return nil
		},
	}
}

// callCreds adds the clusterid header and, with a token file, the bearer
// token to every call and stream.
type callCreds struct {
	clusterID string
	token     *watchedFile
}

func (c *callCreds) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	md := map[string]string{"clusterid": c.clusterID}
	if c.token != nil {
		tok, err := c.readToken()
		if err != nil {
			return nil, status.Error(codes.Unauthenticated, err.Error())
		}
		md["authorization"] = "Bearer " + tok
	}
	return md, nil
}

func (c *callCreds) RequireTransportSecurity() bool { return true }

func (c *callCreds) readToken() (string, error) {
	b, err := c.token.read()
	if err != nil {
		return "", fmt.Errorf("token: %w", err)
	}
	tok := string(bytes.TrimSpace(b))
	if tok == "" {
		return "", fmt.Errorf("token file %s is empty", c.token.path)
	}
	return tok, nil
}

// rootFile is the mesh root bundle from a PEM file, parsed again when the
// file changes; a change that does not parse keeps the last good bundle.
type rootFile struct {
	file *watchedFile

	mu     sync.Mutex
	parsed []byte
	b      *identity.Bundle
}

func (r *rootFile) bundle() (*identity.Bundle, error) {
	data, err := r.file.read()
	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil {
		if r.b != nil {
			return r.b, nil // e.g. mid-rotation: keep trusting what we had
		}
		return nil, err
	}
	if r.b != nil && bytes.Equal(data, r.parsed) {
		return r.b, nil
	}
	b, err := identity.ParseBundle(data)
	if err != nil {
		if r.b != nil {
			return r.b, nil
		}
		return nil, fmt.Errorf("%s: %w", r.file.path, err)
	}
	r.parsed, r.b = data, b
	return b, nil
}

// watchedFile caches a small file's content and reads it again only when
// stat says it changed (another inode, as after the kubelet's atomic
// symlink swap, or another size or modification time).
type watchedFile struct {
	path string

	mu   sync.Mutex
	key  fileKey
	data []byte
}

type fileKey struct {
	dev, ino uint64
	size     int64
	mtime    time.Time
}

func newWatchedFile(path string) *watchedFile { return &watchedFile{path: path} }

func (f *watchedFile) read() ([]byte, error) {
	fi, err := os.Stat(f.path) // follows the symlinks to the current file
	if err != nil {
		return nil, err
	}
	k := fileKey{size: fi.Size(), mtime: fi.ModTime()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		k.dev, k.ino = uint64(st.Dev), st.Ino
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.data != nil && k == f.key {
		return f.data, nil
	}
	data, err := os.ReadFile(f.path)
	if err != nil {
		return nil, err
	}
	f.key, f.data = k, data
	return data, nil
}
