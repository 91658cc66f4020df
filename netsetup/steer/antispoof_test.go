package steer_test

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/trireme-go/trireme/netsetup/steer"
	"github.com/trireme-go/trireme/testenv"
)

// outcome is what the rules do with a crafted frame.
type outcome int

const (
	spoofed    outcome = iota // dropped by anti-spoofing, counted <pu>_in_spoof
	rogue                     // dropped as router/DHCP server traffic, <pu>_in_rogue
	steered                   // sent to the dataplane (nobody reads the TAP here)
	passed                    // accepted in the kernel: it reaches the other PU
	authorized                // passed as an authorized flow's packet by rule 5, counted <pu>_{in,out}_auth
	fast                      // passed as an authorized flow's packet by the fast path (rule F), <pu>_{in,out}_fast
)

func (o outcome) String() string {
	return [...]string{"spoofed", "rogue", "steered", "passed", "authorized", "fast"}[o]
}

// counterOf returns the counter an outcome increments.
func counterOf(c steer.Counters, o outcome, egress bool) uint64 {
	switch o {
	case spoofed:
		return c.Spoofed.Packets
	case rogue:
		return c.RogueRouter.Packets
	case steered:
		if egress {
			return c.OutSteered.Packets
		}
		return c.InSteered.Packets
	case authorized: // Authorized includes the fast path's
		if egress {
			return c.OutAuthorized.Packets - c.OutFast.Packets
		}
		return c.InAuthorized.Packets - c.InFast.Packets
	case fast:
		if egress {
			return c.OutFast.Packets
		}
		return c.InFast.Packets
	}
	return 0
}

// frameCase is one crafted frame and what must happen to it.
type frameCase struct {
	name  string
	frame []byte
	want  outcome
}

// runFrameCases sends each frame from one PU and checks the outcome on
// the steered PU pu's counters and, at the end, at the other PU's
// interface (frames wait in its socket until then).
func runFrameCases(t *testing.T, r *rig, pu string, from, to *testenv.PU, egress bool, cases []frameCase) {
	t.Helper()
	raw, victim := from.Raw(), to.Raw()
	for _, c := range cases {
		before, err := r.s.Counters(pu)
		if err != nil {
			t.Fatal(err)
		}
		raw.MustSend(c.frame)
		after := before
		for deadline := time.Now().Add(time.Second); c.want != passed && time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
			if after, err = r.s.Counters(pu); err != nil {
				t.Fatal(err)
			}
			if counterOf(after, c.want, egress) != counterOf(before, c.want, egress) {
				break
			}
		}
		if c.want == passed {
			time.Sleep(20 * time.Millisecond)
			after, _ = r.s.Counters(pu)
		}
		// The PU's own IPv6 chatter (MLD reports) is steered too: the
		// steered counter may grow by more than one.
		if d := counterOf(after, c.want, egress) - counterOf(before, c.want, egress); c.want != passed && d != 1 && !(c.want == steered && d > 1) {
			t.Errorf("%s: %v counter grew by %d, want 1 (%+v -> %+v)", c.name, c.want, d, before, after)
		}
		for _, o := range []outcome{spoofed, rogue, authorized, fast} {
			if o != c.want && counterOf(after, o, egress) != counterOf(before, o, egress) {
				t.Errorf("%s: %v counter grew too (%+v -> %+v)", c.name, o, before, after)
			}
		}
	}
	got := victim.Capture(300*time.Millisecond, nil)
	for _, c := range cases {
		reached := false
		for _, p := range got {
			reached = reached || bytes.HasPrefix(p.Data(), unpadded(c.frame))
		}
		if reached != (c.want == passed || c.want == authorized || c.want == fast) {
			t.Errorf("%s: reached %s: %v, want %v", c.name, to.Name, reached, c.want)
		}
	}
}

// unpadded returns an untagged IPv4 or IPv6 frame without the Ethernet
// padding that follows its IP packet (gopacket pads frames to 60 bytes;
// the kernel trims an IPv4 packet to its total length when the netdev
// ingress hook validates it, so a short frame arrives shorter than sent).
func unpadded(frame []byte) []byte {
	if len(frame) < 14+40 {
		return frame
	}
	n := len(frame)
	switch binary.BigEndian.Uint16(frame[12:]) {
	case 0x0800:
		n = 14 + int(binary.BigEndian.Uint16(frame[14+2:]))
	case 0x86dd:
		n = 14 + 40 + int(binary.BigEndian.Uint16(frame[14+4:]))
	}
	return frame[:min(n, len(frame))]
}

var (
	bcast   = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	offLink = netip.MustParseAddr("2001:db8::7")
)

