package filesource

import (
	"errors"
	"fmt"
	"strings"
)

// Error is one problem found in a manifest.
type Error struct {
	File      string // path of the file, as given to the loader
	Line      int    // 1-based line, 0 when unknown
	Kind      string // object kind, when known
	Namespace string // object namespace, when known and namespaced
	Name      string // object name, when known
	Field     string // field path such as spec.containers[0].ports[0].containerPort
	Msg       string // what is wrong
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
	}
	b.WriteString(": ")
	if e.Kind != "" {
		b.WriteString(e.Kind)
		switch {
		case e.Namespace != "" && e.Name != "":
			b.WriteString(" " + e.Namespace + "/" + e.Name)
		case e.Name != "":
			b.WriteString(" " + e.Name)
		}
		b.WriteString(": ")
	}
	if e.Field != "" {
		b.WriteString(e.Field + ": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Errors returns the *Error values joined in err (as returned by LoadDir).
func Errors(err error) []*Error {
	var out []*Error
	var walk func(error)
	walk = func(err error) {
		if err == nil {
			return
		}
		if e, ok := err.(*Error); ok {
			out = append(out, e)
			return
		}
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			for _, e := range j.Unwrap() {
				walk(e)
			}
			return
		}
		var e *Error
		if errors.As(err, &e) {
			out = append(out, e)
		}
	}
	walk(err)
	return out
}
