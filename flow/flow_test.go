package flow

import (
	"fmt"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/trireme-go/trireme/ipproto"
	"github.com/trireme-go/trireme/reason"
)

func key(i int) Key { return puKey(0, i) }

// puKey is the i-th flow of PU pu.
func puKey(pu uint32, i int) Key {
	var k Key
	k.Local[10], k.Local[11], k.Local[15] = 0xff, 0xff, 1
	k.Remote[10], k.Remote[11] = 0xff, 0xff
	k.Remote[13], k.Remote[14], k.Remote[15] = byte(i>>16), byte(i>>8), byte(i)
	k.LocalPort, k.RemotePort = 80, uint16(1024+i)
	k.PU = pu
	k.Proto = 6
	return k
}

// add inserts k in state st at now and fails the test if it cannot.
func add[V any](t testing.TB, tb *Table[V], k Key, st State, now int64) *Entry[V] {
	t.Helper()
	s := tb.Shard(&k)
	s.Lock()
	defer s.Unlock()
	e, rc := s.Insert(&k, now, nil)
	if e == nil {
		t.Fatalf("insert %v: %v", k.RemotePort, rc)
	}
	s.SetState(e, st, now)
	return e
}

// try inserts k and reports which keys were evicted to make room.
func try[V any](tb *Table[V], k Key, st State, now int64) (evicted []Key, rc reason.Code) {
	s := tb.Shard(&k)
	s.Lock()
	defer s.Unlock()
	e, rc := s.Insert(&k, now, func(v *Entry[V]) { evicted = append(evicted, v.Key) })
	if e != nil {
		s.SetState(e, st, now)
	}
	return evicted, rc
}

func has[V any](tb *Table[V], k Key) bool {
	s := tb.Shard(&k)
	s.Lock()
	defer s.Unlock()
	return s.Get(&k) != nil
}

func TestInsertGetDelete(t *testing.T) {
	tb := New[int](Config{Capacity: 64})
	k := key(1)
	s := tb.Shard(&k)
	s.Lock()
	defer s.Unlock()
	if s.Get(&k) != nil {
		t.Fatal("empty table returned an entry")
	}
	e, rc := s.Insert(&k, 10, nil)
	if e == nil || rc != reason.None || e.State != StateNew || e.Key != k {
		t.Fatalf("insert: %+v %v", e, rc)
	}
	e.Value = 42
	if g := s.Get(&k); g != e || g.Value != 42 {
		t.Fatalf("get: %p %p", g, e)
	}
	other := key(2)
	if s.Get(&other) != nil {
		t.Fatal("other key found")
	}
	if tb.Len() != 1 || tb.PULen(0) != 1 || tb.PULen(1) != 0 {
		t.Fatalf("len %d, PU 0 %d", tb.Len(), tb.PULen(0))
	}
	s.Delete(e)
	if s.Get(&k) != nil || tb.Len() != 0 || tb.PULen(0) != 0 {
		t.Fatal("delete did not remove")
	}
	// VLAN and PU are part of the key; the PU picks the shard.
	k2 := k
	k2.VLAN[0] = 20
	k3 := k
	k3.PU = 1
	if k2 == k || k3 == k || tb.Shard(&k3) == s || tb.Shard(&k2) != s {
		t.Fatal("vlan/pu not in key, or the PU does not pick the shard")
	}
}

