package waypoint

import (
	"fmt"
	"log/slog"
	"maps"
	"sync"

	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"

	"github.com/ambit-mesh/ambit/waypoint/rbac"
	"github.com/ambit-mesh/ambit/waypoint/router"
)

// Type URLs of the waypoint's L7 resources: Envoy's own schemas.
const (
	RouteType = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
	RBACType  = "type.googleapis.com/envoy.config.rbac.v3.RBAC"
)

// L7Config holds the routes and policies the control plane sent, compiled.
// Until both have arrived once, Ready is open and the waypoint serves
// nothing: no policy yet is not "allow".
type L7Config struct {
	logger *slog.Logger

	mu       sync.RWMutex
	routes   map[string]*routev3.RouteConfiguration
	routers  map[string]*router.Router
	bad      map[string]error // routes that failed to compile: they answer 500
	rbacs    map[string]*rbacv3.RBAC
	engine   *rbac.Engine
	warnings []string
	have     [2]bool
	ready    chan struct{}
}

// NewL7Config returns an empty, not yet ready, configuration.
func NewL7Config(logger *slog.Logger) *L7Config {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &L7Config{logger: logger, routes: map[string]*routev3.RouteConfiguration{}, routers: map[string]*router.Router{},
		bad: map[string]error{}, rbacs: map[string]*rbacv3.RBAC{}, ready: make(chan struct{})}
}

// Ready is closed once routes and policies have each arrived in full.
func (c *L7Config) Ready() <-chan struct{} { return c.ready }

func (c *L7Config) markLocked(i int) {
	c.have[i] = true
	if c.have[0] && c.have[1] {
		select {
		case <-c.ready:
		default:
			close(c.ready)
		}
	}
}

// Handlers returns the xDS handlers for the WDS client's Extra.
func (c *L7Config) Handlers() map[string]func([]*discovery.Resource, []string, bool) error {
	return map[string]func([]*discovery.Resource, []string, bool) error{
		RouteType: c.updateRoutes,
		RBACType:  c.updateRBAC,
	}
}

func (c *L7Config) updateRoutes(res []*discovery.Resource, removed []string, full bool) error {
	upserts := make(map[string]*routev3.RouteConfiguration, len(res))
	for _, r := range res {
		rc := &routev3.RouteConfiguration{}
		if err := r.GetResource().UnmarshalTo(rc); err != nil {
			return fmt.Errorf("route %s: %w", r.GetName(), err)
		}
		upserts[r.GetName()] = rc
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if full {
		clear(c.routes)
		clear(c.routers)
		clear(c.bad)
	}
	for _, n := range removed {
		delete(c.routes, n)
		delete(c.routers, n)
		delete(c.bad, n)
	}
	for n, rc := range upserts {
		c.routes[n] = rc
		rt, err := router.Compile(rc)
		if err != nil {
			// One bad route must not take the others down: it answers 500
			// with the reason, and the update is still acknowledged.
			c.logger.Error("route rejected", "route", n, "err", err)
			delete(c.routers, n)
			c.bad[n] = err
			continue
		}
		delete(c.bad, n)
		c.routers[n] = rt
	}
	c.markLocked(0)
	c.logger.Info("routes update", "upserts", len(upserts), "removed", len(removed), "total", len(c.routes))
	return nil
}

func (c *L7Config) updateRBAC(res []*discovery.Resource, removed []string, full bool) error {
	next := maps.Clone(c.rbacsSnapshot())
	if full {
		next = map[string]*rbacv3.RBAC{}
	}
	for _, n := range removed {
		delete(next, n)
	}
	for _, r := range res {
		x := &rbacv3.RBAC{}
		if err := r.GetResource().UnmarshalTo(x); err != nil {
			return fmt.Errorf("policy %s: %w", r.GetName(), err)
		}
		next[r.GetName()] = x
	}
	engine, warnings, err := rbac.Compile(next)
	if err != nil {
		// Keep enforcing the previous policies and say no to the update.
		return fmt.Errorf("policies: %w", err)
	}
	for _, w := range warnings {
		c.logger.Warn("authorization policy", "warning", w)
	}
	c.mu.Lock()
	c.rbacs, c.engine, c.warnings = next, engine, warnings
	c.markLocked(1)
	c.mu.Unlock()
	c.logger.Info("policies update", "total", len(next))
	return nil
}

func (c *L7Config) rbacsSnapshot() map[string]*rbacv3.RBAC {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.rbacs
}

// Router returns the compiled route table by name, or the reason it has
// none (unknown or rejected).
func (c *L7Config) Router(name string) (*router.Router, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if rt, ok := c.routers[name]; ok {
		return rt, nil
	}
	if err, ok := c.bad[name]; ok {
		return nil, fmt.Errorf("route %s was rejected: %w", name, err)
	}
	return nil, fmt.Errorf("no route configuration %s", name)
}

// Engine returns the compiled policies (nil before the first: it denies).
func (c *L7Config) Engine() *rbac.Engine {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.engine
}