// TestAntiSpoofing: a steered PU sends, from an AF_PACKET socket, frames
// naming another sender (MAC, IP, ARP sender, NDP link-layer options),
// router and DHCP server messages, and NDP that is not on-link. Each is
// dropped and counted by the right rule of its chain, or steered to the
// dataplane; only its own ARP and on-link NDP pass in the kernel.
func TestAntiSpoofing(t *testing.T) {
	r := newRig(t, 2, 1) // pu0 steered (the attacker), PU 1 a plain port
	att, vic := r.node.PUs[0], r.node.PUs[1]
	if c, _ := r.s.Counters("pu0"); c.Spoofed.Packets != 0 || c.RogueRouter.Packets != 0 {
		t.Fatalf("a PU that did nothing wrong has drops: %+v", c)
	}
	A, V := att.MACOf(), vic.MACOf()
	aLL, vLL := att.LinkLocal(), vic.LinkLocal()
	udp := func(src net.HardwareAddr, from netip.Addr) []byte {
		return testenv.UDPDatagram(src, V, netip.AddrPortFrom(from, 4000), netip.AddrPortFrom(vic.Addr, 5353), []byte("spoof"))
	}
	udp6 := func(from, to netip.Addr) []byte {
		return testenv.UDP6Datagram(A, V, netip.AddrPortFrom(from, 4000), netip.AddrPortFrom(to, 5353), []byte("spoof6"))
	}
	icmp6 := func(src, dst netip.Addr, dstMAC net.HardwareAddr, hl, typ uint8, body []byte) []byte {
		return testenv.ICMPv6Frame(A, dstMAC, src, dst, hl, typ, body)
	}
	nonce := []byte{14, 1, 1, 2, 3, 4, 5, 6}
	snV := testenv.SolicitedNode(vic.Addr6)
	snA := testenv.SolicitedNode(att.Addr6)
	vlan := func(ls ...gopacket.SerializableLayer) []byte { return testenv.Frame(ls...) }
	spoofedIP := testenv.IPv4(netip.MustParseAddr("192.168.100.5"), vic.Addr, layers.IPProtocolUDP)
	spoofedUDP := &layers.UDP{SrcPort: 4000, DstPort: 5353}
	_ = spoofedUDP.SetNetworkLayerForChecksum(spoofedIP)

	runFrameCases(t, r, "pu0", att, vic, false, []frameCase{
		{"own UDP (to the dataplane)", udp(A, att.Addr), steered},
		{"another PU's MAC", udp(V, att.Addr), spoofed},
		{"a random MAC", udp(net.HardwareAddr{0x02, 1, 2, 3, 4, 5}, att.Addr), spoofed},
		{"an allowed external source", udp(A, netip.MustParseAddr("192.168.100.5")), spoofed},
		{"the victim's address", udp(A, vic.Addr), spoofed},
		{"0.0.0.0", udp(A, netip.IPv4Unspecified()), spoofed},
		{"own ARP reply", testenv.ARPFrame(A, V, 2, A, att.Addr, V, vic.Addr), passed},
		{"own ARP request", testenv.ARPFrame(A, bcast, 1, A, att.Addr, make(net.HardwareAddr, 6), vic.Addr), passed},
		{"ARP reply poisoning an external address", testenv.ARPFrame(A, V, 2, A, netip.MustParseAddr("192.168.100.5"), V, vic.Addr), spoofed},
		{"ARP claiming the victim's address", testenv.ARPFrame(A, bcast, 2, A, vic.Addr, bcast, vic.Addr), spoofed},
		{"ARP with the victim's MAC", testenv.ARPFrame(A, bcast, 1, V, att.Addr, make(net.HardwareAddr, 6), vic.Addr), spoofed},
		{"ARP probe from 0.0.0.0", testenv.ARPFrame(A, bcast, 1, A, netip.IPv4Unspecified(), make(net.HardwareAddr, 6), att.Addr), spoofed},
		{"non-Ethernet/IPv4 ARP", func() []byte {
			f := testenv.ARPFrame(A, bcast, 1, A, att.Addr, make(net.HardwareAddr, 6), vic.Addr)
			f[14+1] = 6 // htype 6 (IEEE 802)
			return f
		}(), spoofed},
		{"LLDP", testenv.Frame(testenv.Eth(A, V, layers.EthernetType(0x88cc)), gopacket.Payload(make([]byte, 46))), spoofed},
		// The kernel takes a first VLAN tag off before the hook: the IP
		// rules see the spoofed source.
		{"VLAN-tagged, spoofed source", vlan(testenv.Eth(A, V, layers.EthernetTypeDot1Q),
			&layers.Dot1Q{VLANIdentifier: 7, Type: layers.EthernetTypeIPv4}, spoofedIP, spoofedUDP, gopacket.Payload([]byte("vlan"))), spoofed},
		{"QinQ", vlan(testenv.Eth(A, V, layers.EthernetTypeQinQ),
			&layers.Dot1Q{VLANIdentifier: 7, Type: layers.EthernetTypeDot1Q},
			&layers.Dot1Q{VLANIdentifier: 8, Type: layers.EthernetTypeIPv4}, spoofedIP, spoofedUDP, gopacket.Payload([]byte("qinq"))), spoofed},
		{"own IPv6 (to the dataplane)", udp6(att.Addr6, vic.Addr6), steered},
		{"own link-local (to the dataplane)", udp6(aLL, vLL), steered},
		{"another ULA", udp6(netip.MustParseAddr("fd00:77::99"), vic.Addr6), spoofed},
		{"another link-local", udp6(vLL, vic.Addr6), spoofed},
		{":: to a unicast address", udp6(netip.IPv6Unspecified(), vic.Addr6), spoofed},
		{":: UDP to link-scope multicast", udp6(netip.IPv6Unspecified(), netip.MustParseAddr("ff02::1")), spoofed},
		{":: ICMPv6 echo", icmp6(netip.IPv6Unspecified(), netip.MustParseAddr("ff02::1"), testenv.MulticastMAC(netip.MustParseAddr("ff02::1")), 255, 128, make([]byte, 8)), spoofed},
		{"DAD NS from :: with a nonce", icmp6(netip.IPv6Unspecified(), snA, testenv.MulticastMAC(snA), 255, 135, testenv.NSBody(att.Addr6, nonce)), passed},
		{"NS from its link-local", icmp6(aLL, snV, testenv.MulticastMAC(snV), 255, 135, testenv.NSBody(vic.Addr6, testenv.LinkLayerOption(1, A))), passed},
		{"NA to a neighbour's ULA", icmp6(att.Addr6, vic.Addr6, V, 255, 136, testenv.NABody(att.Addr6, testenv.LinkLayerOption(2, A))), passed},
		{"NS with the victim's MAC", icmp6(aLL, snV, testenv.MulticastMAC(snV), 255, 135, testenv.NSBody(vic.Addr6, testenv.LinkLayerOption(1, V))), spoofed},
		{"NA with the victim's MAC", icmp6(aLL, vLL, V, 255, 136, testenv.NABody(vic.Addr6, testenv.LinkLayerOption(2, V))), spoofed},
		{"NA with two options", icmp6(aLL, vLL, V, 255, 136, testenv.NABody(att.Addr6, testenv.LinkLayerOption(2, A), testenv.LinkLayerOption(2, V))), spoofed},
		{"NS with 600 bytes", icmp6(aLL, vLL, V, 255, 135, testenv.NSBody(vic.Addr6, make([]byte, 600))), spoofed},
		{"RS with its MAC", icmp6(aLL, netip.MustParseAddr("ff02::2"), testenv.MulticastMAC(netip.MustParseAddr("ff02::2")), 255, 133, append(make([]byte, 4), testenv.LinkLayerOption(1, A)...)), passed},
		{"RS with the victim's MAC", icmp6(aLL, netip.MustParseAddr("ff02::2"), testenv.MulticastMAC(netip.MustParseAddr("ff02::2")), 255, 133, append(make([]byte, 4), testenv.LinkLayerOption(1, V)...)), spoofed},
		{"NA with hop limit 64", icmp6(aLL, vLL, V, 64, 136, testenv.NABody(att.Addr6, testenv.LinkLayerOption(2, A))), steered},
		{"NA off-link", icmp6(att.Addr6, offLink, V, 255, 136, testenv.NABody(att.Addr6, testenv.LinkLayerOption(2, A))), steered},
		{"router advertisement", icmp6(aLL, netip.MustParseAddr("ff02::1"), testenv.MulticastMAC(netip.MustParseAddr("ff02::1")), 255, 134,
			testenv.RABody(testenv.LinkLayerOption(1, A), testenv.PrefixOption(netip.MustParsePrefix("2001:db8:bad::/64")))), rogue},
		{"redirect", icmp6(aLL, vLL, V, 255, 137, append(make([]byte, 4+32), testenv.LinkLayerOption(2, A)...)), rogue},
		{"DHCPv4 server reply", testenv.UDPDatagram(A, bcast, netip.AddrPortFrom(att.Addr, 67), netip.AddrPortFrom(netip.AddrFrom4([4]byte{255, 255, 255, 255}), 68), make([]byte, 240)), rogue},
		{"DHCPv6 server reply", testenv.UDP6Datagram(A, V, netip.AddrPortFrom(aLL, 547), netip.AddrPortFrom(vLL, 546), make([]byte, 40)), rogue},
	})

	// Toward the PU: NDP from a neighbour passes when on-link, goes to the
	// dataplane when it is not (hop limit, size, destination, extension
	// headers).
	icmp6from := func(dst netip.Addr, dstMAC net.HardwareAddr, hl, typ uint8, body []byte) []byte {
		return testenv.ICMPv6Frame(V, dstMAC, vLL, dst, hl, typ, body)
	}
	snAtt := testenv.SolicitedNode(att.Addr6)
	runFrameCases(t, r, "pu0", vic, att, true, []frameCase{
		{"NS to its solicited-node address", icmp6from(snAtt, testenv.MulticastMAC(snAtt), 255, 135, testenv.NSBody(att.Addr6, testenv.LinkLayerOption(1, V))), passed},
		{"NA to its ULA", testenv.ICMPv6Frame(V, A, vic.Addr6, att.Addr6, 255, 136, testenv.NABody(vic.Addr6, testenv.LinkLayerOption(2, V))), passed},
		{"RA from a router on the link", icmp6from(netip.MustParseAddr("ff02::1"), testenv.MulticastMAC(netip.MustParseAddr("ff02::1")), 255, 134,
			testenv.RABody(testenv.LinkLayerOption(1, V))), passed},
		{"NS with hop limit 254", icmp6from(snAtt, testenv.MulticastMAC(snAtt), 254, 135, testenv.NSBody(att.Addr6)), steered},
		{"NS with 600 bytes", icmp6from(aLL, A, 255, 135, testenv.NSBody(att.Addr6, make([]byte, 600))), steered},
		{"NA to an address that is not its own", testenv.ICMPv6Frame(V, A, vic.Addr6, netip.MustParseAddr("fd00:77::99"), 255, 136, testenv.NABody(vic.Addr6)), steered},
	})
}

