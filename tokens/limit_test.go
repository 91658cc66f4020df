package tokens

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/trireme-go/trireme/reason"
)

// junkSYNs returns n distinct SYN frames carrying the victim client's
// certificate and a JWT signed by an attacker's key: each costs a
// public-key verification that fails (bad-signature). In PSK mode, JWTs
// signed with another key.
func junkSYNs(t testing.TB, p pair, n int) [][]byte {
	t.Helper()
	var cc Conn
	valid, err := p.client.AppendSYN(nil, p.cl, &cc, base)
	if err != nil {
		t.Fatal(err)
	}
	nonce, tok := synParts(t, valid)
	cert, _ := tokenJWT(tok)
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	wrongPSK := testPSK(t, 99)
	out := make([][]byte, n)
	for i := range out {
		cl := validClaims(t, "node-a", base, p.client.sec().Kind() == "pki")
		cl.T = append(cl.T, fmt.Sprintf("junk=%d", i))
		if p.client.sec().Kind() == "psk" {
			jt, err := wrongPSK.sign(cl)
			if err != nil {
				t.Fatal(err)
			}
			out[i] = mustSYN(t, nonce, jt)
			continue
		}
		jws, err := signJWT(jwt.SigningMethodES256, k, cl)
		if err != nil {
			t.Fatal(err)
		}
		out[i] = mustSYN(t, nonce, makeToken(cert, jws))
	}
	return out
}

// TestFailureCache: a junk token costs one verification; the same bytes
// again get the same answer from the failure cache, without public-key
// work, until the answer's time is up. A valid token is not affected.
func TestFailureCache(t *testing.T) {
	for _, mode := range []string{"pki", "psk"} {
		t.Run(mode, func(t *testing.T) {
			p := newPair(t, mode)
			var cc Conn
			valid, err := p.client.AppendSYN(nil, p.cl, &cc, base)
			if err != nil {
				t.Fatal(err)
			}
			nonce, tok := synParts(t, valid)
			cert, jws := tokenJWT(tok)
			junk := mustSYN(t, nonce, makeToken(cert, flipInSegment(jws, 2)))
			src := netip.MustParseAddr("10.9.9.9")
			for i := range 100 {
				var sc Conn
				if _, err := p.server.VerifySYNFrom(junk, &sc, base.Add(time.Duration(i)*time.Millisecond), src); err != reason.BadSignature {
					t.Fatalf("junk %d: %v", i, err)
				}
			}
			s := p.server.Stats()
			if s.SignatureVerifications != 1 || s.FailureCacheHits != 99 || s.VerifyRateLimited != 0 {
				t.Fatalf("after 100 junk SYNs: %+v", s)
			}
			// The valid token still verifies.
			var sc Conn
			if _, err := p.server.VerifySYNFrom(valid, &sc, base, src); err != nil {
				t.Fatalf("valid SYN: %v", err)
			}
			// After the failure's time, the junk is verified again (and
			// fails again).
			if _, err := p.server.VerifySYNFrom(junk, &Conn{}, base.Add(failureTTL+time.Second), src); err != reason.BadSignature {
				t.Fatalf("junk after the TTL: %v", err)
			}
			if s := p.server.Stats(); s.SignatureVerifications != 3 {
				t.Fatalf("verifications %d, want 3 (junk, valid, junk again)", s.SignatureVerifications)
			}
		})
	}
}

// TestFailureCacheTimeOrder: a token refused as expired is not refused from
// the cache at an earlier time (when it was valid).
func TestFailureCacheTimeOrder(t *testing.T) {
	p := newPair(t, "pki")
	var cc Conn
	valid, err := p.client.AppendSYN(nil, p.cl, &cc, base)
	if err != nil {
		t.Fatal(err)
	}
	late := base.Add(2*DefaultRefresh + time.Second)
	if _, err := p.server.VerifySYN(valid, &Conn{}, late); err != reason.ExpiredToken {
		t.Fatalf("late: %v", err)
	}
	if _, err := p.server.VerifySYN(valid, &Conn{}, late.Add(time.Second)); err != reason.ExpiredToken {
		t.Fatalf("later: %v", err)
	}
	if _, err := p.server.VerifySYN(valid, &Conn{}, base); err != nil {
		t.Fatalf("in time: %v", err)
	}
}

