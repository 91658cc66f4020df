package agent

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/trireme-go/trireme/netsetup"
)

// netnsFinder finds a pod's network namespace from its address, with what
// the node has and no kubelet or CRI: CNI plugins (bridge, flannel, ...)
// name each pod's namespace under /var/run/netns (the runtime's
// "cni-<uuid>"), and the pod's address is on an interface in it. The
// daemon then finds, as for any attached namespace, the veth whose peer is
// in its own namespace and the bridge it is a port of (monitor.NetnsPU),
// and refuses a namespace that has none.
//
// The addresses of each namespace are read once and cached by the
// namespace's identity (device and inode): a lookup reads only the
// namespaces that are new since the last one.
type netnsFinder struct {
	dir string

	mu    sync.Mutex
	known map[string]nsEntry // by file name
}

type nsEntry struct {
	dev, ino uint64
	addrs    []netip.Addr
}

func newNetnsFinder(dir string) *netnsFinder {
	return &netnsFinder{dir: dir, known: map[string]nsEntry{}}
}

// ErrNoNetns says that no network namespace of the node holds the pod's
// address (yet: the CNI plugin may not have run, or the CNI does not name
// namespaces under the directory).
var ErrNoNetns = fmt.Errorf("no network namespace under the netns directory holds the pod's address (unsupported CNI, or its network is not set up yet)")

// find returns the path of the namespace holding one of ips. It looks in
// the cache first; when no namespace matches, it reads every namespace
// again (an address may have been added since it was read).
func (f *netnsFinder) find(ips []netip.Addr) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	path, err := f.lookup(ips, false)
	if err == ErrNoNetns {
		path, err = f.lookup(ips, true)
	}
	return path, err
}

func (f *netnsFinder) lookup(ips []netip.Addr, fresh bool) (string, error) {
	ents, err := os.ReadDir(f.dir)
	if err != nil {
		return "", fmt.Errorf("%s: %w", f.dir, err)
	}
	self, _ := statNS("/proc/self/ns/net")
	seen := map[string]bool{}
	var found []string
	for _, e := range ents {
		name := e.Name()
		path := filepath.Join(f.dir, name)
		id, err := statNS(path)
		if err != nil || id == self {
			continue
		}
		seen[name] = true
		ent, ok := f.known[name]
		if fresh || !ok || ent.dev != id.dev || ent.ino != id.ino {
			addrs, err := nsAddrs(path)
			if err != nil {
				continue // gone meanwhile, or not a namespace
			}
			ent = nsEntry{dev: id.dev, ino: id.ino, addrs: addrs}
			f.known[name] = ent
		}
		if slices.ContainsFunc(ips, func(ip netip.Addr) bool { return slices.Contains(ent.addrs, ip) }) {
			found = append(found, path)
		}
	}
	for name := range f.known {
		if !seen[name] {
			delete(f.known, name)
		}
	}
	switch len(found) {
	case 0:
		return "", ErrNoNetns
	case 1:
		return found[0], nil
	}
	// Two namespaces claim the address: one of them is not the pod's (a
	// stale one, or a spoof by someone with root on the node). Enforcing
	// either could police the wrong workload: refuse and say so.
	return "", fmt.Errorf("several network namespaces hold the pod's address: %v", found)
}

type nsIdentity struct{ dev, ino uint64 }

func statNS(path string) (nsIdentity, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return nsIdentity{}, err
	}
	return nsIdentity{uint64(st.Dev), st.Ino}, nil
}

// nsAddrs lists the global unicast addresses of the namespace at path,
// through a netlink socket opened in it (no thread changes namespace).
func nsAddrs(path string) ([]netip.Addr, error) {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	list, err := netsetup.Dump(func() ([]netlink.Addr, error) { return h.AddrList(nil, netlink.FAMILY_ALL) })
	if err != nil {
		return nil, err
	}
	var out []netip.Addr
	for _, a := range list {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap().IsGlobalUnicast() {
			out = append(out, ip.Unmap())
		}
	}
	return out, nil
}
