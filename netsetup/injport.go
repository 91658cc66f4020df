package netsetup

import (
	"fmt"

	"github.com/vishvananda/netlink"
)

// Bridge port flags vishvananda/netlink has no setter for (linux/if_link.h).
const (
	brportMcastFlood = 27 // IFLA_BRPORT_MCAST_FLOOD
	brportBcastFlood = 30 // IFLA_BRPORT_BCAST_FLOOD
)

// InjectionPort is the veth pair through which the dataplane sends packets
// "away from the PU" into the node bridge, as if they had left the PU.
type InjectionPort struct {
	HostIndex int    // write here (AF_PACKET)
	HostName  string //
	BrName    string // the bridge port end
}

// EnsureInjectionPort creates (or re-uses) the injection veth pair: name is
// the end the dataplane writes on, brName the end that joins the bridge.
// The bridge end has learning OFF: frames
// sent through it carry the PUs' source MACs, and a learning port would
// steal the PUs' FDB entries (traffic to the PU would then go back into
// the injection port and be lost). Unicast, multicast and broadcast flooding
// to the port are OFF too, so the bridge never sends anything into it: it
// is a one-way door into the bridge. Neither end has IPv6 or ARP, so the
// kernel itself sends nothing through it.
//
// With an owner, both ends are marked as its own when created here, and an
// existing pair is used only if it carries the mark: a link of that name
// that trireme did not make is refused, never adopted or deleted.
func EnsureInjectionPort(bridge, name, brName, owner string) (InjectionPort, error) {
	for _, n := range []string{name, brName} {
		if err := CheckLinkName(n); err != nil {
			return InjectionPort{}, err
		}
	}
	br, err := netlink.LinkByName(bridge)
	if err != nil {
		return InjectionPort{}, fmt.Errorf("netsetup: bridge %s: %w", bridge, err)
	}
	created := false
	if !LinkExists(name) {
		attrs := netlink.NewLinkAttrs()
		attrs.Name = name
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: brName}); err != nil {
			return InjectionPort{}, fmt.Errorf("netsetup: create injection port %s: %w", name, err)
		}
		created = true
	}
	fail := func(err error) (InjectionPort, error) {
		if created {
			_ = DeleteLink(name)
		}
		return InjectionPort{}, err
	}
	host, err := netlink.LinkByName(name)
	if err != nil {
		return fail(fmt.Errorf("netsetup: find %s: %w", name, err))
	}
	port, err := netlink.LinkByName(brName)
	if err != nil {
		return fail(fmt.Errorf("netsetup: find %s: %w", brName, err))
	}
	if owner != "" {
		for _, l := range []netlink.Link{host, port} {
			if created {
				if err := markOwner(l, owner); err != nil {
					return fail(err)
				}
			} else if l.Attrs().Alias != owner {
				return fail(fmt.Errorf("%w: %s (injection port of %s)", ErrNotOwned, l.Attrs().Name, bridge))
			}
		}
		if _, ok := host.(*netlink.Veth); !ok || port.Attrs().ParentIndex != host.Attrs().Index {
			return fail(fmt.Errorf("%w: %s and %s are not one veth pair", ErrNotOwned, name, brName))
		}
	}
	for _, n := range []string{name, brName} {
		if err := DisableIPv6(n); err != nil {
			return fail(err)
		}
	}
	for _, l := range []netlink.Link{host, port} {
		if err := netlink.LinkSetARPOff(l); err != nil {
			return fail(fmt.Errorf("netsetup: noarp %s: %w", l.Attrs().Name, err))
		}
	}
	if err := netlink.LinkSetMaster(port, br); err != nil {
		return fail(fmt.Errorf("netsetup: %s into bridge %s: %w", brName, bridge, err))
	}
	if err := netlink.LinkSetLearning(port, false); err != nil {
		return fail(fmt.Errorf("netsetup: learning off on %s: %w", brName, err))
	}
	if err := netlink.LinkSetFlood(port, false); err != nil {
		return fail(fmt.Errorf("netsetup: flood off on %s: %w", brName, err))
	}
	for _, a := range []int{brportMcastFlood, brportBcastFlood} {
		if err := setBridgePortFlag(port, a, false); err != nil {
			return fail(err)
		}
	}
	for _, l := range []netlink.Link{port, host} {
		if err := netlink.LinkSetUp(l); err != nil {
			return fail(fmt.Errorf("netsetup: %s up: %w", l.Attrs().Name, err))
		}
	}
	if err := WaitForwarding(brName, PortUpTimeout); err != nil {
		return fail(err)
	}
	return InjectionPort{HostIndex: host.Attrs().Index, HostName: name, BrName: brName}, nil
}
