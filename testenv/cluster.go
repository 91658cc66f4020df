package testenv

import (
	"fmt"
	"net"
	"net/netip"
	"testing"

	"github.com/trireme-go/trireme/netsetup"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Cluster is several nodes joined by an underlay: a namespace with a bridge
// ("ul0") that every node reaches through a veth ("ul" in the node, with an
// address of 10.255.0.0/24). Each node routes the other nodes' PU subnets
// (10.(80+i).0.0/24) via their underlay addresses and forwards IPv4. PUs
// also have IPv6 addresses (fd00:0:0:80+i::/64), reachable within a node
// only (the underlay is IPv4).
type Cluster struct {
	Nodes    []*Node
	Underlay string // underlay namespace name
	NS       netns.NsHandle
}

// NewCluster creates nodes nodes with pusPerNode PUs each.
func NewCluster(t testing.TB, nodes, pusPerNode int) *Cluster {
	t.Helper()
	RequireRoot(t)
	sfx := Suffix()
	AssertNothingLeft(t, sfx) // registered first: runs last
	c := &Cluster{Underlay: fmt.Sprintf("%s%s-ul", NamePrefix, sfx)}
	h, err := netsetup.CreateNetns(c.Underlay)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	c.NS = h
	t.Cleanup(func() {
		h.Close()
		if err := netsetup.DeleteNetns(c.Underlay); err != nil {
			t.Errorf("testenv: cleanup: %v", err)
		}
	})
	if err := netsetup.InNetns(h, func() error {
		_, err := netsetup.EnsureBridge(netsetup.BridgeConfig{Name: "ul0"})
		return err
	}); err != nil {
		t.Fatalf("testenv: underlay: %v", err)
	}
	ulAddr := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 255, 0, byte(i + 1)}) }
	for i := 0; i < nodes; i++ {
		n := NewNode(t, NodeOptions{
			PUs:     pusPerNode,
			Subnet:  netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(80 + i), 0, 0}), 24),
			Subnet6: netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfd, 0, 0, byte(80 + i)}), 64),
			Suffix:  sfx,
			Index:   i,
		})
		c.Nodes = append(c.Nodes, n)
		// The underlay veth: "ul" in the node, "n<i>" in the underlay bridge.
		err := netsetup.InNetns(h, func() error {
			attrs := netlink.NewLinkAttrs()
			attrs.Name = fmt.Sprintf("n%d", i)
			br, err := netlink.LinkByName("ul0")
			if err != nil {
				return err
			}
			attrs.MasterIndex = br.Attrs().Index
			if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: "ul", PeerNamespace: netlink.NsFd(n.NS)}); err != nil {
				return err
			}
			l, err := netlink.LinkByName(attrs.Name)
			if err != nil {
				return err
			}
			return netlink.LinkSetUp(l)
		})
		if err != nil {
			t.Fatalf("testenv: underlay link of %s: %v", n.Name, err)
		}
		n.MustDo(func() error {
			l, err := netlink.LinkByName("ul")
			if err != nil {
				return err
			}
			if err := netlink.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: net.IP(ulAddr(i).AsSlice()), Mask: net.CIDRMask(24, 32)}}); err != nil {
				return err
			}
			if err := netlink.LinkSetUp(l); err != nil {
				return err
			}
			return netsetup.WriteSysctl("/proc/sys/net/ipv4/ip_forward", "1")
		})
		// "n<i>" came up before its peer, so its carrier (and with it its
		// transmit queue and its bridge port) is applied later, by the
		// kernel's linkwatch work; until then the underlay bridge drops
		// what it forwards to the node (a lost ARP request: the first
		// cross-node connection waits a second for the retry, or fails
		// under load). The bridge port forwards once that work ran.
		if err := netsetup.InNetns(h, func() error {
			return netsetup.WaitForwarding(fmt.Sprintf("n%d", i), netsetup.PortUpTimeout)
		}); err != nil {
			t.Fatalf("testenv: underlay link of %s: %v", n.Name, err)
		}
	}
	for i, n := range c.Nodes {
		n.MustDo(func() error {
			ul, err := netlink.LinkByName("ul")
			if err != nil {
				return err
			}
			for j, m := range c.Nodes {
				if j == i {
					continue
				}
				dst := &net.IPNet{IP: net.IP(m.Subnet.Addr().AsSlice()), Mask: net.CIDRMask(m.Subnet.Bits(), 32)}
				r := &netlink.Route{LinkIndex: ul.Attrs().Index, Dst: dst, Gw: net.IP(ulAddr(j).AsSlice())}
				if err := netlink.RouteReplace(r); err != nil {
					return fmt.Errorf("route %s via %s: %w", m.Subnet, ulAddr(j), err)
				}
			}
			return nil
		})
	}
	return c
}
