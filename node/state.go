package node

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
)

// The daemon's state: what it needs to pick its PUs up again after a
// restart (the kernel holds the rest: TAPs, steering tables, authorized
// flows). stateDir/state.json holds the runtime exclusions; each PU has a
// file of its own, stateDir/pus/<steering name>.json, written when it is
// attached and removed when it is detached: attaching or detaching costs
// the same whatever the number of PUs. (A state.json of an older version
// also lists the PUs; they are read and moved to their own files.)
type state struct {
	PUs      []statePU      `json:"pus,omitempty"`
	Excluded []netip.Prefix `json:"excluded"`
	// BridgeAddrs are the addresses the daemon added to a node bridge it
	// did not create (purge removes them, and leaves the bridge).
	BridgeAddrs []netip.Prefix `json:"bridgeAddrs,omitempty"`
}

type statePU struct {
	ID     string            `json:"id"`
	Name   string            `json:"name"`
	Kind   string            `json:"kind"`
	NetNS  string            `json:"netns"`
	PID    int               `json:"pid,omitempty"`
	IPs    []netip.Addr      `json:"ips"`
	Tags   map[string]string `json:"tags"`
	Veth   string            `json:"veth"`
	Bridge string            `json:"bridge,omitempty"`
	Owned  bool              `json:"owned,omitempty"`
	// MAC and Addrs: who the PU is on its link, as known when it was
	// attached (the anti-spoofing rules are rebuilt from them).
	MAC   string         `json:"mac,omitempty"`
	Addrs []netip.Prefix `json:"addrs,omitempty"`
}

func statePath(dir string) string { return filepath.Join(dir, "state.json") }

func puStateDir(dir string) string { return filepath.Join(dir, "pus") }

func puStatePath(dir, id string) string {
	steerName, _, _, _ := puNames(id)
	return filepath.Join(puStateDir(dir), steerName+".json")
}

// readState reads the state, skipping what cannot be read.
func readState(dir string) state {
	s, _ := readStateAll(dir)
	return s
}

// readStateAll reads the state: state.json (exclusions, bridge addresses;
// the PUs of a legacy one) and the per-PU files, which win. Unreadable
// files are reported in bad and skipped.
func readStateAll(dir string) (s state, bad []error) {
	b, err := os.ReadFile(statePath(dir))
	if err == nil {
		err = json.Unmarshal(b, &s)
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		bad = append(bad, fmt.Errorf("%s: %w", statePath(dir), err))
		s = state{}
	}
	byID := map[string]int{}
	for i, p := range s.PUs {
		byID[p.ID] = i
	}
	ents, err := os.ReadDir(puStateDir(dir))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		bad = append(bad, err)
	}
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		path := filepath.Join(puStateDir(dir), e.Name())
		var p statePU
		b, err := os.ReadFile(path)
		if err == nil {
			err = json.Unmarshal(b, &p)
		}
		if err == nil && (p.ID == "" || puStatePath(dir, p.ID) != path) {
			err = errors.New("not the state of the PU its name says")
		}
		if err != nil {
			bad = append(bad, fmt.Errorf("%s: %w", path, err))
			continue
		}
		if i, ok := byID[p.ID]; ok {
			s.PUs[i] = p
		} else {
			byID[p.ID] = len(s.PUs)
			s.PUs = append(s.PUs, p)
		}
	}
	slices.SortFunc(s.PUs, func(a, b statePU) int { return strings.Compare(a.ID, b.ID) })
	return s, bad
}

