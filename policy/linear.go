package policy

import (
	"net/netip"

	"github.com/trireme-go/trireme/reason"
)

// TEMPORARY linear engine; replaced by the indexed one.

type prefixList []netip.Prefix

func (l prefixList) contains(a netip.Addr) bool {
	for _, p := range l {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

type Engine struct {
	set      *Set
	target   prefixList
	excluded prefixList
	refs     [][2][]*RuleRef
}

func Compile(s *Set) (*Engine, error) {
	e := &Engine{set: s, target: s.TargetNetworks, excluded: s.ExcludedNetworks}
	for _, p := range s.Policies {
		var r [2][]*RuleRef
		for d, rules := range [2][]Rule{p.Ingress, p.Egress} {
			for _, ru := range rules {
				r[d] = append(r[d], &RuleRef{Policy: p.Name, Direction: Direction(d), Index: ru.Index, Name: ru.Name,
					Action: ru.Action, Observe: ru.Observe, Log: ru.Log, Pos: ru.Pos})
			}
		}
		e.refs = append(e.refs, r)
	}
	return e, nil
}

type PUPolicy struct {
	e        *Engine
	policies []int
}

type Identity struct{ tags Tags }

func NewIdentity(tags Tags) *Identity { return &Identity{tags} }
func (id *Identity) Tags() Tags       { return id.tags }

func (e *Engine) ForPU(tags Tags) *PUPolicy {
	p := &PUPolicy{e: e}
	for i, pol := range e.set.Policies {
		if pol.Selector.MatchesTags(tags) {
			p.policies = append(p.policies, i)
		}
	}
	return p
}

func (p *PUPolicy) Ingress(peer *Identity, addr netip.Addr, proto Protocol, port uint16) Decision {
	return p.decide(Ingress, peer, addr, proto, port)
}
func (p *PUPolicy) Egress(peer *Identity, addr netip.Addr, proto Protocol, port uint16) Decision {
	return p.decide(Egress, peer, addr, proto, port)
}

func peerMatches(r *Rule, peer *Identity, addr netip.Addr) bool {
	if len(r.Peers) == 0 {
		return true
	}
	for _, pe := range r.Peers {
		if pe.Selector != nil {
			if peer != nil && pe.Selector.MatchesTags(peer.tags) {
				return true
			}
			continue
		}
		if addr.IsValid() && pe.CIDR.Contains(addr) && !prefixList(pe.Except).contains(addr) {
			return true
		}
	}
	return false
}

func portMatches(r *Rule, proto Protocol, port uint16) bool {
	if len(r.Ports) == 0 {
		return true
	}
	for _, pr := range r.Ports {
		if pr.Matches(proto, port) {
			return true
		}
	}
	return false
}

func (p *PUPolicy) decide(dir Direction, peer *Identity, addr netip.Addr, proto Protocol, port uint16) Decision {
	addr = addr.Unmap()
	var enf, apply, obs *RuleRef
	better := func(cur *RuleRef, r *RuleRef) bool { return cur == nil || (cur.Action == Allow && r.Action == Reject) }
	for _, pi := range p.policies {
		pol := &p.e.set.Policies[pi]
		rules := pol.Ingress
		if dir == Egress {
			rules = pol.Egress
		}
		for i := range rules {
			r := &rules[i]
			if !peerMatches(r, peer, addr) || !portMatches(r, proto, port) {
				continue
			}
			ref := p.e.refs[pi][dir][i]
			switch r.Observe {
			case Enforce:
				if better(enf, ref) {
					enf = ref
				}
			case ObserveApply:
				if better(apply, ref) {
					apply = ref
				}
				if better(obs, ref) {
					obs = ref
				}
			case ObserveContinue:
				if better(obs, ref) {
					obs = ref
				}
			}
		}
	}
	return makeDecision(enf, apply, obs)
}

func makeDecision(enf, apply, obs *RuleRef) Decision {
	d := Decision{Rule: enf, Observed: obs}
	if d.Rule == nil {
		d.Rule = apply
	}
	switch {
	case d.Rule == nil:
		d.Action, d.Reason = Deny, reason.PolicyDenied
	case d.Rule.Action == Reject:
		d.Action, d.Reason = Reject, reason.PolicyRejected
	default:
		d.Action, d.Reason = Allow, reason.None
	}
	d.Log = d.Rule != nil && d.Rule.Log || obs != nil && obs.Log
	return d
}
