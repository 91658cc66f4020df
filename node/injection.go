package node

import (
	"fmt"

	"github.com/trireme-go/trireme/netsetup"
	"github.com/trireme-go/trireme/netsetup/inject"
)

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
