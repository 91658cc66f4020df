package replay

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/trireme-go/trireme/dataplane/packet"
	"github.com/trireme-go/trireme/dataplane/pcapio"
	"github.com/trireme-go/trireme/identity"
	"github.com/trireme-go/trireme/ipproto"
)

// Crafted captures of the attacks of issue 11 (items 4, 5, 6, 9, 10),
// replayed through enforced PUs with exact expected outcomes. web
// (10.1.0.1) and db (10.1.0.2) are PUs on their own nodes; 192.0.2.0/24
// is outside the target networks; the attacker is a host on the wire
// (Topology.WireMACs): its frames reach the receiver's enforcer without
// passing any sender's, whatever address they claim.

var (
	webIP, dbIP = netip.MustParseAddr("10.1.0.1"), netip.MustParseAddr("10.1.0.2")
	extHost     = netip.MustParseAddr("192.0.2.53")
	routerIP    = netip.MustParseAddr("192.0.2.1")
	covertIP    = netip.MustParseAddr("198.18.0.7")
	attackerMAC = net.HardwareAddr{2, 0x66, 0x66, 0x66, 0x66, 0x66}
)

func webDBTopology() *Topology {
	return &Topology{
		TargetNetworks: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/24")},
		PUs: []PUSpec{
			{Name: "web", Node: "node-web", IPs: []netip.Addr{webIP}, Tags: identity.NewTags(map[string]string{"app": "web"})},
			{Name: "db", Node: "node-db", IPs: []netip.Addr{dbIP}, Tags: identity.NewTags(map[string]string{"app": "db"})},
		},
		WireMACs: []net.HardwareAddr{attackerMAC},
	}
}

// webDBPolicy: web may open connections to db (any port) and query DNS
// outside; db accepts web, and web's ingress accepts db on tcp/80, but
// db's egress allows nothing: db cannot open a connection to web.
const webDBPolicy = `
policies:
  - name: web
    selector: app=web
    ingress: [{name: from-db, from: [{selector: app=db}], ports: [tcp/80], action: allow}]
    egress:
      - {name: to-db, to: [{selector: app=db}], action: allow}
      - {name: dns, to: [{cidr: 192.0.2.0/24}], ports: [udp/53], action: allow}
  - name: db
    selector: app=db
    ingress: [{name: from-web, from: [{selector: app=web}], action: allow}]
`

// onWire marks a frame as sent by the attacker on the wire.
func onWire(f []byte) []byte {
	copy(f[6:12], attackerMAC)
	return f
}

// withOpts crafts a segment with the given TCP options.
func withOpts(t *testing.T, s craftSeg, opts []layers.TCPOption) []byte {
	t.Helper()
	f := craft(t, s)
	var p packet.Packet
	if p.Decode(f) != 0 {
		t.Fatal("crafted segment does not parse")
	}
	eth := &layers.Ethernet{SrcMAC: f[6:12], DstMAC: f[0:6], EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: s.src.AsSlice(), DstIP: s.dst.AsSlice(), Flags: layers.IPv4DontFragment}
	tcp := &layers.TCP{SrcPort: layers.TCPPort(s.sport), DstPort: layers.TCPPort(s.dport), Seq: s.seq, Ack: s.ackN, Window: 502,
		SYN: s.syn, ACK: s.ack, FIN: s.fin, RST: s.rst, PSH: s.data != "", Options: opts}
	tcp.SetNetworkLayerForChecksum(ip)
	return serializeFrame(t, eth, ip, tcp, gopacket.Payload(s.data))
}

func serializeFrame(t *testing.T, ls ...gopacket.SerializableLayer) []byte {
	t.Helper()
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatal(err)
	}
	return bytes.Clone(buf.Bytes())
}

func macOf(a netip.Addr) net.HardwareAddr { return net.HardwareAddr{2, 0, 0, 0, 0, a.As4()[3]} }

// ipFrame is an IPv4 frame carrying proto's bytes (a fragment when flags
// or off say so).
func ipFrame(t *testing.T, src, dst netip.Addr, proto layers.IPProtocol, id uint16, flags layers.IPv4Flag, off uint16, data []byte) []byte {
	eth := &layers.Ethernet{SrcMAC: macOf(src), DstMAC: macOf(dst), EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: proto, SrcIP: src.AsSlice(), DstIP: dst.AsSlice(), Id: id, Flags: flags, FragOffset: off}
	return serializeFrame(t, eth, ip, gopacket.Payload(data))
}

