package dataplane

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/trireme-go/trireme/dataplane/packet"
	"github.com/trireme-go/trireme/flow"
	"github.com/trireme-go/trireme/identity"
	"github.com/trireme-go/trireme/ipproto"
	"github.com/trireme-go/trireme/policy"
	"github.com/trireme-go/trireme/reason"
	"github.com/trireme-go/trireme/tokens"
)

const allowAll = `
targetNetworks: [10.0.0.0/8]
policies:
  - name: all
    selector: "*"
    ingress: [{name: any-in, action: allow}]
    egress: [{name: any-out, action: allow}]
`

// Server (app=db) accepts only app=web on tcp/5432; the client (app=web or
// app=bad) may go anywhere; 192.0.2.0/24 is an external network the client
// may reach on tcp/80 and udp/53.
const webDB = `
targetNetworks: [10.0.0.0/8]
excludedNetworks: [10.255.0.0/16]
policies:
  - name: db
    selector: app=db
    ingress:
      - name: from-web
        from: [{selector: app=web}]
        ports: [tcp/5432]
        action: allow
  - name: clients
    selector: app in (web, bad)
    egress:
      - name: to-db
        to: [{selector: app=db}]
        action: allow
      - name: ext-http
        to: [{cidr: 192.0.2.0/24}]
        ports: [tcp/80, udp/53]
        action: allow
`

var psk = bytes.Repeat([]byte("k"), 32)

type memSink struct {
	mu sync.Mutex
	rs []Record
}

func (m *memSink) Record(r *Record) { m.mu.Lock(); m.rs = append(m.rs, *r); m.mu.Unlock() }
func (m *memSink) all() []Record {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]Record(nil), m.rs...)
}

type side struct {
	e    *Enforcer
	pu   *PU
	sink *memSink
	out  Output
}

func compile(t testing.TB, yaml string) *policy.Engine {
	t.Helper()
	set, err := policy.Parse("test.yaml", []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	eng, err := policy.Compile(set)
	if err != nil {
		t.Fatal(err)
	}
	return eng
}

func newSide(t testing.TB, node, yaml string, tags map[string]string, mode MidStream, flows flow.Config) *side {
	t.Helper()
	sec, err := tokens.NewPSK(psk)
	if err != nil {
		t.Fatal(err)
	}
	te, err := tokens.New(tokens.Config{Node: node, Secrets: sec})
	if err != nil {
		t.Fatal(err)
	}
	s := &side{sink: &memSink{}}
	s.e, err = New(Config{Tokens: te, Policy: compile(t, yaml), Sink: s.sink, MidStream: mode, Flows: flows})
	if err != nil {
		t.Fatal(err)
	}
	s.pu = s.e.AddPU(node+"-pu", identity.NewTags(tags), nil)
	return s
}

var (
	cIP   = netip.MustParseAddr("10.0.1.1")
	sIP   = netip.MustParseAddr("10.0.2.2")
	extIP = netip.MustParseAddr("192.0.2.9")
	cMAC  = net.HardwareAddr{2, 0, 0, 0, 0, 1}
	sMAC  = net.HardwareAddr{2, 0, 0, 0, 0, 2}
)

type seg struct {
	src, dst     netip.Addr
	sport, dport uint16
	flags        uint8
	seq, ack     uint32
	payload      []byte
	opts         []layers.TCPOption
}

func tcpFrame(t testing.TB, s seg) []byte {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: cMAC, DstMAC: sMAC, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: s.src.AsSlice(), DstIP: s.dst.AsSlice(), Flags: layers.IPv4DontFragment}
	tcp := &layers.TCP{SrcPort: layers.TCPPort(s.sport), DstPort: layers.TCPPort(s.dport), Seq: s.seq, Ack: s.ack, Window: 64240,
		FIN: s.flags&packet.FIN != 0, SYN: s.flags&packet.SYN != 0, RST: s.flags&packet.RST != 0,
		PSH: s.flags&packet.PSH != 0, ACK: s.flags&packet.ACK != 0, Options: s.opts}
	if s.flags&packet.SYN != 0 && s.opts == nil {
		tcp.Options = []layers.TCPOption{{OptionType: layers.TCPOptionKindMSS, OptionLength: 4, OptionData: []byte{5, 0xb4}},
			{OptionType: layers.TCPOptionKindSACKPermitted, OptionLength: 2}, {OptionType: layers.TCPOptionKindNop}, {OptionType: layers.TCPOptionKindNop}}
	}
	tcp.SetNetworkLayerForChecksum(ip)
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		eth, ip, tcp, gopacket.Payload(s.payload)); err != nil {
		t.Fatal(err)
	}
	return bytes.Clone(buf.Bytes())
}

func udpFrame(t testing.TB, src, dst netip.Addr, sport, dport uint16) []byte {
	eth := &layers.Ethernet{SrcMAC: cMAC, DstMAC: sMAC, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
	udp := &layers.UDP{SrcPort: layers.UDPPort(sport), DstPort: layers.UDPPort(dport)}
	udp.SetNetworkLayerForChecksum(ip)
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ip, udp, gopacket.Payload("hello")); err != nil {
		t.Fatal(err)
	}
	return bytes.Clone(buf.Bytes())
}

var t0 = time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)

// result is a cloned Output.
type result struct {
	v      Verdict
	code   reason.Code
	frame  []byte
	inject []Injected
	notes  []Note
}

func (s *side) run(dir Direction, f []byte, now time.Time) result {
	s.e.Process(s.pu, dir, bytes.Clone(f), now, &s.out)
	r := result{v: s.out.Verdict, code: s.out.Reason, frame: bytes.Clone(s.out.Frame), notes: append([]Note(nil), s.out.Notes...)}
	for _, in := range s.out.Inject {
		in.Frame = bytes.Clone(in.Frame)
		r.inject = append(r.inject, in)
	}
	return r
}

// pair is a client PU and a server PU on two nodes.
type pair struct {
	t    *testing.T
	c, s *side
	now  time.Time
}

func newPair(t *testing.T, yaml string, ctags, stags map[string]string) *pair {
	return &pair{t: t, now: t0,
		c: newSide(t, "node-c", yaml, ctags, MidStreamDrop, flow.Config{}),
		s: newSide(t, "node-s", yaml, stags, MidStreamDrop, flow.Config{})}
}

// c2s sends a frame from the client PU through both enforcers; it returns
// the wire frame, what the server PU got, and both results.
func (p *pair) c2s(f []byte) (wire []byte, a, b result) {
	a = p.c.run(FromApp, f, p.now)
	if a.v != Forward {
		return nil, a, result{}
	}
	b = p.s.run(FromNet, a.frame, p.now)
	return a.frame, a, b
}

func (p *pair) s2c(f []byte) (wire []byte, a, b result) {
	a = p.s.run(FromApp, f, p.now)
	if a.v != Forward {
		return nil, a, result{}
	}
	b = p.c.run(FromNet, a.frame, p.now)
	return a.frame, a, b
}

func (p *pair) frames() (syn, synack, ack, data, reply []byte) {
	t := p.t
	syn = tcpFrame(t, seg{src: cIP, dst: sIP, sport: 40000, dport: 5432, flags: packet.SYN, seq: 100})
	synack = tcpFrame(t, seg{src: sIP, dst: cIP, sport: 5432, dport: 40000, flags: packet.SYN | packet.ACK, seq: 700, ack: 101})
	ack = tcpFrame(t, seg{src: cIP, dst: sIP, sport: 40000, dport: 5432, flags: packet.ACK, seq: 101, ack: 701})
	data = tcpFrame(t, seg{src: cIP, dst: sIP, sport: 40000, dport: 5432, flags: packet.ACK | packet.PSH, seq: 101, ack: 701, payload: []byte("SELECT 1")})
	reply = tcpFrame(t, seg{src: sIP, dst: cIP, sport: 5432, dport: 40000, flags: packet.ACK | packet.PSH, seq: 701, ack: 109, payload: []byte("one")})
	return
}

func mustDeliver(t *testing.T, what string, r result, want []byte) {
	t.Helper()
	if r.v != Forward {
		t.Fatalf("%s: verdict %v reason %v", what, r.v, r.code)
	}
	if !bytes.Equal(r.frame, want) {
		t.Fatalf("%s: delivered frame differs\n got %x\nwant %x", what, r.frame, want)
	}
}

// handshake runs SYN, SYN-ACK, ACK and checks each is delivered unchanged.
func (p *pair) handshake() {
	t := p.t
	syn, synack, ack, _, _ := p.frames()
	wire, _, b := p.c2s(syn)
	if len(wire) <= len(syn) {
		t.Fatal("SYN on the wire carries no token")
	}
	mustDeliver(t, "SYN", b, syn)
	wire, _, b = p.s2c(synack)
	if len(wire) <= len(synack) {
		t.Fatal("SYN-ACK on the wire carries no token")
	}
	mustDeliver(t, "SYN-ACK", b, synack)
	_, a, b := p.c2s(ack)
	mustDeliver(t, "ACK", b, ack)
	if len(a.notes) != 1 || a.notes[0].Kind != Authorize || len(b.notes) != 1 || b.notes[0].Kind != Authorize {
		t.Fatalf("authorize notes: client %v server %v", a.notes, b.notes)
	}
	if b.notes[0].Local != netip.AddrPortFrom(sIP, 5432) || b.notes[0].Remote != netip.AddrPortFrom(cIP, 40000) {
		t.Fatalf("server note: %+v", b.notes[0])
	}
}

