package netsetup_test

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/trireme-go/trireme/netsetup"
	"github.com/trireme-go/trireme/testenv"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func TestNetnsLifecycle(t *testing.T) {
	testenv.RequireRoot(t)
	name := testenv.NamePrefix + testenv.Suffix() + "-x"
	testenv.AssertNothingLeft(t, name)
	h, err := netsetup.CreateNetns(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close(); _ = netsetup.DeleteNetns(name) })
	if !netsetup.NetnsExists(name) {
		t.Fatal("namespace not visible")
	}
	out, err := exec.Command("ip", "netns", "list").CombinedOutput()
	if err != nil || !strings.Contains(string(out), name) {
		t.Fatalf("ip netns list does not show %s: %s %v", name, out, err)
	}
	if _, err := netsetup.CreateNetns(name); err == nil {
		t.Error("creating an existing namespace succeeded")
	}
	// The caller's namespace is unchanged: the new one has only lo.
	var names []string
	if err := netsetup.InNamedNetns(name, func() error {
		links, err := netlink.LinkList()
		for _, l := range links {
			names = append(names, l.Attrs().Name)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if len(names) != 1 || names[0] != "lo" {
		t.Errorf("fresh namespace has links %v", names)
	}
	if err := netsetup.DeleteNetns(name); err != nil {
		t.Fatal(err)
	}
	if err := netsetup.DeleteNetns(name); err != nil {
		t.Errorf("second delete: %v", err)
	}
	if netsetup.NetnsExists(name) {
		t.Error("namespace still there")
	}
	for _, bad := range []string{"", "..", "a/b", strings.Repeat("x", 300)} {
		if _, err := netsetup.CreateNetns(bad); err == nil {
			t.Errorf("CreateNetns(%q) accepted", bad)
		}
		if err := netsetup.DeleteNetns(bad); err == nil {
			t.Errorf("DeleteNetns(%q) accepted", bad)
		}
	}
}

func TestHostVethOf(t *testing.T) {
	n := testenv.NewNode(t, testenv.NodeOptions{PUs: 2})
	for _, p := range n.PUs {
		n.MustDo(func() error {
			for _, ifName := range []string{"eth0", ""} {
				got, err := netsetup.HostVethOf(p.NS, ifName)
				if err != nil {
					return err
				}
				if got.HostIndex != p.Link.HostIndex || got.HostName != p.Link.HostName || got.PUMAC.String() != p.Link.PUMAC.String() {
					t.Errorf("HostVethOf(%s, %q) = %+v, want %+v", p.Name, ifName, got, p.Link)
				}
			}
			if _, err := netsetup.HostVethOf(p.NS, "nope0"); err == nil {
				t.Error("found a veth that does not exist")
			}
			return nil
		})
	}
}

func TestAttachPUErrors(t *testing.T) {
	n := testenv.NewNode(t, testenv.NodeOptions{PUs: 1})
	for _, tc := range []struct {
		name string
		cfg  netsetup.PUConfig
	}{
		{"no bridge", netsetup.PUConfig{Netns: n.PUs[0].Name, Bridge: "nobr", HostVeth: "vx"}},
		{"no netns", netsetup.PUConfig{Netns: "trt-missing", Bridge: n.Bridge, HostVeth: "vx"}},
		{"long name", netsetup.PUConfig{Netns: n.PUs[0].Name, Bridge: n.Bridge, HostVeth: "a-name-too-long-for-linux"}},
		{"duplicate veth", netsetup.PUConfig{Netns: n.PUs[0].Name, Bridge: n.Bridge, HostVeth: n.PUs[0].Link.HostName, PUVeth: "eth1"}},
		{"eth0 taken in the PU", netsetup.PUConfig{Netns: n.PUs[0].Name, Bridge: n.Bridge, HostVeth: "vx"}},
		{"bad address", netsetup.PUConfig{Netns: n.PUs[0].Name, Bridge: n.Bridge, HostVeth: "vx", PUVeth: "eth9", Addrs: []netip.Prefix{{}}}},
	} {
		n.MustDo(func() error {
			if _, err := netsetup.AttachPU(tc.cfg); err == nil {
				t.Errorf("%s: AttachPU succeeded", tc.name)
			}
			if netsetup.LinkExists("vx") {
				t.Errorf("%s: half-built veth left behind", tc.name)
				_ = netsetup.DeleteLink("vx")
			}
			return nil
		})
	}
	n.MustDo(func() error {
		if err := netsetup.DetachPU(n.PUs[0].Link.HostName); err != nil {
			return err
		}
		if netsetup.LinkExists(n.PUs[0].Link.HostName) {
			t.Error("DetachPU left the veth")
		}
		return netsetup.DetachPU(n.PUs[0].Link.HostName) // idempotent
	})
}

// TestInjectionPortFlags checks the bridge-port flags of the injection port
// as the kernel reports them (`ip -d link`).
func TestInjectionPortFlags(t *testing.T) {
	n := testenv.NewNode(t, testenv.NodeOptions{})
	n.MustDo(func() error {
		for i := 0; i < 2; i++ { // idempotent
			if _, err := netsetup.EnsureInjectionPort(n.Bridge, "inj", "injb", ""); err != nil {
				return err
			}
		}
		return nil
	})
	out, err := n.Run(context.Background(), "ip", "-d", "link", "show", "injb")
	if err != nil {
		t.Fatal(err)
	}
	// "state forwarding": EnsureInjectionPort returns only once the bridge
	// forwards frames entering through the port.
	for _, want := range []string{"master " + n.Bridge, "state forwarding", "learning off", " flood off", "mcast_flood off", "bcast_flood off", "NOARP"} {
		if !strings.Contains(out, want) {
			t.Errorf("injection port lacks %q:\n%s", want, out)
		}
	}
	out, _ = n.Run(context.Background(), "ip", "-6", "addr", "show", "dev", "inj")
	if strings.Contains(out, "inet6") {
		t.Errorf("injection port has IPv6 addresses:\n%s", out)
	}
}

func TestDeviceName(t *testing.T) {
	seen := map[string]string{}
	for _, id := range []string{"web", "db", "frontend", strings.Repeat("c0ffee", 12), ""} {
		for _, sfx := range []string{"i", "o"} {
			n, err := netsetup.DeviceName("tr", id, sfx)
			if err != nil {
				t.Fatal(err)
			}
			if len(n) > netsetup.MaxLinkName || netsetup.CheckLinkName(n) != nil {
				t.Errorf("DeviceName(%q) = %q: not a valid interface name", id, n)
			}
			if again, _ := netsetup.DeviceName("tr", id, sfx); again != n {
				t.Errorf("DeviceName not stable: %q vs %q", n, again)
			}
			if prev, dup := seen[n]; dup {
				t.Errorf("%q and %q both map to %q", prev, id, n)
			}
			seen[n] = id
		}
	}
	if _, err := netsetup.DeviceName("toolong", "x", "-in"); err == nil {
		t.Error("prefix+suffix that leave no room accepted")
	}
	if _, err := netsetup.DeviceName("a/", "x", ""); err == nil {
		t.Error("prefix with a slash accepted")
	}
}

func TestWaitForwarding(t *testing.T) {
	n := testenv.NewNode(t, testenv.NodeOptions{PUs: 1})
	n.MustDo(func() error {
		// AttachPU waited already: the PU port forwards.
		if err := netsetup.WaitForwarding(n.PUs[0].Link.HostName, 0); err != nil {
			t.Errorf("PU port: %v", err)
		}
		// And the bridge, whose carrier came on with that port, sends.
		if err := netsetup.WaitOperUp(testenv.BridgeName, 0); err != nil {
			t.Errorf("bridge: %v", err)
		}
		// Not a bridge port: an error after the timeout, not a hang.
		if err := netsetup.WaitForwarding("lo", 50*time.Millisecond); err == nil {
			t.Error("lo reported as a forwarding bridge port")
		}
		if err := netsetup.WaitForwarding("nope0", time.Second); err == nil {
			t.Error("missing link reported as forwarding")
		}
		return nil
	})
	// And the PU's end sends at once: operationally up, its qdisc active
	// (a noop qdisc drops whatever the PU sends).
	p := n.PUs[0]
	if err := p.Do(func() error { return netsetup.WaitOperUp("eth0", 0) }); err != nil {
		t.Errorf("PU end: %v", err)
	}
	out, err := p.Run(context.Background(), "ip", "link", "show", "eth0")
	if err != nil || strings.Contains(out, "qdisc noop") {
		t.Errorf("PU end right after AttachPU: %s %v", out, err)
	}
	if err := p.Do(func() error { return netsetup.WaitOperUp("nope0", 50*time.Millisecond) }); err == nil {
		t.Error("missing link reported up")
	}
}

// TestDeleteLinks: the named links go (a missing name is no error), other
// devices stay, also those that were in the group beforehand (then the
// named ones are deleted one by one).
func TestDeleteLinks(t *testing.T) {
	n := testenv.NewNode(t, testenv.NodeOptions{})
	const group = 0x7472
	names := func() map[string]bool {
		out := map[string]bool{}
		n.MustDo(func() error {
			ls, err := netlink.LinkList()
			for _, l := range ls {
				out[l.Attrs().Name] = true
			}
			return err
		})
		return out
	}
	add := func(name string) netlink.Link {
		var l netlink.Link = &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: name}, Mode: netlink.TUNTAP_MODE_TAP}
		n.MustDo(func() error { return netlink.LinkAdd(l) })
		return l
	}
	for _, tc := range []struct {
		name      string
		foreignIn bool // a device not to delete already sits in the group
		del, keep []string
	}{
		{"by group", false, []string{"d1", "d2", "d3"}, []string{"k1"}},
		{"one by one", true, []string{"d4", "d5"}, []string{"k2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, d := range append(append([]string(nil), tc.del...), tc.keep...) {
				add(d)
			}
			if tc.foreignIn {
				n.MustDo(func() error {
					l, err := netlink.LinkByName(tc.keep[0])
					if err != nil {
						return err
					}
					return netlink.LinkSetGroup(l, group)
				})
			}
			n.MustDo(func() error { return netsetup.DeleteLinks(append(tc.del, "missing0"), group) })
			have := names()
			for _, d := range tc.del {
				if have[d] {
					t.Errorf("%s not deleted", d)
				}
			}
			for _, k := range tc.keep {
				if !have[k] {
					t.Errorf("%s deleted", k)
				}
			}
		})
	}
	if err := netsetup.DeleteLinks(nil, 0); err == nil {
		t.Error("group 0 accepted")
	}
}

