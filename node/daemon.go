package node

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/trireme-go/trireme/dataplane"
	"github.com/trireme-go/trireme/identity"
	"github.com/trireme-go/trireme/ipproto"
	"github.com/trireme-go/trireme/monitor"
	"github.com/trireme-go/trireme/monitor/docker"
	"github.com/trireme-go/trireme/netsetup"
	"github.com/trireme-go/trireme/netsetup/inject"
	"github.com/trireme-go/trireme/netsetup/steer"
	"github.com/trireme-go/trireme/netsetup/tap"
	"github.com/trireme-go/trireme/policy"
	"github.com/trireme-go/trireme/reason"
	"github.com/trireme-go/trireme/resolver"
	"github.com/trireme-go/trireme/tokens"
)

// Kernel timeouts of authorized flows. When an entry expires while its flow
// is still alive, the next packet reaches the dataplane, which still tracks
// the flow and authorizes it again: one packet per timeout goes through
// userspace, and a flow that really ended leaves the kernel on its own.
const (
	kernelTCPTimeout      = 5 * time.Minute
	kernelDatagramTimeout = 60 * time.Second
)

// Daemon is one node's enforcer: it owns the node bridge, the steering
// table, one pair of TAPs per PU and the enforcement core, and serves the
// control API.
type Daemon struct {
	cfg *Config
	log *slog.Logger

	res   *resolver.File
	tok   *tokens.Engine
	enf   *dataplane.Enforcer
	steer *steer.Steerer
	// Frames leaving a PU are injected into the PU's own bridge (the node
	// bridge, or Docker's) through an injection port on that bridge.
	injMu    sync.Mutex
	injPorts map[string]*inject.Injector // by bridge name
	sink     *asyncSink
	api      *Server
	reaper   *tapReaper

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	ops        chan kernelOp // to kernelLoop
	steerNames sync.Map      // *dataplane.PU -> steering name

	// owner marks the links the daemon creates (netsetup/owner.go);
	// bridgeAddrs are the addresses it added to a node bridge it did not
	// create: purge removes those and nothing else of it.
	owner       string
	bridgeAddrs []netip.Prefix
	// retired holds the kernel drop counters of PUs already removed, so
	// that the node-wide drop counts never go down.
	retired kernelDrops

	mu         sync.Mutex
	pus        map[string]*livePU // by PU ID
	excluded   []netip.Prefix     // added at runtime
	policyExcl []netip.Prefix     // excluded by the policy in force (and the config)
	// stalled are PUs of the previous run that could not be restored but
	// are kept closed (their state stays for the next restart).
	stalled []*livePU
	// byVeth and byNetns index d.pus for checkAttachable.
	byVeth  map[string]*livePU
	byNetns map[nsID]*livePU
	ipam    *ipam
	started time.Time
}

// livePU is a PU being enforced.
type livePU struct {
	info   PUInfo
	steer  string // name in the steering table
	tapIn  string // TAP names (persistent)
	tapOut string
	owned  bool // the namespace and veth were created by trireme
	netns  nsID // identity of its namespace (checkAttachable)
	mac    net.HardwareAddr

	dp      *dataplane.PU
	in      *tap.Tap
	out     *tap.Tap
	toPU    *inject.Injector
	toNet   *inject.Injector // the injection port of the PU's bridge (shared)
	readers sync.WaitGroup
}

// SteerName is the name of a PU in the steering tables (steer.PU.Name).
func SteerName(id string) string {
	n, _, _, _ := puNames(id)
	return n
}

// TapNames are the names of a PU's TAPs.
func TapNames(id string) (in, out string) {
	_, in, out, _ = puNames(id)
	return in, out
}

// puNames derives the steering name and the TAP and veth names of a PU from
// its ID: stable across restarts, at most 15 bytes for interface names.
func puNames(id string) (steerName, tapIn, tapOut, veth string) {
	h := sha256.Sum256([]byte(id))
	x := hex.EncodeToString(h[:5])
	return "pu" + x, "tri" + x, "tro" + x, "trv" + x
}

