package tokens

import (
	"net/netip"
	"sync"
	"time"
)

// Defaults of the public-key verification budget (Config.VerifyBudget).
const (
	// A source (a peer PU's address) presents one identity token per epoch
	// (Config.Refresh); retransmissions and later connections hit the
	// cache. 10 verifications a second, 20 at once, is far above that.
	DefaultSourceRate  = 10
	DefaultSourceBurst = 20
	// The node as a whole: at ~60-120 µs per verification (an ECDSA
	// signature, and a certificate chain for a node not seen before) 1000
	// a second is at most an eighth of one core.
	DefaultNodeRate  = 1000
	DefaultNodeBurst = 1000
	// DefaultSources bounds how many sources have a budget of their own.
	DefaultSources = 4096
)

// VerifyBudget bounds the public-key verifications (PKI mode) that
// identity tokens not seen before can cost: per source address and for the
// node as a whole, each a token bucket. A token already verified (cache)
// or already refused (failure cache) costs none. Zero fields take the
// defaults; a negative rate disables that bucket.
type VerifyBudget struct {
	// SourceRate and SourceBurst: verifications per second and at once per
	// source address.
	SourceRate, SourceBurst float64
	// NodeRate and NodeBurst: the same for all sources together (it also
	// bounds what sources spoofing many addresses can cost).
	NodeRate, NodeBurst float64
	// Sources bounds the table of per-source budgets (least recently used
	// go first; a source seen again starts with a full burst).
	Sources int
}

func (b VerifyBudget) withDefaults() VerifyBudget {
	if b.SourceRate == 0 {
		b.SourceRate = DefaultSourceRate
	}
	if b.SourceBurst <= 0 {
		b.SourceBurst = DefaultSourceBurst
	}
	if b.NodeRate == 0 {
		b.NodeRate = DefaultNodeRate
	}
	if b.NodeBurst <= 0 {
		b.NodeBurst = DefaultNodeBurst
	}
	if b.Sources <= 0 {
		b.Sources = DefaultSources
	}
	return b
}

// bucket is a token bucket: level tokens at time last (Unix ns).
type bucket struct {
	level float64
	last  int64
}

// take refills b at rate per second up to burst, then takes one token.
func (b *bucket) take(now int64, rate, burst float64) bool {
	if rate < 0 {
		return true
	}
	if now > b.last {
		b.level = min(burst, b.level+float64(now-b.last)*rate/float64(time.Second))
		b.last = now
	}
	if b.level < 1 {
		return false
	}
	b.level--
	return true
}

// spend is one token verification's claim on the budget: taken once, just
// before the verification's first public-key operation.
type spend struct {
	e              *Engine
	src            netip.Addr
	now            int64
	budgeted, done bool
}

// take reports whether the verification may do public-key work.
func (b *spend) take() bool {
	if b == nil || !b.budgeted || b.done {
		return true
	}
	b.done = true
	if b.e.budget.allow(b.src, b.now) {
		return true
	}
	b.e.stats.limited.Add(1)
	return false
}

// verifyLimiter holds the node's bucket and a bounded table of per-source
// buckets, evicted with the CLOCK algorithm. It is only consulted before a
// public-key operation (a cache miss), never on the warm path.
type verifyLimiter struct {
	cfg   VerifyBudget
	mu    sync.Mutex
	node  bucket
	index map[netip.Addr]int
	slots []sourceSlot
	hand  int
}

type sourceSlot struct {
	addr netip.Addr
	b    bucket
	ref  bool
}

func newVerifyLimiter(cfg VerifyBudget) *verifyLimiter {
	cfg = cfg.withDefaults()
	return &verifyLimiter{cfg: cfg, node: bucket{level: cfg.NodeBurst},
		index: make(map[netip.Addr]int)} // slots grow as sources come
}

// allow reports whether src may cost one more verification at now. An
// invalid src (unknown source) is held to the node's budget only.
func (l *verifyLimiter) allow(src netip.Addr, now int64) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := &l.cfg
	if src.IsValid() && c.SourceRate >= 0 {
		s := l.source(src.Unmap(), now)
		if !s.b.take(now, c.SourceRate, c.SourceBurst) {
			return false
		}
		if !l.node.take(now, c.NodeRate, c.NodeBurst) {
			s.b.level++ // not spent: the node refused, not the source's budget
			return false
		}
		return true
	}
	return l.node.take(now, c.NodeRate, c.NodeBurst)
}

// source returns src's slot, making one (full burst) if it has none.
func (l *verifyLimiter) source(src netip.Addr, now int64) *sourceSlot {
	if i, ok := l.index[src]; ok {
		s := &l.slots[i]
		s.ref = true
		return s
	}
	fresh := sourceSlot{addr: src, b: bucket{level: l.cfg.SourceBurst, last: now}}
	if len(l.slots) < l.cfg.Sources {
		l.index[src] = len(l.slots)
		l.slots = append(l.slots, fresh)
		return &l.slots[len(l.slots)-1]
	}
	for {
		s := &l.slots[l.hand]
		if s.ref {
			s.ref = false
			l.hand = (l.hand + 1) % len(l.slots)
			continue
		}
		delete(l.index, s.addr)
		l.index[src] = l.hand
		*s = fresh
		l.hand = (l.hand + 1) % len(l.slots)
		return s
	}
}
