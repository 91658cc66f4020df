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
	"github.com/trireme-go/trireme/dataplane/packet"
	"github.com/trireme-go/trireme/dataplane/pcapio"
)

type craftSeg struct {
	src, dst     netip.Addr
	sport, dport uint16
	syn, ack     bool
	fin, rst     bool
	seq, ackN    uint32
	data         string
}

func craft(t *testing.T, s craftSeg) []byte {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: net.HardwareAddr{2, 0, 0, 0, 0, s.src.As4()[3]}, DstMAC: net.HardwareAddr{2, 0, 0, 0, 0, s.dst.As4()[3]}, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: s.src.AsSlice(), DstIP: s.dst.AsSlice(), Flags: layers.IPv4DontFragment}
	tcp := &layers.TCP{SrcPort: layers.TCPPort(s.sport), DstPort: layers.TCPPort(s.dport), Seq: s.seq, Ack: s.ackN, Window: 502,
		SYN: s.syn, ACK: s.ack, FIN: s.fin, RST: s.rst, PSH: s.data != ""}
	if s.syn {
		tcp.Options = []layers.TCPOption{
			{OptionType: layers.TCPOptionKindMSS, OptionLength: 4, OptionData: []byte{5, 0xb4}},
			{OptionType: layers.TCPOptionKindSACKPermitted, OptionLength: 2},
			{OptionType: layers.TCPOptionKindTimestamps, OptionLength: 10, OptionData: []byte{0, 0, 0, 1, 0, 0, 0, 0}},
			{OptionType: layers.TCPOptionKindNop},
			{OptionType: layers.TCPOptionKindWindowScale, OptionLength: 3, OptionData: []byte{7}},
		}
	}
	tcp.SetNetworkLayerForChecksum(ip)
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		eth, ip, tcp, gopacket.Payload(s.data)); err != nil {
		t.Fatal(err)
	}
	return bytes.Clone(buf.Bytes())
}

// TestCraftedCapture writes a capture of handshake edge cases with gopacket
// and replays it through two enforced PUs: retransmitted SYN and SYN-ACK,
// data on the handshake ACK, FIN both ways, and a SYN to a closed port.
func TestCraftedCapture(t *testing.T) {
	c, s := netip.MustParseAddr("10.1.0.1"), netip.MustParseAddr("10.1.0.2")
	segs := []craftSeg{
		{src: c, dst: s, sport: 1111, dport: 80, syn: true, seq: 100},                                             // 1 SYN
		{src: c, dst: s, sport: 1111, dport: 80, syn: true, seq: 100},                                             // 2 SYN again
		{src: s, dst: c, sport: 80, dport: 1111, syn: true, ack: true, seq: 500, ackN: 101},                       // 3 SYN-ACK
		{src: s, dst: c, sport: 80, dport: 1111, syn: true, ack: true, seq: 500, ackN: 101},                       // 4 SYN-ACK again
		{src: c, dst: s, sport: 1111, dport: 80, ack: true, seq: 101, ackN: 501, data: "GET / HTTP/1.0\r\n\r\n"},  // 5 data on the ACK
		{src: s, dst: c, sport: 80, dport: 1111, ack: true, seq: 501, ackN: 119, data: "HTTP/1.0 200 OK\r\n\r\n"}, // 6
		{src: c, dst: s, sport: 1111, dport: 80, fin: true, ack: true, seq: 119, ackN: 520},                       // 7 FIN
		{src: s, dst: c, sport: 80, dport: 1111, fin: true, ack: true, seq: 520, ackN: 120},                       // 8 FIN
		{src: c, dst: s, sport: 1111, dport: 80, ack: true, seq: 120, ackN: 521},                                  // 9 last ACK
		{src: c, dst: s, sport: 2222, dport: 81, syn: true, seq: 7},                                               // 10 SYN to a closed port
		{src: s, dst: c, sport: 81, dport: 2222, rst: true, ack: true, ackN: 8},                                   // 11 RST+ACK
	}
	path := filepath.Join(t.TempDir(), "crafted.pcap")
	w, err := pcapio.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	var want [][]byte
	for i, sg := range segs {
		f := craft(t, sg)
		want = append(want, f)
		if err := w.Write(t0.Add(time.Duration(i)*time.Millisecond), f); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	topo := everyIPaPU([]netip.Addr{c, s})

	out, sum, pkts := run(t, path, topo, mustPolicy(t, allowAllPolicy), dataplane.MidStreamDrop)
	if len(pkts) != len(segs) {
		t.Fatalf("read back %d packets", len(pkts))
	}
	// All 11 delivered unchanged; one token-ACK injected before the data of
	// packet 5; one connection allowed, the other incomplete (the closed
	// port's server PU accepted the SYN, its kernel answered with the RST:
	// the handshake never completed).
	if sum.Forwarded != 11 || sum.Injected != 1 || len(sum.Dropped) != 0 || sum.ConnectionsAllowed != 1 || sum.ConnectionsIncomplete != 1 {
		t.Fatalf("allow-all: %+v", sum)
	}
	for _, d := range out.delivered {
		if d.origin >= 0 && !bytes.Equal(d.frame, want[d.origin]) {
			t.Fatalf("packet %d delivered changed", d.origin+1)
		}
	}
	// Retransmissions carry the same token bytes on the wire.
	if !bytes.Equal(out.wire[0], out.wire[1]) || !bytes.Equal(out.wire[2], out.wire[3]) || len(out.wire[0]) <= len(want[0]) {
		t.Fatal("retransmitted SYN / SYN-ACK differ on the wire")
	}
	// The token-ACK went on the wire right before packet 5's data.
	var tokACK, data packet.Packet
	tokACK.Decode(out.wire[4])
	data.Decode(out.wire[5])
	if tokACK.Flags != packet.ACK || tokACK.Seq != 101 || !bytes.Equal(out.wire[5], want[4]) {
		t.Fatalf("token-ACK %+v before data", tokACK)
	}
	ends := map[string]int{}
	for _, r := range out.records {
		ends[string(r.End)]++
	}
	// conn 1: FIN both ways, closed at the end of the replay (still in its
	// closing time: "open"); conn 2: reset on both sides.
	if ends["reset"] != 2 || ends["open"] != 2 || len(out.records) != 4 {
		t.Fatalf("record ends: %v", ends)
	}

	out, sum, _ = run(t, path, topo, mustPolicy(t, denyAllPolicy), dataplane.MidStreamDrop)
	// Both SYNs refused by the servers' enforcers, each answered by a RST
	// that ends the client's flow, which leaves nothing behind at the
	// client's enforcer: the replayed retransmission (2) is a SYN again,
	// answered from the server's denied flow with another RST; the
	// client's later packets (5, 7, 9) are of no flow; the servers' packets
	// (3, 4, 6, 8, 11) hit their denied flows. Nothing captured reaches a PU.
	rsts := 0
	for _, d := range out.delivered {
		if d.origin >= 0 {
			t.Fatalf("packet %d delivered under deny-all", d.origin+1)
		}
		rsts++
	}
	if sum.Forwarded != 0 || sum.ConnectionsDenied != 2 || rsts != 3 || sum.Dropped["policy-denied"] != 8 || sum.Dropped["unknown-flow"] != 3 {
		t.Fatalf("deny-all: %+v, %d RSTs", sum, rsts)
	}
}
