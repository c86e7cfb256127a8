package cpconn

import (
	"context"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	securityapi "istio.io/api/security/v1alpha1"

	"github.com/ambit-mesh/ambit/controlplane"
	"github.com/ambit-mesh/ambit/controlplane/ca"
	"github.com/ambit-mesh/ambit/controlplane/xds"
	"github.com/ambit-mesh/ambit/identity"
	"github.com/ambit-mesh/ambit/identity/caclient"
)

func TestServerName(t *testing.T) {
	tests := []struct{ addr, override, want string }{
		{"istiod.istio-system.svc:15012", "", "istiod.istio-system.svc"},
		{"https://istiod-canary.istio-system.svc:15012", "", "istiod-canary.istio-system.svc"},
		{"https://istiod.istio-system.svc:15012/", "", "istiod.istio-system.svc"},
		{"istiod.istio-system.svc.:15012", "", "istiod.istio-system.svc"},
		{"10.0.0.1:15012", "", DefaultServerName},
		{"[fd00::1]:15012", "", DefaultServerName},
		{"127.0.0.1:15012", "cp.example.com", "cp.example.com"},
		{"cp.example.com:15012", "istiod.istio-system.svc", "istiod.istio-system.svc"},
		{"", "", DefaultServerName},
	}
	for _, tc := range tests {
		if got := ServerName(tc.addr, tc.override); got != tc.want {
			t.Errorf("ServerName(%q, %q) = %q, want %q", tc.addr, tc.override, got, tc.want)
		}
	}
}

func TestNode(t *testing.T) {
	zt := Node{Type: "ztunnel", PodName: "ztunnel-x7k2p", PodNamespace: "istio-system", PodIP: "10.244.1.5", NodeName: "node-a",
		ServiceAccount: "ztunnel", ClusterID: "Kubernetes", Legacy: "ztunnel~node-a"}
	wp := Node{Type: "waypoint", PodName: "waypoint-5d9f", PodNamespace: "demo", PodIP: "fd00::5", DNSDomain: "demo.svc.example.org", Legacy: "waypoint~demo~waypoint~node-a"}
	local := Node{Type: "ztunnel", NodeName: "node1", ClusterID: "Kubernetes", Legacy: "ztunnel~node1"}
	tests := []struct {
		name    string
		n       Node
		wantID  string
		wantErr string
	}{
		{"ztunnel on Kubernetes", zt, "ztunnel~10.244.1.5~ztunnel-x7k2p.istio-system~istio-system.svc.cluster.local", ""},
		{"waypoint", wp, "waypoint~fd00::5~waypoint-5d9f.demo~demo.svc.example.org", ""},
		{"local mode keeps its id", local, "ztunnel~node1", ""},
		{"pod without IP", Node{Type: "ztunnel", PodName: "z", PodNamespace: "istio-system"}, "", "valid pod IP"},
		{"pod with a bad IP", Node{Type: "ztunnel", PodName: "z", PodNamespace: "istio-system", PodIP: "node-a"}, "", "valid pod IP"},
		{"pod without namespace", Node{Type: "ztunnel", PodName: "z", PodIP: "10.0.0.1"}, "", "pod namespace"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.n.Validate()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Validate: %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := tc.n.ID(); got != tc.wantID {
				t.Errorf("ID %q, want %q", got, tc.wantID)
			}
			// istiod splits the id in four at "~" and needs a valid IP in
			// the second part.
			if tc.n.PodName != "" {
				parts := strings.Split(tc.n.ID(), "~")
				if len(parts) != 4 || parts[0] != tc.n.Type {
					t.Errorf("id %q: %d parts", tc.n.ID(), len(parts))
				}
				if _, err := netip.ParseAddr(parts[1]); err != nil {
					t.Errorf("id %q: %v", tc.n.ID(), err)
				}
			}
		})
	}

	md := zt.Metadata([]string{"ISTIO_META_DNS_CAPTURE=true", "ISTIO_META_NAME=overridden-by-flag", "OTHER=x", "ISTIO_META_=empty"}).AsMap()
	want := map[string]any{"NAME": "ztunnel-x7k2p", "NAMESPACE": "istio-system", "INSTANCE_IPS": "10.244.1.5", "NODE_NAME": "node-a",
		"SERVICE_ACCOUNT": "ztunnel", "CLUSTER_ID": "Kubernetes", "DNS_CAPTURE": "true"}
	for k, v := range want {
		if md[k] != v {
			t.Errorf("metadata %s = %v, want %v", k, md[k], v)
		}
	}
	// Test binaries carry no module versions; real builds do (see
	// TestIstioVersionOfABuild).
	if v, _ := md["ISTIO_VERSION"].(string); v != IstioVersion() {
		t.Errorf("ISTIO_VERSION %q, want %q", v, IstioVersion())
	}
	if _, ok := md["OTHER"]; ok {
		t.Error("an environment variable without ISTIO_META_ became metadata")
	}
	if _, ok := md[""]; ok {
		t.Error("empty metadata key")
	}
	if md := local.Metadata(nil).AsMap(); md["NAME"] != nil || md["NODE_NAME"] != "node1" || md["SERVICE_ACCOUNT"] != nil {
		t.Errorf("local-mode metadata %v", md)
	}
}

