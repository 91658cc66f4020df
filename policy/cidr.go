package policy

import (
	"encoding/binary"
	"net/netip"
	"sort"
)

// u128 is an address as an integer: IPv4 in the low 32 bits, IPv6 whole.
type u128 struct{ hi, lo uint64 }

func (a u128) less(b u128) bool { return a.hi < b.hi || a.hi == b.hi && a.lo < b.lo }

func (a u128) next() u128 {
	if a.lo == ^uint64(0) {
		return u128{a.hi + 1, 0}
	}
	return u128{a.hi, a.lo + 1}
}

func addrU128(a netip.Addr) u128 {
	if a.Is4() {
		b := a.As4()
		return u128{0, uint64(binary.BigEndian.Uint32(b[:]))}
	}
	b := a.As16()
	return u128{binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])}
}

// prefixRange returns the first and last address of a (masked) prefix.
func prefixRange(p netip.Prefix) (u128, u128) {
	start := addrU128(p.Addr())
	host := 128 - p.Bits()
	if p.Addr().Is4() {
		host = 32 - p.Bits()
	}
	end := start
	if host >= 64 {
		end.lo = ^uint64(0)
		end.hi |= uint64(1)<<(host-64) - 1
	} else {
		end.lo |= uint64(1)<<host - 1
	}
	return start, end
}

// cidrTable answers "which of these prefixes contain address a" for one
// address family. Prefixes nest or are disjoint, so they form a forest; the
// address space is cut into intervals, each labelled with the deepest prefix
// covering it. A lookup is one binary search, then a walk up the parents
// (at most 33 or 129 prefixes contain an address).
type cidrTable struct {
	starts []u128  // interval starts, ascending; starts[0] is the family's 0
	deep   []int32 // deepest node covering each interval, -1 for none
	nodes  []cidrNode
}

type cidrNode struct {
	prefix  netip.Prefix
	parent  int32
	clauses []cidrClause
}

// cidrClause is one cidr peer of a rule: it matches an address inside its
// node's prefix and outside every except.
type cidrClause struct {
	owner  int32
	except []netip.Prefix
}

type cidrEntry struct {
	prefix netip.Prefix
	clause cidrClause
	noop   bool // prefix only (membership tables), no clause
}

func buildCIDRTable(entries []cidrEntry, v4 bool) cidrTable {
	var t cidrTable
	byPrefix := map[netip.Prefix]int32{}
	var prefixes []netip.Prefix
	for _, e := range entries {
		if e.prefix.Addr().Is4() != v4 {
			continue
		}
		if _, ok := byPrefix[e.prefix]; !ok {
			byPrefix[e.prefix] = -1
			prefixes = append(prefixes, e.prefix)
		}
	}
	if len(prefixes) == 0 {
		return t
	}
	// Parents before children: by start address, then shorter first.
	sort.Slice(prefixes, func(i, j int) bool {
		a, b := addrU128(prefixes[i].Addr()), addrU128(prefixes[j].Addr())
		if a != b {
			return a.less(b)
		}
		return prefixes[i].Bits() < prefixes[j].Bits()
	})
	children := make([][]int32, len(prefixes))
	var roots, stack []int32
	for i, p := range prefixes {
		for len(stack) > 0 && !prefixes[stack[len(stack)-1]].Contains(p.Addr()) {
			stack = stack[:len(stack)-1]
		}
		parent := int32(-1)
		if len(stack) > 0 {
			parent = stack[len(stack)-1]
			children[parent] = append(children[parent], int32(i))
		} else {
			roots = append(roots, int32(i))
		}
		t.nodes = append(t.nodes, cidrNode{prefix: p, parent: parent})
		byPrefix[p] = int32(i)
		stack = append(stack, int32(i))
	}
	for _, e := range entries {
		if e.prefix.Addr().Is4() != v4 || e.noop {
			continue
		}
		n := &t.nodes[byPrefix[e.prefix]]
		n.clauses = append(n.clauses, e.clause)
	}
	max := u128{^uint64(0), ^uint64(0)}
	if v4 {
		max = u128{0, 1<<32 - 1}
	}
	t.emit(u128{}, -1)
	var walk func(n int32)
	walk = func(n int32) {
		start, end := prefixRange(t.nodes[n].prefix)
		t.emit(start, n)
		for _, c := range children[n] {
			walk(c)
			if _, cend := prefixRange(t.nodes[c].prefix); cend != end {
				t.emit(cend.next(), n)
			}
		}
	}
	for _, r := range roots {
		walk(r)
		if _, end := prefixRange(t.nodes[r].prefix); end != max {
			t.emit(end.next(), -1)
		}
	}
	return t
}

// emit starts a new interval at start labelled node; a later emit at the
// same start overrides (a child starting where its parent does).
func (t *cidrTable) emit(start u128, node int32) {
	if n := len(t.starts); n > 0 && t.starts[n-1] == start {
		t.deep[n-1] = node
		if n > 1 && t.deep[n-2] == node {
			t.starts, t.deep = t.starts[:n-1], t.deep[:n-1]
		}
		return
	}
	if n := len(t.deep); n > 0 && t.deep[n-1] == node {
		return
	}
	t.starts = append(t.starts, start)
	t.deep = append(t.deep, node)
}

// lookup returns the deepest node containing a, or -1.
func (t *cidrTable) lookup(a u128) int32 {
	if len(t.starts) == 0 {
		return -1
	}
	// Last interval whose start <= a.
	lo, hi := 0, len(t.starts)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if a.less(t.starts[m]) {
			hi = m
		} else {
			lo = m + 1
		}
	}
	if lo == 0 {
		return -1
	}
	return t.deep[lo-1]
}

// prefixSet is a membership test over prefixes of both families.
type prefixSet struct{ v4, v6 cidrTable }

func newPrefixSet(ps []netip.Prefix) prefixSet {
	entries := make([]cidrEntry, len(ps))
	for i, p := range ps {
		entries[i] = cidrEntry{prefix: p.Masked(), noop: true}
	}
	return prefixSet{buildCIDRTable(entries, true), buildCIDRTable(entries, false)}
}

func (s *prefixSet) contains(a netip.Addr) bool {
	if !a.IsValid() {
		return false
	}
	if a.Is4() {
		return s.v4.lookup(addrU128(a)) >= 0
	}
	return s.v6.lookup(addrU128(a)) >= 0
}