func TestHandshakeAllowed(t *testing.T) {
	p := newPair(t, webDB, map[string]string{"app": "web"}, map[string]string{"app": "db"})
	p.handshake()
	_, _, _, data, reply := p.frames()
	_, a, b := p.c2s(data)
	mustDeliver(t, "data", b, data)
	mustDeliver(t, "data on the wire", a, data)
	_, _, b = p.s2c(reply)
	mustDeliver(t, "reply", b, reply)
	// FIN both ways, then the closing timer: records with counters.
	fin1 := tcpFrame(t, seg{src: cIP, dst: sIP, sport: 40000, dport: 5432, flags: packet.FIN | packet.ACK, seq: 109, ack: 704})
	fin2 := tcpFrame(t, seg{src: sIP, dst: cIP, sport: 5432, dport: 40000, flags: packet.FIN | packet.ACK, seq: 704, ack: 110})
	_, a, b = p.c2s(fin1)
	mustDeliver(t, "fin1", b, fin1)
	if len(a.notes)+len(b.notes) != 0 {
		t.Fatalf("notes on the first FIN: client %+v server %+v", a.notes, b.notes)
	}
	_, a, b = p.s2c(fin2)
	mustDeliver(t, "fin2", b, fin2)
	// Both FINs seen: each enforcer takes the flow out of the kernel at
	// once (a new connection may reuse the 4-tuple), not at the timer.
	for side, r := range map[string]result{"server": a, "client": b} {
		if len(r.notes) != 1 || r.notes[0].Kind != Revoke {
			t.Fatalf("%s notes on the second FIN: %+v, want one revoke", side, r.notes)
		}
	}
	lastACK := tcpFrame(t, seg{src: cIP, dst: sIP, sport: 40000, dport: 5432, flags: packet.ACK, seq: 110, ack: 705})
	_, _, b = p.c2s(lastACK)
	mustDeliver(t, "last ACK", b, lastACK)
	var out Output
	p.s.e.Expire(p.now.Add(time.Minute), &out)
	if len(out.Notes) != 0 {
		t.Fatalf("notes at the closing timer: %+v (the flow left the kernel at its second FIN)", out.Notes)
	}
	rs := p.s.sink.all()
	if len(rs) != 1 {
		t.Fatalf("server records: %+v", rs)
	}
	r := rs[0]
	if r.Action != "allow" || r.End != EndClosed || r.Direction != "ingress" || r.Rule == nil || r.Rule.Name != "from-web" ||
		r.PacketsIn != 5 || r.PacketsOut != 3 || r.Remote.External || r.Remote.Node != "node-c" || len(r.Remote.Tags) != 1 ||
		r.Client != netip.AddrPortFrom(cIP, 40000) {
		t.Fatalf("server record: %+v", r)
	}
	if n, _ := p.s.e.Flows(); n != 0 {
		t.Fatalf("%d flows left", n)
	}
}

func TestServerDeniesClient(t *testing.T) {
	p := newPair(t, webDB, map[string]string{"app": "bad"}, map[string]string{"app": "db"})
	syn, _, _, _, _ := p.frames()
	wire, a, b := p.c2s(syn)
	if a.v != Forward || b.v != Drop || b.code != reason.PolicyDenied {
		t.Fatalf("client %v / server %v %v", a.v, b.v, b.code)
	}
	if len(b.inject) != 1 || b.inject[0].To != ToNet {
		t.Fatalf("server must send a RST toward the client: %+v", b.inject)
	}
	// The RST reaches the client PU through its enforcer and ends its flow.
	rst := p.c.run(FromNet, b.inject[0].Frame, p.now)
	if rst.v != Forward {
		t.Fatalf("RST to client: %v %v", rst.v, rst.code)
	}
	var q packet.Packet
	if q.Decode(rst.frame) != reason.None || q.Flags != packet.RST|packet.ACK || q.Ack != 101 || q.Src != sIP {
		t.Fatalf("RST: %+v", q)
	}
	// A retransmitted SYN gets the same answer, without a new record.
	b = p.s.run(FromNet, wire, p.now)
	if b.v != Drop || b.code != reason.PolicyDenied || len(b.inject) != 1 {
		t.Fatalf("retransmitted SYN: %v %v", b.v, b.code)
	}
	rs := p.s.sink.all()
	if len(rs) != 1 || rs[0].Action != "deny" || rs[0].Reason != "policy-denied" || rs[0].End != EndDenied || rs[0].Remote.Tags[0] != "app=bad" {
		t.Fatalf("records: %+v", rs)
	}
	if s := p.s.e.Stats(); s.Drops[reason.PolicyDenied] != 2 || s.Resets != 2 {
		t.Fatalf("stats: %+v", s)
	}
}

func TestClientDeniesServer(t *testing.T) {
	// The server is app=web (not db): the client's egress rule to-db does
	// not match it, so the client refuses at the SYN-ACK.
	yaml := webDB + `
  - name: web-in
    selector: app=web
    ingress: [{name: any, action: allow}]
`
	p := newPair(t, yaml, map[string]string{"app": "bad"}, map[string]string{"app": "web"})
	syn, synack, _, _, _ := p.frames()
	_, _, b := p.c2s(syn)
	mustDeliver(t, "SYN", b, syn)
	_, a, b := p.s2c(synack)
	if a.v != Forward || b.v != Reset || b.code != reason.PolicyDenied {
		t.Fatalf("SYN-ACK: %v / %v %v", a.v, b.v, b.code)
	}
	if len(b.inject) != 2 || b.inject[0].To != ToPU || b.inject[1].To != ToNet {
		t.Fatalf("injections: %+v", b.inject)
	}
	var q packet.Packet
	if q.Decode(b.inject[0].Frame); q.Flags&packet.RST == 0 || q.Dst != cIP || q.Ack != 101 {
		t.Fatalf("RST to PU: %+v", q)
	}
	if q.Decode(b.inject[1].Frame); q.Flags != packet.RST || q.Dst != sIP || q.Seq != 101 {
		t.Fatalf("RST to server: %+v", q)
	}
	// The RST toward the server clears its half-open flow.
	r := p.s.run(FromNet, b.inject[1].Frame, p.now)
	if r.v != Forward {
		t.Fatalf("server RST: %v %v", r.v, r.code)
	}
	// Its record: the handshake never completed, nothing passed ("none"),
	// whatever the server's rule said at the SYN.
	if rs := p.s.sink.all(); len(rs) != 1 || rs[0].End != EndReset || rs[0].Action != "none" || rs[0].Rule == nil {
		t.Fatalf("server's half-open flow not ended by the RST: %+v", rs)
	}
	rs := p.c.sink.all()
	if len(rs) != 1 || rs[0].Direction != "egress" || rs[0].Action != "deny" || rs[0].Remote.Tags[0] != "app=web" {
		t.Fatalf("client record: %+v", rs)
	}
}

func TestMissingAndBadToken(t *testing.T) {
	p := newPair(t, allowAll, map[string]string{"app": "web"}, map[string]string{"app": "db"})
	syn, _, _, _, _ := p.frames()
	// A SYN from inside the target networks without a token.
	r := p.s.run(FromNet, syn, p.now)
	if r.v != Drop || r.code != reason.MissingToken || len(r.inject) != 1 {
		t.Fatalf("missing token: %v %v", r.v, r.code)
	}
	// A token made with another key.
	other := newSide(t, "node-x", allowAll, map[string]string{"app": "web"}, MidStreamDrop, flow.Config{})
	sec, _ := tokens.NewPSK(bytes.Repeat([]byte("z"), 32))
	te, _ := tokens.New(tokens.Config{Node: "node-x", Secrets: sec})
	other.e.tok = te
	other.pu.ident.Store(&puIdent{tags: other.pu.Tags(), local: te.NewLocal(other.pu.Tags())})
	w := other.run(FromApp, syn, p.now)
	r = p.s.run(FromNet, w.frame, p.now)
	if r.v != Drop || r.code != reason.BadSignature {
		t.Fatalf("bad token: %v %v", r.v, r.code)
	}
	// Token failures keep no state.
	if n, _ := p.s.e.Flows(); n != 0 {
		t.Fatalf("%d flows after failed tokens", n)
	}
	if rs := p.s.sink.all(); len(rs) != 2 || rs[0].Reason != "missing-token" || rs[1].Reason != "bad-signature" {
		t.Fatalf("records: %+v", rs)
	}
}