// icmpErr is an ICMP error (type, code) from src to dst quoting q and
// extra bytes.
func icmpErr(t *testing.T, src, dst netip.Addr, typ, code uint8, q []byte) []byte {
	eth := &layers.Ethernet{SrcMAC: macOf(src), DstMAC: macOf(dst), EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolICMPv4, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
	return serializeFrame(t, eth, ip, &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(typ, code)}, gopacket.Payload(q))
}

// udpDatagram returns the UDP header and payload of a datagram of n bytes
// (checksum left zero: no checksum, as IPv4 allows).
func udpDatagram(sport, dport uint16, n int) []byte {
	b := make([]byte, 8+n)
	b[0], b[1], b[2], b[3] = byte(sport>>8), byte(sport), byte(dport>>8), byte(dport)
	b[4], b[5] = byte((8+n)>>8), byte(8+n)
	for i := 8; i < len(b); i++ {
		b[i] = byte(i)
	}
	return b
}

// fragments splits a datagram's transport bytes into IPv4 fragments of at
// most 1480 bytes.
func fragments(t *testing.T, src, dst netip.Addr, id uint16, dgram []byte) [][]byte {
	var out [][]byte
	for off := 0; off < len(dgram); off += 1480 {
		end := min(off+1480, len(dgram))
		var flags layers.IPv4Flag
		if end < len(dgram) {
			flags = layers.IPv4MoreFragments
		}
		out = append(out, ipFrame(t, src, dst, layers.IPProtocolUDP, id, flags, uint16(off/8), dgram[off:end]))
	}
	return out
}

// replayFrames writes frames as a capture (1 ms apart) and replays it.
func replayFrames(t *testing.T, topo *Topology, pol string, frames [][]byte) (*memOut, Summary) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "attack.pcap")
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
	pkts := load(t, path)
	out := &memOut{}
	r, err := New(Options{Topology: topo, Policy: mustPolicy(t, pol), Out: out})
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range pkts {
		r.Packet(i, c.t, c.frame)
	}
	return out, r.Finish()
}

// deliveredOrigins lists, per PU, the captured packets (1-based) delivered.
func deliveredOrigins(out *memOut) map[string][]int {
	m := map[string][]int{}
	for _, d := range out.delivered {
		if d.origin >= 0 {
			m[d.pu] = append(m[d.pu], d.origin+1)
		}
	}
	return m
}

func mustSummary(t *testing.T, sum Summary, forwarded int, dropped map[string]int, allowed, denied, incomplete int) {
	t.Helper()
	if sum.Forwarded != forwarded || fmt.Sprint(sum.Dropped) != fmt.Sprint(dropped) ||
		sum.ConnectionsAllowed != allowed || sum.ConnectionsDenied != denied || sum.ConnectionsIncomplete != incomplete {
		t.Fatalf("summary %+v\nwant forwarded %d dropped %v allowed %d denied %d incomplete %d", sum, forwarded, dropped, allowed, denied, incomplete)
	}
}

func endsOf(out *memOut) map[string]int {
	m := map[string]int{}
	for _, r := range out.records {
		m[string(r.End)+"/"+r.Reason]++
	}
	return m
}

