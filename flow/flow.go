// Package flow is trireme's connection table: a bounded map from a
// fixed-size binary key to a preallocated entry holding the TCP state, the
// timers and the counters of one flow as seen by one local PU. It knows
// nothing of tokens or policy: the enforcer stores what it needs in the
// entry's Value. Time is passed in (tests and replay drive the clock).
//
// The table is divided by PU: each PU's flows live in its own shard (one
// lock, one map), bounded by a per-PU quota, and all shards draw their
// entries from one pool bounded by the table's capacity. A PU that floods
// fills its own share, not the node's.
//
// Nothing on the lookup path allocates: keys are comparable arrays, entries
// live in fixed chunks that never move, and a shard's map only grows up to
// the PU's quota.
package flow

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/trireme-go/trireme/ipproto"
	"github.com/trireme-go/trireme/reason"
)

// Key identifies a flow from the point of view of one local PU: both
// directions of a connection map to the same key (Local is always the PU's
// side). IPv4 addresses are stored IPv4-mapped. For ICMP echo, both ports hold
// the echo identifier; for other ICMP messages they are 0.
type Key struct {
	Local, Remote         [16]byte
	LocalPort, RemotePort uint16
	// VLAN holds the outer and inner 802.1Q VLAN IDs (0: no tag, or a
	// priority-only tag, which 802.1Q says carries no VLAN).
	VLAN  [2]uint16
	PU    uint32 // the local PU's index in its enforcer: its shard
	Proto ipproto.Proto
}

// LocalAddr returns the local address as a netip.Addr (unmapped for IPv4).
func (k *Key) LocalAddr() netip.Addr { return netip.AddrFrom16(k.Local).Unmap() }

// RemoteAddr returns the remote address as a netip.Addr (unmapped for IPv4).
func (k *Key) RemoteAddr() netip.Addr { return netip.AddrFrom16(k.Remote).Unmap() }

// State is where a flow is in its life. TCP flows go through the handshake
// states of their role (client: the local PU sent the SYN; server: it
// received it); other protocols go straight to Established.
type State uint8

const (
	// StateNew: just inserted, not yet decided.
	StateNew State = iota
	// SynSent (client): the PU's SYN went out; waiting for the SYN-ACK.
	SynSent
	// SynAckReceived (client): the peer's SYN-ACK was accepted and delivered;
	// waiting for the PU's handshake ACK.
	SynAckReceived
	// SynReceived (server): the peer's SYN was accepted and delivered;
	// waiting for the PU's SYN-ACK.
	SynReceived
	// SynAckSent (server): the PU's SYN-ACK went out; waiting for the
	// token-carrying handshake ACK.
	SynAckSent
	// Established: decided and authorized; packets take the fast path.
	Established
	// Closing: FINs seen in both directions; kept briefly to pass the last
	// ACKs (the kernels keep TIME_WAIT; a new SYN on the 4-tuple is always
	// decided afresh).
	Closing
	// Denied: the connection was refused; kept briefly so that
	// retransmissions get the same answer without a new decision.
	Denied
	// Reset: a RST ended the established flow; kept briefly so that the
	// RSTs answering packets still in flight pass.
	Reset
	// Revoked: a policy change denied the established flow; kept so that
	// its next packet (steered back) is answered with RSTs both ways.
	Revoked
	numStates
)

var stateNames = [numStates]string{"new", "syn-sent", "syn-ack-received", "syn-received",
	"syn-ack-sent", "established", "closing", "denied", "reset", "revoked"}

func (s State) String() string {
	if s < numStates {
		return stateNames[s]
	}
	return "invalid"
}

// HalfOpen reports whether the state is part of an unfinished handshake.
func (s State) HalfOpen() bool { return s >= SynSent && s <= SynAckSent || s == StateNew }

// Refused reports whether the flow was denied (at its decision, or later by
// a policy change): its packets are dropped without a new decision.
func (s State) Refused() bool { return s == Denied || s == Revoked }

// class is a flow's eviction class: when a PU's share or the table is full,
// the oldest flow of the first non-empty class goes. Established flows have
// none: they are never evicted (the new flow is refused instead).
type class int8

const (
	noClass       class = -1
	classDenied   class = 0 // denied or revoked: re-decided if it comes back
	classEnded    class = 1 // closed or reset: only stray packets are left
	classHalfOpen class = 2 // a handshake in progress
	numClasses          = 3
)

