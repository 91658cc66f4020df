package netsetup

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
)

// BridgeConfig describes the node bridge.
type BridgeConfig struct {
	Name string
	// Gateways are the bridge's own addresses (prefix = the PU subnet),
	// the PUs' default gateway. Optional: a bridge without an address only
	// switches between its ports.
	Gateways []netip.Prefix
	MTU      int // 0: kernel default
	// Owner marks the bridge when it is created here (see owner.go).
	Owner string
}

// BridgeSetup says what SetupBridge changed: whether it created the bridge,
// and which of the gateway addresses it added (not there before).
type BridgeSetup struct {
	Created bool
	Added   []netip.Prefix
}

// EnsureBridge creates the bridge if it does not exist, adds its addresses
// and brings it up. Calling it again is harmless.
func EnsureBridge(cfg BridgeConfig) (*netlink.Bridge, error) {
	br, _, err := SetupBridge(cfg)
	return br, err
}

// SetupBridge is EnsureBridge that also reports what it changed, so that
// cleanup removes only that.
func SetupBridge(cfg BridgeConfig) (*netlink.Bridge, BridgeSetup, error) {
	var set BridgeSetup
	if err := CheckLinkName(cfg.Name); err != nil {
		return nil, set, err
	}
	l, err := netlink.LinkByName(cfg.Name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if !errors.As(err, &nf) {
			return nil, set, fmt.Errorf("netsetup: find bridge %s: %w", cfg.Name, err)
		}
		attrs := netlink.NewLinkAttrs()
		attrs.Name = cfg.Name
		if cfg.MTU > 0 {
			attrs.MTU = cfg.MTU
		}
		if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: attrs}); err != nil {
			return nil, set, fmt.Errorf("netsetup: create bridge %s: %w", cfg.Name, err)
		}
		set.Created = true
		if l, err = netlink.LinkByName(cfg.Name); err != nil {
			return nil, set, fmt.Errorf("netsetup: find bridge %s: %w", cfg.Name, err)
		}
		if err := markOwner(l, cfg.Owner); err != nil {
			_ = netlink.LinkDel(l)
			return nil, BridgeSetup{}, err
		}
	}
	br, ok := l.(*netlink.Bridge)
	if !ok {
		return nil, set, fmt.Errorf("netsetup: %s exists and is a %s, not a bridge", cfg.Name, l.Type())
	}
	have, err := linkPrefixes(br)
	if err != nil {
		return nil, set, err
	}
	for _, p := range cfg.Gateways {
		if !slices.Contains(have, p) {
			set.Added = append(set.Added, p)
		}
		if err := addAddr(br, p); err != nil {
			return nil, set, err
		}
	}
	if err := netlink.LinkSetUp(br); err != nil {
		return nil, set, fmt.Errorf("netsetup: bridge %s up: %w", cfg.Name, err)
	}
	return br, set, nil
}

func prefixToIPNet(p netip.Prefix) *net.IPNet {
	bits := 32
	if p.Addr().Is6() {
		bits = 128
	}
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), bits)}
}
