package packet

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"reflect"
	"testing"

	"github.com/trireme-go/trireme/dataplane/fixtures"
	"github.com/trireme-go/trireme/ipproto"
	"github.com/trireme-go/trireme/reason"
)

// captureFrames returns every frame of the test captures.
func captureFrames(t testing.TB) [][]byte {
	t.Helper()
	files, err := fixtures.Captures()
	if err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for _, f := range files {
		out = append(out, readAll(t, f)...)
	}
	if len(out) < 100 {
		t.Fatalf("only %d capture frames", len(out))
	}
	return out
}

// divergence says why Decode may disagree with the gopacket reference on
// frame, or "" when they must agree. These are the reference's mistakes
// (see Packet.Decode): it dispatches on the protocol number whatever the
// IP version, so it reads an inner IP header (IP-in-IP, IPv6-in-IP) as
// the packet's own, IPv6 extension headers behind IPv4, and ICMPv6 rules
// behind IPv4; and it accepts an IPv6 extension header or hop-by-hop
// option announced but cut off, or a UDP length past the packet after a
// hop-by-hop header (its truncation flag is ignored there). It also
// computes an ARP packet's length in 8 bits (arpLength8).
func divergence(ref *Packet, refCode reason.Code, got *Packet, gotCode reason.Code) string {
	p := got
	if gotCode != reason.None {
		p = ref
	}
	if !p.IPv6 && p.L3 != 0 {
		if p.L3+20 <= len(p.Frame) {
			switch p.Frame[p.L3+9] {
			case 0, 4, 41, 43, 44, 60, 94: // 94: IPIP
				return "IPv4 carrying IP or IPv6 extension headers"
			}
		}
	}
	if p.IPv6 && p.L3+40 <= len(p.Frame) {
		if nh := p.Frame[p.L3+6]; nh == 4 || nh == 41 || nh == 94 {
			return "IP in IPv6"
		}
		ext := func(proto ipproto.Proto) bool { return proto == 0 || proto == 43 || proto == 44 || proto == 60 }
		if gotCode == reason.Malformed && refCode == reason.None && (ext(ref.Proto) || ref.L4 > ref.L3+40) {
			// The reference does not decode an extension header, or
			// what should follow one, when the packet ends before it.
			return "IPv6 extension header announced but cut off"
		}
		if refCode == reason.Malformed && gotCode == reason.None && p.Frame[p.L3+6] == 0 {
			return "IPv6 hop-by-hop option the reference reads past its header"
		}
		if refCode != gotCode && p.Frame[p.L3+6] == 0 {
			return "IPv6 hop-by-hop: the reference ignores truncation after it"
		}
		if ipInIP(got.Proto) || ipInIP(ref.Proto) {
			return "IP in IPv6 (behind extension headers)"
		}
	}
	return ""
}

func same(a, b Packet) bool {
	a.Frame, b.Frame = nil, nil
	return reflect.DeepEqual(a, b)
}

// arpLength8 reports an ARP packet whose length, computed in 8 bits as
// the reference does, wraps around (it then panics and says malformed).
func arpLength8(frame []byte) bool {
	i := bytes.Index(frame[12:], []byte{0x08, 0x06})
	if i < 0 || 12+i+2+6 > len(frame) {
		return false
	}
	a := frame[12+i+2:]
	return 8+2*int(a[4])+2*int(a[5]) > 255
}

// checkAgainstReference decodes frame with Decode and with the gopacket
// reference and fails on any difference not explained by divergence.
func checkAgainstReference(t testing.TB, ref *refParser, frame []byte) {
	t.Helper()
	var got, want Packet
	gotCode := got.Decode(frame)
	wantCode := ref.Parse(frame, &want)
	if gotCode == reason.None && !got.ARP {
		if got.L3 > got.L4 || got.L4 > got.Payload || got.Payload > got.End || got.End > len(frame) {
			t.Fatalf("offsets out of order: %+v", got)
		}
	}
	if gotCode == wantCode && (gotCode != reason.None || same(got, want)) {
		return
	}
	if gotCode == wantCode && gotCode == reason.None && want.ARP && got.ARP && want.VLAN == got.VLAN {
		return // the reference leaves other fields half set for ARP
	}
	if got.ARP && wantCode == reason.Malformed && arpLength8(frame) {
		return
	}
	if why := divergence(&want, wantCode, &got, gotCode); why != "" {
		return
	}
	t.Fatalf("frame %x\nDecode:    %v %+v\nreference: %v %+v", frame, gotCode, got, wantCode, want)
}

