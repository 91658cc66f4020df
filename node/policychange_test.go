package node_test

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/trireme-go/trireme/testenv"
)

// policyChangeFor allows app=client to reach app=server on port.
func policyChangeFor(n *testenv.Node, port int) string {
	return fmt.Sprintf(`
targetNetworks: [%s]
policies:
  - name: client
    selector: app=client
    egress:
      - to: [{selector: app=server}]
        ports: [tcp/7000-7001]
        action: allow
  - name: server
    selector: app=server
    ingress:
      - from: [{selector: app=client}]
        ports: [tcp/%d]
        action: allow
`, n.Subnet, port)
}

// waitDenied polls new connections from pu to addr until one is refused,
// within limit; it returns how long that took.
func waitDenied(t *testing.T, pu *testenv.PU, addr netip.AddrPort, since time.Time, limit time.Duration) time.Duration {
	t.Helper()
	for {
		err := pu.Echo(addr, "new", 500*time.Millisecond)
		if err != nil {
			if !isRefused(err) {
				t.Fatalf("new connection after the edit: %v, want a RST", err)
			}
			return time.Since(since)
		}
		if time.Since(since) > limit {
			t.Fatalf("new connections still allowed %v after the policy edit (requirement: 1s)", limit)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestPolicyChangeEstablished: a policy edit that denies an established
// connection. With onPolicyChange=keep the connection keeps working; with
// reset both ends get a RST at its next packet. In both modes new
// connections are denied within a second of the edit.
func TestPolicyChangeEstablished(t *testing.T) {
	for _, mode := range []string{"keep", "reset"} {
		t.Run(mode, func(t *testing.T) { testPolicyChange(t, mode) })
	}
}

func testPolicyChange(t *testing.T, mode string) {
	testenv.RequireRoot(t)
	sfx := testenv.Suffix()
	testenv.AssertNothingLeft(t, sfx)
	n := testenv.NewNode(t, testenv.NodeOptions{PUs: 2, Suffix: sfx})
	cl, srv := n.PUs[0], n.PUs[1]
	d := testenv.NewDaemon(t, n, testenv.DaemonOptions{SecretsDir: testenv.PSKDir(t), Policy: policyChangeFor(n, 7000), OnPolicyChange: mode})
	d.Start()
	d.Attach(cl, "app=client")
	d.Attach(srv, "app=server")

	// The server echoes; the first connection's server side reports how it
	// ended.
	ln := srv.Listen(7000)
	addr := netip.MustParseAddrPort(ln.Addr().String())
	first := make(chan error, 1)
	go func() {
		for i := 0; ; i++ {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func(i int) {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(time.Minute))
				_, err := io.Copy(c, c)
				if i == 0 {
					first <- err
				}
			}(i)
		}
	}()

	conn, err := cl.Dial(addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	roundTrip := func(msg string) error { return testenv.EchoConn(conn, msg, 2*time.Second) }
	if err := roundTrip("before"); err != nil {
		t.Fatal(err)
	}

	// The server now only accepts port 7001.
	edit := time.Now()
	d.WritePolicy(policyChangeFor(n, 7001))
	took := waitDenied(t, cl, addr, edit, time.Second)
	t.Logf("%s: new connections denied %v after the edit", mode, took.Round(time.Millisecond))

	switch mode {
	case "keep":
		// Keep using it for a while: it is never re-checked.
		for i := 0; i < 10; i++ {
			if err := roundTrip(fmt.Sprintf("after %d", i)); err != nil {
				t.Fatalf("established connection broke under onPolicyChange=keep: %v", err)
			}
			time.Sleep(100 * time.Millisecond)
		}
		select {
		case err := <-first:
			t.Fatalf("server side of the kept connection ended: %v", err)
		default:
		}
	case "reset":
		// The revocation is asynchronous: the next packet after it is
		// answered with a RST to both ends.
		var cerr error
		for deadline := time.Now().Add(2 * time.Second); ; {
			if cerr = roundTrip("after"); cerr != nil || time.Now().After(deadline) {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if !errors.Is(cerr, syscall.ECONNRESET) {
			t.Fatalf("client side of the denied connection: %v, want connection reset", cerr)
		}
		t.Logf("reset: client reset %v after the edit", time.Since(edit).Round(time.Millisecond))
		select {
		case err := <-first:
			if !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("server side of the denied connection ended with %v, want connection reset", err)
			}
		case <-time.After(2 * time.Second):
			t.Fatal("server side of the denied connection still open 2s after the client's reset")
		}
		s, err := d.Client().Stats()
		if err != nil || s.Counters["resets"] == 0 {
			t.Errorf("stats: resets %d (%v), want the reset counted", s.Counters["resets"], err)
		}
	}
	// Either way, the port the new policy allows works for new connections.
	ln2 := srv.Listen(7001)
	go func() {
		for {
			c, err := ln2.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	if err := cl.Echo(netip.MustParseAddrPort(ln2.Addr().String()), "new port", 2*time.Second); err != nil {
		t.Errorf("client -> server:7001 under the new policy: %v", err)
	}
}
