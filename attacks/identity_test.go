package attacks

import (
	"bytes"
	mrand "math/rand/v2"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/trireme-go/trireme/testenv"
)

// TestPUPresentsOnlyItsOwnIdentity: whatever a PU puts in its SYN, its own
// enforcer puts the marker option first and the PU's own token frame at the
// start of the payload, and the server's enforcer reads that one. The
// attacker holds a valid token of web (as if it had stolen one) and sends
// it in its SYN to db:5432 with the marker, or sends the marker alone: db's
// enforcer sees the attacker's identity and db's rules refuse it; its flow
// record names app=attacker. (The stolen token is SYN data to the
// attacker's enforcer: it takes it off before its own token goes on, as
// any data on a SYN toward a PU, so it never leaves the veth.) A SYN whose
// options leave no room for the marker is refused by the attacker's own
// enforcer and never leaves its veth. Nothing reaches db.
func TestPUPresentsOnlyItsOwnIdentity(t *testing.T) {
	for _, mode := range []string{"pki", "psk"} {
		t.Run(mode, func(t *testing.T) {
			s := newScene(t, sceneOptions{PSK: mode == "psk"})
			v := serveVictim(t, s.db, s.db.Addr, 5432)
			raw := s.attacker.Raw()
			seen := s.db.Raw()
			dbMAC := s.db.MACOf()
			eng := sceneTokens(t, s)
			stolen := mintSYN(t, eng, map[string]string{"app": "web"}, time.Now())
			full := []layers.TCPOption{marker}
			for len(full) < 37 { // 4 + 36 NOPs: the 40 bytes of option space
				full = append(full, layers.TCPOption{OptionType: layers.TCPOptionKindNop})
			}
			withStolen := "policy-denied"
			cases := []struct {
				name    string
				opts    []layers.TCPOption
				payload []byte
				want    string
			}{
				{"web's token with the marker", []layers.TCPOption{marker, mss}, stolen, withStolen},
				{"web's token without the marker", []layers.TCPOption{mss}, stolen, withStolen},
				{"the marker without a token", []layers.TCPOption{marker, mss}, nil, "policy-denied"},
				{"web's token, no room left for the marker", full, stolen, "no-room-for-token"},
			}
			var ports []uint16
			for i, c := range cases {
				port := uint16(46000 + i)
				ports = append(ports, port)
				t.Run(c.name, func(t *testing.T) {
					before := s.drops()
					from := netip.AddrPortFrom(s.attacker.Addr, port)
					raw.MustSend(seg{srcMAC: raw.MAC, dstMAC: dbMAC, src: from, dst: v.Addr,
						flags: "S", seq: mrand.Uint32(), opts: c.opts, payload: c.payload}.frame())
					waitDropOn(t, s.d, before, c.want)
					if c.want != "policy-denied" {
						return
					}
					r := waitRecordOf(t, s.d, from, v.Addr)
					if !slices.Contains(r.Remote.Tags, "app=attacker") || slices.Contains(r.Remote.Tags, "app=web") {
						t.Fatalf("db's enforcer saw the identity %v, want the attacker's", r.Remote.Tags)
					}
				})
			}
			if got := seen.Capture(300*time.Millisecond, fromPort(ports...)); len(got) != 0 {
				t.Errorf("%d of the attacker's SYNs reached db's interface", len(got))
			}
			if a := v.Accepted(); len(a) != 0 {
				t.Errorf("db accepted %v", a)
			}
		})
	}
}

// TestPUCannotSniffTokens: a PU never receives other PUs' frames, so it
// cannot collect their tokens to replay them, even when the bridge floods
// them to every port (here: db's bridge port stops learning and its MAC is
// forgotten, as after an FDB flush or a MAC-flooding attack). The flooded
// copies reach the attacker's veth, where its enforcer drops frames
// addressed to another host (the foreign-frames counter); web's connection
// to db, its token and its data never reach the attacker's interface.
func TestPUCannotSniffTokens(t *testing.T) {
	s := newScene(t, sceneOptions{})
	v := serveVictim(t, s.db, s.db.Addr, 5432)
	dbMAC := s.db.MACOf()
	s.node.MustDo(func() error {
		l, err := netlink.LinkByName(s.db.Link.HostName)
		if err != nil {
			return err
		}
		if err := netlink.LinkSetLearning(l, false); err != nil {
			return err
		}
		fdb, err := netlink.NeighList(l.Attrs().Index, unix.AF_BRIDGE)
		if err != nil {
			return err
		}
		for _, n := range fdb {
			if bytes.Equal(n.HardwareAddr, dbMAC) && n.State&netlink.NUD_PERMANENT == 0 {
				if err := netlink.NeighDel(&n); err != nil {
					return err
				}
			}
		}
		return nil
	})
	raw := s.attacker.Raw()
	foreign := countersOf(t, s.d)["foreign-frames"]

	c, err := s.web.Dial(v.Addr, 3*time.Second)
	if err != nil {
		t.Fatalf("web -> db:5432 (allowed): %v", err)
	}
	defer c.Close()
	if err := testenv.EchoConn(c, "secret-payload", 3*time.Second); err != nil {
		t.Fatal(err)
	}
	client := netip.MustParseAddrPort(c.LocalAddr().String())
	got := raw.Capture(300*time.Millisecond, func(p gopacket.Packet) bool {
		tcp := tcpOf(p)
		return tcp != nil && (uint16(tcp.SrcPort) == client.Port() || uint16(tcp.DstPort) == client.Port()) ||
			bytes.Contains(p.Data(), []byte("secret-payload"))
	})
	if len(got) != 0 {
		t.Errorf("%d frames of web's connection reached the attacker, first: %v", len(got), got[0])
	}
	if n := countersOf(t, s.d)["foreign-frames"]; n <= foreign {
		t.Errorf("foreign-frames %d -> %d: the bridge flooded nothing to the attacker (the test did not make it flood)", foreign, n)
	}
}