// TestCraftedSYNOnEstablished (item 4): the attacker's SYNs (new ISN, no
// token, one with data) on an established web -> db connection are dropped
// by db's enforcer and recorded as refused attempts; the connection goes
// on, nothing is replaced, no RST answers them.
func TestCraftedSYNOnEstablished(t *testing.T) {
	w, d := webIP, dbIP
	frames := [][]byte{
		craft(t, craftSeg{src: w, dst: d, sport: 1111, dport: 80, syn: true, seq: 100}),                                    // 1
		craft(t, craftSeg{src: d, dst: w, sport: 80, dport: 1111, syn: true, ack: true, seq: 500, ackN: 101}),              // 2
		craft(t, craftSeg{src: w, dst: d, sport: 1111, dport: 80, ack: true, seq: 101, ackN: 501}),                         // 3
		craft(t, craftSeg{src: w, dst: d, sport: 1111, dport: 80, ack: true, seq: 101, ackN: 501, data: "GET"}),            // 4
		craft(t, craftSeg{src: d, dst: w, sport: 80, dport: 1111, ack: true, seq: 501, ackN: 104, data: "OK"}),             // 5
		onWire(craft(t, craftSeg{src: w, dst: d, sport: 1111, dport: 80, syn: true, seq: 99999})),                          // 6 spoofed SYN
		craft(t, craftSeg{src: w, dst: d, sport: 1111, dport: 80, ack: true, seq: 104, ackN: 503, data: "MORE"}),           // 7
		craft(t, craftSeg{src: d, dst: w, sport: 80, dport: 1111, ack: true, seq: 503, ackN: 108}),                         // 8
		onWire(craft(t, craftSeg{src: w, dst: d, sport: 1111, dport: 80, syn: true, seq: 99999, data: "spoofed-payload"})), // 9 with data
		craft(t, craftSeg{src: w, dst: d, sport: 1111, dport: 80, ack: true, seq: 108, ackN: 503, data: "LAST"}),           // 10
	}
	out, sum := replayFrames(t, webDBTopology(), webDBPolicy, frames)
	// The two spoofed SYNs are two refused attempts of their own.
	mustSummary(t, sum, 8, map[string]int{"missing-token": 2}, 1, 2, 0)
	if got := fmt.Sprint(deliveredOrigins(out)); got != "map[db:[1 3 4 7 10] web:[2 5 8]]" {
		t.Fatalf("delivered %s", got)
	}
	if e := endsOf(out); e["replaced/none"] != 0 || e["refused/missing-token"] != 2 || e["open/none"] != 2 {
		t.Fatalf("records %v", e)
	}
	if sum.Injected != 0 {
		t.Fatalf("%d frames injected: no RST may answer a SYN on a live connection", sum.Injected)
	}
}

// TestCraftedRSTs (item 5): RSTs the receiver would not accept do not end
// flows: out of the window, dropped; in the window but not exact, passed
// on (the receiver challenges it) with the flow kept; in SYN-SENT, a
// RST+ACK that does not acknowledge the SYN (dropped) does not stop the
// real handshake. The exact RST ends its connection.
func TestCraftedRSTs(t *testing.T) {
	w, d := webIP, dbIP
	frames := [][]byte{
		craft(t, craftSeg{src: w, dst: d, sport: 1111, dport: 80, syn: true, seq: 100}),                             // 1
		craft(t, craftSeg{src: d, dst: w, sport: 80, dport: 1111, syn: true, ack: true, seq: 500, ackN: 101}),       // 2
		craft(t, craftSeg{src: w, dst: d, sport: 1111, dport: 80, ack: true, seq: 101, ackN: 501, data: "GET"}),     // 3
		craft(t, craftSeg{src: d, dst: w, sport: 80, dport: 1111, ack: true, seq: 501, ackN: 104, data: "OK"}),      // 4
		onWire(craft(t, craftSeg{src: w, dst: d, sport: 1111, dport: 80, rst: true, seq: 104 + 1<<30})),             // 5 far out
		onWire(craft(t, craftSeg{src: d, dst: w, sport: 80, dport: 1111, rst: true, ack: true, seq: 400, ackN: 1})), // 6 behind
		onWire(craft(t, craftSeg{src: w, dst: d, sport: 1111, dport: 80, rst: true, seq: 104 + 100})),               // 7 in window
		craft(t, craftSeg{src: w, dst: d, sport: 1111, dport: 80, ack: true, seq: 104, ackN: 503, data: "MORE"}),    // 8
		craft(t, craftSeg{src: w, dst: d, sport: 2222, dport: 81, syn: true, seq: 7000}),                            // 9 second connection
		onWire(craft(t, craftSeg{src: d, dst: w, sport: 81, dport: 2222, rst: true, ack: true, ackN: 7777})),        // 10 RST+ACK, wrong ack
		onWire(craft(t, craftSeg{src: d, dst: w, sport: 81, dport: 2222, syn: true, ack: true, seq: 1, ackN: 6})),   // 11 SYN-ACK, wrong ack
		craft(t, craftSeg{src: d, dst: w, sport: 81, dport: 2222, syn: true, ack: true, seq: 8000, ackN: 7001}),     // 12 the real SYN-ACK
		craft(t, craftSeg{src: w, dst: d, sport: 2222, dport: 81, ack: true, seq: 7001, ackN: 8001}),                // 13
		craft(t, craftSeg{src: w, dst: d, sport: 1111, dport: 80, rst: true, seq: 108}),                             // 14 exact: ends conn 1
		craft(t, craftSeg{src: w, dst: d, sport: 1111, dport: 80, ack: true, seq: 108, ackN: 503, data: "LATE"}),    // 15 after the RST
	}
	out, sum := replayFrames(t, webDBTopology(), webDBPolicy, frames)
	// 5, 6, 10, 11 out of the window; 15 after the reset (its sender's own
	// enforcer drops it).
	mustSummary(t, sum, 10, map[string]int{"out-of-window": 4, "invalid-state": 1}, 2, 0, 0)
	if got := fmt.Sprint(deliveredOrigins(out)); got != "map[db:[1 3 7 8 9 13 14] web:[2 4 12]]" {
		t.Fatalf("delivered %s", got)
	}
	if e := endsOf(out); e["reset/none"] != 2 || e["open/none"] != 2 {
		t.Fatalf("records %v", e)
	}
}

