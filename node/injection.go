package node

import (
	"fmt"
	"sync"

	"github.com/trireme-go/trireme/netsetup"
	"github.com/trireme-go/trireme/netsetup/inject"
)

// injectionPorts are the ports through which the daemon sends the frames
// leaving a PU into the PU's own bridge (the node bridge, or Docker's): one
// per bridge, created on first use and shared by the PUs on that bridge.
type injectionPorts struct {
	owner string // the owner mark of the links the daemon creates

	mu       sync.Mutex
	byBridge map[string]*inject.Injector
}

func newInjectionPorts(owner string) *injectionPorts {
	return &injectionPorts{owner: owner, byBridge: map[string]*inject.Injector{}}
}

// get returns the injector of the bridge's injection port, creating the
// port on first use.
func (ip *injectionPorts) get(bridge string) (*inject.Injector, error) {
	ip.mu.Lock()
	defer ip.mu.Unlock()
	if j, ok := ip.byBridge[bridge]; ok {
		return j, nil
	}
	host, br, err := injectionPortNames(bridge)
	if err != nil {
		return nil, err
	}
	port, err := netsetup.EnsureInjectionPort(bridge, host, br, ip.owner)
	if err != nil {
		return nil, fmt.Errorf("injection port on %s: %w", bridge, err)
	}
	// Frames sent into the bridge carry no mark: a PU on this node that
	// receives them must still see them steered into its own enforcer.
	j, err := inject.New(port.HostIndex, 0)
	if err != nil {
		return nil, fmt.Errorf("injection port on %s: %w", bridge, err)
	}
	ip.byBridge[bridge] = j
	return j, nil
}

// close closes the injectors (the ports stay: see Purge).
func (ip *injectionPorts) close() {
	ip.mu.Lock()
	defer ip.mu.Unlock()
	for _, j := range ip.byBridge {
		j.Close()
	}
}

// injectionPortNames: the veth pair of a bridge's injection port.
func injectionPortNames(bridge string) (host, br string, err error) {
	if host, err = netsetup.DeviceName("tij", bridge, "h"); err != nil {
		return "", "", err
	}
	br, err = netsetup.DeviceName("tij", bridge, "b")
	return host, br, err
}
