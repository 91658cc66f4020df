// Package testenv builds real network topologies for tests, the demo and
// perf: nodes (a network namespace with a bridge) with PUs (namespaces
// joined to the bridge by veth pairs), and clusters of nodes joined by an
// underlay. Every name carries a random suffix unique to the test, and
// everything is torn down by t.Cleanup, also when the test fails.
//
// Nodes live in their own namespaces, so tests never change the host's
// network. Run code "on the node" (nftables, TAPs, injection sockets) with
// Node.Do, and "in the PU" (listen, dial) with PU.Do or PU.Listen/Dial.
package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/trireme-go/trireme/netsetup"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// NamePrefix starts every namespace name testenv creates.
const NamePrefix = "trt-"

// BridgeName is the node bridge's name inside every node namespace.
const BridgeName = "br0"

// RequireRoot skips nothing: tests of this project run as root (CI too), so
// a non-root run is a setup error and fails loudly.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("this test needs root (network namespaces, nftables): run as root")
	}
}

// Suffix returns a fresh random name suffix (6 hex digits).
func Suffix() string {
	var b [3]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b[:])
}

// Node is a namespace with a bridge, standing for one host.
type Node struct {
	t       testing.TB
	Name    string // namespace name
	Suffix  string // random part shared by all names of the topology
	NS      netns.NsHandle
	Bridge  string
	Subnet  netip.Prefix // PU subnet; the bridge holds its first address
	Gateway netip.Addr
	// IPv6: every PU also gets an address of Subnet6 (a /64), the bridge
	// its first one.
	Subnet6  netip.Prefix
	Gateway6 netip.Addr
	nextIP6  netip.Addr
	PUs      []*PU
	nextIP   netip.Addr
}

// PU is a namespace attached to a node's bridge.
type PU struct {
	t     testing.TB
	Name  string // namespace name
	NS    netns.NsHandle
	Addr  netip.Addr
	Addr6 netip.Addr
	Link  netsetup.PULink // host side (in the node namespace)
	Node  *Node
}

// NodeOptions configure NewNode.
type NodeOptions struct {
	PUs    int          // number of PUs to create
	Subnet netip.Prefix // default 10.77.0.0/24
	// Subnet6 is the IPv6 /64 of the PUs; default fd00:77::/64.
	Subnet6 netip.Prefix
	Suffix  string // name suffix; default Suffix()
	Index   int    // node number within a cluster (part of the name)
}

// NewNode creates a node namespace with a bridge and opts.PUs PUs.
func NewNode(t testing.TB, opts NodeOptions) *Node {
	t.Helper()
	RequireRoot(t)
	if !opts.Subnet.IsValid() {
		opts.Subnet = netip.MustParsePrefix("10.77.0.0/24")
	}
	if !opts.Subnet6.IsValid() {
		opts.Subnet6 = netip.MustParsePrefix("fd00:77::/64")
	}
	if opts.Suffix == "" {
		opts.Suffix = Suffix()
		AssertNothingLeft(t, opts.Suffix) // registered first: runs last
	}
	name := fmt.Sprintf("%s%s-n%d", NamePrefix, opts.Suffix, opts.Index)
	n := &Node{t: t, Name: name, Suffix: opts.Suffix, Bridge: BridgeName, Subnet: opts.Subnet.Masked()}
	n.Gateway = n.Subnet.Addr().Next()
	n.nextIP = n.Gateway.Next()
	n.Subnet6 = opts.Subnet6.Masked()
	n.Gateway6 = n.Subnet6.Addr().Next()
	n.nextIP6 = n.Gateway6.Next()
	// The node's daemon runs in the node's namespace, where the machine's
	// input backlog is hidden: it is raised here for it, as the daemon
	// does on a real node (node/backlog.go). Only ever raised, so that
	// runs side by side cannot undo each other's.
	if before, after, err := netsetup.RaiseBacklog(netsetup.BacklogPath, netsetup.BacklogFor(opts.PUs)); err != nil {
		t.Logf("testenv: %v", err)
	} else if after != before {
		t.Logf("testenv: raised net.core.netdev_max_backlog from %d to %d for %d PUs on one bridge", before, after, opts.PUs)
	}
	h, err := netsetup.CreateNetns(name)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	n.NS = h
	t.Cleanup(func() {
		h.Close()
		if err := netsetup.DeleteNetns(name); err != nil {
			t.Errorf("testenv: cleanup: %v", err)
		}
	})
	err = n.Do(func() error {
		if lo, err := netlink.LinkByName("lo"); err == nil {
			if err := netlink.LinkSetUp(lo); err != nil {
				return err
			}
		}
		_, err := netsetup.EnsureBridge(netsetup.BridgeConfig{
			Name:     BridgeName,
			Gateways: []netip.Prefix{netip.PrefixFrom(n.Gateway, n.Subnet.Bits()), netip.PrefixFrom(n.Gateway6, n.Subnet6.Bits())},
		})
		return err
	})
	if err != nil {
		t.Fatalf("testenv: node %s: %v", name, err)
	}
	for i := 0; i < opts.PUs; i++ {
		n.AddPU()
	}
	return n
}

// Do runs fn inside the node namespace (on a locked OS thread).
func (n *Node) Do(fn func() error) error { return netsetup.InNetns(n.NS, fn) }

// MustDo is Do that fails the test on error.
func (n *Node) MustDo(fn func() error) {
	n.t.Helper()
	if err := n.Do(fn); err != nil {
		n.t.Fatalf("testenv: on node %s: %v", n.Name, err)
	}
}

