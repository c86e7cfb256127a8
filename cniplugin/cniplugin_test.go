package cniplugin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"

	"github.com/ambit-mesh/ambit/nodeagent/cnievent"
)

func conf(t *testing.T, dir string, prev bool) []byte {
	t.Helper()
	c := map[string]any{"cniVersion": "1.0.0", "name": "n", "type": "ambit-cni", "stateDir": dir}
	if prev {
		c["prevResult"] = map[string]any{"cniVersion": "1.0.0", "ips": []any{map[string]any{"address": "10.244.1.5/24", "gateway": "10.244.1.1"}}}
	}
	b, _ := json.Marshal(c)
	return b
}

// capture runs fn with stdout redirected and returns what it printed.
func capture(t *testing.T, fn func() error) (string, error) {
	t.Helper()
	r, w, _ := os.Pipe()
	old := os.Stdout
	os.Stdout = w
	err := fn()
	os.Stdout = old
	w.Close()
	var buf bytes.Buffer
	io.Copy(&buf, r)
	return buf.String(), err
}

func TestAddDelCheck(t *testing.T) {
	dir := t.TempDir()
	args := &skel.CmdArgs{ContainerID: "abc-123", Netns: "/run/netns/x", IfName: "eth0",
		Args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME=echo-1;K8S_POD_UID=u1", StdinData: conf(t, dir, true)}
	out, err := capture(t, func() error { return Add(args) })
	if err != nil {
		t.Fatalf("Add: %v", err)
	}
	if !strings.Contains(out, "10.244.1.5/24") {
		t.Errorf("Add did not pass the previous result through: %s", out)
	}
	rec, err := ReadRecord(filepath.Join(dir, "abc-123.json"))
	if err != nil {
		t.Fatal(err)
	}
	if rec.Namespace != "demo" || rec.Name != "echo-1" || rec.UID != "u1" || rec.Netns != "/run/netns/x" || len(rec.IPs) != 1 || rec.IPs[0] != "10.244.1.5" {
		t.Errorf("record = %+v", rec)
	}
	if err := Check(args); err != nil {
		t.Errorf("Check after Add: %v", err)
	}
	if err := Del(args); err != nil {
		t.Fatalf("Del: %v", err)
	}
	if err := Check(args); err == nil {
		t.Error("Check after Del succeeded")
	}
	if err := Del(args); err != nil {
		t.Errorf("second Del: %v", err)
	}
}

func TestAddErrors(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name string
		args skel.CmdArgs
		want string
	}{
		{"no prevResult", skel.CmdArgs{ContainerID: "a", Args: "K8S_POD_NAMESPACE=a;K8S_POD_NAME=b", StdinData: conf(t, dir, false)}, "must be chained"},
		{"no pod args", skel.CmdArgs{ContainerID: "a", Args: "IgnoreUnknown=1", StdinData: conf(t, dir, true)}, "K8S_POD_NAMESPACE"},
		{"bad container id", skel.CmdArgs{ContainerID: "../../etc/x", Args: "K8S_POD_NAMESPACE=a;K8S_POD_NAME=b", StdinData: conf(t, dir, true)}, "invalid container ID"},
		{"garbage config", skel.CmdArgs{ContainerID: "a", StdinData: []byte("{")}, "parsing network configuration"},
		{"neither stateDir nor agentSocket", skel.CmdArgs{ContainerID: "a", StdinData: []byte(`{"cniVersion":"1.0.0","name":"n","type":"ambit-cni"}`)}, "lacks both stateDir and agentSocket"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := capture(t, func() error { return Add(&tc.args) })
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Add error = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestAddNotifiesAgent(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(t.TempDir(), "agent.sock")
	got := make(chan cnievent.CNIEvent, 2)
	srv, err := cnievent.ListenCNI(sock, func(_ context.Context, ev cnievent.CNIEvent) error {
		got <- ev
		if ev.Name == "blocked" {
			return errors.New("no ztunnel connection")
		}
		return nil
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go srv.Run(ctx)
	confWith := func() []byte {
		var c map[string]any
		json.Unmarshal(conf(t, dir, true), &c)
		c["agentSocket"] = sock
		b, _ := json.Marshal(c)
		return b
	}
	args := &skel.CmdArgs{ContainerID: "c1", Netns: "/run/netns/p", IfName: "eth0", Args: "K8S_POD_NAMESPACE=demo;K8S_POD_NAME=echo;K8S_POD_UID=u9", StdinData: confWith()}
	if _, err := capture(t, func() error { return Add(args) }); err != nil {
		t.Fatalf("Add: %v", err)
	}
	if ev := <-got; ev.UID != "u9" || ev.Netns != "/run/netns/p" || len(ev.IPs) != 1 {
		t.Errorf("agent got %+v", ev)
	}
	args = &skel.CmdArgs{ContainerID: "c2", Netns: "/run/netns/q", IfName: "eth0", Args: "K8S_POD_NAMESPACE=demo;K8S_POD_NAME=blocked;K8S_POD_UID=u10", StdinData: confWith()}
	if _, err := capture(t, func() error { return Add(args) }); err == nil || !strings.Contains(err.Error(), "no ztunnel connection") {
		t.Fatalf("a refused pod was let start: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "c2.json")); !os.IsNotExist(err) {
		t.Error("a refused pod stayed recorded")
	}
}

// kubeConf is the entry `ambit node-agent` puts in a node's conflist: no
// state directory, the agent's socket, kube-system excluded.
func kubeConf(sock string) []byte {
	c := map[string]any{"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "ambit-cni", "agentSocket": sock,
		"excludeNamespaces": []string{"kube-system"},
		"prevResult":        map[string]any{"cniVersion": "1.0.0", "ips": []any{map[string]any{"address": "10.244.1.5/24"}}}}
	b, _ := json.Marshal(c)
	return b
}

// TestKubernetesFailsClosed: with the agent's socket configured, a pod
// starts only when the agent said so; an absent agent keeps every pod but
// the excluded namespaces' from starting.
func TestKubernetesFailsClosed(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "cni.sock")
	args := func(ns, name string) *skel.CmdArgs {
		return &skel.CmdArgs{ContainerID: "c-" + name, Netns: "/var/run/netns/cni-1", IfName: "eth0",
			Args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=" + ns + ";K8S_POD_NAME=" + name + ";K8S_POD_INFRA_CONTAINER_ID=c", StdinData: kubeConf(sock)}
	}
	// No agent yet (a node that just rebooted).
	if _, err := capture(t, func() error { return Add(args("demo", "echo")) }); err == nil || !strings.Contains(err.Error(), "no node agent") {
		t.Fatalf("a pod started without the node agent: %v", err)
	}
	out, err := capture(t, func() error { return Add(args("kube-system", "coredns")) })
	if err != nil || !strings.Contains(out, "10.244.1.5/24") {
		t.Fatalf("an excluded namespace's pod waits for the agent: %v %s", err, out)
	}

	got := make(chan cnievent.CNIEvent, 4)
	srv, err := cnievent.ListenCNI(sock, func(_ context.Context, ev cnievent.CNIEvent) error {
		got <- ev
		if ev.Name == "broken" {
			return errors.New("enrolling demo/broken: redirect: install in netns: permission denied")
		}
		return nil
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go srv.Run(ctx)
	if out, err := capture(t, func() error { return Add(args("demo", "echo")) }); err != nil || !strings.Contains(out, "10.244.1.5/24") {
		t.Fatalf("Add with the agent: %v %s", err, out)
	}
	if ev := <-got; ev.UID != "" || ev.Name != "echo" || ev.Netns != "/var/run/netns/cni-1" || len(ev.IPs) != 1 {
		t.Errorf("agent got %+v (a runtime without K8S_POD_UID)", ev)
	}
	if _, err := capture(t, func() error { return Add(args("demo", "broken")) }); err == nil || !strings.Contains(err.Error(), "permission denied") {
		t.Fatalf("a pod whose enrollment failed was let start: %v", err)
	}
	a := args("demo", "echo")
	if err := Del(a); err != nil {
		t.Errorf("Del without a state dir: %v", err)
	}
	if err := Check(a); err != nil {
		t.Errorf("Check without a state dir: %v", err)
	}
	a.Netns = ""
	if _, err := capture(t, func() error { return Add(a) }); err == nil {
		t.Error("Add without a netns let the pod start")
	}
}
