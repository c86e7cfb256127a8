package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/ambit-mesh/ambit/identity"
)

const manifests = `apiVersion: v1
kind: Namespace
metadata:
  name: mesh
  labels: {istio.io/dataplane-mode: ambient}
---
apiVersion: v1
kind: Namespace
metadata: {name: plain}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: client, namespace: mesh}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: server, namespace: mesh}
---
# The L7 path: the mesh server behind a Service that uses a waypoint.
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: mesh}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Service
metadata:
  name: server-l7
  namespace: mesh
  labels: {istio.io/use-waypoint: waypoint}
spec:
  selector: {app: server}
  ports: [{name: http, port: 8080, targetPort: 8080}]
`

// Ports of the servers in the server pods, and of the local ends of the
// stunnel and Istio HBONE pairs in plain/client.
const (
	portHTTP  = 8080 // fortio server
	portIperf = 5201 // iperf3 -s
	portEcho  = 9100 // ambit-benchtool echo

	stunnelHTTP, stunnelIperf, stunnelEcho = 18080, 15201, 19100
	istioHTTP, istioIperf, istioEcho       = 28080, 25201, 29100
	nginxHTTP                              = 8081 // nginx in plain/proxy, to plain/server
)

func pod(ns, name, node, sa string, cmd ...string) string {
	q := make([]string, len(cmd))
	for i, c := range cmd {
		q[i] = strconv.Quote(c)
	}
	acct := ""
	if sa != "" {
		acct = "\n  serviceAccountName: " + sa
	}
	return fmt.Sprintf("---\napiVersion: v1\nkind: Pod\nmetadata: {name: %s, namespace: %s, labels: {app: %s}}\nspec:\n  nodeName: %s%s\n  containers:\n  - name: main\n    command: [%s]\n",
		name, ns, name, node, acct, strings.Join(q, ", "))
}

// tools are the binaries the bench drives.
type tools struct {
	ambit, fortio, benchtool, istioPair string
}

// certs are the PEM files of the stunnel and Istio HBONE pairs.
type certs struct {
	ca, serverCert, serverKey, clientCert, clientKey string
	serverID                                         identity.SPIFFE
}

// mesh is one live benchmark mesh and the processes started in its pods.
type mesh struct {
	t        tools
	stateDir string
	workers  int
	ips      map[string]string // ns/name -> IP
	vips     map[string]string // ns/name -> service VIP
	procs    []*exec.Cmd
}

