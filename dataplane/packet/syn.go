package packet

import (
	"encoding/binary"

	"github.com/trireme-go/trireme/ipproto"
)

// TCP option kinds the enforcer reads or rewrites on SYNs.
const (
	optEOL         = 0
	optNOP         = 1
	optWindowScale = 3
	optFastOpen    = 34  // RFC 7413
	optExperiment  = 254 // RFC 6994; TCP Fast Open's experimental form has ExID 0xF989
)

// options returns the TCP options of p (nil when p is not a whole TCP
// segment).
func options(p *Packet) []byte {
	if p.Proto != ipproto.TCP || p.Frag != NotFragment || p.Payload-p.L4 < 20 {
		return nil
	}
	return p.Frame[p.L4+20 : p.Payload]
}

// WindowScale returns the shift of the window scale option (RFC 7323) of a
// SYN or SYN-ACK, capped at 14 as the RFC says; ok is false when the option
// is absent or the option list is malformed.
func WindowScale(p *Packet) (shift uint8, ok bool) {
	b := options(p)
	for i := 0; i < len(b); {
		switch b[i] {
		case optEOL:
			return 0, false
		case optNOP:
			i++
			continue
		}
		if i+1 >= len(b) || b[i+1] < 2 || i+int(b[i+1]) > len(b) {
			return 0, false
		}
		if b[i] == optWindowScale && b[i+1] == 3 {
			return min(b[i+2], 14), true
		}
		i += int(b[i+1])
	}
	return 0, false
}

// isFastOpen reports whether the option at b[0:n] is a TCP Fast Open option
// (the IANA kind, or the experimental kind with its ExID).
func isFastOpen(b []byte, n int) bool {
	return b[0] == optFastOpen || b[0] == optExperiment && n >= 4 && b[2] == 0xf9 && b[3] == 0x89
}

// StripSYNData removes, in place, the payload of a SYN (TCP Fast Open or
// plain SYN data) and turns its Fast Open options (cookie or cookie request)
// into NOPs, so that the receiver sees a plain SYN: the sender's kernel
// sends the data again once the handshake is done (RFC 7413 §4.2.2, RFC 793
// for plain SYN data: a SYN-ACK that does not acknowledge it). Lengths and
// checksums are updated incrementally, as StripToken does; link-layer
// padding after the IP packet is kept. It returns the shortened frame and
// updates p; removed is the number of payload bytes taken out.
func StripSYNData(p *Packet) (frame []byte, removed int) {
	opts := options(p)
	if opts == nil || p.Flags&SYN == 0 {
		return p.Frame, 0
	}
	f := p.Frame
	l4 := p.L4
	// The options start at an even offset of the segment: their sum before
	// and after the rewrite enters the checksum as is.
	oldOpts := fold(sum(0, opts))
	changed := false
	for i := 0; i < len(opts); {
		if opts[i] == optEOL {
			break
		}
		if opts[i] == optNOP {
			i++
			continue
		}
		if i+1 >= len(opts) || opts[i+1] < 2 || i+int(opts[i+1]) > len(opts) {
			break // malformed: leave the rest alone
		}
		n := int(opts[i+1])
		if isFastOpen(opts[i:], n) {
			for j := i; j < i+n; j++ {
				opts[j] = optNOP
			}
			changed = true
		}
		i += n
	}
	removed = p.End - p.Payload
	if !changed && removed == 0 {
		return f, 0
	}
	segLen := uint32(p.End - l4)
	add := uint32(fold(sum(0, opts))) + lenWords(segLen-uint32(removed))
	sub := uint32(oldOpts) + lenWords(segLen)
	if removed > 0 {
		// The payload starts at an even offset (the header is a multiple of
		// 4 bytes): its words leave the sum as they are.
		sub += uint32(fold(sum(0, f[p.Payload:p.End])))
	}
	ck := binary.BigEndian.Uint16(f[l4+16:])
	binary.BigEndian.PutUint16(f[l4+16:], update(ck, fold(add), fold(sub)))
	if removed == 0 {
		return f, 0
	}
	copy(f[p.Payload:], f[p.End:])
	f = f[:len(f)-removed]
	adjustLengths(f, p, -removed)
	p.Frame = f
	p.End -= removed
	return f, removed
}
