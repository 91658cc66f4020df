package netsetup

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// PUConfig describes how a network namespace is joined to the node bridge.
type PUConfig struct {
	Netns    string         // existing named namespace of the PU
	Bridge   string         // node bridge the host side joins
	HostVeth string         // host-side veth name (<= 15 bytes, unique on the node)
	PUVeth   string         // name inside the namespace; default "eth0"
	Addrs    []netip.Prefix // PU addresses with the subnet prefix length
	Gateways []netip.Addr   // default routes (one per family), optional
	MTU      int            // 0: kernel default
	Owner    string         // marks the host veth as trireme's (owner.go)
}

// PortUpTimeout bounds the wait for a new bridge port to forward.
const PortUpTimeout = 5 * time.Second

// PULink is what the node knows of an attached PU's veth pair.
type PULink struct {
	HostIndex int              // ifindex of the host-side veth (steering hooks here)
	HostName  string           // name of the host-side veth
	HostMAC   net.HardwareAddr // MAC of the host-side veth
	PUMAC     net.HardwareAddr // MAC of the PU-side veth: destination of frames injected toward the PU
}

// AttachPU creates the veth pair, moves the PU side into the namespace with
// its addresses and default routes, and makes the host side a bridge port.
// On error nothing it created is left behind.
func AttachPU(cfg PUConfig) (PULink, error) {
	if cfg.PUVeth == "" {
		cfg.PUVeth = "eth0"
	}
	for _, n := range []string{cfg.HostVeth, cfg.PUVeth} {
		if err := CheckLinkName(n); err != nil {
			return PULink{}, err
		}
	}
	br, err := netlink.LinkByName(cfg.Bridge)
	if err != nil {
		return PULink{}, fmt.Errorf("netsetup: bridge %s: %w", cfg.Bridge, err)
	}
	ns, err := OpenNetns(cfg.Netns)
	if err != nil {
		return PULink{}, err
	}
	defer ns.Close()

	attrs := netlink.NewLinkAttrs()
	attrs.Name = cfg.HostVeth
	attrs.MasterIndex = br.Attrs().Index
	if cfg.MTU > 0 {
		attrs.MTU = cfg.MTU
	}
	veth := &netlink.Veth{LinkAttrs: attrs, PeerName: cfg.PUVeth, PeerNamespace: netlink.NsFd(ns)}
	if cfg.MTU > 0 {
		veth.PeerMTU = uint32(cfg.MTU)
	}
	if err := netlink.LinkAdd(veth); err != nil {
		return PULink{}, fmt.Errorf("netsetup: create veth %s: %w", cfg.HostVeth, err)
	}
	fail := func(err error) (PULink, error) {
		_ = DeleteLink(cfg.HostVeth)
		return PULink{}, err
	}
	host, err := netlink.LinkByName(cfg.HostVeth)
	if err != nil {
		return fail(fmt.Errorf("netsetup: find veth %s: %w", cfg.HostVeth, err))
	}
	if err := markOwner(host, cfg.Owner); err != nil {
		return fail(err)
	}
	var puMAC net.HardwareAddr
	err = InNetns(ns, func() error {
		l, err := netlink.LinkByName(cfg.PUVeth)
		if err != nil {
			return fmt.Errorf("netsetup: find %s in %s: %w", cfg.PUVeth, cfg.Netns, err)
		}
		puMAC = l.Attrs().HardwareAddr
		if lo, err := netlink.LinkByName("lo"); err == nil {
			if err := netlink.LinkSetUp(lo); err != nil {
				return fmt.Errorf("netsetup: lo up in %s: %w", cfg.Netns, err)
			}
		}
		for _, p := range cfg.Addrs {
			if err := addAddr(l, p); err != nil {
				return err
			}
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return fmt.Errorf("netsetup: %s up in %s: %w", cfg.PUVeth, cfg.Netns, err)
		}
		for _, gw := range cfg.Gateways {
			// onlink: the gateway is on the PU's subnet by construction.
			// Without it an IPv6 route is refused (EHOSTUNREACH) until the
			// kernel has installed the address's prefix route, which waits
			// for the veth's carrier: seconds late when many links change.
			r := &netlink.Route{LinkIndex: l.Attrs().Index, Gw: net.IP(gw.AsSlice()), Flags: int(netlink.FLAG_ONLINK)}
			if err := netlink.RouteReplace(r); err != nil {
				return fmt.Errorf("netsetup: default route via %s in %s: %w", gw, cfg.Netns, err)
			}
		}
		return nil
	})
	if err != nil {
		return fail(err)
	}
	if err := netlink.LinkSetUp(host); err != nil {
		return fail(fmt.Errorf("netsetup: %s up: %w", cfg.HostVeth, err))
	}
	if err := WaitForwarding(cfg.HostVeth, PortUpTimeout); err != nil {
		return fail(err)
	}
	// The PU's end gets its carrier in the same instant, but the kernel's
	// linkwatch work applies it per device: until it has run for the PU's
	// end, that end's qdisc is noop and drops all the PU sends (a lost
	// neighbour advertisement: "no route to host" 3 s later, seen in CI
	// with many links changing at once).
	err = InNetns(ns, func() error { return WaitOperUp(cfg.PUVeth, PortUpTimeout) })
	if err != nil {
		return fail(err)
	}
	// So does the bridge itself, whose carrier comes on with its first
	// forwarding port: until linkwatch has run for it, what the node
	// sends through it (the gateway's ARP and NDP answers, routed
	// packets toward its PUs) is dropped.
	if err := WaitOperUp(cfg.Bridge, PortUpTimeout); err != nil {
		return fail(err)
	}
	return PULink{
		HostIndex: host.Attrs().Index,
		HostName:  cfg.HostVeth,
		HostMAC:   host.Attrs().HardwareAddr,
		PUMAC:     puMAC,
	}, nil
}

