package packet

import (
	"encoding/binary"
	"net/netip"

	"github.com/trireme-go/trireme/ipproto"
)

// Segment describes a TCP segment to craft in the flow of a parsed packet.
type Segment struct {
	// Reverse sends the segment the other way (addresses, ports and MACs
	// swapped); otherwise it goes the same way as the template packet.
	Reverse  bool
	Flags    uint8
	Seq, Ack uint32
	Window   uint16
	// Options are the TCP options (a multiple of 4 bytes, at most 40).
	Options []byte
	Payload []byte
}

// BuildTCP appends to dst a frame carrying seg, built on the link-layer
// header (VLAN tags included) and addresses of the template packet tmpl. IP
// options and IPv6 extension headers are not copied; TTL/hop limit is 64.
// Checksums are computed in full.
func BuildTCP(dst []byte, tmpl *Packet, seg *Segment) []byte {
	f := tmpl.Frame
	start := len(dst)
	dst = append(dst, f[:tmpl.L3]...)
	if seg.Reverse && tmpl.L3 >= 12 {
		l2 := dst[start:]
		var tmp [6]byte
		copy(tmp[:], l2[0:6])
		copy(l2[0:6], l2[6:12])
		copy(l2[6:12], tmp[:])
	}
	src, dstAddr := tmpl.Src, tmpl.Dst
	sport, dport := tmpl.SrcPort, tmpl.DstPort
	if seg.Reverse {
		src, dstAddr = dstAddr, src
		sport, dport = dport, sport
	}
	tcpLen := 20 + len(seg.Options) + len(seg.Payload)
	var ph uint32
	dst, ph = appendIPHeader(dst, tmpl.IPv6, src, dstAddr, ipproto.TCP, tcpLen)
	l4 := len(dst)
	var t [20]byte
	binary.BigEndian.PutUint16(t[0:], sport)
	binary.BigEndian.PutUint16(t[2:], dport)
	binary.BigEndian.PutUint32(t[4:], seg.Seq)
	binary.BigEndian.PutUint32(t[8:], seg.Ack)
	t[12] = byte((20+len(seg.Options))/4) << 4
	t[13] = seg.Flags
	binary.BigEndian.PutUint16(t[14:], seg.Window)
	dst = append(dst, t[:]...)
	dst = append(dst, seg.Options...)
	dst = append(dst, seg.Payload...)
	ph += uint32(ipproto.TCP) + lenWords(uint32(tcpLen))
	binary.BigEndian.PutUint16(dst[l4+16:], Checksum(ph, dst[l4:]))
	return dst
}

// VerifyTCPChecksum reports whether the TCP checksum of p is correct (tests
// and diagnostics; the enforcer itself never drops on checksums, the
// receiving kernel does).
func VerifyTCPChecksum(p *Packet) bool {
	s := pseudoHeader(p) + lenWords(uint32(p.End-p.L4))
	return fold(sum(s, p.Frame[p.L4:p.End])) == 0xffff
}

// VerifyIPv4Checksum reports whether the IPv4 header checksum of p is correct.
func VerifyIPv4Checksum(p *Packet) bool {
	return p.IPv6 || fold(sum(0, p.Frame[p.L3:p.L4])) == 0xffff
}

// appendIPHeader appends an IPv4 (DF, TTL 64, checksummed) or IPv6 (hop
// limit 64) header from src to dst carrying l4Len bytes of proto, and
// returns the frame and the pseudo-header's address sum for the transport
// checksum.
func appendIPHeader(frame []byte, v6 bool, src, dst netip.Addr, proto ipproto.Proto, l4Len int) ([]byte, uint32) {
	if v6 {
		var h [40]byte
		h[0] = 0x60
		binary.BigEndian.PutUint16(h[4:], uint16(l4Len))
		h[6] = byte(proto)
		h[7] = 64
		a, b := src.As16(), dst.As16()
		copy(h[8:24], a[:])
		copy(h[24:40], b[:])
		return append(frame, h[:]...), sum(sum(0, a[:]), b[:])
	}
	var h [20]byte
	h[0] = 0x45
	binary.BigEndian.PutUint16(h[2:], uint16(20+l4Len))
	h[6] = 0x40 // DF
	h[8] = 64
	h[9] = byte(proto)
	a, b := src.As4(), dst.As4()
	copy(h[12:16], a[:])
	copy(h[16:20], b[:])
	binary.BigEndian.PutUint16(h[10:], Checksum(0, h[:]))
	return append(frame, h[:]...), sum(sum(0, a[:]), b[:])
}
