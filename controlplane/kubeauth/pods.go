package kubeauth

import (
	"context"
	"errors"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// runningPods selects the pods that may hold an identity: those not yet
// terminated (istiod leaves out Failed ones; Succeeded ones are done too).
const runningPods = "status.phase!=Failed,status.phase!=Succeeded"

const saNodeIndex = "saNode"

// Pods watches the cluster's running pods, indexed by node and service
// account: it answers the CA's question "does a pod with this service
// account run on this node?" (ca.PodIndex) and looks up a caller's pod
// (PodGetter), as istiod's node authorizer does. A miss in the watch
// (which may lag behind a pod just created) is confirmed on the API
// server before it counts as an answer.
type Pods struct {
	client   kubernetes.Interface
	factory  informers.SharedInformerFactory
	informer cache.SharedIndexInformer
}

// NewPods returns a pod watch on client; it runs from Start.
func NewPods(client kubernetes.Interface) (*Pods, error) {
	f := informers.NewSharedInformerFactoryWithOptions(client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = runningPods }))
	inf := f.Core().V1().Pods().Informer()
	// Keep only what the questions need: a cluster's pods are many.
	if err := inf.SetTransform(stripPod); err != nil {
		return nil, fmt.Errorf("kubeauth: pod watch: %w", err)
	}
	if err := inf.AddIndexers(cache.Indexers{saNodeIndex: func(obj any) ([]string, error) {
		p, ok := obj.(*corev1.Pod)
		if !ok || p.Spec.NodeName == "" {
			return nil, nil
		}
		return []string{saNodeKey(p.Spec.NodeName, p.Namespace, podServiceAccount(p))}, nil
	}}); err != nil {
		return nil, fmt.Errorf("kubeauth: pod index: %w", err)
	}
	return &Pods{client: client, factory: f, informer: inf}, nil
}

// Start runs the watch until ctx is done, and waits (within ctx) for its
// first list.
func (p *Pods) Start(ctx context.Context) error {
	p.factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), p.informer.HasSynced) {
		return errors.New("kubeauth: pod watch did not sync")
	}
	return nil
}

func saNodeKey(node, ns, sa string) string { return node + "/" + ns + "/" + sa }

func stripPod(obj any) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil // tombstones
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: p.Name, Namespace: p.Namespace, UID: p.UID,
			ResourceVersion: p.ResourceVersion, DeletionTimestamp: p.DeletionTimestamp},
		Spec:   corev1.PodSpec{NodeName: p.Spec.NodeName, ServiceAccountName: p.Spec.ServiceAccountName},
		Status: corev1.PodStatus{Phase: p.Status.Phase},
	}, nil
}

// HasPod implements ca.PodIndex.
func (p *Pods) HasPod(node, namespace, serviceAccount string) bool {
	if objs, err := p.informer.GetIndexer().ByIndex(saNodeIndex, saNodeKey(node, namespace, serviceAccount)); err == nil && len(objs) > 0 {
		return true
	}
	// Not (yet) in the watch: ask the API server.
	ctx, cancel := context.WithTimeout(context.Background(), defaultReviewTimeout)
	defer cancel()
	l, err := p.client.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + node + "," + runningPods})
	if err != nil {
		return false
	}
	for i := range l.Items {
		if podServiceAccount(&l.Items[i]) == serviceAccount {
			return true
		}
	}
	return false
}

// GetPod implements PodGetter: from the watch, or from the API server when
// the watch does not have it. (CallerNode also asks the API server when the
// watch has another incarnation of the pod than the token names.)
func (p *Pods) GetPod(ctx context.Context, namespace, name string) (*corev1.Pod, error) {
	obj, ok, err := p.informer.GetIndexer().GetByKey(namespace + "/" + name)
	if err == nil && ok {
		if pod, isPod := obj.(*corev1.Pod); isPod {
			return pod, nil
		}
	}
	ctx, cancel := context.WithTimeout(ctx, defaultReviewTimeout)
	defer cancel()
	pod, err := p.client.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("get pod: %w", err)
	}
	return pod, nil
}