// TestVerifyBudget: tokens never seen before cost a source's budget and
// the node's; over either, the SYN is refused (verify-rate-limited) without
// public-key work; budgets refill with time; cached tokens cost nothing;
// PSK mode (no public-key work) has no budget.
func TestVerifyBudget(t *testing.T) {
	a, b := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	type send struct {
		src     netip.Addr
		n       int
		at      time.Duration
		limited int // how many of n are refused for the budget
	}
	cases := []struct {
		name   string
		mode   string
		budget VerifyBudget
		sends  []send
	}{
		{"per source", "pki", VerifyBudget{SourceRate: 2, SourceBurst: 5}, []send{
			{a, 8, 0, 3},
			{b, 5, 0, 0},                 // b has its own budget
			{a, 3, time.Second, 1},       // 2 a second come back
			{a, 10, 10 * time.Second, 5}, // refilled up to the burst, no more
		}},
		{"node", "pki", VerifyBudget{SourceRate: 100, SourceBurst: 100, NodeRate: 3, NodeBurst: 6}, []send{
			{a, 4, 0, 0},
			{b, 4, 0, 2},
			{b, 4, time.Second, 1},
			{netip.Addr{}, 1, time.Second, 1}, // unknown source: the node's budget
		}},
		{"a node refusal does not spend the source's budget", "pki", VerifyBudget{SourceRate: 1, SourceBurst: 2, NodeRate: 1, NodeBurst: 1}, []send{
			{a, 1, 0, 0},
			{b, 1, 0, 1},           // node empty
			{b, 2, time.Second, 1}, // b still has 2: one fits the node's refill
		}},
		{"disabled", "pki", VerifyBudget{SourceRate: -1, NodeRate: -1}, []send{{a, 30, 0, 0}}},
		{"psk: no public-key work, no budget", "psk", VerifyBudget{SourceRate: 1, SourceBurst: 1, NodeRate: 1, NodeBurst: 1}, []send{{a, 10, 0, 0}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := newPair(t, tc.mode)
			p.server = engineWith(t, p.server, tc.budget)
			total := 0
			for _, s := range tc.sends {
				total += s.n
			}
			syns := junkSYNs(t, p, total)
			next := 0
			for i, s := range tc.sends {
				limited := 0
				for range s.n {
					_, err := p.server.VerifySYNFrom(syns[next], &Conn{}, base.Add(s.at), s.src)
					next++
					switch err {
					case reason.VerifyRateLimited:
						limited++
					case reason.BadSignature:
					default:
						t.Fatalf("send %d: %v", i, err)
					}
				}
				if limited != s.limited {
					t.Fatalf("send %d (%v, %d at %v): %d limited, want %d", i, s.src, s.n, s.at, limited, s.limited)
				}
			}
			st := p.server.Stats()
			want := 0
			for _, s := range tc.sends {
				want += s.limited
			}
			if st.VerifyRateLimited != uint64(want) || st.TokenCacheMisses != uint64(total-want) {
				t.Fatalf("stats: %+v", st)
			}
		})
	}
}

// TestBudgetSparesCachedTokens: a source whose budget is spent still
// connects with a token verified before (cache), and gets its junk refused
// from the failure cache with the junk's own reason.
func TestBudgetSparesCachedTokens(t *testing.T) {
	p := newPair(t, "pki")
	p.server = engineWith(t, p.server, VerifyBudget{SourceRate: 1, SourceBurst: 2})
	src := netip.MustParseAddr("10.0.0.1")
	var cc Conn
	valid, err := p.client.AppendSYN(nil, p.cl, &cc, base)
	if err != nil {
		t.Fatal(err)
	}
	junk := junkSYNs(t, p, 3)
	if _, err := p.server.VerifySYNFrom(valid, &Conn{}, base, src); err != nil {
		t.Fatal(err)
	}
	if _, err := p.server.VerifySYNFrom(junk[0], &Conn{}, base, src); err != reason.BadSignature {
		t.Fatal(err)
	}
	if _, err := p.server.VerifySYNFrom(junk[1], &Conn{}, base, src); err != reason.VerifyRateLimited {
		t.Fatalf("over budget: %v", err)
	}
	for range 10 {
		if _, err := p.server.VerifySYNFrom(valid, &Conn{}, base, src); err != nil {
			t.Fatalf("cached token over budget: %v", err)
		}
		if _, err := p.server.VerifySYNFrom(junk[0], &Conn{}, base, src); err != reason.BadSignature {
			t.Fatalf("cached junk over budget: %v", err)
		}
	}
}

