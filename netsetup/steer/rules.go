package steer

import (
	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/trireme-go/trireme/tokens"
)

// Rule building blocks. Registers: 1 is a 128-bit scratch register; the
// concatenated set keys are loaded into the 32-bit registers from 8
// (NFT_REG32_00) on, one per 4 bytes, as nft does.
const (
	regScratch = 1
	regKey     = 8

	ethIPv4 = unix.ETH_P_IP
	ethIPv6 = unix.ETH_P_IPV6
	ethARP  = unix.ETH_P_ARP

	protoICMPv6 = 58
	tcpFlagFIN  = 0x01
	tcpFlagSYN  = 0x02
	tcpFlagRST  = 0x04

	// icmpEchoID is the offset of an echo's identifier in its ICMP
	// header (type, code, checksum, identifier, sequence number).
	icmpEchoID = 4
)

func ethProto(p uint16) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyPROTOCOL, Register: regScratch},
		&expr.Cmp{Op: expr.CmpOpEq, Register: regScratch, Data: binaryutil.BigEndian.PutUint16(p)},
	}
}

func l4Proto(op expr.CmpOp, p uint8) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: regScratch},
		&expr.Cmp{Op: op, Register: regScratch, Data: []byte{p}},
	}
}

func cat(parts ...[]expr.Any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

var (
	accept = []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}}
)

func counted(name string, v []expr.Any) []expr.Any {
	return cat([]expr.Any{&expr.Objref{Type: int(nftables.ObjTypeCounter), Name: name}}, v)
}

// steerTo duplicates the packet into the TAP and drops the original: the
// equivalent of `fwd to TAP`, which google/nftables v0.3.0 cannot express.
func steerTo(tapIndex int, counter string) []expr.Any {
	return counted(counter, []expr.Any{
		&expr.Immediate{Register: regScratch, Data: binaryutil.NativeEndian.PutUint32(uint32(tapIndex))},
		&expr.Dup{RegDev: regScratch, IsRegDevSet: true},
		&expr.Verdict{Kind: expr.VerdictDrop},
	})
}

// addrFields returns the payload offset and length of the source and
// destination addresses of a family.
func addrFields(v6 bool) (srcOff, dstOff, l uint32) {
	if v6 {
		return 8, 24, 16
	}
	return 12, 16, 4
}

func loadNet(off, l, reg uint32) *expr.Payload {
	return &expr.Payload{OperationType: expr.PayloadLoad, DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: l}
}

func loadTransport(off, l, reg uint32) *expr.Payload {
	return &expr.Payload{OperationType: expr.PayloadLoad, DestRegister: reg, Base: expr.PayloadBaseTransportHeader, Offset: off, Len: l}
}

func loadLL(off, l, reg uint32) *expr.Payload {
	return &expr.Payload{OperationType: expr.PayloadLoad, DestRegister: reg, Base: expr.PayloadBaseLLHeader, Offset: off, Len: l}
}

func cmp(op expr.CmpOp, data ...byte) *expr.Cmp {
	return &expr.Cmp{Op: op, Register: regScratch, Data: data}
}

func be16(v uint16) []byte { return binaryutil.BigEndian.PutUint16(v) }

func lookup(set *nftables.Set, invert bool) *expr.Lookup {
	return &expr.Lookup{SourceRegister: regScratch, SetName: set.Name, SetID: set.ID, Invert: invert}
}

var (
	drop     = []expr.Any{&expr.Verdict{Kind: expr.VerdictDrop}}
	zeroAddr = make([]byte, 16) // ::
)

// IPv6 header fields and the fixed offsets of the NDP messages the rules
// read. NDP is only accepted without extension headers (next header 58),
// so the ICMPv6 header is at a fixed offset of the network header and an
// offset that is out of the packet fails the rule (never skips a check).
const (
	ip6PayloadLen = 4
	ip6NextHeader = 6
	ip6HopLimit   = 7
	ip6Src        = 8
	ip6Dst        = 24
	ip6ICMPType   = 40
	rsOption      = 40 + 8  // RS: 8-byte header, then options
	nsOption      = 40 + 24 // NS and NA: 24-byte header (with the target), then options

	ndpRS       = 133
	ndpRA       = 134
	ndpNS       = 135
	ndpNA       = 136
	ndpRedirect = 137

	ndOptSourceLL = 1
	ndOptTargetLL = 2
	ndOptNonce    = 14

	// MaxNDP bounds the ICMPv6 message of a neighbour discovery packet
	// the kernel passes (IPv6 payload length, no extension headers). What
	// a Linux PU sends is 8-32 bytes; the largest legitimate message is a
	// router advertisement toward a PU (prefixes, MTU, RDNSS, DNSSL, route
	// options: typically 100-250 bytes). Twice that bounds what an NDP
	// message can carry between neighbours without refusing real ones.
	MaxNDP = 512
)

