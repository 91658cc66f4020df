package policy

import (
	"sort"
	"sync"
)

// Tag keys and values are interned into uint32 symbols so that the decision
// path compares integers, never strings. The table is global and
// append-only: a symbol means the same string to every Engine, so an
// Identity prepared under one Engine stays valid after a policy swap.
// Symbol 0 is "no symbol" (and, in index keys, "any value").
var symbols = struct {
	sync.RWMutex
	ids   map[string]uint32
	names []string
}{ids: map[string]uint32{}, names: []string{""}}

func intern(s string) uint32 {
	symbols.RLock()
	id, ok := symbols.ids[s]
	symbols.RUnlock()
	if ok {
		return id
	}
	symbols.Lock()
	defer symbols.Unlock()
	if id, ok := symbols.ids[s]; ok {
		return id
	}
	id = uint32(len(symbols.names))
	symbols.names = append(symbols.names, s)
	symbols.ids[s] = id
	return id
}

// internAll interns the keys and values of t into syms (key, value, ...),
// taking the read lock once for the common case where all are known.
func internAll(t Tags, syms []uint32) {
	missing := false
	symbols.RLock()
	for i, tag := range t {
		var ok1, ok2 bool
		syms[2*i], ok1 = symbols.ids[tag.Key]
		syms[2*i+1], ok2 = symbols.ids[tag.Value]
		missing = missing || !ok1 || !ok2
	}
	symbols.RUnlock()
	if !missing {
		return
	}
	for i, tag := range t {
		if syms[2*i] == 0 {
			syms[2*i] = intern(tag.Key)
		}
		if syms[2*i+1] == 0 {
			syms[2*i+1] = intern(tag.Value)
		}
	}
}

// Identity is a peer's tags prepared once for every decision about it: keys
// and values interned, in a small open-addressing table keyed by key symbol.
// It is immutable and safe to share.
type Identity struct {
	tags  Tags
	pairs []uint64 // key<<32 | value, in tag order
	slots []uint64 // open addressing by key; 0 = empty
	mask  uint32
}

// NewIdentity prepares tags for decisions. Tags should satisfy Validate; if a
// key repeats, its first occurrence wins.
func NewIdentity(tags Tags) *Identity {
	t := make(Tags, len(tags))
	copy(t, tags)
	if !sort.SliceIsSorted(t, func(i, j int) bool { return t[i].Key < t[j].Key }) {
		sort.SliceStable(t, func(i, j int) bool { return t[i].Key < t[j].Key })
	}
	uniq := t[:0]
	for i, tag := range t {
		if i > 0 && tag.Key == t[i-1].Key {
			continue
		}
		uniq = append(uniq, tag)
	}
	t = uniq
	n := 8
	for n < 2*len(t) {
		n <<= 1
	}
	id := &Identity{tags: t, pairs: make([]uint64, len(t)), slots: make([]uint64, n), mask: uint32(n - 1)}
	syms := make([]uint32, 2*len(t))
	internAll(t, syms)
	for i := range t {
		k, v := syms[2*i], syms[2*i+1]
		e := uint64(k)<<32 | uint64(v)
		id.pairs[i] = e
		for j := hash32(k) & id.mask; ; j = (j + 1) & id.mask {
			if id.slots[j] == 0 {
				id.slots[j] = e
				break
			}
		}
	}
	return id
}

// Tags returns the identity's tags, sorted by key.
func (id *Identity) Tags() Tags { return id.tags }

// value returns the value symbol of key, if the identity has that key.
func (id *Identity) value(key uint32) (uint32, bool) {
	for j := hash32(key) & id.mask; ; j = (j + 1) & id.mask {
		e := id.slots[j]
		if e == 0 {
			return 0, false
		}
		if uint32(e>>32) == key {
			return uint32(e), true
		}
	}
}

func hash32(x uint32) uint32 {
	x *= 0x9E3779B1
	return x ^ x>>16
}

// hash64 is the splitmix64 finalizer: index keys are pairs of small
// integers, which weaker mixes cluster badly in linear probing.
func hash64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xBF58476D1CE4E5B9
	x ^= x >> 27
	x *= 0x94D049BB133111EB
	x ^= x >> 31
	return x
}
