package node

import (
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/trireme-go/trireme/identity"
	"github.com/trireme-go/trireme/monitor"
)

// ErrConflict: the request names a PU, namespace or veth that is already
// policed; the API maps it to 409.
var ErrConflict = errors.New("conflict")

// attachName is what may name an attached PU: it is part of the PU's ID
// (netns-<name>), of its @sys:name tag and of API paths (`trireme pu
// detach`), so no '/', no spaces, no control characters.
var attachName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$`)

// puName is what may name a PU created by `trireme run` (it also names its
// namespace, trireme-<name>).
var puName = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$`)

// checkLabels refuses labels identity.CheckLabel refuses ('@' keys are set by
// trireme only), naming the first bad one (in key order).
func checkLabels(m map[string]string) error {
	for _, k := range slices.Sorted(maps.Keys(m)) {
		if err := identity.CheckLabel(k, m[k], false); err != nil {
			return fmt.Errorf("%w: label: %v", ErrInvalid, err)
		}
	}
	return nil
}

// checkTags validates orchestrator-set tags: reserved keys are allowed,
// the rest as for labels.
func checkTags(m map[string]string) error {
	for _, k := range slices.Sorted(maps.Keys(m)) {
		if err := identity.CheckLabel(k, m[k], true); err != nil {
			return fmt.Errorf("%w: tag: %v", ErrInvalid, err)
		}
	}
	return nil
}

// checkAttachable refuses a namespace whose policing would break the node:
// the daemon's own namespace (its veths would be the injection port: every
// new connection on the node would stop), a namespace whose veth is not a
// port of a bridge on this node (an uplink or a routed link: steering it
// would police the node's own traffic), a veth trireme made itself, and a
// namespace or veth already policed as another PU (ErrConflict). d.changes
// held.
func (d *Daemon) checkAttachable(mp *monitor.PU) error {
	if sameNetns(mp.NetNS, "/proc/self/ns/net") {
		return fmt.Errorf("%w: %s is the daemon's own network namespace", ErrInvalid, mp.NetNS)
	}
	if mp.HostVeth == "" {
		return nil // Enforceable says why it cannot be policed
	}
	if mp.Bridge == "" {
		return fmt.Errorf("%w: namespace %s: its veth's host end %s is not a port of a bridge (an uplink or a routed link is not a PU)", ErrInvalid, mp.NetNS, mp.HostVeth)
	}
	if l, err := netlink.LinkByName(mp.HostVeth); err == nil && l.Attrs().Alias == d.owner {
		return fmt.Errorf("%w: namespace %s: %s is a link trireme made (an injection port), not a PU's", ErrInvalid, mp.NetNS, mp.HostVeth)
	}
	// Looked up by veth and by namespace identity, not by going through
	// every PU (two stat calls each: attach cost grew with the PUs).
	p := d.pus.lookupVeth(mp.HostVeth)
	if p == nil {
		p = d.pus.lookupNetns(mp.NetNS)
	}
	if p != nil {
		return fmt.Errorf("%w: namespace %s (veth %s) is already policed as PU %s", ErrConflict, mp.NetNS, mp.HostVeth, p.info.ID)
	}
	return nil
}

// nsID identifies a network namespace (the nsfs inode of its file).
type nsID struct{ dev, ino uint64 }

func netnsIdentity(path string) (nsID, bool) {
	var st unix.Stat_t
	if path == "" || unix.Stat(path, &st) != nil {
		return nsID{}, false
	}
	return nsID{uint64(st.Dev), st.Ino}, true
}

// sameNetns reports whether two namespace paths are the same namespace.
func sameNetns(a, b string) bool {
	var sa, sb unix.Stat_t
	if a == "" || b == "" || unix.Stat(a, &sa) != nil || unix.Stat(b, &sb) != nil {
		return false
	}
	return sa.Dev == sb.Dev && sa.Ino == sb.Ino
}
