package policy

import (
	"sort"

	"github.com/trireme-go/trireme/identity"
)

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
	always  [2][]int32 // clauses with no positive requirement (two orders)
	keys    []uint32   // distinct anchor keys
	keyBits []uint64   // bitset over key symbols: is it an anchor key?
	anyBits []uint64   // bitset over key symbols: has it an exists anchor?
	table   []posting  // open addressing on key<<32|value (value 0 = any)
	mask    uint64
	list    []int32 // clause indices, grouped per posting
}

type clause struct {
	owner int32 // rule (or policy) the clause belongs to
	reqs  []creq
	in    [2]bool   // which of the index's two lists hold it
	order [2]uint32 // its sort key in each list (set by build)
}

type creq struct {
	key  uint32
	op   Operator
	vals []uint32 // sorted
}

// posting is the clauses filed under one anchor, as two lists (e.g. rules
// that may decide, by rank, and observed rules, by observed rank).
type posting struct {
	key  uint64
	span [2]span
	used bool // false: empty slot
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

func (c *clause) matches(id *identity.Identity) bool { return reqsMatch(c.reqs, id) }

func reqsMatch(reqs []creq, id *identity.Identity) bool {
	for i := range reqs {
		r := &reqs[i]
		v, ok := id.Value(r.key)
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

// compileSelector acquires the selector's symbols, appending them to *held
// for the holder of the result to release.
func compileSelector(s *Selector, held *[]uint32) []creq {
	reqs := make([]creq, len(s.reqs))
	for i, r := range s.reqs {
		c := creq{key: identity.Acquire(r.Key), op: r.Op}
		*held = append(*held, c.key)
		for _, v := range r.Values {
			c.vals = append(c.vals, identity.Acquire(v))
		}
		*held = append(*held, c.vals...)
		sort.Slice(c.vals, func(a, b int) bool { return c.vals[a] < c.vals[b] })
		reqs[i] = c
	}
	return reqs
}

func anchorKey(k, v uint32) uint64 { return uint64(k)<<32 | uint64(v) }

// add files a clause in list 0, list 1 or both; call build when all are added.
func (x *selIndex) add(owner int32, reqs []creq, in0, in1 bool) {
	x.clauses = append(x.clauses, clause{owner: owner, reqs: reqs, in: [2]bool{in0, in1}})
}

// build files every clause under its anchor. order[i], if not nil, sorts
// list i of each posting (and of always), so that callers looking for the
// best match can stop early.
func (x *selIndex) build(order [2]func(c *clause) uint32) {
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
			for l := range x.always {
				if c.in[l] {
					x.always[l] = append(x.always[l], int32(ci))
				}
			}
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
	for ci := range x.clauses {
		for l := range order {
			if order[l] != nil {
				x.clauses[ci].order[l] = order[l](&x.clauses[ci])
			}
		}
	}
	split := func(list []int32, l int) []int32 {
		var out []int32
		for _, ci := range list {
			if x.clauses[ci].in[l] {
				out = append(out, ci)
			}
		}
		sort.SliceStable(out, func(i, j int) bool { return x.clauses[out[i]].order[l] < x.clauses[out[j]].order[l] })
		return out
	}
	for l := range x.always {
		x.always[l] = split(x.always[l], l)
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
		p := posting{key: k, used: true}
		for l := range p.span {
			p.span[l] = appendSpan(&x.list, split(groups[k], l))
		}
		for j := hash64(k) & x.mask; ; j = (j + 1) & x.mask {
			if !x.table[j].used {
				x.table[j] = p
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
		if uint32(k) == 0 {
			w := int(key >> 6)
			for len(x.anyBits) <= w {
				x.anyBits = append(x.anyBits, 0)
			}
			x.anyBits[w] |= 1 << (key & 63)
		}
	}
}

// lists calls visit with every list of clauses that may match id: the
// clauses without positive requirements, then the postings of id's tags.
// A clause is filed under one anchor and id has at most one value per key,
// so every clause that matches id is in exactly one visited list.
func (x *selIndex) lists(id *identity.Identity, visit func(l0, l1 []int32)) {
	if len(x.always[0])+len(x.always[1]) > 0 {
		visit(x.always[0], x.always[1])
	}
	if len(x.table) == 0 {
		return
	}
	if len(x.keys) < len(id.Pairs()) {
		for _, k := range x.keys {
			if v, ok := id.Value(k); ok {
				x.probe(anchorKey(k, v), visit)
				if hasBit(x.anyBits, k) {
					x.probe(anchorKey(k, 0), visit)
				}
			}
		}
		return
	}
	for _, e := range id.Pairs() {
		k := uint32(e >> 32)
		if !hasBit(x.keyBits, k) {
			continue
		}
		x.probe(e, visit)
		if hasBit(x.anyBits, k) {
			x.probe(e&^0xffffffff, visit)
		}
	}
}

func (x *selIndex) probe(key uint64, visit func(l0, l1 []int32)) {
	for j := hash64(key) & x.mask; ; j = (j + 1) & x.mask {
		p := &x.table[j]
		if !p.used {
			return
		}
		if p.key == key {
			visit(x.list[p.span[0].start:p.span[0].end], x.list[p.span[1].start:p.span[1].end])
			return
		}
	}
}

func hasBit(bits []uint64, k uint32) bool {
	w := int(k >> 6)
	return w < len(bits) && bits[w]&(1<<(k&63)) != 0
}