// New prepares a daemon from a validated config: it loads the secrets and
// the policy, and fails without changing anything in the kernel if either
// is bad.
func New(cfg *Config, log *slog.Logger) (*Daemon, error) {
	if log == nil {
		log = slog.Default()
	}
	var sec tokens.Secrets
	var err error
	if cfg.Secrets.PKI() {
		sec, err = tokens.LoadPKI(cfg.Secrets.CACert, cfg.Secrets.NodeCert, cfg.Secrets.NodeKey)
	} else {
		sec, err = tokens.LoadPSK(cfg.Secrets.PSKFile)
	}
	if err != nil {
		return nil, fmt.Errorf("secrets: %w", err)
	}
	tok, err := tokens.New(tokens.Config{Node: tokenNode(cfg, sec), Secrets: sec, Refresh: cfg.TokenRefresh})
	if err != nil {
		return nil, fmt.Errorf("tokens: %w", err)
	}
	res, err := resolver.NewFile(cfg.Policy, resolver.FileOptions{Logger: log})
	if err != nil {
		return nil, err
	}
	d := &Daemon{cfg: cfg, log: log, res: res, tok: tok, pus: map[string]*livePU{}, ops: make(chan kernelOp, 4096), owner: ownerMark(cfg.Node)}
	d.sink = newAsyncSink(log)
	d.reaper = newTapReaper(log)
	eff := d.effectivePolicy(res.Current())
	d.policyExcl = eff.Set().ExcludedNetworks
	d.enf, err = dataplane.New(dataplane.Config{
		Tokens:    tok,
		Policy:    eff,
		MidStream: cfg.MidStream.MidStream,
		Sink:      d.sink,
		// Authorized flows' packets stay in the kernel (steering).
		KernelBypass: true,
		Flows:        cfg.FlowTable.Flows(),
		// Flows close in the kernel: record each decision when it is made.
		RecordEstablished: true,
	})
	if err != nil {
		return nil, err
	}
	d.ipam = newIPAM(cfg.Bridge.Subnet.Prefix)
	return d, nil
}

// tokenNode: in PKI mode the certificate names the node, and the config's
// node name is only used for local names.
func tokenNode(cfg *Config, sec tokens.Secrets) string {
	if cfg.Secrets.PKI() {
		return ""
	}
	return cfg.Node
}

// effectivePolicy adds the config's target and excluded networks to the
// policy file's.
func (d *Daemon) effectivePolicy(e *policy.Engine) *policy.Engine {
	if len(d.cfg.TargetNetworks) == 0 && len(d.cfg.ExcludedNetworks) == 0 {
		return e
	}
	s := *e.Set()
	s.TargetNetworks = append(append([]netip.Prefix(nil), s.TargetNetworks...), d.cfg.TargetNetworks...)
	s.ExcludedNetworks = append(append([]netip.Prefix(nil), s.ExcludedNetworks...), d.cfg.ExcludedNetworks...)
	merged, err := policy.Compile(&s)
	if err != nil {
		// The file compiled alone; adding valid prefixes cannot break it.
		d.log.Error("merging config networks into the policy", "err", err)
		return e
	}
	return merged
}

// Start plumbs the node, restores the PUs of a previous run, and starts
// enforcing and serving the control API.
func (d *Daemon) Start(ctx context.Context) error {
	d.ctx, d.cancel = context.WithCancel(ctx)
	d.started = time.Now()
	if err := os.MkdirAll(d.cfg.StateDir, 0o700); err != nil {
		return err
	}
	if err := d.sink.open(d.cfg.flowLog()); err != nil {
		return fmt.Errorf("flow log: %w", err)
	}
	if err := d.setupBridge(); err != nil {
		return err
	}
	if _, err := d.injectorFor(d.cfg.Bridge.Name); err != nil {
		return err
	}
	var err error
	if d.steer, err = steer.Open(steer.Config{Node: d.cfg.Node, Budget: d.cfg.PUPacketBudget.Budget()}); err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	if removed, err := steer.DeleteStaleTables(0, d.cfg.Node); err != nil {
		return fmt.Errorf("nftables: removing stale tables: %w", err)
	} else if len(removed) > 0 {
		d.log.Info("removed stale nftables tables", "tables", removed)
	}

	t0 := time.Now()
	restored := d.loadState()
	keep := map[string]bool{}
	for _, p := range restored {
		keep[p.tapIn], keep[p.tapOut] = true, true
	}
	d.reaper.retire(strayTaps(keep, d.owner)...)
	d.wg.Add(1)
	go func() { defer d.wg.Done(); d.reaper.run(d.ctx) }()
	// Opening a PU's TAPs is a dozen system calls that mostly wait for
	// the kernel: a few at a time.
	opened := make([]error, len(restored))
	var wg sync.WaitGroup
	next := make(chan int)
	for range min(4, len(restored)) {
		wg.Go(func() {
			for i := range next {
				opened[i] = d.openPU(restored[i])
			}
		})
	}
	for i := range restored {
		next <- i
	}
	close(next)
	wg.Wait()
	var steered []steer.PU
	var ready []*livePU
	for i, p := range restored {
		if err := opened[i]; err != nil {
			// Its namespace and veth are there: leaving it out would
			// delete its chains and leave it unpoliced. If its TAPs
			// exist, its chains steer into them, unread: it stays
			// closed (no new connection) until a restart restores it.
			if sp, ok := closedPU(p); ok {
				d.log.Error("could not restore PU: it stays closed until the daemon restarts", "pu", p.info.ID, "err", err)
				steered = append(steered, sp)
				d.stalled = append(d.stalled, p)
				continue
			}
			d.log.Error("could not restore PU, nor keep it closed (its TAPs are gone)", "pu", p.info.ID, "err", err)
			continue
		}
		ready = append(ready, p)
		steered = append(steered, p.steerPU())
	}
	t1 := time.Now()
	excluded := append(append([]netip.Prefix(nil), d.policyExcl...), d.excluded...)
	if err := d.steer.Apply(steered, excluded); err != nil {
		for _, p := range ready {
			p.close()
		}
		return fmt.Errorf("nftables: %w", err)
	}
	t2 := time.Now()
	flows, missed := 0, 0
	for _, p := range ready {
		d.pus[p.info.ID] = p
		d.indexPU(p)
		// The enforcer learns the PU's flows before its first packet is
		// read: a packet of an established flow is not taken for one
		// of an unknown flow.
		d.register(p)
		r, m := d.restoreFlows(p, t2)
		flows, missed = flows+r, missed+m
		d.startReaders(p)
		d.log.Debug("restored PU", "pu", p.info.ID, "name", p.info.Name)
	}
	t3 := time.Now()
	d.saveState()
	if missed > 0 {
		d.log.Warn("authorized flows the enforcer could not take back (flow table full): they keep flowing in the kernel until their entry expires, then are handled as unknown (midStream)",
			"flows", missed, "restored", flows)
	}
	if len(restored) > 0 {
		d.log.Info("restored the PUs of the previous run", "pus", len(d.pus), "flows", flows, "took", time.Since(t0).Round(time.Millisecond),
			"open", t1.Sub(t0).Round(time.Millisecond), "steering", t2.Sub(t1).Round(time.Millisecond), "flows-took", t3.Sub(t2).Round(time.Millisecond))
	}

	if d.api, err = Serve(d.cfg.Socket, d); err != nil {
		return fmt.Errorf("control socket: %w", err)
	}
	if d.cfg.Docker.Enabled {
		mon, err := docker.New(docker.Config{Host: d.cfg.Docker.Host, Logger: d.log})
		if err != nil {
			return fmt.Errorf("docker monitor: %w", err)
		}
		events := make(chan monitor.Event, 256)
		d.wg.Add(2)
		go func() { defer d.wg.Done(); monitor.RunAll(d.ctx, events, d.log, time.Second, mon) }()
		go d.eventLoop(events)
	}
	d.wg.Add(4)
	go d.kernelLoop()
	go d.expireLoop()
	go d.policyLoop()
	go func() { defer d.wg.Done(); _ = d.res.Run(d.ctx) }()
	d.log.Info("daemon started", "node", d.cfg.Node, "bridge", d.cfg.Bridge.Name, "pus", len(d.pus), "socket", d.cfg.Socket)
	return nil
}