// ndp matches an IPv6 packet that carries ICMPv6 directly (no extension
// headers) of a type in [lo, hi].
func ndp(lo, hi byte) []expr.Any {
	r := cat(ethProto(ethIPv6), []expr.Any{
		loadNet(ip6NextHeader, 1, regScratch), cmp(expr.CmpOpEq, protoICMPv6),
		loadNet(ip6ICMPType, 1, regScratch),
	})
	if lo == hi {
		return append(r, cmp(expr.CmpOpEq, lo))
	}
	return append(r, &expr.Range{Op: expr.CmpOpEq, Register: regScratch, FromData: []byte{lo}, ToData: []byte{hi}})
}

// payloadLen compares the IPv6 payload length.
func payloadLen(op expr.CmpOp, n uint16) []expr.Any {
	return []expr.Any{loadNet(ip6PayloadLen, 2, regScratch), cmp(op, be16(n)...)}
}

// linkOption is an 8-byte NDP link-layer address option carrying mac.
func linkOption(typ byte, mac []byte) []byte { return append([]byte{typ, 1}, mac...) }

// antiSpoofRules come first in the chain of traffic leaving the PU: a frame
// passes them only when everything in it that names its sender is the PU's
// own (Ethernet source, ARP sender, IP source, NDP link-layer options), and
// when it is not something only a router or a DHCP server sends. Anything
// else is dropped and counted (counters <pu>_in_spoof and <pu>_in_rogue).
func antiSpoofRules(pu PU, sets puSets) [][]expr.Any {
	spoof := counted(counterName(pu.Name, "in", "spoof"), drop)
	rogue := counted(counterName(pu.Name, "in", "rogue"), drop)
	mac := []byte(pu.MAC)
	var rules [][]expr.Any
	add := func(match []expr.Any, verdict []expr.Any) { rules = append(rules, cat(match, verdict)) }

	// Ethernet source.
	add([]expr.Any{loadLL(6, 6, regScratch), cmp(expr.CmpOpNeq, mac...)}, spoof)
	// Only IPv4, IPv6 and ARP: other EtherTypes (and a second VLAN tag;
	// the kernel moves a first one into the packet's metadata before this
	// hook) carry a sender the rules below cannot check.
	add([]expr.Any{
		&expr.Meta{Key: expr.MetaKeyPROTOCOL, Register: regScratch},
		cmp(expr.CmpOpNeq, be16(ethIPv4)...), cmp(expr.CmpOpNeq, be16(ethIPv6)...), cmp(expr.CmpOpNeq, be16(ethARP)...),
	}, spoof)
	// ARP: Ethernet/IPv4 ARP (htype 1, ptype 0x0800, hlen 6, plen 4, any
	// operation) whose sender MAC is the PU's, and whose sender IP is one
	// of its addresses (no 0.0.0.0 probes: Linux does not probe, and a PU
	// gets its addresses from trireme or its orchestrator).
	add(cat(ethProto(ethARP), []expr.Any{
		loadNet(0, 14, regScratch),
		&expr.Bitwise{SourceRegister: regScratch, DestRegister: regScratch, Len: 14,
			Mask: []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, Xor: make([]byte, 14)},
		cmp(expr.CmpOpNeq, append([]byte{0, 1, 8, 0, 6, 4, 0, 0}, mac...)...),
	}), spoof)
	add(cat(ethProto(ethARP), []expr.Any{loadNet(14, 4, regScratch), lookup(sets.o4, true)}), spoof)
	// IPv4 source.
	add(cat(ethProto(ethIPv4), []expr.Any{loadNet(12, 4, regScratch), lookup(sets.o4, true)}), spoof)
	// IPv6 source: one of the PU's addresses (its link-local included) ...
	add(cat(ethProto(ethIPv6), []expr.Any{loadNet(ip6Src, 16, regScratch), cmp(expr.CmpOpNeq, zeroAddr...), lookup(sets.o6, true)}), spoof)
	// ... or :: while it has none yet: only toward link-scope multicast,
	// and only duplicate address detection (a neighbour solicitation,
	// checked as NDP below) or MLD (behind a hop-by-hop header).
	unspecified := cat(ethProto(ethIPv6), []expr.Any{loadNet(ip6Src, 16, regScratch), cmp(expr.CmpOpEq, zeroAddr...)})
	add(cat(unspecified, []expr.Any{loadNet(ip6Dst, 2, regScratch), cmp(expr.CmpOpNeq, 0xff, 0x02)}), spoof)
	add(cat(unspecified, []expr.Any{loadNet(ip6NextHeader, 1, regScratch), cmp(expr.CmpOpNeq, protoICMPv6), cmp(expr.CmpOpNeq, 0)}), spoof)
	add(cat(unspecified, []expr.Any{loadNet(ip6NextHeader, 1, regScratch), cmp(expr.CmpOpEq, protoICMPv6),
		loadNet(ip6ICMPType, 1, regScratch), cmp(expr.CmpOpNeq, ndpNS)}), spoof)
	// What only a router or a DHCP server sends: router advertisements
	// and redirects (found behind extension headers too), DHCPv4 and
	// DHCPv6 server replies.
	for _, t := range []byte{ndpRA, ndpRedirect} {
		add(cat(ethProto(ethIPv6), l4Proto(expr.CmpOpEq, protoICMPv6), []expr.Any{loadTransport(0, 1, regScratch), cmp(expr.CmpOpEq, t)}), rogue)
	}
	add(cat(ethProto(ethIPv4), l4Proto(expr.CmpOpEq, unix.IPPROTO_UDP), []expr.Any{loadTransport(0, 2, regScratch), cmp(expr.CmpOpEq, be16(67)...)}), rogue)
	add(cat(ethProto(ethIPv6), l4Proto(expr.CmpOpEq, unix.IPPROTO_UDP), []expr.Any{loadTransport(0, 2, regScratch), cmp(expr.CmpOpEq, be16(547)...)}), rogue)
	// NDP link-layer options: what a Linux PU sends has at most one
	// option (8 bytes), at a fixed offset: a source link-layer option
	// (RS, NS) or a DAD nonce (NS), a target link-layer option (NA). The
	// link-layer address must be the PU's MAC; any other shape is refused.
	add(cat(ndp(ndpRS, ndpRS), payloadLen(expr.CmpOpNeq, 8), payloadLen(expr.CmpOpNeq, 16)), spoof)
	add(cat(ndp(ndpRS, ndpRS), payloadLen(expr.CmpOpEq, 16), []expr.Any{
		loadNet(rsOption, 8, regScratch), cmp(expr.CmpOpNeq, linkOption(ndOptSourceLL, mac)...)}), spoof)
	add(cat(ndp(ndpNS, ndpNA), payloadLen(expr.CmpOpNeq, 24), payloadLen(expr.CmpOpNeq, 32)), spoof)
	add(cat(ndp(ndpNS, ndpNS), payloadLen(expr.CmpOpEq, 32), []expr.Any{
		loadNet(nsOption, 2, regScratch), cmp(expr.CmpOpNeq, ndOptNonce, 1),
		loadNet(nsOption, 8, regScratch), cmp(expr.CmpOpNeq, linkOption(ndOptSourceLL, mac)...)}), spoof)
	add(cat(ndp(ndpNA, ndpNA), payloadLen(expr.CmpOpEq, 32), []expr.Any{
		loadNet(nsOption, 8, regScratch), cmp(expr.CmpOpNeq, linkOption(ndOptTargetLL, mac)...)}), spoof)
	return rules
}

