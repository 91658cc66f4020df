package steer_test

import (
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/trireme-go/trireme/ipproto"
	"github.com/trireme-go/trireme/netsetup/steer"
	"github.com/trireme-go/trireme/testenv"
	"github.com/trireme-go/trireme/tokens"
)

// tcp6Segment builds an Ethernet/IPv6/TCP frame (flags as for
// testenv.TCPSegment: "A", "S", "F", "R").
func tcp6Segment(srcMAC, dstMAC net.HardwareAddr, src, dst netip.AddrPort, flags string) []byte {
	ip := testenv.IPv6(src.Addr(), dst.Addr(), layers.IPProtocolTCP, 64)
	tcp := &layers.TCP{SrcPort: layers.TCPPort(src.Port()), DstPort: layers.TCPPort(dst.Port()), Seq: 1, Ack: 1, Window: 64240}
	for _, f := range flags {
		switch f {
		case 'A':
			tcp.ACK = true
		case 'S':
			tcp.SYN = true
		case 'F':
			tcp.FIN = true
		case 'R':
			tcp.RST = true
		}
	}
	_ = tcp.SetNetworkLayerForChecksum(ip)
	return testenv.Frame(testenv.Eth(srcMAC, dstMAC, layers.EthernetTypeIPv6), ip, tcp, gopacket.Payload("fast"))
}

// withExtHeader inserts an 8-byte IPv6 extension header of type typ
// (hop-by-hop 0 with a PadN option, fragment 44 as a first fragment with
// more to come) between the IPv6 header of an untagged frame and what
// follows it.
func withExtHeader(frame []byte, typ byte) []byte {
	const ip6 = 14
	next := frame[ip6+6]
	hdr := []byte{next, 0, 1, 4, 0, 0, 0, 0} // hop-by-hop: PadN of 4
	if typ == 44 {
		hdr = []byte{next, 0, 0, 1, 0, 0, 0x42, 0x42} // offset 0, M, identification
	}
	out := append([]byte(nil), frame[:ip6+40]...)
	out[ip6+6] = typ
	plen := int(out[ip6+4])<<8 | int(out[ip6+5]) + len(hdr)
	out[ip6+4], out[ip6+5] = byte(plen>>8), byte(plen)
	out = append(out, hdr...)
	return append(out, frame[ip6+40:]...)
}

// firstFragment4 marks an untagged IPv4 frame as a first fragment (MF,
// offset 0), fixing the header checksum.
func firstFragment4(frame []byte) []byte {
	p := gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.Default)
	eth, ip := p.Layer(layers.LayerTypeEthernet).(*layers.Ethernet), p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	ip.Flags = layers.IPv4MoreFragments
	return testenv.Frame(eth, ip, gopacket.Payload(ip.Payload))
}

// vlanTagged puts a VLAN tag into an untagged frame.
func vlanTagged(frame []byte, id uint16) []byte {
	out := append([]byte(nil), frame[:12]...)
	out = append(out, 0x81, 0x00, byte(id>>8), byte(id))
	return append(out, frame[12:]...)
}

