// Package rootcert publishes the mesh's root certificates to every
// namespace as the ConfigMap istio-ca-root-cert (key root-cert.pem), as
// istiod's namespace controller does: proxies mount it to verify the
// control plane. It watches namespaces and those ConfigMaps, creates the
// ConfigMap in each new namespace, and puts it back when it is deleted or
// its root-cert.pem is changed. Other keys of the ConfigMap are left alone.
package rootcert

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	listerscorev1 "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
)

// Names, as istiod.
const (
	ConfigMapName = "istio-ca-root-cert"
	DataKey       = "root-cert.pem"
)

// configMapLabels are set on ConfigMaps the publisher creates (istiod's).
var configMapLabels = map[string]string{"istio.io/config": "true"}

// IgnoredNamespaces get no ConfigMap: Kubernetes' own (kube-system is not
// among them, so that ztunnel may run there), as istiod.
var IgnoredNamespaces = map[string]bool{"kube-public": true, "kube-node-lease": true, "local-path-storage": true}

// Publisher keeps the ConfigMap in every namespace.
type Publisher struct {
	client kubernetes.Interface
	logger *slog.Logger

	mu    sync.Mutex
	roots []byte

	factory    informers.SharedInformerFactory
	cmFactory  informers.SharedInformerFactory // ConfigMaps of our name only
	namespaces listerscorev1.NamespaceLister
	configMaps listerscorev1.ConfigMapLister
	synced     []cache.InformerSynced
	queue      workqueue.TypedRateLimitingInterface[string]
}

// New returns a publisher of rootsPEM (the CA's trust bundle in PEM); it
// runs from Run.
func New(client kubernetes.Interface, rootsPEM []byte, logger *slog.Logger) (*Publisher, error) {
	if client == nil {
		return nil, errors.New("rootcert: a Kubernetes client is required")
	}
	if len(bytes.TrimSpace(rootsPEM)) == 0 {
		return nil, errors.New("rootcert: no root certificate to publish")
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	p := &Publisher{client: client, logger: logger, roots: bytes.Clone(rootsPEM),
		factory: informers.NewSharedInformerFactory(client, 0),
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.NewTypedItemExponentialFailureRateLimiter[string](5*time.Millisecond, 30*time.Second),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "rootcert"}),
	}
	nsInf := p.factory.Core().V1().Namespaces()
	cmFactory := informers.NewSharedInformerFactoryWithOptions(client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = "metadata.name=" + ConfigMapName }))
	cmInf := cmFactory.Core().V1().ConfigMaps()
	p.namespaces, p.configMaps = nsInf.Lister(), cmInf.Lister()
	enqueueNS := func(obj any) {
		if ns, ok := obj.(*corev1.Namespace); ok {
			p.enqueue(ns.Name)
		}
	}
	enqueueCM := func(obj any) {
		if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = t.Obj
		}
		if cm, ok := obj.(*corev1.ConfigMap); ok {
			p.enqueue(cm.Namespace)
		}
	}
	if _, err := nsInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: enqueueNS, UpdateFunc: func(_, n any) { enqueueNS(n) },
	}); err != nil {
		return nil, err
	}
	if _, err := cmInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: enqueueCM, UpdateFunc: func(_, n any) { enqueueCM(n) }, DeleteFunc: enqueueCM,
	}); err != nil {
		return nil, err
	}
	p.synced = []cache.InformerSynced{nsInf.Informer().HasSynced, cmInf.Informer().HasSynced}
	p.cmFactory = cmFactory
	return p, nil
}

func (p *Publisher) enqueue(ns string) {
	if !IgnoredNamespaces[ns] {
		p.queue.Add(ns)
	}
}

// SetRoots replaces the published roots (after a root rotation) and
// updates every namespace.
func (p *Publisher) SetRoots(rootsPEM []byte) {
	p.mu.Lock()
	p.roots = bytes.Clone(rootsPEM)
	p.mu.Unlock()
	if nss, err := p.namespaces.List(labels.Everything()); err == nil {
		for _, ns := range nss {
			p.enqueue(ns.Name)
		}
	}
}

func (p *Publisher) rootsPEM() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return string(p.roots)
}

// Run publishes until ctx is done.
func (p *Publisher) Run(ctx context.Context) error {
	defer p.queue.ShutDown()
	p.factory.Start(ctx.Done())
	p.cmFactory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), p.synced...) {
		return fmt.Errorf("rootcert: caches did not sync: %w", ctx.Err())
	}
	p.logger.Info("publishing the root certificate", "configMap", ConfigMapName)
	go func() {
		<-ctx.Done()
		p.queue.ShutDown()
	}()
	for p.processNext(ctx) {
	}
	p.factory.Shutdown()
	p.cmFactory.Shutdown()
	return nil
}

func (p *Publisher) processNext(ctx context.Context) bool {
	ns, quit := p.queue.Get()
	if quit {
		return false
	}
	defer p.queue.Done(ns)
	if err := p.reconcile(ctx, ns); err != nil {
		p.logger.Warn("publishing the root certificate failed; retrying", "namespace", ns, "err", err)
		p.queue.AddRateLimited(ns)
		return true
	}
	p.queue.Forget(ns)
	return true
}

// reconcile makes namespace ns hold the ConfigMap with the current roots.
func (p *Publisher) reconcile(ctx context.Context, ns string) error {
	nsObj, err := p.namespaces.Get(ns)
	if apierrors.IsNotFound(err) {
		return nil // gone
	}
	if err != nil {
		return err
	}
	if nsObj.Status.Phase == corev1.NamespaceTerminating || nsObj.DeletionTimestamp != nil {
		return nil
	}
	want := p.rootsPEM()
	cm, err := p.configMaps.ConfigMaps(ns).Get(ConfigMapName)
	switch {
	case apierrors.IsNotFound(err):
		_, err := p.client.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: ConfigMapName, Namespace: ns, Labels: configMapLabels},
			Data:       map[string]string{DataKey: want},
		}, metav1.CreateOptions{})
		switch {
		case err == nil:
			p.logger.Info("root certificate published", "namespace", ns)
			return nil
		case apierrors.IsAlreadyExists(err):
			return nil // the watch will bring it, and a check of its content
		case apierrors.IsNotFound(err), apierrors.HasStatusCause(err, corev1.NamespaceTerminatingCause):
			return nil // the namespace went meanwhile
		case apierrors.IsForbidden(err):
			p.logger.Warn("not allowed to publish the root certificate", "namespace", ns, "err", err)
			return nil
		}
		return fmt.Errorf("creating ConfigMap %s/%s: %w", ns, ConfigMapName, err)
	case err != nil:
		return err
	}
	if cm.Data[DataKey] == want {
		return nil
	}
	upd := cm.DeepCopy()
	if upd.Data == nil {
		upd.Data = map[string]string{}
	}
	upd.Data[DataKey] = want
	if _, err := p.client.CoreV1().ConfigMaps(ns).Update(ctx, upd, metav1.UpdateOptions{}); err != nil {
		if apierrors.IsNotFound(err) {
			return nil // deleted meanwhile: the delete event brings us back
		}
		return fmt.Errorf("updating ConfigMap %s/%s: %w", ns, ConfigMapName, err)
	}
	p.logger.Info("root certificate restored", "namespace", ns)
	return nil
}
