package attacks

import (
	"net/netip"
	"testing"
	"time"

	"github.com/trireme-go/trireme/testenv"
)

// TestLinkLocalNeedsTokens (issue #11 item 3): PUs on one bridge reach
// each other over their IPv6 link-local addresses too. Link-local is
// always inside the target networks: the attacker (egress to ::/0 allowed)
// is refused by db's ingress over fe80:: as over IPv4 and the ULA; db,
// whose egress allows nothing, cannot reach web over fe80:: either; a host
// without an enforcer gets missing-token; and web -> db, which the policy
// allows, works over link-local with tokens.
func TestLinkLocalNeedsTokens(t *testing.T) {
	s := newScene(t, sceneOptions{})
	dbSink := listenTCPSink(t, s.db, netip.IPv6Unspecified(), 5432)
	webSink := listenTCPSink(t, s.web, netip.IPv6Unspecified(), 80)
	dbLL, webLL, attLL := s.db.LinkLocal(), s.web.LinkLocal(), s.attacker.LinkLocal()

	before := s.drops()
	for _, to := range []netip.AddrPort{netip.AddrPortFrom(s.db.Addr, 5432), netip.AddrPortFrom(s.db.Addr6, 5432), linkLocalPort(dbLL, 5432)} {
		if c, err := s.attacker.Dial(to, 2*time.Second); err == nil {
			c.Close()
			t.Errorf("attacker -> db %v connected", to)
		}
	}
	if dbSink.acceptedFrom(attLL) || dbSink.acceptedFrom(s.attacker.Addr) || dbSink.acceptedFrom(s.attacker.Addr6) {
		t.Error("db accepted a connection from the attacker")
	}
	s.waitDrop(before, "policy-denied")

	if c, err := s.db.Dial(linkLocalPort(webLL, 80), 2*time.Second); err == nil {
		c.Close()
		t.Error("db -> web over link-local connected (db's egress allows nothing, web's ingress only frontend)")
	}
	if webSink.acceptedFrom(dbLL) {
		t.Error("web accepted db's link-local connection")
	}

	// A host on the bridge without an enforcer.
	stranger := s.node.AddPU()
	waitLinkLocalReady(t, stranger)
	before = s.drops()
	if c, err := stranger.Dial(linkLocalPort(dbLL, 5432), 2*time.Second); err == nil {
		c.Close()
		t.Error("a host without an enforcer reached db over link-local")
	}
	if dbSink.acceptedFrom(stranger.LinkLocal()) {
		t.Error("db accepted the stranger's link-local connection")
	}
	s.waitDrop(before, "missing-token")

	// Allowed by the policy: web -> db:5432 over link-local, with tokens.
	c, err := dialFromAddr(s.web, webLL.WithZone("eth0"), linkLocalPort(dbLL, 5432), 3*time.Second)
	if err != nil {
		t.Fatalf("web -> db over link-local (allowed): %v", err)
	}
	defer c.Close()
	if err := testenv.EchoConn(c, "over fe80::", 3*time.Second); err != nil {
		t.Fatal(err)
	}
	r := s.d.WaitRecord(webLL, netip.AddrPortFrom(dbLL, 5432), "ingress")
	if r.Action != "allow" || r.Remote.External || len(r.Remote.Tags) == 0 {
		t.Errorf("db's record of web's link-local connection: %+v, want allow between PUs", r)
	}
}
