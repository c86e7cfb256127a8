package cnievent

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"testing"
)

func TestCNIEvents(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "cni.sock")
	got := make(chan CNIEvent, 4)
	s, err := ListenCNI(sock, func(_ context.Context, ev CNIEvent) error {
		got <- ev
		if ev.Name == "refuse-me" {
			return errors.New("cannot enroll")
		}
		return nil
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go s.Run(ctx)

	ev := CNIEvent{Namespace: "demo", Name: "echo-1", UID: "u1", Netns: "/run/netns/x", IPs: []string{"10.244.1.3"}}
	if err := Notify(ctx, sock, ev); err != nil {
		t.Fatalf("Notify: %v", err)
	}
	if e := <-got; e.UID != "u1" || e.IPs[0] != "10.244.1.3" {
		t.Errorf("agent got %+v", e)
	}
	ev.Name = "refuse-me"
	if err := Notify(ctx, sock, ev); err == nil || !strings.Contains(err.Error(), "cannot enroll") {
		t.Errorf("refusal not propagated: %v", err)
	}
	<-got
	if err := Notify(ctx, sock, CNIEvent{Name: "x", UID: "u2"}); err == nil || !strings.Contains(err.Error(), "lacks namespace") {
		t.Errorf("incomplete event accepted: %v", err)
	}
	c, _ := net.Dial("unix", sock)
	c.Write([]byte("garbage\n"))
	buf := make([]byte, 256)
	n, _ := c.Read(buf)
	c.Close()
	if !strings.Contains(string(buf[:n]), "malformed event") {
		t.Errorf("garbage answered %q", buf[:n])
	}
	if err := Notify(ctx, filepath.Join(t.TempDir(), "none.sock"), ev); err == nil || !strings.Contains(err.Error(), "no node agent") {
		t.Errorf("missing agent: %v", err)
	}
}
