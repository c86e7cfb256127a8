package main

import (
	"context"
	"io"
	"strings"
	"testing"
)

// TestNodeAgentFlags pins the flags the DaemonSet manifests are written
// against.
func TestNodeAgentFlags(t *testing.T) {
	t.Setenv("NODE_NAME", "node-7")
	cmd := newNodeAgentCmd()
	for name, want := range map[string]string{
		"node-name":        "node-7",
		"cni-conf-dir":     "/etc/cni/net.d",
		"cni-bin-dir":      "/opt/cni/bin",
		"cni-plugin-src":   "/usr/local/bin/ambit-cni",
		"zds-socket":       "/var/run/ztunnel/ztunnel.sock",
		"kubeconfig":       "",
		"cni-event-socket": "/var/run/ambit/cni.sock",
		"host-proc":        "/proc",
		"ready-addr":       ":8000",
		"uninstall":        "false",
		"cni-own-config":   "01-ambit-cni.conflist",
	} {
		f := cmd.Flags().Lookup(name)
		if f == nil {
			t.Errorf("no --%s", name)
			continue
		}
		if f.DefValue != want {
			t.Errorf("--%s defaults to %q, want %q", name, f.DefValue, want)
		}
	}
}

func TestNodeAgentNeedsAPIServer(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "") // not in a pod
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--node-name", "n"}, "--kubeconfig PATH is required outside a pod"},
		{[]string{"--node-name", "n", "--kubeconfig", "/nonexistent"}, "--kubeconfig /nonexistent"},
	} {
		cmd := newNodeAgentCmd()
		cmd.SetArgs(tc.args)
		cmd.SetOut(io.Discard)
		cmd.SetErr(io.Discard)
		err := cmd.ExecuteContext(context.Background())
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want %q", tc.args, err, tc.want)
		}
	}
}
