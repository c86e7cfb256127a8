package local

import (
	"crypto/rand"
	"fmt"
	"hash/fnv"
	"os"
	"path/filepath"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// podNetnsName names a pod's network namespace: ambit-pod-<ns>-<name>
// when that is unambiguous (the namespace has no "-") and short, else a
// readable prefix, "_" and a hash of namespace/name. Kubernetes names never
// hold "_", so the two forms never meet and distinct pods get distinct
// names (without the rule, demo/a-b and demo-a/b would share one).
func podNetnsName(namespace, name string) string {
	n := NamePrefix + "pod-" + namespace + "-" + name
	if len(n) <= 63 && !strings.Contains(namespace, "-") {
		return n
	}
	h := fnv.New64a()
	h.Write([]byte(namespace + "/" + name))
	if len(n) > 47 {
		n = n[:47]
	}
	return fmt.Sprintf("%s_%016x", n, h.Sum64())
}

// newUID returns a random RFC 4122 version 4 UUID, as Kubernetes gives pods.
func newUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// placePod picks the pod's node: spec.nodeName, else the node with the
// fewest pods (the first such in order).
func placePod(pod *corev1.Pod, nodes []NodeStatus, podsPerNode map[string]int) (string, error) {
	if pod.Spec.NodeName != "" {
		for _, n := range nodes {
			if n.Name == pod.Spec.NodeName {
				return n.Name, nil
			}
		}
		var names []string
		for _, n := range nodes {
			names = append(names, n.Name)
		}
		return "", fmt.Errorf("pod %s/%s: spec.nodeName %q is not a node of this mesh (nodes: %s)", pod.Namespace, pod.Name, pod.Spec.NodeName, strings.Join(names, ", "))
	}
	if len(nodes) == 0 {
		return "", fmt.Errorf("pod %s/%s: no nodes", pod.Namespace, pod.Name)
	}
	best := nodes[0].Name
	for _, n := range nodes[1:] {
		if podsPerNode[n.Name] < podsPerNode[best] {
			best = n.Name
		}
	}
	return best, nil
}

// podArgv returns the command line of the pod's first container.
func podArgv(pod *corev1.Pod) ([]string, error) {
	if len(pod.Spec.Containers) == 0 {
		return nil, fmt.Errorf("pod %s/%s has no containers", pod.Namespace, pod.Name)
	}
	c := pod.Spec.Containers[0]
	if len(c.Command) == 0 {
		return nil, fmt.Errorf("pod %s/%s: container %q has no command: local mode runs no images, so spec.containers[0].command is required", pod.Namespace, pod.Name, c.Name)
	}
	return append(append([]string{}, c.Command...), c.Args...), nil
}

// serviceAccount is the pod's service account, "default" when unset.
func serviceAccount(pod *corev1.Pod) string {
	if pod.Spec.ServiceAccountName != "" {
		return pod.Spec.ServiceAccountName
	}
	return "default"
}

// podEnv resolves the environment of the pod's first container: PATH with
// binDir first, HOSTNAME, then the manifest's env with downward-API
// fieldRefs resolved.
func podEnv(pod *corev1.Pod, st *PodStatus, binDir string) ([]string, error) {
	env := map[string]string{
		"PATH":     binDir + ":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HOSTNAME": pod.Name,
		"HOME":     "/root",
	}
	order := []string{"PATH", "HOSTNAME", "HOME"}
	if len(pod.Spec.Containers) > 0 {
		for _, e := range pod.Spec.Containers[0].Env {
			val := e.Value
			if e.ValueFrom != nil {
				if e.ValueFrom.FieldRef == nil {
					return nil, fmt.Errorf("pod %s/%s: env %s: only fieldRef is supported in local mode", pod.Namespace, pod.Name, e.Name)
				}
				switch e.ValueFrom.FieldRef.FieldPath {
				case "metadata.name":
					val = pod.Name
				case "metadata.namespace":
					val = pod.Namespace
				case "metadata.uid":
					val = st.UID
				case "spec.nodeName":
					val = st.Node
				case "spec.serviceAccountName":
					val = serviceAccount(pod)
				case "status.podIP":
					val = st.IP
				default:
					return nil, fmt.Errorf("pod %s/%s: env %s: unsupported fieldRef %q", pod.Namespace, pod.Name, e.Name, e.ValueFrom.FieldRef.FieldPath)
				}
			}
			if _, seen := env[e.Name]; !seen {
				order = append(order, e.Name)
			}
			env[e.Name] = val
		}
	}
	out := make([]string, 0, len(order))
	for _, k := range order {
		out = append(out, k+"="+env[k])
	}
	return out, nil
}

// selfBinDir is the directory of the running ambit binary, where make build
// also puts ambit-cni and the reference CNI plugins.
func selfBinDir() (self, dir string, err error) {
	self, err = os.Executable()
	if err != nil {
		return "", "", fmt.Errorf("locating the ambit binary: %w", err)
	}
	self, err = filepath.EvalSymlinks(self)
	if err != nil {
		return "", "", fmt.Errorf("locating the ambit binary: %w", err)
	}
	return self, filepath.Dir(self), nil
}

// checkPlugins verifies the CNI plugins and the ztunnel binary are next to
// the binary.
func checkPlugins(binDir string) error {
	var missing []string
	for _, p := range []string{"bridge", "host-local", "ambit-cni", "ambit-ztunnel"} {
		if _, err := os.Stat(filepath.Join(binDir, p)); err != nil {
			missing = append(missing, p)
		}
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		return fmt.Errorf("%s not found in %s: run `make build`, which builds them (the CNI plugins from their Go module)", strings.Join(missing, ", "), binDir)
	}
	return nil
}
