// Package demo builds and runs the live demo of `trireme demo`: a node (a
// network namespace with a bridge) running the real trireme daemon in PKI
// mode, hosts (PUs and unenforced external hosts, each a namespace on the
// node bridge), probe servers in them, real TCP and UDP connections between
// them, and the daemon's flow log to explain each outcome. Nothing touches
// the host's own network, and everything is torn down by Env.Close, also
// after an error or an interrupt.
package demo

import (
	"context"
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
	"time"

	"github.com/vishvananda/netlink"

	"github.com/trireme-go/trireme/dockerd"
	"github.com/trireme-go/trireme/monitor/process"
	"github.com/trireme-go/trireme/netsetup"
	"github.com/trireme-go/trireme/node"
	"github.com/trireme-go/trireme/testenv/launch"
	"github.com/trireme-go/trireme/tokens"
)

// NamePrefix starts the name of every namespace the demo creates.
const NamePrefix = "trdemo-"

// DockerCIDR is where Docker puts its containers on the node bridge (the
// rest of the node subnet is the demo's hosts' and trireme run's).
var DockerCIDR = netip.MustParsePrefix("10.0.200.0/24")

// NodeName is the demo node's name (its certificate's CN).
const NodeName = "demo"

// bridgeName is the node bridge inside the node namespace.
const bridgeName = "br0"

// Host is a host of the demo: a PU (enforced, with labels) or an external
// host (no enforcer).
type Host struct {
	Name   string
	Addr   netip.Addr
	PU     bool
	Labels map[string]string // user labels of a PU
	TCP    []int             // ports it serves
	UDP    []int
}

// Env is a running demo topology.
type Env struct {
	Suffix string
	Node   string // node namespace
	Dir    string // config, PKI, flow log, socket, daemon log
	Config *node.Config
	// ConfigPath is the daemon's config file.
	ConfigPath string
	Binary     string
	Subnet     netip.Prefix
	// Excluded are the excluded networks: connections there bypass
	// trireme and leave no record.
	Excluded []netip.Prefix

	progress io.Writer
	hostNS   map[string]string // host name -> namespace
	hosts    map[string]*Host
	nextVeth int

	// DockerErr says why the Docker engine did not start (Options.Docker).
	DockerErr error

	mu      sync.Mutex
	procs   []*proc        // servers and other helpers, stopped at Close
	daemon  *launch.Daemon // written by writeConfig, started by startDaemon
	docker  *dockerd.Engine
	closed  bool
	created []string // namespaces, in creation order
}

type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
}

// Options configure New.
type Options struct {
	Binary string       // the trireme binary (daemon, probes)
	Policy string       // policy file the daemon enforces
	Subnet netip.Prefix // node bridge subnet (hosts' addresses must be on it or external)
	// Docker starts a private Docker engine in the node, on the node
	// bridge, and has the daemon police its containers. When the engine
	// cannot start, DockerErr says why and the demo goes on without it.
	Docker   bool
	Progress io.Writer
}