// Stop stops enforcing. The steering table and the TAPs stay: until a
// daemon runs again, policed PUs cannot open new connections (fail closed)
// while their authorized flows continue. Purge removes everything.
func (d *Daemon) Stop() {
	if d.api != nil {
		d.api.Close()
	}
	d.cancel()
	d.mu.Lock()
	for _, p := range d.pus {
		p.close()
	}
	d.mu.Unlock()
	d.wg.Wait()
	d.mu.Lock()
	for _, p := range d.pus {
		p.readers.Wait()
	}
	d.mu.Unlock()
	if d.steer != nil {
		d.steer.Close()
	}
	d.injMu.Lock()
	for _, j := range d.injPorts {
		j.Close()
	}
	d.injMu.Unlock()
	d.sink.close()
	d.log.Info("daemon stopped; steering stays in place (fail closed)")
}

// injectorFor returns the injector of the bridge's injection port, creating
// the port on first use.
func (d *Daemon) injectorFor(bridge string) (*inject.Injector, error) {
	d.injMu.Lock()
	defer d.injMu.Unlock()
	if j, ok := d.injPorts[bridge]; ok {
		return j, nil
	}
	host, br, err := injectionPortNames(bridge)
	if err != nil {
		return nil, err
	}
	port, err := netsetup.EnsureInjectionPort(bridge, host, br, d.owner)
	if err != nil {
		return nil, fmt.Errorf("injection port on %s: %w", bridge, err)
	}
	// Frames sent into the bridge carry no mark: a PU on this node that
	// receives them must still see them steered into its own enforcer.
	j, err := inject.New(port.HostIndex, 0)
	if err != nil {
		return nil, fmt.Errorf("injection port on %s: %w", bridge, err)
	}
	if d.injPorts == nil {
		d.injPorts = map[string]*inject.Injector{}
	}
	d.injPorts[bridge] = j
	return j, nil
}

// injectionPortNames: the veth pair of a bridge's injection port.
func injectionPortNames(bridge string) (host, br string, err error) {
	if host, err = netsetup.DeviceName("tij", bridge, "h"); err != nil {
		return "", "", err
	}
	br, err = netsetup.DeviceName("tij", bridge, "b")
	return host, br, err
}

// ---- PUs ----

func (p *livePU) steerPU() steer.PU {
	return steer.PU{Name: p.steer, Veth: p.info.Veth, TapIn: p.in.Index(), TapOut: p.out.Index(), MAC: p.mac, Addrs: p.info.Addrs}
}

