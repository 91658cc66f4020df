// Package flow is trireme's connection table: a bounded, sharded map from a
// fixed-size binary key to a preallocated entry holding the TCP state, the
// timers and the counters of one flow as seen by one local PU. It knows
// nothing of tokens or policy: the enforcer stores what it needs in the
// entry's Value. Time is passed in (tests and replay drive the clock).
//
// Nothing on the lookup path allocates: keys are comparable arrays, entries
// live in fixed chunks that never move, and a shard's map only grows up to
// the shard's capacity.
package flow

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
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
	PU    uint32 // the local PU's index in its enforcer
	Proto uint8
}

// LocalAddr returns the local address as a netip.Addr (unmapped for IPv4).
func (k *Key) LocalAddr() netip.Addr { return netip.AddrFrom16(k.Local).Unmap() }

// RemoteAddr returns the remote address as a netip.Addr (unmapped for IPv4).
func (k *Key) RemoteAddr() netip.Addr { return netip.AddrFrom16(k.Remote).Unmap() }

// hash mixes the key's fields (FNV-1a over 64-bit words); it must not
// allocate, which rules out hash/maphash.Comparable (it escapes its argument).
func (k *Key) hash() uint64 {
	const prime = 0x100000001b3
	h := uint64(0xcbf29ce484222325)
	mix := func(v uint64) {
		h ^= v
		h *= prime
		h ^= h >> 29
	}
	mix(le64(k.Local[0:8]))
	mix(le64(k.Local[8:16]))
	mix(le64(k.Remote[0:8]))
	mix(le64(k.Remote[8:16]))
	mix(uint64(k.LocalPort)<<48 | uint64(k.RemotePort)<<32 | uint64(k.VLAN[0])<<16 | uint64(k.VLAN[1]))
	mix(uint64(k.PU)<<8 | uint64(k.Proto))
	return h
}

func le64(b []byte) uint64 {
	_ = b[7]
	return uint64(b[0]) | uint64(b[1])<<8 | uint64(b[2])<<16 | uint64(b[3])<<24 |
		uint64(b[4])<<32 | uint64(b[5])<<40 | uint64(b[6])<<48 | uint64(b[7])<<56
}

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
	// Closing: FINs seen in both directions (or the flow is otherwise
	// winding down); kept for the closing timeout to pass the last ACKs.
	Closing
	// Denied: the connection was refused; kept for the closing timeout so
	// that retransmissions get the same answer without a new decision.
	Denied
	numStates
)

var stateNames = [numStates]string{"new", "syn-sent", "syn-ack-received", "syn-received",
	"syn-ack-sent", "established", "closing", "denied"}

func (s State) String() string {
	if s < numStates {
		return stateNames[s]
	}
	return "invalid"
}

// HalfOpen reports whether the state is part of an unfinished handshake;
// half-open flows are evicted first when the table is full.
func (s State) HalfOpen() bool { return s >= SynSent && s <= SynAckSent || s == StateNew }

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
	prev, next *Entry[V] // half-open list (oldest first) or free list (next)
	inHalfOpen bool
	live       bool
}

// Deadline is when the flow expires unless a packet refreshes it (Unix ns).
func (e *Entry[V]) Deadline() int64 { return e.deadline }

// Config sizes the table and sets its timeouts. Zero fields take defaults.
type Config struct {
	// Capacity is the maximum number of flows (default 65536).
	Capacity int
	// HalfOpen bounds an unfinished TCP handshake (default 60s: long enough
	// for a client's first SYN retransmissions, short enough that a SYN flood
	// ages out quickly; half-open flows are also evicted first).
	HalfOpen time.Duration
	// Established is the idle timeout of an established TCP flow (default 2h).
	Established time.Duration
	// Closing is how long a closing or denied flow is kept (default 30s).
	Closing time.Duration
	// Datagram is the idle timeout of UDP/ICMP flows (default 60s).
	Datagram time.Duration
}

// Defaults fills zero fields.
func (c Config) withDefaults() Config {
	if c.Capacity <= 0 {
		c.Capacity = 65536
	}
	if c.HalfOpen <= 0 {
		c.HalfOpen = 60 * time.Second
	}
	if c.Established <= 0 {
		c.Established = 2 * time.Hour
	}
	if c.Closing <= 0 {
		c.Closing = 30 * time.Second
	}
	if c.Datagram <= 0 {
		c.Datagram = 60 * time.Second
	}
	return c
}

const (
	shardCount = 16
	chunkSize  = 256
)

// Table is the flow table. Safe for concurrent use: callers lock the shard
// that holds a key for the duration of their work on its entry.
type Table[V any] struct {
	cfg       Config
	shards    [shardCount]Shard[V]
	evictions atomic.Uint64
	count     atomic.Int64
}

// Shard is one lock domain of the table.
type Shard[V any] struct {
	mu     sync.Mutex
	t      *Table[V]
	m      map[Key]*Entry[V]
	chunks [][]Entry[V]
	free   *Entry[V]
	used   int // entries handed out of chunks so far
	n      int // live entries
	max    int
	// half-open list, oldest first
	hoHead, hoTail *Entry[V]
	_              [40]byte // keep shards on separate cache lines
}

// New returns an empty table.
func New[V any](cfg Config) *Table[V] {
	cfg = cfg.withDefaults()
	t := &Table[V]{cfg: cfg}
	per := (cfg.Capacity + shardCount - 1) / shardCount
	for i := range t.shards {
		s := &t.shards[i]
		s.t = t
		s.max = per
		s.m = make(map[Key]*Entry[V], min(per, 1024))
	}
	return t
}

