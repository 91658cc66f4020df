package dataplane

import (
	"bytes"
	"net/netip"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/trireme-go/trireme/dataplane/packet"
	"github.com/trireme-go/trireme/flow"
	"github.com/trireme-go/trireme/reason"
)

// A policy with an internet rule: anyone may reach the PU on tcp/443, the
// PU may reach anything.
const internet = `
targetNetworks: [10.0.0.0/8]
excludedNetworks: [10.255.0.0/16]
policies:
  - name: public
    selector: app=web
    ingress:
      - {name: https, from: [{cidr: 0.0.0.0/0}, {cidr: "::/0"}], ports: [tcp/443], action: allow}
    egress:
      - {name: out, to: [{cidr: 0.0.0.0/0}, {cidr: "::/0"}], ports: [tcp/80, udp/53], action: allow}
`

func ip6Frame(t testing.TB, src, dst netip.Addr, hopLimit uint8, l ...gopacket.SerializableLayer) []byte {
	t.Helper()
	ip := &layers.IPv6{Version: 6, HopLimit: hopLimit, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
	switch x := l[0].(type) {
	case *layers.TCP:
		ip.NextHeader = layers.IPProtocolTCP
		_ = x.SetNetworkLayerForChecksum(ip)
	case *layers.UDP:
		ip.NextHeader = layers.IPProtocolUDP
		_ = x.SetNetworkLayerForChecksum(ip)
	case *layers.ICMPv6:
		ip.NextHeader = layers.IPProtocolICMPv6
		_ = x.SetNetworkLayerForChecksum(ip)
	}
	buf := gopacket.NewSerializeBuffer()
	ls := append([]gopacket.SerializableLayer{&layers.Ethernet{SrcMAC: cMAC, DstMAC: sMAC, EthernetType: layers.EthernetTypeIPv6}, ip}, l...)
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatal(err)
	}
	return bytes.Clone(buf.Bytes())
}

func icmp6(typ uint8, body []byte) []gopacket.SerializableLayer {
	return []gopacket.SerializableLayer{&layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(typ, 0)}, gopacket.Payload(body)}
}

func syn6(sport, dport uint16) *layers.TCP {
	return &layers.TCP{SrcPort: layers.TCPPort(sport), DstPort: layers.TCPPort(dport), SYN: true, Seq: 1, Window: 64240,
		Options: []layers.TCPOption{{OptionType: layers.TCPOptionKindMSS, OptionLength: 4, OptionData: []byte{5, 0xa0}}}}
}

var (
	ll1 = netip.MustParseAddr("fe80::1")
	ll2 = netip.MustParseAddr("fe80::2")
)

