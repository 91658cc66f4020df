package packet

import (
	"net"
	"net/netip"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/trireme-go/trireme/reason"
)

var (
	ndpMAC = net.HardwareAddr{2, 0, 0, 0, 0, 1}
	llA    = netip.MustParseAddr("fe80::1")
	llB    = netip.MustParseAddr("fe80::2")
	ulaA   = netip.MustParseAddr("fd00:77::2")
	ulaB   = netip.MustParseAddr("fd00:77::3")
)

// icmp6Frame builds an Ethernet/IPv6/ICMPv6 frame; hbh puts a hop-by-hop
// header (router alert) before the ICMPv6 header, as MLD has it.
func icmp6Frame(t testing.TB, src, dst netip.Addr, hopLimit, typ uint8, body []byte, hbh bool) []byte {
	t.Helper()
	ip := &layers.IPv6{Version: 6, NextHeader: layers.IPProtocolICMPv6, HopLimit: hopLimit, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
	icmp := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(typ, 0)}
	_ = icmp.SetNetworkLayerForChecksum(ip)
	ls := []gopacket.SerializableLayer{&layers.Ethernet{SrcMAC: ndpMAC, DstMAC: ndpMAC, EthernetType: layers.EthernetTypeIPv6}, ip}
	if hbh {
		ip.NextHeader = layers.IPProtocolIPv6HopByHop
		ip.HopByHop = &layers.IPv6HopByHop{}
		ip.HopByHop.NextHeader = layers.IPProtocolICMPv6
		ip.HopByHop.Options = []*layers.IPv6HopByHopOption{{OptionType: 5, OptionLength: 2, OptionData: []byte{0, 0}}, {OptionType: 1, OptionLength: 0, OptionData: []byte{}}}
	}
	ls = append(ls, icmp, gopacket.Payload(body))
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatal(err)
	}
	return append([]byte(nil), buf.Bytes()...)
}

// nsBody is an NS (or NA) body for target with a source link-layer
// option: 28 bytes, a 32-byte ICMPv6 message.
func nsBody(target netip.Addr) []byte {
	b := append(make([]byte, 4), target.AsSlice()...)
	return append(b, append([]byte{1, 1}, ndpMAC...)...)
}

// TestOnLink: neighbour discovery and MLD pass only when they stay on the
// link; the same types off-link, routed, oversized or behind extension
// headers are not link plumbing.
func TestOnLink(t *testing.T) {
	sn := netip.MustParseAddr("ff02::1:ff00:3")
	ns := func(n int) []byte { return append(nsBody(ulaB), make([]byte, n)...) }
	cases := []struct {
		name  string
		frame []byte
		want  bool
	}{
		{"NS to solicited-node", icmp6Frame(t, ulaA, sn, 255, 135, ns(0), false), true},
		{"NS to a link-local", icmp6Frame(t, llA, llB, 255, 135, ns(0), false), true},
		{"NA to a neighbour's ULA", icmp6Frame(t, ulaB, ulaA, 255, 136, ns(0), false), true},
		{"DAD NS from ::", icmp6Frame(t, netip.IPv6Unspecified(), sn, 255, 135, ns(0), false), true},
		{"RS to all routers", icmp6Frame(t, llA, netip.MustParseAddr("ff02::2"), 255, 133, make([]byte, 4), false), true},
		{"RA to all nodes", icmp6Frame(t, llA, netip.MustParseAddr("ff02::1"), 255, 134, make([]byte, 12), false), true},
		{"MLDv2 report", icmp6Frame(t, llA, netip.MustParseAddr("ff02::16"), 1, 143, make([]byte, 4), true), true},
		{"NS with hop limit 64", icmp6Frame(t, llA, llB, 64, 135, ns(0), false), false},
		{"NS off-link", icmp6Frame(t, ulaA, netip.MustParseAddr("2001:db8::7"), 255, 135, ns(0), false), false},
		{"NA to site-scope multicast", icmp6Frame(t, ulaA, netip.MustParseAddr("ff05::1"), 255, 136, ns(0), false), false},
		{"NS of 600 bytes", icmp6Frame(t, llA, llB, 255, 135, ns(600), false), false},
		{"NS of exactly MaxNDP bytes", icmp6Frame(t, llA, llB, 255, 135, ns(MaxNDP-32), false), true},
		{"NS of MaxNDP+1 bytes", icmp6Frame(t, llA, llB, 255, 135, ns(MaxNDP-31), false), false},
		{"NS behind a hop-by-hop header", icmp6Frame(t, llA, llB, 255, 135, ns(0), true), false},
		{"NS from :: to unicast", icmp6Frame(t, netip.IPv6Unspecified(), llB, 255, 135, ns(0), false), false},
		{"NA from ::", icmp6Frame(t, netip.IPv6Unspecified(), sn, 255, 136, ns(0), false), false},
		{"MLD report with hop limit 64", icmp6Frame(t, llA, netip.MustParseAddr("ff02::16"), 64, 143, make([]byte, 4), true), false},
		{"MLD report to a unicast ULA", icmp6Frame(t, llA, ulaB, 1, 143, make([]byte, 4), true), false},
		{"echo request", icmp6Frame(t, llA, llB, 255, 128, make([]byte, 8), false), false},
	}
	for _, c := range cases {
		var p Packet
		if code := p.Decode(c.frame); code != reason.None {
			t.Fatalf("%s: parse: %v", c.name, code)
		}
		if got := p.OnLink(); got != c.want {
			t.Errorf("%s: OnLink = %v, want %v", c.name, got, c.want)
		}
	}
}

