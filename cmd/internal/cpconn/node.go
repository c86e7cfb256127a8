package cpconn

import (
	"fmt"
	"net/netip"
	"os"
	"runtime/debug"
	"strings"

	"google.golang.org/protobuf/types/known/structpb"
	// Linked for its version in the build info (IstioVersion); the CA
	// client links it anyway.
	_ "istio.io/api/security/v1alpha1"
)

// Node metadata keys (Istio's NodeMetadata JSON names).
const (
	MetaName           = "NAME"
	MetaNamespace      = "NAMESPACE"
	MetaInstanceIPs    = "INSTANCE_IPS"
	MetaNodeName       = "NODE_NAME"
	MetaClusterID      = "CLUSTER_ID"
	MetaServiceAccount = "SERVICE_ACCOUNT"
	MetaIstioVersion   = "ISTIO_VERSION"
)

// metaEnvPrefix marks environment variables that become node metadata, as
// in Istio's proxies (ISTIO_META_FOO=bar gives FOO: "bar").
const metaEnvPrefix = "ISTIO_META_"

// Node is what a proxy tells xDS about itself.
type Node struct {
	// Type is Istio's node type: "ztunnel" or "waypoint".
	Type string
	// PodName, PodNamespace and PodIP are the proxy's own pod (Kubernetes:
	// POD_NAME, POD_NAMESPACE, INSTANCE_IP). Without a pod name the node id
	// is Ambit's local-mode form (Legacy).
	PodName, PodNamespace, PodIP string
	// NodeName is the node the proxy runs on.
	NodeName string
	// ServiceAccount is the proxy's service account; sent only if set, and
	// then checked by the control plane against the token's.
	ServiceAccount string
	ClusterID      string
	// DNSDomain is the fourth part of the node id (default
	// "<namespace>.svc.cluster.local", as Istio's ztunnel).
	DNSDomain string
	// Legacy is the node id used without a pod name (local mode, where the
	// control plane is Ambit's and the proxy is no pod).
	Legacy string
}

// Validate checks that a node with a pod name can form Istio's node id.
func (n Node) Validate() error {
	if n.PodName == "" {
		return nil
	}
	if n.PodNamespace == "" {
		return fmt.Errorf("the pod namespace is required with the pod name %q (POD_NAMESPACE)", n.PodName)
	}
	if _, err := netip.ParseAddr(n.PodIP); err != nil {
		return fmt.Errorf("a valid pod IP is required with the pod name %q (INSTANCE_IP): istiod needs one in the node id: %q", n.PodName, n.PodIP)
	}
	return nil
}

// ID is the xDS node id: with a pod name, Istio's
// "<type>~<pod IP>~<pod name>.<namespace>~<namespace>.svc.cluster.local"
// (istiod refuses ids without the four parts); otherwise Legacy.
func (n Node) ID() string {
	if n.PodName == "" {
		return n.Legacy
	}
	domain := n.DNSDomain
	if domain == "" {
		domain = n.PodNamespace + ".svc.cluster.local"
	}
	return n.Type + "~" + n.PodIP + "~" + n.PodName + "." + n.PodNamespace + "~" + domain
}

// Metadata is the node metadata: what Istio's ztunnel sends (NAME,
// NAMESPACE, INSTANCE_IPS, NODE_NAME, any ISTIO_META_* variables of env)
// and CLUSTER_ID, ISTIO_VERSION and, if known, SERVICE_ACCOUNT. env is
// os.Environ() in practice (nil: none).
func (n Node) Metadata(env []string) *structpb.Struct {
	fields := map[string]*structpb.Value{}
	for _, kv := range env {
		k, v, ok := strings.Cut(kv, "=")
		if name, meta := strings.CutPrefix(k, metaEnvPrefix); ok && meta && name != "" {
			fields[name] = structpb.NewStringValue(v)
		}
	}
	set := func(k, v string) {
		if v != "" {
			fields[k] = structpb.NewStringValue(v)
		}
	}
	set(MetaName, n.PodName)
	set(MetaNamespace, n.PodNamespace)
	set(MetaInstanceIPs, n.PodIP)
	set(MetaNodeName, n.NodeName)
	set(MetaClusterID, n.ClusterID)
	set(MetaServiceAccount, n.ServiceAccount)
	if _, ok := fields[MetaIstioVersion]; !ok {
		set(MetaIstioVersion, IstioVersion())
	}
	return &structpb.Struct{Fields: fields}
}

// IstioVersion is the Istio release whose APIs this build speaks: the
// version of the istio.io/api module it was built with ("" if unknown).
func IstioVersion() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return ""
	}
	for _, d := range bi.Deps {
		if d.Path == "istio.io/api" {
			v := strings.TrimPrefix(d.Version, "v")
			if i := strings.IndexAny(v, "-+"); i >= 0 {
				v = v[:i]
			}
			return v
		}
	}
	return ""
}

// EnvOr returns the environment variable key, or def if it is unset or
// empty.
func EnvOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
