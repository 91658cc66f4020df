package node_test

import (
	"fmt"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/trireme-go/trireme/testenv"
)

// TestIdleConnectionOutlivesKernelEntry: a TCP connection idle for longer
// than its kernel entries live (kernelTCPTimeout, 2 s here instead of 5
// min) keeps working: its next packets cross the daemon, which still
// tracks it and authorizes it again. And so it does across a restart of
// the daemon while it is idle (stopped, or killed), although the kernel no
// longer holds it: the restarted daemon takes it back from what the
// previous run saved. A segment of a flow never authorized is still
// dropped after the restart (fail closed).
func TestIdleConnectionOutlivesKernelEntry(t *testing.T) {
	testenv.RequireRoot(t)
	sfx := testenv.Suffix()
	testenv.AssertNothingLeft(t, sfx)
	n := testenv.NewNode(t, testenv.NodeOptions{PUs: 2, Suffix: sfx})
	cl, srv := n.PUs[0], n.PUs[1]
	policy := fmt.Sprintf(`
targetNetworks: [%s]
policies:
  - name: all
    selector: "*"
    ingress: [{action: allow}]
    egress: [{action: allow}]
`, n.Subnet)
	const timeout = 2 * time.Second
	d := testenv.NewDaemon(t, n, testenv.DaemonOptions{SecretsDir: testenv.PSKDir(t), Policy: policy,
		Extra: fmt.Sprintf("kernelTCPTimeout: %v\n", timeout)})
	d.Start()
	d.Attach(cl, "app=client")
	d.Attach(srv, "app=server")
	addr := srv.ServeEcho(7000)

	conn, err := cl.Dial(addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	roundTrip := func(msg string) error { return testenv.EchoConn(conn, msg, 5*time.Second) }
	if err := roundTrip("before"); err != nil {
		t.Fatal(err)
	}
	d.WaitKernelAuthorized(t, 2)
	kernelAuthorized := func(t *testing.T) uint64 {
		t.Helper()
		s, err := d.Client().Stats()
		if err != nil {
			t.Fatal(err)
		}
		return s.Counters["kernel-authorized"]
	}
	// waitAuthorized waits until the daemon has put n flows in the kernel
	// since it started (the kernel loop's batch lands a moment after the
	// packet that asked for it).
	waitAuthorized := func(t *testing.T, n uint64) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); kernelAuthorized(t) < n; time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("the daemon authorized %d flows in the kernel, want %d", kernelAuthorized(t), n)
			}
		}
	}
	// idle lets the connection's kernel entries expire (each lives
	// timeout after its last authorization).
	idle := func() { time.Sleep(timeout + time.Second) }

	t.Run("idle", func(t *testing.T) {
		before := kernelAuthorized(t)
		idle()
		if err := roundTrip("after its kernel entries expired"); err != nil {
			t.Fatalf("idle connection: %v", err)
		}
		// Its packets crossed the daemon, which puts it back in the
		// kernel (both PUs' sides).
		waitAuthorized(t, before+2)
	})

	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		t.Run("restart-"+sig.String(), func(t *testing.T) {
			idle()
			d.Stop(sig)
			logged := strings.Count(d.Logs(), "restored established flows the kernel no longer held")
			d.Start()
			if err := roundTrip("after restart"); err != nil {
				t.Fatalf("idle connection across a restart (%v): %v", sig, err)
			}
			// Both PUs' sides came from the saved flows, not from the
			// kernel (their entries had expired).
			if got := strings.Count(d.Logs(), "restored established flows the kernel no longer held") - logged; got != 2 {
				t.Errorf("%d PUs restored flows the kernel no longer held, want 2", got)
			}
			waitAuthorized(t, 2) // the restarted daemon's count
		})
	}

	// Fail closed: a segment of a flow nobody authorized (the client's
	// address, another port), mid-stream, reaches nothing.
	t.Run("unknown-flow", func(t *testing.T) {
		victim := srv.Raw()
		from := netip.AddrPortFrom(cl.Addr, 40999)
		cl.Raw().MustSend(testenv.TCPSegment(cl.MACOf(), srv.MACOf(), from, addr, "PA", 1000, 2000, []byte("mid-stream")))
		seen := victim.Capture(500*time.Millisecond, func(p gopacket.Packet) bool {
			tcp, _ := p.Layer(layers.LayerTypeTCP).(*layers.TCP)
			return tcp != nil && tcp.SrcPort == layers.TCPPort(from.Port())
		})
		if len(seen) != 0 {
			t.Errorf("a mid-stream segment of an unknown flow reached the server after the restart")
		}
		if err := roundTrip("still"); err != nil {
			t.Fatalf("idle connection: %v", err)
		}
	})
}
