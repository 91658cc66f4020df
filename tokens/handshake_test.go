package tokens

import (
	"bytes"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/trireme-go/trireme/identity"
	"github.com/trireme-go/trireme/reason"
)

func TestHandshakeRoundTrip(t *testing.T) {
	for _, mode := range []string{"psk", "pki"} {
		t.Run(mode, func(t *testing.T) {
			p := newPair(t, mode)
			now := base

			// Cold: nothing cached.
			var cc, sc Conn
			server, client, _, err := p.handshake(&cc, &sc, now)
			if err != nil {
				t.Fatalf("cold handshake: %v", err)
			}
			if !slices.Equal(client.Tags, clientTags) || client.Node != "node-a" {
				t.Errorf("server saw client %v from %q", client.Tags, client.Node)
			}
			if !slices.Equal(server.Tags, serverTags) || server.Node != "node-b" {
				t.Errorf("client saw server %v from %q", server.Tags, server.Node)
			}
			if client.Identity == nil || server.Identity == nil {
				t.Error("peer without a policy identity")
			}
			if !cc.Established() || !sc.Established() || cc.Peer() != server || sc.Peer() != client {
				t.Error("connections not established with their peers")
			}
			cs, ss := p.client.Stats(), p.server.Stats()
			if cs.TokenCacheMisses != 1 || ss.TokenCacheMisses != 1 || cs.Signatures != 1 || ss.Signatures != 1 {
				t.Errorf("cold stats client %+v server %+v", cs, ss)
			}
			wantPK := uint64(0)
			if mode == "pki" {
				// keygen + sign + cert check + token check + ECDH
				wantPK = 5
			}
			if cs.PublicKeyOps != wantPK || ss.PublicKeyOps != wantPK {
				t.Errorf("cold public-key ops client %d server %d, want %d", cs.PublicKeyOps, ss.PublicKeyOps, wantPK)
			}

			// Warm: a new connection between the same PUs in the same epoch
			// needs no public-key operation and no signature check.
			for i := range 3 {
				var cc2, sc2 Conn
				server2, client2, _, err := p.handshake(&cc2, &sc2, now.Add(time.Duration(i)*time.Second))
				if err != nil {
					t.Fatalf("warm handshake %d: %v", i, err)
				}
				if server2 != server || client2 != client {
					t.Error("warm handshake did not return the cached peers")
				}
				if cc2.nc == cc.nc || sc2.ns == sc.ns {
					t.Error("nonces repeat across connections")
				}
			}
			cw, sw := p.client.Stats(), p.server.Stats()
			if cw.PublicKeyOps != cs.PublicKeyOps || sw.PublicKeyOps != ss.PublicKeyOps {
				t.Errorf("warm handshakes did public-key operations: client %d→%d server %d→%d",
					cs.PublicKeyOps, cw.PublicKeyOps, ss.PublicKeyOps, sw.PublicKeyOps)
			}
			if cw.SignatureVerifications != cs.SignatureVerifications || cw.TokenCacheHits != 3 || sw.TokenCacheHits != 3 {
				t.Errorf("warm stats client %+v server %+v", cw, sw)
			}
			if mode == "pki" && (cw.ECDHCacheHits != 3 || sw.ECDHCacheHits != 3) {
				t.Errorf("ECDH cache hits client %d server %d, want 3", cw.ECDHCacheHits, sw.ECDHCacheHits)
			}
		})
	}
}

// TestSamePUBothWays: PUs on one node talk to each other and a PU is client
// and server with the same token.
func TestSameNode(t *testing.T) {
	for _, mode := range []string{"psk", "pki"} {
		t.Run(mode, func(t *testing.T) {
			p := newPair(t, mode)
			p.server = p.client
			p.sl = p.client.NewLocal(serverTags)
			var cc, sc Conn
			server, client, _, err := p.handshake(&cc, &sc, base)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(server.Tags, serverTags) || !slices.Equal(client.Tags, clientTags) {
				t.Errorf("peers %v %v", server.Tags, client.Tags)
			}
		})
	}
}

