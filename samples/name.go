package samples

import "os"

// DefaultName is the pod name a sample reports when none is given: $POD_NAME
// (set from the downward API in the demo manifests), else $HOSTNAME, else
// the host name, else "unknown".
func DefaultName() string {
	for _, v := range []string{"POD_NAME", "HOSTNAME"} {
		if s := os.Getenv(v); s != "" {
			return s
		}
	}
	if h, err := os.Hostname(); err == nil && h != "" {
		return h
	}
	return "unknown"
}
