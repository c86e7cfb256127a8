package routes

import (
	"cmp"
	"slices"
	"time"
)

// Path kinds in HTTPRoute precedence order.
const (
	pathExact = iota
	pathRegex
	pathPrefix
)

// precedence is the sort key of one Envoy route generated from one match.
type precedence struct {
	grpc bool // GRPCRoute entries come before HTTPRoute entries

	// HTTPRoute criteria.
	pathKind int
	pathLen  int
	method   bool
	headers  int
	queries  int

	// GRPCRoute criteria (headers is shared).
	serviceLen int
	methodLen  int

	// Tie-breakers, common to both.
	created time.Time
	nsName  string // "<namespace>/<name>"
	rule    int
	match   int
}

// comparePrecedence orders a before b when a must be tried first.
func comparePrecedence(a, b precedence) int {
	if a.grpc != b.grpc {
		if a.grpc {
			return -1
		}
		return 1
	}
	var c int
	if a.grpc {
		c = compareGRPC(a, b)
	} else {
		c = compareHTTP(a, b)
	}
	if c != 0 {
		return c
	}
	return compareTies(a, b)
}

// compareHTTP: Exact > RegularExpression > PathPrefix; longer value first;
// method match first; more header matches; more query param matches.
func compareHTTP(a, b precedence) int {
	return cmp.Or(
		cmp.Compare(a.pathKind, b.pathKind),
		cmp.Compare(b.pathLen, a.pathLen),
		compareTrueFirst(a.method, b.method),
		cmp.Compare(b.headers, a.headers),
		cmp.Compare(b.queries, a.queries),
	)
}

// compareGRPC: more service characters, more method characters, more
// header matches. With exact matches this puts service+method before
// service only before method only before none.
func compareGRPC(a, b precedence) int {
	return cmp.Or(
		cmp.Compare(b.serviceLen, a.serviceLen),
		cmp.Compare(b.methodLen, a.methodLen),
		cmp.Compare(b.headers, a.headers),
	)
}

// compareTies: older route, then namespace/name, then rule, then match.
func compareTies(a, b precedence) int {
	return cmp.Or(
		a.created.Compare(b.created),
		cmp.Compare(a.nsName, b.nsName),
		cmp.Compare(a.rule, b.rule),
		cmp.Compare(a.match, b.match),
	)
}

func compareTrueFirst(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return -1
	}
	return 1
}

// sortEntries puts entries in precedence order (stable, so equal keys keep
// their input order).
func sortEntries(es []entry) {
	slices.SortStableFunc(es, func(a, b entry) int { return comparePrecedence(a.key, b.key) })
}
