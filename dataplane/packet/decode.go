package packet

import (
	"encoding/binary"
	"net/netip"

	"github.com/trireme-go/trireme/ipproto"
	"github.com/trireme-go/trireme/reason"
)

// EtherTypes the decoder reads.
const (
	etherIPv4     = 0x0800
	etherARP      = 0x0806
	etherIPv6     = 0x86dd
	etherVLAN     = 0x8100 // 802.1Q
	etherQinQ     = 0x88a8 // 802.1ad
	etherVLAN9100 = 0x9100 // old QinQ, accepted as an inner tag
)

// IPv6 extension headers the decoder walks.
const (
	ip6HopByHop    = 0
	ip6Routing     = 43
	ip6Fragment    = 44
	ip6DestOptions = 60
)

// ip6OptJumbo is the jumbo payload option (RFC 2675): not supported.
const ip6OptJumbo = 0xc2

// Decode reads frame into p: link layer (at most two VLAN tags), IPv4 or
// IPv6 (extension headers walked, fragments recognized) or ARP, and the
// transport header of TCP, UDP and ICMP. It returns reason.None,
// reason.Malformed (a header truncated, inconsistent or announced but
// missing) or reason.Unsupported (a link or network protocol the enforcer
// does not handle: neither IP nor ARP, more than two VLAN tags). It checks
// every length it relies on, never panics and never allocates; p.Frame is
// frame and every offset of p indexes it.
//
// What it accepts is what the gopacket decoder it replaced accepted (the
// differential tests in decode_test.go hold it to that), except where that
// one was wrong: it reads only the outer header of IP-in-IP packets (the
// old decoder took the inner addresses for the packet's), it does not walk
// IPv6 extension headers behind an IPv4 header, and it calls a header that
// is announced but missing malformed.
func (p *Packet) Decode(frame []byte) reason.Code {
	*p = Packet{Frame: frame}
	if len(frame) < 14 {
		return reason.Malformed
	}
	off := 12
	et := binary.BigEndian.Uint16(frame[off:])
	if et < 0x0600 && int(et) > len(frame)-14 {
		return reason.Malformed // 802.3: a length longer than the frame
	}
	if et == etherVLAN || et == etherQinQ {
		n := 0
		for et == etherVLAN || et == etherQinQ || et == etherVLAN9100 {
			if len(frame) < off+6 {
				return reason.Malformed
			}
			if n < 2 {
				p.VLAN[n] = binary.BigEndian.Uint16(frame[off+2:]) & 0x0fff
			}
			n++
			off += 4
			et = binary.BigEndian.Uint16(frame[off:])
		}
		// A priority-only tag (VID 0) carries no VLAN: a VID-0 frame and
		// an untagged one are the same flow.
		if p.VLAN[0] == 0 {
			p.VLAN[0], p.VLAN[1] = p.VLAN[1], 0
		}
		if n > 2 {
			return reason.Unsupported
		}
	}
	l3 := off + 2
	switch et {
	case etherIPv4:
		return p.decodeIPv4(frame, l3)
	case etherIPv6:
		return p.decodeIPv6(frame, l3)
	case etherARP:
		b := frame[l3:]
		if len(b) < 8 || len(b) < 8+2*int(b[4])+2*int(b[5]) {
			return reason.Malformed
		}
		p.ARP = true
		return reason.None
	}
	return reason.Unsupported
}