func (s State) class() class {
	switch {
	case s.Refused():
		return classDenied
	case s == Closing || s == Reset:
		return classEnded
	case s.HalfOpen():
		return classHalfOpen
	}
	return noClass
}

// Dir is a packet's direction relative to the flow's local PU.
type Dir uint8

const (
	FromPU  Dir = 0 // leaving the local PU (application path)
	FromNet Dir = 1 // arriving for the local PU (network path)
)

// Entry is one flow. The exported fields belong to the caller while it holds
// the entry's shard lock; the table maintains the rest.
type Entry[V any] struct {
	Key   Key
	State State
	// Created and LastSeen are Unix nanoseconds.
	Created, LastSeen int64
	// Packets and Bytes count frames each way, indexed by Dir.
	Packets, Bytes [2]uint64
	// FIN flags seen from each side, indexed by Dir.
	FIN [2]bool
	// Value is the enforcer's per-flow state (token handshake, decision, ...).
	Value V

	deadline   int64
	prev, next *Entry[V] // eviction class list (oldest first) or pool free list (next)
	class      class
	live       bool
}

// Deadline is when the flow expires unless a packet refreshes it (Unix ns).
func (e *Entry[V]) Deadline() int64 { return e.deadline }

// Config sizes the table and sets its timeouts. Zero fields take defaults.
type Config struct {
	// Capacity is the maximum number of flows of all PUs (default 65536).
	Capacity int
	// PerPU is the maximum number of flows of one PU (default: a quarter
	// of Capacity). A PU at its share evicts its own closed, denied or
	// half-open flows, or has its new flows refused (reason.FlowQuota).
	// PerPU ≥ Capacity: no share, the PUs compete for the whole table.
	PerPU int
	// HalfOpen bounds an unfinished TCP handshake (default 60s: a client's
	// SYN retransmissions over a minute are still the same attempt).
	HalfOpen time.Duration
	// Established is the idle timeout of an established TCP flow (default 2h).
	Established time.Duration
	// Datagram is the idle timeout of UDP/ICMP flows (default 60s).
	Datagram time.Duration
	// Closing is how long a flow closed by FINs both ways is kept for its
	// last ACKs and retransmitted FINs (default 5s; the kernels keep
	// TIME_WAIT, and a SYN reusing the 4-tuple is always decided afresh).
	Closing time.Duration
	// Denied is how long a refused flow is kept so that retransmissions
	// get the same answer without a new decision (default 5s: the first
	// SYN retransmissions at 1 s and 3 s; later ones are decided again).
	Denied time.Duration
	// Reset is how long a flow a RST ended is kept for the RSTs answering
	// packets in flight (default 2s). A handshake a RST ended (a refused
	// SYN) is not kept at all.
	Reset time.Duration
	// Revoked is how long a flow a policy change denied is kept so that its
	// next packet is answered with RSTs both ways (default 30s).
	Revoked time.Duration
}

// Defaults of Config.
const (
	DefaultCapacity    = 65536
	DefaultHalfOpen    = 60 * time.Second
	DefaultEstablished = 2 * time.Hour
	DefaultDatagram    = 60 * time.Second
	DefaultClosing     = 5 * time.Second
	DefaultDenied      = 5 * time.Second
	DefaultReset       = 2 * time.Second
	DefaultRevoked     = 30 * time.Second
)

func (c Config) withDefaults() Config {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	if c.Capacity <= 0 {
		c.Capacity = DefaultCapacity
	}
	if c.PerPU <= 0 {
		c.PerPU = max(c.Capacity/4, 1)
	}
	c.PerPU = min(c.PerPU, c.Capacity)
	def(&c.HalfOpen, DefaultHalfOpen)
	def(&c.Established, DefaultEstablished)
	def(&c.Datagram, DefaultDatagram)
	def(&c.Closing, DefaultClosing)
	def(&c.Denied, DefaultDenied)
	def(&c.Reset, DefaultReset)
	def(&c.Revoked, DefaultRevoked)
	return c
}

// chunkSize is how many entries the pool allocates at a time.
const chunkSize = 256

// Table is the flow table. Safe for concurrent use: callers lock the shard
// of a key for the duration of their work on its entries.
type Table[V any] struct {
	cfg       Config
	timeouts  [numStates]int64
	evictions atomic.Uint64
	count     atomic.Int64 // live entries, ≤ Capacity

	mu     sync.Mutex                  // serializes growing shards
	shards atomic.Pointer[[]*Shard[V]] // by PU index

	pool pool[V]
}

