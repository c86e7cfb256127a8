package routes

import (
	"fmt"
	"strconv"
	"strings"
)

// DefaultRouteName names the route of a Service port no route attaches to.
const DefaultRouteName = "default"

// InvalidBackendPrefix starts the name of the weighted-cluster entry that
// stands for an invalid backendRef; requests picked for it get a 500. The
// waypoint router knows the same prefix.
const InvalidBackendPrefix = "invalid-backend|"

// RouteName names the RouteConfiguration of one Service port:
// "<hostname>:<port>". Hostnames are unique across namespaces.
func RouteName(hostname string, port uint32) string {
	return hostname + ":" + strconv.FormatUint(uint64(port), 10)
}

// ClusterName is Istio's outbound cluster name, "outbound|<port>||<hostname>".
func ClusterName(hostname string, port uint32) string {
	return "outbound|" + strconv.FormatUint(uint64(port), 10) + "||" + hostname
}

// ParseClusterName reverses ClusterName. Names with a subset, a port outside
// 1..65535 or an empty hostname are not ours: ok is false.
func ParseClusterName(name string) (hostname string, port uint32, ok bool) {
	parts := strings.Split(name, "|")
	if len(parts) != 4 || parts[0] != "outbound" || parts[2] != "" || parts[3] == "" {
		return "", 0, false
	}
	p, err := strconv.ParseUint(parts[1], 10, 16)
	if err != nil || p == 0 {
		return "", 0, false
	}
	return parts[3], uint32(p), true
}

// InvalidBackendCluster names the weighted-cluster entry of an invalid
// backendRef: "invalid-backend|<ns>/<name>:<port>".
func InvalidBackendCluster(namespace, name string, port uint32) string {
	return InvalidBackendPrefix + backendLabel(namespace, name, port)
}

// EntryName names one Envoy route: "<kind>/<ns>/<name>/rule/<i>/match/<j>".
func EntryName(kind, namespace, name string, rule, match int) string {
	return fmt.Sprintf("%s/%s/%s/rule/%d/match/%d", kind, namespace, name, rule, match)
}

// tcpEntryName names the single route of a TCPRoute: "TCPRoute/<ns>/<name>/rule/0".
func tcpEntryName(namespace, name string) string {
	return fmt.Sprintf("%s/%s/%s/rule/0", kindTCPRoute, namespace, name)
}

func backendLabel(namespace, name string, port uint32) string {
	return fmt.Sprintf("%s/%s:%d", namespace, name, port)
}

// defaultHostname is used for a Service given without Hostname.
func defaultHostname(namespace, name string) string {
	return name + "." + namespace + ".svc.cluster.local"
}