func TestRetransmissionSameBytes(t *testing.T) {
	for _, mode := range []string{"psk", "pki"} {
		t.Run(mode, func(t *testing.T) {
			p := newPair(t, mode)
			var cc, sc Conn
			_, _, fr, err := p.handshake(&cc, &sc, base)
			if err != nil {
				t.Fatal(err)
			}
			// Later, after both PUs refreshed their tokens, the same Conns
			// still retransmit the same bytes.
			later := base.Add(2 * DefaultRefresh)
			syn, err := p.client.AppendSYN(nil, p.cl, &cc, later)
			if err != nil || !bytes.Equal(syn, fr.syn) {
				t.Errorf("SYN retransmission differs (%v)", err)
			}
			synack, err := p.server.AppendSYNACK(nil, p.sl, &sc, later)
			if err != nil || !bytes.Equal(synack, fr.synack) {
				t.Errorf("SYN-ACK retransmission differs (%v)", err)
			}
			ack, err := p.client.AppendACK(nil, &cc)
			if err != nil || !bytes.Equal(ack, fr.ack) {
				t.Errorf("ACK retransmission differs (%v)", err)
			}
			// Retransmitted SYN and SYN-ACK verify again without changing
			// state; a retransmitted ACK verifies again.
			if _, err := p.server.VerifySYN(fr.syn, &sc, base); err != nil || !sc.Established() {
				t.Errorf("retransmitted SYN: %v, established %v", err, sc.Established())
			}
			if _, err := p.client.VerifySYNACK(fr.synack, &cc, base); err != nil {
				t.Errorf("retransmitted SYN-ACK: %v", err)
			}
			if err := p.server.VerifyACK(fr.ack, &sc); err != nil {
				t.Errorf("retransmitted ACK: %v", err)
			}
			// Appending into a non-empty buffer appends.
			buf := []byte("prefix")
			out, err := p.client.AppendSYN(buf, p.cl, &cc, later)
			if err != nil || !bytes.Equal(out[:6], []byte("prefix")) || !bytes.Equal(out[6:], fr.syn) {
				t.Error("AppendSYN does not append")
			}
		})
	}
}

func TestRefresh(t *testing.T) {
	for _, mode := range []string{"psk", "pki"} {
		t.Run(mode, func(t *testing.T) {
			p := newPair(t, mode)
			var c1, s1, c2, s2 Conn
			_, _, f1, err := p.handshake(&c1, &s1, base)
			if err != nil {
				t.Fatal(err)
			}
			later := base.Add(DefaultRefresh + time.Second)
			_, _, f2, err := p.handshake(&c2, &s2, later)
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Equal(f1.syn[4+NonceSize:], f2.syn[4+NonceSize:]) {
				t.Error("token not refreshed after Refresh")
			}
			if mode == "pki" && c1.own.ekID == c2.own.ekID {
				t.Error("ephemeral key not refreshed")
			}
			if s := p.client.Stats(); s.Signatures != 2 {
				t.Errorf("client signed %d tokens, want 2", s.Signatures)
			}
		})
	}
}

// TestWarmNoAlloc: the warm handshake allocates nothing.
func TestWarmNoAlloc(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are not meaningful under the race detector")
	}
	for _, mode := range []string{"psk", "pki"} {
		t.Run(mode, func(t *testing.T) {
			p := newPair(t, mode)
			var cc, sc Conn
			if _, _, _, err := p.handshake(&cc, &sc, base); err != nil {
				t.Fatal(err)
			}
			syn := make([]byte, 0, MaxFrame)
			synack := make([]byte, 0, MaxFrame)
			ack := make([]byte, 0, 64)
			var failed error
			allocs := testing.AllocsPerRun(100, func() {
				var cc, sc Conn
				var err error
				syn, _ = p.client.AppendSYN(syn[:0], p.cl, &cc, base)
				if _, err = p.server.VerifySYN(syn, &sc, base); err != nil {
					failed = err
				}
				synack, _ = p.server.AppendSYNACK(synack[:0], p.sl, &sc, base)
				if _, err = p.client.VerifySYNACK(synack, &cc, base); err != nil {
					failed = err
				}
				ack, _ = p.client.AppendACK(ack[:0], &cc)
				if err = p.server.VerifyACK(ack, &sc); err != nil {
					failed = err
				}
			})
			if failed != nil {
				t.Fatal(failed)
			}
			if allocs != 0 {
				t.Errorf("warm handshake: %v allocations, want 0", allocs)
			}
		})
	}
}

