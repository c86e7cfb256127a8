// Package kubetest runs a real Kubernetes API server for tests: etcd and
// kube-apiserver built from the Go module proxy (hack/k8s-testbins.sh),
// started on free loopback ports with throw-away certificates, and stopped
// (by PID) when the test ends. It is the "envtest tier": a real API server,
// with admission, RBAC, TokenReview and TokenRequest, but no nodes.
//
// Start finds the binaries in $AMBIT_K8S_BIN_DIR, or builds them with
// hack/k8s-testbins.sh (cached under $HOME/.cache; a cold build takes about
// five minutes). A missing binary fails the test: it never skips.
package kubetest

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// Issuer is the service-account token issuer the API server is started with.
const Issuer = "https://kubernetes.default.svc.cluster.local"

// Server is a running etcd + kube-apiserver.
type Server struct {
	// Config is an admin (system:masters) client configuration.
	Config *rest.Config
	// Client is a clientset for Config.
	Client kubernetes.Interface
	// Dir holds the certificates, the data directory and the logs.
	Dir string
	// URL is the API server's https URL.
	URL string
	// CACert is the PEM of the CA that signed the serving certificate.
	CACert []byte

	procs []*exec.Cmd
}

// Options tune Start.
type Options struct {
	// ExtraArgs are appended to kube-apiserver's command line.
	ExtraArgs []string
}

// BinDir returns the directory holding etcd and kube-apiserver, building
// them if needed.
func BinDir(t testing.TB) string {
	t.Helper()
	if d := os.Getenv("AMBIT_K8S_BIN_DIR"); d != "" {
		return d
	}
	script := filepath.Join(repoRoot(t), "hack", "k8s-testbins.sh")
	cmd := exec.Command("bash", script)
	cmd.Env = append(os.Environ(), "COMPONENTS=kube-apiserver kube-controller-manager")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("kubetest: %s failed: %v\n%s", script, err, stderr.String())
	}
	return strings.TrimSpace(string(out))
}

func repoRoot(t testing.TB) string {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("kubetest: cannot locate the source tree")
	}
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// Start runs etcd and kube-apiserver for the test and stops them in its
// Cleanup. It fails the test if they do not become ready in 60 s.
func Start(t testing.TB, o Options) *Server {
	t.Helper()
	bins := BinDir(t)
	for _, b := range []string{"etcd", "kube-apiserver"} {
		if _, err := os.Stat(filepath.Join(bins, b)); err != nil {
			t.Fatalf("kubetest: %v (set AMBIT_K8S_BIN_DIR or run hack/k8s-testbins.sh)", err)
		}
	}
	dir := t.TempDir()
	s := &Server{Dir: dir}
	t.Cleanup(s.stop)

	pki, err := writePKI(dir)
	if err != nil {
		t.Fatalf("kubetest: certificates: %v", err)
	}
	s.CACert = pki.caPEM
	etcdPort, etcdPeer, apiPort := freePort(t), freePort(t), freePort(t)
	s.start(t, filepath.Join(bins, "etcd"), "etcd.log",
		"--name=test", "--data-dir="+filepath.Join(dir, "etcd-data"),
		"--listen-client-urls=http://127.0.0.1:"+etcdPort, "--advertise-client-urls=http://127.0.0.1:"+etcdPort,
		"--listen-peer-urls=http://127.0.0.1:"+etcdPeer, "--initial-advertise-peer-urls=http://127.0.0.1:"+etcdPeer,
		"--initial-cluster=test=http://127.0.0.1:"+etcdPeer, "--unsafe-no-fsync", "--quota-backend-bytes=1073741824",
		"--listen-metrics-urls=")
	args := []string{
		"--etcd-servers=http://127.0.0.1:" + etcdPort,
		"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", "--endpoint-reconciler-type=none",
		"--secure-port=" + apiPort, "--cert-dir=" + filepath.Join(dir, "apiserver-certs"),
		"--tls-cert-file=" + pki.serverCert, "--tls-private-key-file=" + pki.serverKey,
		"--client-ca-file=" + pki.caFile,
		"--service-account-issuer=" + Issuer,
		"--service-account-key-file=" + pki.saPub, "--service-account-signing-key-file=" + pki.saKey,
		"--service-cluster-ip-range=10.96.0.0/16", "--authorization-mode=RBAC", "--allow-privileged=true",
	}
	s.start(t, filepath.Join(bins, "kube-apiserver"), "apiserver.log", append(args, o.ExtraArgs...)...)

	s.URL = "https://127.0.0.1:" + apiPort
	s.Config = &rest.Config{
		Host:            s.URL,
		TLSClientConfig: rest.TLSClientConfig{CAData: pki.caPEM, CertData: pki.adminCert, KeyData: pki.adminKey},
		QPS:             1000, Burst: 2000,
	}
	if err := s.waitReady(60 * time.Second); err != nil {
		t.Fatalf("kubetest: %v; apiserver log tail:\n%s", err, tail(filepath.Join(dir, "apiserver.log"), 30))
	}
	cs, err := kubernetes.NewForConfig(s.Config)
	if err != nil {
		t.Fatalf("kubetest: client: %v", err)
	}
	s.Client = cs
	return s
}

func (s *Server) start(t testing.TB, bin, logName string, args ...string) {
	t.Helper()
	logf, err := os.Create(filepath.Join(s.Dir, logName))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("kubetest: start %s: %v", bin, err)
	}
	logf.Close()
	s.procs = append(s.procs, cmd)
}

