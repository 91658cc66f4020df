package perf

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"

	"github.com/trireme-go/trireme/netsetup"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// TopologyKind names the shape of a measurement topology.
type TopologyKind string

const (
	// OneNode: client and server PU on the same node bridge.
	OneNode TopologyKind = "one-node"
	// TwoNodes: client PU on node 1, server PU on node 2; the nodes are
	// routers joined by an underlay veth.
	TwoNodes TopologyKind = "two-nodes"
)

// ParseTopology checks a topology name.
func ParseTopology(s string) (TopologyKind, error) {
	switch k := TopologyKind(s); k {
	case OneNode, TwoNodes:
		return k, nil
	}
	return "", fmt.Errorf("unknown topology %q (want %s or %s)", s, OneNode, TwoNodes)
}

// Node is a node of a topology: a network namespace that stands for a host.
// Variants put their bridge (and enforcer) in it.
type Node struct {
	Name   string       // n1, n2: also usable as a trireme node name
	Netns  string       // named network namespace (under /run/netns)
	Bridge string       // name to give the node bridge
	Subnet netip.Prefix // the PU subnet of the node bridge
	// Gateway is the bridge's address in Subnet and the PUs' default route.
	Gateway netip.Addr
	// Underlay is the node's address on the underlay (two nodes only).
	Underlay netip.Addr
}

// PU is a processing unit of a topology: a network namespace with no links
// but loopback until a Variant joins it to its node.
type PU struct {
	Name   string            // client, server
	Netns  string            // named network namespace
	Node   *Node             // the node it runs on
	Labels map[string]string // identity labels for enforcer variants
	// Addr is set by Variant.Setup: the PU's address on its node bridge.
	Addr netip.Addr
}

// Topology is a set of namespaces: nodes (with their underlay and routes)
// and two PUs, not yet joined to the nodes.
type Topology struct {
	Kind   TopologyKind
	Nodes  []*Node
	Client *PU
	Server *PU
	// Targets covers every PU subnet of the topology (the enforcer's target
	// networks).
	Targets netip.Prefix

	created []string // namespaces to delete, in creation order
}

// The addressing plan is the same for every topology; each lives in its own
// namespaces, so several can exist at once.
var (
	targets      = netip.MustParsePrefix("10.201.0.0/16")
	underlayNet  = netip.MustParsePrefix("10.201.255.0/30")
	underlayAddr = []netip.Addr{netip.MustParseAddr("10.201.255.1"), netip.MustParseAddr("10.201.255.2")}
)

const (
	nsPrefix     = "tperf"
	underlayLink = "ul0"
	bridgeName   = "br0"
	puLink       = "eth0"
)

var topoSeq atomic.Uint32

// NewTopology creates the namespaces of a topology of the given kind. tag
// (short, e.g. the variant name) goes into the namespace names to help
// whoever lists them. On error nothing is left behind. Destroy removes it.
func NewTopology(kind TopologyKind, tag string) (*Topology, error) {
	if _, err := ParseTopology(string(kind)); err != nil {
		return nil, err
	}
	nodes := 1
	if kind == TwoNodes {
		nodes = 2
	}
	base := fmt.Sprintf("%s%dx%d-%s-", nsPrefix, os.Getpid(), topoSeq.Add(1), sanitize(tag))
	t := &Topology{Kind: kind, Targets: targets}
	for i := range nodes {
		subnet := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 201, byte(i + 1), 0}), 24)
		t.Nodes = append(t.Nodes, &Node{
			Name:    fmt.Sprintf("n%d", i+1),
			Netns:   fmt.Sprintf("%sn%d", base, i+1),
			Bridge:  bridgeName,
			Subnet:  subnet,
			Gateway: subnet.Addr().Next(),
		})
	}
	t.Client = &PU{Name: "client", Netns: base + "client", Node: t.Nodes[0],
		Labels: map[string]string{"app": "perf-client"}}
	t.Server = &PU{Name: "server", Netns: base + "server", Node: t.Nodes[nodes-1],
		Labels: map[string]string{"app": "perf-server"}}

	if err := t.build(); err != nil {
		t.Destroy()
		return nil, err
	}
	return t, nil
}

func sanitize(s string) string {
	var b strings.Builder
	for _, r := range s {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
		}
	}
	if b.Len() > 8 {
		return b.String()[:8]
	}
	return b.String()
}

// PUs lists the topology's PUs.
func (t *Topology) PUs() []*PU { return []*PU{t.Client, t.Server} }

