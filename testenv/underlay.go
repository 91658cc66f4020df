package testenv

import (
	"fmt"
	"net"
	"net/netip"
	"testing"

	"github.com/trireme-go/trireme/netsetup"
	"github.com/vishvananda/netlink"
)

// AddUnderlayHost creates a host on the cluster's underlay: a namespace
// whose eth0 is a port of the underlay bridge, with address
// 10.255.0.(100+k)/24 and no route beyond the underlay. It runs no enforcer
// and nobody polices it: tests use it as an attacker between the nodes
// (it crafts frames with Raw). It is removed by t.Cleanup.
func (c *Cluster) AddUnderlayHost(t testing.TB) *PU {
	t.Helper()
	k := 0
	for netsetup.NetnsExists(fmt.Sprintf("%s-h%d", c.Underlay, k)) {
		k++
	}
	if k > 100 {
		t.Fatal("testenv: too many underlay hosts")
	}
	name := fmt.Sprintf("%s-h%d", c.Underlay, k)
	h, err := netsetup.CreateNetns(name)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	t.Cleanup(func() {
		h.Close()
		if err := netsetup.DeleteNetns(name); err != nil {
			t.Errorf("testenv: cleanup: %v", err)
		}
	})
	addr := netip.AddrFrom4([4]byte{10, 255, 0, byte(100 + k)})
	p := &PU{t: t, Name: name, NS: h, Addr: addr}
	err = netsetup.InNetns(c.NS, func() error {
		l, err := netsetup.AttachPU(netsetup.PUConfig{
			Netns:    name,
			Bridge:   "ul0",
			HostVeth: fmt.Sprintf("h%d", k),
			Addrs:    []netip.Prefix{netip.PrefixFrom(addr, 24)},
		})
		p.Link = l
		return err
	})
	if err != nil {
		t.Fatalf("testenv: underlay host %s: %v", name, err)
	}
	return p
}

// SniffUnderlay opens a RawPort on the underlay bridge's port toward node i
// ("n<i>"): every frame between that node and the underlay, both ways (what
// an attacker who taps the underlay sees).
func (c *Cluster) SniffUnderlay(t testing.TB, i int) *RawPort {
	t.Helper()
	return Sniff(t, c.NS, fmt.Sprintf("n%d", i))
}

// UplinkMAC returns the MAC of a cluster node's underlay interface ("ul"):
// where frames routed to the node's PUs are sent on the underlay.
func (n *Node) UplinkMAC() net.HardwareAddr {
	n.t.Helper()
	var mac net.HardwareAddr
	n.MustDo(func() error {
		l, err := netlink.LinkByName("ul")
		if err == nil {
			mac = l.Attrs().HardwareAddr
		}
		return err
	})
	return mac
}
