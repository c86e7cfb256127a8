package waypoint

import (
	"fmt"
	"net/http"
	"net/netip"
	"net/url"

	"github.com/ambit-mesh/ambit/hbone"
	"github.com/ambit-mesh/ambit/waypoint/rbac"
	"github.com/ambit-mesh/ambit/waypoint/router"
)

// Explanation says what the waypoint would do with a request, with the
// code it runs for real ones (`ambit authz check`).
type Explanation struct {
	Target   string        `json:"target"`
	Bound    bool          `json:"bound"`
	Refusal  string        `json:"refusal,omitempty"` // why a tunnel to the target is refused
	Service  string        `json:"service,omitempty"`
	Targets  []string      `json:"policyTargets"`
	Decision rbac.Decision `json:"decision"`
	Route    string        `json:"route,omitempty"`
	Cluster  string        `json:"cluster,omitempty"`
}

// Explain evaluates a request from principal (a SPIFFE URI, "" for none)
// at source address src to target, as serveHTTP would.
func (w *Waypoint) Explain(target netip.AddrPort, principal string, src netip.Addr, method, path, host string) Explanation {
	ex := Explanation{Target: target.String()}
	svc, wl, err := w.bound(hbone.Authority{Addr: target, Port: target.Port()})
	if err != nil {
		ex.Refusal = err.Error()
		return ex
	}
	ex.Bound = true
	t := &tunnel{target: target, service: svc, workload: wl, src: src}
	req := &http.Request{Method: method, URL: &url.URL{Path: normalizePath(path)}, Host: host, Header: http.Header{}}
	if req.Host == "" {
		req.Host = target.String()
	}
	targets := []rbac.Target{{Kind: rbac.KindGatewayClass, Name: gatewayClass}, {Kind: rbac.KindGateway, Namespace: w.cfg.Namespace, Name: w.cfg.Name}}
	if svc != nil {
		ex.Service = svc.GetNamespace() + "/" + svc.GetName()
		targets = append(targets, rbac.Target{Kind: rbac.KindService, Namespace: svc.GetNamespace(), Name: svc.GetName()})
	}
	for _, tg := range targets {
		ex.Targets = append(ex.Targets, tg.String())
	}
	a := w.attributes(t, req)
	a.Principal = principal
	ex.Decision = w.cfg.L7.Engine().Evaluate(targets, a)
	if svc != nil && ex.Decision.Allowed {
		if rt, err := w.cfg.L7.Router(routeName(svc.GetHostname(), target.Port())); err == nil {
			if d, ok := rt.Decide(router.RequestFrom(req), nil); ok {
				ex.Route, ex.Cluster = d.RouteName, d.Cluster
			}
		} else {
			ex.Route = fmt.Sprintf("none: %v", err)
		}
	}
	return ex
}