// kubeletDir writes files the way the kubelet's atomic writer does:
// dir/<name> -> ..data/<name>, ..data -> ..<timestamp>, swapped by rename.
type kubeletDir struct {
	t   *testing.T
	dir string
	n   int
}

func newKubeletDir(t *testing.T) *kubeletDir { return &kubeletDir{t: t, dir: t.TempDir()} }

func (k *kubeletDir) write(name, content string) string {
	k.t.Helper()
	k.n++
	ts := filepath.Join(k.dir, "..2026_12_01_00_00_0"+string(rune('0'+k.n)))
	if err := os.Mkdir(ts, 0o755); err != nil {
		k.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(ts, name), []byte(content), 0o600); err != nil {
		k.t.Fatal(err)
	}
	old, _ := os.Readlink(filepath.Join(k.dir, "..data"))
	tmp := filepath.Join(k.dir, "..data_tmp")
	if err := os.Symlink(filepath.Base(ts), tmp); err != nil {
		k.t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(k.dir, "..data")); err != nil {
		k.t.Fatal(err)
	}
	link := filepath.Join(k.dir, name)
	if _, err := os.Lstat(link); err != nil {
		if err := os.Symlink(filepath.Join("..data", name), link); err != nil {
			k.t.Fatal(err)
		}
	}
	if old != "" {
		_ = os.RemoveAll(filepath.Join(k.dir, old))
	}
	return link
}

func TestWatchedFileFollowsKubeletSwap(t *testing.T) {
	k := newKubeletDir(t)
	path := k.write("token", "one")
	f := newWatchedFile(path)
	for i, want := range []string{"one", "one"} {
		if b, err := f.read(); err != nil || string(b) != want {
			t.Fatalf("read %d: %q %v, want %q", i, b, err, want)
		}
	}
	k.write("token", "two") // same size, maybe same mtime: another inode
	if b, err := f.read(); err != nil || string(b) != "two" {
		t.Fatalf("after the swap: %q %v", b, err)
	}
	// In place (same inode, other size), as a plain file rewritten.
	plain := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(plain, []byte("a"), 0o600); err != nil {
		t.Fatal(err)
	}
	g := newWatchedFile(plain)
	if b, _ := g.read(); string(b) != "a" {
		t.Fatal(string(b))
	}
	if err := os.WriteFile(plain, []byte("bb"), 0o600); err != nil {
		t.Fatal(err)
	}
	if b, _ := g.read(); string(b) != "bb" {
		t.Fatalf("rewritten in place: %q", b)
	}
	if err := os.Remove(plain); err != nil {
		t.Fatal(err)
	}
	if _, err := g.read(); err == nil {
		t.Error("a removed file still reads")
	}
}

// fakeTokens authenticates tokens of the form "<ns>/<sa>[#n]" and records
// what it saw.
type fakeTokens struct {
	mu   sync.Mutex
	seen []string // token|clusterid
}

