package steer

import (
	"fmt"
	"net/netip"

	"github.com/google/nftables"
)

// What a PU is on the link, for the anti-spoofing rules: its MAC and its
// addresses. Per PU the table holds four small sets built from them (the
// rules look them up, one lookup per packet and family):
//
//	o4_<pu>  ipv4_addr            its IPv4 addresses (IP and ARP sender)
//	o6_<pu>  ipv6_addr            its IPv6 addresses, link-local included
//	n6_<pu>  ipv6_addr, interval  destinations of NDP leaving it: fe80::/10,
//	                              ff02::/16 and its on-link IPv6 prefixes
//	d6_<pu>  ipv6_addr, interval  destinations of NDP toward it: fe80::/10,
//	                              ff02::/16 and its own IPv6 addresses

var (
	linkLocal6     = netip.MustParsePrefix("fe80::/10")
	linkMulticast6 = netip.MustParsePrefix("ff02::/16")
)

// checkIdentity validates a PU's MAC and addresses.
func checkIdentity(pu PU) error {
	m := pu.MAC
	if len(m) != 6 || m[0]&1 != 0 || (m[0]|m[1]|m[2]|m[3]|m[4]|m[5]) == 0 {
		return fmt.Errorf("steer: PU %s: MAC %q: want a unicast Ethernet address", pu.Name, m)
	}
	for _, p := range pu.Addrs {
		a := p.Addr().Unmap()
		if !p.IsValid() || a.IsUnspecified() || a.IsMulticast() || a.IsLoopback() || (a.Is4() && a == netip.AddrFrom4([4]byte{255, 255, 255, 255})) {
			return fmt.Errorf("steer: PU %s: %v is not a unicast address", pu.Name, p)
		}
	}
	return nil
}

// ownPrefixes returns the elements of the four sets.
func ownPrefixes(addrs []netip.Prefix) (o4, o6 []netip.Addr, n6, d6 []netip.Prefix) {
	n6 = []netip.Prefix{linkLocal6, linkMulticast6}
	d6 = []netip.Prefix{linkLocal6, linkMulticast6}
	for _, p := range addrs {
		a := p.Addr().Unmap()
		if a.Is4() {
			o4 = append(o4, a)
			continue
		}
		o6 = append(o6, a)
		if a.IsLinkLocalUnicast() {
			continue // covered by fe80::/10
		}
		d6 = append(d6, netip.PrefixFrom(a, 128))
		bits := p.Bits()
		if bits < 64 {
			bits = 64 // an on-link prefix wider than a /64 is not a neighbourhood
		}
		n6 = append(n6, netip.PrefixFrom(a, bits).Masked())
	}
	return o4, o6, n6, d6
}

func addrElements(as []netip.Addr) []nftables.SetElement {
	seen := map[netip.Addr]bool{}
	var els []nftables.SetElement
	for _, a := range as {
		if !seen[a] {
			seen[a] = true
			els = append(els, nftables.SetElement{Key: a.AsSlice()})
		}
	}
	return els
}

// identityPrefixes start the names of a PU's identity sets.
var identityPrefixes = []string{"o4_", "o6_", "n6_", "d6_"}

// addIdentitySets queues the four sets of a PU in table t (they are
// rebuilt whenever the PU's chains are, so they always match the PU
// given).
func addIdentitySets(b *builder, t *nftables.Table, pu PU, sets *puSets) error {
	o4, o6, n6, d6 := ownPrefixes(pu.Addrs)
	n6c, _ := canonical(n6)
	d6c, _ := canonical(d6)
	sets.o4 = &nftables.Set{Table: t, Name: "o4_" + pu.Name, KeyType: nftables.TypeIPAddr}
	sets.o6 = &nftables.Set{Table: t, Name: "o6_" + pu.Name, KeyType: nftables.TypeIP6Addr}
	sets.n6 = &nftables.Set{Table: t, Name: "n6_" + pu.Name, KeyType: nftables.TypeIP6Addr, Interval: true}
	sets.d6 = &nftables.Set{Table: t, Name: "d6_" + pu.Name, KeyType: nftables.TypeIP6Addr, Interval: true}
	for _, x := range []struct {
		set *nftables.Set
		els []nftables.SetElement
	}{
		{sets.o4, addrElements(o4)},
		{sets.o6, addrElements(o6)},
		{sets.n6, intervalElements(merged(n6c))},
		{sets.d6, intervalElements(merged(d6c))},
	} {
		if err := addSet(b, x.set, x.els); err != nil {
			return err
		}
	}
	return nil
}

// identitySets are the sets addIdentitySets made, for RemovePU.
func (ps puSets) identitySets() []*nftables.Set { return []*nftables.Set{ps.o4, ps.o6, ps.n6, ps.d6} }

// puCounters are the names of a PU's named counters: steered and
// authorized packets per direction, and, leaving the PU, the frames the
// anti-spoofing rules dropped (spoof: not its own sender; rogue: a router
// advertisement, redirect or DHCP server reply).
func puCounters(pu string) []string {
	return []string{
		counterName(pu, "in", "steer"), counterName(pu, "in", "auth"),
		counterName(pu, "out", "steer"), counterName(pu, "out", "auth"),
		counterName(pu, "in", "spoof"), counterName(pu, "in", "rogue"),
		budgetCounter(pu),
		counterName(pu, "in", "fast"), counterName(pu, "out", "fast"),
	}
}

var counterSuffixes = []string{"_in_steer", "_in_auth", "_out_steer", "_out_auth", "_in_spoof", "_in_rogue", "_in_budget", "_in_fast", "_out_fast"}

// AllCounters reads the kernel counters of every PU, one dump per table.
func (s *Steerer) AllCounters() (map[string]Counters, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]Counters, len(s.pus))
	for name := range s.pus {
		out[name] = Counters{}
	}
	var objs []nftables.Obj
	for _, i := range sortedKeys(s.shards) {
		t := s.shards[i].table
		os, err := s.conn.GetObj(&nftables.CounterObj{Table: t})
		if err != nil {
			return nil, fmt.Errorf("steer: counters of %s: %w", t.Name, err)
		}
		for _, o := range os {
			if co, ok := o.(*nftables.CounterObj); ok && co.Table != nil && co.Table.Name == t.Name {
				objs = append(objs, co)
			}
		}
	}
	for _, o := range objs {
		co, ok := o.(*nftables.CounterObj)
		if !ok {
			continue
		}
		pu := puOfCounter(co.Name)
		c, known := out[pu]
		if !known {
			continue
		}
		if p := c.field(co.Name[len(pu):]); p != nil {
			*p = Packets{Packets: co.Packets, Bytes: co.Bytes}
		}
		out[pu] = c
	}
	for pu, c := range out {
		out[pu] = c.withFast()
	}
	return out, nil
}
