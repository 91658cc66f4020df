package replay

import (
	"bytes"
	"net"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/trireme-go/trireme/dataplane"
	"github.com/trireme-go/trireme/dataplane/pcapio"
)

// ndpFrame crafts an Ethernet/IPv6/ICMPv6 frame; hbh adds the hop-by-hop
// header MLD messages carry.
func ndpFrame(t *testing.T, src, dst netip.Addr, hopLimit, typ uint8, body []byte, hbh bool) []byte {
	t.Helper()
	ip := &layers.IPv6{Version: 6, NextHeader: layers.IPProtocolICMPv6, HopLimit: hopLimit, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
	if hbh {
		ip.NextHeader = layers.IPProtocolIPv6HopByHop
		ip.HopByHop = &layers.IPv6HopByHop{}
		ip.HopByHop.NextHeader = layers.IPProtocolICMPv6
		ip.HopByHop.Options = []*layers.IPv6HopByHopOption{{OptionType: 5, OptionLength: 2, OptionData: []byte{0, 0}}, {OptionType: 1, OptionData: []byte{}}}
	}
	icmp := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(typ, 0)}
	_ = icmp.SetNetworkLayerForChecksum(ip)
	mac := net.HardwareAddr{2, 0, 0, 0, 0, 1}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		&layers.Ethernet{SrcMAC: mac, DstMAC: mac, EthernetType: layers.EthernetTypeIPv6}, ip, icmp, gopacket.Payload(body)); err != nil {
		t.Fatal(err)
	}
	return bytes.Clone(buf.Bytes())
}

// TestCraftedNDPCapture (issue #11 item 9, the NDP part): neighbour
// discovery between two PUs passes while it is on-link; NDP-typed
// messages used as a covert channel (off-link, routed, oversized) and a
// PU's router advertisement are dropped with their reason.
func TestCraftedNDPCapture(t *testing.T) {
	a, b := netip.MustParseAddr("fd00:77::1"), netip.MustParseAddr("fd00:77::2")
	ns := append(make([]byte, 4), b.AsSlice()...)
	frames := [][]byte{
		ndpFrame(t, a, netip.MustParseAddr("ff02::1:ff00:2"), 255, 135, ns, false),                            // 1 NS, solicited-node
		ndpFrame(t, b, a, 255, 136, ns, false),                                                                // 2 NA to the neighbour's ULA
		ndpFrame(t, a, netip.MustParseAddr("ff02::16"), 1, 143, make([]byte, 24), true),                       // 3 MLDv2 report
		ndpFrame(t, a, netip.MustParseAddr("2001:db8::7"), 255, 135, append(ns, make([]byte, 600)...), false), // 4 covert, off-link
		ndpFrame(t, a, b, 64, 135, ns, false),                                                                 // 5 routed (hop limit 64)
		ndpFrame(t, b, a, 255, 136, append(ns, make([]byte, 600)...), false),                                  // 6 oversized
		ndpFrame(t, a, netip.MustParseAddr("ff02::1"), 255, 134, make([]byte, 12), false),                     // 7 RA from a PU
	}
	path := filepath.Join(t.TempDir(), "ndp.pcap")
	w, err := pcapio.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for i, f := range frames {
		if err := w.Write(t0.Add(time.Duration(i)*time.Millisecond), f); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	out, sum, _ := run(t, path, everyIPaPU([]netip.Addr{a, b}), mustPolicy(t, allowAllPolicy), dataplane.MidStreamDrop)
	if sum.Forwarded != 3 || sum.Dropped["invalid-ndp"] != 3 || sum.Dropped["rogue-router"] != 1 {
		t.Fatalf("summary: %+v", sum)
	}
	for _, d := range out.delivered {
		if d.origin >= 3 {
			t.Errorf("packet %d delivered to %s", d.origin+1, d.pu)
		}
	}
}
