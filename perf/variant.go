package perf

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/trireme-go/trireme/node"
	"github.com/trireme-go/trireme/testenv/launch"
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

	dir     string
	bin     string
	daemons []*launch.Daemon // one per node, in t.Nodes order
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
	pids := make([]int, 0, len(d.daemons))
	for _, l := range d.daemons {
		if pid := l.PID(); pid != 0 {
			pids = append(pids, pid)
		}
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
		l, err := d.writeConfig(ndir, n, t, policy)
		if err != nil {
			return err
		}
		d.daemons = append(d.daemons, l)
		if err := l.Start(ctx); err != nil {
			return fmt.Errorf("perf: daemon on %s: %w", n.Name, err)
		}
		client := l.Client()
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

// writeConfig writes a node's secrets, policy and config (through the
// launcher tests and the demo use too) and returns its daemon, not started.
func (d *Daemon) writeConfig(dir string, n *Node, t *Topology, policy string) (*launch.Daemon, error) {
	sec, err := d.Secrets(dir, n.Name)
	if err != nil {
		return nil, fmt.Errorf("perf: secrets for %s: %w", n.Name, err)
	}
	policyPath := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(policyPath, []byte(policy), 0o600); err != nil {
		return nil, err
	}
	cfg := &node.Config{Node: n.Name, Secrets: sec, Policy: policyPath, Socket: filepath.Join(dir, "trireme.sock"),
		FlowLog: filepath.Join(dir, "flows.jsonl"), StateDir: filepath.Join(dir, "state"),
		TargetNetworks: node.Prefixes{t.Targets}, Bridge: node.Bridge{Name: n.Bridge, Subnet: node.Prefix{Prefix: n.Subnet}}}
	if len(d.Extra) > 0 {
		extra, err := yaml.Marshal(d.Extra)
		if err != nil {
			return nil, err
		}
		dec := yaml.NewDecoder(bytes.NewReader(extra))
		dec.KnownFields(true)
		if err := dec.Decode(cfg); err != nil {
			return nil, fmt.Errorf("perf: Extra config keys: %w", err)
		}
	}
	l, err := launch.Write(dir, d.bin, cfg)
	if err != nil {
		return nil, err
	}
	l.Netns, l.ReadyTimeout = n.Netns, d.startTimeout()
	return l, nil
}

// Client is a control API client of the daemon of node i.
func (d *Daemon) Client(i int) *node.Client { return d.daemons[i].Client() }

// restart stops the daemon of node i (SIGTERM), runs between (if not nil)
// and starts it again; it returns the time from the new process's start
// until its control API answered with wantPUs PUs (all of them restored).
func (d *Daemon) restart(ctx context.Context, i, wantPUs int, between func() error) (time.Duration, error) {
	l := d.daemons[i]
	if err := l.Stop(syscall.SIGTERM, 30*time.Second); err != nil {
		return 0, fmt.Errorf("perf: %w", err)
	}
	if between != nil {
		if err := between(); err != nil {
			return 0, err
		}
	}
	// The daemon answers once it has restored every PU: wait for the
	// answer, then check that it polices them all.
	timeout := l.ReadyTimeout
	l.ReadyTimeout = 5 * time.Minute
	defer func() { l.ReadyTimeout = timeout }()
	start := time.Now()
	if err := l.Start(ctx); err != nil {
		return 0, fmt.Errorf("perf: the restarted daemon: %w", err)
	}
	took := time.Since(start)
	s, err := l.Client().Stats()
	if err != nil {
		return 0, fmt.Errorf("perf: the restarted daemon: %w", err)
	}
	if s.PUs < wantPUs {
		return 0, fmt.Errorf("perf: the restarted daemon polices %d PUs, want %d; end of its log:\n%s", s.PUs, wantPUs, l.LogTail(10))
	}
	return took, nil
}

// Teardown stops the daemons (SIGTERM, then SIGKILL after 5 s) and removes
// their files.
func (d *Daemon) Teardown() error {
	var errs []error
	for _, l := range d.daemons {
		if err := l.Stop(syscall.SIGTERM, 5*time.Second); err != nil {
			errs = append(errs, fmt.Errorf("perf: %w", err))
		}
	}
	d.daemons = nil
	if d.dir != "" && len(errs) == 0 && !d.Keep {
		if err := os.RemoveAll(d.dir); err != nil {
			errs = append(errs, err)
		}
		d.dir = ""
	}
	return errors.Join(errs...)
}