// New creates the node namespace, a fresh CA and node certificate, and the
// daemon's config, and starts the daemon in the node. On error, what was
// created is removed.
func New(ctx context.Context, opts Options) (e *Env, err error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("the live demo needs root (network namespaces, nftables); use --offline to see the policy engine's decisions only")
	}
	if opts.Progress == nil {
		opts.Progress = io.Discard
	}
	if removed, err := CleanStale(); err != nil {
		fmt.Fprintf(opts.Progress, "  ! removing what killed demos left: %v\n", err)
	} else if len(removed) > 0 {
		fmt.Fprintf(opts.Progress, "  • removed what killed demos left: %d namespaces and directories\n", len(removed))
	}
	e = &Env{Suffix: suffix(), Binary: opts.Binary, Subnet: opts.Subnet.Masked(), progress: opts.Progress,
		hostNS: map[string]string{}, hosts: map[string]*Host{}}
	e.Node = NamePrefix + e.Suffix + "-node"
	defer func() {
		if err != nil {
			if cerr := e.Close(); cerr != nil {
				err = errors.Join(err, cerr)
			}
			e = nil
		}
	}()
	if e.Dir, err = os.MkdirTemp("", fmt.Sprintf("%s%d-", tmpPrefix, os.Getpid())); err != nil {
		return e, err
	}
	if err := e.newNetns(e.Node); err != nil {
		return e, err
	}
	if err := netsetup.InNamedNetns(e.Node, func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(lo)
	}); err != nil {
		return e, fmt.Errorf("node %s: %w", e.Node, err)
	}
	e.Progressf("node %s: network namespace created", e.Node)

	if err := e.writePKI(); err != nil {
		return e, err
	}
	e.Progressf("PKI: CA and certificate of node %q generated in %s", NodeName, filepath.Join(e.Dir, "pki"))
	if opts.Docker {
		t := time.Now()
		if e.DockerErr = e.startNodeDocker(ctx); e.DockerErr != nil {
			if d := e.docker; d != nil {
				d.Close()
				e.docker = nil
			}
			if ctx.Err() != nil {
				return e, ctx.Err()
			}
		} else {
			e.Progressf("private Docker engine running in %s on its bridge, image %s imported (%.1fs)", e.Node, DockerImage, time.Since(t).Seconds())
		}
	}
	if err := e.writeConfig(opts); err != nil {
		return e, err
	}
	if err := e.startDaemon(ctx); err != nil {
		return e, err
	}
	e.Progressf("trireme daemon running in %s (PKI mode, policy %s)", e.Node, opts.Policy)
	return e, nil
}

// Progressf prints one progress line.
func (e *Env) Progressf(format string, args ...any) {
	fmt.Fprintf(e.progress, "  • "+format+"\n", args...)
}

// suffix names a demo's namespaces and containers: this process's PID
// (CleanStale removes those of dead processes) and a random part.
func suffix() string {
	var b [2]byte
	f, err := os.Open("/dev/urandom")
	if err == nil {
		io.ReadFull(f, b[:])
		f.Close()
	}
	return fmt.Sprintf("%d-%02x%02x", os.Getpid(), b[0], b[1])
}

// tmpPrefix starts the name of a demo's directory, followed by its PID.
const tmpPrefix = "trireme-demo-"

// CleanStale removes what demos that were killed (SIGKILL: no teardown)
// left: their namespaces (with the daemon's bridge, TAPs and nftables
// table inside), the PU namespaces their trireme run made, the processes
// and mounts of their Docker engine, and their directories. What belongs
// to a demo still running is left alone.
func CleanStale() (removed []string, err error) {
	var errs []error
	ents, _ := os.ReadDir(netsetup.NetnsDir)
	for _, ent := range ents {
		n := ent.Name()
		if netsetup.StaleName(n, NamePrefix, "-") || netsetup.StaleName(n, runPrefix, "-") {
			if err := netsetup.DeleteNetns(n); err != nil {
				errs = append(errs, err)
			} else {
				removed = append(removed, "netns "+n)
			}
		}
	}
	tmp := os.TempDir()
	ents, _ = os.ReadDir(tmp)
	for _, ent := range ents {
		if ent.IsDir() && netsetup.StaleName(ent.Name(), tmpPrefix, "-") {
			dir := filepath.Join(tmp, ent.Name())
			dockerd.CleanUnder(dir)
			if err := os.RemoveAll(dir); err != nil {
				errs = append(errs, err)
			} else {
				removed = append(removed, dir)
			}
		}
	}
	return removed, errors.Join(errs...)
}

// runPrefix starts the names the demo gives `trireme run` PUs (the daemon
// names their namespaces trireme-NAME).
const runPrefix = "trireme-reports-"

// RunName is the PU name of the demo's i-th trireme run.
func (e *Env) RunName(i int) string { return fmt.Sprintf("reports-%s-%d", e.Suffix, i) }

func (e *Env) newNetns(name string) error {
	h, err := netsetup.CreateNetns(name)
	if err != nil {
		return err
	}
	h.Close()
	e.mu.Lock()
	e.created = append(e.created, name)
	e.mu.Unlock()
	return nil
}

