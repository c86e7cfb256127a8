package router

import (
	"fmt"
	"net/http"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
)

// HeaderAction is what a HeaderOp does.
type HeaderAction int

const (
	HeaderRemove            HeaderAction = iota // delete every value of Name
	HeaderSet                                   // replace the values of Name (OVERWRITE_IF_EXISTS_OR_ADD)
	HeaderAppend                                // add a value to Name (APPEND_IF_EXISTS_OR_ADD)
	HeaderAddIfAbsent                           // set Name only when absent (ADD_IF_ABSENT)
	HeaderOverwriteIfExists                     // replace Name only when present (OVERWRITE_IF_EXISTS)
)

func (a HeaderAction) String() string {
	switch a {
	case HeaderRemove:
		return "remove"
	case HeaderSet:
		return "set"
	case HeaderAppend:
		return "append"
	case HeaderAddIfAbsent:
		return "add-if-absent"
	case HeaderOverwriteIfExists:
		return "overwrite-if-exists"
	}
	return fmt.Sprintf("HeaderAction(%d)", int(a))
}

// HeaderOp is one header modification.
type HeaderOp struct {
	Action HeaderAction
	Name   string // lower case
	Value  string // unused for HeaderRemove
}

// HeaderOps are header modifications, to apply in order.
type HeaderOps []HeaderOp

// ApplyRequest applies the operations to request headers (a nil header
// is left alone). It and ApplyResponse do the same; the names say which
// of a Decision's lists goes where.
func (h HeaderOps) ApplyRequest(hdr http.Header) { h.apply(hdr) }

// ApplyResponse applies the operations to response headers.
func (h HeaderOps) ApplyResponse(hdr http.Header) { h.apply(hdr) }

func (h HeaderOps) apply(hdr http.Header) {
	if hdr == nil {
		return
	}
	for _, op := range h {
		switch op.Action {
		case HeaderRemove:
			hdr.Del(op.Name)
		case HeaderSet:
			hdr.Set(op.Name, op.Value)
		case HeaderAppend:
			hdr.Add(op.Name, op.Value)
		case HeaderAddIfAbsent:
			if len(hdr.Values(op.Name)) == 0 {
				hdr.Set(op.Name, op.Value)
			}
		case HeaderOverwriteIfExists:
			if len(hdr.Values(op.Name)) > 0 {
				hdr.Set(op.Name, op.Value)
			}
		}
	}
}

// compileHeaderOps turns one level's removals and additions into ops:
// removals first, as Envoy applies them.
func compileHeaderOps(add []*corev3.HeaderValueOption, remove []string) (HeaderOps, error) {
	var ops HeaderOps
	for _, n := range remove {
		name, err := modifiable(n)
		if err != nil {
			return nil, fmt.Errorf("headers_to_remove: %w", err)
		}
		ops = append(ops, HeaderOp{Action: HeaderRemove, Name: name})
	}
	for i, o := range add {
		op, keep, err := compileHeaderValue(o)
		if err != nil {
			return nil, fmt.Errorf("headers_to_add[%d]: %w", i, err)
		}
		if keep {
			ops = append(ops, op)
		}
	}
	return ops, nil
}

// compileHeaderValue reads one HeaderValueOption. keep is false for an
// empty value, which Envoy skips (keep_empty_value is unsupported).
func compileHeaderValue(o *corev3.HeaderValueOption) (op HeaderOp, keep bool, err error) {
	name, err := modifiable(o.GetHeader().GetKey())
	if err != nil {
		return op, false, err
	}
	op.Name = name
	switch o.GetAppendAction() {
	case corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD:
		op.Action = HeaderAppend
	case corev3.HeaderValueOption_ADD_IF_ABSENT:
		op.Action = HeaderAddIfAbsent
	case corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD:
		op.Action = HeaderSet
	case corev3.HeaderValueOption_OVERWRITE_IF_EXISTS:
		op.Action = HeaderOverwriteIfExists
	default:
		return op, false, fmt.Errorf("header %q: unknown append_action %d", name, o.GetAppendAction())
	}
	if o.Append != nil {
		if o.GetAppendAction() != corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD {
			return op, false, fmt.Errorf("header %q: append and append_action both set", name)
		}
		if !o.Append.GetValue() {
			op.Action = HeaderSet
		}
	}
	raw := o.GetHeader().GetValue()
	if rv := o.GetHeader().GetRawValue(); len(rv) > 0 {
		if raw != "" {
			return op, false, fmt.Errorf("header %q: value and raw_value both set", name)
		}
		raw = string(rv)
	}
	if op.Value, err = literalValue(raw); err != nil {
		return op, false, fmt.Errorf("header %q: %w", name, err)
	}
	return op, op.Value != "", nil
}

// modifiable lower-cases a header name and refuses pseudo-headers and
// host, which routes cannot modify.
func modifiable(name string) (string, error) {
	n := strings.ToLower(name)
	switch {
	case n == "":
		return "", fmt.Errorf("empty header name")
	case strings.HasPrefix(n, ":") || n == "host":
		return "", fmt.Errorf("header %q cannot be modified", name)
	case strings.ContainsAny(n, " \t\r\n:"):
		return "", fmt.Errorf("invalid header name %q", name)
	}
	return n, nil
}

// literalValue unescapes %% and refuses Envoy formatter commands (%...%).
func literalValue(v string) (string, error) {
	if strings.ContainsAny(v, "\r\n\x00") {
		return "", fmt.Errorf("value %q contains CR, LF or NUL", v)
	}
	if !strings.Contains(v, "%") {
		return v, nil
	}
	var b strings.Builder
	for i := 0; i < len(v); i++ {
		if v[i] != '%' {
			b.WriteByte(v[i])
			continue
		}
		if i+1 < len(v) && v[i+1] == '%' {
			b.WriteByte('%')
			i++
			continue
		}
		return "", fmt.Errorf("value %q uses an Envoy formatter command, which is not supported", v)
	}
	return b.String(), nil
}
