package policy

import (
	"sort"

	"github.com/trireme-go/trireme/ipproto"
)

// portIndex lists, for every protocol and port, the rules whose ports cover
// it, in precedence order. With it a decision can walk the few rules of the
// connection's port, best first, and stop at the first whose peers match,
// instead of enumerating every rule whose peers match (see dirPolicy.decide).
type portIndex struct {
	proto  [256]uint8 // protocol -> table; 0 is for protocols no rule names
	tables []portTable
	list   []int32 // rule indices; spans point into it
}

type portTable struct {
	starts []uint16 // interval starts, ascending, starts[0] == 0
	dec    []span   // per interval: rules that may decide, by rank
	obs    []span   // per interval: observed rules, by obsRank
}

type span struct{ start, end uint32 }

// maxPortEntries bounds the index: rules with wide port ranges are repeated
// in every interval they cover; past this, decisions go peer-first only.
const maxPortEntries = 1 << 20

func buildPortIndex(rules []crule) *portIndex {
	x := &portIndex{}
	protos := []ipproto.Proto{}
	seen := [256]bool{}
	for i := range rules {
		for _, pr := range rules[i].ports {
			if pr.Protocol != ipproto.Any && !seen[pr.Protocol] {
				seen[pr.Protocol] = true
				protos = append(protos, pr.Protocol)
			}
		}
	}
	sort.Slice(protos, func(i, j int) bool { return protos[i] < protos[j] })
	total := 0
	// Table 0 serves every protocol no rule names: only rules without ports
	// or with ipproto.Any ranges can match those.
	for ti, proto := range append([]ipproto.Proto{ipproto.Any}, protos...) {
		if ti > 0 {
			x.proto[proto] = uint8(ti)
		}
		t, n := buildPortTable(rules, proto, &x.list)
		total += n
		if total > maxPortEntries {
			return nil
		}
		x.tables = append(x.tables, t)
	}
	return x
}

type portEvent struct {
	at   uint32
	rule int32
	add  bool
}

func buildPortTable(rules []crule, proto ipproto.Proto, list *[]int32) (portTable, int) {
	var ev []portEvent
	for i := range rules {
		r := &rules[i]
		if len(r.ports) == 0 {
			ev = append(ev, portEvent{0, int32(i), true})
			continue
		}
		for _, pr := range r.ports {
			if pr.Protocol != ipproto.Any && (proto == ipproto.Any || pr.Protocol != proto) {
				continue
			}
			ev = append(ev, portEvent{uint32(pr.First), int32(i), true})
			if pr.Last < 65535 {
				ev = append(ev, portEvent{uint32(pr.Last) + 1, int32(i), false})
			}
		}
	}
	sort.Slice(ev, func(i, j int) bool { return ev[i].at < ev[j].at })
	// Sweep the port space keeping the covering rules sorted by rank (a rule
	// with several overlapping ranges is counted, not repeated).
	count := make([]int32, len(rules))
	var dec, obs []int32
	rankOf := func(ri int32) uint32 { return rules[ri].rank }
	obsRankOf := func(ri int32) uint32 { return rules[ri].obsRank }
	var t portTable
	entries := 0
	i := 0
	for _, at := range boundaries(ev) {
		for ; i < len(ev) && ev[i].at == at; i++ {
			ri := ev[i].rule
			if ev[i].add {
				if count[ri]++; count[ri] == 1 {
					if rules[ri].rank != noRank {
						dec = insertSorted(dec, ri, rankOf)
					}
					if rules[ri].obsRank != noRank {
						obs = insertSorted(obs, ri, obsRankOf)
					}
				}
			} else if count[ri]--; count[ri] == 0 {
				if rules[ri].rank != noRank {
					dec = removeSorted(dec, ri, rankOf)
				}
				if rules[ri].obsRank != noRank {
					obs = removeSorted(obs, ri, obsRankOf)
				}
			}
		}
		entries += len(dec) + len(obs)
		if entries > maxPortEntries {
			break
		}
		t.starts = append(t.starts, uint16(at))
		t.dec = append(t.dec, appendSpan(list, dec))
		t.obs = append(t.obs, appendSpan(list, obs))
	}
	return t, entries
}

func insertSorted(s []int32, ri int32, key func(int32) uint32) []int32 {
	k := key(ri)
	i := sort.Search(len(s), func(i int) bool { return key(s[i]) >= k })
	s = append(s, 0)
	copy(s[i+1:], s[i:])
	s[i] = ri
	return s
}

func removeSorted(s []int32, ri int32, key func(int32) uint32) []int32 {
	k := key(ri)
	for i := sort.Search(len(s), func(i int) bool { return key(s[i]) >= k }); i < len(s); i++ {
		if s[i] == ri {
			return append(s[:i], s[i+1:]...)
		}
	}
	return s
}

// boundaries returns 0 and every event position, ascending, unique.
func boundaries(ev []portEvent) []uint32 {
	out := []uint32{0}
	for _, e := range ev {
		if e.at != out[len(out)-1] {
			out = append(out, e.at)
		}
	}
	return out
}

func appendSpan(list *[]int32, ids []int32) span {
	s := span{start: uint32(len(*list))}
	*list = append(*list, ids...)
	s.end = uint32(len(*list))
	return s
}

// lookup returns the interval of proto/port in its protocol's table.
func (x *portIndex) lookup(proto ipproto.Proto, port uint16) (*portTable, int) {
	t := &x.tables[x.proto[proto]]
	lo, hi := 0, len(t.starts)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if port < t.starts[m] {
			hi = m
		} else {
			lo = m + 1
		}
	}
	return t, lo - 1
}
