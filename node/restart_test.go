package node_test

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/trireme-go/trireme/netsetup/tap"
	"github.com/trireme-go/trireme/node"
	"github.com/trireme-go/trireme/testenv"
)

// TestRestartThousandPUs: the daemon restarts with 1,000 attached PUs (it
// could not with 5) and polices them all again: on a sample of PUs spread
// over the node, connections established before the restart carry on, a
// new allowed connection works and a new denied one is refused; while it is
// down no new connection gets through. The restart time is logged.
func TestRestartThousandPUs(t *testing.T) {
	const nPUs = 1000
	testenv.RequireRoot(t)
	sfx := testenv.Suffix()
	testenv.AssertNothingLeft(t, sfx)
	start := time.Now()
	n := testenv.NewNode(t, testenv.NodeOptions{PUs: nPUs, Suffix: sfx, Subnet: netip.MustParsePrefix("10.77.0.0/16")})
	t.Logf("%d PU namespaces: %v", nPUs, time.Since(start))
	// Even PUs are servers, odd ones clients; servers take clients on
	// tcp/7000 only.
	policy := fmt.Sprintf(`
targetNetworks: [%s]
policies:
  - name: servers
    selector: role=server
    ingress:
      - from: [{selector: role=client}]
        ports: [tcp/7000]
        action: allow
  - name: clients
    selector: role=client
    egress:
      - to: [{selector: role=server}]
        action: allow
`, n.Subnet)
	d := testenv.NewDaemon(t, n, testenv.DaemonOptions{SecretsDir: testenv.PSKDir(t), Policy: policy})
	d.Start()
	start = time.Now()
	attachAll(t, d, n.PUs, func(i int) string {
		if i%2 == 0 {
			return "role=server"
		}
		return "role=client"
	})
	t.Logf("%d PUs attached through the API: %v", nPUs, time.Since(start))

	// The sample: 10 client/server pairs spread over the node.
	type pair struct {
		cl, srv         *testenv.PU
		allowed, denied netip.AddrPort
		conn            net.Conn
	}
	var pairs []*pair
	for i := 0; i < nPUs; i += nPUs / 10 {
		p := &pair{cl: n.PUs[i+1], srv: n.PUs[(i+nPUs/2)%nPUs]}
		p.allowed, p.denied = p.srv.ServeEcho(7000), p.srv.ServeEcho(7001)
		pairs = append(pairs, p)
	}
	// Allowed connections get 5 s: right after 1,000 interfaces came up,
	// the bridge floods their IPv6 chatter (DAD, MLD reports, router
	// solicitations: no multicast querier, so to all 1,000 ports) and a
	// first ARP request or SYN can be lost in it; the kernel retries
	// (ARP after 1 s, the SYN after 1 s then 2 s). Seen on a loaded
	// machine: a first dial timing out after 2 s, the next one connecting
	// in 1 ms.
	const allowedTimeout = 5 * time.Second
	for _, p := range pairs {
		c, err := dialResolving(t, p.cl, p.allowed, allowedTimeout)
		if err != nil {
			t.Fatalf("%s -> %s before the restart: %v", p.cl.Name, p.srv.Name, err)
		}
		p.conn = c
		t.Cleanup(func() { c.Close() })
		if err := testenv.EchoConn(c, "before", 2*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	d.WaitKernelAuthorized(t, uint64(2*len(pairs)))

	d.Stop(syscall.SIGTERM)
	if err := connect(pairs[0].cl, pairs[0].allowed); err == nil {
		t.Fatal("a new connection got through while the daemon was down")
	}
	start = time.Now()
	d.Start()
	restart := time.Since(start)
	pus, err := d.Client().ListPUs()
	if err != nil || len(pus) != nPUs {
		t.Fatalf("after the restart: %d PUs (%v), want %d", len(pus), err, nPUs)
	}
	t.Logf("restart with %d PUs: %v until the control API answered with every PU restored", nPUs, restart)
	for _, l := range strings.Split(d.Logs(), "\n") {
		if strings.Contains(l, "restored the PUs") {
			t.Log(l)
		}
	}
	for _, p := range pairs {
		if err := testenv.EchoConn(p.conn, "after", allowedTimeout); err != nil {
			t.Errorf("%s -> %s: established connection lost over the restart: %v", p.cl.Name, p.srv.Name, err)
		}
		c, err := dialResolving(t, p.cl, p.allowed, allowedTimeout)
		if err == nil {
			err = testenv.EchoConn(c, "ping", allowedTimeout)
			c.Close()
		}
		if err != nil {
			t.Errorf("%s -> %s: new allowed connection after the restart: %v", p.cl.Name, p.allowed, err)
		}
		// Denied: never connected. (Refused at once when the enforcer
		// answers in time; this test runs 1,000 PUs on a loaded machine,
		// where the answer may come after the client gave up: prompt
		// refusals are TestDaemonOneNode's.)
		if err := connect(p.cl, p.denied); err == nil {
			t.Errorf("%s -> %s: a new denied connection got through after the restart", p.cl.Name, p.denied)
		}
		// A server does not reach another server: no egress rule.
		if err := connect(p.srv, pairs[0].allowed); err == nil && p.srv != pairs[0].srv {
			t.Errorf("%s -> %s: server to server got through after the restart", p.srv.Name, pairs[0].allowed)
		}
	}
	s, err := d.Client().Stats()
	if err != nil || s.Counters["kernel-errors"] != 0 {
		t.Errorf("kernel errors after the restart: %v %v", s.Counters, err)
	}
}

// attachAll attaches PUs through the control API, a few at a time, with
// the labels label(i) gives.
func attachAll(t *testing.T, d *testenv.Daemon, pus []*testenv.PU, label func(i int) string) {
	t.Helper()
	c := d.Client()
	var wg sync.WaitGroup
	errs := make(chan error, len(pus))
	next := make(chan int)
	for range 4 {
		wg.Go(func() {
			for i := range next {
				k, v, _ := strings.Cut(label(i), "=")
				if _, err := c.AttachPU(node.AttachRequest{NetNS: pus[i].Name, Labels: map[string]string{k: v}}); err != nil {
					errs <- fmt.Errorf("attach %s: %w", pus[i].Name, err)
				}
			}
		})
	}
	for i := range pus {
		next <- i
	}
	close(next)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// TestDetachDeletesTaps: a detached PU's TAPs go (in the background), and a
// PU attached again at once (before they went) is policed through them.
func TestDetachDeletesTaps(t *testing.T) {
	testenv.RequireRoot(t)
	n := testenv.NewNode(t, testenv.NodeOptions{PUs: 3})
	cl, srv, other := n.PUs[0], n.PUs[1], n.PUs[2]
	policy := fmt.Sprintf(`
targetNetworks: [%s]
policies:
  - name: srv
    selector: app=srv
    ingress: [{from: [{selector: app=cl}], action: allow}]
  - name: cl
    selector: app=cl
    egress: [{to: [{selector: app=srv}], action: allow}]
`, n.Subnet)
	d := testenv.NewDaemon(t, n, testenv.DaemonOptions{SecretsDir: testenv.PSKDir(t), Policy: policy})
	d.Start()
	d.Attach(cl, "app=cl")
	d.Attach(srv, "app=srv")
	d.Attach(other, "app=other")
	addr := srv.ServeEcho(7000)
	taps := func() []string {
		var out []string
		n.MustDo(func() error {
			ifs, err := net.Interfaces()
			for _, i := range ifs {
				if strings.HasPrefix(i.Name, "tri") || strings.HasPrefix(i.Name, "tro") {
					out = append(out, i.Name)
				}
			}
			return err
		})
		return out
	}
	if got := taps(); len(got) != 6 {
		t.Fatalf("TAPs with 3 PUs: %v", got)
	}
	// Detach and attach again at once: the TAPs are taken back.
	for range 3 {
		if err := d.Client().DetachPU("netns-" + cl.Name); err != nil {
			t.Fatal(err)
		}
		d.Attach(cl, "app=cl")
	}
	if err := connect(cl, addr); err != nil {
		t.Fatalf("cl -> srv after detach/attach: %v", err)
	}
	if err := connect(other, addr); !isRefused(err) {
		t.Fatalf("other -> srv: %v, want refused", err)
	}
	if err := d.Client().DetachPU("netns-" + other.Name); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(taps()) != 4 {
		if time.Now().After(deadline) {
			t.Fatalf("TAPs 5 s after detaching one PU of 3: %v", taps())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := connect(cl, addr); err != nil {
		t.Fatalf("cl -> srv after the other's TAPs went: %v", err)
	}
	// A PU's state file goes with it.
	ents, err := os.ReadDir(d.Dir + "/state/pus")
	if err != nil || len(ents) != 2 {
		t.Errorf("state files of 2 PUs: %v %v", ents, err)
	}
}

// TestRestoreFailureStaysClosed: a PU the restarted daemon cannot restore
// (here another process holds its TAP open, so the daemon cannot) is not
// left unpoliced: it stays closed (not even an external host its policy
// allows is reached, as an unpoliced PU would), the other PUs work, and the
// next restart restores it.
func TestRestoreFailureStaysClosed(t *testing.T) {
	testenv.RequireRoot(t)
	n := testenv.NewNode(t, testenv.NodeOptions{PUs: 4})
	cl, srv, stuck, ext := n.PUs[0], n.PUs[1], n.PUs[2], n.PUs[3]
	policy := fmt.Sprintf(`
targetNetworks: [%s, %s, %s]
policies:
  - name: all
    selector: "*"
    ingress: [{action: allow}]
    egress: [{action: allow}]
`, hostPrefix(cl.Addr), hostPrefix(srv.Addr), hostPrefix(stuck.Addr))
	d := testenv.NewDaemon(t, n, testenv.DaemonOptions{SecretsDir: testenv.PSKDir(t), Policy: policy})
	d.Start()
	for _, p := range []*testenv.PU{cl, srv, stuck} {
		d.Attach(p, "app=x")
	}
	addr, outside := srv.ServeEcho(7000), ext.ServeEcho(7000) // ext: not policed, outside the target networks
	for _, to := range []netip.AddrPort{addr, outside} {
		if err := connect(stuck, to); err != nil {
			t.Fatalf("before the restart, to %v: %v", to, err)
		}
	}
	d.Stop(syscall.SIGTERM)
	// Hold the stuck PU's TAP: the restarted daemon cannot open it.
	in, _ := node.TapNames("netns-" + stuck.Name)
	var held *tap.Tap
	n.MustDo(func() error {
		var err error
		held, err = tap.Open(in)
		return err
	})
	d.Start()
	if err := connect(cl, addr); err != nil {
		t.Errorf("another PU after the restart: %v", err)
	}
	for _, to := range []netip.AddrPort{outside, addr} {
		if err := connect(stuck, to); err == nil {
			t.Fatalf("the PU that could not be restored reached %v: it is unpoliced", to)
		}
	}
	if !strings.Contains(d.Logs(), "it stays closed") {
		t.Errorf("the daemon did not report the PU it could not restore:\n%s", d.Logs())
	}
	held.Close()
	d.Stop(syscall.SIGTERM)
	d.Start()
	if err := connect(stuck, outside); err != nil {
		t.Errorf("after the next restart: %v", err)
	}
	pus, err := d.Client().ListPUs()
	if err != nil || len(pus) != 3 {
		t.Errorf("PUs after the next restart: %d (%v)", len(pus), err)
	}
}

// dialResolving dials addr from pu, again (up to three times) when the
// kernel could not resolve the peer's address ("no route to host": its ARP
// requests went unanswered). With 1,000 interfaces just created on one
// bridge, broadcasts are delivered to every port and some are lost on a
// loaded machine; that is the node's L2, not the enforcer (which never sees
// ARP), and each retry is logged. Any other error is returned at once.
func dialResolving(t *testing.T, pu *testenv.PU, addr netip.AddrPort, timeout time.Duration) (net.Conn, error) {
	t.Helper()
	for i := 0; ; i++ {
		c, err := pu.Dial(addr, timeout)
		if err == nil || !errors.Is(err, syscall.EHOSTUNREACH) || i == 2 {
			return c, err
		}
		t.Logf("%s -> %s: %v (ARP unanswered): dialling again", pu.Name, addr, err)
	}
}
