package dockerenv

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
)

// The engine runs a labelled container reachable on the test bridge, and
// cleanup leaves nothing behind: no directory, bridge, process or mount.
func TestEngineLifecycle(t *testing.T) {
	var dir, bridge string
	t.Run("engine", func(t *testing.T) {
		start := time.Now()
		e := Start(t)
		t.Logf("engine up with image in %v (dir %s, bridge %s, subnet %s)", time.Since(start), e.Dir, e.Bridge, e.Subnet)
		dir, bridge = e.Dir, e.Bridge

		id := e.Run(t, Container{Name: "probe-1", Labels: map[string]string{"app": "web"}})
		c := e.Inspect(t, id)
		if !c.State.Running || c.Config.Labels["app"] != "web" || c.Config.Image != Image {
			t.Fatalf("container state %+v labels %v image %s", c.State, c.Config.Labels, c.Config.Image)
		}
		var ip netip.Addr
		for _, ep := range c.NetworkSettings.Networks {
			ip = ep.IPAddress
		}
		if !e.Subnet.Contains(ip) {
			t.Fatalf("container IP %v not in %v", ip, e.Subnet)
		}
		// The probe server in the container answers with its name.
		var reply string
		ask := func() error {
			conn, err := net.DialTimeout("tcp", netip.AddrPortFrom(ip, 80).String(), time.Second)
			if err != nil {
				return err
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(2 * time.Second))
			conn.Write([]byte("hi\n"))
			reply, err = bufio.NewReader(conn).ReadString('\n')
			return err
		}
		err := ask()
		for deadline := time.Now().Add(5 * time.Second); err != nil && time.Now().Before(deadline); err = ask() {
			time.Sleep(50 * time.Millisecond)
		}
		if err != nil || reply != "probe-1\n" {
			t.Fatalf("probe reply %q, %v", reply, err)
		}
		// Container to container with the probe client: the outcome is
		// the exit code (ok 0, refused 1).
		if got := e.IP(t, id); got != ip {
			t.Errorf("IP %v, inspect says %v", got, ip)
		}
		tests := []struct {
			target string
			code   int
			out    string
		}{
			{netip.AddrPortFrom(ip, 80).String(), 0, "ok probe-1\n"},
			{netip.AddrPortFrom(ip, 81).String(), 1, "refused\n"},
		}
		for _, tc := range tests {
			code, out := e.RunToExit(t, Container{Name: "client", Labels: map[string]string{"app": "client"},
				Cmd: []string{"probe", "connect", "--tcp", tc.target, "--timeout", "2s"}}, 30*time.Second)
			if code != tc.code || out != tc.out {
				t.Errorf("connect %s: exit %d %q, want %d %q", tc.target, code, out, tc.code, tc.out)
			}
		}
	})
	if dir == "" {
		return // skipped
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("%s left behind (%v)", dir, err)
	}
	if _, err := netlink.LinkByName(bridge); err == nil {
		t.Errorf("bridge %s left behind", bridge)
	}
	mounts, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mounts), dir) {
		t.Errorf("mounts under %s left behind", dir)
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		if b, err := os.ReadFile(p); err == nil && bytes.Contains(b, []byte(dir)) {
			t.Errorf("process left behind: %s", bytes.ReplaceAll(b, []byte{0}, []byte{' '}))
		}
	}
}

// Containers can join an existing bridge (a trireme node's) on a part of
// its subnet; that bridge is left in place.
func TestExistingBridge(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	name := fmt.Sprintf("trdnode%d", os.Getpid()%100000)
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}
	if err := netlink.LinkAdd(br); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { netlink.LinkDel(br) })
	addr, _ := netlink.ParseAddr("10.211.0.1/16")
	if err := netlink.AddrAdd(br, addr); err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(br); err != nil {
		t.Fatal(err)
	}
	fixed := netip.MustParsePrefix("10.211.128.0/24")
	t.Run("engine", func(t *testing.T) {
		e := StartWith(t, Options{Bridge: name, FixedCIDR: fixed})
		if e.Bridge != name || e.Subnet != netip.MustParsePrefix("10.211.0.0/16") {
			t.Fatalf("bridge %s subnet %v", e.Bridge, e.Subnet)
		}
		id := e.Run(t, Container{Name: "on-node-bridge"})
		if ip := e.IP(t, id); !fixed.Contains(ip) {
			t.Errorf("container IP %v not in %v", ip, fixed)
		}
		code, out := e.RunToExit(t, Container{Name: "client", Cmd: []string{"probe", "connect", "--tcp", netip.AddrPortFrom(e.IP(t, id), 80).String()}}, 30*time.Second)
		if code != 0 || out != "ok on-node-bridge\n" {
			t.Errorf("connect: exit %d %q", code, out)
		}
	})
	if _, err := netlink.LinkByName(name); err != nil {
		t.Errorf("existing bridge removed: %v", err)
	}
}
