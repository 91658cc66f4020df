package netsetup

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// MaxLinkName is the longest interface name the kernel accepts (IFNAMSIZ-1).
const MaxLinkName = 15

// CheckLinkName validates an interface name before it reaches the kernel.
func CheckLinkName(name string) error {
	if name == "" || len(name) > MaxLinkName || name == "." || name == ".." {
		return fmt.Errorf("netsetup: invalid interface name %q (1..%d bytes)", name, MaxLinkName)
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c <= ' ' || c == '/' || c == ':' || c >= 0x7f {
			return fmt.Errorf("netsetup: invalid interface name %q: byte %#x", name, c)
		}
	}
	return nil
}

// DeleteLink deletes an interface by name; a missing one is not an error.
func DeleteLink(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("netsetup: find %s: %w", name, err)
	}
	if err := netlink.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("netsetup: delete %s: %w", name, err)
	}
	return nil
}

// LinkExists reports whether an interface of that name exists.
func LinkExists(name string) bool {
	_, err := netlink.LinkByName(name)
	return err == nil
}

// DisableIPv6 turns IPv6 off on an interface, so the kernel sends nothing of
// its own on it (router solicitations, MLD reports): capture and injection
// devices must carry only the dataplane's packets.
func DisableIPv6(name string) error {
	return WriteSysctl(filepath.Join("/proc/sys/net/ipv6/conf", name, "disable_ipv6"), "1")
}

// WriteSysctl writes a value under /proc/sys. Network sysctls apply to the
// namespace of the calling thread.
func WriteSysctl(path, value string) error {
	if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
		return fmt.Errorf("netsetup: sysctl %s=%s: %w", path, value, err)
	}
	return nil
}

// addAddr adds a prefix to a link without duplicate address detection, so
// that IPv6 addresses are usable at once. Adding an existing one is fine.
func addAddr(l netlink.Link, p netip.Prefix) error {
	a := &netlink.Addr{IPNet: prefixToIPNet(p)}
	if p.Addr().Is6() {
		a.Flags = unix.IFA_F_NODAD
	}
	if err := netlink.AddrReplace(l, a); err != nil {
		return fmt.Errorf("netsetup: address %s on %s: %w", p, l.Attrs().Name, err)
	}
	return nil
}

// setBridgePortFlag sets one IFLA_BRPORT_* flag of a bridge port.
// vishvananda/netlink exports setters for some flags only (learning, unicast
// flood); multicast and broadcast flood need the raw attribute.
func setBridgePortFlag(l netlink.Link, attr int, on bool) error {
	req := nl.NewNetlinkRequest(unix.RTM_SETLINK, unix.NLM_F_ACK)
	msg := nl.NewIfInfomsg(unix.AF_BRIDGE)
	msg.Index = int32(l.Attrs().Index)
	req.AddData(msg)
	v := byte(0)
	if on {
		v = 1
	}
	br := nl.NewRtAttr(unix.IFLA_PROTINFO|unix.NLA_F_NESTED, nil)
	br.AddRtAttr(attr, []byte{v})
	req.AddData(br)
	if _, err := req.Execute(unix.NETLINK_ROUTE, 0); err != nil {
		return fmt.Errorf("netsetup: bridge port flag %d on %s: %w", attr, l.Attrs().Name, err)
	}
	return nil
}

// DeviceName derives a stable interface name of at most 15 bytes for an
// object with an arbitrary id (a PU name, a container id): prefix + 8 hex
// digits of a hash of id + suffix. prefix and suffix together must leave
// room for the hash (at most 7 bytes).
func DeviceName(prefix, id, suffix string) (string, error) {
	if len(prefix)+len(suffix) > MaxLinkName-8 {
		return "", fmt.Errorf("netsetup: device name prefix %q + suffix %q too long", prefix, suffix)
	}
	// FNV-1a, 32 bits.
	h := uint32(2166136261)
	for i := 0; i < len(id); i++ {
		h ^= uint32(id[i])
		h *= 16777619
	}
	name := fmt.Sprintf("%s%08x%s", prefix, h, suffix)
	return name, CheckLinkName(name)
}

// Bridge port states (linux/if_bridge.h).
const (
	brStateForwarding = 3
	iflaBrportState   = 1 // IFLA_BRPORT_STATE
)