func TestRetransmissionsAreIdempotent(t *testing.T) {
	p := newPair(t, allowAll, map[string]string{"app": "web"}, map[string]string{"app": "db"})
	syn, synack, ack, _, _ := p.frames()
	w1, _, b := p.c2s(syn)
	mustDeliver(t, "SYN", b, syn)
	w2, _, b := p.c2s(syn)
	mustDeliver(t, "SYN again", b, syn)
	if !bytes.Equal(w1, w2) {
		t.Fatal("retransmitted SYN carries different token bytes")
	}
	s1, _, b := p.s2c(synack)
	mustDeliver(t, "SYN-ACK", b, synack)
	s2, _, b := p.s2c(synack)
	mustDeliver(t, "SYN-ACK again (before the ACK)", b, synack)
	if !bytes.Equal(s1, s2) {
		t.Fatal("retransmitted SYN-ACK carries different token bytes")
	}
	a1, _, b := p.c2s(ack)
	mustDeliver(t, "ACK", b, ack)
	// The ACK again (kernel dup-ACK) on an established flow passes as is.
	_, a, b := p.c2s(ack)
	mustDeliver(t, "dup ACK", b, ack)
	mustDeliver(t, "dup ACK on the wire", a, ack)
	if len(a1) <= len(ack) {
		t.Fatal("handshake ACK carried no token")
	}
}

func TestLostTokenACK(t *testing.T) {
	p := newPair(t, allowAll, map[string]string{"app": "web"}, map[string]string{"app": "db"})
	syn, synack, ack, data, _ := p.frames()
	p.c2s(syn)
	p.s2c(synack)
	a := p.c.run(FromApp, ack, p.now) // the token-ACK is lost on the wire
	if a.v != Forward || len(a.notes) != 1 {
		t.Fatalf("client ACK: %+v", a)
	}
	// Data without a token while the server waits for it: dropped, pending.
	_, _, b := p.c2s(data)
	if b.v != Drop || b.code != reason.MissingToken {
		t.Fatalf("data before token-ACK: %v %v", b.v, b.code)
	}
	// The server's kernel retransmits its SYN-ACK; the client's enforcer
	// consumes it and injects the same token-ACK.
	sa := p.s.run(FromApp, synack, p.now.Add(time.Second))
	r := p.c.run(FromNet, sa.frame, p.now.Add(time.Second))
	if r.v != Drop || r.code != reason.None || len(r.inject) != 1 || r.inject[0].To != ToNet {
		t.Fatalf("retransmitted SYN-ACK: %v %v %+v", r.v, r.code, r.inject)
	}
	b = p.s.run(FromNet, r.inject[0].Frame, p.now.Add(time.Second))
	if b.v != Forward || len(b.notes) != 1 || b.notes[0].Kind != Authorize {
		t.Fatalf("re-injected token-ACK: %v %v", b.v, b.code)
	}
	var q packet.Packet
	if q.Decode(b.frame) != reason.None || q.Flags != packet.ACK || q.Seq != 101 || q.Ack != 701 || q.PayloadLen() != 0 {
		t.Fatalf("delivered token-ACK: %+v", q)
	}
	_, _, b = p.c2s(data)
	mustDeliver(t, "data after recovery", b, data)
}

func TestDataOnHandshakeACK(t *testing.T) {
	p := newPair(t, allowAll, map[string]string{"app": "web"}, map[string]string{"app": "db"})
	syn, synack, _, data, _ := p.frames()
	p.c2s(syn)
	p.s2c(synack)
	a := p.c.run(FromApp, data, p.now) // kernel's first ACK carries data
	mustDeliver(t, "data untouched on the wire", a, data)
	if len(a.inject) != 1 || a.inject[0].To != ToNet {
		t.Fatalf("token-ACK not injected: %+v", a.inject)
	}
	b := p.s.run(FromNet, a.inject[0].Frame, p.now)
	if b.v != Forward || len(b.notes) != 1 {
		t.Fatalf("token-ACK at server: %v %v", b.v, b.code)
	}
	b = p.s.run(FromNet, a.frame, p.now)
	mustDeliver(t, "data at server", b, data)
}

func TestRSTInEveryState(t *testing.T) {
	syn0 := func(p *pair) []byte { s, _, _, _, _ := p.frames(); return s }
	rstC := func(p *pair) []byte {
		return tcpFrame(p.t, seg{src: cIP, dst: sIP, sport: 40000, dport: 5432, flags: packet.RST, seq: 101})
	}
	rstS := func(p *pair) []byte {
		// The server's next sequence number is 701 once it sent its SYN-ACK
		// (700); in syn-sent only the acknowledgment of the SYN counts.
		return tcpFrame(p.t, seg{src: sIP, dst: cIP, sport: 5432, dport: 40000, flags: packet.RST | packet.ACK, seq: 701, ack: 101})
	}
	cases := []struct {
		name  string
		setup func(p *pair)
		fromC bool
		// linger: an established flow a RST ended stays for the reset
		// lifetime; a handshake a RST ended (a refused SYN) leaves nothing.
		linger bool
	}{
		{"syn-sent, server RST (closed port)", func(p *pair) { p.c2s(syn0(p)) }, false, false},
		{"syn-ack-sent, client RST", func(p *pair) { _, sa, _, _, _ := p.frames(); p.c2s(syn0(p)); p.s2c(sa) }, true, false},
		{"established, server RST", func(p *pair) { p.handshake() }, false, true},
		{"established, client RST", func(p *pair) { p.handshake() }, true, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := newPair(t, allowAll, map[string]string{"app": "web"}, map[string]string{"app": "db"})
			tc.setup(p)
			var a, b result
			var f []byte
			if tc.fromC {
				f = rstC(p)
				_, a, b = p.c2s(f)
			} else {
				f = rstS(p)
				_, a, b = p.s2c(f)
			}
			mustDeliver(t, "RST on the wire", a, f)
			mustDeliver(t, "RST delivered", b, f)
			for _, s := range []*side{p.c, p.s} {
				rs := s.sink.all()
				if len(rs) != 1 || rs[0].End != EndReset {
					t.Fatalf("records after RST: %+v", rs)
				}
			}
			_, _, _, data, _ := p.frames()
			if !tc.linger {
				// Nothing left: a repeated RST is one of an unknown
				// flow (never answered), so is data.
				for _, s := range []*side{p.c, p.s} {
					if n, _ := s.e.Flows(); n != 0 {
						t.Fatalf("%d flows left by a RST in the handshake", n)
					}
				}
				if _, a, _ = p.c2s(data); a.v != Drop || a.code != reason.UnknownFlow {
					t.Fatalf("data after RST: %v %v", a.v, a.code)
				}
				return
			}
			// A repeated RST passes; anything else on the reset flow does not.
			if tc.fromC {
				_, _, b = p.c2s(f)
			} else {
				_, _, b = p.s2c(f)
			}
			mustDeliver(t, "repeated RST", b, f)
			if _, a, _ = p.c2s(data); a.v != Drop || a.code != reason.InvalidState {
				t.Fatalf("data after RST: %v %v", a.v, a.code)
			}
			// The lingering flows go at the reset lifetime (2 s), without
			// new records.
			var out Output
			for _, s := range []*side{p.c, p.s} {
				if s.e.Expire(p.now.Add(flow.DefaultReset), &out); len(s.sink.all()) != 1 {
					t.Fatalf("records at the reset lifetime: %+v", s.sink.all())
				}
				if n, _ := s.e.Flows(); n != 1 {
					t.Fatalf("%d flows at the reset lifetime, want the lingering one", n)
				}
				s.e.Expire(p.now.Add(flow.DefaultReset+time.Millisecond), &out)
				if n, _ := s.e.Flows(); n != 0 || len(s.sink.all()) != 1 {
					t.Fatalf("%d flows, %d records after the linger", n, len(s.sink.all()))
				}
			}
		})
	}
}

func TestSimultaneousOpen(t *testing.T) {
	p := newPair(t, allowAll, map[string]string{"app": "web"}, map[string]string{"app": "db"})
	// Both PUs send a SYN for the same 4-tuple at once.
	sc := tcpFrame(t, seg{src: cIP, dst: sIP, sport: 5000, dport: 6000, flags: packet.SYN, seq: 100})
	ss := tcpFrame(t, seg{src: sIP, dst: cIP, sport: 6000, dport: 5000, flags: packet.SYN, seq: 900})
	wc := p.c.run(FromApp, sc, p.now)
	ws := p.s.run(FromApp, ss, p.now)
	// cIP < sIP: the server side (higher) yields and accepts the client's SYN;
	// the client side drops the crossing SYN.
	rc := p.c.run(FromNet, ws.frame, p.now)
	rs := p.s.run(FromNet, wc.frame, p.now)
	if rc.v != Drop || rc.code != reason.InvalidState {
		t.Fatalf("lower end: %v %v", rc.v, rc.code)
	}
	mustDeliver(t, "higher end yields", rs, sc)
	// The yielded side's kernel answers with a SYN-ACK: the handshake goes on.
	sa := tcpFrame(t, seg{src: sIP, dst: cIP, sport: 6000, dport: 5000, flags: packet.SYN | packet.ACK, seq: 900, ack: 101})
	_, _, b := p.s2c(sa)
	mustDeliver(t, "SYN-ACK", b, sa)
	ack := tcpFrame(t, seg{src: cIP, dst: sIP, sport: 5000, dport: 6000, flags: packet.ACK, seq: 101, ack: 901})
	_, _, b = p.c2s(ack)
	mustDeliver(t, "ACK", b, ack)
	if len(b.notes) != 1 {
		t.Fatal("not established")
	}
}

