package attacks

import (
	mrand "math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/google/gopacket/layers"

	"github.com/trireme-go/trireme/testenv"
)

var (
	dot1q = layers.EthernetTypeDot1Q // 0x8100
	qinq  = layers.EthernetTypeQinQ  // 0x88a8
)

// TestVLANTaggedFrames: the attacker PU sends its frames inside 802.1Q and
// 802.1ad (QinQ) tags, including priority tags (VLAN 0) that the receiving
// kernel strips and handles as untagged frames. The kernel steers what it
// reads under the outer tag; the enforcer reads up to two tags and keys
// flows by them (a priority tag counts as untagged, as for the kernel), so
// a tagged SYN to db:5432 is decided like an untagged one: db's enforcer
// verifies the attacker's token and db's ingress rules refuse it. Three
// tags are refused as unsupported. Data injected into web's connection to
// db under tags has no flow of the attacker's and is dropped. Nothing
// reaches db's socket, and db's connection with web is unharmed.
func TestVLANTaggedFrames(t *testing.T) {
	s := newScene(t, sceneOptions{})
	v := serveVictim(t, s.db, s.db.Addr, 5432)
	c, err := s.web.Dial(v.Addr, 3*time.Second)
	if err != nil {
		t.Fatalf("web -> db:5432 (allowed): %v", err)
	}
	t.Cleanup(func() { c.Close() })
	if err := testenv.EchoConn(c, "hello", 3*time.Second); err != nil {
		t.Fatal(err)
	}
	client := netip.MustParseAddrPort(c.LocalAddr().String())
	raw := s.attacker.Raw()
	seen := s.db.Raw()
	dbMAC, webMAC := s.db.MACOf(), s.web.MACOf()

	// A tag the attacker may use in the wrong place lets a denial through
	// only if the kernel and the enforcer disagree on the frame; a later
	// kernel anti-spoofing check (spoofed-source) may also stop it first.
	denied := []string{"policy-denied", "spoofed-source"}
	cases := []struct {
		name  string
		vlans []vlanTag
		want  []string
	}{
		{"802.1Q VLAN 5", []vlanTag{{dot1q, 5}}, denied},
		{"802.1Q priority tag (VLAN 0)", []vlanTag{{dot1q, 0}}, denied},
		{"QinQ 5/6", []vlanTag{{qinq, 5}, {dot1q, 6}}, denied},
		{"QinQ priority tags 0/0", []vlanTag{{qinq, 0}, {dot1q, 0}}, denied},
		{"three tags", []vlanTag{{dot1q, 5}, {dot1q, 6}, {dot1q, 7}}, []string{"unsupported-protocol", "spoofed-source"}},
	}
	var ports []uint16
	for i, tc := range cases {
		port := uint16(43000 + i)
		ports = append(ports, port)
		t.Run("SYN/"+tc.name, func(t *testing.T) {
			before := s.drops()
			raw.MustSend(seg{srcMAC: raw.MAC, dstMAC: dbMAC, vlans: tc.vlans, src: netip.AddrPortFrom(s.attacker.Addr, port), dst: v.Addr,
				flags: "S", seq: mrand.Uint32(), opts: []layers.TCPOption{mss}}.frame())
			waitDropOn(t, s.d, before, tc.want...)
		})
	}
	for _, tc := range cases[:4] {
		t.Run("injection/"+tc.name, func(t *testing.T) {
			before := s.drops()
			raw.MustSend(seg{srcMAC: webMAC, dstMAC: dbMAC, vlans: tc.vlans, src: client, dst: v.Addr,
				flags: "PA", seq: mrand.Uint32(), ack: mrand.Uint32(), payload: []byte("INJECTED")}.frame())
			waitDropOn(t, s.d, before, "unknown-flow", "spoofed-source")
		})
	}
	if err := testenv.EchoConn(c, "still-ok", 3*time.Second); err != nil {
		t.Fatalf("web's connection after the attacks: %v", err)
	}
	if got := seen.Capture(300*time.Millisecond, fromPort(ports...)); len(got) != 0 {
		t.Errorf("%d tagged SYNs of the attacker reached db's interface", len(got))
	}
	if got := seen.Capture(100*time.Millisecond, carrying("INJECTED")); len(got) != 0 {
		t.Errorf("%d injected frames reached db's interface", len(got))
	}
	if a, r := v.Accepted(), v.Read(); len(a) != 1 || r != "hellostill-ok" {
		t.Errorf("db accepted %v and read %q, want web's connection and its bytes only", a, r)
	}
}