// NetnsPath is the path of a named namespace.
func NetnsPath(name string) string { return filepath.Join(netsetup.NetnsDir, name) }

func (e *Env) writePKI() error {
	now := time.Now()
	ca, caKey, err := tokens.NewCA("trireme demo CA", now.Add(-time.Minute), 24*time.Hour)
	if err != nil {
		return err
	}
	cert, key, err := tokens.IssueNode(ca, caKey, NodeName, now.Add(-time.Minute), 12*time.Hour)
	if err != nil {
		return err
	}
	keyPEM, err := tokens.KeyPEM(key)
	if err != nil {
		return err
	}
	dir := filepath.Join(e.Dir, "pki")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for name, data := range map[string][]byte{"ca.crt": tokens.CertificatePEM(ca), "node.crt": tokens.CertificatePEM(cert), "node.key": keyPEM} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			return err
		}
	}
	return nil
}

// writeConfig writes the daemon's config (node.Config.Marshal, through the
// launcher tests and perf use too) and reads it back as the daemon will.
func (e *Env) writeConfig(opts Options) error {
	policy, err := filepath.Abs(opts.Policy)
	if err != nil {
		return err
	}
	pki := filepath.Join(e.Dir, "pki")
	cfg := &node.Config{Node: NodeName, Policy: policy, FlowLog: e.FlowLog(), Socket: e.Socket(),
		StateDir: filepath.Join(e.Dir, "state"),
		Secrets:  node.Secrets{CACert: filepath.Join(pki, "ca.crt"), NodeCert: filepath.Join(pki, "node.crt"), NodeKey: filepath.Join(pki, "node.key")},
		Bridge:   node.Bridge{Name: bridgeName, Subnet: node.Prefix{Prefix: e.Subnet}}}
	if e.docker != nil {
		cfg.Docker = node.Docker{Enabled: true, Host: e.docker.Host()}
	}
	l, err := launch.Write(e.Dir, e.Binary, cfg)
	if err != nil {
		return err
	}
	l.Netns, l.Args, l.ReadyTimeout = e.Node, []string{"--log-level", "info"}, 20*time.Second
	c, err := node.LoadConfig(l.ConfigPath)
	if err != nil {
		return err
	}
	e.ConfigPath, e.Config, e.daemon = l.ConfigPath, c, l
	return nil
}

// FlowLog is the daemon's flow log.
func (e *Env) FlowLog() string { return filepath.Join(e.Dir, "flows.jsonl") }

// Socket is the daemon's control socket.
func (e *Env) Socket() string { return filepath.Join(e.Dir, "trireme.sock") }

// Client talks to the daemon.
func (e *Env) Client() *node.Client { return node.NewClient(e.Socket()) }

// DaemonLog returns the end of the daemon's log.
func (e *Env) DaemonLog() string {
	if e.daemon == nil {
		return ""
	}
	b := e.daemon.Logs()
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return b
}

// startNodeDocker makes the node bridge (as the daemon would) so that
// dockerd can use it, and starts the engine.
func (e *Env) startNodeDocker(ctx context.Context) error {
	err := netsetup.InNamedNetns(e.Node, func() error {
		_, err := netsetup.EnsureBridge(netsetup.BridgeConfig{Name: bridgeName,
			Gateways: []netip.Prefix{netip.PrefixFrom(e.Subnet.Addr().Next(), e.Subnet.Bits())}})
		return err
	})
	if err != nil {
		return err
	}
	return e.startDocker(ctx)
}

// nsPath: a namespace name or a path (/proc/PID/ns/net).
func nsPath(ns string) string {
	if strings.Contains(ns, "/") {
		return ns
	}
	return NetnsPath(ns)
}

// start runs the trireme binary in the namespace ns with its output to the
// file name.log in Dir (or to out when not nil).
func (e *Env) start(ns, name string, out io.Writer, args ...string) (*proc, error) {
	return e.startCmd(ns, name, out, e.Binary, args...)
}

