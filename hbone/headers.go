package hbone

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2/hpack"
)

// Header names that are meaningless (and forbidden) in HTTP/2 (RFC 9113
// §8.2.2).
var connectionSpecific = map[string]bool{
	"connection": true, "keep-alive": true, "proxy-connection": true, "transfer-encoding": true, "upgrade": true,
}

// requestHead is a CONNECT request as the server received it.
type requestHead struct {
	method    string
	authority string
	header    http.Header
}

// parseRequest checks a decoded request header list. A list that breaks
// HTTP/2's rules is a *streamError (the stream is reset with
// PROTOCOL_ERROR, RFC 9113 §8.1.1); a well-formed request that is not a
// usable CONNECT gets a status (400) and a reason.
func parseRequest(fields []hpack.HeaderField) (req requestHead, status int, reason string, err error) {
	seenRegular := false
	var path, scheme, protocol bool
	for _, f := range fields {
		if err := checkField(f); err != nil {
			return req, 0, "", err
		}
		if f.IsPseudo() {
			if seenRegular {
				return req, 0, "", &streamError{errCodeProtocol, "pseudo-header " + f.Name + " after regular headers"}
			}
			var dup bool
			switch f.Name {
			case ":method":
				dup = req.method != ""
				req.method = f.Value
			case ":authority":
				dup = req.authority != ""
				req.authority = f.Value
			case ":path":
				dup, path = path, true
			case ":scheme":
				dup, scheme = scheme, true
			case ":protocol":
				dup, protocol = protocol, true
			default:
				return req, 0, "", &streamError{errCodeProtocol, "unknown request pseudo-header " + f.Name}
			}
			if dup {
				return req, 0, "", &streamError{errCodeProtocol, "duplicate pseudo-header " + f.Name}
			}
			continue
		}
		seenRegular = true
		if req.header == nil {
			req.header = make(http.Header, len(fields))
		}
		k := http.CanonicalHeaderKey(f.Name)
		req.header[k] = append(req.header[k], f.Value)
	}
	if req.method == "" {
		return req, 0, "", &streamError{errCodeProtocol, "request without :method"}
	}
	if req.header == nil {
		req.header = http.Header{}
	}
	if req.method != http.MethodConnect {
		return req, http.StatusBadRequest, "method " + strconv.Quote(req.method) + " is not CONNECT", nil
	}
	if protocol {
		// Extended CONNECT (RFC 8441) is never enabled by our SETTINGS.
		return req, 0, "", &streamError{errCodeProtocol, ":protocol without SETTINGS_ENABLE_CONNECT_PROTOCOL"}
	}
	if path || scheme {
		return req, 0, "", &streamError{errCodeProtocol, "CONNECT with :path or :scheme"}
	}
	if req.authority == "" {
		return req, http.StatusBadRequest, "CONNECT without :authority", nil
	}
	return req, 0, "", nil
}

// checkField applies RFC 9113 §8.2.1 to one field.
func checkField(f hpack.HeaderField) error {
	name := f.Name
	if f.IsPseudo() {
		name = name[1:]
	}
	if !httpguts.ValidHeaderFieldName(name) {
		return &streamError{errCodeProtocol, fmt.Sprintf("invalid header name %q", f.Name)}
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; 'A' <= c && c <= 'Z' {
			return &streamError{errCodeProtocol, fmt.Sprintf("upper-case header name %q", f.Name)}
		}
	}
	if !httpguts.ValidHeaderFieldValue(f.Value) {
		return &streamError{errCodeProtocol, fmt.Sprintf("invalid value for header %q", f.Name)}
	}
	if connectionSpecific[f.Name] {
		return &streamError{errCodeProtocol, "connection-specific header " + f.Name}
	}
	if f.Name == "te" && f.Value != "trailers" {
		return &streamError{errCodeProtocol, "te header other than trailers"}
	}
	return nil
}

// parseResponse checks a decoded response header list and returns its
// status and regular headers.
func parseResponse(fields []hpack.HeaderField) (status int, hdr http.Header, err error) {
	seenRegular := false
	for _, f := range fields {
		if err := checkField(f); err != nil {
			return 0, nil, err
		}
		if f.IsPseudo() {
			if seenRegular || f.Name != ":status" || status != 0 {
				return 0, nil, &streamError{errCodeProtocol, "unexpected response pseudo-header " + f.Name}
			}
			if len(f.Value) != 3 {
				return 0, nil, &streamError{errCodeProtocol, fmt.Sprintf("invalid :status %q", f.Value)}
			}
			n, perr := strconv.Atoi(f.Value)
			if perr != nil || n < 100 {
				return 0, nil, &streamError{errCodeProtocol, fmt.Sprintf("invalid :status %q", f.Value)}
			}
			status = n
			continue
		}
		seenRegular = true
		if hdr == nil {
			hdr = http.Header{}
		}
		k := http.CanonicalHeaderKey(f.Name)
		hdr[k] = append(hdr[k], f.Value)
	}
	if status == 0 {
		return 0, nil, &streamError{errCodeProtocol, "response without :status"}
	}
	return status, hdr, nil
}

// requestFields builds the CONNECT header list the client sends: the
// pseudo-headers, then every header of h with its name lower-cased. Headers
// HTTP/2 forbids, and Host (the authority is the target), are an error.
func requestFields(authority string, h http.Header) ([]hpack.HeaderField, error) {
	fields := make([]hpack.HeaderField, 0, 2+len(h))
	fields = append(fields, hpack.HeaderField{Name: ":method", Value: http.MethodConnect}, hpack.HeaderField{Name: ":authority", Value: authority})
	for k, vs := range h {
		name := strings.ToLower(k)
		if name == "host" || strings.HasPrefix(name, ":") {
			return nil, fmt.Errorf("hbone: header %q cannot be set on a CONNECT", k)
		}
		for _, v := range vs {
			f := hpack.HeaderField{Name: name, Value: v, Sensitive: name == "authorization"}
			if err := checkField(f); err != nil {
				return nil, fmt.Errorf("hbone: header %q: %w", k, err)
			}
			fields = append(fields, f)
		}
	}
	return fields, nil
}

// responseFields builds a response header list.
func responseFields(status int, h http.Header) []hpack.HeaderField {
	fields := make([]hpack.HeaderField, 0, 1+len(h))
	fields = append(fields, hpack.HeaderField{Name: ":status", Value: strconv.Itoa(status)})
	for k, vs := range h {
		name := strings.ToLower(k)
		for _, v := range vs {
			f := hpack.HeaderField{Name: name, Value: v}
			if strings.HasPrefix(name, ":") || checkField(f) != nil {
				continue // never put a malformed field on the wire
			}
			fields = append(fields, f)
		}
	}
	return fields
}
