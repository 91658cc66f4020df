package netsetup

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

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
}

// EnsureBridge creates the bridge if it does not exist, adds its addresses
// and brings it up. Calling it again is harmless.
func EnsureBridge(cfg BridgeConfig) (*netlink.Bridge, error) {
	if err := CheckLinkName(cfg.Name); err != nil {
		return nil, err
	}
	l, err := netlink.LinkByName(cfg.Name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if !errors.As(err, &nf) {
			return nil, fmt.Errorf("netsetup: find bridge %s: %w", cfg.Name, err)
		}
		attrs := netlink.NewLinkAttrs()
		attrs.Name = cfg.Name
		if cfg.MTU > 0 {
			attrs.MTU = cfg.MTU
		}
		if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: attrs}); err != nil {
			return nil, fmt.Errorf("netsetup: create bridge %s: %w", cfg.Name, err)
		}
		if l, err = netlink.LinkByName(cfg.Name); err != nil {
			return nil, fmt.Errorf("netsetup: find bridge %s: %w", cfg.Name, err)
		}
	}
	br, ok := l.(*netlink.Bridge)
	if !ok {
		return nil, fmt.Errorf("netsetup: %s exists and is a %s, not a bridge", cfg.Name, l.Type())
	}
	for _, p := range cfg.Gateways {
		if err := addAddr(br, p); err != nil {
			return nil, err
		}
	}
	if err := netlink.LinkSetUp(br); err != nil {
		return nil, fmt.Errorf("netsetup: bridge %s up: %w", cfg.Name, err)
	}
	return br, nil
}

func prefixToIPNet(p netip.Prefix) *net.IPNet {
	bits := 32
	if p.Addr().Is6() {
		bits = 128
	}
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), bits)}
}
