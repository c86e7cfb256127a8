// Package kubeauth authenticates proxies by their Kubernetes service-account
// tokens, as istiod does: the token (authorization: Bearer, audience
// istio-ca) is sent to the API server in a TokenReview, and a caller
// authenticated as system:serviceaccount:NS:SA holds
// spiffe://<trust-domain>/ns/NS/sa/SA. A pod-bound (projected) token also
// names its pod (the authentication.kubernetes.io/pod-name and pod-uid
// extras, and node-name since Kubernetes 1.32); CallerNode resolves that
// pod to its node, which is what lets a trusted node proxy (ztunnel)
// impersonate the pods of its own node and no other.
//
// Successful reviews are cached briefly (Options.CacheTTL, never past the
// token's own expiry), so that a proxy's certificate requests and xDS
// reconnects do not each cost a review. Refusals are not cached.
//
// The package implements ca.TokenAuthenticator; the CA and the xDS server
// share one Authenticator.
package kubeauth

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/ambit-mesh/ambit/controlplane/ca"
)

// Defaults, as istiod.
const (
	// DefaultAudience is the audience of the tokens proxies present
	// (istiod's TOKEN_AUDIENCES default).
	DefaultAudience = "istio-ca"
	// DefaultClusterID is the cluster id when none is configured.
	DefaultClusterID = "Kubernetes"
)

// Keys of a TokenReview's user extra for pod-bound tokens (Kubernetes'
// serviceaccount package).
const (
	ExtraPodName  = "authentication.kubernetes.io/pod-name"
	ExtraPodUID   = "authentication.kubernetes.io/pod-uid"
	ExtraNodeName = "authentication.kubernetes.io/node-name"
)

const (
	defaultCacheTTL      = time.Minute
	defaultCacheSize     = 10000
	defaultReviewTimeout = 10 * time.Second
	serviceAccountsGroup = "system:serviceaccounts"
	serviceAccountPrefix = "system:serviceaccount:"
)

// PodGetter looks a pod up; it returns (nil, nil) if there is no such pod.
type PodGetter interface {
	GetPod(ctx context.Context, namespace, name string) (*corev1.Pod, error)
}

// Options configure an Authenticator.
type Options struct {
	// Client reaches the API server (TokenReview; pod lookups unless Pods
	// is set). Required.
	Client kubernetes.Interface
	// ClusterID is this cluster's id (default "Kubernetes"). A caller that
	// says (clusterid header) it is in another cluster is refused; one
	// that says nothing is taken to be in this cluster, but may not
	// impersonate (istiod: "no node authorizer for cluster").
	ClusterID string
	// Audiences the token must be for (default istio-ca).
	Audiences []string
	// CacheTTL bounds how long a successful review is reused (default one
	// minute, never past the token's expiry); negative disables the cache.
	CacheTTL time.Duration
	// CacheSize bounds the cached reviews (default 10000).
	CacheSize int
	// ReviewTimeout bounds one TokenReview (default 10 s).
	ReviewTimeout time.Duration
	// Pods looks up the caller's pod (default: a GET on the API server).
	// A *Pods watches them instead.
	Pods   PodGetter
	Logger *slog.Logger
	Now    func() time.Time
}

// Authenticator reviews tokens with the API server. It is safe for
// concurrent use.
type Authenticator struct {
	o Options

	mu       sync.Mutex
	cache    map[[32]byte]cached
	inflight map[[32]byte]*review
}

type cached struct {
	caller ca.TokenCaller
	until  time.Time
}

// review is one TokenReview in flight, shared by concurrent callers with
// the same token.
type review struct {
	done   chan struct{}
	caller ca.TokenCaller
	err    error
}

var _ ca.TokenAuthenticator = (*Authenticator)(nil)

