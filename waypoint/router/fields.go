package router

import (
	"slices"

	"google.golang.org/protobuf/reflect/protoreflect"
)

// supportedFields lists, per message, the fields this package honours.
// A message missing here has no supported fields at all.
func supportedFields(msg protoreflect.FullName) []protoreflect.Name {
	switch msg {
	case "envoy.config.route.v3.RouteConfiguration":
		return []protoreflect.Name{"name", "virtual_hosts"}
	case "envoy.config.route.v3.VirtualHost":
		return []protoreflect.Name{"name", "domains", "routes"}
	case "envoy.config.route.v3.Route":
		return []protoreflect.Name{"name", "match", "route", "redirect", "direct_response",
			"request_headers_to_add", "request_headers_to_remove", "response_headers_to_add", "response_headers_to_remove"}
	case "envoy.config.route.v3.RouteMatch":
		return []protoreflect.Name{"prefix", "path", "safe_regex", "path_separated_prefix",
			"case_sensitive", "headers", "query_parameters", "grpc"}
	case "envoy.config.route.v3.HeaderMatcher":
		return []protoreflect.Name{"name", "string_match", "present_match", "invert_match"}
	case "envoy.config.route.v3.QueryParameterMatcher":
		return []protoreflect.Name{"name", "string_match", "present_match"}
	case "envoy.type.matcher.v3.StringMatcher":
		return []protoreflect.Name{"exact", "prefix", "suffix", "contains", "safe_regex", "ignore_case"}
	case "envoy.type.matcher.v3.RegexMatcher":
		return []protoreflect.Name{"regex", "google_re2"}
	case "envoy.type.matcher.v3.RegexMatchAndSubstitute":
		return []protoreflect.Name{"pattern", "substitution"}
	case "envoy.config.route.v3.RouteAction":
		return []protoreflect.Name{"cluster", "weighted_clusters", "cluster_not_found_response_code",
			"prefix_rewrite", "regex_rewrite", "host_rewrite_literal", "timeout", "retry_policy", "request_mirror_policies"}
	case "envoy.config.route.v3.WeightedCluster":
		return []protoreflect.Name{"clusters"}
	case "envoy.config.route.v3.WeightedCluster.ClusterWeight":
		return []protoreflect.Name{"name", "weight",
			"request_headers_to_add", "request_headers_to_remove", "response_headers_to_add", "response_headers_to_remove"}
	case "envoy.config.route.v3.RetryPolicy":
		return []protoreflect.Name{"retry_on", "num_retries", "per_try_timeout", "retriable_status_codes", "retry_back_off"}
	case "envoy.config.route.v3.RetryPolicy.RetryBackOff":
		return []protoreflect.Name{"base_interval", "max_interval"}
	case "envoy.config.route.v3.RouteAction.RequestMirrorPolicy":
		return []protoreflect.Name{"cluster", "runtime_fraction"}
	case "envoy.config.core.v3.RuntimeFractionalPercent":
		return []protoreflect.Name{"default_value", "runtime_key"}
	case "envoy.type.v3.FractionalPercent":
		return []protoreflect.Name{"numerator", "denominator"}
	case "envoy.config.route.v3.RedirectAction":
		return []protoreflect.Name{"https_redirect", "scheme_redirect", "host_redirect", "port_redirect",
			"path_redirect", "prefix_rewrite", "regex_rewrite", "response_code", "strip_query"}
	case "envoy.config.route.v3.DirectResponseAction":
		return []protoreflect.Name{"status", "body"}
	case "envoy.config.core.v3.DataSource":
		return []protoreflect.Name{"inline_string", "inline_bytes"}
	case "envoy.config.core.v3.HeaderValueOption":
		return []protoreflect.Name{"header", "append_action", "append"}
	case "envoy.config.core.v3.HeaderValue":
		return []protoreflect.Name{"key", "value", "raw_value"}
	case "google.protobuf.Duration":
		return []protoreflect.Name{"seconds", "nanos"}
	case "google.protobuf.UInt32Value", "google.protobuf.BoolValue":
		return []protoreflect.Name{"value"}
	}
	return nil
}

// unsupportedField returns the path of the first set field of m (outside
// skip, a field of m itself) that is not in the supported subset, or "".
func unsupportedField(m protoreflect.Message, path string, skip protoreflect.Name) string {
	if len(m.GetUnknown()) > 0 {
		return path + ".<unknown field>"
	}
	supported := supportedFields(m.Descriptor().FullName())
	found := ""
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		name := fd.Name()
		if name == skip {
			return true
		}
		p := path + "." + string(name)
		if !slices.Contains(supported, name) {
			found = p
			return false
		}
		found = unsupportedValue(fd, v, p)
		return found == ""
	})
	return found
}

// unsupportedValue descends into a supported field's messages.
func unsupportedValue(fd protoreflect.FieldDescriptor, v protoreflect.Value, path string) string {
	if fd.Message() == nil || fd.IsMap() {
		return ""
	}
	if !fd.IsList() {
		return unsupportedField(v.Message(), path, "")
	}
	l := v.List()
	for i := 0; i < l.Len(); i++ {
		if p := unsupportedField(l.Get(i).Message(), path, ""); p != "" {
			return p
		}
	}
	return ""
}
