package node

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/trireme-go/trireme/dataplane"
	"github.com/trireme-go/trireme/ipproto"
	"github.com/trireme-go/trireme/k8s/agent"
	"github.com/trireme-go/trireme/netsetup"
	"github.com/trireme-go/trireme/netsetup/steer"
	"github.com/trireme-go/trireme/resolver"
	"github.com/trireme-go/trireme/tokens"
)

// Kernel timeouts of authorized flows (TCP: the config's kernelTCPTimeout).
// When an entry expires while its flow is still alive, the next packet
// reaches the dataplane, which still tracks the flow and authorizes it
// again: one packet per timeout goes through userspace, and a flow that
// really ended leaves the kernel on its own.
const (
	// DefaultKernelTCPTimeout is kernelTCPTimeout's default.
	DefaultKernelTCPTimeout = 5 * time.Minute
	kernelDatagramTimeout   = 60 * time.Second
)

// Daemon is one node's enforcer: it owns the node bridge, the steering
// table, one pair of TAPs per PU and the enforcement core, and serves the
// control API. Its state is grouped by what it is for; each group that
// changes at run time has a lock of its own:
//
//   - what decides: the token engine and the policy file (load.go), the
//     enforcement core, the flow log;
//   - the kernel: the steering table, the injection ports (injection.go),
//     the TAPs being deleted (reaper.go), the kernel loop's queue;
//   - the PUs: the registry (registry.go), their lifecycle (pu.go), the
//     addresses of the PUs trireme creates (addralloc.go), the excluded
//     networks (exclusions.go);
//   - the daemon's life (lifecycle.go) and the control API (controller.go).
//
// The frame loops (readLoop, frameio.go) and the kernel loop are below.
type Daemon struct {
	cfg *Config
	log *slog.Logger
	// owner marks the links the daemon creates (owner.go).
	owner string

	tok *tokens.Engine
	res policySource
	// kpol and k8s are the Kubernetes source (kubernetes.go), when enabled.
	kpol *resolver.Pushed
	k8s  *agent.Agent
	enf  *dataplane.Enforcer
	sink *asyncSink
	// records is where flow records go (the ring and the flow log): the
	// enforcer's sink, and the kernel loop's for the final records that
	// wait for the kernel's counts (finalcounts.go).
	records dataplane.Sink
	ring    *flowRing // the newest records, for `trireme flows` (flowring.go)

	steer *steer.Steerer
	// Frames leaving a PU are injected into the PU's own bridge (the node
	// bridge, or Docker's) through an injection port on that bridge.
	ports  *injectionPorts
	reaper *tapReaper
	ops    chan kernelOp // to kernelLoop
	frames *framePath    // the TAP readers (frameio.go)
	// endLog reads the FINs and RSTs the kernel passes and logs
	// (endlog.go); nil: they are steered.
	endLog *endLog
	// secretsReloads and secretsErrors count the secrets' reloads (secrets.go).
	secretsReloads, secretsErrors atomic.Uint64
	// restored: restore has run (and taken the saved flows): from then on
	// the established flows are saved (savedflows.go).
	restored atomic.Bool
	// retired holds the kernel drop counters of PUs already removed, so
	// that the node-wide drop counts never go down.
	retired kernelDrops

	// pus are the PUs enforced. changes serialises changes to that set
	// (attach, create, monitor events, detach): a check and the add it
	// allows are one step.
	pus     *puRegistry
	changes sync.Mutex
	addrs   *addrAllocator
	backlog backlogTuner
	excl    exclusions

	// Set by Start (plumb and restore), read-only after.
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup // the daemon's goroutines but the TAP readers
	started time.Time
	api     *Server
	phase   phase      // readiness (ready.go)
	web     *webServer // the web page's TCP listener, when configured (web.go)
	// bridgeAddrs are the addresses the daemon added to a node bridge it
	// did not create: purge removes those and nothing else of it.
	bridgeAddrs []netip.Prefix
	// stalled are PUs of the previous run that could not be restored but
	// are kept closed (their state stays for the next restart).
	stalled []*livePU
}