// startCmd is start for any program.
func (e *Env) startCmd(ns, name string, out io.Writer, prog string, args ...string) (*proc, error) {
	cmd := exec.Command(prog, args...)
	if out == nil {
		f, err := os.OpenFile(filepath.Join(e.Dir, name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		out = f
	}
	cmd.Stdout, cmd.Stderr = out, out
	// Own process group: the terminal's ^C reaches the demo only, which
	// then stops everything in order. Pdeathsig: nothing outlives a demo
	// that was killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := process.Start(nsPath(ns), cmd); err != nil {
		return nil, fmt.Errorf("start %s in %s: %w", name, ns, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	go func() { cmd.Wait(); close(p.done) }()
	return p, nil
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *proc) stop(sig syscall.Signal, grace time.Duration) {
	if p.exited() {
		return
	}
	p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(grace):
		p.cmd.Process.Kill()
		<-p.done
	}
}

func (e *Env) startDaemon(ctx context.Context) error {
	return e.daemon.Start(ctx)
}

// AddHost creates a host's namespace and joins it to the node bridge: its
// address on eth0 (with the subnet's length when it is in the node subnet,
// else /32) and an on-link default route, so that every host reaches every
// other over the bridge without a router.
func (e *Env) AddHost(h *Host) error {
	ns := fmt.Sprintf("%s%s-%s", NamePrefix, e.Suffix, h.Name)
	if len(ns) > 60 {
		return fmt.Errorf("host name %q too long", h.Name)
	}
	if err := e.newNetns(ns); err != nil {
		return err
	}
	e.hostNS[h.Name] = ns
	e.hosts[h.Name] = h
	bits := h.Addr.BitLen()
	if e.Subnet.Contains(h.Addr) {
		bits = e.Subnet.Bits()
	}
	veth := fmt.Sprintf("dh%d", e.nextVeth)
	e.nextVeth++
	err := netsetup.InNamedNetns(e.Node, func() error {
		_, err := netsetup.AttachPU(netsetup.PUConfig{Netns: ns, Bridge: bridgeName, HostVeth: veth,
			Addrs: []netip.Prefix{netip.PrefixFrom(h.Addr, bits)}})
		return err
	})
	if err != nil {
		return fmt.Errorf("host %s: %w", h.Name, err)
	}
	if bits == h.Addr.BitLen() {
		// Outside the node subnet: the node routes to it over the bridge,
		// for PUs that use the node as their gateway (trireme run's).
		err := netsetup.InNamedNetns(e.Node, func() error {
			br, err := netlink.LinkByName(bridgeName)
			if err != nil {
				return err
			}
			if err := netsetup.WriteSysctl("/proc/sys/net/ipv4/ip_forward", "1"); err != nil {
				return err
			}
			return netlink.RouteReplace(&netlink.Route{LinkIndex: br.Attrs().Index, Scope: netlink.SCOPE_LINK,
				Dst: &net.IPNet{IP: net.IP(h.Addr.AsSlice()), Mask: net.CIDRMask(32, 32)}})
		})
		if err != nil {
			return fmt.Errorf("host %s: route on the node: %w", h.Name, err)
		}
	}
	return netsetup.InNamedNetns(ns, func() error {
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		r := &netlink.Route{LinkIndex: l.Attrs().Index, Scope: netlink.SCOPE_LINK,
			Dst: &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}}
		if err := netlink.RouteReplace(r); err != nil {
			return fmt.Errorf("host %s: default route: %w", h.Name, err)
		}
		return nil
	})
}

// Addr returns the address of a host added with AddHost.
func (e *Env) Addr(host string) netip.Addr {
	if h := e.hosts[host]; h != nil {
		return h.Addr
	}
	return netip.Addr{}
}

// WaitPUs waits until the daemon polices n PUs of the given kind and
// returns them.
func (e *Env) WaitPUs(ctx context.Context, kind string, n int, limit time.Duration) ([]node.PUInfo, error) {
	var got []node.PUInfo
	deadline := time.Now().Add(limit)
	for {
		pus, err := e.Client().ListPUs()
		if err == nil {
			got = got[:0]
			for _, p := range pus {
				if p.Kind == kind && p.State == node.PURunning {
					got = append(got, p)
				}
			}
			if len(got) >= n {
				return got, nil
			}
			err = fmt.Errorf("%d of %d %s PUs policed", len(got), n, kind)
		}
		if time.Now().After(deadline) {
			return got, fmt.Errorf("not ready after %v: %w", limit, err)
		}
		select {
		case <-ctx.Done():
			return got, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Namespace returns the namespace of a host added with AddHost.
func (e *Env) Namespace(host string) string { return e.hostNS[host] }

// Attach asks the daemon to police a host as a PU with its labels.
func (e *Env) Attach(h *Host) (node.PUInfo, error) {
	return e.Client().AttachPU(node.AttachRequest{NetNS: e.hostNS[h.Name], Name: h.Name, Labels: h.Labels})
}

// Serve starts `trireme probe serve` in a host on its ports and waits until
// it is ready.
func (e *Env) Serve(ctx context.Context, h *Host) error {
	args := []string{"probe", "serve", "--name", h.Name}
	if len(h.TCP) > 0 {
		args = append(args, "--tcp", joinInts(h.TCP))
	}
	if len(h.UDP) > 0 {
		args = append(args, "--udp", joinInts(h.UDP))
	}
	ready := &readyWriter{ch: make(chan struct{})}
	p, err := e.start(e.hostNS[h.Name], "serve-"+h.Name, ready, args...)
	if err != nil {
		return err
	}
	e.mu.Lock()
	e.procs = append(e.procs, p)
	e.mu.Unlock()
	select {
	case <-ready.ch:
		return nil
	case <-p.done:
		return fmt.Errorf("probe server in %s exited: %s", h.Name, ready.String())
	case <-time.After(10 * time.Second):
		return fmt.Errorf("probe server in %s not ready: %s", h.Name, ready.String())
	case <-ctx.Done():
		return ctx.Err()
	}
}

func joinInts(xs []int) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = fmt.Sprint(x)
	}
	return strings.Join(s, ",")
}

// readyWriter closes ch when "ready" has been written.
type readyWriter struct {
	mu   sync.Mutex
	b    strings.Builder
	ch   chan struct{}
	done bool
}

func (w *readyWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.b.Write(p)
	if !w.done && strings.Contains(w.b.String(), "ready\n") {
		w.done = true
		close(w.ch)
	}
	return len(p), nil
}

func (w *readyWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

// Close stops the servers and the daemon, purges what the daemon put in
// the node (`trireme daemon purge`), deletes every namespace and the
// working directory. It is safe to call more than once.
func (e *Env) Close() error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil
	}
	e.closed = true
	procs, daemon, created, docker := e.procs, e.daemon, e.created, e.docker
	e.mu.Unlock()
	var errs []error
	if docker != nil {
		errs = append(errs, docker.Close())
	}
	var wg sync.WaitGroup
	for _, p := range procs {
		wg.Add(1)
		go func() { defer wg.Done(); p.stop(syscall.SIGTERM, 2*time.Second) }()
	}
	wg.Wait()
	if daemon != nil {
		if err := daemon.Stop(syscall.SIGTERM, 10*time.Second); err != nil {
			errs = append(errs, err)
		}
	}
	if e.Config != nil && netsetup.NetnsExists(e.Node) {
		if err := netsetup.InNamedNetns(e.Node, func() error { return node.Purge(e.Config) }); err != nil {
			errs = append(errs, fmt.Errorf("purge: %w", err))
		}
	}
	// Hosts first, the node last: the veths go with the host namespaces.
	for i := len(created) - 1; i >= 0; i-- {
		if err := netsetup.DeleteNetns(created[i]); err != nil {
			errs = append(errs, err)
		}
	}
	if keep := os.Getenv("TRIREME_DEMO_KEEP_LOGS"); keep != "" && e.Dir != "" {
		// For diagnosis: keep the flow log and the daemon log.
		for _, f := range []string{"flows.jsonl", "daemon.log"} {
			if b, err := os.ReadFile(filepath.Join(e.Dir, f)); err == nil {
				os.WriteFile(filepath.Join(keep, f), b, 0o600)
			}
		}
	}
	if e.Dir != "" {
		if err := os.RemoveAll(e.Dir); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
