// Package dnsname checks DNS names as Kubernetes does for object names
// (RFC 1123 labels and subdomains), without Kubernetes' libraries: the data
// plane's binaries check identities and authorities with it and stay small.
package dnsname

import "fmt"

// Label checks an RFC 1123 label: at most 63 characters of lower-case
// letters, digits and '-', starting and ending with a letter or digit.
func Label(s string) error {
	if len(s) > 63 {
		return fmt.Errorf("must be at most 63 characters, not %d", len(s))
	}
	return chars(s, false)
}

// Subdomain checks an RFC 1123 subdomain: at most 253 characters of
// labels (as Label, without their length limit) joined by '.'.
func Subdomain(s string) error {
	if len(s) > 253 {
		return fmt.Errorf("must be at most 253 characters, not %d", len(s))
	}
	return chars(s, true)
}

func chars(s string, dots bool) error {
	if s == "" {
		return fmt.Errorf("must not be empty")
	}
	start := 0 // of the current label
	for i := 0; i <= len(s); i++ {
		if i < len(s) && !(dots && s[i] == '.') {
			c := s[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				return fmt.Errorf("character %q at %d: only lower-case letters, digits, '-'%s are allowed", c, i, map[bool]string{true: " and '.'", false: ""}[dots])
			}
			continue
		}
		if i == start {
			return fmt.Errorf("empty label at %d", i)
		}
		if s[start] == '-' || s[i-1] == '-' {
			return fmt.Errorf("label %q must start and end with a letter or digit", s[start:i])
		}
		start = i + 1
	}
	return nil
}
