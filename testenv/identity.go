package testenv

import (
	"net/netip"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

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

// AdoptNetns wraps a network namespace testenv did not create (a
// container's) as a PU, so that tests can use Raw, Dial, Do in it. The
// caller keeps ownership of ns.
func AdoptNetns(t testing.TB, name string, ns netns.NsHandle) *PU {
	return &PU{t: t, Name: name, NS: ns}
}
