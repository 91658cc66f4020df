package node

import (
	"fmt"
	"net/netip"
	"sync"
)

// addrAllocator hands out addresses of the node subnet to the PUs trireme
// creates. The subnet's first host address is the bridge's (the PUs'
// gateway); its last (broadcast) address is never handed out. Addresses of
// the subnet that attached namespaces and containers hold are reserved so
// that they are never handed out again.
type addrAllocator struct {
	subnet netip.Prefix // masked; set once

	mu   sync.Mutex
	used map[netip.Addr]bool
}

func newAddrAllocator(subnet netip.Prefix) *addrAllocator {
	return &addrAllocator{subnet: subnet.Masked(), used: map[netip.Addr]bool{}}
}

// gateway is the bridge's address in the subnet.
func (a *addrAllocator) gateway() netip.Addr { return a.subnet.Addr().Next() }

// gatewayPrefix is the gateway with the subnet's prefix length.
func (a *addrAllocator) gatewayPrefix() netip.Prefix {
	return netip.PrefixFrom(a.gateway(), a.subnet.Bits())
}

// contains reports whether ip is of the subnet.
func (a *addrAllocator) contains(ip netip.Addr) bool { return a.subnet.Contains(ip) }

// allocate hands out the lowest free address, with the subnet's prefix
// length.
func (a *addrAllocator) allocate() (netip.Prefix, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for ip := a.gateway().Next(); a.subnet.Contains(ip); ip = ip.Next() {
		if !a.used[ip] && a.subnet.Contains(ip.Next()) { // not the broadcast address
			a.used[ip] = true
			return netip.PrefixFrom(ip, a.subnet.Bits()), nil
		}
	}
	return netip.Prefix{}, fmt.Errorf("node subnet %s is full", a.subnet)
}

// reserve marks ip as in use (held by a PU trireme did not create, or by
// a PU of the previous run).
func (a *addrAllocator) reserve(ip netip.Addr) {
	a.mu.Lock()
	a.used[ip] = true
	a.mu.Unlock()
}

// release hands ip back.
func (a *addrAllocator) release(ip netip.Addr) {
	a.mu.Lock()
	delete(a.used, ip)
	a.mu.Unlock()
}