// New prepares a daemon from a validated config: it loads the secrets and
// the policy, and fails without changing anything in the kernel if either
// is bad.
func New(cfg *Config, log *slog.Logger) (*Daemon, error) {
	if log == nil {
		log = slog.Default()
	}
	tok, err := loadTokens(cfg)
	if err != nil {
		return nil, err
	}
	var res policySource
	var kpol *resolver.Pushed
	if cfg.Kubernetes.Enabled {
		kpol, err = loadKubernetesPolicy(cfg, resolver.FileOptions{Logger: log, TargetNetworks: cfg.TargetNetworks, ExcludedNetworks: cfg.ExcludedNetworks})
		res = kpol
	} else {
		res, err = loadPolicy(cfg, log)
	}
	if err != nil {
		return nil, err
	}
	owner := ownerMark(cfg.Node)
	d := &Daemon{cfg: cfg, log: log, owner: owner, tok: tok, res: res, kpol: kpol, sink: newAsyncSink(log),
		ports: newInjectionPorts(owner), reaper: newTapReaper(log), ops: make(chan kernelOp, 4096),
		pus: newPURegistry(), addrs: newAddrAllocator(cfg.Bridge.Subnet.Prefix),
		ring: newFlowRing(cfg.Observe.FlowRing)}
	d.records = teeSink{d.ring, d.sink}
	d.excl = exclusions{log: log, save: d.saveExcluded}
	d.backlog = backlogTuner{path: netsetup.BacklogPath, log: log}
	pol := res.Current()
	d.excl.setPolicy(pol.Set().ExcludedNetworks)
	d.enf, err = dataplane.New(dataplane.Config{
		Tokens:    tok,
		Policy:    pol,
		MidStream: cfg.MidStream.MidStream,
		Sink:      d.records,
		// Authorized flows' packets stay in the kernel (steering), which
		// counts them: final records get those counts (finalcounts.go).
		KernelBypass: true,
		KernelCounts: true,
		Flows:        cfg.FlowTable.Flows(),
		// Flows close in the kernel: record each decision when it is made.
		RecordEstablished: true,
	})
	if err != nil {
		return nil, err
	}
	d.frames = &framePath{enf: d.enf, log: log, notes: d.queueNotes, authorizeNow: d.authorizeNow}
	if cfg.Kubernetes.Enabled {
		// Made here, run by Start: the control API may ask for its status
		// as soon as it serves.
		if d.k8s, err = newKubernetesAgent(d); err != nil {
			return nil, err
		}
	}
	return d, nil
}

// ---- frame and kernel loops ----

// expireLoop runs the flow timers once a second, and the datagram
// handshake's retries every 100 ms (dataplane.HelloRetry is 250 ms).
func (d *Daemon) expireLoop() {
	defer d.wg.Done()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	retry := time.NewTicker(100 * time.Millisecond)
	defer retry.Stop()
	save := time.NewTicker(d.saveFlowsEvery())
	defer save.Stop()
	var out dataplane.Output
	for {
		select {
		case <-d.ctx.Done():
			return
		case <-save.C:
			d.saveFlows() // savedflows.go
		case now := <-tick.C:
			out.Notes = out.Notes[:0]
			d.enf.Expire(now, &out)
			d.frames.sendInjected(&out)
			d.queueNotes(out.Notes)
		case now := <-retry.C:
			d.enf.Retry(now, &out)
			d.frames.sendInjected(&out)
		}
	}
}

// kernelOp is one change to a PU's authorized set.
type kernelOp struct {
	authorize bool
	pu        string // steering name
	tuple     steer.Tuple
	timeout   time.Duration
	// final: a revoke whose kernel counts a flow record needs
	// (finalcounts.go).
	final *finalRevoke
}

