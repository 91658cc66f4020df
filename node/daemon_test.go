package node_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/trireme-go/trireme/node"
	"github.com/trireme-go/trireme/testenv"
)

// The daemon tests run the real binary, as an operator would, inside node
// namespaces built by testenv, and drive real TCP connections between PU
// namespaces through it.

var triremeBin string

func TestMain(m *testing.M) {
	if bin := os.Getenv("TRIREME_TEST_BINARY"); bin != "" {
		triremeBin = bin
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "trireme-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	triremeBin = filepath.Join(dir, "trireme")
	build := exec.Command("go", "build", "-o", triremeBin, "github.com/trireme-go/trireme/cmd/trireme")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building trireme:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// daemon is a trireme daemon process running in a node namespace.
type daemon struct {
	t       *testing.T
	node    *testenv.Node
	dir     string
	config  string
	socket  string
	flowLog string
	cmd     *exec.Cmd
	done    chan error
	logs    *syncBuffer
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type daemonOptions struct {
	pki        bool
	secretsDir string // shared across nodes: the PSK or the CA
	policy     string
	midStream  string
}

// newDaemon writes a config for a daemon on n and registers its cleanup: the
// process is killed and `trireme daemon purge` removes what it left.
func newDaemon(t *testing.T, n *testenv.Node, opts daemonOptions) *daemon {
	t.Helper()
	dir := t.TempDir()
	d := &daemon{t: t, node: n, dir: dir, socket: filepath.Join(dir, "trireme.sock"), flowLog: filepath.Join(dir, "flows.jsonl"), logs: &syncBuffer{}}
	policyPath := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(policyPath, []byte(opts.policy), 0o644); err != nil {
		t.Fatal(err)
	}
	var secrets string
	if opts.pki {
		nodeDir := filepath.Join(dir, "pki")
		runBin(t, "pki", "issue", "--ca", opts.secretsDir, "--node", n.Name, "--out", nodeDir)
		secrets = fmt.Sprintf("{caCert: %s, nodeCert: %s, nodeKey: %s}",
			filepath.Join(opts.secretsDir, "ca.crt"), filepath.Join(nodeDir, "node.crt"), filepath.Join(nodeDir, "node.key"))
	} else {
		secrets = fmt.Sprintf("{pskFile: %s}", filepath.Join(opts.secretsDir, "psk"))
	}
	mid := opts.midStream
	if mid == "" {
		mid = "drop"
	}
	cfg := fmt.Sprintf(`node: %s
secrets: %s
policy: %s
flowLog: %s
socket: %s
stateDir: %s
midStream: %s
bridge: {name: %s, subnet: %s}
`, strings.ToLower(strings.ReplaceAll(n.Name, "_", "-")), secrets, policyPath, d.flowLog, d.socket, filepath.Join(dir, "state"), mid, n.Bridge, n.Subnet)
	d.config = filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(d.config, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		d.kill()
		if out, err := n.Run(context.Background(), triremeBin, "daemon", "purge", "--config", d.config); err != nil {
			t.Errorf("purge: %v: %s", err, out)
		}
		if t.Failed() {
			t.Logf("daemon log of %s:\n%s", n.Name, d.logs.String())
		}
	})
	return d
}

func pskDir(t *testing.T) string {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "psk"), []byte("0123456789abcdef0123456789abcdef-test-psk"), 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

func caDir(t *testing.T) string {
	dir := filepath.Join(t.TempDir(), "ca")
	runBin(t, "pki", "init", "--out", dir)
	return dir
}

func runBin(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(triremeBin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("trireme %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// start runs the daemon and waits until its control API answers.
func (d *daemon) start() {
	d.t.Helper()
	d.cmd = exec.Command("ip", "netns", "exec", d.node.Name, triremeBin, "daemon", "--config", d.config, "--log-level", "debug")
	d.cmd.Stdout, d.cmd.Stderr = d.logs, d.logs
	if err := d.cmd.Start(); err != nil {
		d.t.Fatal(err)
	}
	d.done = make(chan error, 1)
	go func(c *exec.Cmd, done chan error) { done <- c.Wait() }(d.cmd, d.done)
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := node.NewClient(d.socket).Stats(); err == nil {
			return
		}
		select {
		case err := <-d.done:
			d.cmd = nil
			d.t.Fatalf("daemon exited at start: %v\n%s", err, d.logs.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("daemon did not answer on %s\n%s", d.socket, d.logs.String())
		}
	}
}

// stop sends sig and waits for the process to end.
func (d *daemon) stop(sig syscall.Signal) {
	d.t.Helper()
	if d.cmd == nil {
		return
	}
	_ = d.cmd.Process.Signal(sig)
	select {
	case <-d.done:
	case <-time.After(15 * time.Second):
		d.cmd.Process.Kill()
		<-d.done
		d.t.Errorf("daemon did not stop on %v", sig)
	}
	d.cmd = nil
}

func (d *daemon) kill() { d.stop(syscall.SIGKILL) }

func (d *daemon) client() *node.Client { return node.NewClient(d.socket) }

func (d *daemon) attach(pu *testenv.PU, labels ...string) {
	d.t.Helper()
	args := []string{"pu", "attach", pu.Name, "--socket", d.socket}
	for _, l := range labels {
		args = append(args, "--label", l)
	}
	runBin(d.t, args...)
}

// flowRecord is the part of a flow record the tests look at.
type flowRecord struct {
	Client    string `json:"client"`
	Server    string `json:"server"`
	Direction string `json:"direction"`
	Action    string `json:"action"`
	Reason    string `json:"reason"`
	Local     struct {
		ID string `json:"id"`
	} `json:"local"`
}

// waitRecord waits until the flow log has a record of a connection from
// client to server, written by the enforcer on the given side (ingress: the
// server's, egress: the client's), and returns the newest.
func (d *daemon) waitRecord(client netip.Addr, server netip.AddrPort, direction string) flowRecord {
	d.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		f, err := os.Open(d.flowLog)
		if err == nil {
			sc := bufio.NewScanner(f)
			var found *flowRecord
			for sc.Scan() {
				var r flowRecord
				if json.Unmarshal(sc.Bytes(), &r) == nil && r.Server == server.String() && r.Direction == direction &&
					strings.HasPrefix(r.Client, client.String()+":") {
					found = &r
				}
			}
			f.Close()
			if found != nil {
				return *found
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	d.t.Fatalf("no %s flow record for %v in %s", direction, server, d.flowLog)
	return flowRecord{}
}

// connect opens a TCP connection from pu to addr, exchanges one message and
// reports how it went: nil, a refusal (RST), or a timeout.
func connect(pu *testenv.PU, addr netip.AddrPort) error {
	return pu.Echo(addr, "ping", 2*time.Second)
}

func isRefused(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
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

	secrets := pskDir(t)
	if pki {
		secrets = caDir(t)
	}
	d := newDaemon(t, n, daemonOptions{pki: pki, secretsDir: secrets, policy: policy})
	d.start()
	d.attach(fe, "app=frontend")
	d.attach(web, "app=web")
	d.attach(db, "app=db")

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
		if r := d.waitRecord(fe.Addr, webSrv, "ingress"); r.Action != "allow" {
			t.Errorf("web's record of frontend -> web: %+v", r)
		}
	})
	t.Run("denied by the server's ingress", func(t *testing.T) {
		err := connect(fe, dbSrv)
		if !isRefused(err) {
			t.Fatalf("frontend -> db: %v, want a prompt RST (connection refused)", err)
		}
		if r := d.waitRecord(fe.Addr, dbSrv, "ingress"); r.Action == "allow" || r.Reason == "none" {
			t.Errorf("db's record of frontend -> db: %+v", r)
		}
	})
	t.Run("denied by the client's egress", func(t *testing.T) {
		// web's ingress allows db, but db has no egress rule to web.
		err := connect(db, webSrv)
		if !isRefused(err) {
			t.Fatalf("db -> web: %v, want a prompt RST", err)
		}
		if r := d.waitRecord(db.Addr, webSrv, "egress"); r.Local.ID == "" || r.Action == "allow" {
			t.Errorf("db's record of db -> web: %+v", r)
		}
	})
	t.Run("target network peer without enforcer", func(t *testing.T) {
		if err := connect(rogue, webSrv); err == nil {
			t.Fatal("a host inside the target networks connected without a token")
		}
		// The record is web's: ingress from rogue.
		if r := d.waitRecord(rogue.Addr, webSrv, "ingress"); r.Reason != "missing-token" || r.Action == "allow" {
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
		runBin(t, "exclude", "add", ext.Addr.String(), "--socket", d.socket)
		if err := connect(ext, dbSrv); err != nil {
			t.Errorf("external -> db while excluded: %v", err)
		}
		s, err := d.client().Stats()
		if err != nil || len(s.Excluded) != 1 || s.Excluded[0] != p {
			t.Errorf("stats.excluded = %v (%v), want [%v]", s.Excluded, err, p)
		}
		runBin(t, "exclude", "rm", ext.Addr.String(), "--socket", d.socket)
		if err := connect(ext, dbSrv); err == nil {
			t.Errorf("external -> db connected after the exclusion was removed")
		}
	})
	t.Run("pu ls and stats", func(t *testing.T) {
		out := runBin(t, "pu", "ls", "--socket", d.socket)
		for _, want := range []string{"app=frontend", "app=web", "app=db"} {
			if !strings.Contains(out, want) {
				t.Errorf("pu ls lacks %q:\n%s", want, out)
			}
		}
		s, err := d.client().Stats()
		if err != nil {
			t.Fatal(err)
		}
		if s.PUs != 3 || s.Counters["packets"] == 0 || s.Drops["missing-token"] == 0 {
			t.Errorf("stats: %+v", s)
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
	d := newDaemon(t, n, daemonOptions{secretsDir: pskDir(t), policy: policy})
	d.start()
	d.attach(cl, "app=client")
	d.attach(srv, "app=server")
	addr := srv.ServeEcho(7000)

	// An established connection, used across the outages.
	conn, err := cl.Dial(addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	roundTrip := func(msg string) error {
		_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := conn.Write([]byte(msg)); err != nil {
			return err
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(conn, got); err != nil {
			return err
		}
		if string(got) != msg {
			return fmt.Errorf("got %q", got)
		}
		return nil
	}
	if err := roundTrip("before"); err != nil {
		t.Fatal(err)
	}

	for _, sig := range []syscall.Signal{syscall.SIGKILL, syscall.SIGTERM} {
		t.Run(sig.String(), func(t *testing.T) {
			d.stop(sig)
			if err := connect(cl, addr); err == nil {
				t.Fatal("a new connection got through while the daemon was down (fail open)")
			}
			if err := roundTrip("while down"); err != nil {
				t.Fatalf("established connection broke while the daemon was down: %v", err)
			}
			d.start()
			pus, err := d.client().ListPUs()
			if err != nil || len(pus) != 2 {
				t.Fatalf("after restart: PUs %v (%v), want the 2 of the previous run", pus, err)
			}
			if err := connect(cl, addr); err != nil {
				t.Fatalf("new connection after restart: %v", err)
			}
			if err := roundTrip("after restart"); err != nil {
				t.Fatalf("established connection after restart: %v", err)
			}
			s, err := d.client().Stats()
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
	psk := pskDir(t)
	da := newDaemon(t, c.Nodes[0], daemonOptions{secretsDir: psk, policy: policy})
	db := newDaemon(t, c.Nodes[1], daemonOptions{secretsDir: psk, policy: policy})
	da.start()
	db.start()
	da.attach(a, "app=frontend")
	db.attach(b, "app=web")

	web := b.ServeEcho(8080)
	other := b.ServeEcho(8081)
	if err := connect(a, web); err != nil {
		t.Fatalf("frontend (node 0) -> web (node 1): %v", err)
	}
	if r := db.waitRecord(a.Addr, web, "ingress"); r.Action != "allow" {
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
