package packet

// The gopacket-based parser the enforcer used before Packet.Decode: kept
// here as the reference of the differential tests (decode_test.go).

import (
	"encoding/binary"
	"net/netip"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/trireme-go/trireme/ipproto"
	"github.com/trireme-go/trireme/reason"
)

// refParser decodes frames; one per goroutine (it holds the decoded layers).
type refParser struct {
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

// newRefParser returns a parser for Ethernet frames.
func newRefParser() *refParser {
	p := &refParser{decoded: make([]gopacket.LayerType, 0, 16)}
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
func (ps *refParser) Parse(frame []byte, pkt *Packet) reason.Code {
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

func (ps *refParser) hasLayer(t gopacket.LayerType) bool {
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
func (ps *refParser) transport(pkt *Packet) reason.Code {
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
			pkt.SrcPort, pkt.DstPort = 0, id // a reply: the requester's side holds the id
			if pkt.Proto == ipproto.ICMP && pkt.ICMPType == 8 || pkt.Proto == ipproto.ICMPv6 && pkt.ICMPType == 128 {
				pkt.SrcPort, pkt.DstPort = id, 0
			}
			pkt.Payload = pkt.L4 + 8
		}
	default:
		pkt.Payload = pkt.L4
	}
	return reason.None
}

func (ps *refParser) decodedTCP() bool {
	for _, t := range ps.decoded {
		if t == layers.LayerTypeTCP {
			return true
		}
	}
	return false
}
