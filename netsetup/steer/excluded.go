package steer

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

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

// setExcluded rewrites the excluded sets of every table, each table's two
// in one unit (flush + add), so no packet sees a half-updated set. The
// tables usually change in one transaction; with very many excluded
// networks and tables, in several.
func (s *Steerer) setExcluded(ps []netip.Prefix) error {
	if s.shards[0] == nil {
		return fmt.Errorf("steer: excluded networks changed before Apply")
	}
	ex, err := canonical(ps)
	if err != nil {
		return err
	}
	v4, v6 := split(merged(ex))
	var units []unit
	for _, i := range sortedKeys(s.shards) {
		sh := s.shards[i]
		b := newBuilder()
		for _, x := range []struct {
			set *nftables.Set
			els []nftables.SetElement
		}{{sh.x4, intervalElements(v4)}, {sh.x6, intervalElements(v6)}} {
			b.FlushSet(x.set)
			if err := addElements(b, x.set, x.els); err != nil {
				return err
			}
		}
		u, err := b.take("excluded networks of " + sh.table.Name)
		if err != nil {
			return err
		}
		units = append(units, u)
	}
	if err := s.tw.commit(units); err != nil {
		return fmt.Errorf("steer: excluded networks: %w", err)
	}
	s.excluded = ex
	return nil
}

// State is what the node's tables in the kernel hold, as a restarted
// daemon finds them.
type State struct {
	PUs      []string       // PUs with chains in the tables
	Excluded []netip.Prefix // excluded networks (as merged in the kernel)
}

// Existing reads the node's tables as the kernel has them (left by a
// previous run) without changing them. ok is false if there is none. A
// restarted daemon merges this with its configuration and calls Apply,
// which keeps the authorized flows of the PUs it re-attaches.
func (s *Steerer) Existing() (st State, ok bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur, err := s.discover()
	if err != nil {
		return State{}, false, err
	}
	if len(cur) == 0 {
		return State{}, false, nil
	}
	for _, f := range cur {
		for c := range f.chains {
			if pu, ok := strings.CutPrefix(c, "in_"); ok {
				st.PUs = append(st.PUs, pu)
			}
		}
	}
	slices.Sort(st.PUs)
	// Every table has the same excluded networks: read the first's.
	t := &nftables.Table{Name: s.shardName(sortedKeys(cur)[0]), Family: nftables.TableFamilyNetdev}
	for _, name := range []string{"x4", "x6"} {
		els, err := s.conn.GetSetElements(&nftables.Set{Table: t, Name: name, Interval: true})
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
