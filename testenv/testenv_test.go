package testenv

import (
	"io"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
)

// roundTrip connects from a to b's listener and echoes a message.
func roundTrip(t *testing.T, from, to *PU) {
	t.Helper()
	ln := to.Listen(0)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = io.Copy(c, c)
	}()
	addr := netip.MustParseAddrPort(ln.Addr().String())
	c, err := from.Dial(addr, 3*time.Second)
	if err != nil {
		t.Fatalf("dial %s -> %s: %v", from.Addr, addr, err)
	}
	defer c.Close()
	msg := []byte("hello across the bridge")
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != string(msg) {
		t.Fatalf("echo %s -> %s: %q, %v", from.Addr, addr, got, err)
	}
}

func TestNodeConnectivity(t *testing.T) {
	n := NewNode(t, NodeOptions{PUs: 3})
	for _, tc := range []struct{ from, to int }{{0, 1}, {1, 2}, {2, 0}} {
		roundTrip(t, n.PUs[tc.from], n.PUs[tc.to])
	}
	if n.PUs[0].Addr == n.PUs[1].Addr {
		t.Fatalf("PUs share an address: %v", n.PUs[0].Addr)
	}
}

func TestNodeIPv6(t *testing.T) {
	n := NewNode(t, NodeOptions{PUs: 2})
	ln := n.PUs[1].ListenOn(n.PUs[1].Addr6, 0)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			_, _ = io.Copy(c, c)
			c.Close()
		}
	}()
	if !n.PUs[1].Addr6.Is6() || !n.Subnet6.Contains(n.PUs[1].Addr6) {
		t.Fatalf("PU IPv6 address %v not in %v", n.PUs[1].Addr6, n.Subnet6)
	}
	if err := n.PUs[0].Echo(netip.MustParseAddrPort(ln.Addr().String()), "v6", 5*time.Second); err != nil {
		t.Fatal(err)
	}
}

func TestClusterCrossNode(t *testing.T) {
	c := NewCluster(t, 3, 1)
	for _, tc := range []struct{ from, to int }{{0, 1}, {1, 2}, {2, 0}} {
		roundTrip(t, c.Nodes[tc.from].PUs[0], c.Nodes[tc.to].PUs[0])
	}
}

func TestNothingLeftBehind(t *testing.T) {
	var sfx string
	t.Run("build", func(t *testing.T) {
		n := NewNode(t, NodeOptions{PUs: 2})
		sfx = n.Suffix
		if len(Leftovers(sfx)) == 0 {
			t.Fatal("Leftovers does not see a live topology")
		}
	})
	// The subtest's cleanups ran (including its own AssertNothingLeft).
	if left := Leftovers(sfx); len(left) != 0 {
		t.Fatalf("left behind after cleanup: %v", left)
	}
}

func TestEchoHelpers(t *testing.T) {
	n := NewNode(t, NodeOptions{PUs: 2})
	addr := n.PUs[1].ServeEcho(0)
	for _, msg := range []string{"a", "a longer message with some bytes"} {
		if err := n.PUs[0].Echo(addr, msg, 3*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	// Nothing listens on port 1: the probe fails instead of hanging.
	if err := n.PUs[0].Echo(netip.AddrPortFrom(n.PUs[1].Addr, 1), "x", 2*time.Second); err == nil {
		t.Fatal("echo to a closed port succeeded")
	}
}

// TestAddPUAddr: PUs with fixed addresses in different /24s of a /16 node
// subnet (the cyclonus universe's layout) reach each other over the bridge.
func TestAddPUAddr(t *testing.T) {
	n := NewNode(t, NodeOptions{Subnet: netip.MustParsePrefix("192.168.0.0/16")})
	addrs := []string{"192.168.1.10", "192.168.2.20", "192.168.3.30"}
	for _, a := range addrs {
		p := n.AddPUAddr(netip.MustParseAddr(a))
		if p.Addr != netip.MustParseAddr(a) || p.Addr6.IsValid() {
			t.Fatalf("PU %s: addresses %v %v, want %s and no IPv6", p.Name, p.Addr, p.Addr6, a)
		}
	}
	for _, tc := range []struct{ from, to int }{{0, 1}, {1, 2}, {2, 0}} {
		roundTrip(t, n.PUs[tc.from], n.PUs[tc.to])
	}
}

// TestLeftoversJudgeOnlyOwn: what another run made (a namespace, a host
// link and an nftables table named like testenv's, with another suffix)
// is not this test's leftover; what this test made and left is.
func TestLeftoversJudgeOnlyOwn(t *testing.T) {
	RequireRoot(t)
	own, other := Suffix(), Suffix()
	for other == own {
		other = Suffix()
	}
	hostLink := func(name string) {
		t.Helper()
		if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if l, err := netlink.LinkByName(name); err == nil {
				netlink.LinkDel(l)
			}
		})
	}
	hostTable := func(name string) {
		t.Helper()
		c, err := nftables.New()
		if err != nil {
			t.Fatal(err)
		}
		tb := c.AddTable(&nftables.Table{Family: nftables.TableFamilyNetdev, Name: name})
		if err := c.Flush(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.DelTable(tb); c.Flush() })
	}
	// Another run's things, alive while this test judges its own.
	DecoyNetns(t, NamePrefix+other+"-n0")
	hostLink("trd" + other)
	hostTable("trireme_" + other)
	if left := Leftovers(own); len(left) != 0 {
		t.Fatalf("another run's things reported as this test's: %v", left)
	}
	// This test's own leftovers are caught, and only they.
	DecoyNetns(t, NamePrefix+own+"-n0")
	hostLink("trd" + own)
	hostTable("trireme_" + own)
	left := Leftovers(own)
	want := []string{"netns " + NamePrefix + own + "-n0", "link trd" + own, "nft table trireme_" + own}
	if !slices.Equal(left, want) {
		t.Fatalf("Leftovers(%s) = %v, want %v", own, left, want)
	}
	if left := Leftovers(""); len(left) != 1 || !strings.Contains(left[0], "needs the suffix") {
		t.Fatalf(`Leftovers("") = %v, want a refusal`, left)
	}
}
