// Package packet parses Ethernet frames for the enforcer and rewrites TCP
// segments: inserting and stripping trireme's marker option and token frame
// with incremental checksum updates, and crafting RSTs and token-ACKs.
// Packet.Decode is the one frame decoder (hand-written, no allocation):
// the enforcer's fast and slow paths and the daemon's checks all read its
// result.
package packet

import (
	"encoding/binary"
	"net/netip"

	"github.com/trireme-go/trireme/ipproto"
)

// TCP flag bits (byte 13 of the TCP header).
const (
	FIN = 0x01
	SYN = 0x02
	RST = 0x04
	PSH = 0x08
	ACK = 0x10
)

// Fragment says whether and how a packet is an IP fragment.
type Fragment uint8

const (
	NotFragment   Fragment = iota
	FirstFragment          // offset 0, more fragments follow
	LaterFragment          // offset > 0: no transport header
)

// Packet is what the parser learned about a frame. Offsets index Frame.
type Packet struct {
	Frame []byte
	// L3 is the offset of the IP header; L4 of the transport header;
	// Payload of the transport payload; End of the end of the IP packet
	// (Frame[End:] is link-layer padding or trailer, kept as is).
	L3, L4, Payload, End int
	// ARP is set for ARP frames (passed without further parsing).
	ARP  bool
	IPv6 bool
	// VLAN holds up to two 802.1Q VLAN IDs, outermost first. Priority tags
	// (VID 0) count as untagged.
	VLAN     [2]uint16
	Src, Dst netip.Addr
	Proto    ipproto.Proto
	// SrcPort and DstPort are the transport ports. An ICMP echo's
	// identifier is the port of the side that sent the request, the other
	// side's is 0 (a request: SrcPort=id, DstPort=0; a reply: SrcPort=0,
	// DstPort=id), so that a reply is in its request's flow and a request
	// from the other side is a flow of its own. Other ICMP messages have
	// both 0.
	SrcPort, DstPort uint16
	// TCP fields (zero for other protocols).
	Flags    uint8
	Seq, Ack uint32
	Window   uint16
	// ICMP type and code.
	ICMPType, ICMPCode uint8
	// Fragment state and identification (IPv4 ID or IPv6 fragment ID).
	Frag   Fragment
	FragID uint32
	// FragOff is a fragment's offset in bytes within its datagram's
	// payload (0 for a first fragment or an unfragmented packet).
	FragOff int
}

// TCPHeaderLen is the TCP header length including options.
func (p *Packet) TCPHeaderLen() int { return p.Payload - p.L4 }

// PayloadLen is the length of the transport payload.
func (p *Packet) PayloadLen() int { return p.End - p.Payload }

func isEcho(proto ipproto.Proto, typ uint8) bool {
	if proto == ipproto.ICMP {
		return typ == 8 || typ == 0
	}
	return typ == 128 || typ == 129
}

// isEchoRequest reports whether an echo message (isEcho) is a request.
func isEchoRequest(proto ipproto.Proto, typ uint8) bool {
	return proto == ipproto.ICMP && typ == 8 || proto == ipproto.ICMPv6 && typ == 128
}

// echoPorts returns the ports an echo message of identifier id is keyed
// by: the identifier on the requester's side, 0 on the responder's.
func echoPorts(proto ipproto.Proto, typ uint8, id uint16) (sport, dport uint16) {
	if isEchoRequest(proto, typ) {
		return id, 0
	}
	return 0, id
}

// IsEchoRequest reports whether the packet is an ICMP/ICMPv6 echo request.
func (p *Packet) IsEchoRequest() bool {
	return (p.Proto == ipproto.ICMP || p.Proto == ipproto.ICMPv6) && isEchoRequest(p.Proto, p.ICMPType)
}

// IsEcho reports whether the packet is an ICMP/ICMPv6 echo request or reply.
func (p *Packet) IsEcho() bool {
	return (p.Proto == ipproto.ICMP || p.Proto == ipproto.ICMPv6) && isEcho(p.Proto, p.ICMPType)
}

// IsNDP reports whether the packet is ICMPv6 link plumbing that IPv6 needs
// to work at all: neighbour discovery (router and neighbour solicitation
// and advertisement, redirect) and multicast listener discovery (MLD query,
// report, done, MLDv2 report).
func (p *Packet) IsNDP() bool {
	if p.Proto != ipproto.ICMPv6 {
		return false
	}
	t := p.ICMPType
	return t >= 130 && t <= 137 || t == 143
}

// IsICMPError reports whether the packet is an ICMP error message that
// quotes the packet it is about: destination unreachable (incl. IPv4
// fragmentation needed), source quench, redirect, time exceeded, parameter
// problem; ICMPv6 destination unreachable, packet too big, time exceeded,
// parameter problem.
func (p *Packet) IsICMPError() bool {
	switch p.Proto {
	case ipproto.ICMP:
		switch p.ICMPType {
		case 3, 4, 5, 11, 12:
			return true
		}
	case ipproto.ICMPv6:
		return p.ICMPType >= 1 && p.ICMPType <= 4
	}
	return false
}

// Quoted reads the 5-tuple of the packet an ICMP error quotes (its IP
// header and the first 8 bytes of its transport header). ok is false when
// the quote is too short or not TCP/UDP/ICMP echo over the same IP version.
func (p *Packet) Quoted() (src, dst netip.Addr, proto ipproto.Proto, sport, dport uint16, ok bool) {
	if !p.IsICMPError() || p.L4+8 > p.End {
		return
	}
	q := p.Frame[p.L4+8 : p.End]
	var l4 []byte
	if p.IPv6 {
		if len(q) < 40 || q[0]>>4 != 6 {
			return
		}
		proto = ipproto.Proto(q[6])
		src, dst = netip.AddrFrom16([16]byte(q[8:24])), netip.AddrFrom16([16]byte(q[24:40]))
		l4 = q[40:]
	} else {
		if len(q) < 20 || q[0]>>4 != 4 {
			return
		}
		hl := int(q[0]&0x0f) * 4
		if hl < 20 || len(q) < hl {
			return
		}
		proto = ipproto.Proto(q[9])
		src, dst = netip.AddrFrom4([4]byte(q[12:16])), netip.AddrFrom4([4]byte(q[16:20]))
		l4 = q[hl:]
	}
	switch proto {
	case ipproto.TCP, ipproto.UDP:
		if len(l4) < 4 {
			return
		}
		sport, dport = binary.BigEndian.Uint16(l4), binary.BigEndian.Uint16(l4[2:])
	case ipproto.ICMP, ipproto.ICMPv6:
		if len(l4) < 8 || !isEcho(proto, l4[0]) {
			return
		}
		sport, dport = echoPorts(proto, l4[0], binary.BigEndian.Uint16(l4[4:]))
	default:
		return
	}
	return src, dst, proto, sport, dport, true
}
