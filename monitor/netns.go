package monitor

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/trireme-go/trireme/netsetup"
)

// NetnsDir is where named namespaces live (as `ip netns` makes them).
const NetnsDir = "/var/run/netns"

// NetnsPath turns a namespace name (under /var/run/netns) or a path
// (/proc/PID/ns/net, a bind mount) into a path, and checks that it is a
// network namespace.
func NetnsPath(nameOrPath string) (string, error) {
	if nameOrPath == "" {
		return "", errors.New("empty network namespace")
	}
	p := nameOrPath
	if !strings.Contains(nameOrPath, "/") {
		if nameOrPath == "." || nameOrPath == ".." {
			return "", fmt.Errorf("invalid network namespace name %q", nameOrPath)
		}
		p = filepath.Join(NetnsDir, nameOrPath)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(p, &st); err != nil {
		return "", fmt.Errorf("network namespace %q: %w", nameOrPath, err)
	}
	if st.Type != unix.NSFS_MAGIC {
		return "", fmt.Errorf("network namespace %q: %s is not a namespace file", nameOrPath, p)
	}
	return p, nil
}

// NetnsInfo is what a monitor learns by looking into a PU's namespace.
type NetnsInfo struct {
	// HostVeth / HostVethIndex: the peer, in the caller's namespace, of the
	// namespace's veth (eth0 preferred when there are several).
	HostVeth      string
	HostVethIndex int
	// Inside is the namespace-side interface of that veth.
	Inside string
	// Bridge is the bridge the host-side veth is a port of ("" if none).
	Bridge string
	// IPs are the global unicast addresses of the namespace's interfaces
	// other than loopback, sorted.
	IPs []netip.Addr
	// MAC and Addrs are Inside's Ethernet address and its addresses with
	// their prefix length, link-local included (netsetup.ReadLinkIdentity).
	MAC   net.HardwareAddr
	Addrs []netip.Prefix
}

// linkLocalWait bounds the wait for the kernel to give a just-plumbed
// interface its IPv6 link-local address.
const linkLocalWait = time.Second

// InspectNetns finds the host-side veth and the addresses of the namespace
// at path. It reads the namespace through a netlink socket opened in it, so
// no thread changes namespace. A namespace without a veth whose peer is in
// the caller's namespace yields an empty HostVeth and no error.
func InspectNetns(path string) (NetnsInfo, error) {
	var info NetnsInfo
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return info, fmt.Errorf("open netns %s: %w", path, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return info, fmt.Errorf("netlink in netns %s: %w", path, err)
	}
	defer h.Close()
	links, err := netsetup.Dump(h.LinkList)
	if err != nil {
		return info, fmt.Errorf("list links in netns %s: %w", path, err)
	}
	// eth0 first, then by index, so the choice is stable.
	slices.SortFunc(links, func(a, b netlink.Link) int {
		ae, be := a.Attrs().Name == "eth0", b.Attrs().Name == "eth0"
		if ae != be {
			if ae {
				return -1
			}
			return 1
		}
		return a.Attrs().Index - b.Attrs().Index
	})
	for _, l := range links {
		a := l.Attrs()
		if a.Flags&unix.IFF_LOOPBACK != 0 {
			continue
		}
		addrs, err := netsetup.Dump(func() ([]netlink.Addr, error) { return h.AddrList(l, netlink.FAMILY_ALL) })
		if err != nil {
			return info, fmt.Errorf("list addresses of %s in netns %s: %w", a.Name, path, err)
		}
		for _, ad := range addrs {
			ip, ok := netip.AddrFromSlice(ad.IP)
			if ok && ip.Unmap().IsGlobalUnicast() {
				info.IPs = append(info.IPs, ip.Unmap())
			}
		}
		if info.HostVeth != "" || l.Type() != "veth" || a.ParentIndex == 0 {
			continue
		}
		peer, err := netlink.LinkByIndex(a.ParentIndex)
		if err != nil {
			continue // the peer lives in another namespace
		}
		// An ifindex is per namespace: make sure the link found here really
		// is the peer (a veth pointing back at this index).
		if peer.Type() == "veth" && peer.Attrs().ParentIndex == a.Index {
			info.HostVeth, info.HostVethIndex, info.Inside = peer.Attrs().Name, peer.Attrs().Index, a.Name
			if m := peer.Attrs().MasterIndex; m != 0 {
				if br, err := netlink.LinkByIndex(m); err == nil && br.Type() == "bridge" {
					info.Bridge = br.Attrs().Name
				}
			}
		}
	}
	slices.SortFunc(info.IPs, netip.Addr.Compare)
	if info.Inside != "" {
		id, err := netsetup.ReadLinkIdentity(h, info.Inside, linkLocalWait)
		if err != nil {
			return info, fmt.Errorf("netns %s: %w", path, err)
		}
		info.MAC, info.Addrs = id.MAC, id.Addrs
	}
	return info, nil
}

// pidNetns is the namespace path of a running process.
func pidNetns(pid int) string { return fmt.Sprintf("/proc/%d/ns/net", pid) }

// sameNetns reports whether two namespace paths are the same namespace.
func sameNetns(a, b string) bool {
	var sa, sb unix.Stat_t
	if unix.Stat(a, &sa) != nil || unix.Stat(b, &sb) != nil {
		return false
	}
	return sa.Dev == sb.Dev && sa.Ino == sb.Ino
}

// NetnsPU describes the namespace at path (a checked path, see NetnsPath)
// as a PU of the given kind named name (default: derived from the path).
func NetnsPU(log *slog.Logger, kind Kind, name, path string, labels map[string]string) (PU, error) {
	pid := pidOf(path)
	if name == "" {
		name = DefaultName(path)
	}
	info, err := InspectNetns(path)
	if err != nil {
		return PU{}, err
	}
	pu := PU{
		ID: name, Name: name, Kind: kind, PID: pid, NetNS: path,
		HostVeth: info.HostVeth, HostVethIndex: info.HostVethIndex, Bridge: info.Bridge, IPs: info.IPs,
		MAC: info.MAC, Addrs: hostAddrs(info.Addrs, info.IPs),
		Tags: BuildTags(log, name, labels, SysTags(kind, name, name, "")),
	}
	switch {
	case info.HostVeth != "":
		pu.Network = NetworkBridge
	case len(info.IPs) == 0:
		pu.Network = NetworkNone
	default:
		// Addresses but no veth toward us (macvlan, a veth into another
		// namespace): report it as bridged; Enforceable says why it is not.
		pu.Network = NetworkBridge
	}
	return pu, nil
}

// hostAddrs is what a namespace's PU may send from: the addresses of its
// veth (with their prefixes) and its other interfaces' global addresses
// (as host prefixes: a PU may send from any address it holds).
func hostAddrs(veth []netip.Prefix, ips []netip.Addr) []netip.Prefix {
	out := slices.Clone(veth)
	for _, ip := range ips {
		if !slices.ContainsFunc(out, func(p netip.Prefix) bool { return p.Addr() == ip }) {
			out = append(out, netip.PrefixFrom(ip, ip.BitLen()))
		}
	}
	return out
}

// pidOf is N for /proc/N/ns/net, 0 otherwise.
func pidOf(path string) int {
	if rest, ok := strings.CutPrefix(path, "/proc/"); ok {
		if n, err := strconv.Atoi(strings.TrimSuffix(rest, "/ns/net")); err == nil && n > 0 {
			return n
		}
	}
	return 0
}

// DefaultName is the name of a PU attached without one: pid-N for
// /proc/N/ns/net, the file name otherwise (a namespace's name).
func DefaultName(path string) string {
	if pid := pidOf(path); pid > 0 {
		return "pid-" + strconv.Itoa(pid)
	}
	return filepath.Base(path)
}
