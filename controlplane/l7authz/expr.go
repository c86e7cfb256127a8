package l7authz

import (
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
)

// expr is a boolean expression over RBAC leaves, folded as it is built so
// that constants (placeholders for what cannot be checked) disappear into
// the AND or OR around them. A folded expression is a constant only at its
// root.
type expr struct {
	op   exprOp
	val  bool    // opConst
	kids []*expr // opAnd, opOr: two or more; opNot: one
	perm *rbacv3.Permission
	prin *rbacv3.Principal
}

type exprOp uint8

const (
	opConst exprOp = iota
	opLeaf
	opAnd
	opOr
	opNot
)

func constant(v bool) *expr { return &expr{op: opConst, val: v} }

func permLeaf(p *rbacv3.Permission) *expr { return &expr{op: opLeaf, perm: p} }
func prinLeaf(p *rbacv3.Principal) *expr  { return &expr{op: opLeaf, prin: p} }

func (e *expr) isConst(v bool) bool { return e.op == opConst && e.val == v }

// and is true when every e is; of none, true.
func and(es ...*expr) *expr { return join(opAnd, es) }

// or is true when any e is; of none, false.
func or(es ...*expr) *expr { return join(opOr, es) }

// join folds an AND (absorbing false, dropping true) or an OR (absorbing
// true, dropping false).
func join(op exprOp, es []*expr) *expr {
	absorb := op == opOr // the constant that decides the whole
	var kids []*expr
	for _, e := range es {
		switch {
		case e.isConst(absorb):
			return constant(absorb)
		case e.isConst(!absorb):
			continue
		case e.op == op:
			kids = append(kids, e.kids...)
		default:
			kids = append(kids, e)
		}
	}
	switch len(kids) {
	case 0:
		return constant(!absorb)
	case 1:
		return kids[0]
	}
	return &expr{op: op, kids: kids}
}

func not(e *expr) *expr {
	switch {
	case e.op == opConst:
		return constant(!e.val)
	case e.op == opNot:
		return e.kids[0]
	}
	return &expr{op: opNot, kids: []*expr{e}}
}

// permission lowers an expression over Permission leaves.
func (e *expr) permission() *rbacv3.Permission {
	switch e.op {
	case opConst:
		if e.val {
			return permAny()
		}
		return &rbacv3.Permission{Rule: &rbacv3.Permission_NotRule{NotRule: permAny()}}
	case opLeaf:
		return e.perm
	case opNot:
		return &rbacv3.Permission{Rule: &rbacv3.Permission_NotRule{NotRule: e.kids[0].permission()}}
	}
	set := &rbacv3.Permission_Set{}
	for _, k := range e.kids {
		set.Rules = append(set.Rules, k.permission())
	}
	if e.op == opAnd {
		return &rbacv3.Permission{Rule: &rbacv3.Permission_AndRules{AndRules: set}}
	}
	return &rbacv3.Permission{Rule: &rbacv3.Permission_OrRules{OrRules: set}}
}

// principal lowers an expression over Principal leaves.
func (e *expr) principal() *rbacv3.Principal {
	switch e.op {
	case opConst:
		if e.val {
			return prinAny()
		}
		return &rbacv3.Principal{Identifier: &rbacv3.Principal_NotId{NotId: prinAny()}}
	case opLeaf:
		return e.prin
	case opNot:
		return &rbacv3.Principal{Identifier: &rbacv3.Principal_NotId{NotId: e.kids[0].principal()}}
	}
	set := &rbacv3.Principal_Set{}
	for _, k := range e.kids {
		set.Ids = append(set.Ids, k.principal())
	}
	if e.op == opAnd {
		return &rbacv3.Principal{Identifier: &rbacv3.Principal_AndIds{AndIds: set}}
	}
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_OrIds{OrIds: set}}
}

func permAny() *rbacv3.Permission { return &rbacv3.Permission{Rule: &rbacv3.Permission_Any{Any: true}} }
func prinAny() *rbacv3.Principal {
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_Any{Any: true}}
}
