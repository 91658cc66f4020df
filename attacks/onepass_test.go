package attacks

import (
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/google/gopacket"

	"github.com/trireme-go/trireme/testenv"
)

// TestOnePassShortcut: frames between two PUs of the node take one pass
// through the daemon when they are addressed to the receiving PU (its MAC
// and one of its addresses). The attacker crafts SYNs that mix one PU's
// MAC with another's address, or go through the gateway, to make the
// shortcut deliver what the bridge would not: nothing reaches web or db,
// the frames the shortcut refuses take the bridge (web's or db's enforcer
// drops them as for another host: foreign-frames), and a SYN that does
// take one pass is still judged by the receiver's policy.
func TestOnePassShortcut(t *testing.T) {
	s := newScene(t, sceneOptions{PSK: true})
	webEcho := s.web.ServeEcho(80)
	dbEcho := s.db.ServeEcho(5432)
	// The allowed paths work (and take one pass).
	if err := s.frontend.Echo(webEcho, "before", 3*time.Second); err != nil {
		t.Fatalf("frontend -> web:80 (allowed): %v", err)
	}
	if c := countersOf(t, s.d)["one-pass"]; c == 0 {
		t.Fatal("frontend -> web took no one-pass frame")
	}
	raw := s.attacker.Raw()
	webRaw, dbRaw := s.web.Raw(), s.db.Raw()
	webMAC, dbMAC, gwMAC := s.web.MACOf(), s.db.MACOf(), s.node.GatewayMAC()
	port := uint16(47000)
	for _, tc := range []struct {
		name    string
		mac     net.HardwareAddr
		dst     netip.AddrPort
		onePass bool   // the shortcut takes it
		counter string // counter that must grow ("" none)
		dropped string // drop reason that must grow ("" none)
	}{
		{name: "web's MAC, db's address", mac: webMAC, dst: dbEcho, counter: "foreign-frames"},
		{name: "db's MAC, web's address", mac: dbMAC, dst: webEcho, counter: "foreign-frames"},
		{name: "web's MAC, an address of no PU", mac: webMAC, dst: netip.AddrPortFrom(netip.MustParseAddr("10.77.0.250"), 80), counter: "foreign-frames"},
		{name: "gateway MAC, web's address (routed)", mac: gwMAC, dst: webEcho},
		{name: "web's MAC and address (one pass, policy denies)", mac: webMAC, dst: webEcho, onePass: true, dropped: "policy-denied"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before, drops := countersOf(t, s.d), s.drops()
			var ports []uint16
			var wg sync.WaitGroup
			var atWeb, atDB []gopacket.Packet
			port++
			ports = append(ports, port)
			wg.Add(2)
			go func() { defer wg.Done(); atWeb = webRaw.Capture(time.Second, fromPort(ports...)) }()
			go func() { defer wg.Done(); atDB = dbRaw.Capture(time.Second, fromPort(ports...)) }()
			time.Sleep(50 * time.Millisecond)
			for i := 0; i < 3; i++ {
				raw.MustSend(testenv.TCPSegment(s.attacker.MACOf(), tc.mac, netip.AddrPortFrom(s.attacker.Addr, port), tc.dst, "S", 1000+uint32(i), 0, nil))
			}
			wg.Wait()
			if len(atWeb)+len(atDB) != 0 {
				t.Fatalf("the attacker's SYNs reached web (%d) or db (%d)", len(atWeb), len(atDB))
			}
			after := countersOf(t, s.d)
			if got := after["one-pass"] - before["one-pass"]; tc.onePass != (got > 0) {
				t.Errorf("one-pass frames: %d (want some: %v)", got, tc.onePass)
			}
			if tc.counter != "" && after[tc.counter] <= before[tc.counter] {
				t.Errorf("%s did not grow (%d): the frames did not take the bridge to the PU", tc.counter, after[tc.counter])
			}
			if tc.dropped != "" {
				s.waitDrop(drops, tc.dropped)
			}
		})
	}
	// The allowed paths still work.
	if err := s.frontend.Echo(webEcho, "after", 3*time.Second); err != nil {
		t.Fatalf("frontend -> web:80 after the attack: %v", err)
	}
	if err := s.web.Echo(dbEcho, "after", 3*time.Second); err != nil {
		t.Fatalf("web -> db:5432 after the attack: %v", err)
	}
}
