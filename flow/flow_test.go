package flow

import (
	"testing"
	"time"
)

func key(i int) Key {
	var k Key
	k.Local[10], k.Local[11], k.Local[15] = 0xff, 0xff, 1
	k.Remote[10], k.Remote[11] = 0xff, 0xff
	k.Remote[14], k.Remote[15] = byte(i>>8), byte(i)
	k.LocalPort, k.RemotePort = 80, uint16(1024+i)
	k.Proto = 6
	return k
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
	e := s.Insert(&k, 10)
	if e == nil || e.State != StateNew || e.Key != k {
		t.Fatalf("insert: %+v", e)
	}
	e.Value = 42
	if g := s.Get(&k); g != e || g.Value != 42 {
		t.Fatalf("get: %p %p", g, e)
	}
	other := key(2)
	if tb.Shard(&other) == s && s.Get(&other) != nil {
		t.Fatal("other key found")
	}
	if tb.Len() != 1 {
		t.Fatalf("len %d", tb.Len())
	}
	s.Delete(e)
	if s.Get(&k) != nil || tb.Len() != 0 {
		t.Fatal("delete did not remove")
	}
	// VLAN and PU are part of the key.
	k2 := k
	k2.VLAN[0] = 20
	k3 := k
	k3.PU = 1
	if k2 == k || k3 == k {
		t.Fatal("vlan/pu not in key")
	}
}

func TestTimeoutsByState(t *testing.T) {
	cfg := Config{Capacity: 64, HalfOpen: time.Second, Established: time.Hour, Closing: 2 * time.Second, Datagram: 3 * time.Second}
	tb := New[struct{}](cfg)
	cases := []struct {
		name  string
		proto uint8
		st    State
		ttl   time.Duration
	}{
		{"syn-sent", 6, SynSent, time.Second},
		{"syn-ack-sent", 6, SynAckSent, time.Second},
		{"established tcp", 6, Established, time.Hour},
		{"established udp", 17, Established, 3 * time.Second},
		{"closing", 6, Closing, 2 * time.Second},
		{"denied", 6, Denied, 2 * time.Second},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			k := key(i)
			k.Proto = c.proto
			s := tb.Shard(&k)
			s.Lock()
			e := s.Insert(&k, 0)
			s.SetState(e, c.st, 0)
			if s.Expired(e, int64(c.ttl)) {
				t.Fatal("expired at its deadline")
			}
			if !s.Expired(e, int64(c.ttl)+1) {
				t.Fatal("not expired after its deadline")
			}
			s.Touch(e, FromNet, 100, int64(c.ttl))
			if s.Expired(e, int64(2*c.ttl)) || e.Packets[FromNet] != 1 || e.Bytes[FromNet] != 100 {
				t.Fatalf("touch did not refresh or count: %+v", e)
			}
			s.Unlock()
		})
	}
	n := tb.Sweep(int64(10*time.Second), nil)
	if n != 5 || tb.Len() != 1 {
		t.Fatalf("sweep removed %d, %d left; want 5 removed, the established TCP flow left", n, tb.Len())
	}
}

// fill inserts flows into one shard until it is full and returns their keys.
func fillShard(tb *Table[int], s *Shard[int], st State, now int64, start int) []Key {
	var keys []Key
	for i := start; s.n < s.max; i++ {
		k := key(i)
		if tb.Shard(&k) != s {
			continue
		}
		e := s.Insert(&k, now)
		s.SetState(e, st, now)
		keys = append(keys, k)
	}
	return keys
}

func TestEvictionHalfOpenFirst(t *testing.T) {
	tb := New[int](Config{Capacity: 16 * 8})
	k0 := key(0)
	s := tb.Shard(&k0)
	s.Lock()
	defer s.Unlock()
	est := fillShard(tb, s, Established, 0, 0)
	// Make room for 3 half-open flows by deleting 3 established ones.
	for _, k := range est[:3] {
		s.Delete(s.Get(&k))
	}
	est = est[3:]
	ho := fillShard(tb, s, SynSent, 5, 1000)
	if len(ho) != 3 {
		t.Fatalf("got %d half-open", len(ho))
	}
	var extra Key
	for i := 5000; ; i++ {
		extra = key(i)
		if tb.Shard(&extra) == s {
			break
		}
	}
	if s.Insert(&extra, 6) != nil {
		t.Fatal("insert into a full shard succeeded")
	}
	// Victims come oldest half-open first.
	for i, want := range ho {
		v := s.Victim(6)
		if v == nil || v.Key != want {
			t.Fatalf("victim %d: got %+v want %v", i, v, want)
		}
		s.Evict(v)
		if s.Insert(&extra, 6) == nil {
			t.Fatal("insert after eviction failed")
		}
		s.Delete(s.Get(&extra))
		// refill the slot so the shard stays full
		s.SetState(s.Insert(&want, 6), Established, 6)
	}
	if tb.Evictions() != 3 {
		t.Fatalf("evictions %d", tb.Evictions())
	}
	// Only established, unexpired flows: no victim.
	if v := s.Victim(7); v != nil {
		t.Fatalf("victim among live established flows: %+v", v.Key)
	}
	// Once they expire, an expired flow is a victim.
	if v := s.Victim(int64(3 * time.Hour)); v == nil {
		t.Fatal("no victim among expired flows")
	}
	if tb.Len() != s.max || tb.Len() > tb.Capacity() {
		t.Fatalf("len %d max %d", tb.Len(), s.max)
	}
	_ = est
}

func TestBoundedUnderChurn(t *testing.T) {
	tb := New[int](Config{Capacity: 256})
	for i := 0; i < 10000; i++ {
		k := key(i)
		s := tb.Shard(&k)
		s.Lock()
		e := s.Insert(&k, int64(i))
		if e == nil {
			v := s.Victim(int64(i))
			if v == nil {
				t.Fatal("no victim among half-open flows")
			}
			s.Evict(v)
			e = s.Insert(&k, int64(i))
		}
		s.SetState(e, SynSent, int64(i))
		s.Unlock()
		if tb.Len() > tb.Capacity() {
			t.Fatalf("table grew past capacity: %d", tb.Len())
		}
	}
	allocated := 0
	for i := range tb.shards {
		allocated += len(tb.shards[i].chunks) * chunkSize
	}
	if allocated > tb.Capacity()+shardCount*chunkSize {
		t.Fatalf("allocated %d entries for capacity %d", allocated, tb.Capacity())
	}
	if tb.Evictions() != uint64(10000-tb.Len()) {
		t.Fatalf("evictions %d len %d", tb.Evictions(), tb.Len())
	}
}

func TestLookupDoesNotAllocate(t *testing.T) {
	tb := New[int](Config{})
	k := key(7)
	s := tb.Shard(&k)
	s.Lock()
	e := s.Insert(&k, 0)
	s.SetState(e, Established, 0)
	s.Unlock()
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
		s := tb.Shard(&keys[i])
		s.Lock()
		s.SetState(s.Insert(&keys[i], 0), Established, 0)
		s.Unlock()
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
