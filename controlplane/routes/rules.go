package routes

import (
	"fmt"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// ruleAction is the match-independent part of a rule's translation.
type ruleAction struct {
	fail     string // when set, every route of the rule answers 500 with this body
	filters  ruleFilters
	backends []backend
	mirrors  []*routev3.RouteAction_RequestMirrorPolicy
	timeout  time.Duration
	retry    *routev3.RetryPolicy
}

func (b *builder) compileHTTPRoute(r *gatewayv1.HTTPRoute) *compiled {
	c := newCompiled(kindHTTPRoute, r.ObjectMeta, r.Spec.ParentRefs)
	for ri, rule := range r.Spec.Rules {
		act := b.httpRuleAction(c, ri, rule)
		matches := rule.Matches
		if len(matches) == 0 {
			matches = []gatewayv1.HTTPRouteMatch{{}}
		}
		for mi, m := range matches {
			rm, key, mp, err := httpMatch(m)
			if err != nil {
				c.addf(unsupported, "rule %d match %d: %v", ri, mi, err)
				continue
			}
			route, listenerPort, err := act.route(rm, mp)
			if err != nil {
				c.addf(unsupported, "rule %d match %d: %v", ri, mi, err)
			}
			route.Name = EntryName(c.kind, c.ns, c.name, ri, mi)
			c.entries = append(c.entries, entry{key: c.tie(key, ri, mi), route: route, listenerPort: listenerPort})
		}
	}
	return c
}

func (b *builder) compileGRPCRoute(r *gatewayv1.GRPCRoute) *compiled {
	c := newCompiled(kindGRPCRoute, r.ObjectMeta, r.Spec.ParentRefs)
	for ri, rule := range r.Spec.Rules {
		act := b.grpcRuleAction(c, ri, rule)
		matches := rule.Matches
		if len(matches) == 0 {
			matches = []gatewayv1.GRPCRouteMatch{{}}
		}
		for mi, m := range matches {
			rm, key, err := grpcMatch(m)
			if err != nil {
				c.addf(unsupported, "rule %d match %d: %v", ri, mi, err)
				continue
			}
			route, _, err := act.route(rm, matchedPath{})
			if err != nil {
				c.addf(unsupported, "rule %d match %d: %v", ri, mi, err)
			}
			route.Name = EntryName(c.kind, c.ns, c.name, ri, mi)
			c.entries = append(c.entries, entry{key: c.tie(key, ri, mi), route: route})
		}
	}
	return c
}

// httpRuleAction reads an HTTPRoute rule's filters, timeouts, retries and
// backends. Problems are recorded on c; the ones that make the rule
// impossible to honour set fail.
func (b *builder) httpRuleAction(c *compiled, ri int, rule gatewayv1.HTTPRouteRule) ruleAction {
	failWith := func(is issue) ruleAction {
		is = is.prefixed(fmt.Sprintf("rule %d: ", ri))
		c.issues.add(is)
		return ruleAction{fail: is.msg}
	}
	rf, is := httpFilters(rule.Filters)
	if is != nil {
		return failWith(*is)
	}
	if rf.redirect != nil && len(rule.BackendRefs) > 0 {
		return failWith(notAccepted(gatewayv1.RouteReasonIncompatibleFilters, "RequestRedirect cannot be combined with backendRefs"))
	}
	if rule.SessionPersistence != nil {
		return failWith(unsupported("sessionPersistence is not supported by the waypoint"))
	}
	request, perTry, err := timeouts(rule.Timeouts)
	if err != nil {
		return failWith(unsupported(err.Error()))
	}
	retry, err := retryPolicy(rule.Retry, perTry)
	if err != nil {
		return failWith(unsupported(err.Error()))
	}
	act := ruleAction{filters: rf, timeout: request, retry: retry}
	for _, ref := range rule.BackendRefs {
		bk, is := b.backend(c, ri, ref.BackendRef, ref.Filters)
		if is != nil {
			return failWith(*is)
		}
		act.backends = append(act.backends, bk)
	}
	if is := b.addMirrors(c, ri, &act, rf.mirrors); is != nil {
		return failWith(*is)
	}
	return act
}

// grpcRuleAction is httpRuleAction for GRPCRoute rules (no redirect,
// rewrite, timeouts or retries in the API).
func (b *builder) grpcRuleAction(c *compiled, ri int, rule gatewayv1.GRPCRouteRule) ruleAction {
	failWith := func(is issue) ruleAction {
		is = is.prefixed(fmt.Sprintf("rule %d: ", ri))
		c.issues.add(is)
		return ruleAction{fail: is.msg}
	}
	rf, is := httpFilters(grpcFilters(rule.Filters))
	if is != nil {
		return failWith(*is)
	}
	if rf.redirect != nil || rf.rewrite != nil {
		return failWith(unsupported("GRPCRoute has no redirect or rewrite filters"))
	}
	if rule.SessionPersistence != nil {
		return failWith(unsupported("sessionPersistence is not supported by the waypoint"))
	}
	act := ruleAction{filters: rf}
	for _, ref := range rule.BackendRefs {
		bk, is := b.backend(c, ri, ref.BackendRef, grpcFilters(ref.Filters))
		if is != nil {
			return failWith(*is)
		}
		act.backends = append(act.backends, bk)
	}
	if is := b.addMirrors(c, ri, &act, rf.mirrors); is != nil {
		return failWith(*is)
	}
	return act
}

// backend resolves one backendRef of rule ri. An unresolvable reference is
// recorded (ResolvedRefs) but is not an error: it keeps its weight and
// answers 500. The returned issue is an error that invalidates the rule.
func (b *builder) backend(c *compiled, ri int, ref gatewayv1.BackendRef, filters []gatewayv1.HTTPRouteFilter) (backend, *issue) {
	w, err := weightOf(ref.Weight)
	if err != nil {
		is := unsupported("backendRef " + string(ref.Name) + ": " + err.Error())
		return backend{}, &is
	}
	h, is := backendFilters(filters)
	if is != nil {
		return backend{}, is
	}
	res := b.res.resolve(c.kind, c.ns, ref.BackendObjectReference)
	if res.problem != nil {
		c.issues.add(res.problem.prefixed(fmt.Sprintf("rule %d: ", ri)))
	}
	return backend{resolved: res, weight: w, headers: h}, nil
}

// addMirrors resolves the RequestMirror filters: a mirror whose backend is
// invalid is dropped (and recorded); a malformed one invalidates the rule.
func (b *builder) addMirrors(c *compiled, ri int, act *ruleAction, ms []*gatewayv1.HTTPRequestMirrorFilter) *issue {
	for _, m := range ms {
		res := b.res.resolve(c.kind, c.ns, m.BackendRef)
		if res.problem != nil {
			c.issues.add(res.problem.prefixed(fmt.Sprintf("rule %d: mirror ", ri)))
			continue
		}
		p, err := mirrorPolicy(res.cluster, m)
		if err != nil {
			is := unsupported(err.Error())
			return &is
		}
		act.mirrors = append(act.mirrors, p)
	}
	return nil
}

// route builds the Envoy route of one match. listenerPort reports a
// redirect that needs the Service port. An error means the route answers
// 500 and the caller records why.
func (a ruleAction) route(rm *routev3.RouteMatch, mp matchedPath) (r *routev3.Route, listenerPort bool, err error) {
	r = &routev3.Route{Match: rm}
	if a.fail != "" {
		setDirect500(r, a.fail)
		return r, false, nil
	}
	h := a.filters.headers
	r.RequestHeadersToAdd, r.RequestHeadersToRemove = h.reqAdd, h.reqRemove
	r.ResponseHeadersToAdd, r.ResponseHeadersToRemove = h.respAdd, h.respRemove
	if a.filters.redirect != nil {
		ra, lp, err := redirectAction(a.filters.redirect, mp)
		if err != nil {
			setDirect500(r, err.Error())
			return r, false, err
		}
		r.Action = &routev3.Route_Redirect{Redirect: ra}
		return r, lp, nil
	}
	ra := &routev3.RouteAction{Timeout: durationpb.New(a.timeout), RetryPolicy: a.retry, RequestMirrorPolicies: a.mirrors}
	failBody, err := setBackends(ra, a.backends)
	if err != nil {
		setDirect500(r, err.Error())
		return r, false, err
	}
	if failBody != "" {
		setDirect500(r, failBody)
		r.ResponseHeadersToAdd, r.ResponseHeadersToRemove = h.respAdd, h.respRemove
		return r, false, nil
	}
	if a.filters.rewrite != nil {
		if err := applyRewrite(ra, a.filters.rewrite, mp); err != nil {
			setDirect500(r, err.Error())
			return r, false, err
		}
	}
	r.Action = &routev3.Route_Route{Route: ra}
	return r, false, nil
}
