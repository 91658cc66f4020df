package node_test

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/trireme-go/trireme/node"
	"github.com/trireme-go/trireme/testenv"
)

// The daemon tests run the real binary (testenv.Daemon), as an operator
// would, inside node namespaces built by testenv, and drive real TCP
// connections between PU namespaces through it.

// connect opens a TCP connection from pu to addr, exchanges one message and
// reports how it went: nil, a refusal (RST), or a timeout.
func connect(pu *testenv.PU, addr netip.AddrPort) error {
	return pu.Echo(addr, "ping", 2*time.Second)
}

func isRefused(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET)
}

func hostPrefix(a netip.Addr) string { return netip.PrefixFrom(a, a.BitLen()).String() }

// TestDaemonOneNode: frontend, web and db PUs under an enforcing daemon, a
// host inside the target networks without an enforcer, and an external
// host, with real TCP connections between them.
func TestDaemonOneNode(t *testing.T) {
	for _, mode := range []string{"psk", "pki"} {
		t.Run(mode, func(t *testing.T) { testOneNode(t, mode == "pki") })
	}
}

func testOneNode(t *testing.T, pki bool) {
	testenv.RequireRoot(t)
	sfx := testenv.Suffix()
	testenv.AssertNothingLeft(t, sfx)
	n := testenv.NewNode(t, testenv.NodeOptions{PUs: 5, Suffix: sfx})
	fe, web, db, rogue, ext := n.PUs[0], n.PUs[1], n.PUs[2], n.PUs[3], n.PUs[4]

	policy := fmt.Sprintf(`
targetNetworks: [%s, %s, %s, %s]
policies:
  - name: frontend
    selector: app=frontend
    egress:
      - to: [{selector: app=web}]
        ports: [tcp/8080]
        action: allow
      - to: [{selector: app=db}]
        ports: [tcp/5432]
        action: allow
      - to: [{cidr: %s}]
        ports: [tcp/9000]
        action: allow
  - name: web
    selector: app=web
    ingress:
      - from: [{selector: app=frontend}, {selector: app=db}]
        ports: [tcp/8080]
        action: allow
      - from: [{cidr: %s}]
        ports: [tcp/8080]
        action: allow
    egress:
      - to: [{selector: app=db}]
        ports: [tcp/5432]
        action: allow
  - name: db
    selector: app=db
    ingress:
      - from: [{selector: app=web}]
        ports: [tcp/5432]
        action: allow
`, hostPrefix(fe.Addr), hostPrefix(web.Addr), hostPrefix(db.Addr), hostPrefix(rogue.Addr), hostPrefix(ext.Addr), hostPrefix(ext.Addr))

	secrets := testenv.PSKDir(t)
	if pki {
		secrets = testenv.CADir(t)
	}
	d := testenv.NewDaemon(t, n, testenv.DaemonOptions{PKI: pki, SecretsDir: secrets, Policy: policy})
	d.Start()
	d.Attach(fe, "app=frontend")
	d.Attach(web, "app=web")
	d.Attach(db, "app=db")

	webSrv := web.ServeEcho(8080)
	dbSrv := db.ServeEcho(5432)
	extSrv := ext.ServeEcho(9000)
	extOther := ext.ServeEcho(9001)

	t.Run("allowed", func(t *testing.T) {
		if err := connect(fe, webSrv); err != nil {
			t.Fatalf("frontend -> web: %v", err)
		}
		if err := connect(web, dbSrv); err != nil {
			t.Fatalf("web -> db: %v", err)
		}
		if r := d.WaitRecord(fe.Addr, webSrv, "ingress"); r.Action != "allow" {
			t.Errorf("web's record of frontend -> web: %+v", r)
		}
	})
	t.Run("denied by the server's ingress", func(t *testing.T) {
		err := connect(fe, dbSrv)
		if !isRefused(err) {
			t.Fatalf("frontend -> db: %v, want a prompt RST (connection refused)", err)
		}
		if r := d.WaitRecord(fe.Addr, dbSrv, "ingress"); r.Action == "allow" || r.Reason == "none" {
			t.Errorf("db's record of frontend -> db: %+v", r)
		}
	})
	t.Run("denied by the client's egress", func(t *testing.T) {
		// web's ingress allows db, but db has no egress rule to web.
		err := connect(db, webSrv)
		if !isRefused(err) {
			t.Fatalf("db -> web: %v, want a prompt RST", err)
		}
		if r := d.WaitRecord(db.Addr, webSrv, "egress"); r.Local.ID == "" || r.Action == "allow" {
			t.Errorf("db's record of db -> web: %+v", r)
		}
	})
	t.Run("target network peer without enforcer", func(t *testing.T) {
		if err := connect(rogue, webSrv); err == nil {
			t.Fatal("a host inside the target networks connected without a token")
		}
		// The record is web's: ingress from rogue.
		if r := d.WaitRecord(rogue.Addr, webSrv, "ingress"); r.Reason != "missing-token" || r.Action == "allow" {
			t.Fatalf("web's record of rogue -> web: %+v, want a denial for missing-token", r)
		}
	})
	t.Run("external peers under ACLs", func(t *testing.T) {
		if err := connect(ext, webSrv); err != nil {
			t.Errorf("external -> web (network ACL allows): %v", err)
		}
		if err := connect(ext, dbSrv); err == nil {
			t.Errorf("external -> db connected; no rule allows it")
		}
		if err := connect(fe, extSrv); err != nil {
			t.Errorf("frontend -> external:9000 (application ACL allows): %v", err)
		}
		if err := connect(fe, extOther); !isRefused(err) {
			t.Errorf("frontend -> external:9001: %v, want a prompt RST", err)
		}
	})
	t.Run("excluded at runtime", func(t *testing.T) {
		p := netip.PrefixFrom(ext.Addr, 32)
		testenv.RunBin(t, "exclude", "add", ext.Addr.String(), "--socket", d.Socket)
		if err := connect(ext, dbSrv); err != nil {
			t.Errorf("external -> db while excluded: %v", err)
		}
		s, err := d.Client().Stats()
		if err != nil || len(s.Excluded) != 1 || s.Excluded[0] != p {
			t.Errorf("stats.excluded = %v (%v), want [%v]", s.Excluded, err, p)
		}
		testenv.RunBin(t, "exclude", "rm", ext.Addr.String(), "--socket", d.Socket)
		if err := connect(ext, dbSrv); err == nil {
			t.Errorf("external -> db connected after the exclusion was removed")
		}
	})
	t.Run("pu ls and stats", func(t *testing.T) {
		out := testenv.RunBin(t, "pu", "ls", "--socket", d.Socket)
		for _, want := range []string{"app=frontend", "app=web", "app=db"} {
			if !strings.Contains(out, want) {
				t.Errorf("pu ls lacks %q:\n%s", want, out)
			}
		}
		s, err := d.Client().Stats()
		if err != nil {
			t.Fatal(err)
		}
		if s.PUs != 3 || s.Counters["packets"] == 0 || s.Drops["missing-token"] == 0 {
			t.Errorf("stats: %+v", s)
		}
		m, err := d.Client().Metrics()
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"trireme_pus 3\n", `trireme_drops_total{reason="missing-token"}`, `trireme_dataplane_total{kind="kernel-authorized"}`} {
			if !strings.Contains(m, want) {
				t.Errorf("metrics lack %q", want)
			}
		}
	})
}

