package testenv

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/trireme-go/trireme/dataplane"
	"github.com/trireme-go/trireme/node"
	"github.com/trireme-go/trireme/testenv/launch"
	"gopkg.in/yaml.v3"
)

// Tests that need the product run the real binary, as an operator would:
// `trireme daemon` inside a node namespace, the CLI against its socket.

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// Binary returns the trireme binary under test: $TRIREME_TEST_BINARY (make
// test builds it once, statically), or one built on first use.
func Binary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("TRIREME_TEST_BINARY"); p != "" {
		return p
	}
	binOnce.Do(func() {
		dir, err := os.MkdirTemp("", "trireme-testbin-")
		if err != nil {
			binErr = err
			return
		}
		binPath = filepath.Join(dir, "trireme")
		cmd := exec.Command("go", "build", "-o", binPath, "github.com/trireme-go/trireme/cmd/trireme")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			binErr = fmt.Errorf("building trireme: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

// RunBin runs the trireme CLI and returns its output; failure fails the test.
func RunBin(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command(Binary(t), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("trireme %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// PSKDir returns a directory holding a pre-shared key file "psk".
func PSKDir(t testing.TB) string {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "psk"), []byte("0123456789abcdef0123456789abcdef-test-psk"), 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

// CADir returns a directory holding a fresh CA (`trireme pki init`).
func CADir(t testing.TB) string {
	dir := filepath.Join(t.TempDir(), "ca")
	RunBin(t, "pki", "init", "--out", dir)
	return dir
}

// DaemonOptions configure a test daemon.
type DaemonOptions struct {
	// PKI: SecretsDir is a CA (CADir) and the node gets a certificate;
	// otherwise SecretsDir holds "psk" (PSKDir). Nodes that must talk
	// share the directory.
	PKI        bool
	SecretsDir string
	Policy     string // the policy file's content
	MidStream  string // drop (default), reset, acl
	// OnPolicyChange: keep (default) or reset.
	OnPolicyChange string
	// Extra is more config keys, as YAML, applied over the others.
	Extra string
	// Configure, when not nil, edits the config last.
	Configure func(*node.Config)
	// Bridge and Subnet replace the node's bridge and subnet in the
	// config (a bridge the daemon must create, or one made beforehand).
	Bridge string
	Subnet netip.Prefix
}

// Daemon is a trireme daemon process running in a node namespace, started
// by the one launcher of tests, demo and perf (testenv/launch).
type Daemon struct {
	t          testing.TB
	Node       *Node
	Dir        string
	Config     string // the config file's path
	Socket     string
	FlowLog    string
	PolicyPath string
	launch     *launch.Daemon
	logs       *syncBuffer
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

// NewDaemon writes a config for a daemon on n (not started) and registers
// its cleanup: the process is killed, `trireme daemon purge` removes what it
// left, and its log is printed when the test failed.
func NewDaemon(t testing.TB, n *Node, opts DaemonOptions) *Daemon {
	t.Helper()
	dir := t.TempDir()
	d := &Daemon{t: t, Node: n, Dir: dir, Socket: filepath.Join(dir, "trireme.sock"),
		FlowLog: filepath.Join(dir, "flows.jsonl"), PolicyPath: filepath.Join(dir, "policy.yaml"), logs: &syncBuffer{}}
	d.WritePolicy(opts.Policy)
	cfg := &node.Config{Node: strings.ToLower(n.Name), Policy: d.PolicyPath, FlowLog: d.FlowLog, Socket: d.Socket,
		StateDir: filepath.Join(dir, "state"),
		Bridge:   node.Bridge{Name: n.Bridge, Subnet: node.Prefix{Prefix: n.Subnet}}}
	if opts.PKI {
		nodeDir := filepath.Join(dir, "pki")
		RunBin(t, "pki", "issue", "--ca", opts.SecretsDir, "--node", cfg.Node, "--out", nodeDir)
		cfg.Secrets = node.Secrets{CACert: filepath.Join(opts.SecretsDir, "ca.crt"),
			NodeCert: filepath.Join(nodeDir, "node.crt"), NodeKey: filepath.Join(nodeDir, "node.key")}
	} else {
		cfg.Secrets = node.Secrets{PSKFile: filepath.Join(opts.SecretsDir, "psk")}
	}
	// Defaults (zero values): midStream drop, onPolicyChange keep.
	if opts.MidStream != "" {
		if err := cfg.MidStream.UnmarshalText([]byte(opts.MidStream)); err != nil {
			t.Fatal(err)
		}
	}
	if opts.OnPolicyChange != "" {
		if err := cfg.OnPolicyChange.UnmarshalText([]byte(opts.OnPolicyChange)); err != nil {
			t.Fatal(err)
		}
	}
	if opts.Bridge != "" {
		cfg.Bridge.Name = opts.Bridge
	}
	if opts.Subnet.IsValid() {
		cfg.Bridge.Subnet = node.Prefix{Prefix: opts.Subnet}
	}
	if opts.Extra != "" {
		dec := yaml.NewDecoder(strings.NewReader(opts.Extra))
		dec.KnownFields(true)
		if err := dec.Decode(cfg); err != nil {
			t.Fatalf("testenv: DaemonOptions.Extra: %v", err)
		}
	}
	if opts.Configure != nil {
		opts.Configure(cfg)
	}
	l, err := launch.Write(dir, Binary(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	l.Netns, l.Args, l.Log = n.Name, []string{"--log-level", "debug"}, d.logs
	d.launch, d.Config = l, l.ConfigPath
	t.Cleanup(func() {
		d.Kill()
		if out, err := n.Run(context.Background(), Binary(t), "daemon", "purge", "--config", d.Config); err != nil {
			t.Errorf("purge: %v: %s", err, out)
		}
		if t.Failed() {
			t.Logf("daemon log of %s:\n%s", n.Name, d.Logs())
		}
	})
	return d
}

// WritePolicy replaces the policy file (a running daemon reloads it).
func (d *Daemon) WritePolicy(policy string) {
	d.t.Helper()
	tmp := d.PolicyPath + ".tmp"
	if err := os.WriteFile(tmp, []byte(policy), 0o644); err != nil {
		d.t.Fatal(err)
	}
	if err := os.Rename(tmp, d.PolicyPath); err != nil {
		d.t.Fatal(err)
	}
}

// SetPolicy replaces the policy file of the running daemon and waits (up
// to 10 s) until the new policy is in force: the daemon logged one more
// "policy updated". The same content as the file's is a no-op (the daemon
// does not reload unchanged content).
func (d *Daemon) SetPolicy(policy string) {
	d.t.Helper()
	if old, err := os.ReadFile(d.PolicyPath); err == nil && string(old) == policy {
		return
	}
	const updated = "policy updated"
	before := strings.Count(d.Logs(), updated)
	d.WritePolicy(policy)
	deadline := time.Now().Add(10 * time.Second)
	for strings.Count(d.Logs(), updated) <= before {
		if time.Now().After(deadline) {
			st, err := d.Client().Stats()
			d.t.Fatalf("the daemon did not put the new policy in force within 10 s (policy status %+v, %v)", st.Policy, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Logs returns what the daemon printed so far.
func (d *Daemon) Logs() string { return d.logs.String() }

// Start runs the daemon in the node namespace and waits until its control
// API answers.
func (d *Daemon) Start() {
	d.t.Helper()
	if err := d.launch.Start(context.Background()); err != nil {
		d.t.Fatal(err)
	}
}

// Stop sends sig and waits for the process to end.
func (d *Daemon) Stop(sig syscall.Signal) {
	d.t.Helper()
	if err := d.launch.Stop(sig, 15*time.Second); err != nil {
		d.t.Error(err)
	}
}

// Kill stops the daemon with SIGKILL (a crash).
func (d *Daemon) Kill() { d.Stop(syscall.SIGKILL) }

// PID is the daemon's process ID (0 when it is not running).
func (d *Daemon) PID() int { return d.launch.PID() }

// WaitKernelAuthorized waits until the daemon has put at least n flows in
// the kernel's authorized sets since it started (each PU of a connection
// counts one): until then a new flow's packets still pass through the
// dataplane, and a daemon stopped at that moment takes them with it. t is
// the test that waits (a subtest its own: FailNow runs on its goroutine).
func (d *Daemon) WaitKernelAuthorized(t testing.TB, n uint64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		s, err := d.Client().Stats()
		if err == nil && s.Counters["kernel-authorized"] >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the daemon authorized %d flows in the kernel, want %d (%v)", s.Counters["kernel-authorized"], n, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Client returns a control API client for the daemon.
func (d *Daemon) Client() *node.Client { return node.NewClient(d.Socket) }

// Attach polices pu with the given labels (`trireme pu attach`).
func (d *Daemon) Attach(pu *PU, labels ...string) {
	d.t.Helper()
	args := []string{"pu", "attach", pu.Name, "--socket", d.Socket}
	for _, l := range labels {
		args = append(args, "--label", l)
	}
	RunBin(d.t, args...)
}

// Records returns the flow log's records so far.
func (d *Daemon) Records() []dataplane.Record { return d.RecordsSince(0) }

// RecordsSince returns the flow log's records past byte offset (the log's
// size at some earlier point: what was written since).
func (d *Daemon) RecordsSince(offset int64) []dataplane.Record {
	f, err := os.Open(d.FlowLog)
	if err != nil {
		return nil
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return nil
	}
	out, _ := dataplane.ReadRecords(f)
	return out
}

// WaitRecord waits (up to 5 s) until the flow log has a record of a
// connection from client to server written by the enforcer on the given
// side ("ingress": the server's, "egress": the client's) and returns the
// newest such record.
func (d *Daemon) WaitRecord(client netip.Addr, server netip.AddrPort, direction string) dataplane.Record {
	d.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		var found *dataplane.Record
		for _, r := range d.Records() {
			if r.Server == server && r.Client.Addr() == client && r.Direction == direction {
				r := r
				found = &r
			}
		}
		if found != nil {
			return *found
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("no %s flow record of %v -> %v in %s", direction, client, server, d.FlowLog)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