func (t *Topology) build() error {
	for _, n := range t.Nodes {
		if err := t.newNetns(n.Netns); err != nil {
			return err
		}
		if err := sysctlsIn(n.Netns, map[string]string{"net/ipv4/ip_forward": "1"}); err != nil {
			return err
		}
	}
	for _, p := range t.PUs() {
		if err := t.newNetns(p.Netns); err != nil {
			return err
		}
	}
	// The client makes tens of thousands of short connections and closes
	// first: give it the whole port range and let it reuse TIME_WAIT ports.
	if err := sysctlsIn(t.Client.Netns, map[string]string{
		"net/ipv4/ip_local_port_range": "1024 65535",
		"net/ipv4/tcp_tw_reuse":        "1",
	}); err != nil {
		return err
	}
	if len(t.Nodes) == 2 {
		return t.buildUnderlay()
	}
	return nil
}

// newNetns creates a named namespace with loopback up and IPv6 off (no
// router solicitations or DAD traffic to disturb the measurement).
func (t *Topology) newNetns(name string) error {
	if err := createNamed(name); err != nil {
		return err
	}
	t.created = append(t.created, name)
	if err := sysctlsIn(name, map[string]string{
		"net/ipv6/conf/all/disable_ipv6":     "1",
		"net/ipv6/conf/default/disable_ipv6": "1",
	}); err != nil {
		return err
	}
	return withHandle(name, func(h *netlink.Handle) error {
		lo, err := h.LinkByName("lo")
		if err != nil {
			return err
		}
		return h.LinkSetUp(lo)
	})
}

// buildUnderlay joins node 1 and node 2 with a veth pair and routes each
// node's PU subnet through the other.
func (t *Topology) buildUnderlay() error {
	n1, n2 := t.Nodes[0], t.Nodes[1]
	n1.Underlay, n2.Underlay = underlayAddr[0], underlayAddr[1]
	ns2, err := netns.GetFromName(n2.Netns)
	if err != nil {
		return err
	}
	defer ns2.Close()
	err = withHandle(n1.Netns, func(h *netlink.Handle) error {
		attrs := netlink.NewLinkAttrs()
		attrs.Name = underlayLink
		return h.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: underlayLink, PeerNamespace: netlink.NsFd(ns2)})
	})
	if err != nil {
		return fmt.Errorf("perf: underlay veth: %w", err)
	}
	for i, n := range []*Node{n1, n2} {
		peer := []*Node{n2, n1}[i]
		err := withHandle(n.Netns, func(h *netlink.Handle) error {
			l, err := h.LinkByName(underlayLink)
			if err != nil {
				return err
			}
			if err := h.AddrAdd(l, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(n.Underlay, underlayNet.Bits()))}); err != nil {
				return err
			}
			if err := h.LinkSetUp(l); err != nil {
				return err
			}
			return h.RouteAdd(&netlink.Route{
				LinkIndex: l.Attrs().Index,
				Dst:       ipNet(peer.Subnet),
				Gw:        net.IP(peer.Underlay.AsSlice()),
			})
		})
		if err != nil {
			return fmt.Errorf("perf: underlay on %s: %w", n.Name, err)
		}
	}
	// n1's end came up first: its carrier (and its transmit queue) is
	// applied later by the kernel's linkwatch work.
	return inNetns(n1.Netns, func() error { return netsetup.WaitOperUp(underlayLink, netsetup.PortUpTimeout) })
}

// Destroy deletes the topology's namespaces, and with them every link in
// them. Processes a variant started in them must be gone first.
func (t *Topology) Destroy() error {
	var errs []error
	for i := len(t.created) - 1; i >= 0; i-- {
		if err := netns.DeleteNamed(t.created[i]); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("perf: delete netns %s: %w", t.created[i], err))
		}
	}
	t.created = nil
	return errors.Join(errs...)
}

// Namespaces lists the namespaces the topology created.
func (t *Topology) Namespaces() []string { return append([]string(nil), t.created...) }