// Shard is one PU's part of the table: its own lock, map and eviction
// lists.
type Shard[V any] struct {
	mu sync.Mutex
	t  *Table[V]
	m  map[Key]*Entry[V]
	// peak is the largest size of m since it was made: Go maps do not
	// shrink, so Sweep rebuilds one that has held far fewer flows than
	// that for shrinkAfter sweeps in a row (low counts them).
	peak, low int
	lists     [numClasses]list[V]
	// n and evictable are read without the lock (stats, and choosing
	// whom to evict when the whole table is full).
	n, evictable atomic.Int64
}

type list[V any] struct{ head, tail *Entry[V] }

// pool hands out entries from chunks that never move, up to the table's
// capacity. It is taken after a shard lock, never before.
type pool[V any] struct {
	mu     sync.Mutex
	chunks [][]Entry[V]
	free   *Entry[V]
	used   int // entries handed out of chunks so far
}

// New returns an empty table.
func New[V any](cfg Config) *Table[V] {
	cfg = cfg.withDefaults()
	t := &Table[V]{cfg: cfg}
	for st := range numStates {
		t.timeouts[st] = int64(t.timeoutOf(State(st), 6))
	}
	empty := []*Shard[V]{}
	t.shards.Store(&empty)
	return t
}

// Config returns the table's configuration (with defaults applied).
func (t *Table[V]) Config() Config { return t.cfg }

// Capacity is the maximum number of flows the table holds.
func (t *Table[V]) Capacity() int { return t.cfg.Capacity }

// PerPU is the maximum number of flows of one PU.
func (t *Table[V]) PerPU() int { return t.cfg.PerPU }

// Len is the number of live flows.
func (t *Table[V]) Len() int { return int(t.count.Load()) }

// PULen is the number of live flows of the PU with index pu.
func (t *Table[V]) PULen(pu uint32) int {
	if s := t.shardOf(pu); s != nil {
		return int(s.n.Load())
	}
	return 0
}

// Evictions counts flows removed to make room for new ones.
func (t *Table[V]) Evictions() uint64 { return t.evictions.Load() }

// Shard returns the shard holding k (its PU's). Lock it before using its
// entries.
func (t *Table[V]) Shard(k *Key) *Shard[V] {
	if s := t.shardOf(k.PU); s != nil {
		return s
	}
	return t.grow(k.PU)
}

func (t *Table[V]) shardOf(pu uint32) *Shard[V] {
	ss := *t.shards.Load()
	if int(pu) < len(ss) {
		return ss[pu]
	}
	return nil
}

// grow makes the shards up to pu (PU indexes are small and dense: the
// enforcer reuses those of removed PUs).
func (t *Table[V]) grow(pu uint32) *Shard[V] {
	t.mu.Lock()
	defer t.mu.Unlock()
	old := *t.shards.Load()
	if int(pu) < len(old) {
		return old[pu]
	}
	ss := make([]*Shard[V], int(pu)+1, max(int(pu)+1, 2*len(old)))
	copy(ss, old)
	for i := len(old); i < len(ss); i++ {
		ss[i] = &Shard[V]{t: t, m: make(map[Key]*Entry[V])}
	}
	t.shards.Store(&ss)
	return ss[pu]
}

// Lock locks the shard.
func (s *Shard[V]) Lock() { s.mu.Lock() }

// Unlock unlocks the shard.
func (s *Shard[V]) Unlock() { s.mu.Unlock() }

// Get returns the live entry for k or nil. It does not look at deadlines:
// callers check Expired and decide what an expired flow means.
func (s *Shard[V]) Get(k *Key) *Entry[V] { return s.m[*k] }

// Expired reports whether e's deadline has passed at now (Unix ns).
func (s *Shard[V]) Expired(e *Entry[V], now int64) bool { return now > e.deadline }

