package clustertest

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/dns/dnsmessage"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// routedNamespaces are the namespaces whose ClusterIPs the stand-in routes
// (with default/kubernetes): the mesh's own components'.
var routedNamespaces = []string{"istio-system"}

// serviceStandIn is the harness's kube-proxy substitute for the mesh's own
// Services: a TCP forwarder per Service port on the gateway address, and
// DNAT rules from each ClusterIP:port to it.
type serviceStandIn struct {
	cs      kubernetes.Interface
	apiAddr string
	gw      string
	dns     *dnsServer
	log     *log.Logger
	logf    *os.File

	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}

	mu    sync.Mutex
	fwds  map[string]*forwarder // "ns/name/port" -> forwarder
	rules string                // the nft rules last written
}

type forwarder struct {
	vip     string // ClusterIP:port
	l       net.Listener
	ns, svc string
	port    corev1.ServicePort
}

func startServiceStandIn(cs kubernetes.Interface, apiAddr, gw, logFile string, dns *dnsServer) (*serviceStandIn, error) {
	f, err := os.Create(logFile)
	if err != nil {
		return nil, err
	}
	s := &serviceStandIn{cs: cs, apiAddr: apiAddr, gw: gw, dns: dns, logf: f, log: log.New(f, "", log.LstdFlags|log.Lmicroseconds),
		fwds: map[string]*forwarder{}, done: make(chan struct{})}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	if err := s.sync(); err != nil {
		s.close()
		return nil, err
	}
	go s.loop()
	return s, nil
}

func (s *serviceStandIn) loop() {
	defer close(s.done)
	tk := time.NewTicker(300 * time.Millisecond)
	defer tk.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-tk.C:
			if err := s.sync(); err != nil && s.ctx.Err() == nil {
				s.log.Printf("sync: %v", err)
			}
		}
	}
}

// sync lists the Services, feeds the DNS names, and keeps a forwarder and
// a DNAT rule per routed Service port.
func (s *serviceStandIn) sync() error {
	ctx, cancel := context.WithTimeout(s.ctx, 5*time.Second)
	defer cancel()
	svcs, err := s.cs.CoreV1().Services("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	names := map[string]net.IP{}
	want := map[string]corev1.Service{}
	for _, svc := range svcs.Items {
		ip := net.ParseIP(svc.Spec.ClusterIP).To4()
		if ip == nil {
			continue
		}
		names[svc.Name+"."+svc.Namespace+".svc.cluster.local."] = ip
		routed := svc.Namespace == "default" && svc.Name == "kubernetes"
		for _, ns := range routedNamespaces {
			routed = routed || svc.Namespace == ns
		}
		if !routed {
			continue
		}
		for _, p := range svc.Spec.Ports {
			if p.Protocol == corev1.ProtocolTCP || p.Protocol == "" {
				want[svc.Namespace+"/"+svc.Name+"/"+strconv.Itoa(int(p.Port))] = svc
			}
		}
	}
	if s.dns != nil {
		s.dns.set(names)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for key, f := range s.fwds {
		svc, ok := want[key]
		if !ok || net.JoinHostPort(svc.Spec.ClusterIP, strconv.Itoa(int(f.port.Port))) != f.vip {
			f.l.Close()
			delete(s.fwds, key)
			s.log.Printf("forwarder %s closed", key)
		}
	}
	for key, svc := range want {
		if _, ok := s.fwds[key]; ok {
			continue
		}
		portNum, _ := strconv.Atoi(key[strings.LastIndex(key, "/")+1:])
		var port corev1.ServicePort
		for _, p := range svc.Spec.Ports {
			if int(p.Port) == portNum {
				port = p
			}
		}
		l, err := net.Listen("tcp", net.JoinHostPort(s.gw, "0"))
		if err != nil {
			return err
		}
		f := &forwarder{vip: net.JoinHostPort(svc.Spec.ClusterIP, strconv.Itoa(portNum)), l: l, ns: svc.Namespace, svc: svc.Name, port: port}
		s.fwds[key] = f
		s.log.Printf("forwarder %s: %s -> %s", key, f.vip, l.Addr())
		go s.serve(f)
	}
	var rules []string
	for _, f := range s.fwds {
		host, port, _ := net.SplitHostPort(f.vip)
		rules = append(rules, fmt.Sprintf("ip daddr %s tcp dport %s dnat to %s", host, port, f.l.Addr()))
	}
	sort.Strings(rules)
	text := strings.Join(rules, "\n")
	if text == s.rules {
		return nil
	}
	var b strings.Builder
	fmt.Fprintf(&b, "table ip %s {}\ndelete table ip %s\ntable ip %s {\n", NATTable, NATTable, NATTable)
	for _, hook := range []string{"prerouting", "output"} {
		fmt.Fprintf(&b, "  chain %s {\n    type nat hook %s priority -100; policy accept;\n", hook, hook)
		for _, r := range rules {
			fmt.Fprintf(&b, "    %s\n", r)
		}
		b.WriteString("  }\n")
	}
	// Nothing from the pods or to a ClusterIP leaves this machine: the
	// pods' route to the service range points at the host, which has a
	// default route and ip_forward on (the bridge plugin sets it).
	fmt.Fprintf(&b, "  chain forward {\n    type filter hook forward priority filter; policy accept;\n")
	fmt.Fprintf(&b, "    ip daddr %s reject\n    iifname %q oifname != %q reject\n  }\n", ServiceCIDR, Bridge, Bridge)
	fmt.Fprintf(&b, "  chain output-filter {\n    type filter hook output priority filter; policy accept;\n    ip daddr %s reject\n  }\n", ServiceCIDR)
	b.WriteString("}\n")
	cmd := exec.Command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(b.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("nft: %v: %s\n%s", err, out, b.String())
	}
	s.rules = text
	s.log.Printf("nft rules:\n%s", text)
	return nil
}

func (s *serviceStandIn) serve(f *forwarder) {
	for {
		c, err := f.l.Accept()
		if err != nil {
			return
		}
		go s.forward(f, c)
	}
}

func (s *serviceStandIn) forward(f *forwarder, c net.Conn) {
	defer c.Close()
	target, err := s.target(f)
	if err != nil {
		s.log.Printf("%s/%s:%d from %s: %v", f.ns, f.svc, f.port.Port, c.RemoteAddr(), err)
		return
	}
	up, err := net.DialTimeout("tcp", target, 5*time.Second)
	if err != nil {
		s.log.Printf("%s/%s:%d from %s: dial %s: %v", f.ns, f.svc, f.port.Port, c.RemoteAddr(), target, err)
		return
	}
	defer up.Close()
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		if tc, ok := dst.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
		done <- struct{}{}
	}
	go cp(up, c)
	go cp(c, up)
	<-done
	<-done
}

// target is where a connection to the Service port goes now: the API
// server for default/kubernetes, else a ready endpoint.
func (s *serviceStandIn) target(f *forwarder) (string, error) {
	if f.ns == "default" && f.svc == "kubernetes" {
		return s.apiAddr, nil
	}
	ctx, cancel := context.WithTimeout(s.ctx, 5*time.Second)
	defer cancel()
	slices, err := s.cs.DiscoveryV1().EndpointSlices(f.ns).List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + f.svc})
	if err != nil {
		return "", err
	}
	for _, sl := range slices.Items {
		var port int32 = -1
		for _, p := range sl.Ports {
			if p.Port != nil && (p.Name == nil && f.port.Name == "" || p.Name != nil && *p.Name == f.port.Name) {
				port = *p.Port
			}
		}
		if port < 0 {
			continue
		}
		for _, ep := range sl.Endpoints {
			if ep.Conditions.Ready != nil && !*ep.Conditions.Ready || len(ep.Addresses) == 0 {
				continue
			}
			return net.JoinHostPort(ep.Addresses[0], strconv.Itoa(int(port))), nil
		}
	}
	return "", fmt.Errorf("no ready endpoint")
}

