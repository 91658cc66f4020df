package attacks

import (
	"bytes"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/trireme-go/trireme/ipproto"
	"github.com/trireme-go/trireme/testenv"
)

// udpPolicy: web may send UDP to db:5353 (datagram flows are decided by
// CIDR rules); db accepts UDP on 5353 from the node subnet and nothing on
// 9999; the attacker may send anything anywhere.
const udpPolicy = `targetNetworks: [10.77.0.0/16, fd00:77::/64]
policies:
  - name: db
    selector: app=db
    ingress:
      - {name: dns-in, from: [{cidr: 10.77.0.0/24}, {cidr: "fd00:77::/64"}], ports: [udp/5353], action: allow}
  - name: web
    selector: app=web
    egress:
      - {name: dns-out, to: [{cidr: 10.77.0.0/24}, {cidr: "fd00:77::/64"}], ports: [udp/5353], action: allow}
  - name: attacker
    selector: app=attacker
    egress:
      - {name: internet, to: [{cidr: 0.0.0.0/0}, {cidr: "::/0"}], action: allow}
`

// udpEcho answers every datagram on c with the same bytes, until c closes.
func udpEcho(c *net.UDPConn) {
	buf := make([]byte, 65536)
	for {
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		_, _ = c.WriteToUDPAddrPort(buf[:n], from)
	}
}

// udpSocket opens a UDP socket in pu on addr:port (0: any port).
func udpSocket(t *testing.T, pu *testenv.PU, addr netip.Addr, port int) *net.UDPConn {
	t.Helper()
	var c *net.UDPConn
	if err := pu.Do(func() error {
		var err error
		c, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(addr, uint16(port))))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestLargeDatagrams (item 10): 3,000-byte datagrams on an allowed UDP flow
// (fragmented: the MTU is 1,500) are answered every time, also after the
// flow was authorized in the kernel (its first fragments used to pass in
// the kernel and the dataplane then dropped the later ones); IPv4 and IPv6.
// A 3,000-byte datagram of a flow db refuses is never delivered: the
// attacker's enforcer holds its fragments while the datagram handshake
// runs, db's enforcer denies the hello (policy-denied) and the held
// fragments are dropped with the reject (ingress-denied). The denial's
// flow record names the attacker as the client of an inbound flow (item
// 14). (Between PUs the first datagram of a flow, fragments included, is
// held until the handshake completes.)
func TestLargeDatagrams(t *testing.T) {
	s := newScene(t, sceneOptions{Policy: udpPolicy})
	for _, fam := range []struct {
		name   string
		db, me netip.Addr
	}{{"IPv4", s.db.Addr, s.web.Addr}, {"IPv6", s.db.Addr6, s.web.Addr6}} {
		t.Run(fam.name, func(t *testing.T) {
			srv := udpSocket(t, s.db, fam.db, 5353)
			go udpEcho(srv)
			c := udpSocket(t, s.web, fam.me, 0)
			to := netip.AddrPortFrom(fam.db, 5353)
			auth := countersOf(t, s.d)["kernel-authorized"]
			buf := make([]byte, 4096)
			for i := 0; i < 4; i++ {
				msg := bytes.Repeat([]byte{byte('a' + i)}, 3000)
				if _, err := c.WriteToUDPAddrPort(msg, to); err != nil {
					t.Fatal(err)
				}
				_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
				n, _, err := c.ReadFromUDPAddrPort(buf)
				if err != nil || !bytes.Equal(buf[:n], msg) {
					t.Fatalf("datagram %d (3000 bytes): answer %d bytes, %v", i+1, n, err)
				}
				if i == 0 {
					// Both PUs' sides of the flow are in the kernel now.
					s.d.WaitKernelAuthorized(t, auth+2)
				}
			}
		})
	}

	t.Run("denied flow", func(t *testing.T) {
		srv := udpSocket(t, s.db, s.db.Addr, 9999)
		c := udpSocket(t, s.attacker, s.attacker.Addr, 0)
		before := s.drops()
		if _, err := c.WriteToUDPAddrPort(bytes.Repeat([]byte("X"), 3000), netip.AddrPortFrom(s.db.Addr, 9999)); err != nil {
			t.Fatal(err)
		}
		waitDropOn(t, s.d, before, "policy-denied")
		waitDropOn(t, s.d, before, "ingress-denied")
		_ = srv.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		if n, from, err := srv.ReadFromUDPAddrPort(make([]byte, 4096)); err == nil {
			t.Fatalf("db received %d bytes from %v", n, from)
		}
		client := netip.MustParseAddrPort(c.LocalAddr().String())
		var found bool
		for _, r := range s.d.Records() {
			// (The attacker's enforcer records the reject too: end
			// "rejected", its egress side.)
			if r.Proto == ipproto.UDP && r.Action == "deny" && r.Server == netip.AddrPortFrom(s.db.Addr, 9999) && r.End != "rejected" {
				found = true
				if r.Direction != "ingress" || r.Client != client || r.Remote.External {
					t.Errorf("record of the denied inbound flow: %+v", r)
				}
			}
		}
		if !found {
			t.Error("no flow record of the denied datagram flow")
		}
	})
}
