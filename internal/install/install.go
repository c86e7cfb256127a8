// Package install applies Ambit's manifests to a cluster and removes them:
// server-side apply with field manager "ambit" through client-go, CRDs
// first (waiting until they are Established), then the objects in the
// order package manifests renders them, then (optionally) a wait until
// the control plane Deployment and the DaemonSets are ready, with a line
// per object as it goes. Uninstall deletes in reverse order and waits for
// each object (and a workload's pods) to be gone before the next, so that
// the node agents, which clean their nodes on SIGTERM when their DaemonSet
// is gone, finish while ztunnel and the API permissions are still there.
//
// The node agent's contract (cmd/ambit node-agent): on SIGTERM, if its
// DaemonSet is gone or being deleted, it removes its CNI config entry, the
// ambit-cni binary and the host's probe SNAT table; otherwise (an upgrade)
// it leaves the node as it is.
package install

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"

	"github.com/ambit-mesh/ambit/identity"
	"github.com/ambit-mesh/ambit/manifests"
)

// FieldManager is the server-side apply field manager of every object.
const FieldManager = "ambit"

// The CA secret, in Istio's plug-in CA layout (what istiod mounts as
// cacerts): ca-cert.pem signs, cert-chain.pem is it followed by its chain
// up to the root, root-cert.pem the root.
const (
	CASecret        = "cacerts"
	caRootValidity  = 10 * 365 * 24 * time.Hour
	statusLeaseName = "ambit-controlplane-status" // kubestatus.DefaultLeaseName
	rootCertCM      = "istio-ca-root-cert"        // rootcert.ConfigMapName
	rootCertCMLabel = "istio.io/config=true"      // set on the ConfigMaps the control plane publishes
	// RedirectionAnnotation marks a pod whose traffic the node agent captures.
	RedirectionAnnotation = "ambient.istio.io/redirection"
)

// Client talks to one cluster.
type Client struct {
	Dynamic dynamic.Interface
	Kube    kubernetes.Interface
	Mapper  meta.RESTMapper
	// Out receives the progress lines (nil: none).
	Out io.Writer
	// Poll is how often waits look again (default 500 ms).
	Poll time.Duration
	// Now is the clock (default time.Now), for the CA's validity.
	Now func() time.Time
}

// NewClient returns a Client for rc.
func NewClient(rc *rest.Config, out io.Writer) (*Client, error) {
	rc = rest.CopyConfig(rc)
	if rc.QPS == 0 {
		rc.QPS, rc.Burst = 50, 100
	}
	kc, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, err
	}
	dc, err := dynamic.NewForConfig(rc)
	if err != nil {
		return nil, err
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(kc.Discovery()))
	return &Client{Dynamic: dc, Kube: kc, Mapper: mapper, Out: out}, nil
}

func (c *Client) printf(format string, args ...any) {
	if c.Out != nil {
		fmt.Fprintf(c.Out, format+"\n", args...)
	}
}

// line prints one progress line: a fixed-width verb, then the object.
func (c *Client) line(verb, what string, detail ...string) {
	s := fmt.Sprintf("%-12s %s", verb, what)
	if len(detail) > 0 && detail[0] != "" {
		s += ": " + strings.Join(detail, " ")
	}
	c.printf("%s", s)
}

func (c *Client) poll() time.Duration {
	if c.Poll > 0 {
		return c.Poll
	}
	return 500 * time.Millisecond
}

func (c *Client) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}

// resource returns the dynamic client for o's kind (and namespace).
func (c *Client) resource(u *unstructured.Unstructured) (dynamic.ResourceInterface, error) {
	gvk := u.GroupVersionKind()
	m, err := c.Mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", gvk, err)
	}
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		ns := u.GetNamespace()
		if ns == "" {
			return nil, fmt.Errorf("%s %s: namespaced kind without a namespace", gvk.Kind, u.GetName())
		}
		return c.Dynamic.Resource(m.Resource).Namespace(ns), nil
	}
	return c.Dynamic.Resource(m.Resource), nil
}

// Apply server-side applies o (field manager "ambit", taking over fields
// another manager set: the install is the source of truth for its objects).
func (c *Client) Apply(ctx context.Context, o manifests.Object) error {
	r, err := c.resource(o.Unstructured)
	if err != nil {
		return err
	}
	if _, err := r.Apply(ctx, o.GetName(), o.Unstructured, metav1.ApplyOptions{FieldManager: FieldManager, Force: true}); err != nil {
		return fmt.Errorf("applying %s (%s): %w", o.Ref(), o.Source, err)
	}
	return nil
}

