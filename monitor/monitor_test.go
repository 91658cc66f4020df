package monitor

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

func TestBuildTags(t *testing.T) {
	tests := []struct {
		name   string
		labels map[string]string
		sys    map[string]string
		want   string
	}{
		{"labels and sys", map[string]string{"app": "web", "env": "prod"}, SysTags(KindDocker, "abc", "web1", "img:1"),
			"@sys:id=abc,@sys:image=img:1,@sys:kind=docker,@sys:name=web1,app=web,env=prod"},
		{"reserved labels dropped", map[string]string{"@sys:name": "db", "@ns:x": "y", "app": "web"}, SysTags(KindNetns, "n1", "n1", ""),
			"@sys:id=n1,@sys:kind=netns,@sys:name=n1,app=web"},
		{"empty key dropped", map[string]string{"": "x", " ": "y", "k": ""}, nil, "k="},
		{"key with = dropped", map[string]string{"a=b": "c", "a": "b=c"}, nil, "a=b=c"},
		{"no labels", nil, SysTags(KindProcess, "p", "p", ""), "@sys:id=p,@sys:kind=process,@sys:name=p"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := BuildTags(nil, "pu", tc.labels, tc.sys)
			if err := got.Validate(); err != nil {
				t.Fatalf("tags invalid: %v", err)
			}
			if got.String() != tc.want {
				t.Errorf("got %s, want %s", got, tc.want)
			}
		})
	}
}

func TestEnforceable(t *testing.T) {
	tests := []struct {
		pu   PU
		want bool
		why  string
	}{
		{PU{Network: NetworkBridge, HostVeth: "veth1"}, true, ""},
		{PU{Network: NetworkBridge}, false, "no host-side veth"},
		{PU{Network: NetworkHost}, false, "host network"},
		{PU{Network: NetworkNone}, false, "no network"},
		{PU{Network: NetworkContainer, SharesWith: "abc"}, false, "container abc"},
		{PU{}, false, "not running"},
	}
	for _, tc := range tests {
		ok, why := tc.pu.Enforceable()
		if ok != tc.want || !strings.Contains(why, tc.why) {
			t.Errorf("%v: got %v %q, want %v %q", tc.pu.Network, ok, why, tc.want, tc.why)
		}
	}
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces)")
	}
}

func run(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// testNetns makes a named namespace; with addr, a veth pair (host side
// returned) with addr on the namespace's eth0.
func testNetns(t *testing.T, tag, addr, bridge string) (name, hostVeth string) {
	t.Helper()
	name = fmt.Sprintf("trmon-%s-%d", tag, os.Getpid())
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	if addr == "" {
		return name, ""
	}
	hostVeth = fmt.Sprintf("trm%s%d", tag, os.Getpid()%100000)
	run(t, "ip", "link", "add", hostVeth, "type", "veth", "peer", "name", "eth0", "netns", name)
	t.Cleanup(func() { exec.Command("ip", "link", "del", hostVeth).Run() })
	if bridge != "" {
		run(t, "ip", "link", "set", hostVeth, "master", bridge)
	}
	run(t, "ip", "-n", name, "addr", "add", addr, "dev", "eth0")
	run(t, "ip", "-n", name, "link", "set", "eth0", "up")
	run(t, "ip", "link", "set", hostVeth, "up")
	return name, hostVeth
}

// TestNetnsPU: a namespace with a veth on a bridge is a bridged PU with
// that veth, its addresses and its labels as tags (a reserved label
// dropped); a loopback-only namespace has no network; what is no network
// namespace is refused.
func TestNetnsPU(t *testing.T) {
	needRoot(t)
	br := fmt.Sprintf("trmbr%d", os.Getpid()%100000)
	run(t, "ip", "link", "add", br, "type", "bridge")
	t.Cleanup(func() { exec.Command("ip", "link", "del", br).Run() })
	nsVeth, hostVeth := testNetns(t, "a", "10.77.0.2/24", br)
	nsBare, _ := testNetns(t, "b", "", "")

	netnsPU := func(nameOrPath, name string, labels map[string]string) (PU, error) {
		path, err := NetnsPath(nameOrPath)
		if err != nil {
			return PU{}, err
		}
		return NetnsPU(nil, KindNetns, name, path, labels)
	}
	pu, err := netnsPU(nsVeth, "web1", map[string]string{"app": "web", "@sys:name": "db"})
	if err != nil {
		t.Fatal(err)
	}
	if pu.ID != "web1" || pu.HostVeth != hostVeth || pu.HostVethIndex == 0 || pu.Bridge != br || pu.Network != NetworkBridge || pu.Kind != KindNetns {
		t.Errorf("pu %+v: want web1 with host veth %s on %s, bridge network, netns", pu, hostVeth, br)
	}
	if len(pu.IPs) != 1 || pu.IPs[0] != netip.MustParseAddr("10.77.0.2") {
		t.Errorf("IPs %v", pu.IPs)
	}
	if !slices.Contains(pu.Addrs, netip.MustParsePrefix("10.77.0.2/24")) {
		t.Errorf("Addrs %v: want the veth's 10.77.0.2/24", pu.Addrs)
	}
	if got := pu.Tags.String(); got != "@sys:id=web1,@sys:kind=netns,@sys:name=web1,app=web" {
		t.Errorf("tags %s", got)
	}
	if ok, why := pu.Enforceable(); !ok {
		t.Errorf("not enforceable: %s", why)
	}
	// By path, without a name: named after the namespace.
	if pu, err := netnsPU(NetnsDir+"/"+nsVeth, "", nil); err != nil || pu.ID != nsVeth || pu.HostVeth != hostVeth {
		t.Errorf("by path: %+v, %v", pu, err)
	}
	// Bad namespaces.
	for _, bad := range []string{"", "nope-" + nsVeth, "/etc/passwd", ".."} {
		if _, err := netnsPU(bad, "", nil); err == nil {
			t.Errorf("namespace %q accepted", bad)
		}
	}
	// Loopback-only namespace: no network.
	pu, err = netnsPU(nsBare, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if pu.ID != nsBare || pu.Network != NetworkNone || pu.HostVeth != "" {
		t.Errorf("bare namespace PU %+v", pu)
	}
	if ok, _ := pu.Enforceable(); ok {
		t.Error("a namespace without a veth is enforceable")
	}
}