func (f *fakeTokens) AuthenticateToken(_ context.Context, token, clusterID string) (*ca.TokenCaller, error) {
	f.mu.Lock()
	f.seen = append(f.seen, token+"|"+clusterID)
	f.mu.Unlock()
	id, _, _ := strings.Cut(token, "#")
	ns, sa, ok := strings.Cut(id, "/")
	if !ok {
		return nil, status.Error(codes.Unauthenticated, "token refused by the API server: invalid bearer token")
	}
	return &ca.TokenCaller{Namespace: ns, ServiceAccount: sa, ClusterID: clusterID}, nil
}

func (f *fakeTokens) CallerNode(context.Context, *ca.TokenCaller) (string, error) {
	return "", status.Error(codes.PermissionDenied, "no pods here")
}

func (f *fakeTokens) tokens() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.seen...)
}

type testCP struct {
	cp   *controlplane.ControlPlane
	auth *identity.Authority
	addr string
	dir  string // node credential of node1 (local mode)
}

// startCP runs Ambit's control plane on loopback as `ambit controlplane`
// does, with tokens reviewed by tokens (nil: local mode).
func startCP(t *testing.T, tokens ca.TokenAuthenticator) *testCP {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	auth, err := identity.NewRootAuthority("cluster.local", 24*time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	o := controlplane.Options{Authority: auth, TrustDomain: "cluster.local"}
	if tokens != nil {
		o.Tokens = tokens
	}
	cp, err := controlplane.New(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = cp.Run(ctx) }()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = cp.Serve(l) }()
	t.Cleanup(func() { cp.Stop(false) })
	dir := t.TempDir()
	cred, err := ca.IssueNodeCredential(auth, "cluster.local", "node1", time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := ca.WriteCredential(dir, cred, auth.Root()); err != nil {
		t.Fatal(err)
	}
	return &testCP{cp: cp, auth: auth, addr: l.Addr().String(), dir: dir}
}

// watch opens a delta stream as ztunnel does and waits for the first
// response (nil) or the refusal; whileOpen (if any) runs before the
// stream closes.
func watch(t *testing.T, conn *grpc.ClientConn, node *corev3.Node, whileOpen ...func()) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := discovery.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		return err
	}
	// A refused stream may already be closed when we send (io.EOF): its
	// status comes with Recv.
	if err := st.Send(&discovery.DeltaDiscoveryRequest{Node: node, TypeUrl: xds.AddressType, ResourceNamesSubscribe: []string{"*"}}); err != nil && err != io.EOF {
		return err
	}
	if _, err := st.Recv(); err != nil {
		return err
	}
	for _, f := range whileOpen {
		f()
	}
	return nil
}

// renew asks the CA for id (own identity, no impersonation unless imp).
func renew(conn *grpc.ClientConn, id identity.SPIFFE, imp bool) error {
	key, _ := identity.NewKey()
	csr, _ := identity.NewCSR(key, id)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := (&caclient.GRPCFetcher{Client: securityapi.NewIstioCertificateServiceClient(conn), Impersonate: imp}).Fetch(ctx, id, csr)
	return err
}

// TestLocalMode: with a node credential and Ambit's control plane at an
// IP address, nothing changes: the server verifies as
// istiod.istio-system.svc, xDS and the CA admit the node.
func TestLocalMode(t *testing.T) {
	cp := startCP(t, nil)
	conn, err := Dial(Options{Addr: cp.addr, CredDir: cp.dir})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	node := Node{Type: "ztunnel", NodeName: "node1", Legacy: "ztunnel~node1"}
	if err := watch(t, conn, &corev3.Node{Id: node.ID(), Metadata: node.Metadata(nil)}, func() {
		if ps := cp.cp.XDS.Proxies(); len(ps) != 1 || ps[0].Node != "ztunnel~node1" {
			t.Errorf("proxies %+v, want node id ztunnel~node1", ps)
		}
	}); err != nil {
		t.Fatalf("xDS: %v", err)
	}
	if err := renew(conn, ca.NodeProxyIdentity("cluster.local"), false); err != nil {
		t.Fatalf("CA: %v", err)
	}
}

