package packet

import (
	"net"
	"net/netip"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/trireme-go/trireme/ipproto"
	"github.com/trireme-go/trireme/reason"
)

// echoFrame builds an Ethernet frame carrying an ICMP (v4 or v6) message
// of type typ from src to dst whose first 4 bytes after the type, code
// and checksum are rest.
func echoFrame(t testing.TB, src, dst netip.Addr, typ uint8, rest []byte) []byte {
	t.Helper()
	mac := net.HardwareAddr{2, 0, 0, 0, 0, 1}
	eth := &layers.Ethernet{SrcMAC: mac, DstMAC: mac, EthernetType: layers.EthernetTypeIPv4}
	var ls []gopacket.SerializableLayer
	if src.Is4() {
		ls = []gopacket.SerializableLayer{eth,
			&layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolICMPv4, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()},
			// gopacket writes the 8-byte ICMPv4 header: rest's first 4
			// bytes are its identifier and sequence number.
			&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(typ, 0),
				Id: uint16(rest[0])<<8 | uint16(rest[1]), Seq: uint16(rest[2])<<8 | uint16(rest[3])}, gopacket.Payload(rest[4:])}
	} else {
		eth.EthernetType = layers.EthernetTypeIPv6
		ip := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolICMPv6, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
		icmp := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(typ, 0)}
		_ = icmp.SetNetworkLayerForChecksum(ip)
		ls = []gopacket.SerializableLayer{eth, ip, icmp, gopacket.Payload(rest)}
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestEchoPorts: an echo's identifier is the port of the side that sent
// the request, the other side's is 0, in the packet itself and in the
// quote of an ICMP error about it; so a request and its reply are one
// flow (reversed) and a request the other way is another.
func TestEchoPorts(t *testing.T) {
	a4, b4 := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	a6, b6 := netip.MustParseAddr("fd00::1"), netip.MustParseAddr("fd00::2")
	echo := []byte{0x12, 0x34, 0, 7} // id 0x1234, sequence 7
	for _, tc := range []struct {
		name             string
		src, dst         netip.Addr
		typ              uint8
		request          bool
		sport, dport     uint16
		errType, errCode uint8
	}{
		{"ICMPv4 request", a4, b4, 8, true, 0x1234, 0, 3, 1},
		{"ICMPv4 reply", b4, a4, 0, false, 0, 0x1234, 3, 1},
		{"ICMPv6 request", a6, b6, 128, true, 0x1234, 0, 1, 0},
		{"ICMPv6 reply", b6, a6, 129, false, 0, 0x1234, 1, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := echoFrame(t, tc.src, tc.dst, tc.typ, echo)
			var p Packet
			if rc := p.Decode(f); rc != reason.None {
				t.Fatalf("decode: %v", rc)
			}
			if !p.IsEcho() || p.IsEchoRequest() != tc.request || p.SrcPort != tc.sport || p.DstPort != tc.dport {
				t.Fatalf("echo %v request %v ports %d -> %d, want request %v ports %d -> %d",
					p.IsEcho(), p.IsEchoRequest(), p.SrcPort, p.DstPort, tc.request, tc.sport, tc.dport)
			}
			// An ICMP error about this echo, from a router toward its
			// sender, quotes it with the same ports.
			router := netip.MustParseAddr("10.9.9.9")
			if tc.src.Is6() {
				router = netip.MustParseAddr("fd00::99")
			}
			quote := f[14 : p.L4+8]
			e := echoFrame(t, router, tc.src, tc.errType, append([]byte{0, 0, 0, 0}, quote...))
			e[14+(p.L4-14)+1] = tc.errCode
			var q Packet
			if rc := q.Decode(e); rc != reason.None || !q.IsICMPError() {
				t.Fatalf("error: decode %v, is error %v", rc, q.IsICMPError())
			}
			src, dst, proto, sport, dport, ok := q.Quoted()
			wantProto := ipproto.ICMP
			if tc.src.Is6() {
				wantProto = ipproto.ICMPv6
			}
			if !ok || src != tc.src || dst != tc.dst || proto != wantProto || sport != tc.sport || dport != tc.dport {
				t.Fatalf("quoted %v %v %v %v %d -> %d, want %v -> %v ports %d -> %d", ok, src, dst, proto, sport, dport, tc.src, tc.dst, tc.sport, tc.dport)
			}
		})
	}
}