// tfoOpts are a Linux SYN's options with a TCP Fast Open cookie.
var tfoOpts = []layers.TCPOption{
	{OptionType: layers.TCPOptionKindMSS, OptionLength: 4, OptionData: []byte{5, 0xb4}},
	{OptionType: layers.TCPOptionKindSACKPermitted, OptionLength: 2},
	{OptionType: layers.TCPOptionKindTimestamps, OptionLength: 10, OptionData: []byte{0, 0, 0, 1, 0, 0, 0, 0}},
	{OptionType: layers.TCPOptionKindNop},
	{OptionType: layers.TCPOptionKindWindowScale, OptionLength: 3, OptionData: []byte{7}},
	{OptionType: 34, OptionLength: 10, OptionData: []byte{1, 2, 3, 4, 5, 6, 7, 8}},
	{OptionType: layers.TCPOptionKindNop}, {OptionType: layers.TCPOptionKindNop},
}

// TestCraftedSYNData (item 6): db opens a connection to web with 407 bytes
// of TCP Fast Open data; web's ingress allows db, db's egress refuses web
// at the SYN-ACK (the server acknowledged the data, as a Fast Open server
// does). Not a byte of the data reaches web, and the connection counts as
// denied. web's own 1,400-byte Fast Open SYN to db (allowed both ways) is
// not refused for want of room for the token; its data reaches db once
// the handshake is done, when web's kernel sends it again.
func TestCraftedSYNData(t *testing.T) {
	w, d := webIP, dbIP
	secret := string(bytes.Repeat([]byte("S"), 407))
	big := string(bytes.Repeat([]byte("B"), 1400))
	frames := [][]byte{
		withOpts(t, craftSeg{src: d, dst: w, sport: 3333, dport: 80, syn: true, seq: 100, data: secret}, tfoOpts), // 1
		craft(t, craftSeg{src: w, dst: d, sport: 80, dport: 3333, syn: true, ack: true, seq: 900, ackN: 508}),     // 2 acks the data
		withOpts(t, craftSeg{src: w, dst: d, sport: 4444, dport: 5432, syn: true, seq: 10, data: big}, tfoOpts),   // 3
		craft(t, craftSeg{src: d, dst: w, sport: 5432, dport: 4444, syn: true, ack: true, seq: 50, ackN: 11}),     // 4 acks the SYN only
		craft(t, craftSeg{src: w, dst: d, sport: 4444, dport: 5432, ack: true, seq: 11, ackN: 51}),                // 5
		craft(t, craftSeg{src: w, dst: d, sport: 4444, dport: 5432, ack: true, seq: 11, ackN: 51, data: big}),     // 6 sent again
	}
	out, sum := replayFrames(t, webDBTopology(), webDBPolicy, frames)
	// 2 is refused by db's egress (db gets a RST, web's half-open one too).
	mustSummary(t, sum, 5, map[string]int{"policy-denied": 1}, 1, 1, 0)
	for _, dl := range out.delivered {
		var p packet.Packet
		if p.Decode(dl.frame) != 0 || p.Proto != ipproto.TCP {
			continue
		}
		if p.Flags&packet.SYN != 0 && p.PayloadLen() != 0 || bytes.Contains(dl.frame, []byte("SSSS")) {
			t.Fatalf("packet %d delivered to %s with SYN data", dl.origin+1, dl.pu)
		}
	}
	if got := fmt.Sprint(deliveredOrigins(out)); got != "map[db:[3 5 6] web:[1 4]]" {
		t.Fatalf("delivered %s", got)
	}
}

