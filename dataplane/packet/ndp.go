package packet

import (
	"net/netip"

	"github.com/trireme-go/trireme/ipproto"
)

// MaxNDP bounds the ICMPv6 message of an on-link neighbour discovery
// packet (the kernel's steering rules use the same bound, see
// netsetup/steer): a Linux host's own NDP messages are 8-32 bytes, a
// router advertisement with all its options a few hundred.
const MaxNDP = 512

// ICMPv6 types of link plumbing.
const (
	ndpRS       = 133
	ndpRA       = 134
	ndpNS       = 135
	ndpNA       = 136
	ndpRedirect = 137
)

// OnLink reports whether an IsNDP packet is link plumbing that stays on
// the link, as the receivers of such messages require (RFC 4861 section
// 7.1, RFC 3810 section 5): anything else of these types is a message
// that only looks like plumbing (a covert channel toward any address).
//
// Neighbour discovery (133-137): no extension headers, not a fragment, hop
// limit 255 (a router on the way would have decremented it), at most
// MaxNDP bytes, toward a link-local address, a link-scope multicast group
// (solicited-node included), or a unicast address of the sender's /64 (a
// neighbour answered or probed over its global or ULA address); from ::
// only a neighbour solicitation to a multicast group (duplicate address
// detection). MLD (130-132, 143): hop limit 1 (never routed), toward a
// multicast group or a link-local address.
func (p *Packet) OnLink() bool {
	if !p.IsNDP() || !p.IPv6 || p.Frag != NotFragment || p.L3+40 > len(p.Frame) {
		return false
	}
	hopLimit := p.Frame[p.L3+7]
	t := p.ICMPType
	if t < ndpRS || t > ndpRedirect { // MLD
		return hopLimit == 1 && (p.Dst.IsMulticast() || p.Dst.IsLinkLocalUnicast())
	}
	if hopLimit != 255 || p.L4 != p.L3+40 || p.End-p.L4 > MaxNDP {
		return false
	}
	if p.Src.IsUnspecified() {
		return t == ndpNS && p.Dst.IsLinkLocalMulticast()
	}
	switch {
	case p.Dst.IsLinkLocalUnicast(), p.Dst.IsLinkLocalMulticast():
		return true
	case p.Dst.IsGlobalUnicast() && !p.Dst.Is4In6():
		return sameSlash64(p.Src, p.Dst)
	}
	return false
}

// FromRouter reports whether the packet is something only a router or a
// DHCP server sends: an IPv6 router advertisement or redirect, a DHCPv4 or
// DHCPv6 server reply (source port 67, 547). A PU sends none of them.
func (p *Packet) FromRouter() bool {
	switch p.Proto {
	case ipproto.ICMPv6:
		return p.Frag != LaterFragment && (p.ICMPType == ndpRA || p.ICMPType == ndpRedirect)
	case ipproto.UDP:
		return p.Frag != LaterFragment && (!p.IPv6 && p.SrcPort == 67 || p.IPv6 && p.SrcPort == 547)
	}
	return false
}

func sameSlash64(a, b netip.Addr) bool {
	x, y := a.As16(), b.As16()
	return [8]byte(x[:8]) == [8]byte(y[:8])
}
