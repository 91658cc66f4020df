package node

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/trireme-go/trireme/monitor"
	"github.com/trireme-go/trireme/netsetup"
	"github.com/trireme-go/trireme/netsetup/steer"
)

// ownerMark is the alias of every link a node's daemon creates (the
// bridge, injection ports, the veths of the PUs it creates): purge deletes
// a link only when it carries it.
func ownerMark(node string) string { return "trireme:" + node }

// setupBridge creates the node bridge (marked as the daemon's) or uses an
// existing one, and remembers the gateway addresses it added to a bridge it
// did not create, with those a previous run added.
func (d *Daemon) setupBridge() error {
	_, set, err := netsetup.SetupBridge(netsetup.BridgeConfig{Name: d.cfg.Bridge.Name, Gateways: []netip.Prefix{d.addrs.gatewayPrefix()}, Owner: d.owner})
	if err != nil {
		return fmt.Errorf("bridge %s: %w", d.cfg.Bridge.Name, err)
	}
	if owner, err := netsetup.OwnerOf(d.cfg.Bridge.Name); err == nil && owner == d.owner {
		return nil // ours: its addresses go with it
	}
	added := readState(d.cfg.StateDir).BridgeAddrs
	for _, p := range set.Added {
		if !slices.Contains(added, p) {
			added = append(added, p)
		}
	}
	d.bridgeAddrs = added
	if len(set.Added) > 0 {
		d.log.Info("using an existing bridge; added the gateway address", "bridge", d.cfg.Bridge.Name, "addrs", set.Added)
		// Recorded at once: should the start fail from here on, purge
		// still knows what to take back.
		st := readState(d.cfg.StateDir)
		st.BridgeAddrs = added
		if err := writeState(d.cfg.StateDir, st); err != nil {
			return fmt.Errorf("state file: %w", err)
		}
	}
	return nil
}

// restoredIdentity is a restored PU's MAC and addresses: from the state
// file, or, for a state file written before they were recorded, read from
// its namespace now.
func (d *Daemon) restoredIdentity(sp statePU) (net.HardwareAddr, []netip.Prefix, error) {
	if mac, err := net.ParseMAC(sp.MAC); err == nil && len(mac) == 6 {
		return mac, sp.Addrs, nil
	}
	info, err := monitor.InspectNetns(sp.NetNS)
	if err != nil {
		return nil, nil, err
	}
	if info.HostVeth != sp.Veth || len(info.MAC) != 6 {
		return nil, nil, fmt.Errorf("namespace %s: no veth %s with an Ethernet address", sp.NetNS, sp.Veth)
	}
	d.log.Info("PU of an older state file: MAC and addresses read from its namespace", "pu", sp.ID, "mac", info.MAC)
	return info.MAC, info.Addrs, nil
}

// Purge removes what the daemon put in the kernel and nothing else: the
// steering table, the TAPs, the veths and namespaces of the PUs it
// created, the injection ports and the bridge when they carry its owner
// mark (a bridge or link that existed before is left, minus the gateway
// address the daemon added to it), and its state file. The daemon must be
// stopped.
func Purge(cfg *Config) error {
	owner := ownerMark(cfg.Node)
	st := readState(cfg.StateDir)
	var errs []error
	s, err := steer.Open(steer.Config{Node: cfg.Node})
	if err == nil {
		errs = append(errs, s.Delete())
		s.Close()
	} else {
		errs = append(errs, err)
	}
	deleteOwned := func(name string) bool {
		deleted, err := netsetup.DeleteOwnedLink(name, owner)
		errs = append(errs, err)
		return deleted
	}
	bridges := []string{cfg.Bridge.Name}
	// The TAPs of the PUs in the state, and those marked as the daemon's
	// that no state names (detached PUs whose deletion a stop or a crash
	// cut short): deleted at once.
	taps := strayTaps(nil, owner)
	for _, p := range st.PUs {
		_, tin, tout, _ := puNames(p.ID)
		taps = append(taps, tin, tout)
		if p.Owned {
			deleteOwned(p.Veth)
			if name, ok := strings.CutPrefix(p.NetNS, netsetup.NetnsDir+"/"); ok {
				errs = append(errs, netsetup.DeleteNetns(name))
			}
		}
		if p.Bridge != "" && !slices.Contains(bridges, p.Bridge) {
			bridges = append(bridges, p.Bridge)
		}
	}
	errs = append(errs, netsetup.DeleteLinks(taps, tapGroup))
	for _, b := range bridges {
		if host, _, err := injectionPortNames(b); err == nil {
			deleteOwned(host)
		}
	}
	if !deleteOwned(cfg.Bridge.Name) {
		errs = append(errs, netsetup.RemoveAddrs(cfg.Bridge.Name, st.BridgeAddrs))
	}
	errs = append(errs, os.Remove(statePath(cfg.StateDir)), os.RemoveAll(puStateDir(cfg.StateDir)),
		os.Remove(filepath.Join(cfg.StateDir, kubernetesPolicyFile)), os.Remove(flowsPath(cfg.StateDir)))
	var out []error
	for _, e := range errs {
		if e != nil && !errors.Is(e, os.ErrNotExist) {
			out = append(out, e)
		}
	}
	return errors.Join(out...)
}