// TestFastPathSpoofing: the fast path (rule F) accepts a packet of an
// authorized flow before the anti-spoofing and steering rules, so it must
// accept nothing they would drop or steer. pu0 (A) has TCP and UDP flows
// with PU 1 (V) authorized, over IPv4 and IPv6; A then sends frames whose
// key is in its set — the reverse entry's with V's address as the source,
// its own with V's MAC, a DHCP server's source port, SYN/FIN/RST, first
// fragments, an IPv6 fragment header, a VLAN tag — and V sends frames
// toward A (SYN, fragments, the datagram handshake's marker). Each must be
// dropped, counted as spoofed or rogue, or steered, exactly as without the
// fast path; the flows' plain packets pass in the kernel counted as
// accepted by the fast path, and those it leaves to rule 5 (an IPv6
// hop-by-hop header, a datagram too short to hold the marker, another
// experiment's option 253 toward the PU) as accepted by rule 5.
func TestFastPathSpoofing(t *testing.T) {
	r := newRig(t, 2, 1) // pu0 steered, PU 1 a plain port
	att, vic := r.node.PUs[0], r.node.PUs[1]
	A, V := att.MACOf(), vic.MACOf()
	ap := func(a netip.Addr, port uint16) netip.AddrPort { return netip.AddrPortFrom(a, port) }
	a4, v4, a6, v6 := att.Addr, vic.Addr, att.Addr6, vic.Addr6
	flows := []steer.Tuple{
		{Src: a4, Dst: v4, Proto: ipproto.TCP, SrcPort: 40000, DstPort: 80},
		{Src: a4, Dst: v4, Proto: ipproto.UDP, SrcPort: 40001, DstPort: 5353},
		{Src: a4, Dst: v4, Proto: ipproto.UDP, SrcPort: 67, DstPort: 68},
		{Src: a6, Dst: v6, Proto: ipproto.TCP, SrcPort: 40000, DstPort: 80},
		{Src: a6, Dst: v6, Proto: ipproto.UDP, SrcPort: 40001, DstPort: 5353},
		{Src: a6, Dst: v6, Proto: ipproto.UDP, SrcPort: 547, DstPort: 546},
	}
	b := r.s.NewBatch()
	for _, f := range flows {
		b.Authorize("pu0", f, time.Minute)
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	tcp4 := func(mac net.HardwareAddr, src, dst netip.AddrPort, flags string) []byte {
		return testenv.TCPSegment(mac, V, src, dst, flags, 1, 1, []byte("fast"))
	}
	udp4 := func(mac, dstMAC net.HardwareAddr, src, dst netip.AddrPort, payload string) []byte {
		return testenv.UDPDatagram(mac, dstMAC, src, dst, []byte(payload))
	}
	udp6 := func(mac, dstMAC net.HardwareAddr, src, dst netip.AddrPort, payload string) []byte {
		return testenv.UDP6Datagram(mac, dstMAC, src, dst, []byte(payload))
	}
	runFrameCases(t, r, "pu0", att, vic, false, []frameCase{
		{"TCP of the flow", tcp4(A, ap(a4, 40000), ap(v4, 80), "A"), fast},
		{"TCP with V's MAC", tcp4(V, ap(a4, 40000), ap(v4, 80), "A"), spoofed},
		{"TCP as V (the reverse entry)", tcp4(A, ap(v4, 80), ap(a4, 40000), "A"), spoofed},
		{"VLAN-tagged TCP as V", vlanTagged(tcp4(A, ap(v4, 80), ap(a4, 40000), "A"), 7), spoofed},
		{"SYN of the flow", tcp4(A, ap(a4, 40000), ap(v4, 80), "S"), steered},
		{"FIN of the flow", tcp4(A, ap(a4, 40000), ap(v4, 80), "AF"), steered},
		{"RST of the flow", tcp4(A, ap(a4, 40000), ap(v4, 80), "R"), steered},
		{"first fragment of the flow", firstFragment4(tcp4(A, ap(a4, 40000), ap(v4, 80), "A")), steered},
		{"UDP of the flow", udp4(A, V, ap(a4, 40001), ap(v4, 5353), "fast"), fast},
		{"UDP as V (the reverse entry)", udp4(A, V, ap(v4, 5353), ap(a4, 40001), "fast"), spoofed},
		{"UDP from port 67 (authorized)", udp4(A, V, ap(a4, 67), ap(v4, 68), "offer"), rogue},
		{"TCPv6 of the flow", tcp6Segment(A, V, ap(a6, 40000), ap(v6, 80), "A"), fast},
		{"TCPv6 with V's MAC", tcp6Segment(V, V, ap(a6, 40000), ap(v6, 80), "A"), spoofed},
		{"TCPv6 as V (the reverse entry)", tcp6Segment(A, V, ap(v6, 80), ap(a6, 40000), "A"), spoofed},
		{"TCPv6 SYN of the flow", tcp6Segment(A, V, ap(a6, 40000), ap(v6, 80), "S"), steered},
		{"TCPv6 behind a hop-by-hop header (rule 5)", withExtHeader(tcp6Segment(A, V, ap(a6, 40000), ap(v6, 80), "A"), 0), authorized},
		{"UDPv6 of the flow", udp6(A, V, ap(a6, 40001), ap(v6, 5353), "fast"), fast},
		{"UDPv6 as V (the reverse entry)", udp6(A, V, ap(v6, 5353), ap(a6, 40001), "fast"), spoofed},
		{"UDPv6 first fragment of the flow", withExtHeader(udp6(A, V, ap(a6, 40001), ap(v6, 5353), "fast"), 44), steered},
		{"UDPv6 from port 547 (authorized)", udp6(A, V, ap(a6, 547), ap(v6, 546), "advertise"), rogue},
	})

	marker := string(tokens.DatagramMarker[:]) + "hello"
	towardTCP := testenv.TCPSegment(V, A, ap(v4, 80), ap(a4, 40000), "A", 1, 1, []byte("fast"))
	towardTCP6 := tcp6Segment(V, A, ap(v6, 80), ap(a6, 40000), "A")
	tsOpt := []layers.TCPOption{{OptionType: layers.TCPOptionKindNop}, {OptionType: layers.TCPOptionKindNop},
		{OptionType: layers.TCPOptionKindTimestamps, OptionLength: 10, OptionData: []byte{0, 0, 0, 1, 0, 0, 0, 2}}}
	tokenOpt := layers.TCPOption{OptionType: tokens.OptionKind, OptionLength: 4, OptionData: tokens.Option[2:]}
	otherExp := layers.TCPOption{OptionType: tokens.OptionKind, OptionLength: 4, OptionData: []byte{0x12, 0x34}}
	runFrameCases(t, r, "pu0", vic, att, true, []frameCase{
		{"TCP with timestamps", withTCPOptions(towardTCP, tsOpt...), fast},
		{"TCP with the handshake's marker option", withTCPOptions(towardTCP, append([]layers.TCPOption{tokenOpt}, tsOpt...)...), steered},
		{"TCP with the marker option after timestamps", withTCPOptions(towardTCP, append(slices.Clone(tsOpt), tokenOpt)...), steered},
		{"TCP with another experiment's option 253 (rule 5)", withTCPOptions(towardTCP, append([]layers.TCPOption{otherExp}, tsOpt...)...), authorized},
		{"TCPv6 with the handshake's marker option", withTCPOptions(towardTCP6, tokenOpt), steered},
		{"TCP of the flow", testenv.TCPSegment(V, A, ap(v4, 80), ap(a4, 40000), "A", 1, 1, []byte("fast")), fast},
		{"SYN-ACK of the flow", testenv.TCPSegment(V, A, ap(v4, 80), ap(a4, 40000), "SA", 1, 1, nil), steered},
		{"first fragment of the flow", firstFragment4(testenv.TCPSegment(V, A, ap(v4, 80), ap(a4, 40000), "A", 1, 1, []byte("fast"))), steered},
		{"UDP of the flow", udp4(V, A, ap(v4, 5353), ap(a4, 40001), "fast"), fast},
		{"UDP of 1 byte (rule 5)", udp4(V, A, ap(v4, 5353), ap(a4, 40001), "f"), authorized},
		{"UDP with the handshake's marker", udp4(V, A, ap(v4, 5353), ap(a4, 40001), marker), steered},
		{"TCPv6 of the flow", tcp6Segment(V, A, ap(v6, 80), ap(a6, 40000), "A"), fast},
		{"TCPv6 FIN of the flow", tcp6Segment(V, A, ap(v6, 80), ap(a6, 40000), "AF"), steered},
		{"UDPv6 of the flow", udp6(V, A, ap(v6, 5353), ap(a6, 40001), "fast"), fast},
		{"UDPv6 with the handshake's marker", udp6(V, A, ap(v6, 5353), ap(a6, 40001), marker), steered},
		{"UDPv6 first fragment of the flow", withExtHeader(udp6(V, A, ap(v6, 5353), ap(a6, 40001), "fast"), 44), steered},
	})
}

// withTCPOptions gives the TCP segment of an untagged frame the options
// opts (lengths and checksums recomputed).
func withTCPOptions(frame []byte, opts ...layers.TCPOption) []byte {
	pkt := gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.Default)
	eth := pkt.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
	tcp := pkt.Layer(layers.LayerTypeTCP).(*layers.TCP)
	tcp.Options, tcp.Padding = opts, nil
	payload := gopacket.Payload(tcp.Payload)
	if ip, ok := pkt.Layer(layers.LayerTypeIPv4).(*layers.IPv4); ok {
		_ = tcp.SetNetworkLayerForChecksum(ip)
		return testenv.Frame(eth, ip, tcp, payload)
	}
	ip := pkt.Layer(layers.LayerTypeIPv6).(*layers.IPv6)
	_ = tcp.SetNetworkLayerForChecksum(ip)
	return testenv.Frame(eth, ip, tcp, payload)
}