// TestCraftedICMPErrors (item 9): ICMP errors about web's connection to
// db pass only on that connection's path.
func TestCraftedICMPErrors(t *testing.T) {
	w, d := webIP, dbIP
	synack := craft(t, craftSeg{src: d, dst: w, sport: 80, dport: 1111, syn: true, ack: true, seq: 500, ackN: 101})
	fromDB := synack[14 : 14+28] // a packet web received, as an error quotes it
	syn := craft(t, craftSeg{src: w, dst: d, sport: 1111, dport: 80, syn: true, seq: 100})
	fromWeb := syn[14 : 14+28] // a packet web sent
	secret := bytes.Repeat([]byte("X"), 34)
	frames := [][]byte{
		syn,    // 1
		synack, // 2
		craft(t, craftSeg{src: w, dst: d, sport: 1111, dport: 80, ack: true, seq: 101, ackN: 501}), // 3
		icmpErr(t, w, covertIP, 3, 3, append(bytes.Clone(fromDB), secret...)),                      // 4 covert
		icmpErr(t, w, d, 3, 3, fromDB),                                                     // 5 back to db: fits
		icmpErr(t, routerIP, w, 3, 4, fromWeb),                                             // 6 router, frag needed
		icmpErr(t, routerIP, w, 11, 0, append(bytes.Clone(fromWeb), make([]byte, 600)...)), // 7 oversized
		icmpErr(t, routerIP, w, 3, 1, fromDB),                                              // 8 about a packet web did not send
		icmpErr(t, w, d, 3, 3, fromWeb),                                                    // 9 web about its own packet
	}
	out, sum := replayFrames(t, webDBTopology(), webDBPolicy, frames)
	mustSummary(t, sum, 5, map[string]int{"bad-icmp-error": 4}, 1, 0, 0)
	if got := fmt.Sprint(deliveredOrigins(out)); got != "map[db:[1 3 5] web:[2 6]]" {
		t.Fatalf("delivered %s", got)
	}
	for _, f := range out.wire {
		if bytes.Contains(f, secret) {
			t.Fatal("the covert error reached the wire")
		}
	}
}

// TestCraftedFragments (item 10): a DNS flow to an external server, then
// 3,000-byte datagrams both ways, fragmented: every fragment reaches its
// end. A fragment on the wire that overlaps the answer's first fragment
// and the fragments of a datagram web refuses do not.
func TestCraftedFragments(t *testing.T) {
	w, e := webIP, extHost
	frames := [][]byte{
		ipFrame(t, w, e, layers.IPProtocolUDP, 1, 0, 0, udpDatagram(5353, 53, 30)), // 1 the flow
		ipFrame(t, e, w, layers.IPProtocolUDP, 2, 0, 0, udpDatagram(53, 5353, 30)), // 2 its answer
	}
	frames = append(frames, fragments(t, w, e, 3, udpDatagram(5353, 53, 3000))...)                     // 3-5
	frames = append(frames, fragments(t, e, w, 4, udpDatagram(53, 5353, 3000))...)                     // 6-8
	frames = append(frames, onWire(ipFrame(t, e, w, layers.IPProtocolUDP, 4, 0, 1, make([]byte, 64)))) // 9 overlaps 6
	frames = append(frames, fragments(t, e, w, 5, udpDatagram(53, 9999, 3000))...)                     // 10-12 web refuses
	out, sum := replayFrames(t, webDBTopology(), webDBPolicy, frames)
	mustSummary(t, sum, 8, map[string]int{"policy-denied": 1, "fragment": 3}, 0, 0, 0)
	if got := fmt.Sprint(deliveredOrigins(out)); got != "map[web:[2 6 7 8]]" {
		t.Fatalf("delivered %s", got)
	}
	// The refused inbound flow's record: ingress, the external sender as
	// the client.
	for _, r := range out.records {
		if r.Action == "deny" && (r.Direction != "ingress" || r.Client.Addr() != e || !r.Remote.External) {
			t.Fatalf("record of the refused datagram flow: %+v", r)
		}
	}
}
