package attacks

import (
	"bytes"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/trireme-go/trireme/testenv"
)

var adminHost = netip.MustParseAddr("192.168.100.5") // in db's allowed admin network

// TestSpoofedAllowedSource (issue #11 item 2): db accepts UDP/5353 from
// the admin network 192.168.100.0/24 only. The attacker sends datagrams
// with an admin source address (its own MAC, and db's MAC as well): none
// reaches db's socket or interface; the kernel drops them on the
// attacker's veth (spoofed-source).
func TestSpoofedAllowedSource(t *testing.T) {
	s := newScene(t, sceneOptions{})
	sink := listenUDPSink(t, s.db, s.db.Addr, 5353)
	raw, seen := s.attacker.Raw(), s.db.Raw()
	dbMAC := s.db.MACOf()
	before, beforePU := s.drops(), puDropsOf(t, s.d, s.attacker.Name)["spoofed-source"]
	frames := [][]byte{
		testenv.UDPDatagram(raw.MAC, dbMAC, netip.AddrPortFrom(adminHost, 5000), netip.AddrPortFrom(s.db.Addr, 5353), []byte("SPOOFED-ADMIN")),
		testenv.UDPDatagram(s.web.MACOf(), dbMAC, netip.AddrPortFrom(s.web.Addr, 5000), netip.AddrPortFrom(s.db.Addr, 5353), []byte("SPOOFED-WEB")),
	}
	for _, f := range frames {
		raw.MustSend(f)
	}
	s.waitDrop(before, "spoofed-source")
	waitPUDrop(t, s.d, s.attacker.Name, "spoofed-source", beforePU)
	if got := seen.Capture(300*time.Millisecond, func(p gopacket.Packet) bool {
		u, _ := p.Layer(layers.LayerTypeUDP).(*layers.UDP)
		return u != nil && bytes.HasPrefix(u.Payload, []byte("SPOOFED"))
	}); len(got) != 0 {
		t.Fatalf("db's interface got %d spoofed datagrams", len(got))
	}
	if sink.received("SPOOFED") {
		t.Fatal("db's socket got a spoofed datagram")
	}

	// Across a daemon restart the rules are rebuilt from the state file:
	// the attacker's MAC and addresses are the ones known at attach.
	s.d.Kill()
	s.d.Start()
	pus, err := s.d.Client().ListPUs()
	if err != nil || len(pus) != 4 {
		t.Fatalf("PUs after the restart: %v %v", pus, err)
	}
	for _, p := range pus {
		if p.Name == s.attacker.Name && p.MAC != raw.MAC.String() {
			t.Errorf("the attacker's MAC after the restart: %s, want %s", p.MAC, raw.MAC)
		}
	}
	before, beforePU = s.drops(), puDropsOf(t, s.d, s.attacker.Name)["spoofed-source"]
	raw.MustSend(frames[0])
	s.waitDrop(before, "spoofed-source")
	waitPUDrop(t, s.d, s.attacker.Name, "spoofed-source", beforePU)
	if sink.received("SPOOFED") {
		t.Fatal("db's socket got a spoofed datagram after the restart")
	}
}