// WaitForwarding waits until the bridge port name is in the forwarding
// state. A new veth's carrier reaches the bridge through the kernel's
// linkwatch work, up to a second later; until then the port is disabled
// and the bridge drops every frame that enters through it. Without this
// wait the first packets through a fresh PU port or injection port are
// lost (seen as a lost first datagram).
func WaitForwarding(name string, timeout time.Duration) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("netsetup: %s: %w", name, err)
	}
	deadline := time.Now().Add(timeout)
	for {
		st, err := bridgePortState(l.Attrs().Index)
		if err != nil {
			return fmt.Errorf("netsetup: bridge port state of %s: %w", name, err)
		}
		if st == brStateForwarding {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("netsetup: bridge port %s not forwarding after %v (state %d)", name, timeout, st)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// WaitOperUp waits until the kernel reports interface name (in the calling
// thread's namespace) operationally up. The operational state is set by
// the same linkwatch step that activates the device's transmit queue after
// its carrier comes on, so a link that is up here sends.
func WaitOperUp(name string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		l, err := netlink.LinkByName(name)
		if err != nil {
			return fmt.Errorf("netsetup: %s: %w", name, err)
		}
		st := l.Attrs().OperState
		if st == netlink.OperUp {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("netsetup: %s not operationally up after %v (state %s)", name, timeout, st)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// bridgePortState reads IFLA_BRPORT_STATE from an AF_BRIDGE link dump
// (vishvananda/netlink's Protinfo does not carry it). -1: not a port.
func bridgePortState(index int) (int, error) {
	req := nl.NewNetlinkRequest(unix.RTM_GETLINK, unix.NLM_F_DUMP)
	req.AddData(nl.NewIfInfomsg(unix.AF_BRIDGE))
	msgs, err := req.Execute(unix.NETLINK_ROUTE, unix.RTM_NEWLINK)
	if err != nil {
		return -1, err
	}
	for _, m := range msgs {
		info := nl.DeserializeIfInfomsg(m)
		if int(info.Index) != index {
			continue
		}
		attrs, err := nl.ParseRouteAttr(m[info.Len():])
		if err != nil {
			return -1, err
		}
		for _, a := range attrs {
			if a.Attr.Type&^unix.NLA_F_NESTED != unix.IFLA_PROTINFO {
				continue
			}
			nested, err := nl.ParseRouteAttr(a.Value)
			if err != nil {
				return -1, err
			}
			for _, n := range nested {
				if n.Attr.Type == iflaBrportState && len(n.Value) >= 1 {
					return int(n.Value[0]), nil
				}
			}
		}
	}
	return -1, nil
}

// DeleteLinks deletes the named interfaces (missing ones are skipped) in as
// few kernel operations as it can. Deleting a device waits for an RCU grace
// period in the kernel (16-24 ms measured for a TAP); deleting a device
// group deletes all its devices behind one. The links are moved to group,
// which must be a group nobody else uses: if other devices are found in it,
// they are left alone and the named links deleted one by one.
func DeleteLinks(names []string, group uint32) error {
	if group == 0 {
		return fmt.Errorf("netsetup: DeleteLinks: group 0 is every device's default group")
	}
	want := map[string]bool{}
	var errs []error
	for _, n := range names {
		l, err := netlink.LinkByName(n)
		if err != nil {
			var nf netlink.LinkNotFoundError
			if !errors.As(err, &nf) {
				errs = append(errs, fmt.Errorf("netsetup: find %s: %w", n, err))
			}
			continue
		}
		if err := netlink.LinkSetGroup(l, int(group)); err != nil {
			errs = append(errs, fmt.Errorf("netsetup: group of %s: %w", n, err))
			continue
		}
		want[n] = true
	}
	if len(want) == 0 {
		return errors.Join(errs...)
	}
	links, err := Dump(netlink.LinkList)
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("netsetup: list links: %w", err))...)
	}
	foreign := false
	for _, l := range links {
		if uint32(l.Attrs().Group) == group && !want[l.Attrs().Name] {
			foreign = true
		}
	}
	if !foreign {
		req := nl.NewNetlinkRequest(unix.RTM_DELLINK, unix.NLM_F_ACK)
		req.AddData(nl.NewIfInfomsg(unix.AF_UNSPEC))
		req.AddData(nl.NewRtAttr(unix.IFLA_GROUP, nl.Uint32Attr(group)))
		_, err := req.Execute(unix.NETLINK_ROUTE, 0)
		if err == nil {
			return errors.Join(errs...)
		}
		// A device type the kernel cannot delete by group: one by one.
	}
	for n := range want {
		if err := DeleteLink(n); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
