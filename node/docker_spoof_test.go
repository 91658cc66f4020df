package node_test

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/trireme-go/trireme/netsetup"
	"github.com/trireme-go/trireme/node"
	"github.com/trireme-go/trireme/testenv"
	"github.com/trireme-go/trireme/testenv/dockerenv"
)

// TestDaemonDockerAntiSpoofing: a container's MAC and addresses come from
// the engine (its endpoint), not from what the container shows: the
// daemon knows them, and frames the container sends with another source
// (an admin address web accepts UDP from; web's own address; after
// changing its own MAC) are dropped in the kernel and counted for that
// container (spoofed-source), and never reach web.
func TestDaemonDockerAntiSpoofing(t *testing.T) {
	testenv.RequireRoot(t)
	sfx := testenv.Suffix()
	testenv.AssertNothingLeft(t, sfx)
	n := testenv.NewNode(t, testenv.NodeOptions{Suffix: sfx})
	b := n.Subnet.Addr().As4()
	b[3] = 128
	env := dockerenv.StartWith(t, dockerenv.Options{Netns: n.Name, Bridge: n.Bridge, FixedCIDR: netip.PrefixFrom(netip.AddrFrom4(b), 25)})
	web := env.Run(t, dockerenv.Container{Name: "web-" + sfx, Labels: map[string]string{"app": "web"}})
	att := env.Run(t, dockerenv.Container{Name: "att-" + sfx, Labels: map[string]string{"app": "attacker"}})
	policy := fmt.Sprintf(`targetNetworks: [%s]
policies:
  - name: web
    selector: app=web
    ingress:
      - {from: [{cidr: 192.168.100.0/24}], ports: [udp/80], action: allow}
`, n.Subnet)
	d := testenv.NewDaemon(t, n, testenv.DaemonOptions{SecretsDir: testenv.PSKDir(t), Policy: policy,
		Extra: fmt.Sprintf("docker: {enabled: true, host: %q}\n", env.Host)})
	d.Start()
	webPU, attPU := waitPoliced(t, d, web, 0), waitPoliced(t, d, att, 0)

	for _, p := range []node.PUInfo{webPU, attPU} {
		c := env.Inspect(t, p.ID)
		for _, ep := range c.NetworkSettings.Networks {
			mac := net.HardwareAddr(ep.MacAddress)
			if p.MAC != mac.String() || !slices.Contains(p.Addrs, netip.PrefixFrom(ep.IPAddress, ep.IPPrefixLen)) ||
				!slices.Contains(p.Addrs, netip.PrefixFrom(netsetup.EUI64LinkLocal(mac), 64)) {
				t.Errorf("%s: MAC %s addrs %v; the engine says %s %s/%d", p.Name, p.MAC, p.Addrs, mac, ep.IPAddress, ep.IPPrefixLen)
			}
		}
	}

	nsOf := func(pid int) netns.NsHandle {
		h, err := netns.GetFromPid(pid)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { h.Close() })
		return h
	}
	attacker := testenv.AdoptNetns(t, "att-"+sfx, nsOf(attPU.PID))
	victim := testenv.AdoptNetns(t, "web-"+sfx, nsOf(webPU.PID))
	raw, seen := attacker.Raw(), victim.Raw()
	webMAC, _ := net.ParseMAC(webPU.MAC)
	to := netip.AddrPortFrom(webPU.IPs[0], 80)
	send := func(srcMAC net.HardwareAddr, from netip.Addr, marker string) {
		raw.MustSend(testenv.UDPDatagram(srcMAC, webMAC, netip.AddrPortFrom(from, 4000), to, []byte(marker)))
	}
	drops := func() uint64 {
		pus, err := d.Client().ListPUs()
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range pus {
			if p.ID == att {
				return p.Drops["spoofed-source"]
			}
		}
		t.Fatal("the attacker container is not policed")
		return 0
	}
	wait := func(before uint64, what string) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); drops() <= before; time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: no spoofed-source drop counted for the container", what)
			}
		}
	}
	before := drops()
	send(raw.MAC, netip.MustParseAddr("192.168.100.5"), "SPOOF-ADMIN")
	wait(before, "an admin source")
	before = drops()
	send(raw.MAC, webPU.IPs[0], "SPOOF-WEB")
	wait(before, "web's address")

	// The container changes its MAC (root inside may): the engine's stays
	// the one its frames must carry.
	h, err := netlink.NewHandleAt(nsOf(attPU.PID))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	l, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	newMAC := net.HardwareAddr{0x02, 0xba, 0xd0, 0, 0, 1}
	if err := h.LinkSetHardwareAddr(l, newMAC); err != nil {
		t.Fatal(err)
	}
	before = drops()
	send(newMAC, attPU.IPs[0], "SPOOF-NEWMAC")
	wait(before, "a MAC of its choosing")

	if got := seen.Capture(300*time.Millisecond, func(p gopacket.Packet) bool {
		u, _ := p.Layer(layers.LayerTypeUDP).(*layers.UDP)
		return u != nil && bytes.HasPrefix(u.Payload, []byte("SPOOF"))
	}); len(got) != 0 {
		t.Fatalf("web's interface got %d spoofed datagrams", len(got))
	}
	if st, err := d.Client().Stats(); err != nil || st.Drops["spoofed-source"] < 3 {
		t.Errorf("trireme stats drops: %v %v, want spoofed-source >= 3", st.Drops, err)
	}
}
