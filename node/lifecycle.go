package node

import (
	"context"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/trireme-go/trireme/monitor"
	"github.com/trireme-go/trireme/monitor/docker"
	"github.com/trireme-go/trireme/netsetup/steer"
)

// The daemon's life: Start plumbs the node (plumb), takes back the PUs of
// the previous run (restore) and starts its loops and the control API
// (serve); Stop stops them and leaves the kernel's state in place.

// Start plumbs the node, restores the PUs of a previous run, and starts
// enforcing and serving the control API.
func (d *Daemon) Start(ctx context.Context) error {
	d.ctx, d.cancel = context.WithCancel(ctx)
	d.started = time.Now()
	// The control socket first: /healthz and /readyz answer while the
	// node is set up (ready.go), and a second daemon on the same socket is
	// refused before it touches the kernel.
	d.phase.set(phaseStarting)
	var err error
	if d.api, err = Serve(d.cfg.Socket, d); err != nil {
		return fmt.Errorf("control socket: %w", err)
	}
	if err := d.plumb(); err != nil {
		return err
	}
	d.phase.set(phaseRestoring)
	savedPolicy, err := d.restore()
	if err != nil {
		return err
	}
	d.phase.set(phaseServing)
	if err := d.serve(savedPolicy); err != nil {
		return err
	}
	d.phase.set("")
	d.log.Info("daemon started", "node", d.cfg.Node, "bridge", d.cfg.Bridge.Name, "pus", d.pus.len(), "socket", d.cfg.Socket)
	return nil
}

// plumb prepares the node: the state directory, the flow log, the node
// bridge and its injection port, and the steering table.
func (d *Daemon) plumb() error {
	if err := os.MkdirAll(d.cfg.StateDir, 0o700); err != nil {
		return err
	}
	if err := d.sink.open(d.cfg.flowLog()); err != nil {
		return fmt.Errorf("flow log: %w", err)
	}
	if err := d.setupBridge(); err != nil {
		return err
	}
	if _, err := d.ports.get(d.cfg.Bridge.Name); err != nil {
		return err
	}
	var err error
	if d.endLog, err = openEndLog(d.cfg.Node); err != nil {
		d.log.Warn("no NFLOG group for connection ends: their FINs and RSTs cross the daemon", "err", err)
	}
	if d.steer, err = steer.Open(steer.Config{Node: d.cfg.Node, Budget: d.cfg.PUPacketBudget.Budget(), EndLog: d.endLog.steerConfig()}); err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	if removed, err := steer.DeleteStaleTables(0, d.cfg.Node); err != nil {
		return fmt.Errorf("nftables: removing stale tables: %w", err)
	} else if len(removed) > 0 {
		d.log.Info("removed stale nftables tables", "tables", removed)
	}
	return nil
}

// restore takes back the PUs of the previous run: their TAPs, their
// steering and the flows the kernel still holds as authorized. A PU that
// cannot be opened again is kept closed (stalled). The steering of every
// PU is applied in one transaction, with the excluded networks.
// savedPolicy is the digest of the policy of the previous run's last flow
// save (savedflows.go), "" without one.
func (d *Daemon) restore() (savedPolicy string, err error) {
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
	d.excl.open(d.steer)
	if err := d.steer.Apply(steered, d.excl.all()); err != nil {
		for _, p := range ready {
			p.close()
		}
		return "", fmt.Errorf("nftables: %w", err)
	}
	t2 := time.Now()
	flows, missed := 0, 0
	prev := d.takeSavedFlows()
	d.backlog.ensure(len(ready))
	for _, p := range ready {
		// The enforcer learns the PU's flows before its first packet is
		// read: a packet of an established flow is not taken for one
		// of an unknown flow.
		d.register(p)
		if err := d.pus.add(p); err != nil {
			// Cannot be: the state holds one file per PU ID.
			d.log.Error("restoring PU", "pu", p.info.ID, "err", err)
			continue
		}
		r, m := d.restoreFlows(p, t2)
		flows, missed = flows+r+d.restoreSavedFlows(p, &prev, t2), missed+m
		d.startReaders(p)
		d.log.Debug("restored PU", "pu", p.info.ID, "name", p.info.Name)
	}
	t3 := time.Now()
	d.restored.Store(true)
	d.saveState()
	if missed > 0 {
		d.log.Warn("authorized flows the enforcer could not take back (flow table full): they keep flowing in the kernel until their entry expires, then are handled as unknown (midStream)",
			"flows", missed, "restored", flows)
	}
	if len(restored) > 0 {
		d.log.Info("restored the PUs of the previous run", "pus", d.pus.len(), "flows", flows, "took", time.Since(t0).Round(time.Millisecond),
			"open", t1.Sub(t0).Round(time.Millisecond), "steering", t2.Sub(t1).Round(time.Millisecond), "flows-took", t3.Sub(t2).Round(time.Millisecond))
	}
	return prev.policy, nil
}

// serve starts the web page's listener, the monitors and the daemon's
// loops (the control API is served from the start, gated until ready).
// savedPolicy: as restore returned it.
func (d *Daemon) serve(savedPolicy string) error {
	if err := d.serveWeb(); err != nil {
		return err
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
	d.wg.Add(5)
	go d.secretsLoop(d.ctx)
	go d.kernelLoop()
	go d.expireLoop()
	go d.policyLoop()
	go func() { defer d.wg.Done(); _ = d.res.Run(d.ctx) }()
	d.reevaluateRestored(savedPolicy)
	if d.endLog != nil {
		d.wg.Add(1)
		go d.endLogLoop()
	}
	if d.k8s != nil {
		d.startKubernetes()
	}
	return nil
}

// Stop stops enforcing. The steering table and the TAPs stay: until a
// daemon runs again, policed PUs cannot open new connections (fail closed)
// while their authorized flows continue. Purge removes everything.
func (d *Daemon) Stop() {
	d.phase.set(phaseStopping)
	if d.api != nil {
		d.api.Close()
	}
	if d.web != nil {
		d.web.Close()
	}
	d.cancel()
	pus := d.pus.all()
	for _, p := range pus {
		p.close()
	}
	d.wg.Wait()
	for _, p := range pus {
		p.readers.Wait()
	}
	if d.restored.Load() {
		d.saveFlows() // savedflows.go
	}
	if d.steer != nil {
		d.steer.Close()
	}
	if d.endLog != nil {
		d.endLog.r.Close() // the group is unbound: the rules' messages go nowhere
	}
	d.ports.close()
	d.sink.close()
	d.log.Info("daemon stopped; steering stays in place (fail closed)")
}
