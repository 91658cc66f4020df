package attacks

import (
	"bytes"
	"net/netip"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/trireme-go/trireme/testenv"
)

// TestNDPCovertChannel (issue #11 item 9, NDP): neighbour discovery
// messages passed everywhere, so they carried data anywhere: 600 bytes in
// a neighbour solicitation, to an off-link address, with a hop limit a
// router would forward. NDP passes only on-link (hop limit 255, link-local,
// link-scope multicast or on-link destination, bounded size, the sender's
// own link-layer address), in both directions: from the attacker PU and
// from a host without an enforcer toward db. Nothing reaches db, the drops
// are named, and real neighbour discovery (web -> db over the ULA) works.
func TestNDPCovertChannel(t *testing.T) {
	s := newScene(t, sceneOptions{})
	raw, seen := s.attacker.Raw(), s.db.Raw()
	stranger := s.node.AddPU() // a host on the bridge without an enforcer
	sraw := stranger.Raw()
	dbMAC, attLL, dbLL := s.db.MACOf(), s.attacker.LinkLocal(), s.db.LinkLocal()
	secret := bytes.Repeat([]byte("COVERT!!"), 75) // 600 bytes
	ns := func(extra []byte, srcMAC []byte) []byte {
		return testenv.NSBody(s.db.Addr6, append(testenv.LinkLayerOption(1, srcMAC), extra...))
	}

	cases := []struct {
		name   string
		port   *testenv.RawPort
		frame  []byte
		reason string
	}{
		{"600 bytes from the PU", raw, testenv.ICMPv6Frame(raw.MAC, dbMAC, attLL, dbLL, 255, 135, ns(secret, raw.MAC)), "spoofed-source"},
		{"hop limit 64 from the PU", raw, testenv.ICMPv6Frame(raw.MAC, dbMAC, attLL, dbLL, 64, 135, ns([]byte("COVERT!!"), raw.MAC)[:28]), "invalid-ndp"},
		{"off-link from the PU", raw, testenv.ICMPv6Frame(raw.MAC, s.node.GatewayMAC(), s.attacker.Addr6, netip.MustParseAddr("2001:db8::7"), 255, 135, ns(nil, raw.MAC)), "invalid-ndp"},
		{"600 bytes toward db", sraw, testenv.ICMPv6Frame(sraw.MAC, dbMAC, stranger.LinkLocal(), dbLL, 255, 135, ns(secret, sraw.MAC)), "invalid-ndp"},
		{"hop limit 64 toward db", sraw, testenv.ICMPv6Frame(sraw.MAC, dbMAC, stranger.LinkLocal(), dbLL, 64, 136, testenv.NABody(stranger.Addr6, append(testenv.LinkLayerOption(2, sraw.MAC), []byte("COVERT!!")...))), "invalid-ndp"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := s.drops()
			c.port.MustSend(c.frame)
			s.waitDrop(before, c.reason)
		})
	}
	if got := seen.Capture(300*time.Millisecond, func(p gopacket.Packet) bool {
		icmp, _ := p.Layer(layers.LayerTypeICMPv6).(*layers.ICMPv6)
		ip, _ := p.Layer(layers.LayerTypeIPv6).(*layers.IPv6)
		nd := icmp != nil && icmp.TypeCode.Type() >= 133 && icmp.TypeCode.Type() <= 137
		return nd && ip != nil && (bytes.Contains(icmp.Payload, []byte("COVERT!!")) || ip.HopLimit != 255)
	}); len(got) != 0 {
		t.Fatalf("db's interface got %d covert NDP frames, first:\n%v", len(got), got[0])
	}
	// Real neighbour discovery: web reaches db over the ULA (NS to db's
	// solicited-node address, NA back to web's ULA).
	sink := listenTCPSink(t, s.db, s.db.Addr6, 5432)
	if err := s.web.Echo(sink.Addr, "over the ULA", 3*time.Second); err != nil {
		t.Fatalf("web -> db:5432 over IPv6: %v", err)
	}
}
