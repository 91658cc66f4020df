package steer

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/google/nftables"
)

// canonical validates prefixes, masks them, sorts them and drops
// duplicates: the list as the user gave it.
func canonical(in []netip.Prefix) ([]netip.Prefix, error) {
	ps := make([]netip.Prefix, 0, len(in))
	for _, p := range in {
		if !p.IsValid() {
			return nil, fmt.Errorf("steer: invalid excluded network %v", p)
		}
		n := netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-unmapBits(p)).Masked()
		if !n.IsValid() {
			return nil, fmt.Errorf("steer: invalid excluded network %v", p)
		}
		ps = append(ps, n)
	}
	slices.SortFunc(ps, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	return slices.Compact(ps), nil
}

// merged drops prefixes contained in others (the kernel rejects
// overlapping intervals); ps is canonical.
func merged(ps []netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range ps {
		if len(out) > 0 && out[len(out)-1].Contains(p.Addr()) && out[len(out)-1].Bits() <= p.Bits() {
			continue
		}
		out = append(out, p)
	}
	return out
}

func unmapBits(p netip.Prefix) int {
	if p.Addr().Is4In6() {
		return 96
	}
	return 0
}

// intervalElements encodes prefixes of one family as interval elements:
// the first address, and the address after the last one flagged as an
// interval end (omitted when the prefix reaches the top of the space).
func intervalElements(ps []netip.Prefix) []nftables.SetElement {
	var els []nftables.SetElement
	for _, p := range ps {
		els = append(els, nftables.SetElement{Key: p.Addr().AsSlice()})
		last := lastAddr(p)
		if next := last.Next(); next.IsValid() {
			els = append(els, nftables.SetElement{Key: next.AsSlice(), IntervalEnd: true})
		}
	}
	return els
}

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

func split(ps []netip.Prefix) (v4, v6 []netip.Prefix) {
	for _, p := range ps {
		if p.Addr().Is4() {
			v4 = append(v4, p)
		} else {
			v6 = append(v6, p)
		}
	}
	return v4, v6
}

func (s *Steerer) addExcludedSets(ex []netip.Prefix) (*nftables.Set, *nftables.Set, error) {
	v4, v6 := split(merged(ex))
	x4 := &nftables.Set{Table: s.table, Name: "x4", KeyType: nftables.TypeIPAddr, Interval: true}
	x6 := &nftables.Set{Table: s.table, Name: "x6", KeyType: nftables.TypeIP6Addr, Interval: true}
	if err := s.addSet(x4, intervalElements(v4)); err != nil {
		return nil, nil, err
	}
	if err := s.addSet(x6, intervalElements(v6)); err != nil {
		return nil, nil, err
	}
	return x4, x6, nil
}

// Excluded returns the excluded networks.
func (s *Steerer) Excluded() []netip.Prefix {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.excluded)
}

// AddExcluded excludes a network from steering at runtime: packets from or
// to it stay in the kernel, unpoliced.
func (s *Steerer) AddExcluded(p netip.Prefix) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.setExcluded(append(slices.Clone(s.excluded), p))
}

// RemoveExcluded removes a network added before (the same prefix); packets
// from and to it are steered again unless another excluded network covers
// them. Removing an absent one is an error.
func (s *Steerer) RemoveExcluded(p netip.Prefix) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, err := canonical([]netip.Prefix{p})
	if err != nil {
		return err
	}
	i := slices.Index(s.excluded, n[0])
	if i < 0 {
		return fmt.Errorf("steer: %v is not excluded", p)
	}
	return s.setExcluded(slices.Delete(slices.Clone(s.excluded), i, i+1))
}

