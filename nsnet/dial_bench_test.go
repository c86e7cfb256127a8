package nsnet_test

import (
	"context"
	"net"
	"testing"

	"github.com/ambit-mesh/ambit/nsnet"
	"github.com/ambit-mesh/ambit/nsnet/nstest"
)

func acceptAll(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		c.Close()
	}
}

func BenchmarkDial(b *testing.B) {
	ns := nstest.Netns(b)
	l, err := nsnet.Listen(context.Background(), ns, "127.0.0.1:0", nsnet.SocketOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	go acceptAll(l)
	pl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer pl.Close()
	go acceptAll(pl)
	ctx := context.Background()
	n, err := nsnet.OpenNetns(ns)
	if err != nil {
		b.Fatal(err)
	}
	defer n.Close()
	b.Run("netns", func(b *testing.B) {
		dial := n.DialFunc(nsnet.SocketOptions{Mark: 0x539}, nil)
		for i := 0; i < b.N; i++ {
			c, err := dial(ctx, "tcp", l.Addr().String())
			if err != nil {
				b.Fatal(err)
			}
			c.Close()
		}
	})
	b.Run("plain", func(b *testing.B) {
		var d net.Dialer
		for i := 0; i < b.N; i++ {
			c, err := d.DialContext(ctx, "tcp", pl.Addr().String())
			if err != nil {
				b.Fatal(err)
			}
			c.Close()
		}
	})
}

func BenchmarkDo(b *testing.B) {
	n, err := nsnet.OpenNetns(nstest.Netns(b))
	if err != nil {
		b.Fatal(err)
	}
	defer n.Close()
	for i := 0; i < b.N; i++ {
		if err := n.Do(func() error { return nil }); err != nil {
			b.Fatal(err)
		}
	}
}
