package testenv

import (
	"net"
	"net/netip"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

// Frames for anti-spoofing and neighbour-discovery attacks (see raw.go for
// TCP and UDP over IPv4).

// ARPFrame builds an Ethernet/IPv4 ARP frame: op 1 (request) or 2 (reply)
// with the given sender and target; the Ethernet source is ethSrc.
func ARPFrame(ethSrc, ethDst net.HardwareAddr, op uint16, sha net.HardwareAddr, spa netip.Addr, tha net.HardwareAddr, tpa netip.Addr) []byte {
	arp := &layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4,
		Operation: op, SourceHwAddress: sha, SourceProtAddress: spa.AsSlice(), DstHwAddress: tha, DstProtAddress: tpa.AsSlice()}
	return Frame(Eth(ethSrc, ethDst, layers.EthernetTypeARP), arp)
}

// IPv6 returns an IPv6 header from src to dst carrying next with the
// given hop limit.
func IPv6(src, dst netip.Addr, next layers.IPProtocol, hopLimit uint8) *layers.IPv6 {
	return &layers.IPv6{Version: 6, NextHeader: next, HopLimit: hopLimit, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
}

// ICMPv6Frame builds an Ethernet/IPv6/ICMPv6 frame of type typ (code 0)
// whose message body (everything after the 4-byte type, code and
// checksum) is body; the checksum is computed.
func ICMPv6Frame(srcMAC, dstMAC net.HardwareAddr, src, dst netip.Addr, hopLimit, typ uint8, body []byte) []byte {
	ip := IPv6(src, dst, layers.IPProtocolICMPv6, hopLimit)
	icmp := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(typ, 0)}
	_ = icmp.SetNetworkLayerForChecksum(ip)
	return Frame(Eth(srcMAC, dstMAC, layers.EthernetTypeIPv6), ip, icmp, gopacket.Payload(body))
}

// NDP message bodies (RFC 4861), for ICMPv6Frame.

// NSBody is a neighbour solicitation for target with the given options.
func NSBody(target netip.Addr, opts ...[]byte) []byte {
	b := append(make([]byte, 4), target.AsSlice()...)
	for _, o := range opts {
		b = append(b, o...)
	}
	return b
}

// NABody is a neighbour advertisement (solicited, override) for target.
func NABody(target netip.Addr, opts ...[]byte) []byte {
	b := NSBody(target, opts...)
	b[0] = 0x60
	return b
}

// RABody is a router advertisement (hop limit 64, router lifetime 1800 s)
// with the given options.
func RABody(opts ...[]byte) []byte {
	b := []byte{64, 0, 0x07, 0x08, 0, 0, 0, 0, 0, 0, 0, 0}
	for _, o := range opts {
		b = append(b, o...)
	}
	return b
}

// LinkLayerOption is an NDP source (1) or target (2) link-layer address
// option.
func LinkLayerOption(typ byte, mac net.HardwareAddr) []byte { return append([]byte{typ, 1}, mac...) }

// PrefixOption is an NDP prefix information option (on-link, autonomous,
// lifetimes of a day) for a /64.
func PrefixOption(p netip.Prefix) []byte {
	b := []byte{3, 4, byte(p.Bits()), 0xc0, 0, 1, 0x51, 0x80, 0, 1, 0x51, 0x80, 0, 0, 0, 0}
	return append(b, p.Masked().Addr().AsSlice()...)
}

// SolicitedNode is the solicited-node multicast address of a.
func SolicitedNode(a netip.Addr) netip.Addr {
	b := a.As16()
	return netip.AddrFrom16([16]byte{0xff, 0x02, 10: 0, 11: 1, 12: 0xff, 13: b[13], 14: b[14], 15: b[15]})
}

// MulticastMAC is the Ethernet address of an IPv6 multicast group.
func MulticastMAC(a netip.Addr) net.HardwareAddr {
	b := a.As16()
	return net.HardwareAddr{0x33, 0x33, b[12], b[13], b[14], b[15]}
}

// UDP6Datagram builds an Ethernet/IPv6/UDP frame (hop limit 64).
func UDP6Datagram(srcMAC, dstMAC net.HardwareAddr, src, dst netip.AddrPort, payload []byte) []byte {
	ip := IPv6(src.Addr(), dst.Addr(), layers.IPProtocolUDP, 64)
	udp := &layers.UDP{SrcPort: layers.UDPPort(src.Port()), DstPort: layers.UDPPort(dst.Port())}
	_ = udp.SetNetworkLayerForChecksum(ip)
	return Frame(Eth(srcMAC, dstMAC, layers.EthernetTypeIPv6), ip, udp, gopacket.Payload(payload))
}
