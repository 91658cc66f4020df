package perf

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netns"
	"gopkg.in/yaml.v3"

	"github.com/trireme-go/trireme/node"
	"github.com/trireme-go/trireme/perf/loadgen"
	"github.com/trireme-go/trireme/tokens"
)

// Variant is one way of carrying the traffic between the PUs of a topology:
// the plain kernel path, or the enforcer in some mode. The harness creates a
// fresh Topology for each variant, calls Setup once, measures it in every
// round, and calls Teardown once before deleting the topology's namespaces.
type Variant interface {
	// Name is the variant's short name (column header, --variants value).
	Name() string
	// Setup joins t's PUs to their nodes (the namespaces exist, the
	// underlay is up) and sets each PU's Addr. The harness then waits until
	// a connection from t.Client to t.Server on a port of t.Server succeeds.
	Setup(ctx context.Context, t *Topology) error
	// EnforcerPIDs lists the processes whose CPU time and peak RSS are
	// charged to the variant (one daemon per node); none for the kernel.
	EnforcerPIDs() []int
	// Teardown stops what Setup started. Links inside the topology's
	// namespaces need not be removed: deleting the namespaces does it.
	Teardown() error
}

// Kernel is the baseline: plain Linux bridges, no enforcer.
type Kernel struct{}

func (Kernel) Name() string                               { return "kernel" }
func (Kernel) Setup(_ context.Context, t *Topology) error { return WireBridge(t) }
func (Kernel) EnforcerPIDs() []int                        { return nil }
func (Kernel) Teardown() error                            { return nil }

// Daemon plumbs the PUs to their node bridges as the kernel path does
// (WireBridge), runs `trireme daemon --config FILE` in every node namespace
// with that bridge and subnet in its config, and attaches the PU namespaces
// through each daemon's control API (what `trireme pu attach NETNS --label
// k=v` does). PSK and PKI differ only in Secrets.
type Daemon struct {
	// VariantName is the column name, e.g. "psk" or "pki".
	VariantName string
	// Binary is the trireme executable; "" means this executable.
	Binary string
	// Secrets writes the node's secrets into dir and returns the config's
	// secrets section (paths may be relative to dir).
	Secrets func(dir, node string) (node.Secrets, error)
	// Policy is the policy file's content; "" means AllowPerfPolicy.
	Policy string
	// Extra is merged into every node's config (e.g. midStream).
	Extra map[string]any
	// StartTimeout bounds the wait for the control socket; 0 means 15s.
	StartTimeout time.Duration
	// Keep leaves the daemons' directory (configs, daemon.log, flow logs)
	// in place after Teardown, for diagnosis; KeptDir names it.
	Keep bool

	dir   string
	bin   string
	nodes []daemonNode
	procs []*exec.Cmd
	exits []*exited
}

// daemonNode is what it takes to (re)start the daemon of one node.
type daemonNode struct {
	node                 *Node
	cfg, socket, logPath string
}

// tmpPrefix starts the names of the daemons' directories under os.TempDir,
// followed by the pid of the perf run (for CleanStale).
const tmpPrefix = "trireme-perf-"

// AllowPerfPolicy lets the perf client connect to the perf server on any
// TCP port, with mutual authorization.
const AllowPerfPolicy = `policies:
  - name: perf-server
    selector: app=perf-server
    ingress:
      - name: from-perf-client
        from:
          - selector: app=perf-client
        action: allow
  - name: perf-client
    selector: app=perf-client
    egress:
      - name: to-perf-server
        to:
          - selector: app=perf-server
        action: allow
`

// PSKSecrets writes a fresh random 32-byte pre-shared key (hex) shared by
// every node of a run.
func PSKSecrets() func(dir, node string) (node.Secrets, error) {
	key := make([]byte, 32)
	rand.Read(key) // never fails on Linux
	return func(dir, _ string) (node.Secrets, error) {
		p := filepath.Join(dir, "psk")
		if err := os.WriteFile(p, fmt.Appendf(nil, "%x\n", key), 0o600); err != nil {
			return node.Secrets{}, err
		}
		return node.Secrets{PSKFile: p}, nil
	}
}

// PKISecrets makes a CA for the run and, for each node, a certificate and
// key signed by it.
func PKISecrets() (func(dir, node string) (node.Secrets, error), error) {
	now := time.Now()
	ca, caKey, err := tokens.NewCA("trireme-perf", now, 24*time.Hour)
	if err != nil {
		return nil, err
	}
	caPEM := tokens.CertificatePEM(ca)
	return func(dir, nodeName string) (node.Secrets, error) {
		cert, key, err := tokens.IssueNode(ca, caKey, nodeName, now, 24*time.Hour)
		if err != nil {
			return node.Secrets{}, err
		}
		keyPEM, err := tokens.KeyPEM(key)
		if err != nil {
			return node.Secrets{}, err
		}
		s := node.Secrets{
			CACert:   filepath.Join(dir, "ca.pem"),
			NodeCert: filepath.Join(dir, "node.pem"),
			NodeKey:  filepath.Join(dir, "node-key.pem"),
		}
		for path, data := range map[string][]byte{s.CACert: caPEM, s.NodeCert: tokens.CertificatePEM(cert), s.NodeKey: keyPEM} {
			if err := os.WriteFile(path, data, 0o600); err != nil {
				return node.Secrets{}, err
			}
		}
		return s, nil
	}, nil
}