// InstallOptions tune Install.
type InstallOptions struct {
	// CRDs are applied first, and must be Established before the rest.
	CRDs []manifests.Object
	// TrustDomain of a generated CA (when Secret cacerts is absent).
	TrustDomain string
	// Wait for the control plane and the DaemonSets to be ready.
	Wait bool
	// Timeout bounds each wait (default 5 minutes).
	Timeout time.Duration
}

func (o InstallOptions) timeout() time.Duration {
	if o.Timeout > 0 {
		return o.Timeout
	}
	return 5 * time.Minute
}

// Install applies crds and objs (the namespace first, CRDs next), makes
// sure the CA secret exists, and with Wait waits for the workloads.
// Applying again changes nothing that is already as rendered.
func (c *Client) Install(ctx context.Context, objs []manifests.Object, o InstallOptions) error {
	var nsObjs, rest []manifests.Object
	for _, obj := range objs {
		if obj.GetKind() == "Namespace" {
			nsObjs = append(nsObjs, obj)
		} else {
			rest = append(rest, obj)
		}
	}
	for _, obj := range nsObjs {
		if err := c.Apply(ctx, obj); err != nil {
			return err
		}
		c.line("applied", obj.Ref())
	}
	if len(o.CRDs) > 0 {
		for _, crd := range o.CRDs {
			if err := c.Apply(ctx, crd); err != nil {
				return err
			}
			c.line("applied", crd.Ref())
		}
		wctx, cancel := context.WithTimeout(ctx, o.timeout())
		err := c.waitEstablished(wctx, o.CRDs)
		cancel()
		if err != nil {
			return err
		}
		c.line("established", fmt.Sprintf("%d CustomResourceDefinitions", len(o.CRDs)))
	}
	if err := c.ensureCA(ctx, o.TrustDomain); err != nil {
		return err
	}
	for _, obj := range rest {
		if err := c.Apply(ctx, obj); err != nil {
			return err
		}
		c.line("applied", obj.Ref())
	}
	if !o.Wait {
		return nil
	}
	for _, obj := range rest {
		if !isWorkload(obj) {
			continue
		}
		wctx, cancel := context.WithTimeout(ctx, o.timeout())
		err := c.waitReady(wctx, obj)
		cancel()
		if err != nil {
			return err
		}
	}
	return nil
}

func isWorkload(o manifests.Object) bool {
	gk := o.GroupVersionKind().GroupKind()
	return gk == (schema.GroupKind{Group: "apps", Kind: "Deployment"}) || gk == (schema.GroupKind{Group: "apps", Kind: "DaemonSet"})
}

var crdResource = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

func (c *Client) waitEstablished(ctx context.Context, crds []manifests.Object) error {
	pending := map[string]bool{}
	for _, crd := range crds {
		pending[crd.GetName()] = true
	}
	for {
		for name := range pending {
			u, err := c.Dynamic.Resource(crdResource).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				continue
			}
			conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
			for _, cond := range conds {
				m, _ := cond.(map[string]any)
				if m["type"] == "Established" && m["status"] == "True" {
					delete(pending, name)
				}
			}
		}
		if len(pending) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			names := make([]string, 0, len(pending))
			for n := range pending {
				names = append(names, n)
			}
			slices.Sort(names)
			return fmt.Errorf("CRDs not Established: %s: %w", strings.Join(names, ", "), ctx.Err())
		case <-time.After(c.poll()):
		}
	}
}

