package kubesource

import (
	istioinformers "istio.io/client-go/pkg/informers/externalversions"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"
	gwinformers "sigs.k8s.io/gateway-api/pkg/client/informers/externalversions"

	"github.com/ambit-mesh/ambit/controlplane/config"
)

// factories are one Run's informer factories, one per clientset.
type factories struct {
	kube    informers.SharedInformerFactory
	istio   istioinformers.SharedInformerFactory
	gateway gwinformers.SharedInformerFactory
}

func (f *factories) start(stop <-chan struct{}) {
	f.kube.Start(stop)
	f.istio.Start(stop)
	f.gateway.Start(stop)
}

// shutdown waits for every started informer to stop (after stop closed).
func (f *factories) shutdown() {
	f.kube.Shutdown()
	f.istio.Shutdown()
	f.gateway.Shutdown()
}

// kindInfo is one watched kind.
type kindInfo struct {
	kind     string                  // config.Kind*
	gvk      schema.GroupVersionKind // the canonical version emitted objects carry
	resource string                  // plural resource name, for discovery
	// crd marks kinds that exist only once their CRD is installed.
	crd      bool
	informer func(*factories) cache.SharedIndexInformer
}

// crdName is the name of the kind's CustomResourceDefinition.
func (k kindInfo) crdName() string { return k.resource + "." + k.gvk.Group }

// kinds lists every watched kind: the file source's kinds (see
// filesource/kinds.go, minus its local-only LocalCluster) and what only a
// cluster has (Nodes, EndpointSlices). Built per call: nothing at package
// level is mutable.
func kinds() []kindInfo {
	core := func(kind, resource string, inf func(*factories) cache.SharedIndexInformer) kindInfo {
		return kindInfo{kind: kind, gvk: schema.GroupVersionKind{Version: "v1", Kind: kind}, resource: resource, informer: inf}
	}
	security := schema.GroupVersion{Group: "security.istio.io", Version: "v1"}
	gateway := schema.GroupVersion{Group: "gateway.networking.k8s.io", Version: "v1"}
	custom := func(gv schema.GroupVersion, kind, resource string, inf func(*factories) cache.SharedIndexInformer) kindInfo {
		return kindInfo{kind: kind, gvk: gv.WithKind(kind), resource: resource, crd: true, informer: inf}
	}
	return []kindInfo{
		core(config.KindNamespace, "namespaces", func(f *factories) cache.SharedIndexInformer { return f.kube.Core().V1().Namespaces().Informer() }),
		core(config.KindServiceAccount, "serviceaccounts", func(f *factories) cache.SharedIndexInformer {
			return f.kube.Core().V1().ServiceAccounts().Informer()
		}),
		core(config.KindPod, "pods", func(f *factories) cache.SharedIndexInformer { return f.kube.Core().V1().Pods().Informer() }),
		core(config.KindService, "services", func(f *factories) cache.SharedIndexInformer { return f.kube.Core().V1().Services().Informer() }),
		core(config.KindNode, "nodes", func(f *factories) cache.SharedIndexInformer { return f.kube.Core().V1().Nodes().Informer() }),
		{kind: config.KindEndpointSlice, gvk: schema.GroupVersionKind{Group: "discovery.k8s.io", Version: "v1", Kind: config.KindEndpointSlice},
			resource: "endpointslices", informer: func(f *factories) cache.SharedIndexInformer {
				return f.kube.Discovery().V1().EndpointSlices().Informer()
			}},
		custom(security, config.KindAuthorizationPolicy, "authorizationpolicies", func(f *factories) cache.SharedIndexInformer {
			return f.istio.Security().V1().AuthorizationPolicies().Informer()
		}),
		custom(security, config.KindPeerAuthentication, "peerauthentications", func(f *factories) cache.SharedIndexInformer {
			return f.istio.Security().V1().PeerAuthentications().Informer()
		}),
		custom(gateway, config.KindGateway, "gateways", func(f *factories) cache.SharedIndexInformer {
			return f.gateway.Gateway().V1().Gateways().Informer()
		}),
		custom(gateway, config.KindHTTPRoute, "httproutes", func(f *factories) cache.SharedIndexInformer {
			return f.gateway.Gateway().V1().HTTPRoutes().Informer()
		}),
		custom(gateway, config.KindGRPCRoute, "grpcroutes", func(f *factories) cache.SharedIndexInformer {
			return f.gateway.Gateway().V1().GRPCRoutes().Informer()
		}),
		// TCPRoute: served as v1 by Gateway API v1.5+ (standard and
		// experimental channels); the experimental channel also serves
		// v1alpha2, the version Istio's docs write, with the same schema.
		custom(gateway, config.KindTCPRoute, "tcproutes", func(f *factories) cache.SharedIndexInformer {
			return f.gateway.Gateway().V1().TCPRoutes().Informer()
		}),
	}
}