// onLinkNDP accepts neighbour discovery that really is on-link: ICMPv6
// 133-137 without extension headers, hop limit 255 (a router on the way
// would have decremented it), at most MaxNDP bytes, toward an on-link
// destination: link-local, link-scope multicast (solicited-node
// included), or, leaving the PU, an address of its on-link prefixes (a
// neighbour answered over its global or ULA address) and, toward the PU,
// one of its own addresses. Any other NDP-typed packet is steered, and the
// dataplane drops it (reason invalid-ndp).
func onLinkNDP(dsts *nftables.Set) []expr.Any {
	return cat(ndp(ndpRS, ndpRedirect), []expr.Any{
		loadNet(ip6HopLimit, 1, regScratch), cmp(expr.CmpOpEq, 255),
	}, payloadLen(expr.CmpOpLte, MaxNDP), []expr.Any{
		loadNet(ip6Dst, 16, regScratch), lookup(dsts, false),
	}, accept)
}

// chainRules returns the rule bodies of one PU chain, in order.
func (s *Steerer) chainRules(pu PU, egress bool, sets puSets) [][]expr.Any {
	dir, tap := "in", pu.TapIn
	if egress {
		dir, tap = "out", pu.TapOut
	}
	steerCounter := counterName(pu.Name, dir, "steer")
	authCounter, fastCounter := counterName(pu.Name, dir, "auth"), counterName(pu.Name, dir, "fast")
	var rules [][]expr.Any

	// 1. Packets the dataplane injected toward the PU carry its mark. Only
	//    the egress chain can see them: injection away from the PU goes
	//    through the injection port, not this veth, and a mark set inside
	//    the PU's namespace is cleared when the packet crosses the veth.
	//    Leaving the PU, anti-spoofing (0) comes before anything else
	//    but the fast path.
	// F. Packets of authorized TCP and UDP flows are accepted first (after
	//    the mark rule), by rules that re-check what the rules below would
	//    drop or steer of them (fastpath.go); the rest falls through.
	if egress {
		rules = append(rules, cat([]expr.Any{
			&expr.Meta{Key: expr.MetaKeyMARK, Register: regScratch},
			&expr.Cmp{Op: expr.CmpOpEq, Register: regScratch, Data: binaryutil.NativeEndian.PutUint32(s.cfg.Mark)},
		}, accept))
		rules = append(rules, fastPathRules(pu, egress, sets, fastCounter)...)
	} else {
		rules = append(rules, fastPathRules(pu, egress, sets, fastCounter)...)
		rules = append(rules, antiSpoofRules(pu, sets)...)
	}
	// 2. ARP passes (leaving the PU: checked above); IPv6 neighbour
	//    discovery passes when it is on-link.
	rules = append(rules, cat(ethProto(ethARP), accept))
	ndpDsts := sets.n6
	if egress {
		ndpDsts = sets.d6
	}
	rules = append(rules, onLinkNDP(ndpDsts))
	// 3. Excluded networks pass, matched on the peer only: the destination
	//    of a packet leaving the PU, the source of one toward it. (Matching
	//    the PU's own side would let a PU that takes an excluded address
	//    past every check.)
	for _, v6 := range []bool{false, true} {
		ep, set := uint16(ethIPv4), sets.x4
		if v6 {
			ep, set = ethIPv6, sets.x6
		}
		so, do, l := addrFields(v6)
		off := do
		if egress {
			off = so
		}
		rules = append(rules, cat(ethProto(ep), []expr.Any{
			loadNet(off, l, regScratch),
			&expr.Lookup{SourceRegister: regScratch, SetName: set.Name, SetID: set.ID},
		}, accept))
	}
	// 4. Every TCP SYN (and SYN-ACK) goes to the dataplane, authorized or
	//    not, and so do FIN and RST: the enforcer sees every connection
	//    end, so its table and flow records follow the kernel's flows
	//    (a few packets per connection, none on the data path). Leaving
	//    the PU, within its budget (budget.go).
	synFinRst := cat(l4Proto(expr.CmpOpEq, unix.IPPROTO_TCP), []expr.Any{
		loadTransport(13, 1, regScratch),
		&expr.Bitwise{SourceRegister: regScratch, DestRegister: regScratch, Len: 1, Mask: []byte{tcpFlagSYN | tcpFlagFIN | tcpFlagRST}, Xor: []byte{0}},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: regScratch, Data: []byte{0}},
	})
	// 4a. FIN and RST (no SYN) of an authorized flow pass, logged to the
	//     daemon's NFLOG group so that its enforcer still sees how the
	//     flow ends (endRules).
	if s.cfg.EndLog.Enabled {
		rules = append(rules, endRules(s.cfg.EndLog.Group, sets, authCounter)...)
	}
	budget := !egress && s.cfg.Budget.Rate > 0
	if budget {
		rules = append(rules, budgetRule(s.cfg.Budget, pu.Name, synFinRst))
	}
	rules = append(rules, cat(synFinRst, steerTo(tap, steerCounter)))
	// 4b. IP fragments go to the dataplane (see fragmentMatches); leaving
	//     the PU, within its budget (a bucket per family).
	for _, m := range fragmentMatches() {
		if budget {
			rules = append(rules, budgetRule(s.cfg.Budget, pu.Name, m))
		}
		rules = append(rules, cat(m, steerTo(tap, steerCounter)))
	}
	// 4c. (toward the PU only) UDP datagrams that start with the datagram
	//     handshake's marker go to the dataplane, authorized flow or not:
	//     a handshake message must never reach an application (a reply
	//     re-sent after a lost confirm arrives on a flow the kernel
	//     already passes); the enforcer consumes what verifies and
	//     forwards the rest as the application data it is.
	if egress {
		rules = append(rules, cat(l4Proto(expr.CmpOpEq, unix.IPPROTO_UDP), []expr.Any{
			loadTransport(8, uint32(tokens.MarkerSize), regScratch),
			cmp(expr.CmpOpEq, tokens.DatagramMarker[:]...),
		}, steerTo(tap, steerCounter)))
	}
	// 4d. (toward the PU only) TCP segments that carry the handshake's
	//     marker option go to the dataplane, authorized flow or not: the
	//     client's enforcer answers a SYN-ACK the server's kernel sent
	//     again with the token ACK again, and that copy can arrive on a
	//     flow the kernel already passes. Its token frame must never
	//     reach the PU as data (it would shift the stream); the enforcer
	//     takes it out.
	if egress {
		rules = append(rules, cat(l4Proto(expr.CmpOpEq, unix.IPPROTO_TCP), markerOption(), steerTo(tap, steerCounter)))
	}
	// 5. Packets of authorized flows stay in the kernel.
	for _, v6 := range []bool{false, true} {
		ep, set, w := uint16(ethIPv4), sets.a4, uint32(1)
		if v6 {
			ep, set, w = ethIPv6, sets.a6, 4
		}
		so, do, l := addrFields(v6)
		addrs := []expr.Any{loadNet(so, l, regKey), loadNet(do, l, regKey+w)}
		proto := &expr.Meta{Key: expr.MetaKeyL4PROTO, Register: regKey + 2*w}
		lookup := &expr.Lookup{SourceRegister: regKey, SetName: set.Name, SetID: set.ID}
		for _, p := range []uint8{unix.IPPROTO_TCP, unix.IPPROTO_UDP} {
			rules = append(rules, cat(ethProto(ep), l4Proto(expr.CmpOpEq, p), addrs, []expr.Any{
				proto,
				loadTransport(0, 2, regKey+2*w+1),
				loadTransport(2, 2, regKey+2*w+2),
				lookup,
			}, counted(authCounter, accept)))
		}
		// ICMP echo of the family: the direction is part of the key. The
		// side that sent the request holds the identifier in its port,
		// the other side 0, as the dataplane keys the flow: a request is
		// saddr . daddr . icmp . id . 0, a reply saddr . daddr . icmp .
		// 0 . id. So the authorized entries of A's ping to B, (A, B, id,
		// 0) and (B, A, 0, id), pass A's requests and B's replies, never
		// a request from B to A. Identifier 0 is not looked up (such an
		// echo's key would be that of any ICMP message between the two,
		// both ports 0): it goes to the dataplane.
		icmp, req, rep := uint8(unix.IPPROTO_ICMP), uint8(8), uint8(0)
		if v6 {
			icmp, req, rep = protoICMPv6, 128, 129
		}
		zero := func(r uint32) *expr.Immediate { return &expr.Immediate{Register: r, Data: []byte{0, 0, 0, 0}} }
		echo := func(typ uint8) []expr.Any {
			return cat(ethProto(ep), l4Proto(expr.CmpOpEq, icmp), []expr.Any{
				loadTransport(0, 1, regScratch), cmp(expr.CmpOpEq, typ),
				loadTransport(icmpEchoID, 2, regScratch), cmp(expr.CmpOpNeq, 0, 0),
			}, addrs, []expr.Any{proto})
		}
		rules = append(rules, cat(echo(req), []expr.Any{
			loadTransport(icmpEchoID, 2, regKey+2*w+1), zero(regKey + 2*w + 2), lookup,
		}, counted(authCounter, accept)))
		rules = append(rules, cat(echo(rep), []expr.Any{
			zero(regKey + 2*w + 1), loadTransport(icmpEchoID, 2, regKey+2*w+2), lookup,
		}, counted(authCounter, accept)))
		// Other ICMP messages of the family, and protocols without ports:
		// the key's port fields are zero, one flow per address pair and
		// protocol, both ways (as the dataplane keys them). Echoes never
		// take these rules.
		portless := cat(addrs, []expr.Any{proto, zero(regKey + 2*w + 1), zero(regKey + 2*w + 2), lookup}, counted(authCounter, accept))
		rules = append(rules, cat(ethProto(ep), l4Proto(expr.CmpOpEq, icmp), []expr.Any{
			loadTransport(0, 1, regScratch), cmp(expr.CmpOpNeq, req), cmp(expr.CmpOpNeq, rep),
		}, portless))
		rules = append(rules, cat(ethProto(ep), l4Proto(expr.CmpOpNeq, unix.IPPROTO_TCP), l4Proto(expr.CmpOpNeq, unix.IPPROTO_UDP),
			l4Proto(expr.CmpOpNeq, icmp), portless))
	}
	// 6. Everything else goes to the dataplane (leaving the PU, within its
	//    budget).
	if budget {
		rules = append(rules, budgetRule(s.cfg.Budget, pu.Name, nil))
	}
	rules = append(rules, steerTo(tap, steerCounter))
	return rules
}

