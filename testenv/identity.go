package testenv

import (
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/trireme-go/trireme/netsetup"
)

// Identity returns the MAC and the addresses (link-local included) of the
// PU's eth0, as the daemon reads them when it attaches the namespace.
func (p *PU) Identity() netsetup.LinkIdentity {
	p.t.Helper()
	h, err := netlink.NewHandleAt(p.NS)
	if err != nil {
		p.t.Fatalf("testenv: netlink in %s: %v", p.Name, err)
	}
	defer h.Close()
	id, err := netsetup.ReadLinkIdentity(h, "eth0", 2*time.Second)
	if err != nil {
		p.t.Fatalf("testenv: identity of %s: %v", p.Name, err)
	}
	return id
}

// LinkLocal returns the PU's IPv6 link-local address (the EUI-64 one the
// kernel assigned to eth0).
func (p *PU) LinkLocal() netip.Addr {
	return netsetup.EUI64LinkLocal(p.MACOf())
}
