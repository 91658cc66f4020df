package packet

import (
	"encoding/binary"
	"net/netip"

	"github.com/trireme-go/trireme/ipproto"
)

// ParseFast reads the flow fields of the common frame shapes by hand:
// Ethernet with at most two VLAN tags, IPv4 without options... or
// fragmentation, or IPv6 without extension headers, carrying TCP or UDP. It
// is the established-flow fast path's parser: it checks every length it
// relies on, and returns false for anything else (the caller then runs
// Parse, the full decoder). It does not set Payload or End for UDP beyond
// what the header says, and never looks at TCP options.
func ParseFast(frame []byte, pkt *Packet) bool {
	if len(frame) < 14 {
		return false
	}
	off := 12
	var vlan [2]uint16
	nv := 0
	et := binary.BigEndian.Uint16(frame[off:])
	for et == 0x8100 || et == 0x88a8 {
		if nv == 2 || len(frame) < off+6 {
			return false
		}
		vlan[nv] = binary.BigEndian.Uint16(frame[off+2:]) & 0x0fff
		nv++
		off += 4
		et = binary.BigEndian.Uint16(frame[off:])
	}
	if vlan[0] == 0 {
		vlan[0], vlan[1] = vlan[1], 0
	}
	l3 := off + 2
	var l4, end int
	var proto ipproto.Proto
	var src, dst netip.Addr
	v6 := false
	switch et {
	case 0x0800:
		if len(frame) < l3+20 || frame[l3] != 0x45 {
			return false // options or not IPv4: full parser
		}
		total := int(binary.BigEndian.Uint16(frame[l3+2:]))
		if total < 20 || l3+total > len(frame) {
			return false
		}
		if binary.BigEndian.Uint16(frame[l3+6:])&0x3fff != 0 { // MF or offset
			return false
		}
		proto = ipproto.Proto(frame[l3+9])
		src = netip.AddrFrom4([4]byte(frame[l3+12 : l3+16]))
		dst = netip.AddrFrom4([4]byte(frame[l3+16 : l3+20]))
		l4, end = l3+20, l3+total
	case 0x86dd:
		if len(frame) < l3+40 || frame[l3]>>4 != 6 {
			return false
		}
		plen := int(binary.BigEndian.Uint16(frame[l3+4:]))
		if plen == 0 || l3+40+plen > len(frame) {
			return false
		}
		proto = ipproto.Proto(frame[l3+6])
		src = netip.AddrFrom16([16]byte(frame[l3+8 : l3+24]))
		dst = netip.AddrFrom16([16]byte(frame[l3+24 : l3+40]))
		l4, end, v6 = l3+40, l3+40+plen, true
	default:
		return false
	}
	seg := frame[l4:end]
	switch proto {
	case ipproto.TCP:
		if len(seg) < 20 {
			return false
		}
		hl := int(seg[12]>>4) * 4
		if hl < 20 || hl > len(seg) {
			return false
		}
		*pkt = Packet{Frame: frame, L3: l3, L4: l4, Payload: l4 + hl, End: end, IPv6: v6, VLAN: vlan,
			Src: src, Dst: dst, Proto: proto,
			SrcPort: binary.BigEndian.Uint16(seg), DstPort: binary.BigEndian.Uint16(seg[2:]),
			Flags: seg[13], Seq: binary.BigEndian.Uint32(seg[4:]), Ack: binary.BigEndian.Uint32(seg[8:]),
			Window: binary.BigEndian.Uint16(seg[14:])}
	case ipproto.UDP:
		if len(seg) < 8 {
			return false
		}
		*pkt = Packet{Frame: frame, L3: l3, L4: l4, Payload: l4 + 8, End: end, IPv6: v6, VLAN: vlan,
			Src: src, Dst: dst, Proto: proto,
			SrcPort: binary.BigEndian.Uint16(seg), DstPort: binary.BigEndian.Uint16(seg[2:])}
	default:
		return false
	}
	return true
}