// closedPU is the steering of a PU whose TAPs exist but that could not be
// opened: its rules steer into TAPs nobody reads.
func closedPU(p *livePU) (steer.PU, bool) {
	in, err1 := linkIndex(p.tapIn)
	out, err2 := linkIndex(p.tapOut)
	if err1 != nil || err2 != nil {
		return steer.PU{}, false
	}
	return steer.PU{Name: p.steer, Veth: p.info.Veth, TapIn: in, TapOut: out, MAC: p.mac, Addrs: p.info.Addrs}, true
}

func (p *livePU) close() {
	if p.in != nil {
		p.in.Close()
	}
	if p.out != nil {
		p.out.Close()
	}
	if p.toPU != nil {
		p.toPU.Close()
	}
}

// openPU opens (creating if needed) the PU's TAPs and its injector.
func (d *Daemon) openPU(p *livePU) error {
	idx, err := linkIndex(p.info.Veth)
	if err != nil {
		return fmt.Errorf("host veth %s: %w", p.info.Veth, err)
	}
	d.reaper.reclaim(p.tapIn)
	d.reaper.reclaim(p.tapOut)
	if p.in, err = tap.OpenOwned(p.tapIn, d.owner); err != nil {
		return err
	}
	if p.out, err = tap.OpenOwned(p.tapOut, d.owner); err != nil {
		p.close()
		return err
	}
	if p.toPU, err = inject.New(idx, d.steer.Mark()); err != nil {
		p.close()
		return err
	}
	bridge := p.info.Bridge
	if bridge == "" {
		bridge = d.cfg.Bridge.Name
	}
	if p.toNet, err = d.injectorFor(bridge); err != nil {
		p.close()
		return err
	}
	return nil
}

// enforce registers the PU with the enforcement core and starts its readers.
func (d *Daemon) enforce(p *livePU) {
	d.register(p)
	d.startReaders(p)
}

// register adds the PU to the enforcement core.
func (d *Daemon) register(p *livePU) {
	p.dp = d.enf.AddPU(p.info.ID, identity.NewTags(p.info.Tags))
	d.steerNames.Store(p.dp, p.steer)
	p.info.State = PURunning
}

// startReaders starts reading the PU's TAPs.
func (d *Daemon) startReaders(p *livePU) {
	p.readers.Add(2)
	go d.readLoop(p, p.in, dataplane.FromApp)
	go d.readLoop(p, p.out, dataplane.FromNet)
}

// restoreFlows gives the enforcer back the flows the kernel still holds as
// authorized, so that established connections survive a restart. It
// returns the number restored and the number the enforcer did not take
// (its table full): those keep flowing in the kernel until their entry
// expires, then their packets reach an enforcer that does not know them.
func (d *Daemon) restoreFlows(p *livePU, now time.Time) (restored, missed int) {
	entries, err := d.steer.List(p.steer)
	if err != nil {
		d.log.Warn("listing authorized flows", "pu", p.info.ID, "err", err)
		return 0, 0
	}
	for _, e := range entries {
		t := e.Tuple
		// Each flow is listed in both directions; keep the one that
		// starts at the PU.
		if !containsAddr(p.info.IPs, t.Src) && !slices.ContainsFunc(p.info.Addrs, func(a netip.Prefix) bool { return a.Addr() == t.Src }) {
			continue // link-local flows start at an address of Addrs
		}
		if d.enf.Restore(p.dp, t.Proto, netip.AddrPortFrom(t.Src, t.SrcPort), netip.AddrPortFrom(t.Dst, t.DstPort), now) {
			restored++
		} else {
			missed++
		}
	}
	if restored > 0 {
		d.log.Debug("restored authorized flows", "pu", p.info.ID, "flows", restored)
	}
	return restored, missed
}

// containsAddrOf reports whether a prefix of ps contains a.
func containsAddrOf(ps []netip.Prefix, a netip.Addr) bool {
	for _, p := range ps {
		if p.Contains(a.Unmap()) {
			return true
		}
	}
	return false
}

func containsAddr(ips []netip.Addr, a netip.Addr) bool {
	for _, ip := range ips {
		if ip == a {
			return true
		}
	}
	return false
}