func TestExternalPeers(t *testing.T) {
	p := newPair(t, webDB, map[string]string{"app": "web"}, map[string]string{"app": "db"})
	// Egress to an external host on tcp/80: allowed by CIDR, no token added.
	syn := tcpFrame(t, seg{src: cIP, dst: extIP, sport: 40001, dport: 80, flags: packet.SYN, seq: 1})
	r := p.c.run(FromApp, syn, p.now)
	mustDeliver(t, "external SYN", r, syn)
	// tcp/443 is not allowed: RST to the PU at once.
	syn443 := tcpFrame(t, seg{src: cIP, dst: extIP, sport: 40002, dport: 443, flags: packet.SYN, seq: 1})
	r = p.c.run(FromApp, syn443, p.now)
	if r.v != Reset || r.code != reason.PolicyDenied || len(r.inject) != 1 || r.inject[0].To != ToPU {
		t.Fatalf("denied external SYN: %v %v", r.v, r.code)
	}
	// Excluded networks bypass everything.
	exSyn := tcpFrame(t, seg{src: netip.MustParseAddr("10.255.0.1"), dst: sIP, sport: 1, dport: 22, flags: packet.SYN})
	r = p.s.run(FromNet, exSyn, p.now)
	mustDeliver(t, "excluded", r, exSyn)
	// An external client may not reach the db (no cidr ingress rule).
	extSyn := tcpFrame(t, seg{src: extIP, dst: sIP, sport: 1, dport: 5432, flags: packet.SYN})
	r = p.s.run(FromNet, extSyn, p.now)
	if r.v != Drop || r.code != reason.PolicyDenied {
		t.Fatalf("external client: %v %v", r.v, r.code)
	}
	// UDP: first packet decided by CIDR, the reply of the allowed flow passes.
	q := udpFrame(t, cIP, extIP, 5353, 53)
	r = p.c.run(FromApp, q, p.now)
	mustDeliver(t, "udp query", r, q)
	if len(r.notes) != 1 || r.notes[0].Kind != Authorize || r.notes[0].Proto != 17 {
		t.Fatalf("udp authorize: %+v", r.notes)
	}
	ans := udpFrame(t, extIP, cIP, 53, 5353)
	r = p.c.run(FromNet, ans, p.now)
	mustDeliver(t, "udp answer", r, ans)
	bad := udpFrame(t, cIP, extIP, 5353, 54)
	if r = p.c.run(FromApp, bad, p.now); r.v != Drop || r.code != reason.PolicyDenied {
		t.Fatalf("udp/54: %v %v", r.v, r.code)
	}
	// The flow expires after the datagram timeout; the reply then is a new,
	// unsolicited flow that ingress does not allow.
	later := p.now.Add(2 * time.Minute)
	if r = p.c.run(FromNet, ans, later); r.v != Drop || r.code != reason.PolicyDenied {
		t.Fatalf("late udp answer: %v %v", r.v, r.code)
	}
}

func TestMidStreamModes(t *testing.T) {
	data := func(t *testing.T) []byte {
		return tcpFrame(t, seg{src: cIP, dst: extIP, sport: 40000, dport: 80, flags: packet.ACK | packet.PSH, seq: 5, ack: 9, payload: []byte("x")})
	}
	cases := []struct {
		mode   MidStream
		v      Verdict
		code   reason.Code
		inject int
	}{
		{MidStreamDrop, Drop, reason.UnknownFlow, 0},
		{MidStreamReset, Reset, reason.UnknownFlow, 1},
		{MidStreamAllowACL, Forward, reason.None, 0},
	}
	for _, tc := range cases {
		s := newSide(t, "n", webDB, map[string]string{"app": "web"}, tc.mode, flow.Config{})
		f := data(t)
		r := s.run(FromApp, f, t0)
		if r.v != tc.v || r.code != tc.code || len(r.inject) != tc.inject {
			t.Fatalf("mode %d: %v %v %d", tc.mode, r.v, r.code, len(r.inject))
		}
		if tc.mode == MidStreamReset {
			var q packet.Packet
			q.Decode(r.inject[0].Frame)
			if q.Flags != packet.RST || q.Seq != 9 || q.Dst != cIP {
				t.Fatalf("mid-stream RST: %+v", q)
			}
		}
		if tc.mode == MidStreamAllowACL {
			// Now established: the next packet takes the fast path.
			if r = s.run(FromApp, f, t0); r.v != Forward || len(r.notes) != 0 {
				t.Fatal("picked-up flow not established")
			}
			// ...but a flow the ACL does not allow is dropped.
			g := tcpFrame(t, seg{src: cIP, dst: extIP, sport: 40000, dport: 81, flags: packet.ACK, seq: 5, ack: 9})
			if r = s.run(FromApp, g, t0); r.v != Drop || r.code != reason.UnknownFlow {
				t.Fatalf("acl-denied pickup: %v %v", r.v, r.code)
			}
		}
	}
}

func TestTableFullEvictsHalfOpen(t *testing.T) {
	s := newSide(t, "n", allowAll, map[string]string{"app": "db"}, MidStreamDrop, flow.Config{Capacity: 16})
	cl := newSide(t, "c", allowAll, map[string]string{"app": "web"}, MidStreamDrop, flow.Config{})
	// 40 SYNs: the table (16 flows) evicts the oldest half-open ones.
	for i := 0; i < 40; i++ {
		syn := tcpFrame(t, seg{src: cIP, dst: sIP, sport: uint16(1000 + i), dport: 5432, flags: packet.SYN, seq: 1})
		w := cl.run(FromApp, syn, t0)
		r := s.run(FromNet, w.frame, t0)
		if r.v != Forward {
			t.Fatalf("SYN %d: %v %v", i, r.v, r.code)
		}
	}
	n, ev := s.e.Flows()
	if n > 16 || ev == 0 || uint64(n)+ev != 40 {
		t.Fatalf("flows %d evictions %d", n, ev)
	}
	evicted := 0
	for _, r := range s.sink.all() {
		if r.End == EndEvicted {
			evicted++
		}
	}
	if uint64(evicted) != ev {
		t.Fatalf("%d eviction records for %d evictions", evicted, ev)
	}
}

func TestHalfOpenTimeout(t *testing.T) {
	p := newPair(t, allowAll, map[string]string{"app": "web"}, map[string]string{"app": "db"})
	syn, synack, _, _, _ := p.frames()
	p.c2s(syn)
	p.s2c(synack)
	var out Output
	if n := p.s.e.Expire(t0.Add(59*time.Second), &out); n != 0 {
		t.Fatalf("expired early: %d", n)
	}
	if n := p.s.e.Expire(t0.Add(61*time.Second), &out); n != 1 {
		t.Fatalf("half-open flow not expired: %d", n)
	}
	rs := p.s.sink.all()
	if len(rs) != 1 || rs[0].End != EndExpired {
		t.Fatalf("records: %+v", rs)
	}
}

// TestHalfOpenNotRenewedByJunk: a handshake has the half-open lifetime from
// its last step to finish. Packets anyone can send on its 5-tuple — the
// SYN replayed, junk segments — do not keep it alive (they would let one
// sender pin half-open entries forever).
func TestHalfOpenNotRenewedByJunk(t *testing.T) {
	p := newPair(t, allowAll, map[string]string{"app": "web"}, map[string]string{"app": "db"})
	syn, synack, _, _, _ := p.frames()
	wire, _, _ := p.c2s(syn)
	p.s2c(synack)
	junk := tcpFrame(t, seg{src: cIP, dst: sIP, sport: 40000, dport: 5432, flags: packet.ACK | packet.PSH, seq: 9000, ack: 1, payload: []byte("junk")})
	for _, at := range []time.Duration{20 * time.Second, 40 * time.Second, 59 * time.Second} {
		p.s.run(FromNet, wire, t0.Add(at)) // the token SYN, replayed
		p.s.run(FromNet, junk, t0.Add(at))
		p.c.run(FromApp, syn, t0.Add(at)) // the client's own retransmission
	}
	var out Output
	if n := p.s.e.Expire(t0.Add(61*time.Second), &out); n != 1 {
		t.Fatalf("server: %d flows expired 61 s after the SYN-ACK, want the half-open one", n)
	}
	if n := p.c.e.Expire(t0.Add(61*time.Second), &out); n != 1 {
		t.Fatalf("client: %d flows expired 61 s after its SYN, want the half-open one", n)
	}
}