// TestExcludedPeerOnly: an excluded network is matched on the peer only.
// A PU whose own address is excluded is still steered both ways; an
// excluded peer passes in the kernel both ways.
func TestExcludedPeerOnly(t *testing.T) {
	r := newRig(t, 2, 1) // no dataplane: what is steered is lost
	pu, ext := r.node.PUs[0], r.node.PUs[1]
	lnExt, lnPU := ext.Listen(0), pu.Listen(0)
	echoServer(lnExt)
	echoServer(lnPU)
	dial := func(from *testenv.PU, ln net.Listener) error {
		c, err := from.Dial(addrOf(ln), 500*time.Millisecond)
		if err == nil {
			defer c.Close()
			echo(t, c, "x")
		}
		return err
	}
	for _, p := range []netip.Prefix{netip.PrefixFrom(pu.Addr, 32), netip.PrefixFrom(pu.Addr6, 128)} {
		if err := r.s.AddExcluded(p); err != nil {
			t.Fatal(err)
		}
	}
	if dial(pu, lnExt) == nil {
		t.Error("a PU whose own address is excluded connected out past the steering")
	}
	if dial(ext, lnPU) == nil {
		t.Error("a peer reached a PU whose own address is excluded past the steering")
	}
	if err := r.s.AddExcluded(netip.PrefixFrom(ext.Addr, 32)); err != nil {
		t.Fatal(err)
	}
	if err := dial(pu, lnExt); err != nil {
		t.Errorf("PU -> excluded peer: %v", err)
	}
	if err := dial(ext, lnPU); err != nil {
		t.Errorf("excluded peer -> PU: %v", err)
	}
}

// TestApplyManyPUs: one Apply with many PUs (each with its anti-spoofing
// rules and identity sets) and a restart's Apply over them fit in one
// transaction: the kernel's answers (it echoes every rule) used to
// overflow the socket's receive buffer at 4 PUs.
func TestApplyManyPUs(t *testing.T) {
	r := newRig(t, 24, 24)
	for i := 0; i < 2; i++ {
		r.s.Close()
		r.openSteerer()
		if err := r.s.Apply(r.pus, nil); err != nil {
			t.Fatalf("Apply %d over %d PUs: %v", i, len(r.pus), err)
		}
	}
	all, err := r.s.AllCounters()
	if err != nil || len(all) != len(r.pus) {
		t.Fatalf("AllCounters: %d PUs, %v", len(all), err)
	}
	for _, pu := range r.pus {
		one, err := r.s.Counters(pu.Name)
		if err != nil || one.InSteered.Packets > all[pu.Name].InSteered.Packets+10 {
			t.Errorf("%s: Counters %+v, AllCounters %+v (%v)", pu.Name, one, all[pu.Name], err)
		}
	}
}