func TestFrameSizes(t *testing.T) {
	for _, mode := range []string{"psk", "pki"} {
		t.Run(mode, func(t *testing.T) {
			p := newPair(t, mode)
			var cc, sc Conn
			_, _, fr, err := p.handshake(&cc, &sc, base)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s: SYN %d bytes, SYN-ACK %d bytes, ACK %d bytes (client tags %q)",
				mode, len(fr.syn), len(fr.synack), len(fr.ack), clientTags.String())
			cert, jws := tokenJWT(cc.own.token)
			parts := strings.Split(jws, ".")
			t.Logf("%s: client token %d bytes = 2 + certificate %d + JWT %d (header %d, claims %d, signature %d)",
				mode, len(cc.own.token), len(cert), len(jws), len(parts[0]), len(parts[1]), len(parts[2]))
			if len(fr.syn) > 1000 {
				t.Errorf("SYN frame %d bytes, budget 1000", len(fr.syn))
			}
			if want := headerSize + synackFixed + len(sc.own.token); len(fr.synack) != want {
				t.Errorf("SYN-ACK %d bytes, want %d", len(fr.synack), want)
			}
			if len(fr.ack) != ackSize {
				t.Errorf("ACK %d bytes, want %d", len(fr.ack), ackSize)
			}
			for _, f := range [][]byte{fr.syn, fr.synack, fr.ack} {
				n, err := FrameLen(append(slices.Clip(f), "application data"...))
				if err != nil || n != len(f) {
					t.Errorf("FrameLen = %d, %v; want %d", n, err, len(f))
				}
			}
		})
	}
}

// TestConnSize: Conn is a small fixed-size value for the flow table.
func TestConnSize(t *testing.T) {
	if n := unsafe.Sizeof(Conn{}); n > 96 {
		t.Errorf("Conn is %d bytes, want at most 96", n)
	}
}

// TestBadLocalTags: tags a peer would reject are refused when signing.
func TestBadLocalTags(t *testing.T) {
	p := newPair(t, "psk")
	for _, tags := range []identity.Tags{
		{{Key: "app", Value: "a"}, {Key: "app", Value: "b"}},
		{{Key: "", Value: "a"}},
		{{Key: "a=b", Value: "c"}},
	} {
		if err := p.client.NewLocal(tags).Prepare(base); err != reason.MalformedToken {
			t.Errorf("tags %v: %v, want %v", tags, err, reason.MalformedToken)
		}
	}
	// Unsorted tags are sorted.
	l := p.client.NewLocal(identity.Tags{{Key: "b", Value: "2"}, {Key: "a", Value: "1"}})
	if err := l.Prepare(base); err != nil || l.Tags()[0].Key != "a" {
		t.Errorf("unsorted tags: %v %v", l.Tags(), err)
	}
}

func TestTooManyTags(t *testing.T) {
	p := newPair(t, "pki")
	big := make(identity.Tags, 40)
	for i := range big {
		big[i] = identity.Tag{Key: "label-" + string(rune('a'+i%26)) + string(rune('a'+i/26)), Value: "some-longish-value"}
	}
	var c Conn
	if _, err := p.client.AppendSYN(nil, p.client.NewLocal(big), &c, base); err != reason.NoRoomForToken {
		t.Errorf("40 tags: %v, want %v", err, reason.NoRoomForToken)
	}
}

// TestMACMatchesStdlib checks the allocation-free HMAC and HKDF against the
// standard library.
func TestMACMatchesStdlib(t *testing.T) {
	for _, tc := range []struct{ key, msg []byte }{
		{[]byte("k"), []byte("")},
		{bytes.Repeat([]byte{7}, 32), []byte("trireme")},
		{bytes.Repeat([]byte{9}, 64), bytes.Repeat([]byte{1}, maxMACInput)},
	} {
		m := hmac.New(sha256.New, tc.key)
		m.Write(tc.msg)
		got := hmacSHA256(tc.key, tc.msg)
		if !bytes.Equal(got[:], m.Sum(nil)) {
			t.Errorf("HMAC(%x, %x) differs from crypto/hmac", tc.key, tc.msg)
		}
	}
	secret := bytes.Repeat([]byte{3}, 32)
	salt := []byte(ecdhSalt)
	wantPRK, err := hkdf.Extract(sha256.New, secret, salt)
	if err != nil {
		t.Fatal(err)
	}
	prk := hkdfExtract(salt, secret)
	if !bytes.Equal(prk[:], wantPRK) {
		t.Error("HKDF-Extract differs from crypto/hkdf")
	}
	info := keyInfo + string(bytes.Repeat([]byte{5}, 2*NonceSize))
	want, err := hkdf.Expand(sha256.New, wantPRK, info, 32)
	if err != nil {
		t.Fatal(err)
	}
	got := hkdfExpand32(&prk, []byte(info))
	if !bytes.Equal(got[:], want) {
		t.Error("HKDF-Expand differs from crypto/hkdf")
	}
}