// stop ends the processes it started, newest first, by PID.
func (s *Server) stop() {
	for i := len(s.procs) - 1; i >= 0; i-- {
		p := s.procs[i]
		_ = p.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = p.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = p.Process.Kill()
			<-done
		}
	}
	s.procs = nil
}

func (s *Server) waitReady(timeout time.Duration) error {
	rc, err := rest.HTTPClientFor(s.Config)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(timeout)
	var last string
	for time.Now().Before(deadline) {
		for _, p := range s.procs {
			if p.ProcessState != nil {
				return fmt.Errorf("%s exited", p.Path)
			}
		}
		resp, err := rc.Get(s.URL + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("apiserver not ready after %s: %s", timeout, last)
}

// Token returns a service-account token for namespace/name (creating the
// namespace and service account if needed), with the audiences and lifetime
// given, optionally bound to a pod (boundPod non-empty: that pod must exist).
func (s *Server) Token(ctx context.Context, namespace, name string, audiences []string, ttl time.Duration, boundPod string) (string, error) {
	if err := s.EnsureServiceAccount(ctx, namespace, name); err != nil {
		return "", err
	}
	secs := int64(ttl / time.Second)
	tr := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{Audiences: audiences, ExpirationSeconds: &secs}}
	if boundPod != "" {
		pod, err := s.Client.CoreV1().Pods(namespace).Get(ctx, boundPod, metav1.GetOptions{})
		if err != nil {
			return "", fmt.Errorf("bound pod: %w", err)
		}
		tr.Spec.BoundObjectRef = &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID}
	}
	out, err := s.Client.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, name, tr, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("token for %s/%s: %w", namespace, name, err)
	}
	return out.Status.Token, nil
}

// EnsureServiceAccount creates namespace and service account if missing.
func (s *Server) EnsureServiceAccount(ctx context.Context, namespace, name string) error {
	if err := s.EnsureNamespace(ctx, namespace); err != nil {
		return err
	}
	_, err := s.Client.CoreV1().ServiceAccounts(namespace).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil && !isAlreadyExists(err) {
		return fmt.Errorf("service account %s/%s: %w", namespace, name, err)
	}
	return nil
}

// EnsureNamespace creates namespace if missing.
func (s *Server) EnsureNamespace(ctx context.Context, namespace string) error {
	_, err := s.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}, metav1.CreateOptions{})
	if err != nil && !isAlreadyExists(err) {
		return fmt.Errorf("namespace %s: %w", namespace, err)
	}
	return nil
}

func isAlreadyExists(err error) bool {
	return err != nil && strings.Contains(err.Error(), "already exists")
}

// Kubeconfig writes an admin kubeconfig file and returns its path.
func (s *Server) Kubeconfig(t testing.TB) string {
	t.Helper()
	write := func(name string, data []byte) string {
		p := filepath.Join(s.Dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	ca := write("kc-ca.crt", s.Config.CAData)
	crt := write("kc-admin.crt", s.Config.CertData)
	key := write("kc-admin.key", s.Config.KeyData)
	kc := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: test
  cluster: {server: %q, certificate-authority: %q}
users:
- name: admin
  user: {client-certificate: %q, client-key: %q}
contexts:
- name: test
  context: {cluster: test, user: admin}
current-context: test
`, s.URL, ca, crt, key)
	return write("kubeconfig", []byte(kc))
}

func freePort(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
}

func tail(path string, n int) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

type pki struct {
	caFile, serverCert, serverKey, saKey, saPub string
	caPEM, adminCert, adminKey                  []byte
}

// writePKI makes a CA, a serving certificate for 127.0.0.1, an admin client
// certificate (O=system:masters) and a service-account signing key.
func writePKI(dir string) (*pki, error) {
	p := &pki{}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "kubetest-ca"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	caCert, _ := x509.ParseCertificate(caDER)
	p.caPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	leaf := func(serial int64, tmpl *x509.Certificate) (certPEM, keyPEM []byte, err error) {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, nil, err
		}
		tmpl.SerialNumber = big.NewInt(serial)
		tmpl.NotBefore, tmpl.NotAfter = now.Add(-time.Hour), now.Add(24*time.Hour)
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &k.PublicKey, caKey)
		if err != nil {
			return nil, nil, err
		}
		kd, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			return nil, nil, err
		}
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kd}), nil
	}
	srvCert, srvKey, err := leaf(2, &x509.Certificate{
		Subject: pkix.Name{CommonName: "kube-apiserver"}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv4(10, 96, 0, 1)},
		DNSNames:    []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
	})
	if err != nil {
		return nil, err
	}
	p.adminCert, p.adminKey, err = leaf(3, &x509.Certificate{
		Subject: pkix.Name{CommonName: "admin", Organization: []string{"system:masters"}}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return nil, err
	}
	saKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	saPub, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		return nil, err
	}
	files := map[string][]byte{
		"ca.crt":        p.caPEM,
		"apiserver.crt": srvCert, "apiserver.key": srvKey,
		"sa.key": pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(saKey)}),
		"sa.pub": pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: saPub}),
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			return nil, err
		}
	}
	p.caFile, p.serverCert, p.serverKey = filepath.Join(dir, "ca.crt"), filepath.Join(dir, "apiserver.crt"), filepath.Join(dir, "apiserver.key")
	p.saKey, p.saPub = filepath.Join(dir, "sa.key"), filepath.Join(dir, "sa.pub")
	return p, nil
}