// TestARPPoisoning (issue #11 item 2): the attacker answers for the admin
// host's address and for web's with ARP replies carrying its own MAC, to
// draw db's replies to itself. The ARP sender must be the attacker itself:
// the replies never reach db, db's neighbour table does not learn them,
// and the kernel names the drops.
func TestARPPoisoning(t *testing.T) {
	s := newScene(t, sceneOptions{})
	raw, seen := s.attacker.Raw(), s.db.Raw()
	dbMAC := s.db.MACOf()
	before := s.drops()
	for _, claimed := range []netip.Addr{adminHost, s.web.Addr} {
		raw.MustSend(testenv.ARPFrame(raw.MAC, dbMAC, 2, raw.MAC, claimed, dbMAC, s.db.Addr))
		raw.MustSend(testenv.ARPFrame(raw.MAC, net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, 2, raw.MAC, claimed, dbMAC, claimed)) // gratuitous
	}
	s.waitDrop(before, "spoofed-source")
	if got := seen.Capture(300*time.Millisecond, func(p gopacket.Packet) bool {
		a, _ := p.Layer(layers.LayerTypeARP).(*layers.ARP)
		return a != nil && bytes.Equal(a.SourceHwAddress, raw.MAC)
	}); len(got) != 0 {
		t.Fatalf("db's interface got %d ARP frames claiming other addresses", len(got))
	}
	h, err := netlink.NewHandleAt(s.db.NS)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	neighs, err := h.NeighList(0, unix.AF_INET)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range neighs {
		if bytes.Equal(n.HardwareAddr, raw.MAC) && !n.IP.Equal(s.attacker.Addr.AsSlice()) {
			t.Errorf("db's neighbour table maps %v to the attacker's MAC", n.IP)
		}
	}
	// The attacker still may announce itself: that reply reaches db.
	raw.MustSend(testenv.ARPFrame(raw.MAC, dbMAC, 2, raw.MAC, s.attacker.Addr, dbMAC, s.db.Addr))
	if got := seen.Capture(300*time.Millisecond, func(p gopacket.Packet) bool {
		a, _ := p.Layer(layers.LayerTypeARP).(*layers.ARP)
		return a != nil && bytes.Equal(a.SourceHwAddress, raw.MAC) && bytes.Equal(a.SourceProtAddress, s.attacker.Addr.AsSlice())
	}); len(got) == 0 {
		t.Error("the attacker's own ARP reply did not reach db")
	}
}

// TestFramesWithAnotherPUsMAC (issue #11 item 2): the attacker sends ARP
// and IP frames with web's MAC, which would move web's entry in the
// bridge's forwarding table onto the attacker's port (new connections to
// web would then reach the attacker). The kernel drops them on the
// attacker's veth: the bridge never sees them, web's entry stays on web's
// port, frontend keeps reaching web, and the drops are named.
func TestFramesWithAnotherPUsMAC(t *testing.T) {
	s := newScene(t, sceneOptions{})
	webEcho := s.web.ServeEcho(80)
	if err := s.frontend.Echo(webEcho, "before", 3*time.Second); err != nil {
		t.Fatalf("frontend -> web:80 (allowed): %v", err)
	}
	raw := s.attacker.Raw()
	webMAC, bcast := s.web.MACOf(), net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	before, beforePU := s.drops(), puDropsOf(t, s.d, s.attacker.Name)["spoofed-source"]
	for i := 0; i < 20; i++ {
		raw.MustSend(testenv.ARPFrame(webMAC, bcast, 1, webMAC, s.web.Addr, make(net.HardwareAddr, 6), s.frontend.Addr))
		raw.MustSend(testenv.UDPDatagram(webMAC, bcast, netip.AddrPortFrom(s.web.Addr, 9), netip.AddrPortFrom(netip.AddrFrom4([4]byte{255, 255, 255, 255}), 9), []byte("x")))
	}
	s.waitDrop(before, "spoofed-source")
	waitPUDrop(t, s.d, s.attacker.Name, "spoofed-source", beforePU)
	// web's MAC is learned on web's port only.
	s.node.MustDo(func() error {
		fdb, err := netlink.NeighList(0, unix.AF_BRIDGE)
		if err != nil {
			return err
		}
		for _, e := range fdb {
			if bytes.Equal(e.HardwareAddr, webMAC) && e.LinkIndex != s.web.Link.HostIndex {
				t.Errorf("the bridge learned web's MAC on ifindex %d (web's port is %d, the attacker's %d)", e.LinkIndex, s.web.Link.HostIndex, s.attacker.Link.HostIndex)
			}
		}
		return nil
	})
	for i := 0; i < 3; i++ {
		if err := s.frontend.Echo(webEcho, "after", 3*time.Second); err != nil {
			t.Fatalf("frontend -> web:80 after the attack: %v", err)
		}
	}
}