// addPU starts enforcing a running PU described by a monitor. A PU whose
// ID is known already is not an error for monitors (they resync); for the
// control API (exclusive) it is a conflict, and so is a namespace or veth
// that is policed already, and a namespace that would break the node.
func (d *Daemon) addPU(mp monitor.PU, owned, exclusive bool) (PUInfo, error) {
	if ok, why := mp.Enforceable(); !ok {
		return PUInfo{}, fmt.Errorf("%w: %s: %s", ErrInvalid, mp.Name, why)
	}
	if len(mp.MAC) != 6 {
		return PUInfo{}, fmt.Errorf("%w: %s: no Ethernet address known for its interface: it cannot be policed", ErrInvalid, mp.Name)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if old, ok := d.pus[mp.ID]; ok {
		if exclusive {
			return PUInfo{}, fmt.Errorf("%w: a PU named %s exists (%s)", ErrConflict, mp.Name, old.info.ID)
		}
		return old.info, nil // monitors resync: a known PU is not an error
	}
	if exclusive && !owned {
		if err := d.checkAttachable(&mp); err != nil {
			return PUInfo{}, err
		}
	}
	steerName, tin, tout, _ := puNames(mp.ID)
	p := &livePU{
		info: PUInfo{ID: mp.ID, Name: mp.Name, Kind: mp.Kind.String(), NetNS: mp.NetNS, PID: mp.PID,
			IPs: mp.IPs, Tags: mp.Tags.Map(), Veth: mp.HostVeth, Bridge: mp.Bridge, State: PUStarting, Created: time.Now(),
			MAC: mp.MAC.String(), Addrs: mp.Addrs},
		steer: steerName, tapIn: tin, tapOut: tout, owned: owned, mac: mp.MAC,
	}
	if err := d.openPU(p); err != nil {
		return PUInfo{}, err
	}
	if err := d.steer.AddPU(p.steerPU()); err != nil {
		p.close()
		return PUInfo{}, fmt.Errorf("steering: %w", err)
	}
	d.pus[p.info.ID] = p
	d.indexPU(p)
	for _, a := range p.info.Addrs {
		if containsAddrOf(d.policyExcl, a.Addr()) || containsAddrOf(d.excluded, a.Addr()) {
			// Its peers let traffic from that address in unchecked; the
			// PU's own traffic is still checked (its chain matches
			// excluded networks on the peer only).
			d.log.Warn("PU holds an address of the excluded networks: PUs it talks to will not check it", "pu", p.info.ID, "addr", a.Addr())
		}
	}
	if !owned {
		// Attached namespaces and containers on the node bridge hold
		// addresses of the node subnet: never hand them out again.
		// They stay reserved after the PU goes (its namespace may not).
		for _, ip := range p.info.IPs {
			if d.ipam.subnet.Contains(ip) {
				d.ipam.reserve(ip)
			}
		}
	}
	d.enforce(p)
	d.savePULocked(p)
	d.log.Info("enforcing PU", "pu", p.info.ID, "name", p.info.Name, "kind", p.info.Kind, "veth", p.info.Veth, "tags", identity.NewTags(p.info.Tags).String())
	return p.info, nil
}

// mergeTags overlays orchestrator-set tags on a PU's tags (they win).
func mergeTags(base identity.Tags, over map[string]string) identity.Tags {
	m := base.Map()
	for k, v := range over {
		m[k] = v
	}
	return identity.NewTags(m)
}

// removePU stops enforcing a PU: its flows are closed, its chains and TAPs
// removed, and a namespace trireme created is deleted.
func (d *Daemon) removePU(id string) error {
	d.mu.Lock()
	p, ok := d.pus[id]
	if !ok {
		d.mu.Unlock()
		return fmt.Errorf("PU %s: %w", id, ErrNotFound)
	}
	delete(d.pus, id)
	d.unindexPU(p)
	d.dropPUState(id)
	d.mu.Unlock()

	d.steerNames.Delete(p.dp)
	var out dataplane.Output
	d.enf.RemovePU(p.dp, time.Now(), &out)
	p.close()
	p.readers.Wait()
	if c, err := d.steer.Counters(p.steer); err == nil {
		d.retired.add(c)
	}
	err := d.steer.RemovePU(p.steer)
	// Unsteered now: the TAPs go in the background (see tapReaper).
	d.reaper.retire(p.tapIn, p.tapOut)
	if p.owned {
		err = errors.Join(err, netsetup.DetachPU(p.info.Veth))
		if name, ok := strings.CutPrefix(p.info.NetNS, netsetup.NetnsDir+"/"); ok {
			err = errors.Join(err, netsetup.DeleteNetns(name))
		}
		for _, ip := range p.info.IPs {
			d.ipam.release(ip)
		}
	}
	d.log.Info("stopped enforcing PU", "pu", id)
	return err
}

// ---- packet loops ----

// readLoop reads one TAP and runs each frame through the enforcer.
func (d *Daemon) readLoop(p *livePU, t *tap.Tap, dir dataplane.Direction) {
	defer p.readers.Done()
	io := newFrameIO(d, p)
	for {
		n, err := t.Read(io.buf)
		if err != nil {
			if tap.IsClosed(err) || d.ctx.Err() != nil {
				return
			}
			if errors.Is(err, tap.ErrTruncated) {
				continue // counted by the TAP; a frame we cannot hold whole is dropped
			}
			d.log.Error("tap read", "tap", t.Name(), "err", err)
			return
		}
		io.process(dir, n, time.Now())
	}
}

// expireLoop runs the flow timers once a second.
func (d *Daemon) expireLoop() {
	defer d.wg.Done()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var out dataplane.Output
	for {
		select {
		case <-d.ctx.Done():
			return
		case now := <-tick.C:
			out.Notes = out.Notes[:0]
			d.enf.Expire(now, &out)
			d.queueNotes(out.Notes)
		}
	}
}

// kernelOp is one change to a PU's authorized set.
type kernelOp struct {
	authorize bool
	pu        string // steering name
	tuple     steer.Tuple
	timeout   time.Duration
}

// queueNotes hands the enforcer's notes to kernelLoop. The packet path
// never waits for a netlink transaction; when the queue is full it waits
// for room (back-pressure), as dropping a revoke would leave a flow in the
// kernel.
func (d *Daemon) queueNotes(notes []dataplane.Note) {
	for i := range notes {
		n := &notes[i]
		if n.PU == nil {
			continue
		}
		name, ok := d.steerNames.Load(n.PU)
		if !ok {
			continue // the PU is being removed: its set goes with it
		}
		op := kernelOp{authorize: n.Kind == dataplane.Authorize, pu: name.(string),
			tuple: steer.Tuple{Src: n.Local.Addr(), Dst: n.Remote.Addr(), Proto: n.Proto, SrcPort: n.Local.Port(), DstPort: n.Remote.Port()}}
		if op.authorize {
			op.timeout = kernelDatagramTimeout
			if n.Proto == ipproto.TCP {
				op.timeout = kernelTCPTimeout
			}
		}
		select {
		case d.ops <- op:
		case <-d.ctx.Done():
			return
		}
	}
}

// kernelLoop applies queued authorizations and revocations in batches, in
// the order they were queued.
func (d *Daemon) kernelLoop() {
	defer d.wg.Done()
	b := d.steer.NewBatch()
	var authorized, revoked uint64 // in the batch being built
	add := func(op kernelOp) {
		if op.authorize {
			b.Authorize(op.pu, op.tuple, op.timeout)
			authorized++
		} else {
			b.Revoke(op.pu, op.tuple)
			revoked++
		}
	}
	for {
		select {
		case <-d.ctx.Done():
			return
		case op := <-d.ops:
			add(op)
		drain:
			for b.Len() < 256 {
				select {
				case op := <-d.ops:
					add(op)
				default:
					break drain
				}
			}
			if err := b.Commit(); err != nil {
				if d.ctx.Err() == nil {
					kernelErrors.Add(1)
					d.log.Warn("updating authorized flows", "err", err)
				}
			} else {
				kernelAuthorized.Add(authorized)
				kernelRevoked.Add(revoked)
			}
			authorized, revoked = 0, 0
		}
	}
}

// policyLoop puts each new policy in force.
func (d *Daemon) policyLoop() {
	defer d.wg.Done()
	for {
		select {
		case <-d.ctx.Done():
			return
		case e := <-d.res.Updates():
			eff := d.effectivePolicy(e)
			d.updatePolicyExcluded(eff.Set().ExcludedNetworks)
			d.enf.SetPolicy(eff)
			d.log.Info("policy updated", "policies", len(eff.Set().Policies))
			if d.cfg.OnPolicyChange == PolicyChangeReset {
				var out dataplane.Output
				n := d.enf.Reevaluate(time.Now(), &out)
				d.sendInjected(&out)
				d.queueNotes(out.Notes)
				if n > 0 {
					d.log.Info("reset flows the new policy denies", "flows", n)
				}
			}
		}
	}
}

// updatePolicyExcluded brings the kernel's excluded sets in line with a new
// policy's excluded networks (runtime exclusions stay).
func (d *Daemon) updatePolicyExcluded(next []netip.Prefix) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, p := range diffPrefixes(d.policyExcl, next) {
		if !containsPrefix(d.excluded, p) {
			if err := d.steer.RemoveExcluded(p); err != nil {
				d.log.Warn("removing excluded network", "prefix", p, "err", err)
			}
		}
	}
	for _, p := range diffPrefixes(next, d.policyExcl) {
		if !containsPrefix(d.excluded, p) {
			if err := d.steer.AddExcluded(p); err != nil {
				d.log.Warn("adding excluded network", "prefix", p, "err", err)
			}
		}
	}
	d.policyExcl = next
}

