package steer

import (
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/trireme-go/trireme/tokens"
)

// The established-flow fast path (rule F, docs/steering.md): the first
// rules of each chain (toward the PU: right after the dataplane's mark
// rule) accept a TCP or UDP packet of an authorized flow after about 20
// expressions (mostly inlined loads and compares) and one set lookup,
// instead of walking the
// anti-spoofing, NDP, excluded-network and steering rules (~75
// expressions and three lookups leaving the PU, ~35 and two toward it)
// before rule 5's lookup.
//
// A fast-path rule accepts only packets that the rules after it would
// accept at rule 5; everything else falls through
// to them unchanged. So it re-checks, for what it accepts, every earlier
// rule that could drop or steer such a packet:
//
//   - leaving the PU, anti-spoofing (rule 0): the Ethernet source is the
//     PU's MAC and the IP source one of its addresses (an explicit check:
//     the set holds both directions of each flow, so a packet leaving the
//     PU with the peer's address as its source would match the reverse
//     entry); a UDP source port of a DHCP server (67, 547) is not taken
//     (rogue-router). The other anti-spoofing rules concern ARP, ICMPv6
//     and other EtherTypes, which the fast path never accepts; an IPv6
//     source in o6 is never :: (checkIdentity);
//   - SYN, FIN and RST (rule 4): only TCP packets with none of these flags;
//   - fragments (rule 4b): IPv4 without MF and offset; IPv6 only when the
//     transport header follows the IPv6 header directly (no extension
//     header, hence no fragment header; other IPv6 packets take the rules
//     below);
//   - toward the PU, the datagram handshake's marker (rule 4c): only UDP
//     whose payload has 4 bytes that are not the marker (a shorter
//     datagram takes the rules below, as before); the TCP handshake's
//     (rule 4d): only TCP without an option of kind 253 (one of another
//     experiment takes rule 5);
//   - ARP and on-link NDP (rule 2) accept, excluded networks (rule 3)
//     accept: same verdict (an authorized flow with an excluded peer is now
//     counted as authorized; the daemon never authorizes one).
//
// The rules use the same primitives (meta protocol, meta l4proto, payload
// loads from the network and transport headers) as the ones they stand in
// front of: a VLAN tag, IP options or a malformed header affect both alike
// (a load out of the packet fails the rule, which then falls through).
//
// What they accept is counted apart (<pu>_{in,out}_fast; Counters adds it
// to the authorized packets): the only way to tell, from outside, that a
// packet took the fast path and not rule 5.
func fastPathRules(pu PU, egress bool, sets puSets, fastCounter string) [][]expr.Any {
	o4, o6, _, _ := ownPrefixes(pu.Addrs)
	var rules [][]expr.Any
	for _, v6 := range []bool{false, true} {
		ep, set, own, ownSet, w := uint16(ethIPv4), sets.a4, o4, sets.o4, uint32(1)
		if v6 {
			ep, set, own, ownSet, w = ethIPv6, sets.a6, o6, sets.o6, 4
		}
		if !egress && len(own) == 0 {
			continue // leaving the PU, anti-spoofing drops this family
		}
		for _, p := range []uint8{unix.IPPROTO_TCP, unix.IPPROTO_UDP} {
			var r []expr.Any
			if !egress {
				r = append(r, loadLL(6, 6, regScratch), cmp(expr.CmpOpEq, pu.MAC...))
			}
			r = append(r, ethProto(ep)...)
			if v6 {
				r = append(r, loadNet(ip6NextHeader, 1, regScratch), cmp(expr.CmpOpEq, p))
			} else {
				r = append(r, l4Proto(expr.CmpOpEq, p)...)
				r = append(r, notFragment4()...)
			}
			sport, dport := regKey+2*w+1, regKey+2*w+2
			switch {
			case p == unix.IPPROTO_TCP:
				r = append(r, loadTransport(13, 1, regScratch),
					&expr.Bitwise{SourceRegister: regScratch, DestRegister: regScratch, Len: 1, Mask: []byte{tcpFlagSYN | tcpFlagFIN | tcpFlagRST}, Xor: []byte{0}},
					cmp(expr.CmpOpEq, 0))
				if egress {
					r = append(r, noMarkerOption()...)
				}
			case egress:
				r = append(r, loadTransport(8, uint32(tokens.MarkerSize), regScratch), cmp(expr.CmpOpNeq, tokens.DatagramMarker[:]...))
			}
			if v6 {
				r = append(r, loadNet(ip6Src, 32, regKey))
			} else {
				so, do, l := addrFields(false)
				r = append(r, loadNet(so, l, regKey), loadNet(do, l, regKey+w))
			}
			if !egress {
				r = append(r, ownSource(own, ownSet)...)
			}
			r = append(r, &expr.Meta{Key: expr.MetaKeyL4PROTO, Register: regKey + 2*w},
				loadTransport(0, 2, sport), loadTransport(2, 2, dport))
			if p == unix.IPPROTO_UDP && !egress {
				server := uint16(67)
				if v6 {
					server = 547
				}
				r = append(r, &expr.Cmp{Op: expr.CmpOpNeq, Register: sport, Data: be16(server)})
			}
			r = append(r, &expr.Lookup{SourceRegister: regKey, SetName: set.Name, SetID: set.ID})
			rules = append(rules, cat(r, counted(fastCounter, accept)))
		}
	}
	return rules
}

// notFragment4 matches an IPv4 packet that is not a fragment: neither MF
// nor an offset (the negation of rule 4b's IPv4 match).
func notFragment4() []expr.Any {
	return []expr.Any{
		loadNet(6, 2, regScratch),
		&expr.Bitwise{SourceRegister: regScratch, DestRegister: regScratch, Len: 2, Mask: []byte{0x3f, 0xff}, Xor: []byte{0, 0}},
		&expr.Cmp{Op: expr.CmpOpEq, Register: regScratch, Data: []byte{0, 0}},
	}
}

// ownSource matches when the source address, already loaded at regKey,
// is one of the PU's own: one compare for a PU with one address of the
// family (the usual case), a lookup in its o4/o6 set otherwise.
func ownSource(own []netip.Addr, set *nftables.Set) []expr.Any {
	distinct := slices.Clone(own)
	slices.SortFunc(distinct, netip.Addr.Compare)
	distinct = slices.Compact(distinct)
	if len(distinct) == 1 {
		return []expr.Any{&expr.Cmp{Op: expr.CmpOpEq, Register: regKey, Data: distinct[0].AsSlice()}}
	}
	return []expr.Any{&expr.Lookup{SourceRegister: regKey, SetName: set.Name, SetID: set.ID}}
}

// noMarkerOption matches a TCP segment without an option of the marker's
// kind (253): rule 4d's segments, and those of other RFC 6994
// experiments, which rule 5 then accepts, take the rules below.
func noMarkerOption() []expr.Any {
	return []expr.Any{
		&expr.Exthdr{Op: expr.ExthdrOpTcpopt, Type: tokens.OptionKind, Offset: 0, Len: 1,
			Flags: unix.NFT_EXTHDR_F_PRESENT, DestRegister: regScratch},
		cmp(expr.CmpOpEq, 0),
	}
}

// markerOption matches a TCP segment whose first option of kind 253 is
// the handshake's marker (tokens.Option: kind, length 4, "tr").
func markerOption() []expr.Any {
	return []expr.Any{
		&expr.Exthdr{Op: expr.ExthdrOpTcpopt, Type: tokens.OptionKind, Offset: 0, Len: 4, DestRegister: regScratch},
		cmp(expr.CmpOpEq, tokens.Option[:]...),
	}
}
