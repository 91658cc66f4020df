package node_test

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/trireme-go/trireme/dataplane"
	"github.com/trireme-go/trireme/testenv"
)

const endLogPolicy = `
targetNetworks: [%s]
policies:
  - name: frontend
    selector: app=frontend
    egress:
      - to: [{selector: app=web}]
        ports: [tcp/7000]
        action: allow
  - name: web
    selector: app=web
    ingress:
      - from: [{selector: app=frontend}]
        ports: [tcp/7000]
        action: allow
`

// newFrontWeb starts a daemon on a node with two PUs under endLogPolicy,
// the frontend and the web, and a listener of the web on tcp/7000 (the
// port the policy allows), closed when the test ends.
func newFrontWeb(t *testing.T) (d *testenv.Daemon, front, web *testenv.PU, ln net.Listener) {
	t.Helper()
	testenv.RequireRoot(t)
	n := testenv.NewNode(t, testenv.NodeOptions{PUs: 2})
	d = testenv.NewDaemon(t, n, testenv.DaemonOptions{SecretsDir: testenv.PSKDir(t), Policy: fmt.Sprintf(endLogPolicy, n.Subnet)})
	d.Start()
	front, web = n.PUs[0], n.PUs[1]
	d.Attach(front, "app=frontend")
	d.Attach(web, "app=web")
	ln = web.Listen(7000)
	t.Cleanup(func() { ln.Close() })
	return d, front, web, ln
}

// TestEndLogTimeWaitReuse: the server closes first (its side goes to
// TIME_WAIT) and the client connects again from the same port at once,
// several times: the FINs pass in the kernel and are logged, and each new
// connection on the 4-tuple is decided again (its SYN is steered) and
// works. Every earlier connection ends in the server's records as closed
// or replaced by its successor (never left to expire), and the enforcers
// judged the logged FINs.
func TestEndLogTimeWaitReuse(t *testing.T) {
	d, front, web, ln := newFrontWeb(t)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte("bye"))
			c.Close() // the server's FIN first: TIME_WAIT on the server
		}
	}()
	srv := netip.AddrPortFrom(web.Addr, 7000)
	const conns = 5
	const port = 41321
	for i := range conns {
		c, err := front.DialFrom(port, srv, 5*time.Second)
		if err != nil {
			t.Fatalf("connection %d from port %d: %v", i, port, err)
		}
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		got, err := io.ReadAll(c)
		c.Close()
		if string(got) != "bye" || err != nil {
			t.Fatalf("connection %d: read %q, %v", i, got, err)
		}
		// The client's last ACK, then connect again at once.
		time.Sleep(20 * time.Millisecond)
	}
	client := netip.AddrPortFrom(front.Addr, port)
	ends := func() (closed, replaced, other int) {
		for _, r := range d.Records() {
			if r.Client != client || r.Direction != "ingress" {
				continue
			}
			switch r.End {
			case dataplane.EndClosed:
				closed++
			case dataplane.EndReplaced:
				replaced++
			case dataplane.EndEstablished:
			default:
				other++
			}
		}
		return
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		closed, replaced, other := ends()
		if other != 0 {
			t.Fatalf("server's records of %s: %d closed, %d replaced, %d other ends:\n%+v", client, closed, replaced, other, d.Records())
		}
		if closed+replaced == conns {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("server's records of %s: %d closed, %d replaced, want %d ends:\n%+v", client, closed, replaced, conns, d.Records())
		}
		time.Sleep(200 * time.Millisecond)
	}
	st, err := d.Client().Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Counters["logged-ends"] == 0 {
		t.Errorf("no logged FIN was judged (end-log messages %d)", st.Counters["end-log-messages"])
	}
}