// Config returns the table's configuration (with defaults applied).
func (t *Table[V]) Config() Config { return t.cfg }

// Capacity is the maximum number of flows the table holds.
func (t *Table[V]) Capacity() int { return t.shards[0].max * shardCount }

// Len is the number of live flows.
func (t *Table[V]) Len() int { return int(t.count.Load()) }

// Evictions counts flows removed to make room for new ones.
func (t *Table[V]) Evictions() uint64 { return t.evictions.Load() }

// Shard returns the shard holding k. Lock it before using its entries.
func (t *Table[V]) Shard(k *Key) *Shard[V] {
	return &t.shards[k.hash()%shardCount]
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

// Insert adds a fresh entry for k in StateNew. It returns nil when the shard
// is full: the caller then takes a Victim, disposes of it and retries. An
// existing entry for k must have been deleted first.
func (s *Shard[V]) Insert(k *Key, now int64) *Entry[V] {
	if s.n >= s.max {
		return nil
	}
	e := s.free
	if e != nil {
		s.free = e.next
	} else {
		ci, off := s.used/chunkSize, s.used%chunkSize
		if ci == len(s.chunks) {
			s.chunks = append(s.chunks, make([]Entry[V], chunkSize))
		}
		e = &s.chunks[ci][off]
		s.used++
	}
	*e = Entry[V]{Key: *k, Created: now, LastSeen: now, live: true}
	s.m[*k] = e
	s.n++
	s.t.count.Add(1)
	s.setState(e, StateNew, now)
	return e
}

// Victim picks the entry to evict when the shard is full: an expired flow if
// the oldest half-open one is expired or there is no half-open flow, else
// the oldest half-open flow. It returns nil when every flow is live and past
// its handshake: the new flow is then refused (reason.TableFull). The victim
// stays in the table; the caller reports it and calls Evict.
func (s *Shard[V]) Victim(now int64) *Entry[V] {
	if s.hoHead != nil {
		return s.hoHead
	}
	for _, e := range s.m {
		if now > e.deadline {
			return e
		}
	}
	return nil
}

// Evict deletes a victim and counts the eviction.
func (s *Shard[V]) Evict(e *Entry[V]) {
	s.t.evictions.Add(1)
	s.Delete(e)
}

// Delete removes e from the table; e must not be used afterwards.
func (s *Shard[V]) Delete(e *Entry[V]) {
	if !e.live {
		return
	}
	s.unlinkHalfOpen(e)
	delete(s.m, e.Key)
	*e = Entry[V]{next: s.free}
	s.free = e
	s.n--
	s.t.count.Add(-1)
}

// SetState moves e to st and restarts its timer for that state.
func (s *Shard[V]) SetState(e *Entry[V], st State, now int64) { s.setState(e, st, now) }

func (s *Shard[V]) setState(e *Entry[V], st State, now int64) {
	e.State = st
	if st.HalfOpen() {
		if !e.inHalfOpen {
			s.linkHalfOpen(e)
		}
	} else {
		s.unlinkHalfOpen(e)
	}
	e.deadline = now + int64(s.t.timeout(e))
}

// Touch records a packet of n bytes in direction d and refreshes the timer.
func (s *Shard[V]) Touch(e *Entry[V], d Dir, n int, now int64) {
	e.Packets[d&1]++
	e.Bytes[d&1] += uint64(n)
	e.LastSeen = now
	e.deadline = now + int64(s.t.timeout(e))
}

func (t *Table[V]) timeout(e *Entry[V]) time.Duration {
	switch {
	case e.State.HalfOpen():
		return t.cfg.HalfOpen
	case e.State == Established:
		if e.Key.Proto == 6 {
			return t.cfg.Established
		}
		return t.cfg.Datagram
	default:
		return t.cfg.Closing
	}
}

func (s *Shard[V]) linkHalfOpen(e *Entry[V]) {
	e.inHalfOpen = true
	e.prev, e.next = s.hoTail, nil
	if s.hoTail != nil {
		s.hoTail.next = e
	} else {
		s.hoHead = e
	}
	s.hoTail = e
}

func (s *Shard[V]) unlinkHalfOpen(e *Entry[V]) {
	if !e.inHalfOpen {
		return
	}
	if e.prev != nil {
		e.prev.next = e.next
	} else {
		s.hoHead = e.next
	}
	if e.next != nil {
		e.next.prev = e.prev
	} else {
		s.hoTail = e.prev
	}
	e.prev, e.next, e.inHalfOpen = nil, nil, false
}

// Sweep removes every flow whose deadline passed at now, calling expired
// (under the shard lock) on each before it is deleted.
func (t *Table[V]) Sweep(now int64, expired func(e *Entry[V])) int {
	n := 0
	for i := range t.shards {
		s := &t.shards[i]
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
		s.mu.Unlock()
	}
	return n
}

// Range calls fn on every live flow (under its shard lock) and deletes the
// flow when fn returns true. Used to flush the table (end of replay) or to
// drop a removed PU's flows.
func (t *Table[V]) Range(fn func(e *Entry[V]) (remove bool)) {
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.Lock()
		for _, e := range s.m {
			if fn(e) {
				s.Delete(e)
			}
		}
		s.mu.Unlock()
	}
}
