package kubeauth

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/ambit-mesh/ambit/controlplane/ca"
)

// jwt makes an unsigned token with the given exp (0: none). Only its shape
// matters here: the fake API server decides.
func jwt(name string, exp time.Time) string {
	claims := fmt.Sprintf(`{"sub":%q}`, name)
	if !exp.IsZero() {
		claims = fmt.Sprintf(`{"sub":%q,"exp":%d}`, name, exp.Unix())
	}
	enc := base64.RawURLEncoding.EncodeToString
	return enc([]byte(`{"alg":"RS256"}`)) + "." + enc([]byte(claims)) + "." + enc([]byte("sig"))
}

// reviewer is a fake API server's TokenReview: token -> status.
type reviewer struct {
	mu      sync.Mutex
	results map[string]authenticationv1.TokenReviewStatus
	calls   atomic.Int32
	fail    error
	block   chan struct{} // if set, reviews wait on it
}

func (r *reviewer) react(a k8stesting.Action) (bool, runtime.Object, error) {
	r.calls.Add(1)
	if r.block != nil {
		<-r.block
	}
	if r.fail != nil {
		return true, nil, r.fail
	}
	tr := a.(k8stesting.CreateAction).GetObject().(*authenticationv1.TokenReview)
	r.mu.Lock()
	st, ok := r.results[tr.Spec.Token]
	r.mu.Unlock()
	if !ok {
		st = authenticationv1.TokenReviewStatus{Error: "invalid bearer token, token lookup failed"}
	}
	out := tr.DeepCopy()
	out.Status = st
	return true, out, nil
}

func saUser(ns, sa string, extra map[string]string) authenticationv1.TokenReviewStatus {
	u := authenticationv1.UserInfo{Username: "system:serviceaccount:" + ns + ":" + sa,
		Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"}}
	if len(extra) > 0 {
		u.Extra = map[string]authenticationv1.ExtraValue{}
		for k, v := range extra {
			u.Extra[k] = authenticationv1.ExtraValue{v}
		}
	}
	return authenticationv1.TokenReviewStatus{Authenticated: true, User: u, Audiences: []string{"istio-ca"}}
}

func newFake(t *testing.T, r *reviewer, objs ...runtime.Object) *fake.Clientset {
	t.Helper()
	cs := fake.NewClientset(objs...)
	cs.PrependReactor("create", "tokenreviews", r.react)
	return cs
}

func TestAuthenticateToken(t *testing.T) {
	now := time.Now()
	good := jwt("good", now.Add(time.Hour))
	pod := map[string]string{ExtraPodName: "ztunnel-a", ExtraPodUID: "uid-a", ExtraNodeName: "node-a"}
	wrongAud := saUser("demo", "echo", nil)
	wrongAud.Audiences = []string{"other"}
	noAud := saUser("demo", "echo", nil)
	noAud.Audiences = nil
	notSA := saUser("demo", "echo", nil)
	notSA.User.Groups = []string{"system:authenticated"}
	badName := saUser("demo", "echo", nil)
	badName.User.Username = "system:serviceaccount:demo"
	halfPod := saUser("demo", "echo", map[string]string{ExtraPodName: "echo-1"})
	r := &reviewer{results: map[string]authenticationv1.TokenReviewStatus{
		good:                                 saUser("istio-system", "ztunnel", pod),
		jwt("plain", now.Add(time.Hour)):     saUser("demo", "echo", nil),
		jwt("wrong-aud", now.Add(time.Hour)): wrongAud,
		jwt("no-aud", now.Add(time.Hour)):    noAud,
		jwt("not-sa", now.Add(time.Hour)):    notSA,
		jwt("bad-name", now.Add(time.Hour)):  badName,
		jwt("half-pod", now.Add(time.Hour)):  halfPod,
		"opaque":                             saUser("demo", "legacy", nil),
	}}
	a, err := New(Options{Client: newFake(t, r)})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		token     string
		clusterID string
		want      *ca.TokenCaller
		wantCode  codes.Code
		wantMsg   string
	}{
		{"pod-bound", good, "Kubernetes", &ca.TokenCaller{Namespace: "istio-system", ServiceAccount: "ztunnel", PodName: "ztunnel-a", PodUID: "uid-a", NodeName: "node-a", ClusterID: "Kubernetes"}, codes.OK, ""},
		{"no cluster header", jwt("plain", now.Add(time.Hour)), "", &ca.TokenCaller{Namespace: "demo", ServiceAccount: "echo"}, codes.OK, ""},
		{"not a JWT (no expiry known)", "opaque", "", &ca.TokenCaller{Namespace: "demo", ServiceAccount: "legacy"}, codes.OK, ""},
		{"other cluster", good, "west", nil, codes.Unauthenticated, `says it is in cluster "west"`},
		{"unknown token", jwt("unknown", now.Add(time.Hour)), "", nil, codes.Unauthenticated, "invalid bearer token"},
		{"expired", jwt("good", now.Add(-time.Second)), "", nil, codes.Unauthenticated, "token expired at"},
		{"wrong audience", jwt("wrong-aud", now.Add(time.Hour)), "", nil, codes.Unauthenticated, "not for audience istio-ca"},
		{"no audience confirmed", jwt("no-aud", now.Add(time.Hour)), "", nil, codes.Unauthenticated, "not for audience istio-ca"},
		{"not a service account", jwt("not-sa", now.Add(time.Hour)), "", nil, codes.Unauthenticated, "not a service-account token"},
		{"malformed user name", jwt("bad-name", now.Add(time.Hour)), "", nil, codes.Unauthenticated, "is not system:serviceaccount"},
		{"pod without uid", jwt("half-pod", now.Add(time.Hour)), "", nil, codes.Unauthenticated, "without its uid"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := a.AuthenticateToken(context.Background(), tc.token, tc.clusterID)
			if status.Code(err) != tc.wantCode || (tc.wantMsg != "" && !strings.Contains(err.Error(), tc.wantMsg)) {
				t.Fatalf("err %v, want %v %q", err, tc.wantCode, tc.wantMsg)
			}
			if tc.want != nil {
				got.Expiry = time.Time{}
				if *got != *tc.want {
					t.Errorf("got %+v, want %+v", *got, *tc.want)
				}
			}
		})
	}
	r.fail = errors.New("connection refused")
	if _, err := a.AuthenticateToken(context.Background(), jwt("fresh", now.Add(time.Hour)), ""); status.Code(err) != codes.Unavailable {
		t.Errorf("API server down: %v, want Unavailable", err)
	}
}

