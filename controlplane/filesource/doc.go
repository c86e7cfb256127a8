// Package filesource is the file config source: it loads a directory of
// Kubernetes-style YAML manifests (*.yaml and *.yml, multi-document, not
// hidden, not editor temporaries, not in sub-directories) into the upstream
// Go types (k8s.io/api, istio.io/client-go, sigs.k8s.io/gateway-api) and
// watches the directory, emitting typed Added, Updated and Deleted events.
//
// Loading is strict. Anything the loader does not understand is refused with
// an *Error naming file, line, object and field:
//
//	demo.yaml:14: Pod demo/client: spec.containers[0].ports[0].containerPort: must be between 1 and 65535, got 70000
//
// That covers YAML syntax, unknown apiVersion/kind, unknown or repeated
// fields at any depth (inside Istio's protobuf specs too), wrongly typed
// values, invalid names, labels, IPs and ports, and the same object defined
// twice. Each kind has its own validation function; they check structure,
// not policy semantics. security.istio.io/v1beta1 objects decode into the
// v1 Go types (upstream both versions share one spec type) and carry
// apiVersion security.istio.io/v1.
//
// A file with any problem contributes nothing new: a file that fails to load
// never takes down what was loaded from it before, its previous objects stay
// in force until it is fixed or removed.
//
// Pods may carry a status (status.podIP, status.phase, validated) and
// spec.nodeName: what a kubelet would report, for a control plane that runs
// without one (`ambit controlplane --config DIR`). Services may carry
// spec.clusterIP for the same reason. Where the model reads a field an API
// server defaults, the loader defaults it the same way (a Service port's
// protocol is TCP, its targetPort its port), so that one manifest means the
// same here and on a cluster.
//
// Source implements config.Source (and config.Syncer): its events are the
// neutral config.Event values (Event, Key and Object here are aliases). In
// local mode the runtime reads the same directory to know which pods and
// services to create, and the control plane's controller consumes the
// events.
package filesource
