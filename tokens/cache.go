package tokens

import (
	"slices"
	"sync"
)

// clockCache is a bounded, sharded map from a 64-bit key to a value, evicting
// with the CLOCK algorithm (a second chance for entries used since the hand
// last passed). Keys are hashes: callers store in the value what they need to
// confirm a hit (the token bytes, the pair of key ids), so a collision is a
// miss, never a wrong answer.
type clockCache[V any] struct {
	shards [cacheShards]cacheShard[V]
}

const cacheShards = 16

type cacheShard[V any] struct {
	mu    sync.Mutex
	index map[uint64]int32
	slots []cacheSlot[V]
	size  int // capacity
	hand  int
	_     [64]byte // keep shards on separate cache lines
}

type cacheSlot[V any] struct {
	key uint64
	val V
	ref bool
}

func newClockCache[V any](capacity int) *clockCache[V] {
	per := (capacity + cacheShards - 1) / cacheShards
	if per < 1 {
		per = 1
	}
	// The shards grow as entries come, up to their size: a node that
	// meets few peers (a replay of hundreds of nodes) holds little; once
	// grown, the CLOCK replacement allocates nothing.
	c := &clockCache[V]{}
	for i := range c.shards {
		s := &c.shards[i]
		s.size = per // index is made at the first put
	}
	return c
}

func (c *clockCache[V]) shard(k uint64) *cacheShard[V] {
	return &c.shards[(k>>32^k)%cacheShards]
}

// get returns the value stored under k.
func (c *clockCache[V]) get(k uint64) (V, bool) {
	s := c.shard(k)
	s.mu.Lock()
	i, ok := s.index[k]
	if !ok {
		s.mu.Unlock()
		var zero V
		return zero, false
	}
	sl := &s.slots[i]
	sl.ref = true
	v := sl.val
	s.mu.Unlock()
	return v, true
}

// put stores v under k, replacing what k held or evicting an entry not used
// since the clock hand last passed it.
func (c *clockCache[V]) put(k uint64, v V) {
	s := c.shard(k)
	s.mu.Lock()
	defer s.mu.Unlock()
	if i, ok := s.index[k]; ok {
		s.slots[i].val, s.slots[i].ref = v, true
		return
	}
	if len(s.slots) < s.size {
		if s.index == nil {
			s.index = make(map[uint64]int32)
		}
		if len(s.slots) == cap(s.slots) {
			s.slots = slices.Grow(s.slots, min(max(2*cap(s.slots), 8), s.size)-len(s.slots))
		}
		s.index[k] = int32(len(s.slots))
		s.slots = append(s.slots, cacheSlot[V]{key: k, val: v})
		return
	}
	for {
		sl := &s.slots[s.hand]
		if sl.ref {
			sl.ref = false
			s.hand = (s.hand + 1) % s.size
			continue
		}
		delete(s.index, sl.key)
		s.index[k] = int32(s.hand)
		*sl = cacheSlot[V]{key: k, val: v}
		s.hand = (s.hand + 1) % s.size
		return
	}
}

// len returns the number of entries.
func (c *clockCache[V]) len() int {
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		n += len(s.slots)
		s.mu.Unlock()
	}
	return n
}

// reset empties the cache.
func (c *clockCache[V]) reset() {
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		clear(s.index)
		clear(s.slots)
		s.slots = s.slots[:0]
		s.hand = 0
		s.mu.Unlock()
	}
}