// Insert adds a fresh entry for k in StateNew, making room when needed:
//
//   - the PU at its share (Config.PerPU): its own oldest denied, then
//     ended (closed, reset), then half-open flow is evicted; if it has
//     none, the flow is refused with reason.FlowQuota;
//   - the table at its capacity: the same order, in the shard of the PU
//     with the most evictable flows (this PU's first when it has as many);
//     if there is none, reason.TableFull.
//
// Established flows are never evicted. evicted is called on each victim,
// under its shard's lock, before it is deleted (the caller writes its
// record). An existing entry for k must have been deleted first.
func (s *Shard[V]) Insert(k *Key, now int64, evicted func(*Entry[V])) (*Entry[V], reason.Code) {
	t := s.t
	if t.cfg.PerPU < t.cfg.Capacity && int(s.n.Load()) >= t.cfg.PerPU {
		v := s.victim()
		if v == nil {
			return nil, reason.FlowQuota
		}
		s.evict(v, evicted)
	}
	for tries := 0; !t.reserve(); tries++ {
		if tries == 4 || !t.evictForRoom(s, evicted) {
			return nil, reason.TableFull
		}
	}
	e := t.pool.get()
	*e = Entry[V]{Key: *k, Created: now, LastSeen: now, live: true, class: noClass}
	s.m[*k] = e
	if n := int(s.n.Add(1)); n > s.peak {
		s.peak = n
	}
	s.setState(e, StateNew, now)
	return e, reason.None
}

// reserve counts one more live entry if the table has room.
func (t *Table[V]) reserve() bool {
	for {
		n := t.count.Load()
		if n >= int64(t.cfg.Capacity) {
			return false
		}
		if t.count.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// evictForRoom evicts one flow to make room in a full table: from the
// shard with the most evictable flows (s, locked by the caller, when it has
// as many). Another shard is only tried, never waited for: two PUs making
// room for each other must not deadlock.
func (t *Table[V]) evictForRoom(s *Shard[V], evicted func(*Entry[V])) bool {
	best, most := s, s.evictable.Load()
	for _, o := range *t.shards.Load() {
		if n := o.evictable.Load(); n > most {
			best, most = o, n
		}
	}
	if most == 0 {
		return false
	}
	if best != s {
		if !best.mu.TryLock() {
			return false
		}
		defer best.mu.Unlock()
	}
	v := best.victim()
	if v == nil {
		return false
	}
	best.evict(v, evicted)
	return true
}

// victim is the oldest flow of the shard's first non-empty eviction class.
func (s *Shard[V]) victim() *Entry[V] {
	for c := range s.lists {
		if h := s.lists[c].head; h != nil {
			return h
		}
	}
	return nil
}

func (s *Shard[V]) evict(v *Entry[V], evicted func(*Entry[V])) {
	if evicted != nil {
		evicted(v)
	}
	s.t.evictions.Add(1)
	s.Delete(v)
}

// Delete removes e from the table; e must not be used afterwards.
func (s *Shard[V]) Delete(e *Entry[V]) {
	if !e.live {
		return
	}
	s.unlink(e)
	delete(s.m, e.Key)
	*e = Entry[V]{}
	s.t.pool.put(e)
	s.n.Add(-1)
	s.t.count.Add(-1)
}

// SetState moves e to st and restarts its timer for that state.
func (s *Shard[V]) SetState(e *Entry[V], st State, now int64) { s.setState(e, st, now) }

func (s *Shard[V]) setState(e *Entry[V], st State, now int64) {
	e.State = st
	if c := st.class(); c != e.class {
		s.unlink(e)
		if c != noClass {
			s.link(e, c)
		}
	}
	e.deadline = now + s.t.timeout(e)
}

// Touch records a packet of n bytes in direction d and refreshes the timer,
// except in a handshake: a handshake has HalfOpen from its last step
// (SetState) to finish, however many packets arrive meanwhile — packets
// anyone can send (a retransmitted or forged SYN, junk on the 5-tuple) must
// not keep a half-open flow alive.
func (s *Shard[V]) Touch(e *Entry[V], d Dir, n int, now int64) {
	e.Packets[d&1]++
	e.Bytes[d&1] += uint64(n)
	e.LastSeen = now
	if !e.State.HalfOpen() {
		e.deadline = now + s.t.timeout(e)
	}
}

// Refresh renews the entry's deadline as a packet of it would, without
// counting one: for a packet the kernel passed and counted itself (a FIN
// or RST it logged to the daemon).
func (s *Shard[V]) Refresh(e *Entry[V], now int64) {
	e.LastSeen = now
	if !e.State.HalfOpen() {
		e.deadline = now + s.t.timeout(e)
	}
}

func (t *Table[V]) timeout(e *Entry[V]) int64 {
	if e.State == Established && e.Key.Proto != ipproto.TCP {
		return int64(t.cfg.Datagram)
	}
	return t.timeouts[e.State%numStates]
}

// timeoutOf is the lifetime of a flow in state st (docs/dataplane.md).
func (t *Table[V]) timeoutOf(st State, proto ipproto.Proto) time.Duration {
	c := &t.cfg
	switch {
	case st.HalfOpen():
		return c.HalfOpen
	case st == Established:
		if proto == ipproto.TCP {
			return c.Established
		}
		return c.Datagram
	case st == Closing:
		return c.Closing
	case st == Denied:
		return c.Denied
	case st == Reset:
		return c.Reset
	case st == Revoked:
		return c.Revoked
	}
	return c.Closing
}

// Timeout is the lifetime of a flow of protocol proto in state st without
// packets: the table's lifetimes, for documentation and stats.
func (t *Table[V]) Timeout(st State, proto ipproto.Proto) time.Duration {
	return t.timeoutOf(st, proto)
}

func (s *Shard[V]) link(e *Entry[V], c class) {
	l := &s.lists[c]
	e.class = c
	e.prev, e.next = l.tail, nil
	if l.tail != nil {
		l.tail.next = e
	} else {
		l.head = e
	}
	l.tail = e
	s.evictable.Add(1)
}

func (s *Shard[V]) unlink(e *Entry[V]) {
	if e.class == noClass {
		return
	}
	l := &s.lists[e.class]
	if e.prev != nil {
		e.prev.next = e.next
	} else {
		l.head = e.next
	}
	if e.next != nil {
		e.next.prev = e.prev
	} else {
		l.tail = e.prev
	}
	e.prev, e.next, e.class = nil, nil, noClass
	s.evictable.Add(-1)
}

func (p *pool[V]) get() *Entry[V] {
	p.mu.Lock()
	defer p.mu.Unlock()
	if e := p.free; e != nil {
		p.free = e.next
		e.next = nil
		return e
	}
	ci, off := p.used/chunkSize, p.used%chunkSize
	if ci == len(p.chunks) {
		p.chunks = append(p.chunks, make([]Entry[V], chunkSize))
	}
	p.used++
	return &p.chunks[ci][off]
}

func (p *pool[V]) put(e *Entry[V]) {
	p.mu.Lock()
	e.next = p.free
	p.free = e
	p.mu.Unlock()
}

// allocated is the number of entries the pool has memory for.
func (p *pool[V]) allocated() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.chunks) * chunkSize
}

