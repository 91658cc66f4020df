package packet

import (
	"encoding/binary"

	"github.com/trireme-go/trireme/ipproto"
	"github.com/trireme-go/trireme/reason"
)

// MaxTCPOptions is the room for options in a TCP header (60 - 20 bytes).
const MaxTCPOptions = 40

// Ones'-complement arithmetic (RFC 1071/1624). Sums are kept in uint32 and
// folded to 16 bits at the end.

// sum adds the bytes of b to s as big-endian 16-bit words, b starting at an
// even offset of the checksummed data (an odd tail is padded with zero).
func sum(s uint32, b []byte) uint32 {
	for len(b) >= 8 {
		s += uint32(binary.BigEndian.Uint16(b)) + uint32(binary.BigEndian.Uint16(b[2:])) +
			uint32(binary.BigEndian.Uint16(b[4:])) + uint32(binary.BigEndian.Uint16(b[6:]))
		b = b[8:]
		s = (s & 0xffff) + (s >> 16)
	}
	for len(b) >= 2 {
		s += uint32(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		s += uint32(b[0]) << 8
	}
	return s
}

func fold(s uint32) uint16 {
	for s > 0xffff {
		s = (s & 0xffff) + (s >> 16)
	}
	return uint16(s)
}

func swap16(v uint16) uint16 { return v<<8 | v>>8 }

// update applies RFC 1624 eqn. 3 to a stored checksum: HC' = ~(~HC + add - sub)
// where add and sub are folded ones'-complement sums of the new and removed
// contributions.
func update(hc uint16, add, sub uint16) uint16 {
	s := uint32(^hc) + uint32(add) + uint32(^sub)
	return ^fold(s)
}

// Checksum returns the Internet checksum of b (for crafted headers).
func Checksum(initial uint32, b []byte) uint16 { return ^fold(sum(initial, b)) }

// pseudoHeader returns the folded sum of the TCP/UDP pseudo-header without
// its length field (addresses and protocol).
func pseudoHeader(p *Packet) uint32 {
	var s uint32
	if p.IPv6 {
		a, b := p.Src.As16(), p.Dst.As16()
		s = sum(sum(0, a[:]), b[:])
	} else {
		a, b := p.Src.As4(), p.Dst.As4()
		s = sum(sum(0, a[:]), b[:])
	}
	return s + uint32(p.Proto)
}

// FindOption returns the offset in p.Frame of the 4-byte TCP option equal
// to marker, walking the options until EOL; ok is false when absent or when
// the option list is malformed.
func FindOption(p *Packet, marker [4]byte) (off int, ok bool) {
	if p.Proto != ipproto.TCP || p.Frag != NotFragment {
		return 0, false
	}
	b := p.Frame[p.L4+20 : p.Payload]
	for i := 0; i < len(b); {
		switch b[i] {
		case 0: // EOL
			return 0, false
		case 1: // NOP
			i++
			continue
		}
		if i+1 >= len(b) || b[i+1] < 2 || i+int(b[i+1]) > len(b) {
			return 0, false
		}
		if b[i+1] == 4 && [4]byte(b[i:i+4]) == marker {
			return p.L4 + 20 + i, true
		}
		i += int(b[i+1])
	}
	return 0, false
}

// InsertToken appends to dst a copy of the TCP segment in p with marker
// added as the first TCP option and token put at the start of the payload
// (before any data, e.g. TCP Fast Open data). IP length, IPv4 header
// checksum, TCP data offset and TCP checksum are updated incrementally from
// their original values, so StripToken restores the original frame byte for
// byte, wrong checksums included. mtu bounds the new IP packet (0: no
// bound). p is not modified.
func InsertToken(dst []byte, p *Packet, marker [4]byte, token []byte, mtu int) ([]byte, reason.Code) {
	if p.Proto != ipproto.TCP || p.Frag != NotFragment {
		return dst, reason.Unsupported
	}
	f := p.Frame
	optLen := p.Payload - p.L4 - 20
	if optLen+4 > MaxTCPOptions {
		return dst, reason.NoRoomForToken
	}
	grow := 4 + len(token)
	ipLen := p.End - p.L3
	if mtu > 0 && ipLen+grow > mtu {
		return dst, reason.NoRoomForToken
	}
	if p.IPv6 && p.End-p.L3-40+grow > 0xffff || !p.IPv6 && ipLen+grow > 0xffff {
		return dst, reason.NoRoomForToken
	}
	start := len(dst)
	dst = append(dst, f[:p.L4+20]...)
	dst = append(dst, marker[:]...)
	dst = append(dst, f[p.L4+20:p.Payload]...)
	dst = append(dst, token...)
	dst = append(dst, f[p.Payload:]...)
	out := dst[start:]
	adjustLengths(out, p, grow)
	// TCP header word 6 (data offset, flags).
	l4 := p.L4
	oldWord := binary.BigEndian.Uint16(out[l4+12:])
	out[l4+12] += 1 << 4 // data offset: +4 bytes
	newWord := binary.BigEndian.Uint16(out[l4+12:])
	segLen := uint32(p.End - p.L4)
	add := sum(0, marker[:]) + sum(0, token) + uint32(newWord) + lenWords(segLen+uint32(grow))
	sub := uint32(oldWord) + lenWords(segLen)
	if len(token)%2 == 1 {
		// The payload moved by an odd number of bytes: its words swap halves.
		d := fold(sum(0, f[p.Payload:p.End]))
		add += uint32(swap16(d))
		sub += uint32(d)
	}
	ck := binary.BigEndian.Uint16(out[l4+16:])
	binary.BigEndian.PutUint16(out[l4+16:], update(ck, fold(add), fold(sub)))
	return dst, reason.None
}

// lenWords is the contribution of a 32-bit length to a ones'-complement sum
// (the TCP length is 16 bits in the IPv4 pseudo-header and 32 in IPv6's;
// the sum is the same).
func lenWords(n uint32) uint32 { return n>>16 + n&0xffff }

// adjustLengths adds grow (may be negative) to the IP length field of the
// frame laid out as p, updating the IPv4 header checksum incrementally.
func adjustLengths(out []byte, p *Packet, grow int) {
	l3 := p.L3
	if p.IPv6 {
		old := binary.BigEndian.Uint16(out[l3+4:])
		binary.BigEndian.PutUint16(out[l3+4:], uint16(int(old)+grow))
		return
	}
	old := binary.BigEndian.Uint16(out[l3+2:])
	nw := uint16(int(old) + grow)
	binary.BigEndian.PutUint16(out[l3+2:], nw)
	ck := binary.BigEndian.Uint16(out[l3+10:])
	binary.BigEndian.PutUint16(out[l3+10:], update(ck, nw, old))
}

// StripToken removes, in place, the 4-byte option at optOff (from
// FindOption) and the first tokenLen bytes of the payload, undoing
// InsertToken. It returns the shortened frame and updates p to describe it.
func StripToken(p *Packet, optOff, tokenLen int) ([]byte, reason.Code) {
	f := p.Frame
	if p.Proto != ipproto.TCP || optOff < p.L4+20 || optOff+4 > p.Payload || tokenLen < 0 || tokenLen > p.End-p.Payload {
		return f, reason.Malformed
	}
	l4 := p.L4
	var marker [4]byte
	copy(marker[:], f[optOff:optOff+4])
	token := f[p.Payload : p.Payload+tokenLen]
	segLen := uint32(p.End - p.L4)
	shrink := 4 + tokenLen
	oldWord := binary.BigEndian.Uint16(f[l4+12:])
	newWord := oldWord - 1<<12 // data offset: -4 bytes
	// A peer may put the marker at an odd offset (after a NOP): its bytes
	// then count with swapped halves. Removing 4 bytes keeps the parity of
	// everything after it.
	m := fold(sum(0, marker[:]))
	if (optOff-l4)%2 == 1 {
		m = swap16(m)
	}
	sub := uint32(m) + sum(0, token) + uint32(oldWord) + lenWords(segLen)
	add := uint32(newWord) + lenWords(segLen-uint32(shrink))
	if tokenLen%2 == 1 {
		// The data after the token sits at an odd offset now and at an even
		// one after the strip.
		d := fold(sum(0, f[p.Payload+tokenLen:p.End]))
		add += uint32(d)
		sub += uint32(swap16(d))
	}
	ck := binary.BigEndian.Uint16(f[l4+16:])
	binary.BigEndian.PutUint16(f[l4+16:], update(ck, fold(add), fold(sub)))
	binary.BigEndian.PutUint16(f[l4+12:], newWord)
	// Move: [optOff+4, Payload) left by 4; [Payload+tokenLen, len) left by shrink.
	n := copy(f[optOff:], f[optOff+4:p.Payload])
	copy(f[optOff+n:], f[p.Payload+tokenLen:])
	f = f[:len(f)-shrink]
	adjustLengths(f, p, -shrink)
	p.Frame = f
	p.Payload -= 4
	p.End -= shrink
	return f, reason.None
}