// TestDaemonFailClosedAndRestart: while the daemon is down, no new
// connection of a policed PU gets through but established ones continue; a
// restarted daemon picks its PUs and their flows up again.
func TestDaemonFailClosedAndRestart(t *testing.T) {
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
	d := testenv.NewDaemon(t, n, testenv.DaemonOptions{SecretsDir: testenv.PSKDir(t), Policy: policy})
	d.Start()
	d.Attach(cl, "app=client")
	d.Attach(srv, "app=server")
	addr := srv.ServeEcho(7000)

	// An established connection, used across the outages.
	conn, err := cl.Dial(addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	roundTrip := func(msg string) error { return testenv.EchoConn(conn, msg, 2*time.Second) }
	if err := roundTrip("before"); err != nil {
		t.Fatal(err)
	}
	// Established means in the kernel: wait for both PUs' authorizations
	// to land before taking the daemon away.
	d.WaitKernelAuthorized(t, 2)

	for _, sig := range []syscall.Signal{syscall.SIGKILL, syscall.SIGTERM} {
		t.Run(sig.String(), func(t *testing.T) {
			d.Stop(sig)
			if err := connect(cl, addr); err == nil {
				t.Fatal("a new connection got through while the daemon was down (fail open)")
			}
			if err := roundTrip("while down"); err != nil {
				t.Fatalf("established connection broke while the daemon was down: %v", err)
			}
			d.Start()
			pus, err := d.Client().ListPUs()
			if err != nil || len(pus) != 2 {
				t.Fatalf("after restart: PUs %v (%v), want the 2 of the previous run", pus, err)
			}
			if err := connect(cl, addr); err != nil {
				t.Fatalf("new connection after restart: %v", err)
			}
			if err := roundTrip("after restart"); err != nil {
				t.Fatalf("established connection after restart: %v", err)
			}
			s, err := d.Client().Stats()
			if err != nil || s.Flows == 0 {
				t.Errorf("restarted daemon tracks no flows: %+v %v", s, err)
			}
		})
	}
}

// TestDaemonTwoNodes: PUs on two nodes, each with its own daemon, sharing a
// PSK; traffic crosses the underlay with tokens.
func TestDaemonTwoNodes(t *testing.T) {
	testenv.RequireRoot(t)
	c := testenv.NewCluster(t, 2, 1) // asserts itself that nothing is left
	a, b := c.Nodes[0].PUs[0], c.Nodes[1].PUs[0]
	policy := `
targetNetworks: [10.80.0.0/15]
policies:
  - name: web
    selector: app=web
    ingress:
      - from: [{selector: app=frontend}]
        ports: [tcp/8080]
        action: allow
  - name: frontend
    selector: app=frontend
    egress:
      - to: [{selector: app=web}]
        ports: [tcp/8080]
        action: allow
`
	psk := testenv.PSKDir(t)
	da := testenv.NewDaemon(t, c.Nodes[0], testenv.DaemonOptions{SecretsDir: psk, Policy: policy})
	db := testenv.NewDaemon(t, c.Nodes[1], testenv.DaemonOptions{SecretsDir: psk, Policy: policy})
	da.Start()
	db.Start()
	da.Attach(a, "app=frontend")
	db.Attach(b, "app=web")

	web := b.ServeEcho(8080)
	other := b.ServeEcho(8081)
	if err := connect(a, web); err != nil {
		t.Fatalf("frontend (node 0) -> web (node 1): %v", err)
	}
	if r := db.WaitRecord(a.Addr, web, "ingress"); r.Action != "allow" {
		t.Errorf("node 1's record: %+v", r)
	}
	if err := connect(a, other); !isRefused(err) {
		t.Errorf("frontend -> web:8081: %v, want a prompt RST", err)
	}
	front := a.ServeEcho(8080)
	if err := connect(b, front); !isRefused(err) {
		t.Errorf("web (node 1) -> frontend (node 0): %v, want a prompt RST", err)
	}
}

// TestDaemonMaxProcs: the daemon runs its Go code on the processors
// maxProcs says, automatic (node.Config.Procs of Go's default) when unset,
// and logs what the runtime took.
func TestDaemonMaxProcs(t *testing.T) {
	testenv.RequireRoot(t)
	logged := regexp.MustCompile(`msg=processors maxProcs=(\d+) goDefault=(\d+)`)
	for _, tc := range []struct {
		name, extra string
		want        func(goDefault int) int
	}{
		{"automatic", "", func(goDefault int) int {
			return (&node.Config{}).Procs(goDefault, os.Getenv("GOMAXPROCS"))
		}},
		{"maxProcs: 3", "maxProcs: 3\n", func(int) int { return 3 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := testenv.NewNode(t, testenv.NodeOptions{PUs: 0})
			d := testenv.NewDaemon(t, n, testenv.DaemonOptions{SecretsDir: testenv.PSKDir(t), Policy: "policies: []\n", Extra: tc.extra})
			d.Start()
			m := logged.FindStringSubmatch(d.Logs())
			if m == nil {
				t.Fatalf("no processors line in the daemon's log:\n%s", d.Logs())
			}
			got, _ := strconv.Atoi(m[1])
			goDefault, _ := strconv.Atoi(m[2])
			if want := tc.want(goDefault); got != want {
				t.Errorf("the daemon runs on %d processors (Go's default %d), want %d", got, goDefault, want)
			}
		})
	}
}
