package policy

import "sort"

// selIndex finds the selector clauses that match an Identity without looking
// at clauses that cannot match.
//
// Each clause (one selector) is filed under ONE of its positive requirements,
// its anchor: "k in (a,b)" under (k,a) and (k,b), "k" (exists) under (k,any).
// A clause can only match an identity that has its anchor, so a decision
// looks up the identity's tags (or, when fewer, the index's keys) and
// verifies only the clauses filed there, plus the clauses without any
// positive requirement ("!k", "k notin (...)", "*"), which may match any
// identity. This is Trireme's PolicyDB inverted index with the hit count
// replaced by verification of the anchored candidates: the same postings are
// touched, but no per-decision counter array is needed, so decisions are
// allocation-free and safe for concurrent use without scratch state.
type selIndex struct {
	clauses []clause
	always  []int32   // clauses with no positive requirement
	keys    []uint32  // distinct anchor keys
	keyBits []uint64  // bitset over key symbols: is it an anchor key?
	table   []posting // open addressing on key<<32|value (value 0 = any)
	mask    uint64
	list    []int32 // clause indices, grouped per posting
}

type clause struct {
	owner int32 // rule (or policy) the clause belongs to
	reqs  []creq
}

type creq struct {
	key  uint32
	op   Operator
	vals []uint32 // sorted
}

type posting struct {
	key        uint64
	start, end uint32 // end == 0: empty slot
}

func hasSym(sorted []uint32, v uint32) bool {
	lo, hi := 0, len(sorted)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if sorted[m] < v {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo < len(sorted) && sorted[lo] == v
}

func (c *clause) matches(id *Identity) bool {
	for i := range c.reqs {
		r := &c.reqs[i]
		v, ok := id.value(r.key)
		switch r.op {
		case OpIn:
			if !ok || !hasSym(r.vals, v) {
				return false
			}
		case OpNotIn:
			if ok && hasSym(r.vals, v) {
				return false
			}
		case OpExists:
			if !ok {
				return false
			}
		case OpDoesNotExist:
			if ok {
				return false
			}
		}
	}
	return true
}

func compileSelector(s *Selector) []creq {
	reqs := make([]creq, len(s.reqs))
	for i, r := range s.reqs {
		c := creq{key: intern(r.Key), op: r.Op}
		for _, v := range r.Values {
			c.vals = append(c.vals, intern(v))
		}
		sort.Slice(c.vals, func(a, b int) bool { return c.vals[a] < c.vals[b] })
		reqs[i] = c
	}
	return reqs
}

func anchorKey(k, v uint32) uint64 { return uint64(k)<<32 | uint64(v) }

// add files a clause; call build when all are added.
func (x *selIndex) add(owner int32, s *Selector) {
	x.clauses = append(x.clauses, clause{owner: owner, reqs: compileSelector(s)})
}

func (x *selIndex) build() {
	// How many clauses each anchor would carry, to file every clause under
	// its most selective positive requirement.
	freq := map[uint64]int{}
	for _, c := range x.clauses {
		for _, r := range c.reqs {
			switch r.op {
			case OpIn:
				for _, v := range r.vals {
					freq[anchorKey(r.key, v)]++
				}
			case OpExists:
				freq[anchorKey(r.key, 0)]++
			}
		}
	}
	groups := map[uint64][]int32{}
	for ci, c := range x.clauses {
		best, bestScore := -1, 0
		for ri, r := range c.reqs {
			score := 0
			switch r.op {
			case OpIn:
				for _, v := range r.vals {
					score += freq[anchorKey(r.key, v)]
				}
			case OpExists:
				// An exists anchor hits every identity with the key.
				score = freq[anchorKey(r.key, 0)] + 64
			default:
				continue
			}
			if best < 0 || score < bestScore {
				best, bestScore = ri, score
			}
		}
		if best < 0 {
			x.always = append(x.always, int32(ci))
			continue
		}
		r := c.reqs[best]
		if r.op == OpExists {
			groups[anchorKey(r.key, 0)] = append(groups[anchorKey(r.key, 0)], int32(ci))
		} else {
			for _, v := range r.vals {
				groups[anchorKey(r.key, v)] = append(groups[anchorKey(r.key, v)], int32(ci))
			}
		}
	}
	if len(groups) == 0 {
		return
	}
	n := 8
	for n < 2*len(groups) {
		n <<= 1
	}
	x.table = make([]posting, n)
	x.mask = uint64(n - 1)
	anchors := make([]uint64, 0, len(groups))
	for k := range groups {
		anchors = append(anchors, k)
	}
	sort.Slice(anchors, func(i, j int) bool { return anchors[i] < anchors[j] })
	seenKey := map[uint32]bool{}
	for _, k := range anchors {
		start := uint32(len(x.list))
		x.list = append(x.list, groups[k]...)
		for j := hash64(k) & x.mask; ; j = (j + 1) & x.mask {
			if x.table[j].end == 0 {
				x.table[j] = posting{key: k, start: start, end: uint32(len(x.list))}
				break
			}
		}
		key := uint32(k >> 32)
		if !seenKey[key] {
			seenKey[key] = true
			x.keys = append(x.keys, key)
			w := int(key >> 6)
			for len(x.keyBits) <= w {
				x.keyBits = append(x.keyBits, 0)
			}
			x.keyBits[w] |= 1 << (key & 63)
		}
	}
}

// match calls visit with the owner of every clause that matches id (an owner
// may be visited more than once).
func (x *selIndex) match(id *Identity, visit func(owner int32)) {
	for _, ci := range x.always {
		if c := &x.clauses[ci]; c.matches(id) {
			visit(c.owner)
		}
	}
	if len(x.table) == 0 {
		return
	}
	if len(x.keys) < len(id.pairs) {
		for _, k := range x.keys {
			if v, ok := id.value(k); ok {
				x.probe(anchorKey(k, v), id, visit)
				x.probe(anchorKey(k, 0), id, visit)
			}
		}
		return
	}
	for _, e := range id.pairs {
		k := uint32(e >> 32)
		if w := int(k >> 6); w >= len(x.keyBits) || x.keyBits[w]&(1<<(k&63)) == 0 {
			continue
		}
		x.probe(e, id, visit)
		x.probe(e&^0xffffffff, id, visit)
	}
}

func (x *selIndex) probe(key uint64, id *Identity, visit func(owner int32)) {
	for j := hash64(key) & x.mask; ; j = (j + 1) & x.mask {
		p := &x.table[j]
		if p.end == 0 {
			return
		}
		if p.key == key {
			for _, ci := range x.list[p.start:p.end] {
				if c := &x.clauses[ci]; c.matches(id) {
					visit(c.owner)
				}
			}
			return
		}
	}
}