// diffPrefixes returns the prefixes of a that are not in b.
func diffPrefixes(a, b []netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range a {
		if !containsPrefix(b, p) {
			out = append(out, p)
		}
	}
	return out
}

func containsPrefix(ps []netip.Prefix, p netip.Prefix) bool {
	for _, q := range ps {
		if q == p {
			return true
		}
	}
	return false
}

// eventLoop applies the monitors' PU events.
func (d *Daemon) eventLoop(events <-chan monitor.Event) {
	defer d.wg.Done()
	for {
		select {
		case <-d.ctx.Done():
			return
		case ev := <-events:
			switch ev.Type {
			case monitor.Start:
				if ok, why := ev.PU.Enforceable(); !ok {
					d.log.Info("not policing PU", "pu", ev.PU.ID, "name", ev.PU.Name, "source", ev.Source, "why", why)
					continue
				}
				if _, err := d.addPU(ev.PU, false, false); err != nil {
					d.log.Error("policing PU", "pu", ev.PU.ID, "name", ev.PU.Name, "source", ev.Source, "err", err)
				}
			case monitor.Stop, monitor.Destroy:
				if err := d.removePU(ev.PU.ID); err != nil && !errors.Is(err, ErrNotFound) {
					d.log.Warn("removing PU", "pu", ev.PU.ID, "err", err)
				}
			case monitor.Pause, monitor.Unpause:
				// A paused PU keeps its namespace, its flows and its policy.
				state := PUPaused
				if ev.Type == monitor.Unpause {
					state = PURunning
				}
				d.setState(ev.PU.ID, state)
			}
		}
	}
}

