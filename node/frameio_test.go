package node

import (
	"net/netip"
	"testing"

	"github.com/trireme-go/trireme/dataplane/packet"
)

// frame builds an Ethernet frame with the given destination MAC and IP
// (IPv4 or IPv6 header, no payload).
func frame(dstMAC [6]byte, dst netip.Addr) []byte {
	b := make([]byte, 14, 14+40)
	copy(b, dstMAC[:])
	if dst.Is4() {
		b[12], b[13] = 0x08, 0x00
		ip := make([]byte, 20)
		ip[0], ip[3] = 0x45, 20
		a := dst.As4()
		copy(ip[16:], a[:])
		return append(b, ip...)
	}
	b[12], b[13] = 0x86, 0xdd
	ip := make([]byte, 48)
	ip[0], ip[5], ip[6] = 0x60, 8, 59 // 8 bytes of "no next header"
	a := dst.As16()
	copy(ip[24:], a[:])
	return append(b, ip...)
}

func TestNotForPU(t *testing.T) {
	unicast := [6]byte{0x02, 0x42, 0x0a, 0x4d, 0x00, 0x81}
	bcast := [6]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	f := &frameIO{pp: &puPorts{ips: []netip.Addr{netip.MustParseAddr("10.77.0.129"), netip.MustParseAddr("fd00:77::5")}}}
	var p packet.Packet
	notFor := func(f *frameIO, fr []byte) bool { return f.notForPU(&p, p.Decode(fr)) }
	for _, tc := range []struct {
		name  string
		frame []byte
		want  bool
	}{
		{"to the PU (v4)", frame(unicast, netip.MustParseAddr("10.77.0.129")), false},
		{"to the PU (v6)", frame(unicast, netip.MustParseAddr("fd00:77::5")), false},
		{"flooded, for another host (v4)", frame(unicast, netip.MustParseAddr("10.77.0.130")), true},
		{"flooded, for another host (v6)", frame(unicast, netip.MustParseAddr("fd00:77::6")), true},
		{"broadcast MAC", frame(bcast, netip.MustParseAddr("10.77.0.255")), false},
		{"multicast IP", frame(unicast, netip.MustParseAddr("ff02::1")), false},
		{"link-local", frame(unicast, netip.MustParseAddr("fe80::1")), false},
		{"ARP", append(frame(unicast, netip.MustParseAddr("10.77.0.130"))[:12], 0x08, 0x06), false},
		{"truncated IPv4", frame(unicast, netip.MustParseAddr("10.77.0.130"))[:30], false},
		{"runt", []byte{1, 2, 3}, false},
	} {
		if got := notFor(f, tc.frame); got != tc.want {
			t.Errorf("%s: notForPU = %v, want %v", tc.name, got, tc.want)
		}
	}
	// A PU without known addresses: nothing is filtered.
	if notFor(&frameIO{pp: &puPorts{}}, frame(unicast, netip.MustParseAddr("10.77.0.130"))) {
		t.Error("PU without addresses: frame filtered")
	}
	// Per-packet path: no allocation.
	fr := frame(unicast, netip.MustParseAddr("fd00:77::6"))
	if n := testing.AllocsPerRun(100, func() { notFor(f, fr) }); n != 0 {
		t.Errorf("notForPU allocates %v times per frame", n)
	}
}