// TestBudgetSparesCheapFailures: a token refused before any public-key
// work (a certificate that does not parse, a certificate length that lies)
// costs no budget: a flood of such junk cannot spend the budget real first
// contacts need.
func TestBudgetSparesCheapFailures(t *testing.T) {
	p := newPair(t, "pki")
	p.server = engineWith(t, p.server, VerifyBudget{SourceRate: 1, SourceBurst: 2, NodeRate: 1, NodeBurst: 2})
	src := netip.MustParseAddr("10.0.0.1")
	var cc Conn
	valid, err := p.client.AppendSYN(nil, p.cl, &cc, base)
	if err != nil {
		t.Fatal(err)
	}
	nonce, tok := synParts(t, valid)
	cert, jws := tokenJWT(tok)
	for i := range 50 {
		garbage := bytes.Repeat([]byte{byte(i)}, len(cert)) // not DER
		if _, err := p.server.VerifySYNFrom(mustSYN(t, nonce, makeToken(garbage, jws)), &Conn{}, base, src); err != reason.MalformedToken {
			t.Fatalf("garbage certificate %d: %v", i, err)
		}
	}
	junk := junkSYNs(t, p, 3)
	for i, want := range []error{reason.BadSignature, reason.BadSignature, reason.VerifyRateLimited} {
		if _, err := p.server.VerifySYNFrom(junk[i], &Conn{}, base, src); err != want {
			t.Fatalf("junk %d after 50 cheap failures: %v, want %v", i, err, want)
		}
	}
}

// TestSourceTableBounded: the per-source budgets are bounded; a source
// evicted and seen again starts with a full burst.
func TestSourceTableBounded(t *testing.T) {
	l := newVerifyLimiter(VerifyBudget{SourceRate: 1, SourceBurst: 1, NodeRate: -1, Sources: 8})
	for i := range 1000 {
		src := netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)})
		if !l.allow(src, 0) {
			t.Fatalf("source %d's first verification refused", i)
		}
		if l.allow(src, 0) {
			t.Fatalf("source %d's second verification allowed (burst 1)", i)
		}
		if len(l.slots) > 8 || len(l.index) > 8 {
			t.Fatalf("%d sources tracked", len(l.slots))
		}
	}
	// IPv4-mapped and plain IPv4 are one source.
	a := netip.MustParseAddr("10.1.1.1")
	l.allow(a, 0)
	if l.allow(netip.AddrFrom16(a.As16()), 0) {
		t.Fatal("IPv4-mapped address got its own budget")
	}
}

// engineWith returns a copy of e's engine configuration with budget b.
func engineWith(t testing.TB, e *Engine, b VerifyBudget) *Engine {
	t.Helper()
	n, err := New(Config{Node: e.node, Secrets: e.sec().Secrets, Refresh: e.refresh, Budget: b})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// BenchmarkVerifyJunk: the token engine's CPU per SYN carrying a junk
// token (victim's certificate, attacker's signature), the same one each
// time (failure cache) or a fresh one each time from one source (budget),
// beside a cold verification of a fresh junk token (the cost without
// either, BenchmarkP256 for scale).
func BenchmarkVerifyJunk(b *testing.B) {
	p := newPair(b, "pki")
	junk := junkSYNs(b, p, 256)
	src := netip.MustParseAddr("10.0.0.1")
	for _, v := range []string{"same", "fresh-one-source", "fresh-unbudgeted"} {
		b.Run(v, func(b *testing.B) {
			e := p.server
			if v == "fresh-unbudgeted" {
				e = engineWith(b, p.server, VerifyBudget{SourceRate: -1, NodeRate: -1})
			}
			clock := startCPUClock(b)
			i := 0
			for b.Loop() {
				syn := junk[0]
				if v != "same" {
					i++
					syn = junk[i%len(junk)]
					if v == "fresh-unbudgeted" {
						e.failures.reset()
					}
				}
				if _, err := e.VerifySYNFrom(syn, &Conn{}, base, src); err == nil {
					b.Fatal("junk accepted")
				}
			}
			clock.report(b)
		})
	}
}