// AddPU creates one more PU namespace on the node with the next free
// address; its host-side veth in the node namespace is "vp<i>".
func (n *Node) AddPU() *PU {
	n.t.Helper()
	addr, addr6 := n.nextIP, n.nextIP6
	n.nextIP, n.nextIP6 = addr.Next(), addr6.Next()
	return n.addPU(addr, addr6)
}

// AddPUAddr creates one more PU namespace on the node with the given IPv4
// address of the node subnet (and no IPv6 address), e.g. to lay out a
// universe whose addresses are fixed (the cyclonus pods' 192.168.<ns>.<pod>
// on a node subnet 192.168.0.0/16). The address must be free.
func (n *Node) AddPUAddr(addr netip.Addr) *PU {
	n.t.Helper()
	if !addr.Is4() || !n.Subnet.Contains(addr) || addr == n.Gateway || addr == n.Subnet.Addr() {
		n.t.Fatalf("testenv: PU address %v: want a free IPv4 host address of %v", addr, n.Subnet)
	}
	for _, p := range n.PUs {
		if p.Addr == addr {
			n.t.Fatalf("testenv: PU address %v is taken by %s", addr, p.Name)
		}
	}
	return n.addPU(addr, netip.Addr{})
}

// addPU creates PU namespace number len(n.PUs) with addr and, when valid,
// addr6.
func (n *Node) addPU(addr, addr6 netip.Addr) *PU {
	n.t.Helper()
	i := len(n.PUs)
	name := fmt.Sprintf("%s-p%d", n.Name, i)
	h, err := netsetup.CreateNetns(name)
	if err != nil {
		n.t.Fatalf("testenv: %v", err)
	}
	n.t.Cleanup(func() {
		h.Close()
		if err := netsetup.DeleteNetns(name); err != nil {
			n.t.Errorf("testenv: cleanup: %v", err)
		}
	})
	p := &PU{t: n.t, Name: name, NS: h, Addr: addr, Addr6: addr6, Node: n}
	addrs := []netip.Prefix{netip.PrefixFrom(addr, n.Subnet.Bits())}
	gws := []netip.Addr{n.Gateway}
	if addr6.IsValid() {
		addrs = append(addrs, netip.PrefixFrom(addr6, n.Subnet6.Bits()))
		gws = append(gws, n.Gateway6)
	}
	err = n.Do(func() error {
		l, err := netsetup.AttachPU(netsetup.PUConfig{
			Netns:    name,
			Bridge:   n.Bridge,
			HostVeth: fmt.Sprintf("vp%d", i),
			Addrs:    addrs,
			Gateways: gws,
		})
		p.Link = l
		return err
	})
	if err != nil {
		n.t.Fatalf("testenv: PU %s: %v", name, err)
	}
	n.PUs = append(n.PUs, p)
	return p
}

// Do runs fn inside the PU namespace.
func (p *PU) Do(fn func() error) error { return netsetup.InNetns(p.NS, fn) }

// Listen opens a TCP listener on the PU's IPv4 address and port (0: any);
// it is closed by t.Cleanup.
func (p *PU) Listen(port int) net.Listener { return p.ListenOn(p.Addr, port) }

// ListenOn opens a TCP listener in the PU on addr (p.Addr or p.Addr6).
func (p *PU) ListenOn(addr netip.Addr, port int) net.Listener {
	p.t.Helper()
	var ln net.Listener
	err := p.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", netip.AddrPortFrom(addr, uint16(port)).String())
		return err
	})
	if err != nil {
		p.t.Fatalf("testenv: listen in %s: %v", p.Name, err)
	}
	p.t.Cleanup(func() { ln.Close() })
	return ln
}

// Dial connects from the PU to addr over TCP. The socket is created in the
// PU namespace, so the connection stays there whatever goroutine uses it.
func (p *PU) Dial(addr netip.AddrPort, timeout time.Duration) (net.Conn, error) {
	return p.DialFrom(0, addr, timeout)
}

// DialFrom is Dial from a given client port (0: the kernel chooses).
func (p *PU) DialFrom(localPort int, addr netip.AddrPort, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := p.Do(func() error {
		var err error
		d := net.Dialer{Timeout: timeout}
		if localPort != 0 {
			d.LocalAddr = &net.TCPAddr{IP: p.Addr.AsSlice(), Port: localPort}
		}
		c, err = d.Dial("tcp", addr.String())
		return err
	})
	return c, err
}

// ListenUDP opens a UDP socket in the PU on port (0: any).
func (p *PU) ListenUDP(port int) *net.UDPConn {
	p.t.Helper()
	var c *net.UDPConn
	err := p.Do(func() error {
		var err error
		c, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(p.Addr, uint16(port))))
		return err
	})
	if err != nil {
		p.t.Fatalf("testenv: udp in %s: %v", p.Name, err)
	}
	p.t.Cleanup(func() { c.Close() })
	return c
}

// Run runs a command inside the PU namespace (tests use it for ping and
// to check state with ip/nft; the product never shells out).
func (p *PU) Run(ctx context.Context, name string, args ...string) (string, error) {
	return runIn(ctx, p.Name, name, args...)
}

// Run runs a command inside the node namespace.
func (n *Node) Run(ctx context.Context, name string, args ...string) (string, error) {
	return runIn(ctx, n.Name, name, args...)
}

func runIn(ctx context.Context, ns, name string, args ...string) (string, error) {
	full := append([]string{"netns", "exec", ns, name}, args...)
	out, err := exec.CommandContext(ctx, "ip", full...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("ip netns exec %s %s %s: %w: %s", ns, name, strings.Join(args, " "), err, out)
	}
	return string(out), nil
}
