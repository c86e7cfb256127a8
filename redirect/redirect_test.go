package redirect

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/nsnet"
	"github.com/ambit-mesh/ambit/nsnet/nstest"
)

func TestConfigForPod(t *testing.T) {
	tests := []struct {
		ann  map[string]string
		def  Config
		want Config
	}{
		{nil, Config{}, Config{}},
		{map[string]string{AnnotationBypassInbound: "true"}, Config{}, Config{BypassInbound: true}},
		{map[string]string{AnnotationDNSCapture: "false"}, Config{DNSCapture: true}, Config{}},
		{map[string]string{AnnotationDNSCapture: "true"}, Config{}, Config{DNSCapture: true}},
		{map[string]string{AnnotationDNSCapture: "maybe"}, Config{DNSCapture: true}, Config{DNSCapture: true}},
	}
	for _, tc := range tests {
		if got := ConfigForPod(tc.ann, tc.def); got != tc.want {
			t.Errorf("ConfigForPod(%v, %+v) = %+v, want %+v", tc.ann, tc.def, got, tc.want)
		}
	}
}

// accepted returns a channel that receives each connection accepted on l
// with its original destination.
type arrival struct {
	listener string
	orig     netip.AddrPort
	err      error
}

func watch(t *testing.T, name string, l net.Listener, out chan<- arrival) {
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			orig, err := OriginalDst(c.(*net.TCPConn))
			out <- arrival{name, orig, err}
			c.Close()
		}
	}()
}

func expect(t *testing.T, ch <-chan arrival, listener string, orig string) {
	t.Helper()
	select {
	case a := <-ch:
		if a.listener != listener {
			t.Fatalf("connection reached %s, want %s", a.listener, listener)
		}
		if orig != "" && (a.err != nil || a.orig.String() != orig) {
			t.Fatalf("%s: original destination %v (%v), want %s", listener, a.orig, a.err, orig)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("no connection reached %s", listener)
	}
}

func dial(t *testing.T, ns, addr string, mark uint32) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := nsnet.DialFunc(ns, nsnet.SocketOptions{Mark: mark}, nil)(ctx, "tcp", addr)
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, ns, err)
	}
	c.Close()
}

func TestRedirection(t *testing.T) {
	nstest.RequireRoot(t)
	pod, peer := nstest.Netns(t), nstest.Netns(t)
	nstest.Veth(t, pod, "10.99.0.2/24", peer, "10.99.0.1/24")
	ctx := context.Background()
	ch := make(chan arrival, 16)
	for name, spec := range map[string]struct{ ns, addr string }{
		"pod:15001": {pod, ":15001"}, "pod:15006": {pod, ":15006"}, "pod:15008": {pod, ":15008"},
		"pod:8080": {pod, ":8080"}, "pod:7777": {pod, ":7777"}, "peer:9999": {peer, ":9999"},
	} {
		l, err := nsnet.Listen(ctx, spec.ns, spec.addr, nsnet.SocketOptions{})
		if err != nil {
			t.Fatal(err)
		}
		watch(t, name, l, ch)
	}

	// Before: traffic flows directly.
	dial(t, peer, "10.99.0.2:8080", 0)
	expect(t, ch, "pod:8080", "")

	if err := Install(ctx, pod, Config{}); err != nil {
		t.Fatal(err)
	}
	if err := Install(ctx, pod, Config{}); err != nil {
		t.Fatalf("second Install: %v", err)
	}
	st, err := Inspect(ctx, pod)
	if err != nil || !st.Installed() || len(st.Tables) != 2 {
		t.Fatalf("after Install: %+v %v", st, err)
	}

	t.Run("outbound to 15001", func(t *testing.T) {
		dial(t, pod, "10.99.0.1:9999", 0)
		expect(t, ch, "pod:15001", "10.99.0.1:9999")
	})
	t.Run("inbound to 15006", func(t *testing.T) {
		dial(t, peer, "10.99.0.2:8080", 0)
		expect(t, ch, "pod:15006", "10.99.0.2:8080")
	})
	t.Run("HBONE port not redirected", func(t *testing.T) {
		dial(t, peer, "10.99.0.2:15008", 0)
		expect(t, ch, "pod:15008", "")
	})
	t.Run("ztunnel's marked sockets pass", func(t *testing.T) {
		dial(t, pod, "10.99.0.1:9999", ZtunnelMark)
		expect(t, ch, "peer:9999", "")
	})
	t.Run("pod to itself over lo is not captured", func(t *testing.T) {
		dial(t, pod, "10.99.0.2:7777", 0)
		expect(t, ch, "pod:7777", "")
	})

	if err := Remove(ctx, pod); err != nil {
		t.Fatal(err)
	}
	if err := Remove(ctx, pod); err != nil {
		t.Fatalf("second Remove: %v", err)
	}
	st, err = Inspect(ctx, pod)
	if err != nil || !st.Clean() {
		t.Fatalf("after Remove: %+v %v", st, err)
	}
	dial(t, peer, "10.99.0.2:8080", 0)
	expect(t, ch, "pod:8080", "")
	dial(t, pod, "10.99.0.1:9999", 0)
	expect(t, ch, "peer:9999", "")
}

func TestBypassInbound(t *testing.T) {
	nstest.RequireRoot(t)
	pod, peer := nstest.Netns(t), nstest.Netns(t)
	nstest.Veth(t, pod, "10.98.0.2/24", peer, "10.98.0.1/24")
	ctx := context.Background()
	ch := make(chan arrival, 4)
	for name, spec := range map[string]struct{ ns, addr string }{"pod:15001": {pod, ":15001"}, "pod:15006": {pod, ":15006"}, "pod:8080": {pod, ":8080"}} {
		l, err := nsnet.Listen(ctx, spec.ns, spec.addr, nsnet.SocketOptions{})
		if err != nil {
			t.Fatal(err)
		}
		watch(t, name, l, ch)
	}
	if err := Install(ctx, pod, Config{BypassInbound: true}); err != nil {
		t.Fatal(err)
	}
	dial(t, peer, "10.98.0.2:8080", 0)
	expect(t, ch, "pod:8080", "")
	l, err := nsnet.Listen(ctx, peer, ":80", nsnet.SocketOptions{})
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	dial(t, pod, "10.98.0.1:80", 0)
	expect(t, ch, "pod:15001", "10.98.0.1:80")
}

func TestRemoveOnMissingNetns(t *testing.T) {
	if err := Remove(context.Background(), "/run/netns/ambtest-does-not-exist"); err != nil {
		t.Fatalf("Remove on a missing namespace: %v", err)
	}
}