// TestCache: a success is reused for at most CacheTTL and never past the
// token's expiry; refusals are not cached; concurrent reviews of one token
// are one review.
func TestCache(t *testing.T) {
	now := time.Now()
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	long, short := jwt("long", now.Add(time.Hour)), jwt("short", now.Add(20*time.Second))
	r := &reviewer{results: map[string]authenticationv1.TokenReviewStatus{long: saUser("demo", "a", nil), short: saUser("demo", "b", nil)}}
	a, err := New(Options{Client: newFake(t, r), CacheTTL: time.Minute, Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	auth := func(tok string) error { _, err := a.AuthenticateToken(ctx, tok, ""); return err }
	for range 3 {
		if err := auth(long); err != nil {
			t.Fatal(err)
		}
	}
	if err := auth(short); err != nil {
		t.Fatal(err)
	}
	if n := r.calls.Load(); n != 2 {
		t.Fatalf("%d reviews for four calls with two tokens within the TTL, want 2", n)
	}
	advance(10 * time.Second)
	if err := auth(short); err != nil || r.calls.Load() != 2 {
		t.Fatalf("short token within its life: %v, %d reviews, want it cached", err, r.calls.Load())
	}
	// Past the short token's expiry, well within the TTL: neither the
	// cache nor a review may accept it.
	advance(11 * time.Second)
	if err := auth(short); status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "expired") || r.calls.Load() != 2 {
		t.Fatalf("expired token: %v (%d reviews), want refused without a review", err, r.calls.Load())
	}
	advance(40 * time.Second)
	if err := auth(long); err != nil || r.calls.Load() != 3 {
		t.Fatalf("after the TTL: %v, %d reviews, want a third", err, r.calls.Load())
	}
	bad := jwt("bad", now.Add(time.Hour))
	_ = auth(bad)
	_ = auth(bad)
	if n := r.calls.Load(); n != 5 {
		t.Errorf("%d reviews after two refusals, want 5 (refusals are not cached)", n)
	}

	// Coalescing.
	r.block = make(chan struct{})
	tok := jwt("long2", now.Add(time.Hour))
	r.mu.Lock()
	r.results[tok] = saUser("demo", "c", nil)
	r.mu.Unlock()
	before := r.calls.Load()
	var wg sync.WaitGroup
	errs := make(chan error, 10)
	for range 10 {
		wg.Add(1)
		go func() { defer wg.Done(); errs <- auth(tok) }()
	}
	time.Sleep(100 * time.Millisecond)
	close(r.block)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if n := r.calls.Load() - before; n != 1 {
		t.Errorf("%d reviews for 10 concurrent calls, want 1", n)
	}
}

func TestCacheBounded(t *testing.T) {
	r := &reviewer{results: map[string]authenticationv1.TokenReviewStatus{}}
	now := time.Now()
	for i := range 20 {
		r.results[jwt(fmt.Sprint(i), now.Add(time.Hour))] = saUser("demo", "a", nil)
	}
	a, err := New(Options{Client: newFake(t, r), CacheSize: 5})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		if _, err := a.AuthenticateToken(context.Background(), jwt(fmt.Sprint(i), now.Add(time.Hour)), ""); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(a.cache); n > 5 {
		t.Errorf("cache holds %d reviews, bound is 5", n)
	}
}

func TestCallerNode(t *testing.T) {
	pod := func(name, uid, sa, node string, phase corev1.PodPhase) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "istio-system", UID: types.UID(uid)},
			Spec: corev1.PodSpec{ServiceAccountName: sa, NodeName: node}, Status: corev1.PodStatus{Phase: phase}}
	}
	cs := newFake(t, &reviewer{},
		pod("zt-a", "uid-a", "ztunnel", "node-a", corev1.PodRunning),
		pod("zt-other-sa", "uid-o", "other", "node-a", corev1.PodRunning),
		pod("zt-failed", "uid-f", "ztunnel", "node-a", corev1.PodFailed),
		pod("zt-pending", "uid-p", "ztunnel", "", corev1.PodPending),
	)
	a, err := New(Options{Client: cs})
	if err != nil {
		t.Fatal(err)
	}
	caller := func(podName, uid, node, cluster string) *ca.TokenCaller {
		return &ca.TokenCaller{Namespace: "istio-system", ServiceAccount: "ztunnel", PodName: podName, PodUID: uid, NodeName: node, ClusterID: cluster}
	}
	tests := []struct {
		name     string
		c        *ca.TokenCaller
		wantNode string
		wantMsg  string
	}{
		{"pod on its node", caller("zt-a", "uid-a", "node-a", "Kubernetes"), "node-a", ""},
		{"no node in the token", caller("zt-a", "uid-a", "", "Kubernetes"), "node-a", ""},
		{"no cluster header", caller("zt-a", "uid-a", "node-a", ""), "", "needs the clusterid header"},
		{"other cluster", caller("zt-a", "uid-a", "node-a", "west"), "", "needs the clusterid header"},
		{"unbound token", caller("", "", "", "Kubernetes"), "", "bound to no pod"},
		{"deleted pod", caller("zt-gone", "uid-g", "node-a", "Kubernetes"), "", "no longer exists"},
		{"re-created pod", caller("zt-a", "uid-old", "node-a", "Kubernetes"), "", "was replaced"},
		{"pod of another service account", &ca.TokenCaller{Namespace: "istio-system", ServiceAccount: "ztunnel", PodName: "zt-other-sa", PodUID: "uid-o", ClusterID: "Kubernetes"}, "", "runs as service account other"},
		{"failed pod", caller("zt-failed", "uid-f", "", "Kubernetes"), "", "has terminated"},
		{"unscheduled pod", caller("zt-pending", "uid-p", "", "Kubernetes"), "", "not scheduled"},
		{"token names another node", caller("zt-a", "uid-a", "node-b", "Kubernetes"), "", "names node node-b"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			node, err := a.CallerNode(context.Background(), tc.c)
			if tc.wantMsg == "" {
				if err != nil || node != tc.wantNode {
					t.Fatalf("node %q, %v; want %q", node, err, tc.wantNode)
				}
				return
			}
			if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), tc.wantMsg) {
				t.Fatalf("err %v, want PermissionDenied with %q", err, tc.wantMsg)
			}
		})
	}
}

func TestTokenExpiry(t *testing.T) {
	exp := time.Unix(1900000000, 0)
	enc := base64.RawURLEncoding.EncodeToString
	for _, tc := range []struct {
		token string
		ok    bool
	}{
		{jwt("x", exp), true},
		{jwt("x", time.Time{}), false},
		{"a.b", false},
		{"a.!!!.c", false},
		{"a." + enc([]byte(`not json`)) + ".c", false},
		{"a." + enc([]byte(`{"exp":"soon"}`)) + ".c", false},
		{"a." + enc([]byte(`{"exp":1.9e9}`)) + ".c", true},
	} {
		got, ok := tokenExpiry(tc.token)
		if ok != tc.ok || (ok && !got.Equal(exp)) {
			t.Errorf("%q: %v %v, want ok=%v", tc.token, got, ok, tc.ok)
		}
	}
}
