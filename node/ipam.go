package node

import (
	"fmt"
	"net/netip"
	"sync"
)

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