func (d *Daemon) Name() string { return d.VariantName }

// KeptDir is the daemons' directory left by a Keep variant ("" if none).
func (d *Daemon) KeptDir() string {
	if d.Keep {
		return d.dir
	}
	return ""
}

func (d *Daemon) EnforcerPIDs() []int {
	pids := make([]int, 0, len(d.procs))
	for _, c := range d.procs {
		pids = append(pids, c.Process.Pid)
	}
	return pids
}

// Setup starts one daemon per node and attaches the PUs of that node.
func (d *Daemon) Setup(ctx context.Context, t *Topology) error {
	if d.Secrets == nil {
		return fmt.Errorf("perf: variant %s has no secrets", d.VariantName)
	}
	bin := d.Binary
	if bin == "" {
		var err error
		if bin, err = os.Executable(); err != nil {
			return err
		}
	}
	dir, err := os.MkdirTemp("", fmt.Sprintf("%s%d-%s-", tmpPrefix, os.Getpid(), sanitize(d.VariantName)))
	if err != nil {
		return err
	}
	d.dir, d.bin = dir, bin
	policy := d.Policy
	if policy == "" {
		policy = AllowPerfPolicy
	}
	// The daemon attaches namespaces that already have a veth on its
	// bridge; it takes the bridge as it finds it.
	if err := WireBridge(t); err != nil {
		return err
	}
	for _, n := range t.Nodes {
		ndir := filepath.Join(dir, n.Name)
		if err := os.MkdirAll(ndir, 0o700); err != nil {
			return err
		}
		cfgPath, socket, err := d.writeConfig(ndir, n, t, policy)
		if err != nil {
			return err
		}
		dn := daemonNode{node: n, cfg: cfgPath, socket: socket, logPath: filepath.Join(ndir, "daemon.log")}
		d.nodes = append(d.nodes, dn)
		if err := d.start(dn); err != nil {
			return err
		}
		client := node.NewClient(socket)
		if err := waitReady(ctx, client, d.startTimeout(), d.exits[len(d.exits)-1]); err != nil {
			return fmt.Errorf("perf: daemon on %s: %w; end of its log:\n%s", n.Name, err, logTail(filepath.Join(ndir, "daemon.log"), 10))
		}
		for _, p := range t.PUs() {
			if p.Node != n {
				continue
			}
			info, err := client.AttachPU(node.AttachRequest{NetNS: p.Netns, Name: p.Name, Labels: p.Labels})
			if err != nil {
				return fmt.Errorf("perf: attach %s on %s: %w", p.Name, n.Name, err)
			}
			if !slices.Contains(info.IPs, p.Addr) {
				return fmt.Errorf("perf: attach %s on %s: the daemon sees addresses %v, not %v", p.Name, n.Name, info.IPs, p.Addr)
			}
		}
	}
	return nil
}

func (d *Daemon) startTimeout() time.Duration {
	if d.StartTimeout > 0 {
		return d.StartTimeout
	}
	return 15 * time.Second
}

func (d *Daemon) writeConfig(dir string, n *Node, t *Topology, policy string) (cfgPath, socket string, err error) {
	sec, err := d.Secrets(dir, n.Name)
	if err != nil {
		return "", "", fmt.Errorf("perf: secrets for %s: %w", n.Name, err)
	}
	policyPath := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(policyPath, []byte(policy), 0o600); err != nil {
		return "", "", err
	}
	socket = filepath.Join(dir, "trireme.sock")
	cfg := map[string]any{
		"node":           n.Name,
		"secrets":        sec,
		"policy":         policyPath,
		"socket":         socket,
		"flowLog":        filepath.Join(dir, "flows.jsonl"),
		"stateDir":       filepath.Join(dir, "state"),
		"targetNetworks": []string{t.Targets.String()},
		"bridge":         map[string]string{"name": n.Bridge, "subnet": n.Subnet.String()},
	}
	for k, v := range d.Extra {
		cfg[k] = v
	}
	data, err := yaml.Marshal(cfg)
	if err != nil {
		return "", "", err
	}
	cfgPath = filepath.Join(dir, "config.yaml")
	return cfgPath, socket, os.WriteFile(cfgPath, data, 0o600)
}

