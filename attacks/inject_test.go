package attacks

import (
	"net"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/trireme-go/trireme/testenv"
)

// TestInjectIntoOtherPUsFlow: the attacker knows an established web -> db
// connection's 4-tuple and sequence numbers (it sniffed nothing: it is told
// them, the strongest case) and injects data into it with web's MAC and
// address. Nothing reaches db's socket, and the enforcer on the attacker's
// veth names the drop.
func TestInjectIntoOtherPUsFlow(t *testing.T) {
	s := newScene(t, sceneOptions{})
	c, client, server := s.established()
	raw := s.attacker.Raw()
	victim := s.db.Raw() // opened first: it sees everything that reaches db from now on
	before := s.drops()

	// A plain ACK with data and a RST, both spoofing web.
	dbMAC := s.db.MACOf()
	webMAC := s.web.MACOf()
	for _, flags := range []string{"PA", "R"} {
		raw.MustSend(testenv.TCPSegment(webMAC, dbMAC, client, server, flags, 1, 1, []byte("INJECTED")))
	}
	// db's server socket must still echo exactly what web sends, and it got
	// no injected bytes: the next echo round trip returns only web's data.
	if err := testenv.EchoConn(c.(net.Conn), "still-ok", 3*time.Second); err != nil {
		t.Fatalf("established connection after injection: %v", err)
	}
	// The frames never reached db's interface.
	seen := victim.Capture(300*time.Millisecond, func(p gopacket.Packet) bool {
		tcp, _ := p.Layer(layers.LayerTypeTCP).(*layers.TCP)
		return tcp != nil && string(tcp.Payload) == "INJECTED"
	})
	if len(seen) != 0 {
		t.Fatalf("db's interface received %d injected frames", len(seen))
	}
	after := s.drops()
	var grew bool
	for k, v := range after {
		if v > before[k] {
			grew = true
		}
	}
	if !grew {
		t.Fatalf("no drop counted for the injected frames (before %v, after %v)", before, after)
	}
}