// ensureCA creates Secret cacerts with a new root for trustDomain unless
// it exists (a root is never replaced: every workload certificate chains
// to it; bring your own in Istio's plug-in CA layout before installing).
func (c *Client) ensureCA(ctx context.Context, trustDomain string) error {
	secrets := c.Kube.CoreV1().Secrets(manifests.Namespace)
	ref := "Secret " + manifests.Namespace + "/" + CASecret
	if s, err := secrets.Get(ctx, CASecret, metav1.GetOptions{}); err == nil {
		for _, k := range []string{"cert-chain.pem", "ca-key.pem"} {
			if len(s.Data[k]) == 0 {
				return fmt.Errorf("%s exists without %s: the control plane needs cert-chain.pem (the signing certificate, then its chain up to the root) and ca-key.pem", ref, k)
			}
		}
		c.line("kept", ref, "the existing CA")
		return nil
	} else if !apierrors.IsNotFound(err) {
		return fmt.Errorf("%s: %w", ref, err)
	}
	if trustDomain == "" {
		trustDomain = identity.DefaultTrustDomain
	}
	s, err := NewCASecret(trustDomain, c.now())
	if err != nil {
		return err
	}
	if _, err := secrets.Create(ctx, s, metav1.CreateOptions{FieldManager: FieldManager}); err != nil {
		if apierrors.IsAlreadyExists(err) { // a concurrent install
			c.line("kept", ref, "the existing CA")
			return nil
		}
		return fmt.Errorf("creating %s: %w", ref, err)
	}
	c.line("created", ref, "a new root for trust domain "+trustDomain)
	return nil
}

// NewCASecret returns Secret cacerts holding a new self-signed root.
func NewCASecret(trustDomain string, now time.Time) (*corev1.Secret, error) {
	auth, err := identity.NewRootAuthority(trustDomain, caRootValidity, now)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(auth.Key)
	if err != nil {
		return nil, err
	}
	root := identity.EncodeCerts(auth.Cert)
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: CASecret, Namespace: manifests.Namespace, Labels: map[string]string{
			manifests.ManagedByLabel: manifests.ManagedBy, manifests.ComponentLabel: manifests.ComponentControlPlane,
		}},
		Type: corev1.SecretTypeOpaque,
		Data: map[string][]byte{
			"ca-cert.pem":    root,
			"ca-key.pem":     pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
			"cert-chain.pem": root,
			"root-cert.pem":  root,
		},
	}, nil
}

// readiness describes a workload's rollout: ready, and "n/m" for people.
func readiness(obj runtime.Object) (bool, string) {
	switch w := obj.(type) {
	case *appsv1.Deployment:
		want := int32(1)
		if w.Spec.Replicas != nil {
			want = *w.Spec.Replicas
		}
		s := w.Status
		ready := s.ObservedGeneration >= w.Generation && s.UpdatedReplicas == want && s.AvailableReplicas == want && s.Replicas == want
		return ready, fmt.Sprintf("%d/%d ready", s.AvailableReplicas, want)
	case *appsv1.DaemonSet:
		s := w.Status
		ready := s.ObservedGeneration >= w.Generation && s.UpdatedNumberScheduled == s.DesiredNumberScheduled && s.NumberAvailable == s.DesiredNumberScheduled
		if s.ObservedGeneration < w.Generation {
			return false, "rollout not observed yet"
		}
		return ready, fmt.Sprintf("%d/%d nodes ready", s.NumberAvailable, s.DesiredNumberScheduled)
	}
	return false, "unknown kind"
}

func (c *Client) getWorkload(ctx context.Context, o manifests.Object) (runtime.Object, error) {
	apps := c.Kube.AppsV1()
	switch o.GetKind() {
	case "Deployment":
		return apps.Deployments(o.GetNamespace()).Get(ctx, o.GetName(), metav1.GetOptions{})
	case "DaemonSet":
		return apps.DaemonSets(o.GetNamespace()).Get(ctx, o.GetName(), metav1.GetOptions{})
	}
	return nil, fmt.Errorf("%s is not a workload", o.Ref())
}

// waitReady waits for a Deployment or DaemonSet to be rolled out, printing
// a line each time its state changes.
func (c *Client) waitReady(ctx context.Context, o manifests.Object) error {
	last := ""
	for {
		w, err := c.getWorkload(ctx, o)
		state := ""
		if err != nil {
			state = err.Error()
		} else {
			var ok bool
			ok, state = readiness(w)
			if ok {
				c.line("ready", o.Ref(), state)
				return nil
			}
		}
		if state != last {
			c.line("waiting", o.Ref(), state)
			last = state
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not ready (%s): %w%s", o.Ref(), last, ctx.Err(), c.podHint(o))
		case <-time.After(c.poll()):
		}
	}
}

