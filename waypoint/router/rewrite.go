package router

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
)

// Redirect is a redirect response to send.
type Redirect struct {
	Status   int    // 301, 302, 303, 307 or 308
	Location string // absolute URL
}

// regexRewrite is an Envoy RegexMatchAndSubstitute: every match of re in
// the path (query excluded) is replaced by the expanded template.
type regexRewrite struct {
	re       *regexp.Regexp
	template string // Go Expand syntax
}

func compileRegexRewrite(m *matcherv3.RegexMatchAndSubstitute, field string) (*regexRewrite, error) {
	re, err := regexp.Compile(m.GetPattern().GetRegex())
	if err != nil {
		return nil, &regexError{fmt.Errorf("%s.pattern: invalid regex %q: %w", field, m.GetPattern().GetRegex(), err)}
	}
	tmpl, err := goTemplate(m.GetSubstitution(), re.NumSubexp())
	if err != nil {
		return nil, &regexError{fmt.Errorf("%s.substitution: %w", field, err)}
	}
	return &regexRewrite{re: re, template: tmpl}, nil
}

// goTemplate converts an RE2 substitution (\0..\9 are groups, \\ is a
// backslash) into Go's Expand syntax.
func goTemplate(sub string, groups int) (string, error) {
	var b strings.Builder
	for i := 0; i < len(sub); i++ {
		c := sub[i]
		switch {
		case c == '$':
			b.WriteString("$$")
		case c != '\\':
			b.WriteByte(c)
		case i+1 < len(sub) && sub[i+1] == '\\':
			b.WriteByte('\\')
			i++
		case i+1 < len(sub) && sub[i+1] >= '0' && sub[i+1] <= '9':
			n := int(sub[i+1] - '0')
			if n > groups {
				return "", fmt.Errorf("%q refers to group %d of %d", sub, n, groups)
			}
			b.WriteString("${" + strconv.Itoa(n) + "}")
			i++
		default:
			return "", fmt.Errorf("%q: a backslash must precede a digit or a backslash", sub)
		}
	}
	return b.String(), nil
}

func (r *regexRewrite) apply(path string) string {
	return r.re.ReplaceAllString(path, r.template)
}

// rewrittenPath is the new :path after a prefix or regex rewrite: the
// query, if any, is kept.
func rewrittenPath(v *view, prefix *string, matchedLen int, rr *regexRewrite) string {
	p := v.path
	switch {
	case prefix != nil:
		p = *prefix + p[matchedLen:]
	case rr != nil:
		p = rr.apply(p)
	}
	return p + v.rawQuerySuffix()
}

// redirect is a compiled RedirectAction.
type redirect struct {
	scheme     string // "" keeps the request's
	host       string
	port       uint32
	path       *string // path_redirect
	prefix     *string // prefix_rewrite
	regex      *regexRewrite
	code       int
	stripQuery bool
}

func compileRedirect(ra *routev3.RedirectAction) (*redirect, error) {
	rd := &redirect{host: ra.GetHostRedirect(), port: ra.GetPortRedirect(), stripQuery: ra.GetStripQuery()}
	switch ra.GetResponseCode() {
	case routev3.RedirectAction_MOVED_PERMANENTLY:
		rd.code = 301
	case routev3.RedirectAction_FOUND:
		rd.code = 302
	case routev3.RedirectAction_SEE_OTHER:
		rd.code = 303
	case routev3.RedirectAction_TEMPORARY_REDIRECT:
		rd.code = 307
	case routev3.RedirectAction_PERMANENT_REDIRECT:
		rd.code = 308
	default:
		return nil, fmt.Errorf("redirect.response_code %d is unknown", ra.GetResponseCode())
	}
	if rd.port > 65535 {
		return nil, fmt.Errorf("redirect.port_redirect %d is not a port", rd.port)
	}
	switch s := ra.GetSchemeRewriteSpecifier().(type) {
	case *routev3.RedirectAction_HttpsRedirect:
		if s.HttpsRedirect {
			rd.scheme = "https"
		}
	case *routev3.RedirectAction_SchemeRedirect:
		rd.scheme = strings.ToLower(s.SchemeRedirect)
	}
	switch p := ra.GetPathRewriteSpecifier().(type) {
	case *routev3.RedirectAction_PathRedirect:
		rd.path = &p.PathRedirect
	case *routev3.RedirectAction_PrefixRewrite:
		rd.prefix = &p.PrefixRewrite
	case *routev3.RedirectAction_RegexRewrite:
		rr, err := compileRegexRewrite(p.RegexRewrite, "redirect.regex_rewrite")
		if err != nil {
			return nil, err
		}
		rd.regex = rr
	case nil:
	default:
		return nil, errors.New("redirect has an unsupported path rewrite")
	}
	return rd, nil
}

// location builds the Location of the redirect for request v, whose path
// match consumed matchedLen bytes.
func (rd *redirect) location(v *view, matchedLen int) *Redirect {
	reqScheme := v.scheme()
	scheme := reqScheme
	if rd.scheme != "" {
		scheme = rd.scheme
	}
	port := ""
	if rd.port != 0 && !isDefaultPort(scheme, rd.port) {
		port = ":" + strconv.FormatUint(uint64(rd.port), 10)
	}
	host := rd.host
	if host == "" {
		host = requestHost(v.host(), reqScheme, scheme, rd.port != 0)
	}
	return &Redirect{Status: rd.code, Location: scheme + "://" + host + port + rd.newPath(v, matchedLen)}
}

// newPath is the redirect's path and query. A query in path_redirect
// replaces the request's and survives strip_query (Envoy).
func (rd *redirect) newPath(v *view, matchedLen int) string {
	query := v.rawQuerySuffix()
	if rd.stripQuery {
		query = ""
	}
	switch {
	case rd.path != nil:
		if strings.Contains(*rd.path, "?") {
			return *rd.path
		}
		return *rd.path + query
	case rd.prefix != nil:
		return *rd.prefix + v.path[matchedLen:] + query
	case rd.regex != nil:
		return rd.regex.apply(v.path) + query
	}
	return v.path + query
}

func isDefaultPort(scheme string, port uint32) bool {
	return (scheme == "http" && port == 80) || (scheme == "https" && port == 443)
}

// requestHost is the request's authority as the redirect's host, following
// Envoy: its port goes when a new port is set, or when the scheme changes
// and the port was the old scheme's default.
func requestHost(host, oldScheme, newScheme string, newPort bool) string {
	end := strings.LastIndexByte(host, ':')
	if strings.HasPrefix(host, "[") {
		end = strings.LastIndex(host, "]:")
		if end >= 0 {
			end++
		}
	}
	if end < 0 {
		return host
	}
	port := host[end:]
	remove := newPort
	if newScheme != oldScheme {
		remove = remove || (oldScheme == "https" && port == ":443") || (oldScheme == "http" && port == ":80")
	}
	if remove {
		return host[:end]
	}
	return host
}