func TestFastPathNoAlloc(t *testing.T) {
	p := newPair(t, allowAll, map[string]string{"app": "web"}, map[string]string{"app": "db"})
	p.handshake()
	_, _, _, data, _ := p.frames()
	var out Output
	p.s.e.Process(p.s.pu, FromNet, data, t0, &out)
	allocs := testing.AllocsPerRun(1000, func() {
		p.s.e.Process(p.s.pu, FromNet, data, t0, &out)
	})
	if allocs != 0 || out.Verdict != Forward {
		t.Fatalf("%v allocs, verdict %v", allocs, out.Verdict)
	}
}

func BenchmarkEstablished(b *testing.B) {
	p := &pair{now: t0}
	tt := &testing.T{}
	p.t = tt
	p.c = newSide(b, "node-c", allowAll, map[string]string{"app": "web"}, MidStreamDrop, flow.Config{})
	p.s = newSide(b, "node-s", allowAll, map[string]string{"app": "db"}, MidStreamDrop, flow.Config{})
	syn, synack, ack, data, _ := p.frames()
	p.c2s(syn)
	p.s2c(synack)
	p.c2s(ack)
	var out Output
	b.ReportAllocs()
	cpu0 := cpuTime()
	for b.Loop() {
		p.s.e.Process(p.s.pu, FromNet, data, t0, &out)
	}
	// The machine is shared: CPU time per packet is the number to compare
	// with the 100 ns target; ns/op includes waiting for a core.
	b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/op")
	if out.Verdict != Forward {
		b.Fatal(out.Reason)
	}
}

// BenchmarkSYNWarmCache: one new connection's SYN through the client's
// enforcer (token added) and the server's (token verified from the warm
// cache, ingress decided, token stripped).
func BenchmarkSYNWarmCache(b *testing.B) {
	c := newSide(b, "node-c", allowAll, map[string]string{"app": "web"}, MidStreamDrop, flow.Config{})
	s := newSide(b, "node-s", allowAll, map[string]string{"app": "db"}, MidStreamDrop, flow.Config{})
	c.e.sink, s.e.sink = nil, nil
	syn := tcpFrame(&testing.T{}, seg{src: cIP, dst: sIP, sport: 1, dport: 5432, flags: packet.SYN, seq: 1})
	var co, so, tmp Output
	wire := make([]byte, 0, 2048)
	i := 0
	b.ReportAllocs()
	for b.Loop() {
		i++
		syn[28], syn[29] = byte(i>>16), byte(i>>8) // new source address and port:
		syn[34], syn[35] = byte(i>>8), byte(i)     // a new connection each time
		c.e.Process(c.pu, FromApp, syn, t0, &co)
		wire = append(wire[:0], co.Frame...)
		s.e.Process(s.pu, FromNet, wire, t0, &so)
		if so.Verdict != Forward {
			b.Fatal(so.Reason)
		}
		if i%10000 == 0 { // keep the PU's share from filling: steady state
			b.StopTimer()
			c.e.Expire(t0.Add(time.Hour), &tmp)
			s.e.Expire(t0.Add(time.Hour), &tmp)
			b.StartTimer()
		}
	}
}

func TestReevaluateRevokes(t *testing.T) {
	p := newPair(t, webDB, map[string]string{"app": "web"}, map[string]string{"app": "db"})
	p.handshake()
	// Nothing changes under the same policy.
	var out Output
	if n := p.s.e.Reevaluate(p.now, &out); n != 0 {
		t.Fatalf("revoked %d under the same policy", n)
	}
	// The db stops accepting web.
	p.s.e.SetPolicy(compile(t, `
targetNetworks: [10.0.0.0/8]
policies:
  - name: db
    selector: app=db
    ingress: [{name: nobody, from: [{selector: app=nobody}], action: allow}]
`))
	if n := p.s.e.Reevaluate(p.now, &out); n != 1 || len(out.Notes) != 1 || out.Notes[0].Kind != Revoke {
		t.Fatalf("revoked %d, notes %+v", n, out.Notes)
	}
	rs := p.s.sink.all()
	if len(rs) != 1 || rs[0].End != EndRevoked || rs[0].Action != "deny" || rs[0].PacketsIn != 2 || rs[0].PacketsOut != 1 {
		t.Fatalf("records: %+v", rs)
	}
	// The next packet (steered back) is dropped; both ends get a RST.
	_, _, _, data, _ := p.frames()
	_, _, b := p.c2s(data)
	if b.v != Drop || b.code != reason.PolicyDenied || len(b.inject) != 2 {
		t.Fatalf("packet of a revoked flow: %v %v %d", b.v, b.code, len(b.inject))
	}
	var q packet.Packet
	q.Decode(b.inject[0].Frame)
	if b.inject[0].To != ToNet || q.Flags != packet.RST || q.Dst != cIP || q.Seq != 701 {
		t.Fatalf("RST to client: %+v", q)
	}
	q.Decode(b.inject[1].Frame)
	if b.inject[1].To != ToPU || b.inject[1].PU != p.s.pu || q.Flags != packet.RST || q.Dst != sIP || q.Seq != 101 {
		t.Fatalf("RST to server PU: %+v", q)
	}
}

func TestRestore(t *testing.T) {
	s := newSide(t, "n", allowAll, map[string]string{"app": "db"}, MidStreamDrop, flow.Config{})
	local, remote := netip.AddrPortFrom(sIP, 5432), netip.AddrPortFrom(cIP, 40000)
	if !s.e.Restore(s.pu, 6, local, remote, t0) || s.e.Restore(s.pu, 6, local, remote, t0) {
		t.Fatal("restore: want true once, then false")
	}
	_, _, _, data, _ := (&pair{t: t}).frames()
	if r := s.run(FromNet, data, t0); r.v != Forward || len(r.notes) != 0 {
		t.Fatalf("restored flow: %v %v", r.v, r.code)
	}
}

// TestEstablishedTCP: the flows a restarted daemon must get back are the
// established, authorized TCP flows of the PU, with the PU's end first:
// not a half-open one, not a datagram flow, not another PU's.
func TestEstablishedTCP(t *testing.T) {
	p := newPair(t, allowAll, map[string]string{"app": "web"}, map[string]string{"app": "db"})
	list := func(s *side) []string {
		var out []string
		s.e.EstablishedTCP(s.pu, func(f *EstablishedFlow) {
			out = append(out, fmt.Sprintf("%v %v %v server=%v peer=%v", f.Local, f.Remote, f.LastSeen.Sub(t0), f.Server, f.Peer))
		})
		return out
	}
	syn, _, _, _, _ := p.frames()
	p.c2s(syn)
	if got := list(p.c); len(got) != 0 {
		t.Fatalf("half-open: %v", got)
	}
	p.handshake()
	for _, tc := range []struct {
		side *side
		want string
	}{{p.c, cIP.String() + ":40000 " + sIP.String() + ":5432 0s server=false peer=app=db"},
		{p.s, sIP.String() + ":5432 " + cIP.String() + ":40000 0s server=true peer=app=web"}} {
		if got := list(tc.side); len(got) != 1 || got[0] != tc.want {
			t.Errorf("after the handshake: %v, want [%s]", got, tc.want)
		}
	}
	// A restored flow is listed with the time it was restored at; a
	// datagram flow is not; a flow of the PU's address in IPv6 keeps it.
	s := newSide(t, "n", allowAll, map[string]string{"app": "db"}, MidStreamDrop, flow.Config{})
	v6 := netip.MustParseAddr("fd00::2")
	s.e.Restore(s.pu, ipproto.TCP, netip.AddrPortFrom(sIP, 5432), netip.AddrPortFrom(cIP, 40001), t0.Add(time.Second))
	s.e.Restore(s.pu, ipproto.TCP, netip.AddrPortFrom(v6, 80), netip.AddrPortFrom(netip.MustParseAddr("fd00::1"), 40002), t0)
	s.e.Restore(s.pu, ipproto.UDP, netip.AddrPortFrom(sIP, 53), netip.AddrPortFrom(cIP, 40003), t0)
	got := list(s)
	slices.Sort(got)
	if want := []string{sIP.String() + ":5432 " + cIP.String() + ":40001 1s server=false peer=", "[fd00::2]:80 [fd00::1]:40002 0s server=false peer="}; !slices.Equal(got, want) {
		t.Errorf("restored: %v, want %v", got, want)
	}
}

