package packet

import (
	"encoding/binary"

	"github.com/trireme-go/trireme/ipproto"
)

// BuildUDP appends to dst a frame carrying a UDP datagram with payload in
// the flow of the template packet tmpl (the other way when reverse:
// addresses, ports and MACs swapped), on its link-layer header (VLAN tags
// included). IP options and IPv6 extension headers are not copied;
// TTL/hop limit is 64. Checksums are computed in full.
func BuildUDP(dst []byte, tmpl *Packet, reverse bool, payload []byte) []byte {
	f := tmpl.Frame
	start := len(dst)
	dst = append(dst, f[:tmpl.L3]...)
	if reverse && tmpl.L3 >= 12 {
		l2 := dst[start:]
		var tmp [6]byte
		copy(tmp[:], l2[0:6])
		copy(l2[0:6], l2[6:12])
		copy(l2[6:12], tmp[:])
	}
	src, dstAddr := tmpl.Src, tmpl.Dst
	sport, dport := tmpl.SrcPort, tmpl.DstPort
	if reverse {
		src, dstAddr = dstAddr, src
		sport, dport = dport, sport
	}
	udpLen := 8 + len(payload)
	var ph uint32
	dst, ph = appendIPHeader(dst, tmpl.IPv6, src, dstAddr, ipproto.UDP, udpLen)
	l4 := len(dst)
	var u [8]byte
	binary.BigEndian.PutUint16(u[0:], sport)
	binary.BigEndian.PutUint16(u[2:], dport)
	binary.BigEndian.PutUint16(u[4:], uint16(udpLen))
	dst = append(dst, u[:]...)
	dst = append(dst, payload...)
	ph += uint32(ipproto.UDP) + lenWords(uint32(udpLen))
	c := Checksum(ph, dst[l4:])
	if c == 0 {
		c = 0xffff // RFC 768: zero means no checksum
	}
	binary.BigEndian.PutUint16(dst[l4+6:], c)
	return dst
}

// UDPPayload returns the payload of a decoded, unfragmented UDP packet as
// its UDP length says (bytes after it in the IP packet are not part of
// it); nil otherwise.
func (p *Packet) UDPPayload() []byte {
	if p.Proto != ipproto.UDP || p.Frag != NotFragment || p.Payload > p.End || p.L4+8 > p.End {
		return nil
	}
	end := p.End
	if ul := int(binary.BigEndian.Uint16(p.Frame[p.L4+4:])); ul >= 8 && p.L4+ul < end {
		end = p.L4 + ul
	}
	return p.Frame[p.Payload:end]
}

// BuildUnreachable appends to dst an ICMP "destination unreachable,
// communication administratively prohibited" (IPv4 type 3 code 13, ICMPv6
// type 1 code 1) answering the packet tmpl, as its destination would send
// it: toward tmpl's sender (MACs swapped), quoting tmpl's IP packet (at most
// 512 bytes of it, within the 576/1280 bytes an ICMP error may take). A
// connected UDP socket that sent tmpl sees the error at once (EHOSTUNREACH
// on Linux, EACCES for ICMPv6), as a TCP client sees a RST.
func BuildUnreachable(dst []byte, tmpl *Packet) []byte {
	f := tmpl.Frame
	start := len(dst)
	dst = append(dst, f[:tmpl.L3]...)
	if tmpl.L3 >= 12 {
		l2 := dst[start:]
		var tmp [6]byte
		copy(tmp[:], l2[0:6])
		copy(l2[0:6], l2[6:12])
		copy(l2[6:12], tmp[:])
	}
	quote := f[tmpl.L3:tmpl.End]
	if len(quote) > 512 {
		quote = quote[:512]
	}
	icmpLen := 8 + len(quote)
	src, to := tmpl.Dst, tmpl.Src
	var ph uint32
	proto := ipproto.ICMP
	if tmpl.IPv6 {
		proto = ipproto.ICMPv6
		var h [40]byte
		h[0] = 0x60
		binary.BigEndian.PutUint16(h[4:], uint16(icmpLen))
		h[6] = byte(proto)
		h[7] = 64
		a, b := src.As16(), to.As16()
		copy(h[8:24], a[:])
		copy(h[24:40], b[:])
		dst = append(dst, h[:]...)
		ph = sum(sum(0, a[:]), b[:]) + uint32(proto) + lenWords(uint32(icmpLen))
	} else {
		var h [20]byte
		h[0] = 0x45
		binary.BigEndian.PutUint16(h[2:], uint16(20+icmpLen))
		h[8] = 64
		h[9] = byte(proto)
		a, b := src.As4(), to.As4()
		copy(h[12:16], a[:])
		copy(h[16:20], b[:])
		binary.BigEndian.PutUint16(h[10:], Checksum(0, h[:]))
		dst = append(dst, h[:]...)
	}
	l4 := len(dst)
	if tmpl.IPv6 {
		dst = append(dst, 1, 1, 0, 0, 0, 0, 0, 0)
	} else {
		dst = append(dst, 3, 13, 0, 0, 0, 0, 0, 0)
	}
	dst = append(dst, quote...)
	binary.BigEndian.PutUint16(dst[l4+2:], Checksum(ph, dst[l4:]))
	return dst
}

// AdministrativelyProhibited reports whether p is an ICMP "destination
// unreachable, communication administratively prohibited" (IPv4 type 3
// code 13, ICMPv6 type 1 code 1): what BuildUnreachable makes.
func (p *Packet) AdministrativelyProhibited() bool {
	if p.IPv6 {
		return p.Proto == ipproto.ICMPv6 && p.ICMPType == 1 && p.ICMPCode == 1
	}
	return p.Proto == ipproto.ICMP && p.ICMPType == 3 && p.ICMPCode == 13
}