// TestDecodeMatchesReference: on every frame of the captures, every
// truncation of them and random mutations, Decode says what the gopacket
// decoder it replaced said (code and every field).
func TestDecodeMatchesReference(t *testing.T) {
	ref := newRefParser()
	rng := rand.New(rand.NewPCG(12, 5))
	n := 0
	for _, fr := range captureFrames(t) {
		checkAgainstReference(t, ref, fr)
		for l := 0; l < min(len(fr), 120); l++ {
			checkAgainstReference(t, ref, fr[:l])
		}
		for range 20 {
			m := bytes.Clone(fr)
			for range 1 + rng.IntN(3) {
				i := rng.IntN(min(len(m), 80))
				m[i] = byte(rng.Uint32())
			}
			checkAgainstReference(t, ref, m)
			n++
		}
	}
	// Random frames in the shapes the decoder branches on.
	for range 20000 {
		checkAgainstReference(t, ref, randomFrame(rng))
		n++
	}
	t.Logf("%d mutated and random frames", n)
}

// randomFrame builds a frame of random bytes behind a plausible link and
// network header, so that the random part lands in the decoder's branches.
func randomFrame(rng *rand.Rand) []byte {
	b := make([]byte, 14+rng.IntN(120))
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	off := 12
	for range rng.IntN(4) {
		if off+6 > len(b) {
			break
		}
		binary.BigEndian.PutUint16(b[off:], []uint16{0x8100, 0x88a8, 0x9100}[rng.IntN(3)])
		off += 4
	}
	if off+2 > len(b) {
		return b
	}
	et := []uint16{0x0800, 0x86dd, 0x0806, 0x0040, 0x1234}[rng.IntN(5)]
	binary.BigEndian.PutUint16(b[off:], et)
	l3 := b[off+2:]
	switch et {
	case 0x0800:
		if len(l3) >= 20 {
			l3[0] = 0x45
			if rng.IntN(4) == 0 {
				l3[0] = 0x40 | byte(5+rng.IntN(4))
			}
			binary.BigEndian.PutUint16(l3[2:], uint16(len(l3)-rng.IntN(3)))
			l3[6] &= 0x3f
			if rng.IntN(2) == 0 {
				l3[6], l3[7] = 0, 0
			}
			l3[9] = []byte{1, 6, 17, 58, 47}[rng.IntN(5)]
		}
	case 0x86dd:
		if len(l3) >= 40 {
			l3[0] = 0x60
			binary.BigEndian.PutUint16(l3[4:], uint16(len(l3)-40-rng.IntN(3)))
			l3[6] = []byte{0, 6, 17, 58, 43, 44, 60, 59}[rng.IntN(8)]
		}
	}
	return b
}

// TestDecodeDoesNotAllocate: no frame of the captures makes Decode
// allocate, malformed or not.
func TestDecodeDoesNotAllocate(t *testing.T) {
	frames := captureFrames(t)
	var p Packet
	if n := testing.AllocsPerRun(5, func() {
		for _, fr := range frames {
			p.Decode(fr)
			p.Decode(fr[:len(fr)/2])
		}
	}); n != 0 {
		t.Fatalf("%v allocations", n)
	}
}

// FuzzDecode: Decode never panics, its offsets are in order, and it agrees
// with the gopacket reference (see divergence).
func FuzzDecode(f *testing.F) {
	files, _ := fixtures.Captures()
	for _, file := range files {
		for i, fr := range readAll(f, file) {
			if i < 8 {
				f.Add(fr)
			}
		}
	}
	ref := newRefParser()
	f.Fuzz(func(t *testing.T, frame []byte) {
		checkAgainstReference(t, ref, frame)
	})
}

// ipInIP: the protocol numbers gopacket decodes as an IP header.
func ipInIP(proto ipproto.Proto) bool { return proto == 4 || proto == 41 || proto == 94 }