// TestFromRouter: what only routers and DHCP servers send.
func TestFromRouter(t *testing.T) {
	udp := func(src, dst netip.Addr, sport uint16) []byte {
		var ip gopacket.NetworkLayer
		eth := &layers.Ethernet{SrcMAC: ndpMAC, DstMAC: ndpMAC, EthernetType: layers.EthernetTypeIPv4}
		if src.Is4() {
			ip = &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
		} else {
			eth.EthernetType = layers.EthernetTypeIPv6
			ip = &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolUDP, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
		}
		u := &layers.UDP{SrcPort: layers.UDPPort(sport), DstPort: 68}
		_ = u.SetNetworkLayerForChecksum(ip)
		buf := gopacket.NewSerializeBuffer()
		if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ip.(gopacket.SerializableLayer), u, gopacket.Payload("x")); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}
	v4a, v4b := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	cases := []struct {
		name  string
		frame []byte
		want  bool
	}{
		{"RA", icmp6Frame(t, llA, netip.MustParseAddr("ff02::1"), 255, 134, make([]byte, 12), false), true},
		{"redirect", icmp6Frame(t, llA, llB, 255, 137, make([]byte, 36), false), true},
		{"RA behind a hop-by-hop header", icmp6Frame(t, llA, llB, 255, 134, make([]byte, 12), true), true},
		{"NS", icmp6Frame(t, llA, llB, 255, 135, nsBody(llB), false), false},
		{"DHCPv4 server reply", udp(v4a, v4b, 67), true},
		{"DHCPv4 client request", udp(v4a, v4b, 68), false},
		{"DHCPv6 server reply", udp(llA, llB, 547), true},
		{"DHCPv6 client", udp(llA, llB, 546), false},
		{"UDP source port 67 over IPv6", udp(llA, llB, 67), false},
	}
	for _, c := range cases {
		var p Packet
		if code := p.Decode(c.frame); code != reason.None {
			t.Fatalf("%s: parse: %v", c.name, code)
		}
		if got := p.FromRouter(); got != c.want {
			t.Errorf("%s: FromRouter = %v, want %v", c.name, got, c.want)
		}
	}
}

// FuzzOnLink: any frame that parses gets an answer from OnLink and
// FromRouter without a panic, and what OnLink passes is link plumbing
// with the hop limit of its kind and a link-scoped destination.
func FuzzOnLink(f *testing.F) {
	sn := netip.MustParseAddr("ff02::1:ff00:3")
	f.Add(icmp6Frame(f, ulaA, sn, 255, 135, nsBody(ulaB), false))
	f.Add(icmp6Frame(f, ulaB, ulaA, 255, 136, nsBody(ulaB), false))
	f.Add(icmp6Frame(f, llA, netip.MustParseAddr("ff02::16"), 1, 143, make([]byte, 4), true))
	f.Add(icmp6Frame(f, llA, netip.MustParseAddr("ff02::1"), 255, 134, make([]byte, 12), false))
	f.Fuzz(func(t *testing.T, frame []byte) {
		var p Packet
		if p.Decode(frame) != reason.None {
			return
		}
		_ = p.FromRouter()
		if !p.OnLink() {
			return
		}
		hl := p.Frame[p.L3+7]
		nd := p.ICMPType >= 133 && p.ICMPType <= 137
		switch {
		case !p.IsNDP():
			t.Fatal("OnLink passed a packet that is not NDP or MLD")
		case nd && (hl != 255 || p.End-p.L4 > MaxNDP || p.Dst.IsGlobalUnicast() && !sameSlash64(p.Src, p.Dst)):
			t.Fatalf("NDP passed: hop limit %d, %d bytes, %v -> %v", hl, p.End-p.L4, p.Src, p.Dst)
		case !nd && hl != 1:
			t.Fatalf("MLD passed with hop limit %d", hl)
		}
	})
}
