package node

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"sort"

	"github.com/trireme-go/trireme/monitor"
	"github.com/trireme-go/trireme/netsetup"
	"github.com/trireme-go/trireme/reason"
)

// The Daemon is the Controller the control API serves (api.go), as
// wireguard-go's Device serves its UAPI: each method validates the request
// (validate.go), then changes the PUs through their lifecycle (pu.go) or
// the excluded networks (exclusions.go), each under its own lock.

var _ Controller = (*Daemon)(nil)

// ListPUs implements Controller.
func (d *Daemon) ListPUs() []PUInfo {
	counters, err := d.steer.AllCounters()
	if err != nil {
		d.log.Warn("reading the kernel's counters", "err", err)
	}
	out := make([]PUInfo, 0, d.pus.len())
	d.pus.each(func(p *livePU) {
		info := p.info
		info.Drops = kernelDropsOf(counters[p.steer])
		out = append(out, info)
	})
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
	old, exists := d.pus.get("netns-" + name)
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
	_, exists := d.pus.get(id)
	if exists {
		return PUInfo{}, fmt.Errorf("%w: a PU named %s exists", ErrConflict, req.Name)
	}
	_, _, _, veth := puNames(id)
	nsName := "trireme-" + req.Name
	addr, err := d.addrs.allocate()
	if err != nil {
		return PUInfo{}, err
	}
	ns, err := netsetup.CreateNetns(nsName)
	if err != nil {
		d.addrs.release(addr.Addr())
		return PUInfo{}, err
	}
	ns.Close()
	fail := func(err error) (PUInfo, error) {
		netsetup.DetachPU(veth)
		netsetup.DeleteNetns(nsName)
		d.addrs.release(addr.Addr())
		return PUInfo{}, err
	}
	link, err := netsetup.AttachPU(netsetup.PUConfig{Netns: nsName, Bridge: d.cfg.Bridge.Name, HostVeth: veth,
		Addrs: []netip.Prefix{addr}, Gateways: []netip.Addr{d.addrs.gateway()}, Owner: d.owner})
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
func (d *Daemon) AddExcluded(p netip.Prefix) error { return d.excl.add(p) }

// RemoveExcluded implements Controller.
func (d *Daemon) RemoveExcluded(p netip.Prefix) error { return d.excl.remove(p) }

// Stats implements Controller.
func (d *Daemon) Stats() Stats {
	s := d.enf.Stats()
	st := d.res.Status()
	out := Stats{
		Node: d.cfg.Node, Started: d.started, PUs: d.pus.len(), Flows: s.Flows,
		Counters: map[string]uint64{
			"packets": s.Packets, "forwarded": s.Forwarded, "consumed": s.Consumed,
			"injected": s.Injected, "resets": s.Resets, "evictions": s.Evictions,
			"records-dropped":    d.sink.dropped.Load(),
			"records-written":    d.sink.written.Load(),
			"records-aggregated": d.sink.aggregated.Load(),
			// Times a record waited for room in the flow log's queue.
			"records-waited": d.sink.waits.Load(),
			"io-errors":      d.frames.stats.ioErrors.Load(),
			"kernel-errors":  d.frames.stats.kernelErrors.Load(),
			// Flows put in / taken out of the kernel's authorized sets.
			"kernel-authorized": d.frames.stats.kernelAuthorized.Load(),
			"kernel-revoked":    d.frames.stats.kernelRevoked.Load(),
			"foreign-frames":    d.frames.stats.foreignFrames.Load(),
			// Frames leaving a PU handed to another PU of the node in the
			// same visit; flows put in the kernel before their handshake's
			// last frame was delivered, and such transactions that failed.
			"one-pass":             d.frames.stats.onePass.Load(),
			"authorized-now":       d.frames.stats.authorizedNow.Load(),
			"authorize-now-errors": d.frames.stats.authorizeNowErrors.Load(),
			// RSTs from the network on flows the kernel carries, left to
			// the PU's TCP to judge and followed by a probe.
			"rst-probes": s.Probes,
			// FINs and RSTs the kernel passed on the flows it carries and
			// logged (endlog.go): judged by the enforcers (logged-ends),
			// changing nothing (logged-ignored: no such authorized flow),
			// of no PU, malformed, and batches lost to a receive-buffer
			// overrun (the flows end by their timeout instead).
			"logged-ends":    s.Logged,
			"logged-ignored": s.LoggedIgnored,
			// Token frames taken out of segments of established flows
			// (handshake ACKs sent again) before they reached the PU.
			"late-tokens":       s.LateTokens,
			"end-log-messages":  d.endLog.count(func(l *endLog) uint64 { return l.messages.Load() }),
			"end-log-unknown":   d.endLog.count(func(l *endLog) uint64 { return l.unknown.Load() }),
			"end-log-malformed": d.endLog.count(func(l *endLog) uint64 { return l.malformed.Load() }),
			"end-log-overruns":  d.endLog.count(func(l *endLog) uint64 { return l.r.Overruns.Load() }),
			// Secrets files reloaded, and changes that could not be.
			"secrets-reloads": d.secretsReloads.Load(),
			"secrets-errors":  d.secretsErrors.Load(),
		},
		Drops:     map[string]uint64{},
		Policy:    PolicyStatus{File: st.File, LoadedAt: st.LoadedAt, Policies: st.Policies, LastError: st.LastError, ErrorAt: st.ErrorAt},
		Excluded:  d.excl.runtimeList(),
		FlowTable: FlowTableStats{Capacity: s.Capacity, PerPU: s.PerPU, Flows: s.Flows, Evictions: s.Evictions},
		FlowRing:  d.ring.ringStats(),
	}
	kernel, err := d.steer.AllCounters()
	if err != nil {
		d.log.Warn("reading the kernel's counters", "err", err)
	}
	ts := d.tok.Stats()
	// A junk token seen before, refused from the cache (no public-key work).
	out.Counters["token-failure-cache-hits"] = ts.FailureCacheHits
	out.Counters["public-key-ops"] = ts.PublicKeyOps
	d.pus.each(func(p *livePU) {
		ps := d.enf.PUStats(p.dp)
		out.PUFlows = append(out.PUFlows, PUFlowStats{ID: p.info.ID, Name: p.info.Name, Flows: ps.Flows, Refused: ps.Refused, OverBudget: kernel[p.steer].InOverBudget.Packets})
	})
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
	if d.k8s != nil {
		ks := d.k8s.Status()
		out.Kubernetes = &ks
	}
	return out
}