// start runs the daemon of a node inside the node's namespace (appending
// to its log).
func (d *Daemon) start(dn daemonNode) error {
	logf, err := os.OpenFile(dn.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(d.bin, "daemon", "--config", dn.cfg)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	exit, err := startIn(dn.node.Netns, cmd)
	if err != nil {
		return fmt.Errorf("perf: start daemon on %s: %w", dn.node.Name, err)
	}
	d.procs = append(d.procs, cmd)
	d.exits = append(d.exits, exit)
	return nil
}

// Client is a control API client of the daemon of node i.
func (d *Daemon) Client(i int) *node.Client { return node.NewClient(d.nodes[i].socket) }

// restart stops the daemon of node i (SIGTERM), runs between (if not nil)
// and starts it again; it returns the time from the new process's start
// until its control API answered with wantPUs PUs (all of them restored).
func (d *Daemon) restart(ctx context.Context, i, wantPUs int, between func() error) (time.Duration, error) {
	c, exit := d.procs[i], d.exits[i]
	c.Process.Signal(syscall.SIGTERM)
	select {
	case <-exit.done:
	case <-time.After(30 * time.Second):
		c.Process.Kill()
		<-exit.done
		return 0, fmt.Errorf("perf: daemon %d did not stop on SIGTERM", c.Process.Pid)
	}
	d.procs = slices.Delete(d.procs, i, i+1)
	d.exits = slices.Delete(d.exits, i, i+1)
	if between != nil {
		if err := between(); err != nil {
			return 0, err
		}
	}
	start := time.Now()
	if err := d.start(d.nodes[i]); err != nil {
		return 0, err
	}
	// start appended the new process: keep the nodes' order.
	last := len(d.procs) - 1
	d.procs = slices.Insert(d.procs[:last], i, d.procs[last])
	d.exits = slices.Insert(d.exits[:last], i, d.exits[last])
	client := d.Client(i)
	deadline := start.Add(5 * time.Minute)
	for {
		s, err := client.Stats()
		if err == nil && s.PUs >= wantPUs {
			return time.Since(start), nil
		}
		if err == nil {
			return 0, fmt.Errorf("perf: the restarted daemon polices %d PUs, want %d; end of its log:\n%s", s.PUs, wantPUs, logTail(d.nodes[i].logPath, 10))
		}
		select {
		case <-d.exits[i].done:
			return 0, fmt.Errorf("perf: the restarted daemon exited: %v; end of its log:\n%s", d.exits[i].err, logTail(d.nodes[i].logPath, 10))
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("perf: the restarted daemon did not answer within 5 minutes")
		}
	}
}

// logTail returns the last lines of a log file, for error messages.
func logTail(path string, lines int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	ls := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(ls) > lines {
		ls = ls[len(ls)-lines:]
	}
	return strings.Join(ls, "\n")
}

func waitReady(ctx context.Context, c *node.Client, timeout time.Duration, exit *exited) error {
	deadline := time.Now().Add(timeout)
	for {
		_, err := c.Stats()
		if err == nil {
			return nil
		}
		select {
		case <-exit.done:
			return fmt.Errorf("daemon exited: %v", exit.err)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("control API not ready after %v: %w", timeout, err)
		}
	}
}

// Teardown stops the daemons (SIGTERM, then SIGKILL after 5 s) and removes
// their files.
func (d *Daemon) Teardown() error {
	var errs []error
	for i, c := range d.procs {
		c.Process.Signal(syscall.SIGTERM)
		select {
		case <-d.exits[i].done:
		case <-time.After(5 * time.Second):
			c.Process.Kill()
			<-d.exits[i].done
			errs = append(errs, fmt.Errorf("perf: daemon %d did not stop on SIGTERM", c.Process.Pid))
		}
	}
	d.procs, d.exits, d.nodes = nil, nil, nil
	if d.dir != "" && len(errs) == 0 && !d.Keep {
		if err := os.RemoveAll(d.dir); err != nil {
			errs = append(errs, err)
		}
		d.dir = ""
	}
	return errors.Join(errs...)
}

// exited tells when a started process has exited, to any number of
// waiters: done is closed after err is set to cmd.Wait's result.
type exited struct {
	done chan struct{}
	err  error
}

// startIn starts cmd inside a named network namespace: a child inherits the
// namespace of the thread that forks it. That thread stays alive, waiting
// for the child, for the child's whole life, because Pdeathsig fires when
// the forking thread (not the process) exits.
func startIn(nsName string, cmd *exec.Cmd) (*exited, error) {
	ns, err := netns.GetFromName(nsName)
	if err != nil {
		return nil, err
	}
	started := make(chan error, 1)
	exit := &exited{done: make(chan struct{})}
	go func() {
		leave, err := loadgen.EnterNetns(ns)
		ns.Close()
		if err == nil {
			err = cmd.Start()
		}
		started <- err
		if err != nil {
			if leave != nil {
				leave()
			}
			return
		}
		exit.err = cmd.Wait()
		leave()
		close(exit.done)
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return exit, nil
}