// The end rules' NFLOG settings: headers only (Ethernet at the egress
// hook, IPv4 or IPv6 with options, TCP with options: the enforcer needs the
// addresses, ports, flags, sequence and acknowledgment numbers, and the IP
// length for the FIN's place in the sequence space), and batches of
// EndLogBatch messages (or the reader's flush timeout, netsetup/nflog).
const (
	EndLogSnaplen = 192
	EndLogBatch   = 16
)

// endRules pass a TCP FIN or RST without SYN of a flow in the PU's
// authorized set, and log it to group. The set lookup counts it in the
// flow's entry (the final record's kernel counts). Only untagged frames
// (the EtherType at the link-layer header's offset 12 is the family's: nft
// reads a VLAN tag the kernel took out of the frame there): a tagged
// frame's log would lack its tag, so it is steered. Everything else of
// rule 4 stays as it is: SYNs, and FINs and RSTs of tuples not in the set
// (a new connection on a 4-tuple that closed, a forged segment on no
// authorized flow), go to the dataplane.
func endRules(group uint16, sets puSets, counter string) [][]expr.Any {
	var rules [][]expr.Any
	flags := func(mask byte) []expr.Any {
		return []expr.Any{
			loadTransport(13, 1, regScratch),
			&expr.Bitwise{SourceRegister: regScratch, DestRegister: regScratch, Len: 1, Mask: []byte{mask}, Xor: []byte{0}},
		}
	}
	log := &expr.Log{
		Key:   1<<unix.NFTA_LOG_GROUP | 1<<unix.NFTA_LOG_SNAPLEN | 1<<unix.NFTA_LOG_QTHRESHOLD,
		Group: group, Snaplen: EndLogSnaplen, QThreshold: EndLogBatch,
	}
	for _, v6 := range []bool{false, true} {
		ep, set, w := uint16(ethIPv4), sets.a4, uint32(1)
		if v6 {
			ep, set, w = ethIPv6, sets.a6, 4
		}
		so, do, l := addrFields(v6)
		rules = append(rules, cat(ethProto(ep), l4Proto(expr.CmpOpEq, unix.IPPROTO_TCP), []expr.Any{
			loadLL(12, 2, regScratch), cmp(expr.CmpOpEq, be16(ep)...),
		}, flags(tcpFlagSYN|tcpFlagFIN|tcpFlagRST), []expr.Any{cmp(expr.CmpOpNeq, 0)},
			flags(tcpFlagSYN), []expr.Any{cmp(expr.CmpOpEq, 0),
				loadNet(so, l, regKey), loadNet(do, l, regKey+w),
				&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: regKey + 2*w},
				loadTransport(0, 2, regKey+2*w+1),
				loadTransport(2, 2, regKey+2*w+2),
				&expr.Lookup{SourceRegister: regKey, SetName: set.Name, SetID: set.ID},
			}, counted(counter, []expr.Any{log, &expr.Verdict{Kind: expr.VerdictAccept}})))
	}
	return rules
}