func (s *serviceStandIn) close() {
	s.cancel()
	<-s.done
	s.mu.Lock()
	for _, f := range s.fwds {
		f.l.Close()
	}
	s.fwds = map[string]*forwarder{}
	s.mu.Unlock()
	_ = exec.Command("nft", "delete", "table", "ip", NATTable).Run()
	s.logf.Close()
}

// dnsServer answers A queries for Service names (<svc>.<ns>.svc.cluster.local)
// with their ClusterIP, AAAA with no address, and everything else with
// NXDOMAIN. It never forwards a query anywhere.
type dnsServer struct {
	pc    net.PacketConn
	mu    sync.Mutex
	names map[string]net.IP
	done  chan struct{}
}

func startDNS(addr string) (*dnsServer, error) {
	pc, err := net.ListenPacket("udp4", addr)
	if err != nil {
		return nil, err
	}
	d := &dnsServer{pc: pc, names: map[string]net.IP{}, done: make(chan struct{})}
	go d.serve()
	return d, nil
}

func (d *dnsServer) set(names map[string]net.IP) {
	d.mu.Lock()
	d.names = names
	d.mu.Unlock()
}

func (d *dnsServer) serve() {
	defer close(d.done)
	buf := make([]byte, 1500)
	for {
		n, from, err := d.pc.ReadFrom(buf)
		if err != nil {
			return
		}
		if resp := d.answer(buf[:n]); resp != nil {
			_, _ = d.pc.WriteTo(resp, from)
		}
	}
}

func (d *dnsServer) answer(req []byte) []byte {
	var p dnsmessage.Parser
	h, err := p.Start(req)
	if err != nil {
		return nil
	}
	q, err := p.Question()
	if err != nil {
		return nil
	}
	name := strings.ToLower(q.Name.String())
	d.mu.Lock()
	ip, ok := d.names[name]
	d.mu.Unlock()
	rh := dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true, RecursionDesired: h.RecursionDesired, RCode: dnsmessage.RCodeSuccess}
	if !ok {
		rh.RCode = dnsmessage.RCodeNameError
	}
	b := dnsmessage.NewBuilder(nil, rh)
	b.EnableCompression()
	_ = b.StartQuestions()
	_ = b.Question(q)
	_ = b.StartAnswers()
	if ok && q.Type == dnsmessage.TypeA && q.Class == dnsmessage.ClassINET {
		var a [4]byte
		copy(a[:], ip)
		_ = b.AResource(dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 5}, dnsmessage.AResource{A: a})
	}
	out, err := b.Finish()
	if err != nil {
		return nil
	}
	return out
}

func (d *dnsServer) close() {
	d.pc.Close()
	<-d.done
}