// New returns an Authenticator.
func New(o Options) (*Authenticator, error) {
	if o.Client == nil {
		return nil, errors.New("kubeauth: a Kubernetes client is required")
	}
	if o.ClusterID == "" {
		o.ClusterID = DefaultClusterID
	}
	if len(o.Audiences) == 0 {
		o.Audiences = []string{DefaultAudience}
	}
	if o.CacheTTL == 0 {
		o.CacheTTL = defaultCacheTTL
	}
	if o.CacheSize <= 0 {
		o.CacheSize = defaultCacheSize
	}
	if o.ReviewTimeout <= 0 {
		o.ReviewTimeout = defaultReviewTimeout
	}
	if o.Pods == nil {
		o.Pods = livePods{o.Client}
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Authenticator{o: o, cache: map[[32]byte]cached{}, inflight: map[[32]byte]*review{}}, nil
}

// ClusterID returns the cluster id the Authenticator serves.
func (a *Authenticator) ClusterID() string { return a.o.ClusterID }

// AuthenticateToken implements ca.TokenAuthenticator.
func (a *Authenticator) AuthenticateToken(ctx context.Context, token, clusterID string) (*ca.TokenCaller, error) {
	if clusterID != "" && clusterID != a.o.ClusterID {
		return nil, status.Errorf(codes.Unauthenticated, "client says it is in cluster %q, but this control plane reviews tokens of cluster %q only", clusterID, a.o.ClusterID)
	}
	now := a.o.Now()
	exp, hasExp := tokenExpiry(token)
	if hasExp && !now.Before(exp) {
		return nil, status.Errorf(codes.Unauthenticated, "token expired at %s", exp.UTC().Format(time.RFC3339))
	}
	key := sha256.Sum256([]byte(token))
	a.mu.Lock()
	if c, ok := a.cache[key]; ok {
		if now.Before(c.until) {
			a.mu.Unlock()
			return withCluster(c.caller, clusterID), nil
		}
		delete(a.cache, key)
	}
	r, shared := a.inflight[key]
	if !shared {
		r = &review{done: make(chan struct{})}
		a.inflight[key] = r
	}
	a.mu.Unlock()

	if shared {
		select {
		case <-r.done:
		case <-ctx.Done():
			return nil, status.FromContextError(ctx.Err()).Err()
		}
	} else {
		r.caller, r.err = a.review(ctx, token)
		if r.err == nil {
			r.caller.Expiry = exp
		}
		a.mu.Lock()
		delete(a.inflight, key)
		if r.err == nil && a.o.CacheTTL > 0 {
			until := a.o.Now().Add(a.o.CacheTTL)
			if hasExp && exp.Before(until) {
				until = exp
			}
			a.store(key, cached{caller: r.caller, until: until})
		}
		a.mu.Unlock()
		close(r.done)
	}
	if r.err != nil {
		return nil, r.err
	}
	return withCluster(r.caller, clusterID), nil
}

func withCluster(c ca.TokenCaller, clusterID string) *ca.TokenCaller {
	c.ClusterID = clusterID
	return &c
}

// store caches c under key; a.mu is held. A full cache first drops what has
// expired, then (still full) an arbitrary entry.
func (a *Authenticator) store(key [32]byte, c cached) {
	if len(a.cache) >= a.o.CacheSize {
		now := a.o.Now()
		for k, v := range a.cache {
			if !now.Before(v.until) {
				delete(a.cache, k)
			}
		}
		for k := range a.cache {
			if len(a.cache) < a.o.CacheSize {
				break
			}
			delete(a.cache, k)
		}
	}
	a.cache[key] = c
}

// review asks the API server about token.
func (a *Authenticator) review(ctx context.Context, token string) (ca.TokenCaller, error) {
	// The review outlives a caller that gives up: others may share it.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), a.o.ReviewTimeout)
	defer cancel()
	tr, err := a.o.Client.AuthenticationV1().TokenReviews().Create(rctx, &authenticationv1.TokenReview{
		Spec: authenticationv1.TokenReviewSpec{Token: token, Audiences: a.o.Audiences},
	}, metav1.CreateOptions{})
	if err != nil {
		a.o.Logger.Warn("token review failed", "err", err)
		return ca.TokenCaller{}, status.Errorf(codes.Unavailable, "token review with the API server failed: %v", err)
	}
	return a.result(tr.Status)
}

// result reads a TokenReview's status.
func (a *Authenticator) result(st authenticationv1.TokenReviewStatus) (ca.TokenCaller, error) {
	if st.Error != "" || !st.Authenticated {
		why := st.Error
		if why == "" {
			why = "not authenticated"
		}
		return ca.TokenCaller{}, status.Errorf(codes.Unauthenticated, "token refused by the API server: %s", why)
	}
	// The API server authenticates a token for the requested audiences
	// only, and says which in status.audiences; an old one that ignored
	// them would say nothing.
	if !slices.ContainsFunc(st.Audiences, func(aud string) bool { return slices.Contains(a.o.Audiences, aud) }) {
		return ca.TokenCaller{}, status.Errorf(codes.Unauthenticated, "token is not for audience %s (the API server confirmed %v)", strings.Join(a.o.Audiences, " or "), st.Audiences)
	}
	u := st.User
	if !slices.Contains(u.Groups, serviceAccountsGroup) {
		return ca.TokenCaller{}, status.Errorf(codes.Unauthenticated, "token of %q is not a service-account token", u.Username)
	}
	rest, ok := strings.CutPrefix(u.Username, serviceAccountPrefix)
	ns, sa, ok2 := strings.Cut(rest, ":")
	if !ok || !ok2 || ns == "" || sa == "" || strings.Contains(sa, ":") {
		return ca.TokenCaller{}, status.Errorf(codes.Unauthenticated, "token user %q is not system:serviceaccount:<namespace>:<name>", u.Username)
	}
	c := ca.TokenCaller{Namespace: ns, ServiceAccount: sa,
		PodName: extra(u, ExtraPodName), PodUID: extra(u, ExtraPodUID), NodeName: extra(u, ExtraNodeName)}
	if (c.PodName == "") != (c.PodUID == "") {
		return ca.TokenCaller{}, status.Errorf(codes.Unauthenticated, "token of %s/%s names a pod without its uid, or a uid without its pod", ns, sa)
	}
	return c, nil
}

func extra(u authenticationv1.UserInfo, key string) string {
	if v := u.Extra[key]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// tokenExpiry reads the exp claim of a JWT without verifying it (the API
// server verifies; this only bounds the cache and refuses what has
// visibly expired without a review).
func tokenExpiry(token string) (time.Time, bool) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return time.Time{}, false
	}
	payload, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return time.Time{}, false
	}
	var claims struct {
		Exp *json.Number `json:"exp"`
	}
	if err := json.Unmarshal(payload, &claims); err != nil || claims.Exp == nil {
		return time.Time{}, false
	}
	secs, err := claims.Exp.Float64()
	if err != nil || secs <= 0 {
		return time.Time{}, false
	}
	return time.Unix(int64(secs), 0), true
}

