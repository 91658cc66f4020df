package policy

import (
	"math/rand"
	"net/netip"
	"testing"
)

// TestPrefixTableProperty: the interval table finds exactly the prefixes
// that contain an address (compared with a linear scan), for random nested
// and overlapping prefixes of both families, including /0 and host prefixes.
func TestPrefixTableProperty(t *testing.T) {
	g := gen{rand.New(rand.NewSource(7))}
	randPrefix := func(v6 bool) netip.Prefix {
		var a netip.Addr
		if v6 {
			var b [16]byte
			b[0], b[1] = 0xfd, byte(g.r.Intn(4))
			for i := 2; i < 16; i++ {
				b[i] = byte(g.r.Intn(4))
			}
			a = netip.AddrFrom16(b)
		} else {
			a = netip.AddrFrom4([4]byte{10, byte(g.r.Intn(4)), byte(g.r.Intn(4)), byte(g.r.Intn(256))})
		}
		if g.r.Intn(20) == 0 {
			return netip.PrefixFrom(a, 0).Masked()
		}
		return netip.PrefixFrom(a, g.r.Intn(a.BitLen()+1)).Masked()
	}
	for round := 0; round < 300; round++ {
		var entries []cidrEntry
		var ps []netip.Prefix
		for i, n := 0, 1+g.r.Intn(30); i < n; i++ {
			p := randPrefix(g.r.Intn(2) == 0)
			ps = append(ps, p)
			entries = append(entries, cidrEntry{prefix: p, clause: cidrClause{owner: int32(i)}})
		}
		v4, v6 := buildCIDRTable(entries, true), buildCIDRTable(entries, false)
		set := newPrefixSet(ps)
		for q := 0; q < 200; q++ {
			var a netip.Addr
			if g.r.Intn(2) == 0 {
				a = g.addrIn(ps[g.r.Intn(len(ps))])
			} else {
				a = g.addrIn(randPrefix(g.r.Intn(2) == 0))
			}
			want := map[int32]bool{}
			any := false
			for i, p := range ps {
				if p.Contains(a) {
					want[int32(i)] = true
					any = true
				}
			}
			tbl := &v6
			if a.Is4() {
				tbl = &v4
			}
			got := map[int32]bool{}
			for n := tbl.lookup(addrU128(a)); n >= 0; n = tbl.nodes[n].parent {
				if !tbl.nodes[n].prefix.Contains(a) {
					t.Fatalf("%v: node %v does not contain it", a, tbl.nodes[n].prefix)
				}
				for _, c := range tbl.nodes[n].clauses {
					got[c.owner] = true
				}
			}
			if len(got) != len(want) {
				t.Fatalf("round %d: %v in %v: got %v want %v", round, a, ps, got, want)
			}
			for o := range want {
				if !got[o] {
					t.Fatalf("round %d: %v: missing %v", round, a, ps[o])
				}
			}
			if set.contains(a) != any {
				t.Fatalf("prefixSet.contains(%v) = %v, want %v (%v)", a, !any, any, ps)
			}
		}
	}
}
