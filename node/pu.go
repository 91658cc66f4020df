package node

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/trireme-go/trireme/dataplane"
	"github.com/trireme-go/trireme/identity"
	"github.com/trireme-go/trireme/monitor"
	"github.com/trireme-go/trireme/netsetup"
	"github.com/trireme-go/trireme/netsetup/inject"
	"github.com/trireme-go/trireme/netsetup/steer"
	"github.com/trireme-go/trireme/netsetup/tap"
)

// livePU is a PU being enforced. Its fields are set before it is added to
// the registry and read-only after, but info.State, which the registry's
// lock guards (puRegistry.setState).
type livePU struct {
	info   PUInfo
	steer  string // name in the steering table
	tapIn  string // TAP names (persistent)
	tapOut string
	owned  bool // the namespace and veth were created by trireme
	netns  nsID // identity of its namespace (set by puRegistry.add)
	mac    net.HardwareAddr

	dp      *dataplane.PU // its handle in the enforcement core
	in      *tap.Tap
	out     *tap.Tap
	toPU    *inject.Injector
	toNet   *inject.Injector // the injection port of the PU's bridge (shared)
	readers sync.WaitGroup
	// vethIndex is the host veth's ifindex (openPU): the device the
	// kernel's logged connection ends name (endlog.go).
	vethIndex int
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
	p.vethIndex = idx
	if p.toPU, err = inject.New(idx, d.steer.Mark()); err != nil {
		p.close()
		return err
	}
	bridge := p.info.Bridge
	if bridge == "" {
		bridge = d.cfg.Bridge.Name
	}
	if p.toNet, err = d.ports.get(bridge); err != nil {
		p.close()
		return err
	}
	return nil
}

// register adds the PU to the enforcement core (before it is added to
// the registry, which indexes its dataplane handle).
func (d *Daemon) register(p *livePU) {
	pp := &puPorts{
		steer: p.steer, ips: slices.Clone(p.info.IPs),
		fromApp: p.in, fromNet: p.out, toPU: p.toPU, toNet: p.toNet,
		// The node bridge is trireme's: nothing but the PUs' steering
		// filters what crosses it, so a frame between two of its PUs
		// may skip it (frameIO.peerOf).
		onePass: (p.info.Bridge == "" || p.info.Bridge == d.cfg.Bridge.Name) && len(p.mac) == 6,
	}
	if len(p.mac) == 6 {
		pp.mac = [6]byte(p.mac)
	}
	p.dp = d.enf.AddPU(p.info.ID, identity.NewTags(p.info.Tags), pp)
	if pp.onePass {
		d.frames.peers.add(pp.mac, p.dp)
	}
	d.endLog.add(p.vethIndex, p.dp)
	p.info.State = PURunning
}

// unregister takes the PU out of the enforcement core: no frame reaches
// its enforcer afterwards, not even in one pass.
func (d *Daemon) unregister(p *livePU, out *dataplane.Output) {
	if pp := portsOf(p.dp); pp != nil && pp.onePass {
		d.frames.peers.remove(pp.mac, p.dp)
	}
	d.endLog.remove(p.vethIndex, p.dp)
	d.enf.RemovePU(p.dp, time.Now(), out)
}

// startReaders starts reading the PU's TAPs.
func (d *Daemon) startReaders(p *livePU) {
	p.readers.Add(2)
	for _, dir := range []dataplane.Direction{dataplane.FromApp, dataplane.FromNet} {
		go func() {
			defer p.readers.Done()
			d.frames.readLoop(p.dp, dir)
		}()
	}
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
	d.changes.Lock()
	defer d.changes.Unlock()
	if old, ok := d.pus.get(mp.ID); ok {
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
	d.backlog.ensure(d.pus.len() + 1)
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
	for _, a := range p.info.Addrs {
		if d.excl.covers(a.Addr()) {
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
			if d.addrs.contains(ip) {
				d.addrs.reserve(ip)
			}
		}
	}
	d.register(p)
	info := p.info // p.info.State is the registry's once p is in it
	if err := d.pus.add(p); err != nil {
		// Cannot be: the ID was looked up under d.changes.
		var out dataplane.Output
		d.unregister(p, &out)
		d.recordRemoved(p, out.Notes)
		d.steer.RemovePU(p.steer)
		p.close()
		return PUInfo{}, err
	}
	d.startReaders(p)
	d.savePU(p)
	d.log.Info("enforcing PU", "pu", info.ID, "name", info.Name, "kind", info.Kind, "veth", info.Veth, "tags", identity.NewTags(info.Tags).String())
	return info, nil
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
	d.changes.Lock()
	p, ok := d.pus.remove(id)
	if !ok {
		d.changes.Unlock()
		return fmt.Errorf("PU %s: %w", id, ErrNotFound)
	}
	d.dropPUState(id)
	d.changes.Unlock()

	var out dataplane.Output
	d.unregister(p, &out)
	p.close()
	p.readers.Wait()
	d.recordRemoved(p, out.Notes)
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
			d.addrs.release(ip)
		}
	}
	d.log.Info("stopped enforcing PU", "pu", id)
	return err
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
				d.pus.setState(ev.PU.ID, state)
			}
		}
	}
}

// createdAddrs are the addresses of a PU trireme created: the one it
// assigned, and the link-local addresses its interface has (EUI-64 of
// its MAC; read right after plumbing, before anything runs there).
func createdAddrs(assigned netip.Prefix, mac net.HardwareAddr, read []netip.Prefix) []netip.Prefix {
	out := []netip.Prefix{assigned}
	for _, p := range read {
		if p.Addr().IsLinkLocalUnicast() {
			out = append(out, p)
		}
	}
	if ll := netsetup.EUI64LinkLocal(mac); !slices.ContainsFunc(out, func(p netip.Prefix) bool { return p.Addr() == ll }) {
		out = append(out, netip.PrefixFrom(ll, 64))
	}
	return out
}