// kernelOpOf is the change to a PU's authorized set a note asks for; false
// for a note of no PU of the frame path, or of a PU being removed (its
// set goes with it).
func kernelOpOf(n *dataplane.Note, tcpTimeout time.Duration) (kernelOp, bool) {
	if n.PU == nil {
		return kernelOp{}, false
	}
	pp := portsOf(n.PU)
	if pp == nil || n.PU.Removed() {
		return kernelOp{}, false
	}
	op := kernelOp{authorize: n.Kind == dataplane.Authorize, pu: pp.steer,
		tuple: steer.Tuple{Src: n.Local.Addr(), Dst: n.Remote.Addr(), Proto: n.Proto, SrcPort: n.Local.Port(), DstPort: n.Remote.Port()}}
	if op.authorize {
		op.timeout = kernelDatagramTimeout
		if n.Proto == ipproto.TCP {
			op.timeout = tcpTimeout
			if op.timeout <= 0 { // a Config not read by ParseConfig
				op.timeout = DefaultKernelTCPTimeout
			}
		}
	}
	return op, true
}

// queueNotes hands the enforcer's notes to kernelLoop. The packet path
// never waits for a netlink transaction; when the queue is full it waits
// for room (back-pressure), as dropping a revoke would leave a flow in the
// kernel.
func (d *Daemon) queueNotes(notes []dataplane.Note) {
	for i := range notes {
		n := &notes[i]
		op, ok := kernelOpOf(n, d.cfg.KernelTCPTimeout)
		if !ok {
			// No PU of the frame path, or it is being removed: its set
			// goes with it; a final record is written without counts.
			d.recordUncounted(n)
			continue
		}
		if !op.authorize && (n.Count || n.Record != nil) {
			op.final = &finalRevoke{note: *n}
		}
		select {
		case d.ops <- op:
		case <-d.ctx.Done():
			for j := i; j < len(notes); j++ {
				d.recordUncounted(&notes[j])
			}
			return
		}
	}
}

// authorizeNow puts the flows of handshake notes in the kernel in one
// transaction, on the frame reader's goroutine (framePath.authorizeNow):
// a handshake's last frame waits for it (one transaction per new
// connection, ~10 µs), and what the PUs send next never reaches the
// daemon. Authorizations queued for the kernel loop before it may land
// after it; a revocation queued before it for the same 4-tuple (a
// TIME_WAIT reuse) could then take the new flow out again: its packets
// would pass through the dataplane, which authorizes it again (at most
// once a second), never around it.
func (d *Daemon) authorizeNow(notes []dataplane.Note) error {
	b := d.steer.NewBatch()
	var n uint64
	for i := range notes {
		op, ok := kernelOpOf(&notes[i], d.cfg.KernelTCPTimeout)
		if !ok || !op.authorize {
			continue
		}
		b.Authorize(op.pu, op.tuple, op.timeout)
		n++
	}
	if n == 0 {
		return nil
	}
	if err := b.Commit(); err != nil {
		d.frames.stats.kernelErrors.Add(1)
		return err
	}
	d.frames.stats.kernelAuthorized.Add(n)
	return nil
}

// kernelLoop applies queued authorizations and revocations in batches, in
// the order they were queued.
func (d *Daemon) kernelLoop() {
	defer d.wg.Done()
	b := d.steer.NewBatch()
	var authorized, revoked uint64 // in the batch being built
	var finals []*finalRevoke      // its revokes that read the kernel's counts
	add := func(op kernelOp) {
		switch {
		case op.authorize:
			b.Authorize(op.pu, op.tuple, op.timeout)
			authorized++
		case op.final != nil:
			b.RevokeCounted(op.pu, op.tuple, &op.final.counts)
			finals = append(finals, op.final)
			revoked++
		default:
			b.Revoke(op.pu, op.tuple)
			revoked++
		}
	}
	for {
		select {
		case <-d.ctx.Done():
			d.drainFinals()
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
			err := b.Commit()
			counted := err == nil
			if errors.Is(err, steer.ErrCountsUnread) {
				// Applied; the final records go without the kernel's counts.
				d.log.Debug("reading the kernel's flow counters", "err", err)
				err = nil
			}
			if err != nil {
				if d.ctx.Err() == nil {
					d.frames.stats.kernelErrors.Add(1)
					d.log.Warn("updating authorized flows", "err", err)
				}
			} else {
				d.frames.stats.kernelAuthorized.Add(authorized)
				d.frames.stats.kernelRevoked.Add(revoked)
			}
			d.deliverFinals(finals, counted)
			clear(finals)
			authorized, revoked, finals = 0, 0, finals[:0]
		}
	}
}
