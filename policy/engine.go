package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/trireme-go/trireme/identity"
	"github.com/trireme-go/trireme/ipproto"
	"github.com/trireme-go/trireme/reason"
)

// Direction says which list of a policy a rule is in.
type Direction uint8

const (
	Ingress Direction = iota // who may connect to the selected PUs
	Egress                   // what the selected PUs may connect to
)

func (d Direction) String() string {
	if d == Egress {
		return "egress"
	}
	return "ingress"
}

// RuleRef names one rule of a compiled policy; it is immutable and part of
// the Engine, so a Decision can point at it without allocating.
type RuleRef struct {
	Policy    string
	Direction Direction
	Index     int
	Name      string
	Action    Action
	Observe   ObserveMode
	Log       bool
	Pos       Position
}

// Decision is the verdict of one half (ingress or egress) of a connection.
type Decision struct {
	Action   Action      // Allow, Reject, or Deny (nothing matched)
	Rule     *RuleRef    // the rule that decided (nil when nothing matched)
	Observed *RuleRef    // an observed rule that matched, if any
	Reason   reason.Code // None (allow), PolicyRejected, PolicyDenied
	Log      bool        // the deciding or the observed rule has log: true
}

// Allowed reports whether the decision lets the connection through.
func (d Decision) Allowed() bool { return d.Action == Allow }

func (e *Engine) Set() *Set { return e.set }

// IsTarget reports whether a lies inside the target networks. IPv6
// link-local addresses (fe80::/10) always do, whatever the policy says:
// PUs on one link reach each other over them without a router, so a peer
// there is a PU (or a host on the node's link) and proves its identity
// with a token like any target-network peer; a CIDR rule (an internet
// ::/0 rule) never lets it in without one.
func (e *Engine) IsTarget(a netip.Addr) bool {
	a = a.Unmap()
	return a.Is6() && a.IsLinkLocalUnicast() || e.target.contains(a)
}

// IsExcluded reports whether a lies inside the excluded networks.
func (e *Engine) IsExcluded(a netip.Addr) bool { return e.excluded.contains(a.Unmap()) }

// Engine is a compiled policy Set. It is immutable: a policy update compiles
// a new Engine and the daemon swaps the pointer atomically. PUPolicies from
// ForPU belong to their Engine.
type Engine struct {
	set      *Set
	target   prefixSet
	excluded prefixSet
	policies selIndex // owner: policy index
	refs     [][2][]*RuleRef

	mu    sync.Mutex
	cache map[string]*PUPolicy // PUs selected by the same policies share one PUPolicy
}

const maxCachedPUPolicies = 4096

// Compile builds the decision structures of a Set. The Set must not be
// modified afterwards.
func Compile(s *Set) (*Engine, error) {
	if s == nil {
		return nil, errors.New("policy: nil set")
	}
	e := &Engine{set: s, target: newPrefixSet(s.TargetNetworks), excluded: newPrefixSet(s.ExcludedNetworks),
		cache: map[string]*PUPolicy{}}
	names := map[string]bool{}
	var held []uint32 // symbols of the policy selectors, released with e
	defer func() { identity.Hold(e, held) }()
	for pi := range s.Policies {
		p := &s.Policies[pi]
		if names[p.Name] {
			return nil, fmt.Errorf("policy %q: duplicate name", p.Name)
		}
		names[p.Name] = true
		if err := checkSelector(p.Selector); err != nil {
			return nil, fmt.Errorf("policy %q: %w", p.Name, err)
		}
		e.policies.add(int32(pi), compileSelector(p.Selector, &held), true, false)
		var refs [2][]*RuleRef
		for d, rules := range [2][]Rule{p.Ingress, p.Egress} {
			for ri := range rules {
				r := &rules[ri]
				if r.Action != Allow && r.Action != Reject {
					return nil, fmt.Errorf("policy %q %s rule %d: bad action %v", p.Name, Direction(d), ri, r.Action)
				}
				if r.Observe > ObserveApply {
					return nil, fmt.Errorf("policy %q %s rule %d: bad observe mode %d", p.Name, Direction(d), ri, r.Observe)
				}
				for _, pe := range r.Peers {
					if (pe.Selector != nil) == pe.CIDR.IsValid() {
						return nil, fmt.Errorf("policy %q %s rule %d: a peer is a selector or a cidr", p.Name, Direction(d), ri)
					}
					if pe.Selector != nil {
						if err := checkSelector(pe.Selector); err != nil {
							return nil, fmt.Errorf("policy %q %s rule %d: %w", p.Name, Direction(d), ri, err)
						}
					}
				}
				refs[d] = append(refs[d], &RuleRef{Policy: p.Name, Direction: Direction(d), Index: r.Index, Name: r.Name,
					Action: r.Action, Observe: r.Observe, Log: r.Log, Pos: r.Pos})
			}
		}
		e.refs = append(e.refs, refs)
	}
	e.policies.build([2]func(*clause) uint32{})
	return e, nil
}

