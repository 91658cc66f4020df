package attacks

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/trireme-go/trireme/testenv"
)

// echoDirectionPolicy: pinger may ping target (its egress and target's
// ingress allow ICMP between them); target may not ping pinger (no rule
// allows ICMP from target, nor to pinger).
const echoDirectionPolicy = `targetNetworks: [10.77.0.0/16, fd00:77::/64]
policies:
  - name: pinger
    selector: app=pinger
    egress:
      - {name: ping-out, to: [{cidr: %[2]s/32}, {cidr: "%[4]s/128"}], ports: [icmp, icmpv6], action: allow}
  - name: target
    selector: app=target
    ingress:
      - {name: ping-in, from: [{cidr: %[1]s/32}, {cidr: "%[3]s/128"}], ports: [icmp, icmpv6], action: allow}
`

// echoSocket is a raw ICMP (ICMPv6) socket in a PU: what ping uses, with
// the identifier it chooses.
type echoSocket struct {
	c  net.PacketConn
	v6 bool
}

func openEcho(t *testing.T, pu *testenv.PU, v6 bool) *echoSocket {
	t.Helper()
	network, addr := "ip4:icmp", pu.Addr
	if v6 {
		network, addr = "ip6:ipv6-icmp", pu.Addr6
	}
	var c net.PacketConn
	if err := pu.Do(func() error {
		var err error
		c, err = net.ListenPacket(network, addr.String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &echoSocket{c: c, v6: v6}
}

// request sends an echo request (id, seq) to dst.
func (s *echoSocket) request(t *testing.T, dst netip.Addr, id, seq uint16) {
	t.Helper()
	typ := byte(8)
	if s.v6 {
		typ = 128 // the kernel fills in the ICMPv6 checksum
	}
	m := []byte{typ, 0, 0, 0, byte(id >> 8), byte(id), byte(seq >> 8), byte(seq)}
	m = append(m, "echo-direction"...)
	if !s.v6 {
		var sum uint32
		for i := 0; i+1 < len(m); i += 2 {
			sum += uint32(binary.BigEndian.Uint16(m[i:]))
		}
		if len(m)%2 == 1 {
			sum += uint32(m[len(m)-1]) << 8
		}
		for sum > 0xffff {
			sum = sum>>16 + sum&0xffff
		}
		binary.BigEndian.PutUint16(m[2:], ^uint16(sum))
	}
	if _, err := s.c.WriteTo(m, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
		t.Fatal(err)
	}
}

// reply waits up to d for the echo reply (id, seq).
func (s *echoSocket) reply(id, seq uint16, d time.Duration) bool {
	want := byte(0)
	if s.v6 {
		want = 129
	}
	buf := make([]byte, 1500)
	deadline := time.Now().Add(d)
	for {
		_ = s.c.SetReadDeadline(deadline)
		n, _, err := s.c.ReadFrom(buf)
		if err != nil {
			return false
		}
		if n >= 8 && buf[0] == want && binary.BigEndian.Uint16(buf[4:]) == id && binary.BigEndian.Uint16(buf[6:]) == seq {
			return true
		}
	}
}

// TestEchoDirection: after pinger's allowed ping to target (the flow
// authorized in the kernel), target's echo requests to pinger, with
// pinger's identifier or another, are new flows the rules deny: nothing
// reaches pinger's interface, target gets no reply, the daemon counts
// policy-denied drops. (Before the echo direction was part of the flow's
// key, the kernel's authorized entry of pinger's ping, keyed with zero
// ports both ways, passed them for as long as it lived.) Over IPv4 and
// IPv6; pinger's ping works before and after.
func TestEchoDirection(t *testing.T) {
	n := testenv.NewNode(t, testenv.NodeOptions{PUs: 2})
	pinger, target := n.PUs[0], n.PUs[1]
	d := testenv.NewDaemon(t, n, testenv.DaemonOptions{
		Policy:     fmt.Sprintf(echoDirectionPolicy, pinger.Addr, target.Addr, pinger.Addr6, target.Addr6),
		SecretsDir: testenv.PSKDir(t),
	})
	d.Start()
	d.Attach(pinger, "app=pinger")
	d.Attach(target, "app=target")
	for _, v6 := range []bool{false, true} {
		t.Run(map[bool]string{false: "IPv4", true: "IPv6"}[v6], func(t *testing.T) {
			from, to := pinger.Addr, target.Addr
			if v6 {
				from, to = pinger.Addr6, target.Addr6
			}
			a, b := openEcho(t, pinger, v6), openEcho(t, target, v6)
			const id = 0x5151
			ping := func(seq uint16) {
				t.Helper()
				for try := 0; ; try++ { // the first may meet neighbour discovery
					a.request(t, to, id, seq)
					if a.reply(id, seq, time.Second) {
						return
					}
					if try == 4 {
						t.Fatalf("pinger -> target (allowed), seq %d: no reply", seq)
					}
				}
			}
			for seq := uint16(1); seq <= 5; seq++ {
				ping(seq)
			}
			atPinger := pinger.Raw()
			isRequestFromTarget := func(p gopacket.Packet) bool {
				if v6 {
					ip, _ := p.Layer(layers.LayerTypeIPv6).(*layers.IPv6)
					icmp, _ := p.Layer(layers.LayerTypeICMPv6).(*layers.ICMPv6)
					return ip != nil && icmp != nil && ip.SrcIP.Equal(to.AsSlice()) && icmp.TypeCode.Type() == 128
				}
				ip, _ := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
				icmp, _ := p.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4)
				return ip != nil && icmp != nil && ip.SrcIP.Equal(to.AsSlice()) && icmp.TypeCode.Type() == 8
			}
			denied := func(seq uint16) {
				t.Helper()
				for i, bid := range []uint16{id, id + 1} {
					seq := seq + uint16(i)
					before := dropsOf(t, d)
					b.request(t, from, bid, seq)
					waitDropOn(t, d, before, "policy-denied")
					if b.reply(bid, seq, 300*time.Millisecond) {
						t.Errorf("target -> pinger (denied), id %#x: target got a reply", bid)
					}
					if got := atPinger.Capture(200*time.Millisecond, isRequestFromTarget); len(got) != 0 {
						t.Errorf("target -> pinger (denied), id %#x: %d echo requests reached pinger", bid, len(got))
					}
				}
			}
			denied(100)
			ping(6) // pinger's own flow is untouched
			// A restarted daemon takes the flow back from the kernel's
			// authorized set with its direction: pinger's ping goes on,
			// target's requests are still decided.
			d.Stop(syscall.SIGTERM)
			d.Start()
			ping(7)
			denied(200)
			ping(8)
		})
	}
}