// podHint says why a workload's pods are not ready, from their status.
func (c *Client) podHint(o manifests.Object) string {
	sel, ok := selectorOf(o)
	if !ok {
		return ""
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	pods, err := c.Kube.CoreV1().Pods(o.GetNamespace()).List(ctx, metav1.ListOptions{LabelSelector: sel})
	if err != nil || len(pods.Items) == 0 {
		return "; no pods (kubectl -n " + o.GetNamespace() + " describe " + strings.ToLower(o.GetKind()) + " " + o.GetName() + ")"
	}
	var why []string
	for _, p := range pods.Items {
		for _, cs := range p.Status.ContainerStatuses {
			if cs.State.Waiting != nil {
				why = append(why, fmt.Sprintf("%s: %s %s", p.Name, cs.State.Waiting.Reason, cs.State.Waiting.Message))
			}
		}
		if len(p.Status.ContainerStatuses) == 0 {
			for _, cond := range p.Status.Conditions {
				if cond.Status != corev1.ConditionTrue && cond.Message != "" {
					why = append(why, fmt.Sprintf("%s: %s", p.Name, cond.Message))
				}
			}
		}
		if len(why) >= 3 {
			break
		}
	}
	if len(why) == 0 {
		return ""
	}
	return "; " + strings.Join(why, "; ")
}

// selectorOf returns a workload's pod selector (matchLabels).
func selectorOf(o manifests.Object) (string, bool) {
	if !isWorkload(o) {
		return "", false
	}
	m, found, err := unstructured.NestedStringMap(o.Object, "spec", "selector", "matchLabels")
	if err != nil || !found || len(m) == 0 {
		return "", false
	}
	return labels.SelectorFromSet(m).String(), true
}

// UninstallOptions tune Uninstall.
type UninstallOptions struct {
	// Purge also deletes the CRDs (and with them every Istio and Gateway
	// API resource in the cluster) and the namespace.
	Purge bool
	// CRDs to delete with Purge.
	CRDs []manifests.Object
	// Wait for each object to be gone before deleting the next.
	Wait bool
	// Timeout bounds each wait (default 5 minutes).
	Timeout time.Duration
}

// Uninstall deletes objs in reverse order, then what the control plane
// left (its status Lease and the istio-ca-root-cert ConfigMaps it
// published), the CA secret if the install generated it, and with Purge
// the CRDs and the namespace. Without Purge the namespace and the CRDs
// stay. Objects already gone are fine: uninstall can be run again.
func (c *Client) Uninstall(ctx context.Context, objs []manifests.Object, o UninstallOptions) error {
	timeout := o.Timeout
	if timeout <= 0 {
		timeout = 5 * time.Minute
	}
	var namespaces []manifests.Object
	for i := len(objs) - 1; i >= 0; i-- {
		obj := objs[i]
		if obj.GetKind() == "Namespace" {
			namespaces = append(namespaces, obj)
			continue
		}
		if err := c.deleteAndWait(ctx, obj, o.Wait, timeout); err != nil {
			return err
		}
	}
	if err := c.deleteLeftovers(ctx, o.Wait, timeout); err != nil {
		return err
	}
	c.warnCapturedPods(ctx)
	if !o.Purge {
		for _, ns := range namespaces {
			c.line("kept", ns.Ref()+" and the CRDs", "--purge deletes them")
		}
		return nil
	}
	for i := len(o.CRDs) - 1; i >= 0; i-- {
		if err := c.deleteAndWait(ctx, o.CRDs[i], o.Wait, timeout); err != nil {
			return err
		}
	}
	for _, ns := range namespaces {
		if err := c.deleteAndWait(ctx, ns, o.Wait, timeout); err != nil {
			return err
		}
	}
	return nil
}

// deleteAndWait deletes obj (dependents in the background) and, with
// wait, waits until it and a workload's pods are gone.
func (c *Client) deleteAndWait(ctx context.Context, obj manifests.Object, wait bool, timeout time.Duration) error {
	r, err := c.resource(obj.Unstructured)
	if err != nil {
		if meta.IsNoMatchError(err) {
			c.line("absent", obj.Ref(), "kind not served")
			return nil
		}
		return err
	}
	bg := metav1.DeletePropagationBackground
	err = r.Delete(ctx, obj.GetName(), metav1.DeleteOptions{PropagationPolicy: &bg})
	switch {
	case apierrors.IsNotFound(err):
		c.line("absent", obj.Ref())
	case err != nil:
		return fmt.Errorf("deleting %s: %w", obj.Ref(), err)
	default:
		c.line("deleted", obj.Ref())
	}
	if !wait {
		return nil
	}
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := c.waitGone(wctx, obj.Ref(), func(ctx context.Context) (bool, error) {
		_, err := r.Get(ctx, obj.GetName(), metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return true, nil
		}
		return false, err
	}); err != nil {
		return err
	}
	if sel, ok := selectorOf(obj); ok {
		pods := c.Kube.CoreV1().Pods(obj.GetNamespace())
		return c.waitGone(wctx, obj.Ref()+" pods", func(ctx context.Context) (bool, error) {
			l, err := pods.List(ctx, metav1.ListOptions{LabelSelector: sel})
			if err != nil {
				return false, err
			}
			return len(l.Items) == 0, nil
		})
	}
	return nil
}

func (c *Client) waitGone(ctx context.Context, what string, gone func(context.Context) (bool, error)) error {
	var lastErr error
	for {
		ok, err := gone(ctx)
		if ok {
			return nil
		}
		if err != nil {
			lastErr = err
		}
		select {
		case <-ctx.Done():
			if lastErr != nil {
				return fmt.Errorf("%s still there: %w (last error: %v)", what, ctx.Err(), lastErr)
			}
			return fmt.Errorf("%s still there: %w", what, ctx.Err())
		case <-time.After(c.poll()):
		}
	}
}

// deleteLeftovers deletes what the control plane made and what Install
// generated: the status Lease, every istio-ca-root-cert ConfigMap it
// published, and Secret cacerts when the install generated it (a CA you
// brought stays).
func (c *Client) deleteLeftovers(ctx context.Context, wait bool, timeout time.Duration) error {
	ns := manifests.Namespace
	del := func(ref string, err error) error {
		switch {
		case apierrors.IsNotFound(err):
			return nil
		case err != nil:
			return fmt.Errorf("deleting %s: %w", ref, err)
		}
		c.line("deleted", ref)
		return nil
	}
	if err := del("Lease "+ns+"/"+statusLeaseName, c.Kube.CoordinationV1().Leases(ns).Delete(ctx, statusLeaseName, metav1.DeleteOptions{})); err != nil {
		return err
	}
	secrets := c.Kube.CoreV1().Secrets(ns)
	if s, err := secrets.Get(ctx, CASecret, metav1.GetOptions{}); err == nil {
		ref := "Secret " + ns + "/" + CASecret
		if s.Labels[manifests.ManagedByLabel] == manifests.ManagedBy {
			if err := del(ref, secrets.Delete(ctx, CASecret, metav1.DeleteOptions{})); err != nil {
				return err
			}
		} else {
			c.line("kept", ref, "a CA you brought (not generated by ambit install)")
		}
	} else if !apierrors.IsNotFound(err) {
		return err
	}
	cms, err := c.Kube.CoreV1().ConfigMaps("").List(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + rootCertCM, LabelSelector: rootCertCMLabel})
	if err != nil {
		return fmt.Errorf("listing %s ConfigMaps: %w", rootCertCM, err)
	}
	n := 0
	for _, cm := range cms.Items {
		err := c.Kube.CoreV1().ConfigMaps(cm.Namespace).Delete(ctx, cm.Name, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("deleting ConfigMap %s/%s: %w", cm.Namespace, cm.Name, err)
		}
		n++
	}
	if n > 0 {
		c.line("deleted", fmt.Sprintf("%d ConfigMaps %s", n, rootCertCM))
	}
	return nil
}

// warnCapturedPods says which pods still carry the redirection annotation
// after the node agents are gone. A node agent that stops on uninstall
// releases its node's pods and removes their annotation, so these are pods
// it could not release (its node down, the agent killed before it was
// done): their capture rules may stay in their network namespace until
// they restart (or `ambit node-agent --uninstall` runs on the node).
func (c *Client) warnCapturedPods(ctx context.Context) {
	pods, err := c.Kube.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return
	}
	var left []string
	for _, p := range pods.Items {
		if _, ok := p.Annotations[RedirectionAnnotation]; ok {
			left = append(left, p.Namespace+"/"+p.Name)
		}
	}
	if len(left) == 0 {
		return
	}
	more := ""
	if len(left) > 5 {
		left, more = left[:5], fmt.Sprintf(" and %d more", len(left)-5)
	}
	c.line("warning", fmt.Sprintf("pods still marked %s were not released by their node agent and may stay captured until they restart: %s%s", RedirectionAnnotation, strings.Join(left, ", "), more))
}