func (d *Daemon) setState(id string, state PUState) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if p, ok := d.pus[id]; ok {
		p.info.State = state
	}
}

// ---- Controller ----

// ListPUs implements Controller.
func (d *Daemon) ListPUs() []PUInfo {
	counters, err := d.steer.AllCounters()
	if err != nil {
		d.log.Warn("reading the kernel's counters", "err", err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]PUInfo, 0, len(d.pus))
	for _, p := range d.pus {
		info := p.info
		info.Drops = kernelDropsOf(counters[p.steer])
		out = append(out, info)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// AttachPU implements Controller: police an existing namespace. A namespace
// that has no veth yet is joined to the node bridge with an address from
// the node subnet.
func (d *Daemon) AttachPU(req AttachRequest) (PUInfo, error) {
	path, err := monitor.NetnsPath(req.NetNS)
	if err != nil {
		return PUInfo{}, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if sameNetns(path, "/proc/self/ns/net") {
		return PUInfo{}, fmt.Errorf("%w: %s is the daemon's own network namespace", ErrInvalid, req.NetNS)
	}
	name := req.Name
	if name == "" {
		name = monitor.DefaultName(path)
	}
	if !attachName.MatchString(name) {
		what := "name"
		if req.Name == "" {
			what = "name (from the namespace; give one with --name)"
		}
		return PUInfo{}, fmt.Errorf("%w: %s %q: want 1-63 of [A-Za-z0-9_.-], starting with a letter or digit", ErrInvalid, what, name)
	}
	if err := checkLabels(req.Labels); err != nil {
		return PUInfo{}, err
	}
	if err := checkTags(req.Tags); err != nil {
		return PUInfo{}, err
	}
	d.mu.Lock()
	old, exists := d.pus["netns-"+name]
	d.mu.Unlock()
	if exists {
		return PUInfo{}, fmt.Errorf("%w: a PU named %s exists (%s)", ErrConflict, name, old.info.ID)
	}
	mp, err := monitor.NetnsPU(d.log, monitor.KindNetns, name, path, req.Labels)
	if err != nil {
		return PUInfo{}, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	mp.ID = "netns-" + mp.Name
	if len(req.Tags) > 0 {
		mp.Tags = mergeTags(mp.Tags, req.Tags)
	}
	if mp.HostVeth == "" {
		return PUInfo{}, fmt.Errorf("%w: namespace %s has no veth joined to this node (create PUs with `trireme run` or plumb the namespace first)", ErrInvalid, req.NetNS)
	}
	return d.addPU(mp, false, true)
}

// CreatePU implements Controller: a new namespace on the node bridge.
func (d *Daemon) CreatePU(req CreateRequest) (PUInfo, error) {
	if err := checkLabels(req.Labels); err != nil {
		return PUInfo{}, err
	}
	if !puName.MatchString(req.Name) {
		return PUInfo{}, fmt.Errorf("%w: name %q: want 1-32 of [a-z0-9-]", ErrInvalid, req.Name)
	}
	id := "proc-" + req.Name
	d.mu.Lock()
	_, exists := d.pus[id]
	d.mu.Unlock()
	if exists {
		return PUInfo{}, fmt.Errorf("%w: a PU named %s exists", ErrConflict, req.Name)
	}
	_, _, _, veth := puNames(id)
	nsName := "trireme-" + req.Name
	ip, err := d.ipam.allocate()
	if err != nil {
		return PUInfo{}, err
	}
	ns, err := netsetup.CreateNetns(nsName)
	if err != nil {
		d.ipam.release(ip)
		return PUInfo{}, err
	}
	ns.Close()
	fail := func(err error) (PUInfo, error) {
		netsetup.DetachPU(veth)
		netsetup.DeleteNetns(nsName)
		d.ipam.release(ip)
		return PUInfo{}, err
	}
	addr := netip.PrefixFrom(ip, d.ipam.subnet.Bits())
	link, err := netsetup.AttachPU(netsetup.PUConfig{Netns: nsName, Bridge: d.cfg.Bridge.Name, HostVeth: veth,
		Addrs: []netip.Prefix{addr}, Gateways: []netip.Addr{d.ipam.gateway()}, Owner: d.owner})
	if err != nil {
		return fail(err)
	}
	mp, err := monitor.NetnsPU(d.log, monitor.KindProcess, req.Name, filepath.Join(netsetup.NetnsDir, nsName), req.Labels)
	if err != nil {
		return fail(err)
	}
	mp.ID = id
	// Who it is on the link is what the daemon gave it: its MAC, the
	// address it assigned, and the link-local address of that MAC (read
	// before anything runs in the namespace).
	mp.MAC, mp.Addrs = link.PUMAC, createdAddrs(addr, link.PUMAC, mp.Addrs)
	info, err := d.addPU(mp, true, true)
	if err != nil {
		return fail(err)
	}
	return info, nil
}

// DetachPU implements Controller.
func (d *Daemon) DetachPU(id string) error { return d.removePU(id) }

// AddExcluded implements Controller.
func (d *Daemon) AddExcluded(p netip.Prefix) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, q := range d.excluded {
		if q == p {
			return nil
		}
	}
	if !containsPrefix(d.policyExcl, p) {
		if err := d.steer.AddExcluded(p); err != nil {
			return err
		}
	}
	d.excluded = append(d.excluded, p)
	d.saveExcludedLocked()
	return nil
}

// RemoveExcluded implements Controller.
func (d *Daemon) RemoveExcluded(p netip.Prefix) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	for i, q := range d.excluded {
		if q == p {
			if !containsPrefix(d.policyExcl, p) {
				if err := d.steer.RemoveExcluded(p); err != nil {
					return err
				}
			}
			d.excluded = append(d.excluded[:i], d.excluded[i+1:]...)
			d.saveExcludedLocked()
			return nil
		}
	}
	return fmt.Errorf("excluded network %s: %w", p, ErrNotFound)
}

// Stats implements Controller.
func (d *Daemon) Stats() Stats {
	s := d.enf.Stats()
	st := d.res.Status()
	d.mu.Lock()
	defer d.mu.Unlock()
	out := Stats{
		Node: d.cfg.Node, Started: d.started, PUs: len(d.pus), Flows: s.Flows,
		Counters: map[string]uint64{
			"packets": s.Packets, "forwarded": s.Forwarded, "consumed": s.Consumed,
			"injected": s.Injected, "resets": s.Resets, "evictions": s.Evictions,
			"records-dropped":    d.sink.dropped.Load(),
			"records-written":    d.sink.written.Load(),
			"records-aggregated": d.sink.aggregated.Load(),
			// Times a record waited for room in the flow log's queue.
			"records-waited": d.sink.waits.Load(),
			"io-errors":      ioErrors.Load(),
			"kernel-errors":  kernelErrors.Load(),
			// Flows put in / taken out of the kernel's authorized sets.
			"kernel-authorized": kernelAuthorized.Load(),
			"kernel-revoked":    kernelRevoked.Load(),
			"foreign-frames":    foreignFrames.Load(),
			// RSTs from the network on flows the kernel carries, left to
			// the PU's TCP to judge and followed by a probe.
			"rst-probes": s.Probes,
		},
		Drops:     map[string]uint64{},
		Policy:    PolicyStatus{File: st.File, LoadedAt: st.LoadedAt, Policies: st.Policies, LastError: st.LastError, ErrorAt: st.ErrorAt},
		Excluded:  append([]netip.Prefix(nil), d.excluded...),
		FlowTable: FlowTableStats{Capacity: s.Capacity, PerPU: s.PerPU, Flows: s.Flows, Evictions: s.Evictions},
	}
	kernel, err := d.steer.AllCounters()
	if err != nil {
		d.log.Warn("reading the kernel's counters", "err", err)
	}
	ts := d.tok.Stats()
	// A junk token seen before, refused from the cache (no public-key work).
	out.Counters["token-failure-cache-hits"] = ts.FailureCacheHits
	out.Counters["public-key-ops"] = ts.PublicKeyOps
	for _, p := range d.pus {
		if p.dp == nil {
			continue
		}
		ps := d.enf.PUStats(p.dp)
		out.PUFlows = append(out.PUFlows, PUFlowStats{ID: p.info.ID, Name: p.info.Name, Flows: ps.Flows, Refused: ps.Refused, OverBudget: kernel[p.steer].InOverBudget.Packets})
	}
	sort.Slice(out.PUFlows, func(i, j int) bool {
		a, b := out.PUFlows[i], out.PUFlows[j]
		if a.Flows != b.Flows {
			return a.Flows > b.Flows
		}
		return a.ID < b.ID
	})
	for i, n := range s.Drops {
		if n > 0 {
			out.Drops[reason.Code(i).String()] = n
		}
	}
	d.addKernelDrops(out.Drops, kernel)
	return out
}
