package policy

import (
	"net/netip"
	"testing"
)

// IPv6 link-local addresses are always inside the target networks (a peer
// there must present a token); nothing else changes.
func TestLinkLocalIsTarget(t *testing.T) {
	e, err := Compile(&Set{TargetNetworks: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}})
	if err != nil {
		t.Fatal(err)
	}
	for a, want := range map[string]bool{
		"fe80::1":             true,
		"febf:ffff::1":        true, // the top of fe80::/10
		"fec0::1":             false,
		"10.1.2.3":            true,
		"::ffff:10.1.2.3":     true,
		"169.254.1.1":         false, // IPv4 link-local: only if listed
		"192.0.2.1":           false,
		"ff02::1":             false,
		"2001:db8::1":         false,
		"::ffff:169.254.0.1":  false,
		"fe80::1%eth0":        true,
		"fd00:77::2":          false,
		"fe80::200:5eff:fe00": true,
	} {
		if got := e.IsTarget(netip.MustParseAddr(a)); got != want {
			t.Errorf("IsTarget(%s) = %v, want %v", a, got, want)
		}
	}
}