// loadState reads the previous run's PUs and runtime exclusions. PUs whose
// namespace or veth is gone are dropped (their TAPs are swept at start).
func (d *Daemon) loadState() []*livePU {
	s, bad := readStateAll(d.cfg.StateDir)
	for _, err := range bad {
		d.log.Warn("ignoring unreadable state", "err", err)
	}
	d.excl.setRuntime(s.Excluded)
	var out []*livePU
	for _, sp := range s.PUs {
		steerName, tin, tout, _ := puNames(sp.ID)
		if _, err := os.Stat(sp.NetNS); err != nil || !linkExists(sp.Veth) {
			d.log.Info("PU of the previous run is gone", "pu", sp.ID)
			os.Remove(puStatePath(d.cfg.StateDir, sp.ID))
			continue
		}
		for _, ip := range sp.IPs {
			if sp.Owned || d.addrs.contains(ip) {
				d.addrs.reserve(ip)
			}
		}
		mac, addrs, err := d.restoredIdentity(sp)
		if err != nil {
			d.log.Warn("not restoring PU: who it is on its link is unknown", "pu", sp.ID, "err", err)
			os.Remove(puStatePath(d.cfg.StateDir, sp.ID))
			continue
		}
		out = append(out, &livePU{
			info: PUInfo{ID: sp.ID, Name: sp.Name, Kind: sp.Kind, NetNS: sp.NetNS, PID: sp.PID, IPs: sp.IPs, Tags: sp.Tags, Veth: sp.Veth, Bridge: sp.Bridge, State: PURestoring,
				MAC: mac.String(), Addrs: addrs},
			steer: steerName, tapIn: tin, tapOut: tout, owned: sp.Owned, mac: mac,
		})
	}
	return out
}

// saveState writes the whole state (at start: a legacy state.json is
// rewritten without its PUs, every PU gets its file, files of PUs no longer
// enforced go).
func (d *Daemon) saveState() {
	keep := map[string]bool{}
	for _, p := range d.pus.all() {
		d.savePU(p)
		keep[filepath.Base(puStatePath(d.cfg.StateDir, p.info.ID))] = true
	}
	for _, p := range d.stalled {
		d.savePU(p)
		keep[filepath.Base(puStatePath(d.cfg.StateDir, p.info.ID))] = true
	}
	ents, _ := os.ReadDir(puStateDir(d.cfg.StateDir))
	for _, e := range ents {
		if !keep[e.Name()] {
			os.Remove(filepath.Join(puStateDir(d.cfg.StateDir), e.Name()))
		}
	}
	d.saveExcluded(d.excl.runtimeList())
}

// writeAtomic replaces a file with data (a temporary file renamed over
// it).
func writeAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// savePU writes one PU's state file (its fields that do not change: no
// lock needed).
func (d *Daemon) savePU(p *livePU) {
	sp := statePU{ID: p.info.ID, Name: p.info.Name, Kind: p.info.Kind, NetNS: p.info.NetNS, PID: p.info.PID,
		IPs: p.info.IPs, Tags: p.info.Tags, Veth: p.info.Veth, Bridge: p.info.Bridge, Owned: p.owned,
		MAC: p.info.MAC, Addrs: p.info.Addrs}
	b, err := json.MarshalIndent(sp, "", "  ")
	if err == nil {
		if err = os.MkdirAll(puStateDir(d.cfg.StateDir), 0o700); err == nil {
			err = writeAtomic(puStatePath(d.cfg.StateDir, p.info.ID), b)
		}
	}
	if err != nil {
		d.log.Error("writing PU state", "pu", p.info.ID, "err", err)
	}
}

// dropPUState removes a detached PU's state file.
func (d *Daemon) dropPUState(id string) {
	if err := os.Remove(puStatePath(d.cfg.StateDir, id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		d.log.Error("removing PU state", "pu", id, "err", err)
	}
}

// saveExcluded writes state.json: the runtime exclusions and the bridge
// addresses.
func (d *Daemon) saveExcluded(excluded []netip.Prefix) {
	if err := writeState(d.cfg.StateDir, state{Excluded: excluded, BridgeAddrs: d.bridgeAddrs}); err != nil {
		d.log.Error("writing state file", "err", err)
	}
}

// writeState writes state.json atomically: the exclusions and the bridge
// addresses (never PUs: they have files of their own).
func writeState(dir string, s state) error {
	b, err := json.MarshalIndent(state{Excluded: s.Excluded, BridgeAddrs: s.BridgeAddrs}, "", "  ")
	if err != nil {
		return err
	}
	return writeAtomic(statePath(dir), b)
}

func linkExists(name string) bool {
	_, err := netlink.LinkByName(name)
	return err == nil
}

func linkIndex(name string) (int, error) {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return 0, err
	}
	return l.Attrs().Index, nil
}
