// Package router is the waypoint's route engine: it compiles an Envoy
// RouteConfiguration (as controlplane/routes produces it) once into an
// immutable Router, and decides, per request, which route applies and what
// to do: forward to a cluster (after the weighted pick), redirect, or
// answer directly, with the header operations, rewrites, timeouts, retry
// policy and mirrors to apply. It performs no I/O.
//
// It honours exactly this subset of Envoy's route API, with Envoy's
// semantics; any other field that is set (including unknown fields) turns
// the route into a 500 "unsupported route field: <path>" (on the
// RouteConfiguration or a VirtualHost it makes Compile fail):
//
//	RouteConfiguration: name, virtual_hosts
//	VirtualHost: name, domains, routes
//	Route: name, match, route | redirect | direct_response,
//	  request_headers_to_add, request_headers_to_remove,
//	  response_headers_to_add, response_headers_to_remove
//	RouteMatch: prefix | path | safe_regex | path_separated_prefix,
//	  case_sensitive, headers, query_parameters, grpc
//	HeaderMatcher: name, string_match | present_match, invert_match
//	QueryParameterMatcher: name, string_match | present_match
//	StringMatcher: exact | prefix | suffix | contains | safe_regex, ignore_case
//	RegexMatcher: regex (google_re2, empty, is accepted)
//	RouteAction: cluster | weighted_clusters, cluster_not_found_response_code,
//	  prefix_rewrite | regex_rewrite, host_rewrite_literal, timeout,
//	  retry_policy, request_mirror_policies
//	WeightedCluster: clusters; ClusterWeight: name, weight,
//	  request_headers_to_add/remove, response_headers_to_add/remove
//	RetryPolicy: retry_on, num_retries, per_try_timeout,
//	  retriable_status_codes, retry_back_off {base_interval, max_interval}
//	RequestMirrorPolicy: cluster, runtime_fraction {default_value, runtime_key}
//	RedirectAction: https_redirect | scheme_redirect, host_redirect,
//	  port_redirect, path_redirect | prefix_rewrite | regex_rewrite,
//	  response_code, strip_query
//	DirectResponseAction: status, body {inline_string | inline_bytes}
//	HeaderValueOption: header {key, value | raw_value}, append_action | append
//
// Envoy semantics kept: routes are tried in order, first match wins; path
// matching is on the raw :path with the query removed, case-sensitive
// unless case_sensitive is false; safe_regex is a full match (RE2, here Go
// regexp); path_separated_prefix matches the prefix exactly or followed by
// "/"; header names are case-insensitive and repeated headers are joined
// with ","; a missing header only satisfies a present_match; query
// parameter values are compared undecoded, using the first occurrence;
// grpc requires content-type application/grpc (or application/grpc+... or
// application/grpc;...); an unset route timeout is 15 s; an unset
// num_retries is 1; an unset retry backoff is 25 ms (max 10x base); header
// removals apply before additions, weighted-cluster headers before route
// headers; values with Envoy formatter commands (%...%, other than %%) are
// unsupported; runtime_key is ignored (there is no runtime: default_value
// applies).
//
// Choices beyond Envoy: virtual hosts are chosen by the authority both as
// sent and without its port, the more specific match winning; in redirects the port is omitted when it is the
// final scheme's default (80 for http, 443 for https); a weighted cluster
// whose name starts with InvalidBackendPrefix stands for an invalid Gateway
// API backend and gets cluster_not_found_response_code (503 by default,
// 500 as controlplane/routes sets it).
package router