// CallerNode implements ca.TokenAuthenticator: the node of the pod c's
// token is bound to, which must still exist with the same UID and service
// account (as istiod's node authorizer checks).
func (a *Authenticator) CallerNode(ctx context.Context, c *ca.TokenCaller) (string, error) {
	who := c.Namespace + "/" + c.ServiceAccount
	if c.ClusterID != a.o.ClusterID {
		return "", status.Errorf(codes.PermissionDenied, "%s may not impersonate: impersonation needs the clusterid header of this cluster (%q), got %q", who, a.o.ClusterID, c.ClusterID)
	}
	if c.PodName == "" {
		return "", status.Errorf(codes.PermissionDenied, "%s may not impersonate: its token is bound to no pod (use the pod's projected service-account token)", who)
	}
	pod, err := a.o.Pods.GetPod(ctx, c.Namespace, c.PodName)
	if _, live := a.o.Pods.(livePods); err == nil && !live && (pod == nil || string(pod.UID) != c.PodUID) {
		// A watch may lag behind a pod just re-created: confirm.
		pod, err = livePods{a.o.Client}.GetPod(ctx, c.Namespace, c.PodName)
	}
	if err != nil {
		return "", status.Errorf(codes.Unavailable, "looking up caller pod %s/%s: %v", c.Namespace, c.PodName, err)
	}
	switch {
	case pod == nil:
		return "", status.Errorf(codes.PermissionDenied, "%s may not impersonate: the pod its token is bound to, %s/%s, no longer exists", who, c.Namespace, c.PodName)
	case string(pod.UID) != c.PodUID:
		return "", status.Errorf(codes.PermissionDenied, "%s may not impersonate: pod %s/%s was replaced (uid %s; the token is bound to uid %s)", who, c.Namespace, c.PodName, pod.UID, c.PodUID)
	case podServiceAccount(pod) != c.ServiceAccount:
		return "", status.Errorf(codes.PermissionDenied, "%s may not impersonate: pod %s/%s runs as service account %s", who, c.Namespace, c.PodName, podServiceAccount(pod))
	case pod.Status.Phase == corev1.PodFailed || pod.Status.Phase == corev1.PodSucceeded:
		return "", status.Errorf(codes.PermissionDenied, "%s may not impersonate: pod %s/%s has terminated (%s)", who, c.Namespace, c.PodName, pod.Status.Phase)
	case pod.Spec.NodeName == "":
		return "", status.Errorf(codes.PermissionDenied, "%s may not impersonate: pod %s/%s is not scheduled to a node", who, c.Namespace, c.PodName)
	case c.NodeName != "" && c.NodeName != pod.Spec.NodeName:
		return "", status.Errorf(codes.PermissionDenied, "%s may not impersonate: its token names node %s, but pod %s/%s runs on %s", who, c.NodeName, c.Namespace, c.PodName, pod.Spec.NodeName)
	}
	return pod.Spec.NodeName, nil
}

func podServiceAccount(p *corev1.Pod) string {
	if p.Spec.ServiceAccountName == "" {
		return "default"
	}
	return p.Spec.ServiceAccountName
}

// livePods looks pods up on the API server.
type livePods struct{ client kubernetes.Interface }

func (l livePods) GetPod(ctx context.Context, namespace, name string) (*corev1.Pod, error) {
	ctx, cancel := context.WithTimeout(ctx, defaultReviewTimeout)
	defer cancel()
	p, err := l.client.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("get pod: %w", err)
	}
	return p, nil
}