// DetachPU deletes the PU's veth pair (both ends); a missing one is fine.
func DetachPU(hostVeth string) error { return DeleteLink(hostVeth) }

// ErrNoVeth is returned when a namespace has no veth whose peer is in the
// caller's namespace.
var ErrNoVeth = errors.New("netsetup: no veth with a peer in this namespace")

// HostVethOf finds the host-side end (in the caller's namespace) of the veth
// whose other end is ifName inside ns ("" = the first veth found there).
// The Docker monitor uses it for container veths: inside the namespace the
// veth's IFLA_LINK is the peer's ifindex in the host namespace.
func HostVethOf(ns netns.NsHandle, ifName string) (PULink, error) {
	var peerIndex int
	var puMAC net.HardwareAddr
	err := InNetns(ns, func() error {
		links, err := Dump(netlink.LinkList)
		if err != nil {
			return fmt.Errorf("netsetup: list links: %w", err)
		}
		for _, l := range links {
			if _, ok := l.(*netlink.Veth); !ok {
				continue
			}
			if ifName != "" && l.Attrs().Name != ifName {
				continue
			}
			if l.Attrs().ParentIndex == 0 {
				continue
			}
			peerIndex, puMAC = l.Attrs().ParentIndex, l.Attrs().HardwareAddr
			return nil
		}
		return ErrNoVeth
	})
	if err != nil {
		return PULink{}, err
	}
	host, err := netlink.LinkByIndex(peerIndex)
	if err != nil {
		return PULink{}, fmt.Errorf("%w (peer index %d: %v)", ErrNoVeth, peerIndex, err)
	}
	if _, ok := host.(*netlink.Veth); !ok {
		return PULink{}, fmt.Errorf("%w (index %d is a %s)", ErrNoVeth, peerIndex, host.Type())
	}
	return PULink{
		HostIndex: host.Attrs().Index,
		HostName:  host.Attrs().Name,
		HostMAC:   host.Attrs().HardwareAddr,
		PUMAC:     puMAC,
	}, nil
}
