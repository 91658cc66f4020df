package attacks

import (
	"context"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/trireme-go/trireme/netsetup"
	"github.com/trireme-go/trireme/node"
	"github.com/trireme-go/trireme/testenv"
)

const purgePolicy = `policies:
  - {name: all, selector: "*", ingress: [{action: allow}], egress: [{action: allow}]}
`

// preexisting makes, in the node namespace, what an operator had before
// trireme: a bridge "brx" with its own addresses and an uplink port.
func preexisting(t *testing.T, n *testenv.Node) {
	t.Helper()
	n.MustDo(func() error {
		if _, err := netsetup.EnsureBridge(netsetup.BridgeConfig{Name: "brx",
			Gateways: []netip.Prefix{netip.MustParsePrefix("192.0.2.1/24"), netip.MustParsePrefix("fd00:99::1/64")}}); err != nil {
			return err
		}
		br, err := netlink.LinkByName("brx")
		if err != nil {
			return err
		}
		attrs := netlink.NewLinkAttrs()
		attrs.Name, attrs.MasterIndex = "upl0", br.Attrs().Index
		return netlink.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: "upl1"})
	})
}

// linkState describes a link in the node namespace: "" when it is gone,
// else its addresses and master.
func linkState(t *testing.T, n *testenv.Node, name string) (exists bool, addrs []string, master int) {
	t.Helper()
	n.MustDo(func() error {
		l, err := netlink.LinkByName(name)
		if err != nil {
			return nil
		}
		exists, master = true, l.Attrs().MasterIndex
		as, err := netlink.AddrList(l, netlink.FAMILY_ALL)
		if err != nil {
			return err
		}
		for _, a := range as {
			if !a.IP.IsLinkLocalUnicast() {
				addrs = append(addrs, a.IPNet.String())
			}
		}
		return nil
	})
	return exists, addrs, master
}

// TestPurgeOnlyWhatItMade (issue #11 item 12): the daemon uses a bridge
// that existed before it (named in its configuration, with addresses and
// an uplink port of its own) and adds its gateway address to it; it
// creates an injection port and a `trireme run` PU. `trireme daemon
// purge` removes the table, the injection port, the PU's namespace and
// the gateway address it added, and leaves the bridge, its own addresses
// and the uplink. A link that carries an injection port's name but was
// not made by trireme is refused at start and survives purge.
func TestPurgeOnlyWhatItMade(t *testing.T) {
	t.Run("pre-existing bridge and uplink", func(t *testing.T) {
		n := testenv.NewNode(t, testenv.NodeOptions{})
		preexisting(t, n)
		d := testenv.NewDaemon(t, n, testenv.DaemonOptions{SecretsDir: testenv.PSKDir(t), Policy: purgePolicy,
			Bridge: "brx", Subnet: netip.MustParsePrefix("10.99.0.0/24")})
		d.Start()
		job, err := d.Client().CreatePU(node.CreateRequest{Name: "job-" + n.Suffix, Labels: map[string]string{"app": "job"}})
		if err != nil {
			t.Fatal(err)
		}
		inj, _ := netsetup.DeviceName("tij", "brx", "h")
		if ok, addrs, _ := linkState(t, n, "brx"); !ok || !slices.Contains(addrs, "10.99.0.1/24") {
			t.Fatalf("the daemon did not add its gateway to brx: %v", addrs)
		}
		if ok, _, _ := linkState(t, n, inj); !ok {
			t.Fatalf("no injection port %s", inj)
		}
		d.Stop(15) // SIGTERM: the table, TAPs and state stay
		if out, err := n.Run(context.Background(), testenv.Binary(t), "daemon", "purge", "--config", d.Config); err != nil {
			t.Fatalf("purge: %v\n%s", err, out)
		}
		ok, addrs, _ := linkState(t, n, "brx")
		slices.Sort(addrs)
		if !ok || !slices.Equal(addrs, []string{"192.0.2.1/24", "fd00:99::1/64"}) {
			t.Errorf("after purge: bridge brx exists %v with %v, want its own two addresses", ok, addrs)
		}
		var brIndex int
		n.MustDo(func() error {
			if br, err := netlink.LinkByName("brx"); err == nil {
				brIndex = br.Attrs().Index
			}
			return nil
		})
		if ok, _, master := linkState(t, n, "upl0"); !ok || master != brIndex {
			t.Errorf("after purge: uplink upl0 exists %v, master %d (brx is %d)", ok, master, brIndex)
		}
		if ok, _, _ := linkState(t, n, inj); ok {
			t.Errorf("after purge: injection port %s still there", inj)
		}
		if _, err := os.Stat(job.NetNS); err == nil {
			t.Errorf("after purge: the run PU's namespace %s still there", job.NetNS)
		}
		if out, _ := n.Run(context.Background(), "nft", "list", "tables"); strings.Contains(out, "trireme_") {
			t.Errorf("after purge: tables\n%s", out)
		}
	})

	t.Run("a foreign link with the injection port's name", func(t *testing.T) {
		n := testenv.NewNode(t, testenv.NodeOptions{})
		preexisting(t, n)
		inj, _ := netsetup.DeviceName("tij", "brx", "h")
		injb, _ := netsetup.DeviceName("tij", "brx", "b")
		n.MustDo(func() error {
			attrs := netlink.NewLinkAttrs()
			attrs.Name = inj
			return netlink.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: injb})
		})
		d := testenv.NewDaemon(t, n, testenv.DaemonOptions{SecretsDir: testenv.PSKDir(t), Policy: purgePolicy,
			Bridge: "brx", Subnet: netip.MustParsePrefix("10.99.0.0/24")})
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, "nsenter", "--net="+filepath.Join(netsetup.NetnsDir, n.Name), testenv.Binary(t), "daemon", "--config", d.Config).CombinedOutput()
		if err == nil || !strings.Contains(string(out), "not created by trireme") {
			t.Fatalf("the daemon started on a foreign injection port: %v\n%s", err, out)
		}
		if out, err := n.Run(context.Background(), testenv.Binary(t), "daemon", "purge", "--config", d.Config); err != nil {
			t.Fatalf("purge: %v\n%s", err, out)
		}
		for _, l := range []string{inj, injb, "brx", "upl0"} {
			if ok, _, _ := linkState(t, n, l); !ok {
				t.Errorf("purge deleted %s, which trireme did not create", l)
			}
		}
		if _, addrs, _ := linkState(t, n, "brx"); slices.Contains(addrs, "10.99.0.1/24") {
			t.Errorf("the refused start left its gateway on brx: %v", addrs)
		}
	})
}