// Sweep removes every flow whose deadline passed at now, calling expired
// (under the shard lock) on each before it is deleted.
func (t *Table[V]) Sweep(now int64, expired func(e *Entry[V])) int {
	n := 0
	for _, s := range *t.shards.Load() {
		s.mu.Lock()
		for _, e := range s.m {
			if now > e.deadline {
				if expired != nil {
					expired(e)
				}
				s.Delete(e)
				n++
			}
		}
		s.shrink()
		s.mu.Unlock()
	}
	return n
}

// shrinkAfter is how many sweeps in a row (seconds, live) a shard's map
// must hold far fewer flows than its peak before it is rebuilt: a flood
// that passed gives its memory back, a PU whose load comes and goes does
// not rebuild its map each time.
const shrinkAfter = 30

// shrink rebuilds the shard's map when it has held far fewer flows than it
// once did for a while, so that a PU's memory follows its flows.
func (s *Shard[V]) shrink() {
	n := len(s.m)
	if s.peak < 4*chunkSize || n > s.peak/8 {
		s.low = 0
		return
	}
	if s.low++; s.low < shrinkAfter {
		return
	}
	m := make(map[Key]*Entry[V], n)
	for k, e := range s.m {
		m[k] = e
	}
	s.m, s.peak, s.low = m, n, 0
}

// Range calls fn on every live flow (under its shard lock) and deletes the
// flow when fn returns true. Used to flush the table (end of replay).
func (t *Table[V]) Range(fn func(e *Entry[V]) (remove bool)) {
	for _, s := range *t.shards.Load() {
		s.mu.Lock()
		s.rangeLocked(fn)
		s.mu.Unlock()
	}
}

// RangePU is Range over the flows of one PU (e.g. to drop a removed PU's
// flows).
func (t *Table[V]) RangePU(pu uint32, fn func(e *Entry[V]) (remove bool)) {
	if s := t.shardOf(pu); s != nil {
		s.mu.Lock()
		s.rangeLocked(fn)
		s.mu.Unlock()
	}
}

func (s *Shard[V]) rangeLocked(fn func(e *Entry[V]) bool) {
	for _, e := range s.m {
		if fn(e) {
			s.Delete(e)
		}
	}
}
