package node

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/trireme-go/trireme/dataplane"
	"github.com/trireme-go/trireme/flow"
	"github.com/trireme-go/trireme/identity"
	"github.com/trireme-go/trireme/ipproto"
	"github.com/trireme-go/trireme/policy"
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

// savedFlows is stateDir/flows.json. Policy is the digest of the policy in
// force when it was written (policyDigest): a restarted daemon with
// onPolicyChange: reset judges the flows it restores again when the
// policy changed while it was down.
type savedFlows struct {
	Saved  time.Time   `json:"saved"`
	Policy string      `json:"policy,omitempty"`
	Flows  []savedFlow `json:"flows"`
	// Peers are the peers' identities, each once (many flows share one):
	// a flow names its peer by index + 1.
	Peers []savedPeer `json:"peers,omitempty"`
}

// savedPeer is a verified peer identity: its node and tags.
type savedPeer struct {
	Node string   `json:"node,omitempty"`
	Tags []string `json:"tags"`
}

// savedFlow is one established TCP flow: Local is the PU's end; Server:
// the PU accepted it; Peer: its peer's verified identity (index + 1 in
// savedFlows.Peers; 0: none, a peer outside the target networks), so that
// a policy change after the restart judges the flow as it would have
// before it.
type savedFlow struct {
	PU       string         `json:"pu"`
	Local    netip.AddrPort `json:"local"`
	Remote   netip.AddrPort `json:"remote"`
	LastSeen time.Time      `json:"lastSeen"`
	Server   bool           `json:"server,omitempty"`
	Peer     int            `json:"peer,omitempty"`
}

func flowsPath(dir string) string { return filepath.Join(dir, "flows.json") }

// saveFlowsEvery is how often the established flows are written.
func (d *Daemon) saveFlowsEvery() time.Duration {
	return max(time.Second, d.cfg.KernelTCPTimeout/2)
}

// saveFlows writes the established TCP flows of the PUs enforced.
func (d *Daemon) saveFlows() {
	s := savedFlows{Saved: time.Now(), Policy: policyDigest(d.res.Current()), Flows: []savedFlow{}}
	peers := map[string]int{} // node and tags -> index + 1
	for _, p := range d.pus.all() {
		d.enf.EstablishedTCP(p.dp, func(f *dataplane.EstablishedFlow) {
			sf := savedFlow{PU: p.info.ID, Local: f.Local, Remote: f.Remote, LastSeen: f.LastSeen, Server: f.Server}
			if len(f.Peer) > 0 {
				tags := f.Peer.Strings()
				key := f.PeerNode + "\x00" + strings.Join(tags, "\x00")
				if sf.Peer = peers[key]; sf.Peer == 0 {
					s.Peers = append(s.Peers, savedPeer{Node: f.PeerNode, Tags: tags})
					sf.Peer = len(s.Peers)
					peers[key] = sf.Peer
				}
			}
			s.Flows = append(s.Flows, sf)
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

// policyDigest identifies a policy's content (the compiled set, targets
// and excluded networks included); "" for none.
func policyDigest(e *policy.Engine) string {
	if e == nil {
		return ""
	}
	b, err := json.Marshal(e.Set())
	if err != nil {
		return ""
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// prevFlows is what the previous run saved: its flows by PU ID, their
// peers' identities (savedFlow.Peer - 1 indexes them; nil for one that
// does not decode) and the digest of its policy.
type prevFlows struct {
	byPU   map[string][]savedFlow
	peers  []*dataplane.RestoredPeer
	policy string
}

// takeSavedFlows reads and removes the flows the previous run saved. A
// file that cannot be read restores nothing.
func (d *Daemon) takeSavedFlows() prevFlows {
	path := flowsPath(d.cfg.StateDir)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return prevFlows{}
	}
	os.Remove(path)
	var s savedFlows
	if err == nil {
		err = json.Unmarshal(b, &s)
	}
	if err != nil {
		d.log.Warn("the established flows of the previous run are not restored", "file", path, "err", err)
		return prevFlows{}
	}
	prev := prevFlows{byPU: map[string][]savedFlow{}, policy: s.Policy}
	for _, p := range s.Peers {
		// Each identity once, shared by its flows. One that does not
		// decode (written by a daemon: not expected) stays nil: its flows
		// are judged by addresses.
		tags, _ := identity.Decode(p.Tags)
		prev.peers = append(prev.peers, dataplane.NewRestoredPeer(p.Node, tags))
	}
	for _, f := range s.Flows {
		prev.byPU[f.PU] = append(prev.byPU[f.PU], f)
	}
	return prev
}

// restoreSavedFlows gives the enforcer back p's saved flows the kernel no
// longer held (restoreFlows took the others): each from an address of the
// PU, not idle beyond the flow table's lifetime of an established flow.
func (d *Daemon) restoreSavedFlows(p *livePU, prev *prevFlows, now time.Time) (restored int) {
	saved := prev.byPU[p.info.ID]
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
	// Every restored flow the previous run saved, from the kernel's sets
	// or from the file, gets back its side and its peer's identity.
	for _, f := range saved {
		if f.Peer > 0 && f.Peer <= len(prev.peers) {
			d.enf.RestorePeer(p.dp, f.Local, f.Remote, f.Server, prev.peers[f.Peer-1])
		}
	}
	if restored > 0 {
		d.log.Debug("restored established flows the kernel no longer held", "pu", p.info.ID, "flows", restored)
	}
	return restored
}

// reevaluateRestored judges the restored flows by the policy in force when
// the policy changed while the daemon was down (saved: the digest of the
// policy of the previous run's last save) and onPolicyChange is reset, as
// a change while it ran would have: the flows it denies are revoked (their
// next packet gets both ends a RST). Flows restored with their peer's
// identity are judged by it; the others (established after the last save
// before a crash) by addresses alone.
func (d *Daemon) reevaluateRestored(saved string) {
	if d.cfg.OnPolicyChange != PolicyChangeReset || saved == "" || saved == policyDigest(d.res.Current()) {
		return
	}
	var out dataplane.Output
	n := d.enf.Reevaluate(time.Now(), &out)
	d.frames.sendInjected(&out)
	d.queueNotes(out.Notes)
	d.log.Info("the policy changed while the daemon was down: reset the restored flows it denies", "flows", n)
}
