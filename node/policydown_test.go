package node_test

import (
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/trireme-go/trireme/testenv"
)

// TestPolicyChangedWhileDown: with onPolicyChange: reset, a policy
// changed while the daemon was stopped is applied to the connections it
// restores, as a change while it ran would have been. Two connections by
// identity (frontend to web, ports 7000 and 7001); while the daemon is
// down the policy drops port 7001. After the restart the connection to
// 7001 is reset and the one to 7000 carries on: it is judged by the peer's
// identity, which the daemon saved with it (judged by addresses alone, as
// before, the policy, which allows no network, would reset it too). A
// restart without a change resets nothing.
func TestPolicyChangedWhileDown(t *testing.T) {
	testenv.RequireRoot(t)
	n := testenv.NewNode(t, testenv.NodeOptions{PUs: 2})
	policy := func(ports string) string {
		return fmt.Sprintf(`
targetNetworks: [%s]
policies:
  - name: frontend
    selector: app=frontend
    egress: [{to: [{selector: app=web}], ports: [%s], action: allow}]
  - name: web
    selector: app=web
    ingress: [{from: [{selector: app=frontend}], ports: [%s], action: allow}]
`, n.Subnet, ports, ports)
	}
	d := testenv.NewDaemon(t, n, testenv.DaemonOptions{SecretsDir: testenv.PSKDir(t), Policy: policy("tcp/7000, tcp/7001"), OnPolicyChange: "reset"})
	d.Start()
	front, web := n.PUs[0], n.PUs[1]
	d.Attach(front, "app=frontend")
	d.Attach(web, "app=web")
	kept, dropped := web.ServeEcho(7000), web.ServeEcho(7001)
	c1, err := front.Dial(kept, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Close()
	c2, err := front.Dial(dropped, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if err := testenv.EchoConn(c1, "one", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := testenv.EchoConn(c2, "two", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	d.WaitKernelAuthorized(t, 4)

	const reset = "the policy changed while the daemon was down"
	// Unchanged policy: both carry on.
	d.Stop(syscall.SIGTERM)
	d.Start()
	if err := testenv.EchoConn(c1, "one again", 5*time.Second); err != nil {
		t.Fatalf("7000 after a restart without a change: %v", err)
	}
	if err := testenv.EchoConn(c2, "two again", 5*time.Second); err != nil {
		t.Fatalf("7001 after a restart without a change: %v", err)
	}
	if strings.Contains(d.Logs(), reset) {
		t.Fatal("flows judged again without a policy change")
	}

	// Port 7001 dropped while the daemon is down.
	d.Stop(syscall.SIGTERM)
	d.WritePolicy(policy("tcp/7000"))
	d.Start()
	if err := testenv.EchoConn(c2, "two after the change", 5*time.Second); err == nil {
		t.Fatal("the connection to 7001 carries on after a restart with a policy that no longer allows it")
	}
	if err := testenv.EchoConn(c1, "one after the change", 5*time.Second); err != nil {
		t.Fatalf("the connection to 7000, still allowed by identity, after the restart: %v", err)
	}
	if !strings.Contains(d.Logs(), reset) {
		t.Errorf("no log line %q", reset)
	}
}