func TestNoRoomForToken(t *testing.T) {
	p := newPair(t, allowAll, map[string]string{"app": "web"}, map[string]string{"app": "db"})
	// 40 bytes of options: MSS, SACK-permitted, timestamps, window scale, NOPs,
	// and a 12-byte experimental option.
	opts := []layers.TCPOption{
		{OptionType: layers.TCPOptionKindMSS, OptionLength: 4, OptionData: []byte{5, 0xb4}},
		{OptionType: layers.TCPOptionKindSACKPermitted, OptionLength: 2},
		{OptionType: layers.TCPOptionKindTimestamps, OptionLength: 10, OptionData: make([]byte, 8)},
		{OptionType: layers.TCPOptionKindNop},
		{OptionType: layers.TCPOptionKindWindowScale, OptionLength: 3, OptionData: []byte{7}},
		{OptionType: 254, OptionLength: 12, OptionData: make([]byte, 10)},
		{OptionType: layers.TCPOptionKindNop}, {OptionType: layers.TCPOptionKindNop}, {OptionType: layers.TCPOptionKindNop}, {OptionType: layers.TCPOptionKindNop},
		{OptionType: layers.TCPOptionKindNop}, {OptionType: layers.TCPOptionKindNop}, {OptionType: layers.TCPOptionKindNop}, {OptionType: layers.TCPOptionKindNop},
	}
	syn := tcpFrame(t, seg{src: cIP, dst: sIP, sport: 1, dport: 5432, flags: packet.SYN, seq: 1, opts: opts})
	r := p.c.run(FromApp, syn, p.now)
	if r.v != Reset || r.code != reason.NoRoomForToken || len(r.inject) != 1 {
		t.Fatalf("full options: %v %v", r.v, r.code)
	}
	if rs := p.c.sink.all(); len(rs) != 1 || rs[0].Reason != "no-room-for-token" {
		t.Fatalf("records: %+v", rs)
	}
}

func TestTableFullNothingEvictable(t *testing.T) {
	s := newSide(t, "n", webDB, map[string]string{"app": "web"}, MidStreamDrop, flow.Config{Capacity: 16, PerPU: 16})
	// Fill with established UDP flows (not half-open, not expired).
	full := 0
	for i := 0; i < 200; i++ {
		r := s.run(FromApp, udpFrame(t, cIP, extIP, uint16(2000+i), 53), t0)
		if r.v == Drop {
			if r.code != reason.TableFull {
				t.Fatalf("udp %d: %v", i, r.code)
			}
			full++
		}
	}
	n, ev := s.e.Flows()
	if full == 0 || n > 16 || ev != 0 || n+full != 200 {
		t.Fatalf("flows %d evictions %d refused %d", n, ev, full)
	}
	if got := s.e.Stats().Drops[reason.TableFull]; got != uint64(full) {
		t.Fatalf("table-full counter %d", got)
	}
	// A SYN to a full table is refused with a RST (fail closed, promptly).
	syn := tcpFrame(t, seg{src: cIP, dst: extIP, sport: 9, dport: 80, flags: packet.SYN, seq: 1})
	found := false
	for port := uint16(9); port < 400 && !found; port++ {
		syn = tcpFrame(t, seg{src: cIP, dst: extIP, sport: port, dport: 80, flags: packet.SYN, seq: 1})
		r := s.run(FromApp, syn, t0)
		if r.v == Reset && r.code == reason.TableFull {
			found = true
		}
	}
	if !found {
		t.Fatal("no SYN refused with table-full")
	}
}

func fragFrame(t *testing.T, src, dst netip.Addr, proto layers.IPProtocol, id uint16, flags layers.IPv4Flag, off uint16, payload []byte) []byte {
	eth := &layers.Ethernet{SrcMAC: cMAC, DstMAC: sMAC, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: proto, SrcIP: src.AsSlice(), DstIP: dst.AsSlice(), Id: id, Flags: flags, FragOffset: off}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ip, gopacket.Payload(payload)); err != nil {
		t.Fatal(err)
	}
	return bytes.Clone(buf.Bytes())
}

func TestFragments(t *testing.T) {
	s := newSide(t, "n", webDB, map[string]string{"app": "web"}, MidStreamDrop, flow.Config{})
	// The first fragment of a TCP SYN: the token cannot be authorized.
	synHdr := tcpFrame(t, seg{src: cIP, dst: extIP, sport: 7, dport: 80, flags: packet.SYN, seq: 1})[34:]
	r := s.run(FromApp, fragFrame(t, cIP, extIP, layers.IPProtocolTCP, 1, layers.IPv4MoreFragments, 0, synHdr), t0)
	if r.v != Drop || r.code != reason.Fragment {
		t.Fatalf("fragmented SYN: %v %v", r.v, r.code)
	}
	// A later fragment without an allowed first one.
	r = s.run(FromApp, fragFrame(t, cIP, extIP, layers.IPProtocolUDP, 2, 0, 100, make([]byte, 64)), t0)
	if r.v != Drop || r.code != reason.Fragment {
		t.Fatalf("orphan fragment: %v %v", r.v, r.code)
	}
	// A UDP datagram to an allowed port in two fragments: both pass.
	udpHdr := udpFrame(t, cIP, extIP, 5000, 53)[34 : 34+13] // header and "hello", without the Ethernet padding
	first := fragFrame(t, cIP, extIP, layers.IPProtocolUDP, 3, layers.IPv4MoreFragments, 0, append(udpHdr, make([]byte, 3)...))
	if r = s.run(FromApp, first, t0); r.v != Forward {
		t.Fatalf("first fragment: %v %v", r.v, r.code)
	}
	later := fragFrame(t, cIP, extIP, layers.IPProtocolUDP, 3, 0, 2, make([]byte, 64))
	if r = s.run(FromApp, later, t0); r.v != Forward {
		t.Fatalf("later fragment of an allowed datagram: %v %v", r.v, r.code)
	}
	// ...but not after the fragment timer, nor with another ID.
	if r = s.run(FromApp, later, t0.Add(time.Minute)); r.v != Drop || r.code != reason.Fragment {
		t.Fatalf("late fragment: %v %v", r.v, r.code)
	}
	// A denied datagram's fragments are dropped too.
	deniedFirst := fragFrame(t, cIP, extIP, layers.IPProtocolUDP, 4, layers.IPv4MoreFragments, 0, udpFrame(t, cIP, extIP, 5000, 99)[34:])
	if r = s.run(FromApp, deniedFirst, t0); r.v != Drop || r.code != reason.PolicyDenied {
		t.Fatalf("denied first fragment: %v %v", r.v, r.code)
	}
	if r = s.run(FromApp, fragFrame(t, cIP, extIP, layers.IPProtocolUDP, 4, 0, 2, make([]byte, 8)), t0); r.v != Drop || r.code != reason.Fragment {
		t.Fatalf("fragment of a denied datagram: %v %v", r.v, r.code)
	}
}

func TestMalformedAndUnknownPU(t *testing.T) {
	s := newSide(t, "n", allowAll, map[string]string{"app": "web"}, MidStreamDrop, flow.Config{})
	good := tcpFrame(t, seg{src: cIP, dst: sIP, sport: 1, dport: 2, flags: packet.SYN, seq: 1})
	cases := []struct {
		name  string
		frame []byte
		want  reason.Code
	}{
		{"empty", nil, reason.Malformed},
		{"ethernet only", good[:14], reason.Malformed},
		{"truncated ip", good[:30], reason.Malformed},
		{"truncated tcp", good[:40], reason.Malformed},
		{"lldp", append(append([]byte{}, good[:12]...), 0x88, 0xcc, 1, 2, 3), reason.Unsupported},
	}
	for _, c := range cases {
		r := s.run(FromNet, c.frame, t0)
		if r.v != Drop || r.code != c.want {
			t.Fatalf("%s: %v %v", c.name, r.v, r.code)
		}
	}
	var out Output
	s.e.Process(nil, FromNet, good, t0, &out)
	if out.Verdict != Drop || out.Reason != reason.UnknownPU {
		t.Fatalf("nil PU: %v", out.Reason)
	}
	s.e.RemovePU(s.pu, t0, &out)
	s.e.Process(s.pu, FromNet, good, t0, &out)
	if out.Verdict != Drop || out.Reason != reason.UnknownPU {
		t.Fatalf("removed PU: %v", out.Reason)
	}
}

