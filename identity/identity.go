package identity

import (
	"runtime"
	"sort"
	"sync"
	"sync/atomic"
)

// Tag keys and values are interned into uint32 symbols so that the policy
// decision path compares integers, never strings. The table is global, so a
// symbol means the same string to every policy Engine and an Identity
// prepared under one Engine stays valid after a policy swap.
//
// It does not grow forever with the tags it has seen (a new @sys:name per
// container, say): each symbol counts its holders (Identities, Engines,
// PUPolicies), every holder releases its symbols when the garbage collector
// finds it unreachable (runtime.AddCleanup), and a symbol nobody holds is
// dropped and its number reused. The table is thus bounded by the strings
// of the live holders (plus holders not yet collected), and symbol numbers
// by the largest number of strings live at once.
//
// Symbol 0 is "no symbol" (and, in index keys, "any value").
var symbols = struct {
	sync.RWMutex
	ids   map[string]uint32
	names []string // by symbol; "" when free
	refs  []int32  // holders of each symbol; changed atomically under RLock
	free  []uint32 // released symbols, reused first
}{ids: map[string]uint32{}, names: []string{""}, refs: []int32{0}}

// Acquire returns the symbol of s and counts one more holder of it. The
// holder must release it (Hold) when it is done.
func Acquire(s string) uint32 {
	symbols.RLock()
	id, ok := symbols.ids[s]
	if ok { // in the table, so held: it cannot be dropped under the read lock
		atomic.AddInt32(&symbols.refs[id], 1)
	}
	symbols.RUnlock()
	if ok {
		return id
	}
	symbols.Lock()
	defer symbols.Unlock()
	if id, ok := symbols.ids[s]; ok {
		atomic.AddInt32(&symbols.refs[id], 1)
		return id
	}
	if n := len(symbols.free); n > 0 {
		id = symbols.free[n-1]
		symbols.free = symbols.free[:n-1]
		symbols.names[id] = s
		symbols.refs[id] = 1
	} else {
		id = uint32(len(symbols.names))
		symbols.names = append(symbols.names, s)
		symbols.refs = append(symbols.refs, 1)
	}
	symbols.ids[s] = id
	return id
}

// releaseSymbols drops one hold on each symbol (a symbol may repeat, once
// per acquire). It runs as the cleanup of a holder.
func releaseSymbols(syms []uint32) {
	symbols.Lock()
	defer symbols.Unlock()
	for _, id := range syms {
		if id == 0 || int(id) >= len(symbols.refs) || symbols.refs[id] <= 0 {
			continue // not acquired; never happens
		}
		symbols.refs[id]--
		if symbols.refs[id] == 0 {
			delete(symbols.ids, symbols.names[id])
			symbols.names[id] = ""
			symbols.free = append(symbols.free, id)
		}
	}
}

// Hold releases syms when holder becomes unreachable. Every structure that
// keeps symbols must be reachable from holder while it is used.
func Hold[T any](holder *T, syms []uint32) {
	if len(syms) > 0 {
		runtime.AddCleanup(holder, releaseSymbols, syms)
	}
}

// SymbolStats reports the interned strings now held (live) and the largest
// symbol number in use so far (span), for metrics.
func SymbolStats() (live, span int) {
	symbols.RLock()
	defer symbols.RUnlock()
	return len(symbols.ids), len(symbols.names) - 1
}

// Interned reports whether s is in the symbol table now, i.e. held by a live
// holder (or one the collector has not yet found unreachable).
func Interned(s string) bool {
	symbols.RLock()
	defer symbols.RUnlock()
	_, ok := symbols.ids[s]
	return ok
}

// internAll acquires the keys and values of t into syms (key, value, ...),
// taking the read lock once for the common case where all are known.
func internAll(t Tags, syms []uint32) {
	missing := false
	symbols.RLock()
	for i, tag := range t {
		var ok1, ok2 bool
		if syms[2*i], ok1 = symbols.ids[tag.Key]; ok1 {
			atomic.AddInt32(&symbols.refs[syms[2*i]], 1)
		}
		if syms[2*i+1], ok2 = symbols.ids[tag.Value]; ok2 {
			atomic.AddInt32(&symbols.refs[syms[2*i+1]], 1)
		}
		missing = missing || !ok1 || !ok2
	}
	symbols.RUnlock()
	if !missing {
		return
	}
	for i, tag := range t {
		if syms[2*i] == 0 {
			syms[2*i] = Acquire(tag.Key)
		}
		if syms[2*i+1] == 0 {
			syms[2*i+1] = Acquire(tag.Value)
		}
	}
}

// Identity is a peer's tags prepared once for every decision about it: keys
// and values interned, in a small open-addressing table keyed by key symbol.
// It is immutable and safe to share.
type Identity struct {
	_     noCopy // a copy would not keep the symbols held (Hold)
	tags  Tags
	pairs []uint64 // key<<32 | value, in tag order
	slots []uint64 // open addressing by key; 0 = empty
	mask  uint32
}

// New prepares tags for decisions. Tags should satisfy Validate; if a key
// repeats, its first occurrence wins.
func New(tags Tags) *Identity {
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
	Hold(id, syms)
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

// Value returns the value symbol of the key symbol, if the identity has that
// key.
func (id *Identity) Value(key uint32) (uint32, bool) {
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

// Pairs returns the identity's tags as key<<32 | value symbols, in tag
// order. The slice is shared: do not modify it.
func (id *Identity) Pairs() []uint64 { return id.pairs }

func hash32(x uint32) uint32 {
	x *= 0x9E3779B1
	return x ^ x>>16
}

// noCopy makes go vet refuse copies of the structures that hold symbols
// through their own address.
type noCopy struct{}

func (*noCopy) Lock()   {}
func (*noCopy) Unlock() {}
