// Package filesource is the file config source: it loads a directory of
// Kubernetes-style YAML manifests into the upstream Go types (k8s.io/api,
// istio.io/client-go, sigs.k8s.io/gateway-api), rejects anything it does not
// understand with an error naming file, line, object and field, and watches
// the directory, emitting typed Added, Updated and Deleted events.
//
// A file that fails to load never takes down what was loaded before: its
// previous objects stay in force until the file is fixed or removed.
//
// In local mode this is what the control plane consumes; the local runtime
// reads the same snapshot to know which pods and services to create.
package filesource
