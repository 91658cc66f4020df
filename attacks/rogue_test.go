package attacks

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/vishvananda/netlink"

	"github.com/trireme-go/trireme/testenv"
)

// TestRogueRouter (issue #11 item 3): the attacker advertises itself as a
// router with a prefix (which would give every other PU an address there
// and a default route through the attacker), sends a redirect to db, and
// answers as a DHCP and DHCPv6 server. A PU is no router and no DHCP
// server: none of it reaches db's interface, db gets no address or route
// from it, and the kernel names the drops (rogue-router).
func TestRogueRouter(t *testing.T) {
	s := newScene(t, sceneOptions{})
	raw, seen := s.attacker.Raw(), s.db.Raw()
	dbMAC, attLL, dbLL := s.db.MACOf(), s.attacker.LinkLocal(), s.db.LinkLocal()
	allNodes := netip.MustParseAddr("ff02::1")
	bad := netip.MustParsePrefix("2001:db8:bad::/64")
	dhcp := listenUDPSink(t, s.db, netip.IPv4Unspecified(), 68)
	before, beforePU := s.drops(), puDropsOf(t, s.d, s.attacker.Name)["rogue-router"]

	frames := [][]byte{
		testenv.ICMPv6Frame(raw.MAC, testenv.MulticastMAC(allNodes), attLL, allNodes, 255, 134,
			testenv.RABody(testenv.LinkLayerOption(1, raw.MAC), testenv.PrefixOption(bad))),
		testenv.ICMPv6Frame(raw.MAC, dbMAC, attLL, dbLL, 255, 137,
			append(append(append(make([]byte, 4), attLL.AsSlice()...), netip.MustParseAddr("2001:db8::1").AsSlice()...), testenv.LinkLayerOption(2, raw.MAC)...)),
		testenv.UDPDatagram(raw.MAC, net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, netip.AddrPortFrom(s.attacker.Addr, 67),
			netip.AddrPortFrom(netip.AddrFrom4([4]byte{255, 255, 255, 255}), 68), append([]byte("ROGUE-DHCP"), make([]byte, 230)...)),
		testenv.UDP6Datagram(raw.MAC, dbMAC, netip.AddrPortFrom(attLL, 547), netip.AddrPortFrom(dbLL, 546), []byte("ROGUE-DHCPV6")),
	}
	for i := 0; i < 3; i++ {
		for _, f := range frames {
			raw.MustSend(f)
		}
	}
	s.waitDrop(before, "rogue-router")
	waitPUDrop(t, s.d, s.attacker.Name, "rogue-router", beforePU)
	if got := seen.Capture(500*time.Millisecond, func(p gopacket.Packet) bool {
		if icmp, ok := p.Layer(layers.LayerTypeICMPv6).(*layers.ICMPv6); ok {
			return icmp.TypeCode.Type() == 134 || icmp.TypeCode.Type() == 137
		}
		u, ok := p.Layer(layers.LayerTypeUDP).(*layers.UDP)
		return ok && (u.SrcPort == 67 || u.SrcPort == 547)
	}); len(got) != 0 {
		t.Fatalf("db's interface got %d frames of the rogue router, first: %v", len(got), got[0])
	}
	if dhcp.received("ROGUE-DHCP") {
		t.Error("db's DHCP client port got the rogue server's reply")
	}
	h, err := netlink.NewHandleAt(s.db.NS)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	addrs, err := h.AddrList(nil, netlink.FAMILY_V6)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && bad.Contains(ip) {
			t.Errorf("db configured %v from the rogue router advertisement", ip)
		}
	}
	routes, err := h.RouteList(nil, netlink.FAMILY_V6)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range routes {
		if gw, ok := netip.AddrFromSlice(r.Gw); ok && gw == attLL {
			t.Errorf("db routes %v via the attacker", r.Dst)
		}
	}
}
