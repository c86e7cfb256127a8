// Package kubewaypoint deploys waypoints on Kubernetes, as istiod does
// for a Gateway of class istio-waypoint: a ServiceAccount, a Service (the
// waypoint's address: HBONE on 15008, readiness on 15021) and a Deployment
// running `ambit waypoint run`, each named after the Gateway, in its
// namespace, and owned by it (deleting the Gateway deletes them, by
// Kubernetes' garbage collector).
//
// The Deployer applies them with server-side apply under its own field
// manager, forcing: what it sets is its, what others add (an autoscaler's
// replicas, a user's annotations) stays. Applying is idempotent, so every
// control-plane replica may run it; the objects are applied again when
// the controller's waypoints change and every resync period.
package kubewaypoint

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gwclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/ambit-mesh/ambit/controlplane/controller"
	"github.com/ambit-mesh/ambit/controlplane/model"
)

// FieldManager owns the fields the Deployer applies.
const FieldManager = "ambit-waypoints"

// Paths inside a waypoint pod, as the proxies expect them (cpconn).
const (
	tokenDir = "/var/run/secrets/tokens"
	rootDir  = "/var/run/secrets/istio"
)

// Options configure the waypoints' pods.
type Options struct {
	// Image runs `ambit waypoint run` (the ambit image).
	Image           string
	ImagePullPolicy corev1.PullPolicy
	// ControlPlane is the address the waypoints dial (default
	// istiod.istio-system.svc:15012).
	ControlPlane string
	ClusterID    string
	TrustDomain  string
	Domain       string
	// Resync re-applies everything this often (default 5 minutes), so
	// that an object deleted by hand comes back.
	Resync time.Duration
	Logger *slog.Logger
}

// Deployer keeps the waypoints' objects applied.
type Deployer struct {
	opts    Options
	kube    kubernetes.Interface
	gateway gwclient.Interface
	kickc   chan struct{}

	mu        sync.Mutex
	waypoints []model.WaypointStatus
}

// New returns a Deployer using the given clients.
func New(kube kubernetes.Interface, gateway gwclient.Interface, o Options) *Deployer {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.ControlPlane == "" {
		o.ControlPlane = "istiod.istio-system.svc:15012"
	}
	if o.ClusterID == "" {
		o.ClusterID = "Kubernetes"
	}
	if o.TrustDomain == "" {
		o.TrustDomain = "cluster.local"
	}
	if o.Domain == "" {
		o.Domain = model.DefaultDomain
	}
	if o.ImagePullPolicy == "" {
		o.ImagePullPolicy = corev1.PullIfNotPresent
	}
	if o.Resync <= 0 {
		o.Resync = 5 * time.Minute
	}
	return &Deployer{opts: o, kube: kube, gateway: gateway, kickc: make(chan struct{}, 1)}
}

// OnStatus takes the controller's status (its waypoint Gateways); it
// does not block.
func (d *Deployer) OnStatus(st controller.Status) {
	var wps []model.WaypointStatus
	for _, w := range st.Waypoints {
		if w.For != "-" { // "-": a Gateway of another class
			wps = append(wps, w)
		}
	}
	d.mu.Lock()
	d.waypoints = wps
	d.mu.Unlock()
	select {
	case d.kickc <- struct{}{}:
	default:
	}
}

// Run applies the waypoints' objects whenever they change, retrying
// failures with backoff, until ctx is done.
func (d *Deployer) Run(ctx context.Context) error {
	resync := time.NewTicker(d.opts.Resync)
	defer resync.Stop()
	backoff := time.Second
	var retry <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-d.kickc:
		case <-resync.C:
		case <-retry:
		}
		d.mu.Lock()
		wps := slices.Clone(d.waypoints)
		d.mu.Unlock()
		retry = nil
		failed := false
		for _, w := range wps {
			if err := d.Apply(ctx, w.Namespace, w.Name); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				d.opts.Logger.Warn("deploying waypoint failed; will retry", "gateway", w.Namespace+"/"+w.Name, "err", err)
				failed = true
			}
		}
		if failed {
			retry = time.After(backoff)
			backoff = min(2*backoff, time.Minute)
		} else {
			backoff = time.Second
		}
	}
}

// Apply applies the ServiceAccount, Service and Deployment of the waypoint
// Gateway namespace/name. A Gateway that no longer exists is not an error.
func (d *Deployer) Apply(ctx context.Context, namespace, name string) error {
	gw, err := d.gateway.GatewayV1().Gateways(namespace).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading Gateway %s/%s: %w", namespace, name, err)
	}
	if !model.IsWaypoint(gw) {
		return nil
	}
	sa, svc, dep := d.Objects(gw)
	opts := metav1.PatchOptions{FieldManager: FieldManager, Force: ptr.To(true)}
	apply := func(kind string, obj any, patch func([]byte) error) error {
		b, err := json.Marshal(obj)
		if err != nil {
			return fmt.Errorf("encoding %s %s/%s: %w", kind, namespace, name, err)
		}
		if err := patch(b); err != nil {
			return fmt.Errorf("applying %s %s/%s: %w", kind, namespace, name, err)
		}
		return nil
	}
	core := d.kube.CoreV1()
	if err := apply("ServiceAccount", sa, func(b []byte) error {
		_, err := core.ServiceAccounts(namespace).Patch(ctx, name, types.ApplyPatchType, b, opts)
		return err
	}); err != nil {
		return err
	}
	if err := apply("Service", svc, func(b []byte) error {
		_, err := core.Services(namespace).Patch(ctx, name, types.ApplyPatchType, b, opts)
		return err
	}); err != nil {
		return err
	}
	return apply("Deployment", dep, func(b []byte) error {
		_, err := d.kube.AppsV1().Deployments(namespace).Patch(ctx, name, types.ApplyPatchType, b, opts)
		return err
	})
}

