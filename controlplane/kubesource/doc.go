// Package kubesource is the Kubernetes config source: it watches a real API
// server with client-go shared informers and emits the same config.Event
// values, with the same upstream Go types, as the file source, so that one
// controller and one model serve both ("one model, two sources; no
// duplicated translation").
//
// It watches Namespaces, ServiceAccounts, Pods, Services, EndpointSlices and
// Nodes (k8s.io/client-go), AuthorizationPolicies and PeerAuthentications
// (security.istio.io/v1, istio.io/client-go), and Gateways, HTTPRoutes,
// GRPCRoutes and TCPRoutes (gateway.networking.k8s.io/v1,
// sigs.k8s.io/gateway-api). Every object it emits is normalised first:
//
//   - it carries its canonical apiVersion and kind, as the file source's do;
//   - resourceVersion, managedFields and the kubectl last-applied annotation
//     are removed, so an update that changes only those is equal to the
//     stored object and causes no rebuild (controller.Store compares JSON);
//   - the status of Gateways, routes and Istio policies is removed: the
//     control plane writes it (package kubestatus), the model must never
//     read it back, and writing it must not cause a rebuild;
//   - Node heartbeat times and image lists, and EndpointSlice trigger-time
//     annotations, are removed: they change on their own all the time.
//
// Pods keep their status: it is the kubelet's report (IP, phase) that the
// model reads.
//
// A custom resource kind whose CRD (in the version above) is not installed
// does not hold the source back: it is logged once as a warning, treated as
// empty, and looked for again every Options.CRDRecheck; once it appears it
// is watched like the others. HasSynced is true once every started informer
// has delivered its initial list (and the first CRD discovery is done).
//
// The source needs get, list and watch on all of these resources, cluster
// wide, and discovery access.
package kubesource