// TestConcurrentHandshakes runs many connections through the same pair of
// enforcers from several goroutines (under -race in make test).
func TestConcurrentHandshakes(t *testing.T) {
	p := newPair(t, allowAll, map[string]string{"app": "web"}, map[string]string{"app": "db"})
	const workers, conns = 4, 50
	var wg sync.WaitGroup
	errs := make(chan string, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			var co, so Output
			for i := 0; i < conns; i++ {
				port := uint16(10000 + w*conns + i)
				steps := []struct {
					f     []byte
					fromC bool
				}{
					{tcpFrame(t, seg{src: cIP, dst: sIP, sport: port, dport: 80, flags: packet.SYN, seq: 1}), true},
					{tcpFrame(t, seg{src: sIP, dst: cIP, sport: 80, dport: port, flags: packet.SYN | packet.ACK, seq: 9, ack: 2}), false},
					{tcpFrame(t, seg{src: cIP, dst: sIP, sport: port, dport: 80, flags: packet.ACK, seq: 2, ack: 10}), true},
					{tcpFrame(t, seg{src: cIP, dst: sIP, sport: port, dport: 80, flags: packet.ACK | packet.PSH, seq: 2, ack: 10, payload: []byte("hi")}), true},
				}
				for _, st := range steps {
					a, b, ao, bo := p.c, p.s, &co, &so
					if !st.fromC {
						a, b, ao, bo = p.s, p.c, &so, &co
					}
					a.e.Process(a.pu, FromApp, bytes.Clone(st.f), t0, ao)
					wire := bytes.Clone(ao.Frame)
					b.e.Process(b.pu, FromNet, wire, t0, bo)
					if bo.Verdict != Forward || !bytes.Equal(bo.Frame, st.f) {
						errs <- "handshake step failed"
						return
					}
				}
			}
		}(w)
	}
	done := make(chan struct{})
	go func() {
		var out Output
		for {
			select {
			case <-done:
				return
			default:
				p.s.e.Expire(t0, &out)
				p.s.e.Stats()
			}
		}
	}()
	wg.Wait()
	close(done)
	close(errs)
	for e := range errs {
		t.Fatal(e)
	}
	if n, _ := p.s.e.Flows(); n != workers*conns {
		t.Fatalf("%d flows", n)
	}
}

// cpuTime is the process's user+system CPU time in nanoseconds.
func cpuTime() int64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return ru.Utime.Nano() + ru.Stime.Nano()
}

func icmpErrorFrame(t *testing.T, src, dst netip.Addr, typ, code uint8, quoted []byte) []byte {
	eth := &layers.Ethernet{SrcMAC: sMAC, DstMAC: cMAC, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolICMPv4, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
	icmp := &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(typ, code)}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ip, icmp, gopacket.Payload(quoted)); err != nil {
		t.Fatal(err)
	}
	return bytes.Clone(buf.Bytes())
}

// ICMP errors about an allowed flow reach the PU (path MTU discovery) even
// though the rules allow no ICMP; unrelated ones are decided by the rules.
func TestICMPErrorsOfAllowedFlows(t *testing.T) {
	s := newSide(t, "n", webDB, map[string]string{"app": "web"}, MidStreamDrop, flow.Config{})
	q := udpFrame(t, cIP, extIP, 5353, 53)
	if r := s.run(FromApp, q, t0); r.v != Forward {
		t.Fatalf("udp: %v %v", r.v, r.code)
	}
	router := netip.MustParseAddr("192.0.2.1")
	needFrag := icmpErrorFrame(t, router, cIP, 3, 4, q[14:14+28])
	if r := s.run(FromNet, needFrag, t0); r.v != Forward {
		t.Fatalf("fragmentation-needed for an allowed flow: %v %v", r.v, r.code)
	}
	other := icmpErrorFrame(t, router, cIP, 3, 4, udpFrame(t, cIP, extIP, 5354, 53)[14:14+28])
	if r := s.run(FromNet, other, t0); r.v != Drop || r.code != reason.PolicyDenied {
		t.Fatalf("unrelated ICMP error: %v %v", r.v, r.code)
	}
	// The same for TCP: an established external connection.
	syn := tcpFrame(t, seg{src: cIP, dst: extIP, sport: 40001, dport: 80, flags: packet.SYN, seq: 1})
	s.run(FromApp, syn, t0)
	if r := s.run(FromNet, icmpErrorFrame(t, router, cIP, 11, 0, syn[14:14+28]), t0); r.v != Forward {
		t.Fatalf("time exceeded for a TCP flow: %v %v", r.v, r.code)
	}
}

// A server enforcer restarted during a handshake, with the allow-acl
// mid-stream rule: the client's token-ACK is picked up and its token
// stripped before it reaches the PU.
func TestPickupStripsToken(t *testing.T) {
	p := newPair(t, allowAll, map[string]string{"app": "web"}, map[string]string{"app": "db"})
	syn, synack, ack, _, _ := p.frames()
	p.c2s(syn)
	p.s2c(synack)
	a := p.c.run(FromApp, ack, p.now)
	fresh := newSide(t, "node-s", allowAll, map[string]string{"app": "db"}, MidStreamAllowACL, flow.Config{})
	r := fresh.run(FromNet, a.frame, p.now)
	mustDeliver(t, "picked-up token-ACK", r, ack)
}

// A SYN retransmitted after the server's SYN-ACK went out does not set the
// flow back: the token-ACK that follows is still accepted.
func TestRetransmittedSYNAfterSYNACK(t *testing.T) {
	p := newPair(t, allowAll, map[string]string{"app": "web"}, map[string]string{"app": "db"})
	syn, synack, ack, _, _ := p.frames()
	p.c2s(syn)
	lost := p.s.run(FromApp, synack, p.now) // the SYN-ACK is lost on the wire
	_, _, b := p.c2s(syn)                   // so the client's kernel retransmits its SYN
	mustDeliver(t, "retransmitted SYN", b, syn)
	wire, _, b := p.s2c(synack) // and the server's kernel its SYN-ACK
	mustDeliver(t, "retransmitted SYN-ACK", b, synack)
	if !bytes.Equal(wire, lost.frame) {
		t.Fatal("retransmitted SYN-ACK carries other token bytes")
	}
	_, _, b = p.c2s(ack)
	mustDeliver(t, "ACK", b, ack)
	if len(b.notes) != 1 || b.notes[0].Kind != Authorize {
		t.Fatal("not established")
	}
}

// A duplicate SYN delayed in the network reaches the server after its
// SYN-ACK: it is delivered (the kernel ignores it) and the handshake ACK
// that follows is still accepted.
func TestDelayedDuplicateSYN(t *testing.T) {
	p := newPair(t, allowAll, map[string]string{"app": "web"}, map[string]string{"app": "db"})
	syn, synack, ack, _, _ := p.frames()
	w1, _, _ := p.c2s(syn)
	p.s2c(synack)
	mustDeliver(t, "duplicate SYN", p.s.run(FromNet, w1, p.now), syn)
	_, _, b := p.c2s(ack)
	mustDeliver(t, "ACK", b, ack)
	if len(b.notes) != 1 || b.notes[0].Kind != Authorize {
		t.Fatal("not established")
	}
}

// TestRecordEstablished: with RecordEstablished (the live daemon), each end
// writes an interim record when the flow is established, and its final
// record when the flow ends.
func TestRecordEstablished(t *testing.T) {
	p := newPair(t, webDB, map[string]string{"app": "web"}, map[string]string{"app": "db"})
	for _, s := range []*side{p.c, p.s} {
		s.e.recordOpen = true
	}
	p.handshake()
	for name, s := range map[string]*side{"client": p.c, "server": p.s} {
		rs := s.sink.all()
		if len(rs) != 1 || rs[0].End != EndEstablished || rs[0].Action != "allow" {
			t.Fatalf("%s records after the handshake: %+v", name, rs)
		}
	}
	if r := p.s.sink.all()[0]; r.Direction != "ingress" || r.Rule == nil || r.Rule.Name != "from-web" {
		t.Fatalf("server interim record: %+v", r)
	}
	rst := tcpFrame(t, seg{src: cIP, dst: sIP, sport: 40000, dport: 5432, flags: packet.RST, seq: 101})
	p.c2s(rst)
	rs := p.s.sink.all()
	if len(rs) != 2 || rs[1].End != EndReset || rs[1].Action != "allow" {
		t.Fatalf("server records after RST: %+v", rs)
	}
}

// TestReauthorize: live, an authorized flow's packets reach the dataplane
// only when its kernel entry has timed out; the enforcer then authorizes the
// flow again, at most once a second.
func TestReauthorize(t *testing.T) {
	p := newPair(t, webDB, map[string]string{"app": "web"}, map[string]string{"app": "db"})
	p.handshake()
	_, _, _, data, _ := p.frames()
	for _, step := range []struct {
		after time.Duration
		notes int
	}{
		{100 * time.Millisecond, 0}, // just authorized
		{2 * time.Second, 1},        // the kernel entry is gone: renew
		{2500 * time.Millisecond, 0},
		{4 * time.Second, 1},
	} {
		p.now = t0.Add(step.after)
		_, a, b := p.c2s(data)
		mustDeliver(t, "data", b, data)
		for side, r := range map[string]result{"client": a, "server": b} {
			if len(r.notes) != step.notes || (step.notes == 1 && r.notes[0].Kind != Authorize) {
				t.Fatalf("at +%v, %s notes: %+v, want %d authorize", step.after, side, r.notes, step.notes)
			}
		}
	}
}

