package attacks

import (
	"encoding/binary"
	mrand "math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/trireme-go/trireme/testenv"
)

// TestTinyFragments: the attacker splits a SYN to db:5432 so that its
// first fragment carries only the ports (8 bytes of TCP header) and the
// flags arrive in the second (RFC 1858's tiny fragment attack), over IPv4
// and IPv6. The enforcer reads a first fragment's transport header by hand
// and refuses one that is shorter than a TCP header (malformed-packet); the
// later fragment has no allowed first fragment (fragment). Nothing reaches
// db.
func TestTinyFragments(t *testing.T) {
	s := newScene(t, sceneOptions{})
	raw := s.attacker.Raw()
	seen := s.db.Raw()
	dbMAC := s.db.MACOf()
	for i, fam := range []struct {
		name     string
		src, dst netip.Addr
	}{{"IPv4", s.attacker.Addr, s.db.Addr}, {"IPv6", s.attacker.Addr6, s.db.Addr6}} {
		t.Run(fam.name, func(t *testing.T) {
			v := serveVictim(t, s.db, fam.dst, 5432)
			sg := seg{srcMAC: raw.MAC, dstMAC: dbMAC, src: netip.AddrPortFrom(fam.src, uint16(44000+i)), dst: v.Addr,
				flags: "S", seq: mrand.Uint32(), opts: []layers.TCPOption{mss}}
			tcp := sg.transport()
			id := fragID()
			before := s.drops()
			raw.MustSend(sg.fragment(tcp[:8], 0, true, id))
			waitDropOn(t, s.d, before, "malformed-packet")
			before = s.drops()
			raw.MustSend(sg.fragment(tcp[8:], 8, false, id))
			waitDropOn(t, s.d, before, "fragment")
			if got := seen.Capture(300*time.Millisecond, fragmentOf(id)); len(got) != 0 {
				t.Errorf("%d fragments reached db's interface", len(got))
			}
			if a := v.Accepted(); len(a) != 0 {
				t.Errorf("db accepted %v", a)
			}
		})
	}
}

// TestOverlappingFragments: frontend (allowed to web:80 only, here the
// compromised PU) has an authorized connection to web:80. It sends a
// datagram whose first fragment belongs to that connection (it passes: the
// flow is authorized), then an overlapping first fragment of the same datagram
// whose TCP header says web:8080 (a denied port) — a SYN, or an ACK — and
// the last fragment, hoping that web's reassembly keeps the second header.
// The enforcer judges every first fragment by its own header: a SYN in a
// fragment is never allowed (fragment), an ACK of no flow is unknown-flow;
// a later fragment passes only after an enforcer-allowed first fragment.
// The rewriting fragment never reaches web, web:8080 accepts nothing, and
// the connection to web:80 still works. IPv4 and IPv6.
func TestOverlappingFragments(t *testing.T) {
	s := newScene(t, sceneOptions{})
	raw := s.frontend.Raw()
	seen := s.web.Raw()
	webMAC := s.web.MACOf()
	for i, fam := range []struct {
		name     string
		src, dst netip.Addr
	}{{"IPv4", s.frontend.Addr, s.web.Addr}, {"IPv6", s.frontend.Addr6, s.web.Addr6}} {
		t.Run(fam.name, func(t *testing.T) {
			allowed := serveVictim(t, s.web, fam.dst, 80)
			denied := serveVictim(t, s.web, fam.dst, 8080)
			auth := countersOf(t, s.d)["kernel-authorized"]
			c, err := s.frontend.Dial(allowed.Addr, 3*time.Second)
			if err != nil {
				t.Fatalf("frontend -> web:80 (allowed): %v", err)
			}
			defer c.Close()
			if err := testenv.EchoConn(c, "hello", 3*time.Second); err != nil {
				t.Fatal(err)
			}
			s.d.WaitKernelAuthorized(t, auth+2) // the flow is authorized: its first fragment passes
			client := netip.MustParseAddrPort(c.LocalAddr().String())

			for j, rewrite := range []struct {
				flags string
				want  string
			}{{"S", "fragment"}, {"A", "unknown-flow"}} {
				id := fragID()
				first := seg{srcMAC: raw.MAC, dstMAC: webMAC, src: client, dst: allowed.Addr, flags: "PA",
					seq: mrand.Uint32(), ack: mrand.Uint32(), payload: make([]byte, 12)}.transport() // 32 bytes
				over := seg{srcMAC: raw.MAC, dstMAC: webMAC, src: netip.AddrPortFrom(fam.src, uint16(45000+10*i+j)), dst: denied.Addr,
					flags: rewrite.flags, seq: mrand.Uint32(), opts: []layers.TCPOption{mss}, payload: make([]byte, 8)}
				rest := make([]byte, 16)
				before := s.drops()
				raw.MustSend(over.fragment(first, 0, true, id))
				raw.MustSend(over.fragment(over.transport(), 0, true, id)) // 32 bytes over the first
				raw.MustSend(over.fragment(rest, 32, false, id))
				waitDropOn(t, s.d, before, rewrite.want)
				if got := seen.Capture(300*time.Millisecond, firstFragmentTo(id, 8080)); len(got) != 0 {
					t.Errorf("%s: the rewriting fragment reached web's interface", rewrite.flags)
				}
			}
			if err := testenv.EchoConn(c, "still-ok", 3*time.Second); err != nil {
				t.Fatalf("the connection to web:80 after the attack: %v", err)
			}
			if a := denied.Accepted(); len(a) != 0 {
				t.Errorf("web:8080 accepted %v", a)
			}
		})
	}
}

// fragID returns a random datagram identification that fits both the IPv4
// (16 bits) and the IPv6 (32 bits) field.
func fragID() uint32 { return 1 + mrand.Uint32N(0xfffe) }

// fragmentFields returns a fragment header's fields of an untagged IPv4 or IPv6
// frame: identification, byte offset, and the offset in the frame where
// the fragment's data starts; ok is false for a frame that is no fragment.
func fragmentFields(b []byte) (id uint32, off, data int, ok bool) {
	if len(b) < 14 {
		return
	}
	switch binary.BigEndian.Uint16(b[12:]) {
	case 0x0800:
		if len(b) < 34 {
			return
		}
		fo := binary.BigEndian.Uint16(b[20:])
		if fo&0x3fff == 0 {
			return
		}
		return uint32(binary.BigEndian.Uint16(b[18:])), int(fo&0x1fff) * 8, 14 + int(b[14]&0x0f)*4, true
	case 0x86dd:
		if len(b) < 62 || b[20] != 44 {
			return
		}
		return binary.BigEndian.Uint32(b[58:]), int(binary.BigEndian.Uint16(b[56:]) &^ 7), 62, true
	}
	return
}

// fragmentOf matches the fragments of datagram id.
func fragmentOf(id uint32) func(gopacket.Packet) bool {
	return func(p gopacket.Packet) bool {
		fid, _, _, ok := fragmentFields(p.Data())
		return ok && fid == id
	}
}

// firstFragmentTo matches a first fragment of datagram id whose TCP header
// names destination port port.
func firstFragmentTo(id uint32, port uint16) func(gopacket.Packet) bool {
	return func(p gopacket.Packet) bool {
		b := p.Data()
		fid, off, data, ok := fragmentFields(b)
		return ok && fid == id && off == 0 && len(b) >= data+4 && binary.BigEndian.Uint16(b[data+2:]) == port
	}
}