// TestLifetimes: each state's timer, as docs/dataplane.md's table says.
func TestLifetimes(t *testing.T) {
	cases := []struct {
		name  string
		proto ipproto.Proto
		st    State
		cfg   Config
		ttl   time.Duration
	}{
		{"syn-sent", 6, SynSent, Config{}, 60 * time.Second},
		{"syn-ack-sent", 6, SynAckSent, Config{}, 60 * time.Second},
		{"established tcp", 6, Established, Config{}, 2 * time.Hour},
		{"established udp", 17, Established, Config{}, 60 * time.Second},
		{"established icmp", 1, Established, Config{}, 60 * time.Second},
		{"closed by FINs", 6, Closing, Config{}, 5 * time.Second},
		{"denied", 6, Denied, Config{}, 5 * time.Second},
		{"denied udp", 17, Denied, Config{}, 5 * time.Second},
		{"reset", 6, Reset, Config{}, 2 * time.Second},
		{"revoked", 6, Revoked, Config{}, 30 * time.Second},
		{"configured half-open", 6, SynReceived, Config{HalfOpen: time.Second}, time.Second},
		{"configured closing", 6, Closing, Config{Closing: 700 * time.Millisecond}, 700 * time.Millisecond},
		{"configured denied", 17, Denied, Config{Denied: 3 * time.Second}, 3 * time.Second},
		{"configured reset", 6, Reset, Config{Reset: time.Second}, time.Second},
		{"configured datagram", 17, Established, Config{Datagram: 9 * time.Second}, 9 * time.Second},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tb := New[struct{}](c.cfg)
			if got := tb.Timeout(c.st, c.proto); got != c.ttl {
				t.Fatalf("Timeout = %v, want %v", got, c.ttl)
			}
			k := key(i)
			k.Proto = c.proto
			e := add(t, tb, k, c.st, 0)
			s := tb.Shard(&k)
			if s.Expired(e, int64(c.ttl)) {
				t.Fatal("expired at its deadline")
			}
			if !s.Expired(e, int64(c.ttl)+1) {
				t.Fatal("not expired after its deadline")
			}
			s.Touch(e, FromNet, 100, int64(c.ttl))
			if e.Packets[FromNet] != 1 || e.Bytes[FromNet] != 100 {
				t.Fatalf("touch did not count: %+v", e)
			}
			if c.st.HalfOpen() {
				// A handshake's deadline runs from its last step:
				// packets do not renew it.
				if !s.Expired(e, int64(c.ttl)+1) {
					t.Fatal("touch renewed a half-open flow")
				}
				if n := tb.Sweep(int64(c.ttl)+1, nil); n != 1 || tb.Len() != 0 {
					t.Fatalf("half-open: swept %d, %d left", n, tb.Len())
				}
				return
			}
			if s.Expired(e, int64(2*c.ttl)) {
				t.Fatalf("touch did not refresh: %+v", e)
			}
			if n := tb.Sweep(int64(2*c.ttl), nil); n != 0 {
				t.Fatalf("swept %d at the refreshed deadline", n)
			}
			if n := tb.Sweep(int64(2*c.ttl)+1, nil); n != 1 || tb.Len() != 0 {
				t.Fatalf("swept %d, %d left", n, tb.Len())
			}
		})
	}
}

// TestEvictionOrder: a PU at its share makes room with its own flows,
// denied first, then closed/reset, then half-open, oldest first in each;
// never an established one: with nothing else left its new flow is refused.
func TestEvictionOrder(t *testing.T) {
	tb := New[int](Config{Capacity: 1000, PerPU: 9})
	// Inserted in this order (time i); the states say who goes first.
	states := []State{Established, SynSent, Closing, Denied, Established, Reset, SynAckSent, Revoked, Denied}
	for i, st := range states {
		add(t, tb, key(i), st, int64(i))
	}
	wantOrder := []int{3, 7, 8, 2, 5, 1, 6} // denied/revoked, ended, half-open
	for n, want := range wantOrder {
		ev, rc := try(tb, key(100+n), Established, 100)
		if rc != reason.None || len(ev) != 1 || ev[0] != key(want) {
			t.Fatalf("insert %d: evicted %v (%v), want flow %d (%v)", n, ev, rc, want, states[want])
		}
	}
	// Only established flows now: refused, nothing evicted.
	ev, rc := try(tb, key(200), SynSent, 100)
	if rc != reason.FlowQuota || len(ev) != 0 {
		t.Fatalf("at quota with only established flows: evicted %v, %v", ev, rc)
	}
	for _, i := range []int{0, 4} {
		if !has(tb, key(i)) {
			t.Fatalf("established flow %d was evicted", i)
		}
	}
	if tb.Evictions() != uint64(len(wantOrder)) || tb.PULen(0) != 9 {
		t.Fatalf("evictions %d, PU flows %d", tb.Evictions(), tb.PULen(0))
	}
}