// TestClientDeniedTupleReuse: after the client's egress refuses a
// connection, a new connection on the same 4-tuple (a new ISN: refused
// connections leave no TIME_WAIT, so kernels reuse the port at once) is
// decided afresh; a retransmission of the refused SYN still gets the
// refusal. Found live by the Kubernetes conformance probes.
func TestClientDeniedTupleReuse(t *testing.T) {
	denyEgress := webDB + `
  - name: web-in
    selector: app=web
    ingress: [{name: any, action: allow}]
`
	p := newPair(t, denyEgress, map[string]string{"app": "bad"}, map[string]string{"app": "web"})
	syn, synack, _, _, _ := p.frames()
	p.c2s(syn)
	if _, _, b := p.s2c(synack); b.v != Reset || b.code != reason.PolicyDenied {
		t.Fatalf("SYN-ACK: %v %v, want the client's egress to refuse", b.v, b.code)
	}
	if a := p.c.run(FromApp, syn, p.now); a.v != Reset || a.code != reason.PolicyDenied {
		t.Fatalf("retransmitted refused SYN: %v %v, want the same refusal", a.v, a.code)
	}
	// The client's policy now lets it reach app=web.
	p.c.e.SetPolicy(compile(t, denyEgress+`
  - name: bad-out
    selector: app=bad
    egress: [{name: to-web, to: [{selector: app=web}], action: allow}]
`))
	syn2 := tcpFrame(t, seg{src: cIP, dst: sIP, sport: 40000, dport: 5432, flags: packet.SYN, seq: 9000})
	synack2 := tcpFrame(t, seg{src: sIP, dst: cIP, sport: 5432, dport: 40000, flags: packet.SYN | packet.ACK, seq: 7000, ack: 9001})
	ack2 := tcpFrame(t, seg{src: cIP, dst: sIP, sport: 40000, dport: 5432, flags: packet.ACK, seq: 9001, ack: 7001})
	wire, a, b := p.c2s(syn2)
	if a.v != Forward || len(wire) <= len(syn2) {
		t.Fatalf("new SYN on the refused 4-tuple: %v %v (wire %d bytes), want it sent with a token", a.v, a.code, len(wire))
	}
	mustDeliver(t, "new SYN", b, syn2)
	_, _, b = p.s2c(synack2)
	mustDeliver(t, "new SYN-ACK", b, synack2)
	_, a, b = p.c2s(ack2)
	mustDeliver(t, "new ACK", b, ack2)
	if len(a.notes) != 1 || a.notes[0].Kind != Authorize {
		t.Fatalf("client notes: %+v, want the new connection authorized", a.notes)
	}
}

// TestReadRecords: what a JSONLSink writes reads back; a line cut short by a
// crash is skipped, the records before and after it are kept.
func TestReadRecords(t *testing.T) {
	var buf bytes.Buffer
	s := NewJSONLSink(&buf)
	in := []Record{
		{Time: t0.UTC(), End: EndEstablished, Proto: ipproto.TCP, Client: netip.AddrPortFrom(cIP, 40000), Server: netip.AddrPortFrom(sIP, 5432), Direction: "ingress", Action: "allow", Reason: "none"},
		{Time: t0.UTC(), End: EndDenied, Proto: ipproto.TCP, Client: netip.AddrPortFrom(cIP, 40001), Server: netip.AddrPortFrom(sIP, 22), Direction: "ingress", Action: "deny", Reason: "missing-token"},
	}
	s.Record(&in[0])
	buf.WriteString(`{"time":"2026-11-23T12:00:00Z","end":"clo` + "\n")
	s.Record(&in[1])
	out, err := ReadRecords(&buf)
	if err != nil || len(out) != 2 {
		t.Fatalf("read %d records (%v), want 2", len(out), err)
	}
	for i := range in {
		if out[i].End != in[i].End || out[i].Client != in[i].Client || out[i].Server != in[i].Server || out[i].Reason != in[i].Reason || !out[i].Time.Equal(in[i].Time) {
			t.Errorf("record %d: %+v, want %+v", i, out[i], in[i])
		}
	}
}

// TestLateTokenACK: the server's kernel re-sends its SYN-ACK while the
// client's token ACK is on its way (a busy node); the client's enforcer
// answers the copy with the token ACK again, which reaches the server's
// enforcer after the first established the flow. Its token frame must not
// reach the server PU as data (the stream would be shifted by the frame's
// length and the connection would hang): the PU gets the plain ACK. A
// malformed frame behind the marker is dropped by name.
func TestLateTokenACK(t *testing.T) {
	p := newPair(t, allowAll, map[string]string{"app": "web"}, map[string]string{"app": "db"})
	syn, synack, ack, data, _ := p.frames()
	p.c2s(syn)
	sa, _, _ := p.s2c(synack)
	p.c2s(ack) // established on both sides
	r := p.c.run(FromNet, sa, p.now.Add(time.Second))
	if len(r.inject) != 1 || r.inject[0].To != ToNet {
		t.Fatalf("SYN-ACK copy at the client: %v %v %+v", r.v, r.code, r.inject)
	}
	late := r.inject[0].Frame
	var q packet.Packet
	if q.Decode(late) != reason.None || q.PayloadLen() == 0 {
		t.Fatalf("the client's second token ACK carries no token: %+v", q)
	}
	b := p.s.run(FromNet, late, p.now.Add(time.Second))
	if b.v != Forward {
		t.Fatalf("late token ACK: %v %v", b.v, b.code)
	}
	if q.Decode(b.frame) != reason.None || q.Flags != packet.ACK || q.Seq != 101 || q.Ack != 701 || q.PayloadLen() != 0 {
		t.Fatalf("late token ACK delivered as %+v (payload %d bytes)", q, q.PayloadLen())
	}
	if _, ok := packet.FindOption(&q, tokens.Option); ok {
		t.Fatal("late token ACK delivered with its marker option")
	}
	if n := p.s.e.Stats().LateTokens; n != 1 {
		t.Fatalf("late tokens counted: %d, want 1", n)
	}
	_, _, b = p.c2s(data)
	mustDeliver(t, "data after the late token ACK", b, data)

	// The marker with a frame that does not parse: dropped, named.
	bad := tcpFrame(t, seg{src: cIP, dst: sIP, sport: 40000, dport: 5432, flags: packet.ACK, seq: 109, ack: 701,
		opts: []layers.TCPOption{{OptionType: tokens.OptionKind, OptionLength: 4, OptionData: tokens.Option[2:]}}, payload: []byte{9, 9}})
	b = p.s.run(FromNet, bad, p.now.Add(time.Second))
	if b.v != Drop || b.code == reason.None {
		t.Fatalf("malformed frame behind the marker on an established flow: %v %v", b.v, b.code)
	}
}

// TestRestorePeer: a flow restored after a restart, given back its side
// and its peer's identity (as the previous run saved them), is judged by
// that identity when the policy changes, as before the restart: kept while
// the server still accepts app=web, revoked once it does not. Without the
// identity the same flow is judged by addresses alone, and the policy,
// which allows no network, revokes it.
func TestRestorePeer(t *testing.T) {
	local, remote := netip.AddrPortFrom(sIP, 5432), netip.AddrPortFrom(cIP, 40000)
	web := NewRestoredPeer("node-c", identity.NewTags(map[string]string{"app": "web"}))
	onlyWeb := `
targetNetworks: [10.0.0.0/8]
policies:
  - name: db
    selector: app=db
    ingress: [{name: web, from: [{selector: app=web}], ports: [tcp/5432], action: allow}]
`
	for _, tc := range []struct {
		name     string
		withPeer bool
		policy   string
		revoked  int
	}{
		{"identity kept, still allowed", true, onlyWeb, 0},
		{"identity kept, no longer allowed", true, strings.ReplaceAll(onlyWeb, "app=web", "app=nobody"), 1},
		{"no identity, judged by addresses", false, onlyWeb, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSide(t, "n", allowAll, map[string]string{"app": "db"}, MidStreamDrop, flow.Config{})
			if !s.e.Restore(s.pu, ipproto.TCP, local, remote, t0) {
				t.Fatal("restore")
			}
			if tc.withPeer {
				if !s.e.RestorePeer(s.pu, local, remote, true, web) || s.e.RestorePeer(s.pu, local, remote, true, web) {
					t.Fatal("RestorePeer: want true once, then false")
				}
			}
			s.e.SetPolicy(compile(t, tc.policy))
			var out Output
			if n := s.e.Reevaluate(t0, &out); n != tc.revoked {
				t.Fatalf("revoked %d, want %d", n, tc.revoked)
			}
			if tc.revoked == 1 {
				rs := s.sink.all()
				if len(rs) != 1 || rs[0].End != EndRevoked {
					t.Fatalf("records: %+v", rs)
				}
				if tc.withPeer && (rs[0].Remote.Node != "node-c" || !slices.Equal(rs[0].Remote.Tags, []string{"app=web"})) {
					t.Fatalf("record of a flow restored with its peer: remote %+v", rs[0].Remote)
				}
			}
		})
	}
	// A flow that is not restored (or has its peer) is left alone.
	p := newPair(t, allowAll, map[string]string{"app": "web"}, map[string]string{"app": "db"})
	p.handshake()
	if p.s.e.RestorePeer(p.s.pu, local, remote, false, NewRestoredPeer("", identity.NewTags(map[string]string{"app": "bad"}))) {
		t.Fatal("RestorePeer changed a flow the enforcer decided itself")
	}
}