// TestVerifiesServerName: the control plane must prove the DNS name, from
// the mesh root.
func TestVerifiesServerName(t *testing.T) {
	cp := startCP(t, nil)
	for _, name := range []string{"istiod-remote.istio-system.svc", "istio-pilot.istio-system.svc"} {
		conn, err := Dial(Options{Addr: cp.addr, CredDir: cp.dir, ServerName: name})
		if err != nil {
			t.Fatal(err)
		}
		if err := renew(conn, ca.NodeProxyIdentity("cluster.local"), false); err != nil {
			t.Errorf("%s: %v", name, err)
		}
		conn.Close()
	}
	conn, err := Dial(Options{Addr: cp.addr, CredDir: cp.dir, ServerName: "evil.example.com"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := renew(conn, ca.NodeProxyIdentity("cluster.local"), false); status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "want DNS name evil.example.com") {
		t.Errorf("wrong name: %v", err)
	}
	// Another mesh's root does not verify the control plane.
	other, err := identity.NewRootAuthority("cluster.local", time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	rootFile := filepath.Join(t.TempDir(), "root-cert.pem")
	if err := os.WriteFile(rootFile, identity.EncodeCerts(other.Root()), 0o644); err != nil {
		t.Fatal(err)
	}
	conn2, err := Dial(Options{Addr: cp.addr, CredDir: cp.dir, RootCert: rootFile})
	if err != nil {
		t.Fatal(err)
	}
	defer conn2.Close()
	if err := renew(conn2, ca.NodeProxyIdentity("cluster.local"), false); status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "unknown authority") {
		t.Errorf("other root: %v", err)
	}
	// A server certificate without the DNS names (what Ambit served
	// before) is refused too.
	serving, err := cp.auth.IssueTLS(identity.ControlPlane("cluster.local"), time.Hour, time.Now(), nil)
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(ca.ServerTLSConfig(serving))))
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = g.Serve(l) }()
	defer g.Stop()
	conn3, err := Dial(Options{Addr: l.Addr().String(), CredDir: cp.dir})
	if err != nil {
		t.Fatal(err)
	}
	defer conn3.Close()
	if err := renew(conn3, ca.NodeProxyIdentity("cluster.local"), false); status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "istiod.istio-system.svc") {
		t.Errorf("certificate without DNS names: %v", err)
	}
}

// TestTokenMode: the token (and clusterid) go with every xDS stream and CA
// call, and a rotated token is used from the next call on.
func TestTokenMode(t *testing.T) {
	toks := &fakeTokens{}
	cp := startCP(t, toks)
	k := newKubeletDir(t)
	tokenPath := k.write("istio-token", "istio-system/ztunnel#1")
	// The root from the istio-ca-root-cert ConfigMap, without a credential.
	rootPath := newKubeletDir(t).write("root-cert.pem", string(identity.EncodeCerts(cp.auth.Root())))
	conn, err := Dial(Options{Addr: cp.addr, TokenFile: tokenPath, RootCert: rootPath, ClusterID: "east"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	self := Node{Type: "ztunnel", PodName: "ztunnel-a", PodNamespace: "istio-system", PodIP: "10.0.0.9", NodeName: "node-a", ServiceAccount: "ztunnel", ClusterID: "east"}
	if err := watch(t, conn, &corev3.Node{Id: self.ID(), Metadata: self.Metadata(nil)}); err != nil {
		t.Fatalf("xDS: %v", err)
	}
	zt := identity.SPIFFE{TrustDomain: "cluster.local", Namespace: "istio-system", ServiceAccount: "ztunnel"}
	if err := renew(conn, zt, false); err != nil {
		t.Fatalf("CA: %v", err)
	}
	k.write("istio-token", "istio-system/ztunnel#2")
	if err := renew(conn, zt, false); err != nil {
		t.Fatalf("CA after rotation: %v", err)
	}
	if err := watch(t, conn, &corev3.Node{Id: self.ID(), Metadata: self.Metadata(nil)}); err != nil {
		t.Fatalf("xDS after rotation: %v", err)
	}
	want := []string{"istio-system/ztunnel#1|east", "istio-system/ztunnel#1|east", "istio-system/ztunnel#2|east", "istio-system/ztunnel#2|east"}
	if got := toks.tokens(); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("tokens seen %v, want %v", got, want)
	}
	// Impersonation goes to the authenticator's node check.
	if err := renew(conn, identity.SPIFFE{TrustDomain: "cluster.local", Namespace: "demo", ServiceAccount: "echo"}, true); status.Code(err) != codes.PermissionDenied {
		t.Errorf("impersonation: %v", err)
	}
	// A node that claims another namespace than its token's is refused.
	liar := self
	liar.PodNamespace = "demo"
	if err := watch(t, conn, &corev3.Node{Id: liar.ID(), Metadata: liar.Metadata(nil)}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("lying node metadata: %v", err)
	}
	// An emptied token file fails the call on the client side, clearly.
	k.write("istio-token", "")
	if err := renew(conn, zt, false); status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "is empty") {
		t.Errorf("empty token: %v", err)
	}
}

