package node

import (
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/trireme-go/trireme/flow"
	"github.com/trireme-go/trireme/ipproto"
)

// Established TCP flows that outlive their kernel entries. An authorized
// flow stays in the kernel's sets for kernelTCPTimeout after the daemon
// last authorized it; a connection idle for longer is no longer there, and
// only the daemon's flow table knows it (its next packet crosses the
// daemon, which authorizes it again). A restarted daemon takes back what
// the kernel holds (restoreFlows), so such an idle connection would be
// unknown to it, its next packet dropped as mid-stream. The daemon
// therefore writes its established TCP flows to stateDir/flows.json every
// half kernelTCPTimeout and when it stops: any flow whose kernel entry has
// expired was already established at the last write, so a crash loses
// none. A restarted daemon reads the file once, removes it, and restores
// the flows of the PUs it restored, as it does those of the kernel: the
// flows the previous run had authorized, between the same addresses and
// ports, nothing else (a new connection on the same 5-tuple starts with a
// SYN, which is always decided again).

// savedFlows is stateDir/flows.json.
type savedFlows struct {
	Saved time.Time   `json:"saved"`
	Flows []savedFlow `json:"flows"`
}

// savedFlow is one established TCP flow: Local is the PU's end.
type savedFlow struct {
	PU       string         `json:"pu"`
	Local    netip.AddrPort `json:"local"`
	Remote   netip.AddrPort `json:"remote"`
	LastSeen time.Time      `json:"lastSeen"`
}

func flowsPath(dir string) string { return filepath.Join(dir, "flows.json") }

// saveFlowsEvery is how often the established flows are written.
func (d *Daemon) saveFlowsEvery() time.Duration {
	return max(time.Second, d.cfg.KernelTCPTimeout/2)
}

// saveFlows writes the established TCP flows of the PUs enforced.
func (d *Daemon) saveFlows() {
	s := savedFlows{Saved: time.Now(), Flows: []savedFlow{}}
	for _, p := range d.pus.all() {
		d.enf.EstablishedTCP(p.dp, func(local, remote netip.AddrPort, lastSeen time.Time) {
			s.Flows = append(s.Flows, savedFlow{PU: p.info.ID, Local: local, Remote: remote, LastSeen: lastSeen})
		})
	}
	b, err := json.Marshal(s)
	if err == nil {
		err = writeAtomic(flowsPath(d.cfg.StateDir), b)
	}
	if err != nil {
		d.log.Warn("saving the established flows", "err", err)
	}
}

// takeSavedFlows reads and removes the flows the previous run saved, by PU
// ID. A file that cannot be read restores nothing.
func (d *Daemon) takeSavedFlows() map[string][]savedFlow {
	path := flowsPath(d.cfg.StateDir)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	os.Remove(path)
	var s savedFlows
	if err == nil {
		err = json.Unmarshal(b, &s)
	}
	if err != nil {
		d.log.Warn("the established flows of the previous run are not restored", "file", path, "err", err)
		return nil
	}
	out := map[string][]savedFlow{}
	for _, f := range s.Flows {
		out[f.PU] = append(out[f.PU], f)
	}
	return out
}

// restoreSavedFlows gives the enforcer back p's saved flows the kernel no
// longer held (restoreFlows took the others): each from an address of the
// PU, not idle beyond the flow table's lifetime of an established flow.
func (d *Daemon) restoreSavedFlows(p *livePU, saved []savedFlow, now time.Time) (restored int) {
	for _, f := range saved {
		a := f.Local.Addr()
		if !f.Local.IsValid() || !f.Remote.IsValid() ||
			!containsAddr(p.info.IPs, a) && !slices.ContainsFunc(p.info.Addrs, func(pr netip.Prefix) bool { return pr.Addr() == a }) {
			continue
		}
		seen := f.LastSeen
		if seen.After(now) {
			seen = now
		}
		if now.Sub(seen) >= flow.DefaultEstablished {
			continue
		}
		if d.enf.Restore(p.dp, ipproto.TCP, f.Local, f.Remote, seen) {
			restored++
		}
	}
	if restored > 0 {
		d.log.Debug("restored established flows the kernel no longer held", "pu", p.info.ID, "flows", restored)
	}
	return restored
}
