package netsetup

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Ownership of links. Every link trireme creates for a node (the node
// bridge, injection ports, the veths of the PUs it creates) carries an
// owner mark in its alias (IFLA_IFALIAS), e.g. "trireme:node1"; cleanup
// deletes a link only when it carries the mark. A link that existed before
// (a bridge named in the configuration, an interface of the same name)
// has no mark and is never deleted.

// ErrNotOwned is returned when an existing link is not one the owner made.
var ErrNotOwned = errors.New("netsetup: link exists and was not created by trireme")

// OwnerOf returns a link's owner mark ("" when it has none).
func OwnerOf(name string) (string, error) {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return "", fmt.Errorf("netsetup: %s: %w", name, err)
	}
	return l.Attrs().Alias, nil
}

// markOwner sets the owner mark of a link trireme just created.
func markOwner(l netlink.Link, owner string) error {
	if owner == "" {
		return nil
	}
	if err := netlink.LinkSetAlias(l, owner); err != nil {
		return fmt.Errorf("netsetup: mark %s: %w", l.Attrs().Name, err)
	}
	return nil
}

// DeleteOwnedLink deletes a link if it carries the owner mark; a missing
// link is not an error, one with another mark (or none) is left alone and
// reported as not deleted.
func DeleteOwnedLink(name, owner string) (deleted bool, err error) {
	if owner == "" {
		return false, errors.New("netsetup: DeleteOwnedLink without an owner")
	}
	l, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return false, nil
		}
		return false, fmt.Errorf("netsetup: find %s: %w", name, err)
	}
	if l.Attrs().Alias != owner {
		return false, nil
	}
	if err := netlink.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
		return false, fmt.Errorf("netsetup: delete %s: %w", name, err)
	}
	return true, nil
}

// RemoveAddrs removes addresses from a link (those it does not have are
// skipped): what trireme added to a bridge it did not create.
func RemoveAddrs(name string, ps []netip.Prefix) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("netsetup: find %s: %w", name, err)
	}
	have, err := linkPrefixes(l)
	if err != nil {
		return err
	}
	var errs []error
	for _, p := range ps {
		if !slices.Contains(have, p) {
			continue
		}
		if err := netlink.AddrDel(l, &netlink.Addr{IPNet: prefixToIPNet(p)}); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			errs = append(errs, fmt.Errorf("netsetup: remove %s from %s: %w", p, name, err))
		}
	}
	return errors.Join(errs...)
}

// linkPrefixes lists a link's addresses as prefixes.
func linkPrefixes(l netlink.Link) ([]netip.Prefix, error) {
	addrs, err := Dump(func() ([]netlink.Addr, error) { return netlink.AddrList(l, netlink.FAMILY_ALL) })
	if err != nil {
		return nil, fmt.Errorf("netsetup: addresses of %s: %w", l.Attrs().Name, err)
	}
	var out []netip.Prefix
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok || a.IPNet == nil {
			continue
		}
		bits, _ := a.IPNet.Mask.Size()
		out = append(out, netip.PrefixFrom(ip.Unmap(), bits))
	}
	return out, nil
}