// TestQuotaIsolation: one PU holding its whole share of established flows
// has its own new flows refused; other PUs insert as before.
func TestQuotaIsolation(t *testing.T) {
	tb := New[int](Config{Capacity: 100, PerPU: 30})
	for i := range 30 {
		add(t, tb, puKey(1, i), Established, 0)
	}
	for i := range 5 {
		if _, rc := try(tb, puKey(1, 100+i), SynSent, 1); rc != reason.FlowQuota {
			t.Fatalf("flooder's flow %d: %v, want flow-quota", i, rc)
		}
	}
	for pu := uint32(0); pu < 3; pu++ {
		if pu == 1 {
			continue
		}
		for i := range 30 {
			if ev, rc := try(tb, puKey(pu, i), Established, 1); rc != reason.None || len(ev) != 0 {
				t.Fatalf("PU %d flow %d: %v, evicted %v", pu, i, rc, ev)
			}
		}
	}
	if tb.PULen(1) != 30 || tb.Len() != 90 {
		t.Fatalf("PU 1 %d flows, table %d", tb.PULen(1), tb.Len())
	}
}

// TestTableFull: when the whole table is full, room is made in the shard
// with the most evictable flows, never by evicting an established flow.
func TestTableFull(t *testing.T) {
	tb := New[int](Config{Capacity: 40, PerPU: 40})
	for i := range 20 {
		add(t, tb, puKey(0, i), Established, 0)
	}
	for i := range 15 {
		add(t, tb, puKey(1, i), Denied, int64(i))
	}
	for i := range 5 {
		add(t, tb, puKey(2, i), SynSent, 0)
	}
	// PU 2 (5 half-open flows of its own) needs room: PU 1's oldest
	// denied flows go, not PU 2's handshakes.
	for i := range 3 {
		ev, rc := try(tb, puKey(2, 10+i), Established, 50)
		if rc != reason.None || len(ev) != 1 || ev[0] != puKey(1, i) {
			t.Fatalf("insert %d: evicted %v (%v), want PU 1's denied flow %d", i, ev, rc, i)
		}
	}
	// Room is then made wherever the most evictable flows are: PU 1's
	// denied flows and PU 2's handshakes go in turn.
	for i := 3; i < 15; i++ {
		if _, rc := try(tb, puKey(0, 100+i), Established, 60); rc != reason.None {
			t.Fatalf("insert %d: %v", i, rc)
		}
	}
	k1, k2 := puKey(1, 0), puKey(2, 0)
	e1, e2 := tb.Shard(&k1).evictable.Load(), tb.Shard(&k2).evictable.Load()
	if e1+e2 != 5 || e1-e2 > 1 || e2-e1 > 1 {
		t.Fatalf("evictable flows left: PU 1 %d, PU 2 %d; want 5, balanced", e1, e2)
	}
	for i := range 5 {
		if _, rc := try(tb, puKey(3, i), Established, 70); rc != reason.None {
			t.Fatalf("PU 3 flow %d: %v", i, rc)
		}
	}
	// Only established flows are left: refused, table-full.
	if ev, rc := try(tb, puKey(3, 99), SynSent, 80); rc != reason.TableFull || len(ev) != 0 {
		t.Fatalf("full of established flows: evicted %v, %v", ev, rc)
	}
	if tb.Len() != 40 {
		t.Fatalf("len %d", tb.Len())
	}
	for i := range 20 {
		if !has(tb, puKey(0, i)) {
			t.Fatalf("PU 0's established flow %d was evicted", i)
		}
	}
}

// TestBoundedUnderChurn: a flood of handshakes from several PUs keeps the
// table within its capacity and each PU within its share, and the memory
// the pool holds within the capacity (plus a chunk).
func TestBoundedUnderChurn(t *testing.T) {
	tb := New[int](Config{Capacity: 1024, PerPU: 300})
	for i := range 20000 {
		pu := uint32(i % 5)
		if _, rc := try(tb, puKey(pu, i), SynSent, int64(i)); rc != reason.None {
			t.Fatalf("flow %d: %v", i, rc)
		}
		if tb.Len() > tb.Capacity() || tb.PULen(pu) > tb.PerPU() {
			t.Fatalf("table %d, PU %d holds %d", tb.Len(), pu, tb.PULen(pu))
		}
	}
	if a := tb.pool.allocated(); a > tb.Capacity()+chunkSize {
		t.Fatalf("allocated %d entries for capacity %d", a, tb.Capacity())
	}
	if tb.Evictions() != uint64(20000-tb.Len()) {
		t.Fatalf("evictions %d len %d", tb.Evictions(), tb.Len())
	}
}