// TestLinkPlumbing: NDP and MLD pass the enforcer only when on-link; a PU
// sends no router advertisement, redirect or DHCP server reply; NDP from
// the network that is on-link passes, router advertisements included.
func TestLinkPlumbing(t *testing.T) {
	s := newSide(t, "n", internet, map[string]string{"app": "web"}, MidStreamDrop, flow.Config{})
	ns := append(make([]byte, 4), ll2.AsSlice()...)
	sn := netip.MustParseAddr("ff02::1:ff00:2")
	cases := []struct {
		name  string
		dir   Direction
		frame []byte
		code  reason.Code // None: forwarded unchanged
	}{
		{"NS to solicited-node", FromApp, ip6Frame(t, ll1, sn, 255, icmp6(135, ns)...), reason.None},
		{"NA to a link-local", FromNet, ip6Frame(t, ll2, ll1, 255, icmp6(136, ns)...), reason.None},
		{"RA from the network", FromNet, ip6Frame(t, ll2, netip.MustParseAddr("ff02::1"), 255, icmp6(134, make([]byte, 12))...), reason.None},
		{"NS with hop limit 64", FromApp, ip6Frame(t, ll1, ll2, 64, icmp6(135, ns)...), reason.InvalidNDP},
		{"NS to an off-link address", FromApp, ip6Frame(t, ll1, netip.MustParseAddr("2001:db8::7"), 255, icmp6(135, ns)...), reason.InvalidNDP},
		{"NS carrying 600 bytes", FromApp, ip6Frame(t, ll1, ll2, 255, icmp6(135, append(ns, make([]byte, 600)...))...), reason.InvalidNDP},
		{"NS of 600 bytes from the network", FromNet, ip6Frame(t, ll2, ll1, 255, icmp6(135, append(ns, make([]byte, 600)...))...), reason.InvalidNDP},
		{"MLD report with hop limit 64 to a ULA", FromApp, ip6Frame(t, ll1, netip.MustParseAddr("fd00::9"), 64, icmp6(143, make([]byte, 4))...), reason.InvalidNDP},
		{"RA from the PU", FromApp, ip6Frame(t, ll1, netip.MustParseAddr("ff02::1"), 255, icmp6(134, make([]byte, 12))...), reason.RogueRouter},
		{"redirect from the PU", FromApp, ip6Frame(t, ll1, ll2, 255, icmp6(137, make([]byte, 36))...), reason.RogueRouter},
		{"DHCPv6 server reply from the PU", FromApp, ip6Frame(t, ll1, ll2, 64, &layers.UDP{SrcPort: 547, DstPort: 546}, gopacket.Payload("x")), reason.RogueRouter},
		{"DHCPv4 server reply from the PU", FromApp, udpFrame(t, cIP, netip.MustParseAddr("255.255.255.255"), 67, 68), reason.RogueRouter},
	}
	for _, c := range cases {
		r := s.run(c.dir, c.frame, t0)
		if c.code == reason.None {
			if r.v != Forward || !bytes.Equal(r.frame, c.frame) {
				t.Errorf("%s: %v %v, want forwarded unchanged", c.name, r.v, r.code)
			}
			continue
		}
		if r.v != Drop || r.code != c.code {
			t.Errorf("%s: %v %v, want drop %v", c.name, r.v, r.code, c.code)
		}
	}
	if got := s.e.Stats().Drops; got[reason.InvalidNDP] != 5 || got[reason.RogueRouter] != 4 {
		t.Errorf("drops: invalid-ndp %d (want 5), rogue-router %d (want 4)", got[reason.InvalidNDP], got[reason.RogueRouter])
	}
}

// TestLinkLocalPeersNeedTokens: a link-local peer is inside the target
// networks whatever the policy lists: a SYN from one without a token is
// missing-token although an internet (::/0) rule allows the port, and a
// SYN toward one carries the PU's token.
func TestLinkLocalPeersNeedTokens(t *testing.T) {
	s := newSide(t, "n", internet, map[string]string{"app": "web"}, MidStreamDrop, flow.Config{})
	in := ip6Frame(t, ll2, ll1, 64, syn6(40000, 443))
	if r := s.run(FromNet, in, t0); r.v != Drop || r.code != reason.MissingToken {
		t.Errorf("link-local SYN without a token: %v %v, want drop missing-token", r.v, r.code)
	}
	// The same port from a global address is an external peer: allowed.
	ext := ip6Frame(t, netip.MustParseAddr("2001:db8::5"), netip.MustParseAddr("2001:db8::1"), 64, syn6(40000, 443))
	if r := s.run(FromNet, ext, t0); r.v != Forward {
		t.Errorf("external SYN to tcp/443: %v %v", r.v, r.code)
	}
	out := ip6Frame(t, ll1, ll2, 64, syn6(40001, 80))
	r := s.run(FromApp, out, t0)
	if r.v != Forward || len(r.frame) <= len(out) {
		t.Errorf("SYN toward a link-local peer: %v %v, %d bytes (sent %d): want it forwarded with a token", r.v, r.code, len(r.frame), len(out))
	}
}

// TestExcludedSourceFromPU: a PU that sends from an excluded address is
// not excluded (only its peer's address is looked at): its egress rules
// still decide.
func TestExcludedSourceFromPU(t *testing.T) {
	s := newSide(t, "n", internet, map[string]string{"app": "web"}, MidStreamDrop, flow.Config{})
	syn := tcpFrame(t, seg{src: netip.MustParseAddr("10.255.0.9"), dst: extIP, sport: 40000, dport: 22, flags: packet.SYN, seq: 1})
	if r := s.run(FromApp, syn, t0); r.v == Forward || r.code != reason.PolicyDenied {
		t.Errorf("SYN from an excluded source to a denied port: %v %v, want policy-denied", r.v, r.code)
	}
	// Toward an excluded peer everything passes.
	syn = tcpFrame(t, seg{src: cIP, dst: netip.MustParseAddr("10.255.0.9"), sport: 40001, dport: 22, flags: packet.SYN, seq: 1})
	r := s.run(FromApp, syn, t0)
	mustDeliver(t, "SYN to an excluded peer", r, syn)
}
