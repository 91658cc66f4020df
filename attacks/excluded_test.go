package attacks

import (
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/trireme-go/trireme/testenv"
)

// TestExcludedSourceSpoofing (issue #11 item 1): the attacker adds an
// address of the excluded networks (10.77.255.0/24) to its own eth0 and
// binds its sockets to it. Excluded networks are matched on the peer only,
// and a PU may send only from its own addresses: nothing reaches db or
// web, over TCP or UDP, while the daemon runs or after it died; the kernel
// names the drops (spoofed-source, node-wide and on the attacker's PU).
func TestExcludedSourceSpoofing(t *testing.T) {
	s := newScene(t, sceneOptions{})
	excluded := netip.MustParseAddr("10.77.255.9")
	addAddr(t, s.attacker, netip.PrefixFrom(excluded, 32))
	dbEcho := s.db.ServeEcho(5432)
	webEcho := s.web.ServeEcho(80)
	sink := listenUDPSink(t, s.db, s.db.Addr, 5353)
	before, beforePU := s.drops(), puDropsOf(t, s.d, s.attacker.Name)["spoofed-source"]

	attack := func(when string) {
		t.Helper()
		for _, dst := range []netip.AddrPort{dbEcho, webEcho} {
			if c, err := dialFromAddr(s.attacker, excluded, dst, 500*time.Millisecond); err == nil {
				c.Close()
				t.Errorf("%s: the attacker connected to %v from the excluded %v", when, dst, excluded)
			}
		}
		marker := "from-excluded-" + when
		if err := s.attacker.Do(func() error {
			c, err := net.DialUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(excluded, 0)), net.UDPAddrFromAddrPort(netip.AddrPortFrom(s.db.Addr, 5353)))
			if err != nil {
				return err
			}
			defer c.Close()
			for i := 0; i < 3; i++ {
				c.Write([]byte(marker))
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(300 * time.Millisecond)
		if sink.received(marker) {
			t.Errorf("%s: db's UDP socket got a datagram from the excluded %v", when, excluded)
		}
	}
	attack("daemon running")
	s.waitDrop(before, "spoofed-source")
	waitPUDrop(t, s.d, s.attacker.Name, "spoofed-source", beforePU)
	if out := testenv.RunBin(t, "pu", "ls", "--socket", s.d.Socket); !strings.Contains(out, "spoofed-source=") {
		t.Errorf("trireme pu ls does not show the attacker's drops:\n%s", out)
	}
	m, err := s.d.Client().Metrics()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`trireme_drops_total{reason="spoofed-source"}`, `trireme_pu_drops_total{pu="netns-` + s.attacker.Name + `",reason="spoofed-source"}`} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	// Legitimate traffic still flows: web -> db:5432 is allowed.
	if err := s.web.Echo(dbEcho, "still-ok", 3*time.Second); err != nil {
		t.Errorf("web -> db:5432 after the attack: %v", err)
	}
	// The rules stay in the kernel while no daemon runs (fail closed).
	s.d.Kill()
	attack("daemon down")
}