func TestDialRefuses(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name string
		o    Options
		want string
	}{
		{"no address", Options{TokenFile: "x"}, "address required"},
		{"no credential", Options{Addr: "127.0.0.1:1"}, "credential directory or a token file"},
		{"missing credential", Options{Addr: "127.0.0.1:1", CredDir: dir}, "credential in"},
		{"missing root", Options{Addr: "127.0.0.1:1", TokenFile: filepath.Join(dir, "tok"), RootCert: filepath.Join(dir, "none.pem")}, "control plane root"},
	}
	for _, tc := range tests {
		if _, err := Dial(tc.o); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
	root := filepath.Join(dir, "root.pem")
	auth, _ := identity.NewRootAuthority("cluster.local", time.Hour, time.Now())
	_ = os.WriteFile(root, identity.EncodeCerts(auth.Root()), 0o644)
	if _, err := Dial(Options{Addr: "127.0.0.1:1", TokenFile: filepath.Join(dir, "missing-token"), RootCert: root}); err == nil || !strings.Contains(err.Error(), "token") {
		t.Errorf("missing token file: %v", err)
	}
}

// TestRootReload: a rotated root file is picked up; a broken one keeps
// the last good bundle.
func TestRootReload(t *testing.T) {
	a, _ := identity.NewRootAuthority("cluster.local", time.Hour, time.Now())
	b, _ := identity.NewRootAuthority("cluster.local", time.Hour, time.Now())
	k := newKubeletDir(t)
	r := &rootFile{file: newWatchedFile(k.write("root-cert.pem", string(identity.EncodeCerts(a.Root()))))}
	first, err := r.bundle()
	if err != nil || !first.Roots()[0].Equal(a.Root()) {
		t.Fatal(err)
	}
	k.write("root-cert.pem", string(identity.EncodeCerts(b.Root(), a.Root())))
	if got, _ := r.bundle(); len(got.Roots()) != 2 || !got.Roots()[0].Equal(b.Root()) {
		t.Errorf("rotated root not picked up: %d roots", len(got.Roots()))
	}
	k.write("root-cert.pem", "garbage")
	if got, err := r.bundle(); err != nil || len(got.Roots()) != 2 {
		t.Errorf("broken file: %v, %d roots; want the last good bundle", err, len(got.Roots()))
	}
}

// TestIstioVersionOfABuild: a real build reports the istio.io/api release
// it was built with as ISTIO_VERSION (test binaries carry no versions).
func TestIstioVersionOfABuild(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "istioversion")
	if out, err := exec.Command("go", "build", "-o", bin, "./testdata/istioversion").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	out, err := exec.Command(bin).Output()
	if err != nil {
		t.Fatal(err)
	}
	mod, err := exec.Command("go", "list", "-m", "-f", "{{.Version}}", "istio.io/api").Output()
	if err != nil {
		t.Fatal(err)
	}
	want := strings.TrimPrefix(strings.TrimSpace(string(mod)), "v")
	if got := strings.TrimSpace(string(out)); got != want || !strings.HasPrefix(got, "1.") {
		t.Errorf("IstioVersion() = %q in a build, want %q", got, want)
	}
}
