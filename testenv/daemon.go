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
	// Extra is appended to the config file (more YAML keys).
	Extra string
	// Bridge and Subnet replace the node's bridge and subnet in the
	// config (a bridge the daemon must create, or one made beforehand).
	Bridge string
	Subnet netip.Prefix
}

// Daemon is a trireme daemon process running in a node namespace.
type Daemon struct {
	t          testing.TB
	Node       *Node
	Dir        string
	Config     string
	Socket     string
	FlowLog    string
	PolicyPath string
	cmd        *exec.Cmd
	done       chan error
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
	nodeName := strings.ToLower(n.Name)
	var secrets string
	if opts.PKI {
		nodeDir := filepath.Join(dir, "pki")
		RunBin(t, "pki", "issue", "--ca", opts.SecretsDir, "--node", nodeName, "--out", nodeDir)
		secrets = fmt.Sprintf("{caCert: %s, nodeCert: %s, nodeKey: %s}",
			filepath.Join(opts.SecretsDir, "ca.crt"), filepath.Join(nodeDir, "node.crt"), filepath.Join(nodeDir, "node.key"))
	} else {
		secrets = fmt.Sprintf("{pskFile: %s}", filepath.Join(opts.SecretsDir, "psk"))
	}
	mid, onChange := opts.MidStream, opts.OnPolicyChange
	if mid == "" {
		mid = "drop"
	}
	if onChange == "" {
		onChange = "keep"
	}
	bridge, subnet := n.Bridge, n.Subnet
	if opts.Bridge != "" {
		bridge = opts.Bridge
	}
	if opts.Subnet.IsValid() {
		subnet = opts.Subnet
	}
	cfg := fmt.Sprintf(`node: %s
secrets: %s
policy: %s
flowLog: %s
socket: %s
stateDir: %s
midStream: %s
onPolicyChange: %s
bridge: {name: %s, subnet: %s}
%s`, nodeName, secrets, d.PolicyPath, d.FlowLog, d.Socket, filepath.Join(dir, "state"), mid, onChange, bridge, subnet, opts.Extra)
	d.Config = filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(d.Config, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
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
	// nsenter switches only the network namespace: `ip netns exec` would
	// also give the daemon a mount namespace of its own, hiding the
	// namespaces it creates (`trireme run`) from the rest of the host.
	d.cmd = exec.Command("nsenter", "--net="+filepath.Join("/var/run/netns", d.Node.Name), Binary(d.t), "daemon", "--config", d.Config, "--log-level", "debug")
	d.cmd.Stdout, d.cmd.Stderr = d.logs, d.logs
	if err := d.cmd.Start(); err != nil {
		d.t.Fatal(err)
	}
	d.done = make(chan error, 1)
	go func(c *exec.Cmd, done chan error) { done <- c.Wait() }(d.cmd, d.done)
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := d.Client().Stats(); err == nil {
			return
		}
		select {
		case err := <-d.done:
			d.cmd = nil
			d.t.Fatalf("daemon exited at start: %v\n%s", err, d.Logs())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("daemon did not answer on %s\n%s", d.Socket, d.Logs())
		}
	}
}

// Stop sends sig and waits for the process to end.
func (d *Daemon) Stop(sig syscall.Signal) {
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

// Kill stops the daemon with SIGKILL (a crash).
func (d *Daemon) Kill() { d.Stop(syscall.SIGKILL) }

// PID is the daemon's process ID (0 when it is not running).
func (d *Daemon) PID() int {
	if d.cmd == nil || d.cmd.Process == nil {
		return 0
	}
	return d.cmd.Process.Pid
}

// WaitKernelAuthorized waits until the daemon has put at least n flows in
// the kernel's authorized sets since it started (each PU of a connection
// counts one): until then a new flow's packets still pass through the
// dataplane, and a daemon stopped at that moment takes them with it.
func (d *Daemon) WaitKernelAuthorized(n uint64) {
	d.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		s, err := d.Client().Stats()
		if err == nil && s.Counters["kernel-authorized"] >= n {
			return
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("the daemon authorized %d flows in the kernel, want %d (%v)", s.Counters["kernel-authorized"], n, err)
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