// CleanStale deletes namespaces and daemon directories left by perf runs
// whose process is gone (a crashed or killed run); those of live runs are
// left alone.
func CleanStale() error {
	var errs []error
	if ents, err := os.ReadDir(filepath.Join("/run", "netns")); err == nil {
		for _, e := range ents {
			if netsetup.StaleName(e.Name(), nsPrefix, "x") {
				if err := netns.DeleteNamed(e.Name()); err != nil {
					errs = append(errs, fmt.Errorf("perf: delete stale netns %s: %w", e.Name(), err))
				}
			}
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	if ents, err := os.ReadDir(os.TempDir()); err == nil {
		for _, e := range ents {
			if e.IsDir() && netsetup.StaleName(e.Name(), tmpPrefix, "-") {
				if err := os.RemoveAll(filepath.Join(os.TempDir(), e.Name())); err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	return errors.Join(errs...)
}

// createNamed creates a named namespace (netsetup.CreateNetns: the
// namespace directory made a shared mount point first, as ip does).
func createNamed(name string) error {
	h, err := netsetup.CreateNetns(name)
	if err != nil {
		return fmt.Errorf("perf: %w", err)
	}
	return h.Close()
}

// withHandle runs fn with a netlink handle bound to a named namespace.
func withHandle(name string, fn func(*netlink.Handle) error) error {
	ns, err := netns.GetFromName(name)
	if err != nil {
		return fmt.Errorf("perf: netns %s: %w", name, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("perf: netlink in %s: %w", name, err)
	}
	defer h.Close()
	return fn(h)
}

// sysctlsIn writes sysctls (paths under /proc/sys) inside a namespace:
// /proc/sys/net shows the namespace of the thread that opens it.
func sysctlsIn(name string, kv map[string]string) error {
	ns, err := netns.GetFromName(name)
	if err != nil {
		return fmt.Errorf("perf: netns %s: %w", name, err)
	}
	defer ns.Close()
	return netsetup.InNetns(ns, func() error {
		for k, v := range kv {
			if err := os.WriteFile(filepath.Join("/proc/sys", k), []byte(v), 0o644); err != nil {
				return fmt.Errorf("perf: sysctl %s in %s: %w", k, name, err)
			}
		}
		return nil
	})
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// WireBridge joins the PUs of t to plain Linux bridges, one per node, with
// no enforcer: the kernel path. Each PU gets the next address of its node's
// subnet after the gateway and a default route through the gateway.
func WireBridge(t *Topology) error {
	for _, n := range t.Nodes {
		err := withHandle(n.Netns, func(h *netlink.Handle) error {
			attrs := netlink.NewLinkAttrs()
			attrs.Name = n.Bridge
			br := &netlink.Bridge{LinkAttrs: attrs}
			if err := h.LinkAdd(br); err != nil {
				return err
			}
			if err := h.AddrAdd(br, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(n.Gateway, n.Subnet.Bits()))}); err != nil {
				return err
			}
			return h.LinkSetUp(br)
		})
		if err != nil {
			return fmt.Errorf("perf: bridge on %s: %w", n.Name, err)
		}
	}
	next := map[*Node]netip.Addr{}
	for _, n := range t.Nodes {
		next[n] = n.Gateway.Next()
	}
	for _, p := range t.PUs() {
		addr := next[p.Node]
		next[p.Node] = addr.Next()
		if err := joinBridge(p, addr); err != nil {
			return fmt.Errorf("perf: join %s to %s: %w", p.Name, p.Node.Name, err)
		}
		p.Addr = addr
	}
	return nil
}

func joinBridge(p *PU, addr netip.Addr) error {
	puNs, err := netns.GetFromName(p.Netns)
	if err != nil {
		return err
	}
	defer puNs.Close()
	host := "v" + p.Name
	err = withHandle(p.Node.Netns, func(h *netlink.Handle) error {
		br, err := h.LinkByName(p.Node.Bridge)
		if err != nil {
			return err
		}
		attrs := netlink.NewLinkAttrs()
		attrs.Name = host
		attrs.MasterIndex = br.Attrs().Index
		if err := h.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: puLink, PeerNamespace: netlink.NsFd(puNs)}); err != nil {
			return err
		}
		l, err := h.LinkByName(host)
		if err != nil {
			return err
		}
		return h.LinkSetUp(l)
	})
	if err != nil {
		return err
	}
	err = withHandle(p.Netns, func(h *netlink.Handle) error {
		l, err := h.LinkByName(puLink)
		if err != nil {
			return err
		}
		if err := h.AddrAdd(l, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(addr, p.Node.Subnet.Bits()))}); err != nil {
			return err
		}
		if err := h.LinkSetUp(l); err != nil {
			return err
		}
		return h.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: net.IP(p.Node.Gateway.AsSlice())})
	})
	if err != nil {
		return err
	}
	// The host end came up before its peer: the kernel's linkwatch work
	// applies its carrier later, and until then the bridge port is
	// disabled and drops what the PU sends (netsetup.AttachPU waits the
	// same way); the bridge's own carrier comes with it.
	return inNetns(p.Node.Netns, func() error {
		if err := netsetup.WaitForwarding(host, netsetup.PortUpTimeout); err != nil {
			return err
		}
		return netsetup.WaitOperUp(p.Node.Bridge, netsetup.PortUpTimeout)
	})
}

// inNetns runs fn on a thread in a named namespace.
func inNetns(name string, fn func() error) error {
	ns, err := netns.GetFromName(name)
	if err != nil {
		return fmt.Errorf("perf: netns %s: %w", name, err)
	}
	defer ns.Close()
	return netsetup.InNetns(ns, fn)
}
