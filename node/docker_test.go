package node_test

import (
	"bufio"
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/client"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/trireme-go/trireme/node"
	"github.com/trireme-go/trireme/testenv"
	"github.com/trireme-go/trireme/testenv/dockerenv"
)

// dockerPolicy: frontend may reach web on 80; with allowOther, so may
// app=other.
func dockerPolicy(n *testenv.Node, allowOther bool) string {
	from, to := "{selector: app=frontend}", "app=frontend"
	if allowOther {
		from, to = "{selector: app=frontend}, {selector: app=other}", "app in (frontend, other)"
	}
	return fmt.Sprintf(`
targetNetworks: [%s]
policies:
  - name: clients
    selector: %q
    egress:
      - to: [{selector: app=web}]
        ports: [tcp/80]
        action: allow
  - name: web
    selector: app=web
    ingress:
      - from: [%s]
        ports: [tcp/80]
        action: allow
`, n.Subnet, to, from)
}

// brokenPolicy allows everything, but line 6 has a misspelled key.
func brokenPolicy(n *testenv.Node) string {
	return fmt.Sprintf(`targetNetworks: [%s]
policies:
  - name: all
    selector: "*"
    ingress: [{action: allow}]
    egres: [{action: allow}]
`, n.Subnet)
}

// waitPoliced waits until the daemon enforces the container with a PID
// other than notPID, and returns its PU.
func waitPoliced(t *testing.T, d *testenv.Daemon, id string, notPID int) node.PUInfo {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		pus, err := d.Client().ListPUs()
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range pus {
			if p.ID == id && p.State == node.PURunning && p.PID != notPID {
				return p
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("container %.12s not policed (PID != %d) after 20s; PUs: %+v", id, notPID, pus)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// probe runs `trireme probe connect` in a container (docker exec) and
// returns its exit code and output line.
func probe(t *testing.T, env *dockerenv.Env, from string, to netip.Addr) (int, string) {
	t.Helper()
	code, out := env.Exec(t, from, 30*time.Second, "/trireme", "probe", "connect", "--tcp", netip.AddrPortFrom(to, 80).String(), "--timeout", "2s")
	return code, strings.TrimSpace(out)
}

// dialFrom connects from the network namespace of a process (a container)
// to a probe server at addr and reads its answer: a fast probe for polling.
func dialFrom(pid int, addr netip.AddrPort) error {
	h, err := netns.GetFromPid(pid)
	if err != nil {
		return err
	}
	defer h.Close()
	pu := &testenv.PU{NS: h}
	c, err := pu.Dial(addr, 500*time.Millisecond)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(500 * time.Millisecond))
	if _, err := c.Write([]byte("x\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, "web-") {
		return fmt.Errorf("answer %q", line)
	}
	return nil
}

// TestDaemonDocker: the daemon polices the containers of a private Docker
// engine that runs in the node namespace (dockerd's bridge is the node
// bridge; its veths are in the node namespace with the daemon's; nothing is
// on the host).
func TestDaemonDocker(t *testing.T) {
	testenv.RequireRoot(t)
	sfx := testenv.Suffix()
	testenv.AssertNothingLeft(t, sfx)
	n := testenv.NewNode(t, testenv.NodeOptions{Suffix: sfx})
	// Containers get the upper half of the node subnet.
	b := n.Subnet.Addr().As4()
	b[3] = 128
	fixed := netip.PrefixFrom(netip.AddrFrom4(b), 25)
	start := time.Now()
	env := dockerenv.StartWith(t, dockerenv.Options{Netns: n.Name, Bridge: n.Bridge, FixedCIDR: fixed})
	t.Logf("engine ready in %v", time.Since(start).Round(time.Millisecond))

	// One container before the daemon: picked up by the resync.
	webPre := env.Run(t, dockerenv.Container{Name: "web-pre-" + sfx, Labels: map[string]string{"app": "web"}})

	d := testenv.NewDaemon(t, n, testenv.DaemonOptions{SecretsDir: testenv.PSKDir(t), Policy: dockerPolicy(n, false),
		Extra: fmt.Sprintf("docker: {enabled: true, host: %q}\n", env.Host)})
	d.Start()
	pre := waitPoliced(t, d, webPre, 0)
	if pre.Kind != "docker" || pre.Tags["app"] != "web" || pre.Tags["@sys:image"] != dockerenv.Image || pre.Bridge != n.Bridge ||
		len(pre.IPs) != 1 || !fixed.Contains(pre.IPs[0]) {
		t.Fatalf("resynced container's PU: %+v", pre)
	}

	// Containers started after the daemon.
	webPost := env.Run(t, dockerenv.Container{Name: "web-post-" + sfx, Labels: map[string]string{"app": "web"}})
	fe := env.Run(t, dockerenv.Container{Name: "fe-" + sfx, Labels: map[string]string{"app": "frontend"}})
	other := env.Run(t, dockerenv.Container{Name: "other-" + sfx, Labels: map[string]string{"app": "other"}})
	post := waitPoliced(t, d, webPost, 0)
	fePU := waitPoliced(t, d, fe, 0)
	otherPU := waitPoliced(t, d, other, 0)
	t.Logf("4 containers policed after %v", time.Since(start).Round(time.Millisecond))
	// dockerd runs in the node namespace: the containers' veths are there,
	// beside the daemon's, and none is on the host.
	for _, p := range []node.PUInfo{pre, post, fePU, otherPU} {
		if _, err := netlink.LinkByName(p.Veth); err == nil {
			t.Errorf("container %s: veth %s on the host", p.Name, p.Veth)
		}
		if _, err := n.Run(context.Background(), "ip", "link", "show", p.Veth, "master", n.Bridge); err != nil {
			t.Errorf("container %s: veth %s not on the node bridge: %v", p.Name, p.Veth, err)
		}
	}

	cases := func(t *testing.T, otherAllowed bool) {
		t.Helper()
		wantOther, wantOtherOut := 1, "refused"
		if otherAllowed {
			wantOther, wantOtherOut = 0, "ok web-pre-"+sfx
		}
		for _, c := range []struct {
			name     string
			from     string
			to       netip.Addr
			code     int
			out      string
			recorder string // whose enforcer decided: "ingress" (server) or "egress" (client)
			fromIP   netip.Addr
		}{
			{"frontend -> web (resynced)", fe, pre.IPs[0], 0, "ok web-pre-" + sfx, "ingress", fePU.IPs[0]},
			{"frontend -> web (started after)", fe, post.IPs[0], 0, "ok web-post-" + sfx, "ingress", fePU.IPs[0]},
			{"other -> web", other, pre.IPs[0], wantOther, wantOtherOut, "egress", otherPU.IPs[0]},
		} {
			code, out := probe(t, env, c.from, c.to)
			if code != c.code || out != c.out {
				t.Errorf("%s: exit %d %q, want %d %q", c.name, code, out, c.code, c.out)
				continue
			}
			r := d.WaitRecord(c.fromIP, netip.AddrPortFrom(c.to, 80), c.recorder)
			if (r.Action == "allow") != (c.code == 0) {
				t.Errorf("%s: %s record %+v", c.name, c.recorder, r)
			}
		}
	}
	t.Run("allowed and denied by labels", func(t *testing.T) { cases(t, false) })

	t.Run("container restart", func(t *testing.T) {
		env.Do(t, "restart", func(ctx context.Context, c *client.Client) error {
			timeout := 1
			_, err := c.ContainerRestart(ctx, webPost, client.ContainerRestartOptions{Timeout: &timeout})
			return err
		})
		again := waitPoliced(t, d, webPost, post.PID)
		if again.Veth == post.Veth {
			t.Errorf("restarted container kept veth %s", again.Veth)
		}
		if links, err := n.Run(context.Background(), "ip", "link", "show", post.Veth); err == nil {
			t.Errorf("old veth %s still there: %s", post.Veth, links)
		}
		post = again
		if code, out := probe(t, env, fe, post.IPs[0]); code != 0 {
			t.Errorf("frontend -> restarted web: exit %d %q", code, out)
		}
		if code, out := probe(t, env, other, post.IPs[0]); code != 1 {
			t.Errorf("other -> restarted web: exit %d %q, want refused", code, out)
		}
	})

	t.Run("policy edit takes effect within 1s", func(t *testing.T) {
		target := netip.AddrPortFrom(pre.IPs[0], 80)
		if err := dialFrom(otherPU.PID, target); err == nil {
			t.Fatal("other -> web allowed before the edit")
		}
		edit := time.Now()
		d.WritePolicy(dockerPolicy(n, true))
		for {
			err := dialFrom(otherPU.PID, target)
			if err == nil {
				t.Logf("other -> web allowed %v after the edit", time.Since(edit).Round(time.Millisecond))
				break
			}
			if time.Since(edit) > time.Second {
				t.Fatalf("other -> web still denied 1s after the edit: %v", err)
			}
			time.Sleep(20 * time.Millisecond)
		}
		cases(t, true)
	})

	t.Run("broken policy changes nothing", func(t *testing.T) {
		d.WritePolicy(brokenPolicy(n))
		var s node.Stats
		for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			var err error
			if s, err = d.Client().Stats(); err != nil {
				t.Fatal(err)
			}
			if s.Policy.LastError != "" || time.Now().After(deadline) {
				break
			}
		}
		want := d.PolicyPath + ":6:"
		if !strings.Contains(s.Policy.LastError, want) || s.Policy.Policies != 2 {
			t.Fatalf("stats.policy = %+v, want an error at %s and the 2 previous policies in force", s.Policy, want)
		}
		out := testenv.RunBin(t, "stats", "--socket", d.Socket)
		if !strings.Contains(out, "FAILED") || !strings.Contains(out, want) {
			t.Errorf("trireme stats:\n%s", out)
		}
		cases(t, true) // as before the broken edit
		// The broken policy would let web reach frontend: still denied.
		if code, out := probe(t, env, webPost, fePU.IPs[0]); code != 1 {
			t.Errorf("web -> frontend under the previous policy: exit %d %q, want refused", code, out)
		}
	})
	if s, err := d.Client().Stats(); err == nil {
		t.Logf("foreign frames dropped: %d", s.Counters["foreign-frames"])
	}
	t.Logf("docker test body done after %v", time.Since(start).Round(time.Millisecond))
}
