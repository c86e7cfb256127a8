// Package deprules checks the repository's dependency rules, in the spirit
// of tailscale's tstest/deptest: data flows one way (config -> control plane
// -> proxies -> packets), so the proxies never link control-plane code or
// Kubernetes CRD clients, and the HBONE and identity layers stay
// self-contained.
package deprules

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/ambit-mesh/ambit"

// deps returns every package pkg depends on, transitively (go list -deps).
func deps(t *testing.T, pkg string) []string {
	t.Helper()
	out, err := exec.Command("go", "list", "-deps", "-json=ImportPath", pkg).Output()
	if err != nil {
		t.Fatalf("go list -deps %s: %v", pkg, err)
	}
	var all []string
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for dec.More() {
		var p struct{ ImportPath string }
		if err := dec.Decode(&p); err != nil {
			t.Fatalf("go list output: %v", err)
		}
		all = append(all, p.ImportPath)
	}
	return all
}

// directImports returns the packages pkg imports itself (no tests).
func directImports(t *testing.T, pkg string) []string {
	t.Helper()
	out, err := exec.Command("go", "list", "-f", `{{join .Imports "\n"}}`, pkg).Output()
	if err != nil {
		t.Fatalf("go list %s: %v", pkg, err)
	}
	return strings.Fields(string(out))
}

func hasPrefix(p string, prefixes []string) bool {
	for _, x := range prefixes {
		if p == x || strings.HasPrefix(p, x+"/") {
			return true
		}
	}
	return false
}

func TestProxiesDoNotLinkTheControlPlane(t *testing.T) {
	forbidden := []string{
		module + "/controlplane",
		module + "/local",
		module + "/nodeagent",
		"istio.io/client-go",
		"k8s.io",
		"sigs.k8s.io",
	}
	// The proxies, and what they share with the control plane's CLI. No
	// Kubernetes library at all: the node's binary stays small (every
	// package linked is resident memory on every node).
	for _, pkg := range []string{"cmd/ambit-ztunnel", "ztunnel", "waypoint", "waypoint/router", "waypoint/rbac", "cmd/internal/waypointcmd", "authz", "hbone", "identity", "identity/caclient", "redirect", "zds", "nsnet"} {
		t.Run(pkg, func(t *testing.T) {
			for _, d := range deps(t, module+"/"+pkg) {
				if hasPrefix(d, forbidden) {
					t.Errorf("%s depends on %s", pkg, d)
				}
			}
		})
	}
}

func TestHBONEAndIdentityAreSelfContained(t *testing.T) {
	for pkg, allowed := range map[string][]string{
		"identity": {module + "/internal/dnsname"},
		"hbone":    {module + "/identity", module + "/internal/dnsname"},
	} {
		t.Run(pkg, func(t *testing.T) {
			for _, d := range directImports(t, module+"/"+pkg) {
				if strings.HasPrefix(d, module+"/") && !hasPrefix(d, allowed) {
					t.Errorf("%s imports %s; it may import only %v of this module", pkg, d, allowed)
				}
			}
		})
	}
}

// TestRulesCanFail makes sure the checks above see real dependencies: the
// control plane's model does link the CRD types.
func TestRulesCanFail(t *testing.T) {
	found := false
	for _, d := range deps(t, module+"/controlplane/model") {
		if hasPrefix(d, []string{"istio.io/client-go"}) {
			found = true
		}
	}
	if !found {
		t.Fatal("controlplane/model does not depend on istio.io/client-go: the dependency listing is broken")
	}
}

// TestNodePartsStayLean: the CNI plugin (exec'd by the runtime for every
// pod) and the node agent's shared core (linked by local mode too) carry no
// Kubernetes library and no control plane; only nodeagent/kubeagent, the
// agent on Kubernetes, does.
func TestNodePartsStayLean(t *testing.T) {
	forbidden := []string{module + "/controlplane", module + "/nodeagent/kubeagent", "istio.io/client-go", "k8s.io", "sigs.k8s.io"}
	for _, pkg := range []string{"cmd/ambit-cni", "cniplugin", "nodeagent", "nodeagent/cnievent", "nodeagent/cniconf"} {
		t.Run(pkg, func(t *testing.T) {
			for _, d := range deps(t, module+"/"+pkg) {
				if hasPrefix(d, forbidden) {
					t.Errorf("%s depends on %s", pkg, d)
				}
			}
		})
	}
}