func (m *mesh) run(ctx context.Context, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, m.t.ambit, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("ambit %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// podCmd is a command running in a pod (`ambit local exec` execs in place,
// so the process is the command itself).
func (m *mesh) podCmd(ctx context.Context, pod string, argv ...string) *exec.Cmd {
	return exec.CommandContext(ctx, m.t.ambit, append([]string{"local", "exec", "--state-dir", m.stateDir, pod, "--"}, argv...)...)
}

// exec runs a command in a pod, bounded by timeout, and returns its output.
func (m *mesh) exec(ctx context.Context, timeout time.Duration, pod string, argv ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	out, err := m.podCmd(ctx, pod, argv...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("in %s: %s: %w\n%s", pod, strings.Join(argv, " "), err, out)
	}
	return string(out), nil
}

// background starts a long-running command in a pod; down stops it.
func (m *mesh) background(pod string, argv ...string) error {
	cmd := m.podCmd(context.Background(), pod, argv...)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s in %s: %w", argv[0], pod, err)
	}
	m.procs = append(m.procs, cmd)
	return nil
}

// up brings up the two-node mesh with each ztunnel at the given worker
// count, and starts iperf3 and the echo server in both server pods. It
// retries for a while if another user's mesh is live.
func up(ctx context.Context, t tools, stateDir, cfgDir string, workers int) (*mesh, error) {
	m := &mesh{t: t, stateDir: stateDir, workers: workers, ips: map[string]string{}, vips: map[string]string{}}
	man := manifests
	for _, ns := range []string{"mesh", "plain"} {
		server, client := "", ""
		if ns == "mesh" {
			server, client = "server", "client"
		}
		man += pod(ns, "server", "node2", server, t.fortio, "server", "-http-port", strconv.Itoa(portHTTP), "-grpc-port", "disabled", "-redirect-port", "disabled", "-loglevel", "Warning")
		man += pod(ns, "client", "node1", client, t.ambit, "sample", "tcp-echo", "--port", "9000")
	}
	// nginx's pod, in the waypoint's place: node1, beside the client.
	man += pod("plain", "proxy", "node1", "", "sleep", "1000000")
	dir := filepath.Join(cfgDir, fmt.Sprintf("mesh-w%d", workers))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "bench.yaml"), []byte(man), 0o644); err != nil {
		return nil, err
	}
	fmt.Printf("bringing up the benchmark mesh (ztunnel --workers %d) ...\n", workers)
	for attempt := 0; ; attempt++ {
		_, err := m.run(ctx, "local", "up", "-f", dir, "--state-dir", stateDir, "--ztunnel-workers", strconv.Itoa(workers))
		if err == nil {
			break
		}
		if !strings.Contains(err.Error(), "another local mesh is running") || attempt >= 20 {
			return nil, err
		}
		fmt.Println("another local mesh is live; waiting 15s ...")
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(15 * time.Second):
		}
	}
	out, err := m.run(ctx, "local", "status", "-o", "json", "--state-dir", stateDir)
	if err != nil {
		m.down()
		return nil, err
	}
	var st struct {
		Pods     []struct{ Namespace, Name, IP string } `json:"pods"`
		Services []struct {
			Namespace, Name string
			ClusterIP       string `json:"clusterIP"`
		} `json:"services"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		m.down()
		return nil, fmt.Errorf("local status JSON: %w", err)
	}
	for _, p := range st.Pods {
		m.ips[p.Namespace+"/"+p.Name] = p.IP
	}
	for _, s := range st.Services {
		m.vips[s.Namespace+"/"+s.Name] = s.ClusterIP
	}
	for _, p := range []string{"plain/server", "mesh/server"} {
		if err := m.background(p, "iperf3", "-s", "-p", strconv.Itoa(portIperf)); err != nil {
			m.down()
			return nil, err
		}
		if err := m.background(p, t.benchtool, "echo", "-listen", fmt.Sprintf(":%d", portEcho)); err != nil {
			m.down()
			return nil, err
		}
	}
	return m, nil
}

// down stops what the bench started in the pods and removes the mesh.
func (m *mesh) down() {
	for _, p := range m.procs {
		_ = p.Process.Kill()
		_ = p.Wait()
	}
	m.procs = nil
	if _, err := m.run(context.Background(), "local", "down", "--state-dir", m.stateDir); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
	}
}

// path is one way from the client pod to the server pod's servers.
type path struct {
	name, pod string
	l7        bool   // through an HTTP proxy: HTTP measurements only
	proxy     string // the proxy whose CPU is counted: "waypoint" or "nginx"
	http      string // fortio URL
	iperfHost string
	iperfPort int
	echo      string // host:port of the 1-byte echo
}

// paths returns direct and ambit, and with peers the stunnel and
// istio-hbone pairs too.
func (m *mesh) paths(peers bool) []path {
	plain, meshed := m.ips["plain/server"], m.ips["mesh/server"]
	hostPort := func(h string, p int) string { return fmt.Sprintf("%s:%d", h, p) }
	ps := []path{
		{name: "direct", pod: "plain/client", http: "http://" + hostPort(plain, portHTTP) + "/echo", iperfHost: plain, iperfPort: portIperf, echo: hostPort(plain, portEcho)},
		{name: "ambit", pod: "mesh/client", http: "http://" + hostPort(meshed, portHTTP) + "/echo", iperfHost: meshed, iperfPort: portIperf, echo: hostPort(meshed, portEcho)},
	}
	if peers {
		ps = append(ps,
			path{name: "stunnel", pod: "plain/client", http: fmt.Sprintf("http://127.0.0.1:%d/echo", stunnelHTTP), iperfHost: "127.0.0.1", iperfPort: stunnelIperf, echo: hostPort("127.0.0.1", stunnelEcho)},
			path{name: "istio-hbone", pod: "plain/client", http: fmt.Sprintf("http://127.0.0.1:%d/echo", istioHTTP), iperfHost: "127.0.0.1", iperfPort: istioIperf, echo: hostPort("127.0.0.1", istioEcho)},
			path{name: "waypoint", pod: "mesh/client", l7: true, proxy: "waypoint", http: "http://" + hostPort(m.vips["mesh/server-l7"], portHTTP) + "/echo"},
			path{name: "nginx", pod: "plain/client", l7: true, proxy: "nginx", http: "http://" + hostPort(m.ips["plain/proxy"], nginxHTTP) + "/echo"},
		)
	}
	return ps
}

// mintCerts writes a root and a server and client certificate (SPIFFE ids
// of plain/server and plain/client) for the peer pairs.
func mintCerts(dir string) (certs, error) {
	const td = "bench.local"
	auth, err := identity.NewRootAuthority(td, 24*time.Hour, time.Now())
	if err != nil {
		return certs{}, fmt.Errorf("bench CA: %w", err)
	}
	c := certs{ca: filepath.Join(dir, "ca.pem"), serverID: identity.SPIFFE{TrustDomain: td, Namespace: "plain", ServiceAccount: "server"}}
	if err := os.WriteFile(c.ca, identity.EncodeCerts(auth.Root()), 0o644); err != nil {
		return certs{}, err
	}
	write := func(name string, id identity.SPIFFE) (string, string, error) {
		cert, err := auth.IssueTLS(id, 24*time.Hour, time.Now(), nil)
		if err != nil {
			return "", "", fmt.Errorf("issuing %s: %w", id, err)
		}
		certPath, keyPath := filepath.Join(dir, name+"-cert.pem"), filepath.Join(dir, name+"-key.pem")
		return certPath, keyPath, writeTLS(cert, certPath, keyPath)
	}
	if c.serverCert, c.serverKey, err = write("server", c.serverID); err != nil {
		return certs{}, err
	}
	if c.clientCert, c.clientKey, err = write("client", identity.SPIFFE{TrustDomain: td, Namespace: "plain", ServiceAccount: "client"}); err != nil {
		return certs{}, err
	}
	return c, nil
}

func writeTLS(cert *tls.Certificate, certPath, keyPath string) error {
	var chain []byte
	for _, der := range cert.Certificate {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		return fmt.Errorf("encoding the key: %w", err)
	}
	if err := os.WriteFile(certPath, chain, 0o644); err != nil {
		return err
	}
	return os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600)
}

// startPeers runs the two peer pairs between plain/client and plain/server:
// a stunnel4 mutual-TLS pair and Istio's Go HBONE client and server, each
// in front of fortio, iperf3 and the echo.
func (m *mesh) startPeers(dir string, c certs) error {
	server := m.ips["plain/server"]
	common := "foreground = yes\npid =\nsslVersionMin = TLSv1.3\nverifyChain = yes\nCAfile = %s\ncert = %s\nkey = %s\nsocket = l:TCP_NODELAY=1\nsocket = r:TCP_NODELAY=1\n"
	srvConf := fmt.Sprintf(common, c.ca, c.serverCert, c.serverKey) +
		fmt.Sprintf("[http]\naccept = 8443\nconnect = 127.0.0.1:%d\n[iperf]\naccept = 5202\nconnect = 127.0.0.1:%d\n[echo]\naccept = 9101\nconnect = 127.0.0.1:%d\n", portHTTP, portIperf, portEcho)
	cliConf := fmt.Sprintf(common, c.ca, c.clientCert, c.clientKey) +
		fmt.Sprintf("client = yes\n[http]\naccept = 127.0.0.1:%d\nconnect = %s:8443\n[iperf]\naccept = 127.0.0.1:%d\nconnect = %s:5202\n[echo]\naccept = 127.0.0.1:%d\nconnect = %s:9101\n",
			stunnelHTTP, server, stunnelIperf, server, stunnelEcho, server)
	for name, conf := range map[string]string{"plain/server": srvConf, "plain/client": cliConf} {
		p := filepath.Join(dir, "stunnel-"+strings.ReplaceAll(name, "/", "-")+".conf")
		if err := os.WriteFile(p, []byte(conf), 0o600); err != nil {
			return err
		}
		if err := m.background(name, "stunnel4", p); err != nil {
			return fmt.Errorf("stunnel: %w", err)
		}
	}
	if err := m.background("plain/server", m.t.istioPair, "server", "-listen", ":15008",
		"-ca", c.ca, "-cert", c.serverCert, "-key", c.serverKey, "-trust-domain", c.serverID.TrustDomain); err != nil {
		return fmt.Errorf("istio-hbone: %w", err)
	}
	args := []string{m.t.istioPair, "client", "-server", server + ":15008", "-expect", c.serverID.String(),
		"-ca", c.ca, "-cert", c.clientCert, "-key", c.clientKey}
	for local, port := range map[int]int{istioHTTP: portHTTP, istioIperf: portIperf, istioEcho: portEcho} {
		args = append(args, "-forward", fmt.Sprintf("127.0.0.1:%d=%s:%d", local, server, port))
	}
	if err := m.background("plain/client", args...); err != nil {
		return fmt.Errorf("istio-hbone: %w", err)
	}
	// nginx as a reverse proxy in the waypoint's role: HTTP/1.1 with
	// kept-alive upstream connections, no logs, one worker per CPU.
	ngx := filepath.Join(dir, "nginx.conf")
	conf := fmt.Sprintf(`worker_processes auto;
pid %s;
error_log stderr warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path %s;
  proxy_temp_path %s;
  upstream backend { server %s:%d; keepalive 64; }
  server {
    listen %d;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
`, filepath.Join(dir, "nginx.pid"), dir, dir, server, portHTTP, nginxHTTP)
	if err := os.WriteFile(ngx, []byte(conf), 0o644); err != nil {
		return err
	}
	if err := m.background("plain/proxy", "nginx", "-c", ngx, "-e", "stderr", "-g", "daemon off;"); err != nil {
		return fmt.Errorf("nginx: %w", err)
	}
	return nil
}