func TestCacheBounded(t *testing.T) {
	c := newClockCache[int](64)
	const mix = 0x9e3779b97f4a7c15
	for i := range 10000 {
		c.put(uint64(i)*mix, i)
	}
	if n := c.len(); n > 64+cacheShards {
		t.Errorf("cache holds %d entries, capacity 64", n)
	}
	// A recently used entry survives eviction pressure better than an
	// unused one: touch one key, then insert one more per shard.
	k := uint64(10001)
	k *= mix
	c.put(k, 1)
	for i := range 3 {
		c.put(uint64(20000+i), i)
		if _, ok := c.get(k); !ok {
			t.Fatalf("recently used entry evicted after %d inserts", i)
		}
	}
	c.reset()
	if c.len() != 0 {
		t.Error("reset left entries")
	}
}

// TestCacheGrowsOnDemand: a cache holds memory for the entries put in it,
// not for its capacity (a replay makes an engine per node of hundreds),
// and never more slots than its capacity.
func TestCacheGrowsOnDemand(t *testing.T) {
	c := newClockCache[int](4096)
	slots := func() (n, capacity int) {
		for i := range c.shards {
			n, capacity = n+len(c.shards[i].slots), capacity+cap(c.shards[i].slots)
		}
		return
	}
	if n, capacity := slots(); n != 0 || capacity != 0 {
		t.Fatalf("empty cache: %d slots, room for %d", n, capacity)
	}
	const mix = 0x9e3779b97f4a7c15
	for i := range 10 {
		c.put(uint64(i)*mix, i)
	}
	if n, capacity := slots(); n != 10 || capacity > 10*8 {
		t.Fatalf("10 entries: %d slots, room for %d", n, capacity)
	}
	for i := range 100000 {
		c.put(uint64(i)*mix, i)
	}
	for i := range c.shards {
		if s := &c.shards[i]; len(s.slots) != s.size || len(s.index) != s.size {
			t.Fatalf("full shard %d: %d slots, %d indexed, size %d", i, len(s.slots), len(s.index), s.size)
		}
	}
	last := uint64(99999)
	if v, ok := c.get(last * mix); !ok || v != 99999 {
		t.Fatalf("last entry: %v %v", v, ok)
	}
}

// TestConcurrent runs handshakes between several PUs from many goroutines
// against shared engines with small caches (eviction under contention), and
// refreshes tokens meanwhile. Run under -race.
func TestConcurrent(t *testing.T) {
	for _, mode := range []string{"psk", "pki"} {
		t.Run(mode, func(t *testing.T) {
			p := newPair(t, mode)
			p.client.tokens, p.server.tokens = newClockCache[*Peer](4), newClockCache[*Peer](4)
			p.client.shared, p.server.shared = newClockCache[*sharedSecret](4), newClockCache[*sharedSecret](4)
			var locals [4][2]*Local
			for i := range locals {
				tags := identity.Tags{{Key: "app", Value: string(rune('a' + i))}}
				locals[i] = [2]*Local{p.client.NewLocal(tags), p.server.NewLocal(tags)}
			}
			// A shared clock, each handshake 50 ms after the one before:
			// 400 handshakes span 20 s, four 5 s refreshes. The span stays
			// below MaxClockSkew: a goroutine that took its time and then
			// waited (a loaded machine) may run its handshake after others
			// signed tokens up to the whole span later, which a verifier
			// takes as a clock skew; beyond MaxClockSkew it is refused
			// (expired-token), as between real nodes.
			p.client.refresh, p.server.refresh = 5*time.Second, 5*time.Second
			var tick atomic.Int64
			var wg sync.WaitGroup
			errs := make(chan error, 8)
			for g := range 8 {
				wg.Go(func() {
					for i := range 50 {
						q := p
						q.cl, q.sl = locals[(g+i)%4][0], locals[i%4][1]
						now := base.Add(time.Duration(tick.Add(1)) * 50 * time.Millisecond)
						var cc, sc Conn
						server, client, _, err := q.handshake(&cc, &sc, now)
						if err != nil {
							errs <- err
							return
						}
						if client.Tags.Get("app") != q.cl.tags.Get("app") || server.Tags.Get("app") != q.sl.tags.Get("app") {
							errs <- reason.BadMAC
							return
						}
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			// 4 PUs per node over 20 s with a 5 s refresh: tokens were
			// re-signed while other goroutines used them.
			if s := p.client.Stats(); s.Signatures <= 4 {
				t.Errorf("client signed %d tokens for 4 PUs: no refresh happened", s.Signatures)
			}
		})
	}
}
