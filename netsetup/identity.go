package netsetup

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/vishvananda/netlink"
)

// LinkIdentity is who a PU is on its link: the MAC of its interface and
// its unicast addresses with their prefix length (IPv4, IPv6 global, ULA
// and link-local). The steering rules let nothing else leave the PU.
type LinkIdentity struct {
	MAC   net.HardwareAddr
	Addrs []netip.Prefix
}

// ReadLinkIdentity reads the identity of interface name through h (a
// handle in the PU's namespace). A link that is up gets its IPv6
// link-local address from the kernel once its carrier is up, which may be
// a moment after it was plumbed: when none is there yet it waits up to
// wait for one. The EUI-64 link-local address of the MAC (what the kernel
// assigns in its default mode) is always included.
func ReadLinkIdentity(h *netlink.Handle, name string, wait time.Duration) (LinkIdentity, error) {
	l, err := h.LinkByName(name)
	if err != nil {
		return LinkIdentity{}, fmt.Errorf("netsetup: %s: %w", name, err)
	}
	id := LinkIdentity{MAC: slices.Clone(l.Attrs().HardwareAddr)}
	if len(id.MAC) != 6 {
		return LinkIdentity{}, fmt.Errorf("netsetup: %s has no Ethernet address", name)
	}
	deadline := time.Now().Add(wait)
	for {
		addrs, err := Dump(func() ([]netlink.Addr, error) { return h.AddrList(l, netlink.FAMILY_ALL) })
		if err != nil {
			return LinkIdentity{}, fmt.Errorf("netsetup: addresses of %s: %w", name, err)
		}
		id.Addrs = id.Addrs[:0]
		hasLL, has6 := false, false
		for _, a := range addrs {
			ip, ok := netip.AddrFromSlice(a.IP)
			if !ok || a.IPNet == nil {
				continue
			}
			ip = ip.Unmap()
			if !ip.IsGlobalUnicast() && !ip.IsLinkLocalUnicast() {
				continue
			}
			if ip.Is4() && ip.IsLinkLocalUnicast() {
				continue // 169.254/16 is not an address trireme gives a PU
			}
			bits, _ := a.IPNet.Mask.Size()
			id.Addrs = append(id.Addrs, netip.PrefixFrom(ip, bits))
			hasLL = hasLL || ip.Is6() && ip.IsLinkLocalUnicast()
			has6 = has6 || ip.Is6()
		}
		// The kernel gives a link its link-local address (tentative at
		// first) as soon as it has a carrier: a link with one and no
		// IPv6 address at all has IPv6 off, and there is nothing to
		// wait for (waiting cost every attach of such a PU a second).
		if hasLL || l.Attrs().Flags&net.FlagUp == 0 || (l.Attrs().OperState == netlink.OperUp && !has6) || !time.Now().Before(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
		if l, err = h.LinkByName(name); err != nil {
			return LinkIdentity{}, fmt.Errorf("netsetup: %s: %w", name, err)
		}
	}
	if eui := EUI64LinkLocal(id.MAC); !slices.ContainsFunc(id.Addrs, func(p netip.Prefix) bool { return p.Addr() == eui }) {
		id.Addrs = append(id.Addrs, netip.PrefixFrom(eui, 64))
	}
	slices.SortFunc(id.Addrs, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	return id, nil
}

// EUI64LinkLocal is the link-local address the kernel derives from a MAC
// (modified EUI-64, RFC 4291 appendix A).
func EUI64LinkLocal(mac net.HardwareAddr) netip.Addr {
	var b [16]byte
	b[0], b[1] = 0xfe, 0x80
	if len(mac) == 6 {
		b[8], b[9], b[10], b[11] = mac[0]^0x02, mac[1], mac[2], 0xff
		b[12], b[13], b[14], b[15] = 0xfe, mac[3], mac[4], mac[5]
	}
	return netip.AddrFrom16(b)
}
