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
	"github.com/trireme-go/trireme/identity"
	"github.com/trireme-go/trireme/reason"
	"github.com/trireme-go/trireme/tokens"
)

func craftUDP(t *testing.T, srcMAC net.HardwareAddr, src, dst netip.AddrPort, payload []byte) []byte {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: srcMAC, DstMAC: net.HardwareAddr{2, 0, 0, 0, 0, dst.Addr().As4()[3]}, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: src.Addr().AsSlice(), DstIP: dst.Addr().AsSlice()}
	udp := &layers.UDP{SrcPort: layers.UDPPort(src.Port()), DstPort: layers.UDPPort(dst.Port())}
	udp.SetNetworkLayerForChecksum(ip)
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ip, udp, gopacket.Payload(payload)); err != nil {
		t.Fatal(err)
	}
	return bytes.Clone(buf.Bytes())
}

// TestDatagramCapture replays a crafted capture of UDP between two PUs (c
// and s, on two nodes), toward a target-network host without an enforcer
// (x) and from a host on the wire that spoofs c: the datagram handshake
// runs on the wire between the enforcers (hello, reply, confirm), the held
// datagrams are delivered unchanged, in order, as their captured packets;
// an application datagram that looks like a hello is delivered as it is;
// the datagram toward x is held while the hello is retried (4 hellos on
// the wire) and then dropped missing-token; the spoofed datagram is
// missing-token at s.
func TestDatagramCapture(t *testing.T) {
	c, s, x := netip.MustParseAddr("10.1.0.1"), netip.MustParseAddr("10.1.0.2"), netip.MustParseAddr("10.1.0.3")
	cMAC, wireMAC := net.HardwareAddr{2, 0, 0, 0, 0, 1}, net.HardwareAddr{2, 0, 0, 0, 0, 0x99}
	cs := netip.AddrPortFrom(c, 5000)
	ss := netip.AddrPortFrom(s, 53)
	lookalike := append(bytes.Clone(tokens.DatagramMarker[:]), tokens.Version, 4, 0, 30)
	lookalike = append(lookalike, bytes.Repeat([]byte{'j'}, 26)...)
	if tokens.KindOf(lookalike) != tokens.Hello {
		t.Fatal("the lookalike does not look like a hello")
	}
	frames := [][]byte{
		craftUDP(t, cMAC, cs, ss, []byte("q1")),                                                   // 0 held, then delivered
		craftUDP(t, cMAC, cs, ss, []byte("q2")),                                                   // 1 held, then delivered
		craftUDP(t, net.HardwareAddr{2, 0, 0, 0, 0, 2}, ss, cs, []byte("a1")),                     // 2 the answer
		craftUDP(t, cMAC, cs, ss, lookalike),                                                      // 3 looks like a hello
		craftUDP(t, cMAC, netip.AddrPortFrom(c, 6000), netip.AddrPortFrom(x, 53), []byte("lost")), // 4 x has no enforcer
		craftUDP(t, wireMAC, netip.AddrPortFrom(c, 7000), ss, []byte("spoofed")),                  // 5 from the wire, as c
	}
	path := filepath.Join(t.TempDir(), "datagrams.pcap")
	w, err := pcapio.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 12, 4, 1, 0, 0, 0, time.UTC)
	for i, f := range frames {
		if err := w.Write(t0.Add(time.Duration(i)*time.Millisecond), f); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	topo := &Topology{TargetNetworks: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/24")}, WireMACs: []net.HardwareAddr{wireMAC}}
	for _, p := range []struct {
		name string
		ip   netip.Addr
	}{{"c", c}, {"s", s}} {
		topo.PUs = append(topo.PUs, PUSpec{Name: p.name, Node: "node-" + p.name, IPs: []netip.Addr{p.ip},
			Tags: identity.NewTags(map[string]string{"app": p.name})})
	}
	out, sum, _ := run(t, path, topo, mustPolicy(t, allowAllPolicy), dataplane.MidStreamDrop)

	if sum.PacketsIn != 6 || sum.Forwarded != 4 || sum.Consumed != 0 || sum.Dropped[reason.MissingToken.String()] != 2 || len(sum.Dropped) != 1 {
		t.Fatalf("summary %+v", sum)
	}
	// Delivered: q1, q2 to s in order, a1 to c, the lookalike to s, each
	// the captured frame unchanged.
	var got []int
	for _, d := range out.delivered {
		if d.origin < 0 {
			continue
		}
		got = append(got, d.origin)
		if !bytes.Equal(d.frame, frames[d.origin]) {
			t.Fatalf("packet %d delivered changed", d.origin)
		}
	}
	if len(got) != 4 || got[0] != 0 || got[1] != 1 || got[2] != 2 || got[3] != 3 {
		t.Fatalf("delivered packets %v, want 0 1 2 3", got)
	}
	// On the wire: the handshake between c and s, and the hellos toward x.
	kinds := map[tokens.DatagramKind]int{}
	hellosToX := 0
	for _, f := range out.wire {
		var p packet.Packet
		if p.Decode(f) != reason.None {
			continue
		}
		k := tokens.KindOf(p.UDPPayload())
		if k == tokens.Hello && p.Dst == x {
			hellosToX++
			continue
		}
		kinds[k]++
	}
	if hellosToX != dataplane.HelloTries {
		t.Fatalf("%d hellos toward the host without an enforcer, want %d (the first and its retries)", hellosToX, dataplane.HelloTries)
	}
	// The lookalike is on the wire too (the application's datagram):
	// two hello-kind frames between c and s.
	if kinds[tokens.Hello] != 2 || kinds[tokens.Reply] != 1 || kinds[tokens.Confirm] != 1 {
		t.Fatalf("handshake messages on the wire: %v", kinds)
	}
	// Records: the flow c -> s allowed on both sides, with each other's
	// identity.
	allowed := 0
	for _, r := range out.records {
		if r.Server == ss && r.Client == cs && r.Action == "allow" {
			allowed++
		}
	}
	if allowed != 2 {
		t.Fatalf("records of c -> s: %+v", out.records)
	}
}