// checkSelector refuses selectors not built by this package: their
// requirements would be unknown and compile to "match everything".
func checkSelector(s *Selector) error {
	if s == nil {
		return errors.New("missing selector")
	}
	if !s.built {
		return errors.New("selector not built by ParseSelector")
	}
	return nil
}

// PUPolicy is the rules of one PU (the union of every policy whose selector
// matches its tags), indexed for decisions. Immutable; safe for concurrent use.
type PUPolicy struct {
	_        noCopy // a copy would not keep the symbols held (identity.Hold)
	policies []string
	dir      [2]dirPolicy
}

// Policies names the policies that select the PU, in file order.
func (p *PUPolicy) Policies() []string { return p.policies }

type dirPolicy struct {
	rules  []crule
	anyEnf []int32  // rules without peers that can decide, best first
	anyObs []int32  // observed rules without peers, best first
	sel    selIndex // selector peers: list 0 rules that may decide, by rank; list 1 observed rules, by obsRank
	v4, v6 cidrTable
	ports  *portIndex // nil when too large
}

// crule is a rule inside a PUPolicy. rank orders the rules that may decide
// (lower wins): enforced reject, enforced allow, observe:apply reject,
// observe:apply allow, each in file order. obsRank orders observed rules:
// reject, then allow, in file order.
type crule struct {
	ref           *RuleRef
	ports         []PortRange
	rank, obsRank uint32
	anyPeer       bool
	sels          [][]creq // selector peers
	cidrs         []Peer   // cidr peers
}

const noRank = ^uint32(0)

func (r *crule) portMatch(proto ipproto.Proto, port uint16) bool {
	if len(r.ports) == 0 {
		return true
	}
	for i := range r.ports {
		pr := &r.ports[i]
		if (pr.Protocol == ipproto.Any || pr.Protocol == proto) && port >= pr.First && port <= pr.Last {
			return true
		}
	}
	return false
}

// ForPU returns the rules of the PU with these tags. Call it once per PU per
// Engine; PUs selected by the same policies share the result.
func (e *Engine) ForPU(tags identity.Tags) *PUPolicy {
	id := identity.New(tags)
	selected := make([]bool, len(e.set.Policies))
	e.policies.lists(id, func(list, _ []int32) {
		for _, ci := range list {
			if c := &e.policies.clauses[ci]; c.matches(id) {
				selected[c.owner] = true
			}
		}
	})
	var key strings.Builder
	var idx []int
	for i, ok := range selected {
		if ok {
			idx = append(idx, i)
			key.WriteString(strconv.Itoa(i))
			key.WriteByte(',')
		}
	}
	e.mu.Lock()
	p := e.cache[key.String()]
	e.mu.Unlock()
	if p != nil {
		return p
	}
	p = e.build(idx)
	e.mu.Lock()
	if len(e.cache) < maxCachedPUPolicies {
		e.cache[key.String()] = p
	}
	e.mu.Unlock()
	return p
}

