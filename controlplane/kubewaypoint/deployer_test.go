package kubewaypoint_test

import (
	"context"
	"slices"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gwclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/ambit-mesh/ambit/controlplane/controller"
	"github.com/ambit-mesh/ambit/controlplane/kubewaypoint"
	"github.com/ambit-mesh/ambit/controlplane/model"
	"github.com/ambit-mesh/ambit/internal/kubetest"
)

// TestDeployWaypoint: on a real API server, a waypoint Gateway gets its
// ServiceAccount, Service and Deployment, owned by it; applying again
// changes nothing; a new image rolls the Deployment and keeps what others
// set; a Gateway of another class and a missing one get nothing.
func TestDeployWaypoint(t *testing.T) {
	srv := kubetest.Start(t, kubetest.Options{})
	srv.InstallCRDs(t, kubetest.MeshCRDs()...)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := srv.EnsureNamespace(ctx, "shop"); err != nil {
		t.Fatal(err)
	}
	gw, err := gwclient.NewForConfig(srv.Config)
	if err != nil {
		t.Fatal(err)
	}
	mk := func(name, class string) *gatewayv1.Gateway {
		g, err := gw.GatewayV1().Gateways("shop").Create(ctx, &gatewayv1.Gateway{ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: gatewayv1.GatewaySpec{GatewayClassName: gatewayv1.ObjectName(class),
				Listeners: []gatewayv1.Listener{{Name: "mesh", Port: 15008, Protocol: "HBONE"}}}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return g
	}
	wp := mk("waypoint", model.GatewayClassWaypoint)
	mk("ingress", "someone-else")

	d := kubewaypoint.New(srv.Client, gw, kubewaypoint.Options{Image: "ambit.local/ambit:v1", ClusterID: "c1"})
	if err := d.Apply(ctx, "shop", "waypoint"); err != nil {
		t.Fatal(err)
	}
	kube := srv.Client
	sa, err := kube.CoreV1().ServiceAccounts("shop").Get(ctx, "waypoint", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	svc, err := kube.CoreV1().Services("shop").Get(ctx, "waypoint", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	dep, err := kube.AppsV1().Deployments("shop").Get(ctx, "waypoint", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range []metav1.Object{sa, svc, dep} {
		refs := o.GetOwnerReferences()
		if len(refs) != 1 || refs[0].UID != wp.UID || refs[0].Kind != "Gateway" || refs[0].Controller == nil || !*refs[0].Controller {
			t.Errorf("%s: owner references %+v, want the Gateway %s", o.GetName(), refs, wp.UID)
		}
	}
	if svc.Spec.Selector[model.LabelGatewayName] != "waypoint" || len(svc.Spec.Ports) != 2 || svc.Spec.Ports[0].Port != 15008 {
		t.Errorf("service %+v", svc.Spec)
	}
	pod := dep.Spec.Template
	c := pod.Spec.Containers[0]
	if pod.Labels[model.LabelDataplaneMode] != model.DataplaneNone || pod.Labels[model.LabelTunnel] != model.TunnelHTTP ||
		pod.Spec.ServiceAccountName != "waypoint" || c.Image != "ambit.local/ambit:v1" ||
		!slices.Contains(c.Command, "c1") || !slices.Contains(c.Command, "waypoint") {
		t.Errorf("deployment pod template: labels %v, sa %s, container %s %v", pod.Labels, pod.Spec.ServiceAccountName, c.Image, c.Command)
	}
	if c.SecurityContext == nil || len(c.SecurityContext.Capabilities.Drop) != 1 || len(c.SecurityContext.Capabilities.Add) != 0 {
		t.Errorf("the waypoint needs no capability: %+v", c.SecurityContext)
	}

	// Applying again changes nothing.
	if err := d.Apply(ctx, "shop", "waypoint"); err != nil {
		t.Fatal(err)
	}
	again, err := kube.AppsV1().Deployments("shop").Get(ctx, "waypoint", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if again.ResourceVersion != dep.ResourceVersion {
		t.Errorf("re-applying changed the Deployment: resourceVersion %s -> %s", dep.ResourceVersion, again.ResourceVersion)
	}

	// Someone scales it and annotates it; a new image is applied.
	again.Annotations = map[string]string{"example.com/owner": "team"}
	if _, err := kube.AppsV1().Deployments("shop").Update(ctx, again, metav1.UpdateOptions{FieldManager: "someone"}); err != nil {
		t.Fatal(err)
	}
	d2 := kubewaypoint.New(srv.Client, gw, kubewaypoint.Options{Image: "ambit.local/ambit:v2", ClusterID: "c1"})
	if err := d2.Apply(ctx, "shop", "waypoint"); err != nil {
		t.Fatal(err)
	}
	rolled, err := kube.AppsV1().Deployments("shop").Get(ctx, "waypoint", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if rolled.Spec.Template.Spec.Containers[0].Image != "ambit.local/ambit:v2" || rolled.Annotations["example.com/owner"] != "team" {
		t.Errorf("after a new image: image %s, annotations %v", rolled.Spec.Template.Spec.Containers[0].Image, rolled.Annotations)
	}

	// Another class, and a Gateway that does not exist: nothing, no error.
	for _, name := range []string{"ingress", "gone"} {
		if err := d.Apply(ctx, "shop", name); err != nil {
			t.Errorf("%s: %v", name, err)
		}
		if _, err := kube.AppsV1().Deployments("shop").Get(ctx, name, metav1.GetOptions{}); err == nil {
			t.Errorf("%s got a Deployment", name)
		}
	}

	// Through the controller's status: a second waypoint appears.
	mk("second", model.GatewayClassWaypoint)
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	go d.Run(runCtx)
	d.OnStatus(controller.Status{Waypoints: []model.WaypointStatus{{Namespace: "shop", Name: "second", For: "service"},
		{Namespace: "shop", Name: "ingress", For: "-"}}})
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := kube.AppsV1().Deployments("shop").Get(ctx, "second", metav1.GetOptions{}); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the second waypoint's Deployment did not appear")
		}
		time.Sleep(50 * time.Millisecond)
	}
}
