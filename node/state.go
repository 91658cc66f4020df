package node

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sync"

	"github.com/vishvananda/netlink"

	"github.com/trireme-go/trireme/netsetup/tap"
)

// The daemon's state file: what it needs to pick its PUs up again after a
// restart (the kernel holds the rest: TAPs, steering table, authorized flows).
type state struct {
	PUs      []statePU      `json:"pus"`
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

func readState(dir string) state {
	b, err := os.ReadFile(statePath(dir))
	if err != nil {
		return state{}
	}
	var s state
	if json.Unmarshal(b, &s) != nil {
		return state{}
	}
	return s
}

// loadState reads the previous run's PUs and runtime exclusions. PUs whose
// namespace or veth is gone are dropped (with their TAPs).
func (d *Daemon) loadState() []*livePU {
	b, err := os.ReadFile(statePath(d.cfg.StateDir))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	var s state
	if err == nil {
		err = json.Unmarshal(b, &s)
	}
	if err != nil {
		d.log.Warn("ignoring unreadable state file", "file", statePath(d.cfg.StateDir), "err", err)
		return nil
	}
	d.excluded = s.Excluded
	var out []*livePU
	for _, sp := range s.PUs {
		steerName, tin, tout, _ := puNames(sp.ID)
		if _, err := os.Stat(sp.NetNS); err != nil || !linkExists(sp.Veth) {
			d.log.Info("PU of the previous run is gone", "pu", sp.ID)
			tap.Delete(tin)
			tap.Delete(tout)
			continue
		}
		for _, ip := range sp.IPs {
			if sp.Owned || d.ipam.subnet.Contains(ip) {
				d.ipam.reserve(ip)
			}
		}
		mac, addrs, err := d.restoredIdentity(sp)
		if err != nil {
			d.log.Warn("not restoring PU: who it is on its link is unknown", "pu", sp.ID, "err", err)
			tap.Delete(tin)
			tap.Delete(tout)
			continue
		}
		out = append(out, &livePU{
			info: PUInfo{ID: sp.ID, Name: sp.Name, Kind: sp.Kind, NetNS: sp.NetNS, PID: sp.PID, IPs: sp.IPs, Tags: sp.Tags, Veth: sp.Veth, Bridge: sp.Bridge, State: "restoring",
				MAC: mac.String(), Addrs: addrs},
			steer: steerName, tapIn: tin, tapOut: tout, owned: sp.Owned, mac: mac,
		})
	}
	return out
}

func (d *Daemon) saveState() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.saveStateLocked()
}

// saveStateLocked writes the state file atomically (d.mu held).
func (d *Daemon) saveStateLocked() {
	s := state{Excluded: d.excluded, BridgeAddrs: d.bridgeAddrs}
	for _, p := range d.pus {
		s.PUs = append(s.PUs, statePU{ID: p.info.ID, Name: p.info.Name, Kind: p.info.Kind, NetNS: p.info.NetNS, PID: p.info.PID,
			IPs: p.info.IPs, Tags: p.info.Tags, Veth: p.info.Veth, Bridge: p.info.Bridge, Owned: p.owned,
			MAC: p.info.MAC, Addrs: p.info.Addrs})
	}
	if err := writeState(d.cfg.StateDir, s); err != nil {
		d.log.Error("writing state file", "err", err)
	}
}

// writeState writes the state file atomically.
func writeState(dir string, s state) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	tmp := statePath(dir) + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, statePath(dir))
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

// ipam hands out addresses of the node subnet to the PUs trireme creates.
// The first address is the bridge's (the PUs' gateway).
type ipam struct {
	mu     sync.Mutex
	subnet netip.Prefix
	used   map[netip.Addr]bool
}

func newIPAM(subnet netip.Prefix) *ipam {
	return &ipam{subnet: subnet.Masked(), used: map[netip.Addr]bool{}}
}

func (a *ipam) gateway() netip.Addr { return a.subnet.Addr().Next() }

func (a *ipam) gatewayPrefix() netip.Prefix { return netip.PrefixFrom(a.gateway(), a.subnet.Bits()) }

func (a *ipam) allocate() (netip.Addr, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for ip := a.gateway().Next(); a.subnet.Contains(ip); ip = ip.Next() {
		if !a.used[ip] && a.subnet.Contains(ip.Next()) { // not the broadcast address
			a.used[ip] = true
			return ip, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("node subnet %s is full", a.subnet)
}

func (a *ipam) reserve(ip netip.Addr) {
	a.mu.Lock()
	a.used[ip] = true
	a.mu.Unlock()
}

func (a *ipam) release(ip netip.Addr) {
	a.mu.Lock()
	delete(a.used, ip)
	a.mu.Unlock()
}