// TestShrink: a PU's map is rebuilt once a flood has passed.
func TestShrink(t *testing.T) {
	tb := New[int](Config{Capacity: 1 << 16, PerPU: 1 << 16})
	for i := range 10000 {
		add(t, tb, key(i), Denied, 0)
	}
	k := key(0)
	s := tb.Shard(&k)
	if s.peak != 10000 {
		t.Fatalf("peak %d", s.peak)
	}
	add(t, tb, key(99999), Established, int64(time.Minute))
	if n := tb.Sweep(int64(time.Minute), nil); n != 10000 {
		t.Fatalf("swept %d", n)
	}
	m := s.m
	for i := 1; i < shrinkAfter; i++ {
		tb.Sweep(int64(time.Minute), nil)
	}
	if s.peak != 1 || len(s.m) != 1 || !has(tb, key(99999)) {
		t.Fatalf("after the flood: peak %d, %d in map", s.peak, len(s.m))
	}
	if reflect.ValueOf(m).Pointer() == reflect.ValueOf(s.m).Pointer() {
		t.Fatal("map not rebuilt")
	}
}

// TestConcurrentFull: PUs making room in each other's shards at once
// neither deadlock nor overfill the table (run with -race).
func TestConcurrentFull(t *testing.T) {
	tb := New[int](Config{Capacity: 256, PerPU: 256})
	var wg sync.WaitGroup
	for pu := range uint32(4) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 5000 {
				_, rc := try(tb, puKey(pu, i), Denied, int64(i))
				if rc != reason.None && rc != reason.TableFull {
					panic(fmt.Sprint(rc))
				}
				if tb.Len() > tb.Capacity() {
					panic("over capacity")
				}
			}
		}()
	}
	wg.Wait()
	n := 0
	tb.Range(func(*Entry[int]) bool { n++; return false })
	if n != tb.Len() || n > 256 {
		t.Fatalf("ranged %d, len %d", n, tb.Len())
	}
}

func TestRangePU(t *testing.T) {
	tb := New[int](Config{})
	for i := range 10 {
		add(t, tb, puKey(uint32(i%2), i), Established, 0)
	}
	tb.RangePU(1, func(e *Entry[int]) bool {
		if e.Key.PU != 1 {
			t.Fatalf("PU %d's flow in PU 1's range", e.Key.PU)
		}
		return true
	})
	if tb.PULen(1) != 0 || tb.PULen(0) != 5 || tb.Len() != 5 {
		t.Fatalf("PU 0 %d, PU 1 %d", tb.PULen(0), tb.PULen(1))
	}
	tb.RangePU(7, func(*Entry[int]) bool { t.Fatal("unknown PU ranged"); return false })
}

func TestLookupDoesNotAllocate(t *testing.T) {
	tb := New[int](Config{})
	k := key(7)
	add(t, tb, k, Established, 0)
	allocs := testing.AllocsPerRun(1000, func() {
		s := tb.Shard(&k)
		s.Lock()
		if e := s.Get(&k); e != nil && !s.Expired(e, 1) {
			s.Touch(e, FromPU, 60, 1)
		}
		s.Unlock()
	})
	if allocs != 0 {
		t.Fatalf("%v allocs per lookup", allocs)
	}
}

func BenchmarkLookup(b *testing.B) {
	tb := New[[256]byte](Config{})
	keys := make([]Key, 1024)
	for i := range keys {
		keys[i] = key(i)
		add(b, tb, keys[i], Established, 0)
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		k := &keys[i&1023]
		s := tb.Shard(k)
		s.Lock()
		e := s.Get(k)
		s.Touch(e, FromPU, 60, 1)
		s.Unlock()
	}
}