// setExcluded rewrites both excluded sets in one batch (flush + add), so
// no packet sees a half-updated set.
func (s *Steerer) setExcluded(ps []netip.Prefix) error {
	if s.x4 == nil {
		return fmt.Errorf("steer: excluded networks changed before Apply")
	}
	ex, err := canonical(ps)
	if err != nil {
		return err
	}
	v4, v6 := split(merged(ex))
	s.conn.FlushSet(s.x4)
	s.conn.FlushSet(s.x6)
	for _, x := range []struct {
		set *nftables.Set
		els []nftables.SetElement
	}{{s.x4, intervalElements(v4)}, {s.x6, intervalElements(v6)}} {
		for els := x.els; len(els) > 0; {
			n := min(len(els), maxElemsPerMsg)
			if err := s.conn.SetAddElements(x.set, els[:n]); err != nil {
				s.discard()
				return fmt.Errorf("steer: %s: %w", x.set.Name, err)
			}
			els = els[n:]
		}
	}
	if err := s.flush(); err != nil {
		return fmt.Errorf("steer: excluded networks: %w", err)
	}
	s.excluded = ex
	return nil
}

// State is what an existing table in the kernel holds, as a restarted
// daemon finds it.
type State struct {
	PUs      []string       // PUs with chains in the table
	Excluded []netip.Prefix // excluded networks (as merged in the kernel)
}

// Existing reads the node's table as the kernel has it (left by a previous
// run) without changing it. ok is false if there is no table. A restarted
// daemon merges this with its configuration and calls Apply, which keeps
// the authorized flows of the PUs it re-attaches.
func (s *Steerer) Existing() (st State, ok bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.tableExists() {
		return State{}, false, nil
	}
	chains, err := s.conn.ListChainsOfTableFamily(s.table.Family)
	if err != nil {
		return State{}, true, fmt.Errorf("steer: list chains: %w", err)
	}
	for _, c := range chains {
		if c.Table != nil && c.Table.Name == s.table.Name && len(c.Name) > 3 && c.Name[:3] == "in_" {
			st.PUs = append(st.PUs, c.Name[3:])
		}
	}
	slices.Sort(st.PUs)
	for _, name := range []string{"x4", "x6"} {
		els, err := s.conn.GetSetElements(&nftables.Set{Table: s.table, Name: name, Interval: true})
		if err != nil {
			return State{}, true, fmt.Errorf("steer: read %s: %w", name, err)
		}
		ps, err := prefixesOf(els)
		if err != nil {
			return State{}, true, fmt.Errorf("steer: %s: %w", name, err)
		}
		st.Excluded = append(st.Excluded, ps...)
	}
	return st, true, nil
}

// prefixesOf turns interval-set elements back into the prefixes
// intervalElements made of them.
func prefixesOf(els []nftables.SetElement) ([]netip.Prefix, error) {
	type bound struct {
		a   netip.Addr
		end bool
	}
	var bs []bound
	for _, e := range els {
		a, ok := netip.AddrFromSlice(e.Key)
		if !ok {
			return nil, fmt.Errorf("element key of %d bytes", len(e.Key))
		}
		bs = append(bs, bound{a, e.IntervalEnd})
	}
	// Sort by address; at equal addresses an end closes the previous
	// interval before the next one starts.
	slices.SortFunc(bs, func(x, y bound) int {
		if c := x.a.Compare(y.a); c != 0 {
			return c
		}
		if x.end == y.end {
			return 0
		}
		if x.end {
			return -1
		}
		return 1
	})
	var out []netip.Prefix
	for i := 0; i < len(bs); i++ {
		if bs[i].end {
			continue // the kernel's own zero-start marker or a stray end
		}
		start := bs[i].a
		var end netip.Addr // exclusive; invalid = to the top of the space
		if i+1 < len(bs) && bs[i+1].end {
			end = bs[i+1].a
			i++
		}
		p, ok := rangePrefix(start, end)
		if !ok {
			return nil, fmt.Errorf("interval %v-%v is not a prefix", start, end)
		}
		out = append(out, p)
	}
	return out, nil
}

func rangePrefix(start, endExcl netip.Addr) (netip.Prefix, bool) {
	for bits := 0; bits <= start.BitLen(); bits++ {
		p := netip.PrefixFrom(start, bits).Masked()
		if p.Addr() != start {
			continue
		}
		next := lastAddr(p).Next()
		if next == endExcl || (!next.IsValid() && !endExcl.IsValid()) {
			return p, true
		}
	}
	return netip.Prefix{}, false
}