// TestReadLinkIdentity: a PU's MAC and addresses, its link-local one
// included; on a link with IPv6 off there is no link-local address to wait
// for, and the read does not wait for one (it used to wait its whole
// bound, a second per attach).
func TestReadLinkIdentity(t *testing.T) {
	n := testenv.NewNode(t, testenv.NodeOptions{PUs: 2})
	read := func(p *testenv.PU, wait time.Duration) (netsetup.LinkIdentity, error) {
		var id netsetup.LinkIdentity
		err := p.Do(func() error {
			h, err := netlink.NewHandle()
			if err != nil {
				return err
			}
			defer h.Close()
			id, err = netsetup.ReadLinkIdentity(h, "eth0", wait)
			return err
		})
		return id, err
	}
	id, err := read(n.PUs[0], 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	has := func(id netsetup.LinkIdentity, a netip.Addr) bool {
		for _, p := range id.Addrs {
			if p.Addr() == a {
				return true
			}
		}
		return false
	}
	if !has(id, n.PUs[0].Addr) || !has(id, n.PUs[0].Addr6) || !has(id, netsetup.EUI64LinkLocal(id.MAC)) {
		t.Errorf("identity %+v lacks %v, %v or its link-local address", id, n.PUs[0].Addr, n.PUs[0].Addr6)
	}

	off := n.PUs[1]
	if err := off.Do(func() error {
		return netsetup.WriteSysctl("/proc/sys/net/ipv6/conf/eth0/disable_ipv6", "1")
	}); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		id, err := read(off, time.Hour)
		if err == nil && !has(id, off.Addr) {
			err = fmt.Errorf("identity %+v lacks %v", id, off.Addr)
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("ReadLinkIdentity waits for a link-local address on a link with IPv6 off")
	}
}

// TestNetnsDirShared: a namespace created by CreateNetns stays removable
// after an `ip netns add` on a machine where the namespace directory was
// not a mount point yet (a fresh boot). Without shareNetnsDir, ip's
// self-bind of the directory hides the earlier mount: DeleteNetns fails
// with EBUSY and the namespace is left behind. Run in a private mount
// namespace (unshare), where the directory's bind can be taken away.
func TestNetnsDirShared(t *testing.T) {
	testenv.RequireRoot(t)
	if os.Getenv("TRIREME_NETNS_DIR_CHILD") == "" {
		name := testenv.NamePrefix + testenv.Suffix()
		t.Cleanup(func() {
			// The child's mounts died with its mount namespace; files it
			// could not remove would be left on the disk.
			for _, n := range []string{name + "-ours", name + "-ip"} {
				os.Remove(filepath.Join(netsetup.NetnsDir, n))
			}
		})
		cmd := exec.Command("unshare", "--mount", "--propagation", "private", os.Args[0], "-test.run=^TestNetnsDirShared$", "-test.v")
		cmd.Env = append(os.Environ(), "TRIREME_NETNS_DIR_CHILD="+name)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("child: %v\n%s", err, out)
		}
		for _, n := range []string{name + "-ours", name + "-ip"} {
			if _, err := os.Stat(filepath.Join(netsetup.NetnsDir, n)); err == nil {
				t.Errorf("%s left behind", n)
			}
		}
		return
	}
	name := os.Getenv("TRIREME_NETNS_DIR_CHILD")
	// As on a fresh boot: the directory is not a mount point. (Private
	// mount namespace: the host's mounts are untouched.)
	for unix.Unmount(netsetup.NetnsDir, unix.MNT_DETACH) == nil {
	}
	ours, ip := name+"-ours", name+"-ip"
	h, err := netsetup.CreateNetns(ours)
	if err != nil {
		t.Fatal(err)
	}
	h.Close()
	t.Cleanup(func() { _ = netsetup.DeleteNetns(ours) })
	if out, err := exec.Command("ip", "netns", "add", ip).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ip).Run() })
	if err := netsetup.DeleteNetns(ours); err != nil {
		t.Fatalf("namespace created before ip netns add: %v", err)
	}
	if out, err := exec.Command("ip", "netns", "del", ip).CombinedOutput(); err != nil {
		t.Fatalf("ip netns del: %v %s", err, out)
	}
}
