package policy

import (
	"net/netip"

	"github.com/trireme-go/trireme/identity"
	"github.com/trireme-go/trireme/ipproto"
	"github.com/trireme-go/trireme/reason"
)

// naive evaluates a Set straight from docs/policy.md, with apimachinery's own
// selector matcher, one rule at a time. The property test holds the compiled
// engine to it.
type naive struct{ set *Set }

type naiveRef struct {
	policy string
	dir    Direction
	index  int
	rule   *Rule
}

type naiveDecision struct {
	action   Action
	rule     *naiveRef
	observed *naiveRef
	reason   reason.Code
	log      bool
}

func (n naive) decide(local identity.Tags, dir Direction, peer identity.Tags, hasPeer bool, addr netip.Addr, proto ipproto.Proto, port uint16) naiveDecision {
	addr = addr.Unmap()
	var enforced, apply, observed *naiveRef
	// "reject beats allow; among equals the first in file order".
	better := func(cur *naiveRef, r *Rule) bool { return cur == nil || cur.rule.Action == Allow && r.Action == Reject }
	for _, pol := range n.set.Policies {
		if !naiveSelects(pol.Selector, local) {
			continue
		}
		rules := pol.Ingress
		if dir == Egress {
			rules = pol.Egress
		}
		for i := range rules {
			r := &rules[i]
			if !naivePeer(r, peer, hasPeer, addr) || !naivePort(r, proto, port) {
				continue
			}
			ref := &naiveRef{pol.Name, dir, r.Index, r}
			switch r.Observe {
			case Enforce:
				if better(enforced, r) {
					enforced = ref
				}
			case ObserveApply:
				if better(apply, r) {
					apply = ref
				}
				if better(observed, r) {
					observed = ref
				}
			case ObserveContinue:
				if better(observed, r) {
					observed = ref
				}
			}
		}
	}
	d := naiveDecision{rule: enforced, observed: observed}
	if d.rule == nil {
		d.rule = apply
	}
	switch {
	case d.rule == nil:
		d.action, d.reason = Deny, reason.PolicyDenied
	case d.rule.rule.Action == Reject:
		d.action, d.reason = Reject, reason.PolicyRejected
	default:
		d.action, d.reason = Allow, reason.None
	}
	d.log = d.rule != nil && d.rule.rule.Log || observed != nil && observed.rule.Log
	return d
}

func naivePeer(r *Rule, peer identity.Tags, hasPeer bool, addr netip.Addr) bool {
	if len(r.Peers) == 0 {
		return true
	}
	for _, pe := range r.Peers {
		if pe.Selector != nil {
			if hasPeer && naiveSelects(pe.Selector, peer) {
				return true
			}
			continue
		}
		if !addr.IsValid() || !pe.CIDR.Contains(addr) {
			continue
		}
		holed := false
		for _, e := range pe.Except {
			if e.Contains(addr) {
				holed = true
			}
		}
		if !holed {
			return true
		}
	}
	return false
}

func naivePort(r *Rule, proto ipproto.Proto, port uint16) bool {
	if len(r.Ports) == 0 {
		return true
	}
	for _, pr := range r.Ports {
		if (pr.Protocol == ipproto.Any || pr.Protocol == proto) && pr.First <= port && port <= pr.Last {
			return true
		}
	}
	return false
}

func sameRef(a *RuleRef, b *naiveRef) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return a.Policy == b.policy && a.Direction == b.dir && a.Index == b.index
}

// naiveSelects matches with apimachinery's own matcher when the selector's
// values are all Kubernetes label values, and otherwise straight from the
// table in docs/policy.md.
func naiveSelects(s *Selector, tags identity.Tags) bool {
	if k := k8sSelector(s); k != nil {
		return k.Matches(k8sLabels(tags))
	}
	for _, r := range s.Requirements() {
		has, v := false, ""
		for _, t := range tags {
			if t.Key == r.Key {
				has, v = true, t.Value
			}
		}
		in := false
		for _, w := range r.Values {
			in = in || w == v
		}
		switch {
		case r.Op == OpIn && !(has && in),
			r.Op == OpNotIn && has && in,
			r.Op == OpExists && !has,
			r.Op == OpDoesNotExist && has:
			return false
		}
	}
	return true
}