func (e *Engine) build(policies []int) *PUPolicy {
	p := &PUPolicy{}
	var held []uint32 // symbols of the peer selectors, released with p
	defer func() { identity.Hold(p, held) }()
	for _, pi := range policies {
		p.policies = append(p.policies, e.set.Policies[pi].Name)
	}
	for d := range p.dir {
		dp := &p.dir[d]
		var cidrs []cidrEntry
		seq := uint32(0)
		for _, pi := range policies {
			pol := &e.set.Policies[pi]
			rules := pol.Ingress
			if Direction(d) == Egress {
				rules = pol.Egress
			}
			for ri := range rules {
				r := &rules[ri]
				cr := crule{ref: e.refs[pi][d][ri], ports: r.Ports, rank: noRank, obsRank: noRank}
				cls := uint32(1)
				if r.Action == Reject {
					cls = 0
				}
				switch r.Observe {
				case Enforce:
					cr.rank = cls<<28 | seq
				case ObserveApply:
					cr.rank = (2+cls)<<28 | seq
					cr.obsRank = cls<<28 | seq
				case ObserveContinue:
					cr.obsRank = cls<<28 | seq
				}
				seq++
				owner := int32(len(dp.rules))
				dp.rules = append(dp.rules, cr)
				if len(r.Peers) == 0 {
					dp.rules[owner].anyPeer = true
					if cr.rank != noRank {
						dp.anyEnf = append(dp.anyEnf, owner)
					}
					if cr.obsRank != noRank {
						dp.anyObs = append(dp.anyObs, owner)
					}
					continue
				}
				for _, pe := range r.Peers {
					cr := &dp.rules[owner]
					if pe.Selector != nil {
						reqs := compileSelector(pe.Selector, &held)
						cr.sels = append(cr.sels, reqs)
						dp.sel.add(owner, reqs, cr.rank != noRank, cr.obsRank != noRank)
						continue
					}
					pe.CIDR = pe.CIDR.Masked()
					cr.cidrs = append(cr.cidrs, pe)
					cidrs = append(cidrs, cidrEntry{prefix: pe.CIDR, clause: cidrClause{owner: owner, except: pe.Except}})
				}
			}
		}
		sort.SliceStable(dp.anyEnf, func(i, j int) bool { return dp.rules[dp.anyEnf[i]].rank < dp.rules[dp.anyEnf[j]].rank })
		sort.SliceStable(dp.anyObs, func(i, j int) bool { return dp.rules[dp.anyObs[i]].obsRank < dp.rules[dp.anyObs[j]].obsRank })
		dp.v4 = buildCIDRTable(cidrs, true)
		dp.v6 = buildCIDRTable(cidrs, false)
		dp.sel.build([2]func(*clause) uint32{
			func(c *clause) uint32 { return dp.rules[c.owner].rank },
			func(c *clause) uint32 { return dp.rules[c.owner].obsRank },
		})
		for _, t := range []*cidrTable{&dp.v4, &dp.v6} {
			for ni := range t.nodes {
				cl := t.nodes[ni].clauses
				sort.SliceStable(cl, func(i, j int) bool { return dp.rules[cl[i].owner].rank < dp.rules[cl[j].owner].rank })
			}
		}
		dp.ports = buildPortIndex(dp.rules)
	}
	return p
}

// Ingress decides whether peer (nil: a host outside the target networks) at
// addr may connect to this PU on proto/port (the PU's port).
func (p *PUPolicy) Ingress(peer *identity.Identity, addr netip.Addr, proto ipproto.Proto, port uint16) Decision {
	return p.dir[Ingress].decide(peer, addr, proto, port)
}

// Egress decides whether this PU may connect to peer (nil: a host outside
// the target networks) at addr on proto/port (the peer's port).
func (p *PUPolicy) Egress(peer *identity.Identity, addr netip.Addr, proto ipproto.Proto, port uint16) Decision {
	return p.dir[Egress].decide(peer, addr, proto, port)
}

type verdict struct {
	best, obs   uint32
	bestI, obsI int32
}

func (v *verdict) consider(d *dirPolicy, ri int32, proto ipproto.Proto, port uint16) {
	r := &d.rules[ri]
	if r.rank >= v.best && r.obsRank >= v.obs {
		return
	}
	if !r.portMatch(proto, port) {
		return
	}
	if r.rank < v.best {
		v.best, v.bestI = r.rank, ri
	}
	if r.obsRank < v.obs {
		v.obs, v.obsI = r.obsRank, ri
	}
}

// portFirstMax: up to this many candidate rules on the connection's port, a
// decision checks those rules' peers, best rule first, rather than
// enumerating every rule whose peers match.
// portFirstProbe: past portFirstMax, how many of the best rules on the port
// are tried before peer-first.
// They are variables only so that tests can force either plan.
var portFirstMax, portFirstProbe = 32, 8