// Objects returns what a waypoint Gateway gets: its ServiceAccount,
// Service and Deployment.
func (d *Deployer) Objects(gw *gatewayv1.Gateway) (*corev1.ServiceAccount, *corev1.Service, *appsv1.Deployment) {
	o := d.opts
	owner := metav1.OwnerReference{APIVersion: gatewayv1.GroupVersion.String(), Kind: "Gateway", Name: gw.Name, UID: gw.UID,
		Controller: ptr.To(true)}
	meta := func(kind, apiVersion string, labels map[string]string) (metav1.TypeMeta, metav1.ObjectMeta) {
		return metav1.TypeMeta{Kind: kind, APIVersion: apiVersion},
			metav1.ObjectMeta{Name: gw.Name, Namespace: gw.Namespace, Labels: labels, OwnerReferences: []metav1.OwnerReference{owner}}
	}
	selector := map[string]string{model.LabelGatewayName: gw.Name}
	labels := map[string]string{model.LabelGatewayName: gw.Name, "gateway.istio.io/managed": "istio.io-mesh-controller"}
	podLabels := map[string]string{model.LabelGatewayName: gw.Name, "gateway.istio.io/managed": "istio.io-mesh-controller",
		model.LabelTunnel: model.TunnelHTTP, model.LabelDataplaneMode: model.DataplaneNone}

	sa := &corev1.ServiceAccount{}
	sa.TypeMeta, sa.ObjectMeta = meta("ServiceAccount", "v1", labels)

	svc := &corev1.Service{Spec: corev1.ServiceSpec{Selector: selector, Ports: []corev1.ServicePort{
		{Name: "mesh", Port: model.WaypointListenerPort, TargetPort: intstr.FromInt32(model.WaypointListenerPort), Protocol: corev1.ProtocolTCP},
		{Name: "status-port", Port: 15021, TargetPort: intstr.FromInt32(15021), Protocol: corev1.ProtocolTCP},
	}}}
	svc.TypeMeta, svc.ObjectMeta = meta("Service", "v1", labels)

	env := func(name, path string) corev1.EnvVar {
		return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: path}}}
	}
	container := corev1.Container{
		Name: "istio-proxy", Image: o.Image, ImagePullPolicy: o.ImagePullPolicy,
		Command: []string{"/usr/local/bin/ambit", "waypoint", "run", "--namespace", gw.Namespace, "--name", gw.Name,
			"--control-plane", o.ControlPlane, "--token-file", tokenDir + "/istio-token", "--root-cert", rootDir + "/root-cert.pem",
			"--cluster-id", o.ClusterID, "--trust-domain", o.TrustDomain, "--domain", o.Domain, "--log-format", "json"},
		Env: []corev1.EnvVar{env("POD_NAME", "metadata.name"), env("POD_NAMESPACE", "metadata.namespace"),
			env("INSTANCE_IP", "status.podIP"), env("NODE_NAME", "spec.nodeName")},
		Ports: []corev1.ContainerPort{
			{Name: "mesh", ContainerPort: model.WaypointListenerPort, Protocol: corev1.ProtocolTCP},
			{Name: "http-envoy-prom", ContainerPort: 15020, Protocol: corev1.ProtocolTCP},
			{Name: "status-port", ContainerPort: 15021, Protocol: corev1.ProtocolTCP},
		},
		ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz/ready",
			Port: intstr.FromInt32(15021)}}, PeriodSeconds: 2, TimeoutSeconds: 3},
		Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{
			corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("64Mi")}},
		SecurityContext: &corev1.SecurityContext{AllowPrivilegeEscalation: ptr.To(false), Privileged: ptr.To(false),
			ReadOnlyRootFilesystem: ptr.To(true), RunAsNonRoot: ptr.To(true), RunAsUser: ptr.To(int64(1337)), RunAsGroup: ptr.To(int64(1337)),
			Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}}},
		VolumeMounts: []corev1.VolumeMount{{Name: "istio-token", MountPath: tokenDir, ReadOnly: true},
			{Name: "istiod-ca-cert", MountPath: rootDir, ReadOnly: true}},
	}
	dep := &appsv1.Deployment{Spec: appsv1.DeploymentSpec{
		Selector: &metav1.LabelSelector{MatchLabels: selector},
		Template: corev1.PodTemplateSpec{
			ObjectMeta: metav1.ObjectMeta{Labels: podLabels, Annotations: map[string]string{"sidecar.istio.io/inject": "false"}},
			Spec: corev1.PodSpec{
				ServiceAccountName:            gw.Name,
				AutomountServiceAccountToken:  ptr.To(false),
				TerminationGracePeriodSeconds: ptr.To(int64(2)),
				SecurityContext:               &corev1.PodSecurityContext{SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}},
				Containers:                    []corev1.Container{container},
				Volumes: []corev1.Volume{
					{Name: "istio-token", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{{
						ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Audience: "istio-ca", ExpirationSeconds: ptr.To(int64(43200)), Path: "istio-token"}}}}}},
					{Name: "istiod-ca-cert", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
						LocalObjectReference: corev1.LocalObjectReference{Name: "istio-ca-root-cert"}}}},
				},
			},
		},
	}}
	dep.TypeMeta, dep.ObjectMeta = meta("Deployment", "apps/v1", labels)
	return sa, svc, dep
}
