// Package packet parses Ethernet frames for the enforcer and rewrites TCP
// segments: inserting and stripping trireme's marker option and token frame
// with incremental checksum updates, and crafting RSTs and token-ACKs.
// Parsing uses gopacket's DecodingLayerParser with preallocated layers; no
// function here allocates on well-formed input.
package packet

import (
	"encoding/binary"
	"net/netip"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/trireme-go/trireme/ipproto"
	"github.com/trireme-go/trireme/reason"
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
	// SrcPort and DstPort are the transport ports; for ICMP echo both hold
	// the echo identifier, for other ICMP messages both are 0.
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

// Parser decodes frames; one per goroutine (it holds the decoded layers).
type Parser struct {
	dlp     *gopacket.DecodingLayerParser
	eth     layers.Ethernet
	vlan    vlanStack
	arp     layers.ARP
	ip4     layers.IPv4
	ip6     layers.IPv6
	ext     ip6Extensions
	tcp     layers.TCP
	udp     layers.UDP
	icmp4   layers.ICMPv4
	icmp6   layers.ICMPv6
	decoded []gopacket.LayerType
}

// NewParser returns a parser for Ethernet frames.
func NewParser() *Parser {
	p := &Parser{decoded: make([]gopacket.LayerType, 0, 16)}
	p.ext.ip6 = &p.ip6
	p.dlp = gopacket.NewDecodingLayerParser(layers.LayerTypeEthernet,
		&p.eth, &p.vlan, &p.arp, &p.ip4, &p.ip6, &p.ext, &p.tcp, &p.udp, &p.icmp4, &p.icmp6)
	p.dlp.IgnoreUnsupported = true
	return p
}

func offset(frame, sub []byte) int { return cap(frame) - cap(sub) }

// Parse decodes frame into pkt. It returns reason.None, reason.Malformed
// (truncated or inconsistent headers) or reason.Unsupported (a link or
// network protocol the enforcer does not handle). It never panics.
func (ps *Parser) Parse(frame []byte, pkt *Packet) reason.Code {
	*pkt = Packet{Frame: frame}
	ps.vlan.reset()
	ps.ext.reset()
	err := ps.dlp.DecodeLayers(frame, &ps.decoded)
	if err != nil {
		return reason.Malformed
	}
	// gopacket's IPv6 layer marks every packet with a hop-by-hop header as
	// truncated (it compares the payload length, which counts that header,
	// with the payload after it): MLD reports and any IPv6 packet with a
	// router alert. The length checks below decide for IPv6 instead.
	truncated := ps.dlp.Truncated && !(len(ps.decoded) > 1 && ps.ip6.HopByHop != nil && ps.hasLayer(layers.LayerTypeIPv6))
	if truncated {
		return reason.Malformed
	}
	if len(ps.decoded) == 0 {
		return reason.Malformed
	}
	pkt.VLAN = ps.vlan.ids
	if ps.vlan.tooMany {
		return reason.Unsupported
	}
	var l3 gopacket.LayerType
	for _, t := range ps.decoded {
		switch t {
		case layers.LayerTypeARP:
			pkt.ARP = true
			return reason.None
		case layers.LayerTypeIPv4:
			l3 = t
			ip := &ps.ip4
			pkt.L3 = offset(frame, ip.Contents)
			if ip.Version != 4 {
				return reason.Malformed
			}
			total := int(binary.BigEndian.Uint16(frame[pkt.L3+2:]))
			if total < len(ip.Contents) || pkt.L3+total > len(frame) {
				return reason.Malformed
			}
			pkt.End = pkt.L3 + total
			pkt.L4 = pkt.L3 + len(ip.Contents)
			pkt.Src = netip.AddrFrom4([4]byte(ip.SrcIP))
			pkt.Dst = netip.AddrFrom4([4]byte(ip.DstIP))
			pkt.Proto = ipproto.Proto(ip.Protocol)
			pkt.FragID = uint32(ip.Id)
			pkt.FragOff = int(ip.FragOffset) * 8
			if ip.FragOffset != 0 {
				pkt.Frag = LaterFragment
			} else if ip.Flags&layers.IPv4MoreFragments != 0 {
				pkt.Frag = FirstFragment
			}
		case layers.LayerTypeIPv6:
			l3 = t
			ip := &ps.ip6
			pkt.IPv6 = true
			pkt.L3 = offset(frame, ip.Contents)
			if ip.Version != 6 {
				return reason.Malformed
			}
			plen := int(binary.BigEndian.Uint16(frame[pkt.L3+4:]))
			if plen == 0 || pkt.L3+40+plen > len(frame) { // jumbograms are not supported
				return reason.Malformed
			}
			pkt.End = pkt.L3 + 40 + plen
			pkt.L4 = pkt.L3 + 40
			if ip.HopByHop != nil {
				pkt.L4 += len(ip.HopByHop.Contents)
			}
			pkt.Src = netip.AddrFrom16([16]byte(ip.SrcIP))
			pkt.Dst = netip.AddrFrom16([16]byte(ip.DstIP))
			pkt.Proto = ipproto.Proto(ip.NextHeader)
			if ip.HopByHop != nil {
				pkt.Proto = ipproto.Proto(ip.HopByHop.NextHeader)
			}
		case layers.LayerTypeIPv6HopByHop, layers.LayerTypeIPv6Routing,
			layers.LayerTypeIPv6Fragment, layers.LayerTypeIPv6Destination:
			// the parser records the type it dispatched for, not ours
			if ps.ext.bad {
				return reason.Malformed
			}
			pkt.L4 = offset(frame, ps.ext.Payload)
			pkt.Proto = ipproto.Proto(ps.ext.next)
			pkt.Frag = ps.ext.frag
			pkt.FragID = ps.ext.fragID
			pkt.FragOff = ps.ext.fragOff
		}
	}
	if l3 == 0 {
		next := ps.eth.EthernetType
		if ps.decoded[len(ps.decoded)-1] == layers.LayerTypeDot1Q {
			next = ps.vlan.next
		}
		switch next {
		case layers.EthernetTypeIPv4, layers.EthernetTypeIPv6, layers.EthernetTypeARP,
			layers.EthernetTypeDot1Q, layers.EthernetTypeQinQ:
			return reason.Malformed // a protocol we parse, but its header is missing
		}
		return reason.Unsupported // neither IP nor ARP
	}
	if pkt.L4 > pkt.End {
		return reason.Malformed
	}
	return ps.transport(pkt)
}

func (ps *Parser) hasLayer(t gopacket.LayerType) bool {
	for _, d := range ps.decoded {
		if d == t {
			return true
		}
	}
	return false
}

// transport fills the transport fields from the raw bytes: the layers
// decoded above validated them for complete packets; first fragments are
// read by hand (gopacket stops at a fragment).
func (ps *Parser) transport(pkt *Packet) reason.Code {
	b := pkt.Frame[pkt.L4:pkt.End]
	pkt.Payload = pkt.End
	if pkt.Frag == LaterFragment {
		pkt.Payload = pkt.L4
		return reason.None
	}
	switch pkt.Proto {
	case ipproto.TCP:
		if len(b) < 20 {
			return reason.Malformed
		}
		hl := int(b[12]>>4) * 4
		if hl < 20 || hl > len(b) {
			return reason.Malformed
		}
		if pkt.Frag == NotFragment && !ps.decodedTCP() {
			return reason.Malformed
		}
		pkt.SrcPort = binary.BigEndian.Uint16(b[0:])
		pkt.DstPort = binary.BigEndian.Uint16(b[2:])
		pkt.Seq = binary.BigEndian.Uint32(b[4:])
		pkt.Ack = binary.BigEndian.Uint32(b[8:])
		pkt.Flags = b[13]
		pkt.Window = binary.BigEndian.Uint16(b[14:])
		pkt.Payload = pkt.L4 + hl
	case ipproto.UDP:
		if len(b) < 8 {
			return reason.Malformed
		}
		pkt.SrcPort = binary.BigEndian.Uint16(b[0:])
		pkt.DstPort = binary.BigEndian.Uint16(b[2:])
		pkt.Payload = pkt.L4 + 8
	case ipproto.ICMP, ipproto.ICMPv6:
		if len(b) < 4 {
			return reason.Malformed
		}
		pkt.ICMPType, pkt.ICMPCode = b[0], b[1]
		pkt.Payload = pkt.L4 + 4
		if isEcho(pkt.Proto, pkt.ICMPType) {
			if len(b) < 8 {
				return reason.Malformed
			}
			id := binary.BigEndian.Uint16(b[4:])
			pkt.SrcPort, pkt.DstPort = id, id
			pkt.Payload = pkt.L4 + 8
		}
	default:
		pkt.Payload = pkt.L4
	}
	return reason.None
}

func (ps *Parser) decodedTCP() bool {
	for _, t := range ps.decoded {
		if t == layers.LayerTypeTCP {
			return true
		}
	}
	return false
}

func isEcho(proto ipproto.Proto, typ uint8) bool {
	if proto == ipproto.ICMP {
		return typ == 8 || typ == 0
	}
	return typ == 128 || typ == 129
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
		id := binary.BigEndian.Uint16(l4[4:])
		sport, dport = id, id
	default:
		return
	}
	return src, dst, proto, sport, dport, true
}