func (p *Packet) decodeIPv4(frame []byte, l3 int) reason.Code {
	b := frame[l3:]
	if len(b) < 20 || b[0]>>4 != 4 {
		return reason.Malformed
	}
	hl := int(b[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(b[2:]))
	if hl < 20 || total < hl || total > len(b) {
		return reason.Malformed
	}
	if hl > 20 && !ip4OptionsValid(b[20:hl]) {
		return reason.Malformed
	}
	p.L3, p.L4, p.End = l3, l3+hl, l3+total
	p.Src = netip.AddrFrom4([4]byte(b[12:16]))
	p.Dst = netip.AddrFrom4([4]byte(b[16:20]))
	p.Proto = ipproto.Proto(b[9])
	p.FragID = uint32(binary.BigEndian.Uint16(b[4:]))
	ff := binary.BigEndian.Uint16(b[6:])
	p.FragOff = int(ff&0x1fff) * 8
	if ff&0x1fff != 0 {
		p.Frag = LaterFragment
	} else if ff&0x2000 != 0 {
		p.Frag = FirstFragment
	}
	return p.decodeTransport()
}

// ip4OptionsValid checks the IPv4 option list: each option fits, and
// options other than EOL and NOP are longer than 2 bytes.
func ip4OptionsValid(b []byte) bool {
	for i := 0; i < len(b); {
		switch b[i] {
		case 0:
			return true
		case 1:
			i++
			continue
		}
		if i+1 >= len(b) || int(b[i+1]) > len(b)-i || b[i+1] <= 2 {
			return false
		}
		i += int(b[i+1])
	}
	return true
}

func (p *Packet) decodeIPv6(frame []byte, l3 int) reason.Code {
	b := frame[l3:]
	if len(b) < 40 || b[0]>>4 != 6 {
		return reason.Malformed
	}
	plen := int(binary.BigEndian.Uint16(b[4:]))
	if plen == 0 || 40+plen > len(b) { // jumbograms are not supported
		return reason.Malformed
	}
	p.IPv6 = true
	p.L3, p.L4, p.End = l3, l3+40, l3+40+plen
	p.Src = netip.AddrFrom16([16]byte(b[8:24]))
	p.Dst = netip.AddrFrom16([16]byte(b[24:40]))
	next := b[6]
	if next == ip6HopByHop {
		// Hop-by-hop options belong to the IPv6 header (routers read them).
		h := frame[p.L4:p.End]
		if len(h) < 8 || len(h) < (int(h[1])+1)*8 {
			return reason.Malformed
		}
		n := (int(h[1]) + 1) * 8
		if !ip6OptionsValid(h[2:n]) {
			return reason.Malformed
		}
		next = h[0]
		p.L4 += n
	}
	// Further extension headers: routing, destination options, fragment.
	// Each is followed by at least 8 bytes (a header or transport data).
	ext := false
	for next == ip6HopByHop || next == ip6Routing || next == ip6DestOptions || next == ip6Fragment {
		h := frame[p.L4:p.End]
		if len(h) < 8 {
			return reason.Malformed
		}
		ext = true
		n := (int(h[1]) + 1) * 8
		if next == ip6Fragment {
			n = 8
			off := binary.BigEndian.Uint16(h[2:]) >> 3
			p.FragID = binary.BigEndian.Uint32(h[4:])
			p.FragOff = int(off) * 8
			if off != 0 {
				p.Frag = LaterFragment
			} else if h[3]&1 != 0 {
				p.Frag = FirstFragment
			}
		}
		if len(h) < n {
			return reason.Malformed
		}
		next = h[0]
		p.L4 += n
		if p.Frag != NotFragment {
			break // a fragment's transport header, if any, is read as is
		}
	}
	if ext && p.Frag == NotFragment && p.End-p.L4 < 8 {
		return reason.Malformed
	}
	p.Proto = ipproto.Proto(next)
	return p.decodeTransport()
}

// ip6OptionsValid checks the TLV options of a hop-by-hop header: each fits,
// and none is a jumbo payload option.
func ip6OptionsValid(b []byte) bool {
	for i := 0; i < len(b); {
		if b[i] == 0 { // Pad1
			i++
			continue
		}
		if i+1 >= len(b) || int(b[i+1])+2 > len(b)-i || b[i] == ip6OptJumbo {
			return false
		}
		i += int(b[i+1]) + 2
	}
	return true
}

// decodeTransport reads the transport header between p.L4 and p.End. A
// whole packet's header is checked in full (TCP options, UDP length); a
// first fragment's only for the fields read; a later fragment has none.
func (p *Packet) decodeTransport() reason.Code {
	p.Payload = p.End
	if p.Frag == LaterFragment {
		p.Payload = p.L4
		return reason.None
	}
	b := p.Frame[p.L4:p.End]
	whole := p.Frag == NotFragment
	switch p.Proto {
	case ipproto.TCP:
		if len(b) < 20 {
			return reason.Malformed
		}
		hl := int(b[12]>>4) * 4
		if hl < 20 || hl > len(b) || whole && !tcpOptionsValid(b[20:hl]) {
			return reason.Malformed
		}
		p.SrcPort = binary.BigEndian.Uint16(b[0:])
		p.DstPort = binary.BigEndian.Uint16(b[2:])
		p.Seq = binary.BigEndian.Uint32(b[4:])
		p.Ack = binary.BigEndian.Uint32(b[8:])
		p.Flags = b[13]
		p.Window = binary.BigEndian.Uint16(b[14:])
		p.Payload = p.L4 + hl
	case ipproto.UDP:
		if len(b) < 8 {
			return reason.Malformed
		}
		if ul := int(binary.BigEndian.Uint16(b[4:])); whole && (ul != 0 && ul < 8 || ul > len(b)) {
			return reason.Malformed // 0: a jumbogram's, the IP length counts
		}
		p.SrcPort = binary.BigEndian.Uint16(b[0:])
		p.DstPort = binary.BigEndian.Uint16(b[2:])
		p.Payload = p.L4 + 8
	case ipproto.ICMP, ipproto.ICMPv6:
		if len(b) < 4 || whole && p.Proto == ipproto.ICMP && len(b) < 8 {
			return reason.Malformed
		}
		p.ICMPType, p.ICMPCode = b[0], b[1]
		p.Payload = p.L4 + 4
		if isEcho(p.Proto, p.ICMPType) {
			if len(b) < 8 {
				return reason.Malformed
			}
			p.SrcPort, p.DstPort = echoPorts(p.Proto, p.ICMPType, binary.BigEndian.Uint16(b[4:]))
			p.Payload = p.L4 + 8
		}
	default:
		p.Payload = p.L4
	}
	return reason.None
}

// tcpOptionsValid checks the TCP option list: each option fits and is at
// least 2 bytes long (EOL ends the list, NOP is one byte).
func tcpOptionsValid(b []byte) bool {
	for i := 0; i < len(b); {
		switch b[i] {
		case 0:
			return true
		case 1:
			i++
			continue
		}
		if i+1 >= len(b) || b[i+1] < 2 || int(b[i+1]) > len(b)-i {
			return false
		}
		i += int(b[i+1])
	}
	return true
}