// decide finds the best rule matching (peer, addr, proto/port) and the best
// observed one. Two plans give the same answer (the property test holds both
// to the naive evaluator): port-first walks the rules covering the port in
// precedence order and stops at the first whose peers match; peer-first
// enumerates the rules whose peers match (inverted index over the peer's
// tags, prefix table over its address) and keeps the best one covering the
// port. Port-first is taken when few rules cover the port.
func (d *dirPolicy) decide(peer *identity.Identity, addr netip.Addr, proto ipproto.Proto, port uint16) Decision {
	v := verdict{best: noRank, obs: noRank}
	addr = addr.Unmap()
	if d.ports != nil {
		t, i := d.ports.lookup(proto, port)
		decL := d.ports.list[t.dec[i].start:t.dec[i].end]
		obsL := d.ports.list[t.obs[i].start:t.obs[i].end]
		// The lists hold every rule covering the port, best first: the
		// first whose peers match is the answer. Walk them whole when short;
		// when long, try the best few, then fall back to peer-first for
		// whichever answer is still open.
		decN, obsN := len(decL), len(obsL)
		if decN+obsN > portFirstMax {
			decN, obsN = min(decN, portFirstProbe), min(obsN, portFirstProbe)
		}
		decDone, obsDone := decN == len(decL), obsN == len(obsL)
		for _, ri := range decL[:decN] {
			if d.peerMatch(&d.rules[ri], peer, addr) {
				v.best, v.bestI, decDone = d.rules[ri].rank, ri, true
				break
			}
		}
		for _, ri := range obsL[:obsN] {
			if d.peerMatch(&d.rules[ri], peer, addr) {
				v.obs, v.obsI, obsDone = d.rules[ri].obsRank, ri, true
				break
			}
		}
		if decDone && obsDone {
			return d.decision(&v)
		}
	}
	for _, ri := range d.anyEnf {
		if r := &d.rules[ri]; r.portMatch(proto, port) {
			v.best, v.bestI = r.rank, ri
			break
		}
	}
	for _, ri := range d.anyObs {
		if r := &d.rules[ri]; r.portMatch(proto, port) {
			v.obs, v.obsI = r.obsRank, ri
			break
		}
	}
	if peer != nil {
		// Each list is sorted best first: stop at the first match, or as
		// soon as nothing in the list can beat what is already found.
		if len(d.sel.clauses) > 0 {
			d.sel.lists(peer, func(dec, obs []int32) {
				for _, ci := range dec {
					c := &d.sel.clauses[ci]
					if c.order[0] >= v.best {
						break
					}
					if d.rules[c.owner].portMatch(proto, port) && c.matches(peer) {
						v.best, v.bestI = c.order[0], c.owner
						break
					}
				}
				for _, ci := range obs {
					c := &d.sel.clauses[ci]
					if c.order[1] >= v.obs {
						break
					}
					if d.rules[c.owner].portMatch(proto, port) && c.matches(peer) {
						v.obs, v.obsI = c.order[1], c.owner
						break
					}
				}
			})
		}
	}
	if addr.IsValid() {
		t := &d.v6
		if addr.Is4() {
			t = &d.v4
		}
		for n := t.lookup(addrU128(addr)); n >= 0; n = t.nodes[n].parent {
			for ci := range t.nodes[n].clauses {
				c := &t.nodes[n].clauses[ci]
				if !inAny(c.except, addr) {
					v.consider(d, c.owner, proto, port)
				}
			}
		}
	}
	return d.decision(&v)
}

// peerMatch reports whether one of the rule's peers matches.
func (d *dirPolicy) peerMatch(r *crule, peer *identity.Identity, a netip.Addr) bool {
	if r.anyPeer {
		return true
	}
	if peer != nil {
		for _, reqs := range r.sels {
			if reqsMatch(reqs, peer) {
				return true
			}
		}
	}
	if a.IsValid() {
		for i := range r.cidrs {
			if c := &r.cidrs[i]; c.CIDR.Contains(a) && !inAny(c.Except, a) {
				return true
			}
		}
	}
	return false
}

func (d *dirPolicy) decision(v *verdict) Decision {
	var dec Decision
	if v.obs != noRank {
		dec.Observed = d.rules[v.obsI].ref
		dec.Log = dec.Observed.Log
	}
	if v.best == noRank {
		dec.Action, dec.Reason = Deny, reason.PolicyDenied
		return dec
	}
	dec.Rule = d.rules[v.bestI].ref
	dec.Log = dec.Log || dec.Rule.Log
	if dec.Rule.Action == Reject {
		dec.Action, dec.Reason = Reject, reason.PolicyRejected
	} else {
		dec.Action = Allow
	}
	return dec
}

func inAny(ps []netip.Prefix, a netip.Addr) bool {
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}
