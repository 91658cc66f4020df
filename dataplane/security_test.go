package dataplane

import (
	"bytes"
	"net/netip"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/trireme-go/trireme/dataplane/packet"
	"github.com/trireme-go/trireme/flow"
	"github.com/trireme-go/trireme/reason"
	"github.com/trireme-go/trireme/tokens"
)

// Attacks on the enforcer's TCP state and on its datagram paths (issue 11,
// items 4, 5, 6, 9, 10, 14). The live versions are in attacks/.

// forger is a client enforcer with another key than the pair's nodes.
func forger(t *testing.T, tags map[string]string) *side {
	s := newSide(t, "node-x", allowAll, tags, MidStreamDrop, flow.Config{})
	sec, _ := tokens.NewPSK(bytes.Repeat([]byte("z"), 32))
	te, _ := tokens.New(tokens.Config{Node: "node-x", Secrets: sec})
	s.e.tok = te
	s.pu.ident.Store(&puIdent{tags: s.pu.Tags(), local: te.NewLocal(s.pu.Tags())})
	return s
}

// wireSYN is the SYN for cIP:40000 -> sIP:5432 with ISN isn as another
// client enforcer (same key as the pair when from is nil's sibling) puts it
// on the wire.
func wireSYN(t *testing.T, from *side, isn uint32) []byte {
	syn := tcpFrame(t, seg{src: cIP, dst: sIP, sport: 40000, dport: 5432, flags: packet.SYN, seq: isn})
	if from == nil {
		return syn // no enforcer: no token
	}
	r := from.run(FromApp, syn, t0)
	if r.v != Forward {
		t.Fatalf("crafting the SYN: %v %v", r.v, r.code)
	}
	return r.frame
}

func recordsEnding(s *side, end End) int {
	n := 0
	for _, r := range s.sink.all() {
		if r.End == end {
			n++
		}
	}
	return n
}

// mustStillWork checks the pair's established connection: data both ways
// is delivered unchanged, and the flow is the same one (no new record).
func (p *pair) mustStillWork(what string) {
	p.t.Helper()
	_, _, _, data, reply := p.frames()
	before := len(p.s.sink.all())
	_, a, b := p.c2s(data)
	mustDeliver(p.t, what+": client data on the wire", a, data)
	mustDeliver(p.t, what+": client data", b, data)
	_, _, b = p.s2c(reply)
	mustDeliver(p.t, what+": server reply", b, reply)
	if n, _ := p.s.e.Flows(); n != 1 || len(p.s.sink.all()) != before {
		p.t.Fatalf("%s: %d server flows, records %+v", what, n, p.s.sink.all())
	}
}

// TestSYNOnEstablishedFlow (item 4): a SYN with another ISN on the 4-tuple
// of an established connection, sent by someone without the client's key
// or identity, is dropped with its reason: the flow, its kernel
// authorization and the connection are untouched. A record names the
// attempt; no RST goes anywhere.
func TestSYNOnEstablishedFlow(t *testing.T) {
	cases := []struct {
		name string
		syn  func(t *testing.T) []byte
		want reason.Code
	}{
		{"no token (a spoofer without enforcer)", func(t *testing.T) []byte { return wireSYN(t, nil, 5555) }, reason.MissingToken},
		{"token signed with another key", func(t *testing.T) []byte { return wireSYN(t, forger(t, map[string]string{"app": "web"}), 5555) }, reason.BadSignature},
		{"valid token of an identity the server refuses", func(t *testing.T) []byte {
			return wireSYN(t, newSide(t, "node-y", webDB, map[string]string{"app": "bad"}, MidStreamDrop, flow.Config{}), 5555)
		}, reason.PolicyDenied},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := newPair(t, webDB, map[string]string{"app": "web"}, map[string]string{"app": "db"})
			p.handshake()
			r := p.s.run(FromNet, tc.syn(t), p.now)
			if r.v != Drop || r.code != tc.want || len(r.inject) != 0 || len(r.notes) != 0 {
				t.Fatalf("SYN on the established flow: %v %v, %d injected, notes %+v", r.v, r.code, len(r.inject), r.notes)
			}
			rs := p.s.sink.all()
			if len(rs) != 1 || rs[0].End != EndRefused || rs[0].Reason != tc.want.String() || rs[0].Direction != "ingress" {
				t.Fatalf("records: %+v", rs)
			}
			if st := p.s.e.Stats(); st.Drops[tc.want] != 1 {
				t.Fatalf("drop not counted: %+v", st.Drops)
			}
			p.mustStillWork("after the SYN")
			if recordsEnding(p.s, EndReplaced) != 0 {
				t.Fatal("the established flow was replaced")
			}
		})
	}
}

// TestAuthenticatedSYNOnEstablishedFlow (item 4): a SYN with a valid token
// and an allowed identity (a token captured on the wire and replayed, or a
// client that lost its connection and reuses the port) still does not
// change the established flow: it goes to the PU, whose TCP decides. A live
// connection answers with a challenge ACK and goes on; a PU that answers
// with a SYN-ACK acknowledging the new SYN has no connection left: only
// then the old flow ends (replaced) and the new handshake completes.
func TestAuthenticatedSYNOnEstablishedFlow(t *testing.T) {
	p := newPair(t, webDB, map[string]string{"app": "web"}, map[string]string{"app": "db"})
	p.handshake()
	other := newSide(t, "node-y", webDB, map[string]string{"app": "web"}, MidStreamDrop, flow.Config{})
	syn2 := tcpFrame(t, seg{src: cIP, dst: sIP, sport: 40000, dport: 5432, flags: packet.SYN, seq: 9000})
	w := other.run(FromApp, syn2, p.now)
	r := p.s.run(FromNet, w.frame, p.now)
	mustDeliver(t, "authenticated SYN (token stripped)", r, syn2)
	if len(r.notes) != 0 || len(r.inject) != 0 || len(p.s.sink.all()) != 0 {
		t.Fatalf("the SYN changed the flow: notes %+v, records %+v", r.notes, p.s.sink.all())
	}
	// The server's TCP holds the connection: a challenge ACK (its current
	// numbers), then the connection goes on.
	challenge := tcpFrame(t, seg{src: sIP, dst: cIP, sport: 5432, dport: 40000, flags: packet.ACK, seq: 701, ack: 101})
	_, _, b := p.s2c(challenge)
	mustDeliver(t, "challenge ACK", b, challenge)
	p.mustStillWork("after the authenticated SYN")

	// Now the server PU answers the (retransmitted) SYN with a SYN-ACK:
	// its TCP has no connection on the 4-tuple any more.
	r = p.s.run(FromNet, w.frame, p.now)
	mustDeliver(t, "retransmitted new SYN", r, syn2)
	synack2 := tcpFrame(t, seg{src: sIP, dst: cIP, sport: 5432, dport: 40000, flags: packet.SYN | packet.ACK, seq: 3000, ack: 9001})
	a := p.s.run(FromApp, synack2, p.now)
	if a.v != Forward || len(a.frame) <= len(synack2) {
		t.Fatalf("SYN-ACK of the new connection: %v %v (%d bytes: no token?)", a.v, a.code, len(a.frame))
	}
	if recordsEnding(p.s, EndReplaced) != 1 || len(a.notes) != 1 || a.notes[0].Kind != Revoke {
		t.Fatalf("old flow not replaced: records %+v notes %+v", p.s.sink.all(), a.notes)
	}
	b = other.run(FromNet, a.frame, p.now)
	mustDeliver(t, "new SYN-ACK at the new client", b, synack2)
	ack2 := tcpFrame(t, seg{src: cIP, dst: sIP, sport: 40000, dport: 5432, flags: packet.ACK, seq: 9001, ack: 3001})
	wa := other.run(FromApp, ack2, p.now)
	b = p.s.run(FromNet, wa.frame, p.now)
	mustDeliver(t, "new handshake ACK", b, ack2)
	if len(b.notes) != 1 || b.notes[0].Kind != Authorize {
		t.Fatalf("new connection not established: %+v", b.notes)
	}
}

// A PU that refuses the new SYN with a RST (no listener) has no connection
// either: the old flow ends.
func TestSuccessorRefusedByPU(t *testing.T) {
	p := newPair(t, allowAll, map[string]string{"app": "web"}, map[string]string{"app": "db"})
	p.handshake()
	other := newSide(t, "node-y", allowAll, map[string]string{"app": "web"}, MidStreamDrop, flow.Config{})
	if r := p.s.run(FromNet, other.run(FromApp, wireSYNFrame(t, 9000), p.now).frame, p.now); r.v != Forward {
		t.Fatalf("new SYN: %v %v", r.v, r.code)
	}
	refused := tcpFrame(t, seg{src: sIP, dst: cIP, sport: 5432, dport: 40000, flags: packet.RST | packet.ACK, ack: 9001})
	a := p.s.run(FromApp, refused, p.now)
	if a.v != Forward || recordsEnding(p.s, EndReset) != 1 {
		t.Fatalf("PU's RST to the new SYN: %v %v, records %+v", a.v, a.code, p.s.sink.all())
	}
}

func wireSYNFrame(t *testing.T, isn uint32) []byte {
	return tcpFrame(t, seg{src: cIP, dst: sIP, sport: 40000, dport: 5432, flags: packet.SYN, seq: isn})
}

// TestSYNAfterClose: TIME_WAIT reuse still works. After FINs both ways the
// flow is over, and a new connection on the 4-tuple is decided afresh.
func TestSYNAfterClose(t *testing.T) {
	p := newPair(t, webDB, map[string]string{"app": "web"}, map[string]string{"app": "db"})
	p.handshake()
	p.c2s(tcpFrame(t, seg{src: cIP, dst: sIP, sport: 40000, dport: 5432, flags: packet.FIN | packet.ACK, seq: 101, ack: 701}))
	p.s2c(tcpFrame(t, seg{src: sIP, dst: cIP, sport: 5432, dport: 40000, flags: packet.FIN | packet.ACK, seq: 701, ack: 102}))
	p.c2s(tcpFrame(t, seg{src: cIP, dst: sIP, sport: 40000, dport: 5432, flags: packet.ACK, seq: 102, ack: 702}))
	// A spoofed SYN without a token does not take the closing flow away...
	if r := p.s.run(FromNet, wireSYNFrame(t, 7777), p.now); r.v != Drop || r.code != reason.MissingToken {
		t.Fatalf("spoofed SYN on the closing flow: %v %v", r.v, r.code)
	}
	// ...the client's new connection does.
	syn := wireSYNFrame(t, 50000)
	_, _, b := p.c2s(syn)
	mustDeliver(t, "new SYN (TIME_WAIT reuse)", b, syn)
	synack := tcpFrame(t, seg{src: sIP, dst: cIP, sport: 5432, dport: 40000, flags: packet.SYN | packet.ACK, seq: 60000, ack: 50001})
	_, _, b = p.s2c(synack)
	mustDeliver(t, "new SYN-ACK", b, synack)
	ack := tcpFrame(t, seg{src: cIP, dst: sIP, sport: 40000, dport: 5432, flags: packet.ACK, seq: 50001, ack: 60001})
	_, _, b = p.c2s(ack)
	mustDeliver(t, "new ACK", b, ack)
	if len(b.notes) != 1 || b.notes[0].Kind != Authorize || recordsEnding(p.s, EndReplaced) != 1 {
		t.Fatalf("new connection: notes %+v records %+v", b.notes, p.s.sink.all())
	}
}

// TestSYNOnHandshake: a handshake in progress yields only to an
// authenticated SYN; an unauthenticated one leaves it to complete.
func TestSYNOnHandshake(t *testing.T) {
	p := newPair(t, webDB, map[string]string{"app": "web"}, map[string]string{"app": "db"})
	syn, synack, ack, _, _ := p.frames()
	p.c2s(syn)
	p.s2c(synack)
	if r := p.s.run(FromNet, wireSYNFrame(t, 4444), p.now); r.v != Drop || r.code != reason.MissingToken {
		t.Fatalf("spoofed SYN on a pending handshake: %v %v", r.v, r.code)
	}
	_, _, b := p.c2s(ack)
	mustDeliver(t, "handshake ACK", b, ack)
	if len(b.notes) != 1 || b.notes[0].Kind != Authorize {
		t.Fatal("the handshake did not complete")
	}

	// Simultaneous open: the higher end (the server side, 10.0.2.2) yields
	// only to a crossing SYN that authenticates.
	q := newPair(t, allowAll, map[string]string{"app": "web"}, map[string]string{"app": "db"})
	own := tcpFrame(t, seg{src: sIP, dst: cIP, sport: 6000, dport: 5000, flags: packet.SYN, seq: 900})
	q.s.run(FromApp, own, q.now)
	crossing := tcpFrame(t, seg{src: cIP, dst: sIP, sport: 5000, dport: 6000, flags: packet.SYN, seq: 100})
	if r := q.s.run(FromNet, crossing, q.now); r.v != Drop || r.code != reason.MissingToken {
		t.Fatalf("unauthenticated crossing SYN: %v %v", r.v, r.code)
	}
	if n, _ := q.s.e.Flows(); n != 1 {
		t.Fatalf("%d flows", n)
	}
	w := q.c.run(FromApp, crossing, q.now)
	mustDeliver(t, "authenticated crossing SYN", q.s.run(FromNet, w.frame, q.now), crossing)
}

// rstFrom crafts a RST (with ACK when ack != 0) of the pair's connection.
func rstFrom(t *testing.T, fromClient bool, seq, ack uint32) []byte {
	s := seg{src: cIP, dst: sIP, sport: 40000, dport: 5432, flags: packet.RST, seq: seq, ack: ack}
	if !fromClient {
		s = seg{src: sIP, dst: cIP, sport: 5432, dport: 40000, flags: packet.RST, seq: seq, ack: ack}
	}
	if ack != 0 {
		s.flags |= packet.ACK
	}
	return tcpFrame(t, s)
}

// TestRSTWindow (item 5): a RST ends a flow only at the sequence number the
// receiver expects; elsewhere in the window it passes (the receiver sends a
// challenge ACK) and the flow stays; outside the window it is dropped.
// After the handshake and "SELECT 1"/"one": client next 109, server next
// 704; windows 64240 (no window scale).
func TestRSTWindow(t *testing.T) {
	cases := []struct {
		name       string
		fromClient bool
		seq        uint32
		v          Verdict
		code       reason.Code
		ends       bool
	}{
		{"client, exact", true, 109, Forward, reason.None, true},
		{"server, exact", false, 704, Forward, reason.None, true},
		{"client, in window", true, 109 + 30000, Forward, reason.None, false},
		{"client, just past the window", true, 109 + 64240, Drop, reason.OutOfWindow, false},
		{"client, far out", true, 109 + 1<<30, Drop, reason.OutOfWindow, false},
		{"client, behind", true, 100, Drop, reason.OutOfWindow, false},
		{"server, far out", false, 704 + 1<<31, Drop, reason.OutOfWindow, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := newPair(t, allowAll, map[string]string{"app": "web"}, map[string]string{"app": "db"})
			p.handshake()
			_, _, _, data, reply := p.frames()
			p.c2s(data)
			p.s2c(reply)
			// From the network, as a spoofer sends it: straight to the
			// receiver's enforcer.
			recv := p.s
			if !tc.fromClient {
				recv = p.c
			}
			r := recv.run(FromNet, rstFrom(t, tc.fromClient, tc.seq, 0), p.now)
			if r.v != tc.v || r.code != tc.code {
				t.Fatalf("RST: %v %v, want %v %v", r.v, r.code, tc.v, tc.code)
			}
			if ended := recordsEnding(recv, EndReset) == 1; ended != tc.ends {
				t.Fatalf("flow ended: %v, want %v (%+v)", ended, tc.ends, recv.sink.all())
			}
			if !tc.ends {
				p.mustStillWork("after the RST")
			}
		})
	}
}

// TestRSTInSynSent (item 5): in SYN-SENT a RST counts only when it
// acknowledges the SYN; a SYN-ACK that does not is ignored too. The
// handshake the forgeries tried to end then completes.
func TestRSTInSynSent(t *testing.T) {
	p := newPair(t, allowAll, map[string]string{"app": "web"}, map[string]string{"app": "db"})
	syn, synack, ack, _, _ := p.frames()
	p.c2s(syn)
	for _, f := range [][]byte{
		rstFrom(t, false, 0, 5000),  // RST+ACK not acknowledging the SYN (101)
		rstFrom(t, false, 0, 100),   // acknowledging less than the SYN
		rstFrom(t, false, 12345, 0), // RST without ACK
		tcpFrame(t, seg{src: sIP, dst: cIP, sport: 5432, dport: 40000, flags: packet.SYN | packet.ACK, seq: 1, ack: 777}),
	} {
		if r := p.c.run(FromNet, f, p.now); r.v != Drop || r.code != reason.OutOfWindow || len(r.inject) != 0 {
			t.Fatalf("forged segment in syn-sent: %v %v %d injected", r.v, r.code, len(r.inject))
		}
	}
	if len(p.c.sink.all()) != 0 {
		t.Fatalf("records: %+v", p.c.sink.all())
	}
	_, _, b := p.s2c(synack)
	mustDeliver(t, "genuine SYN-ACK", b, synack)
	_, _, b = p.c2s(ack)
	if len(b.notes) != 1 {
		t.Fatal("the handshake did not complete")
	}
	// A RST that acknowledges the SYN (a closed port) does end it.
	q := newPair(t, allowAll, map[string]string{"app": "web"}, map[string]string{"app": "db"})
	q.c2s(syn)
	if r := q.c.run(FromNet, rstFrom(t, false, 0, 101), q.now); r.v != Forward || recordsEnding(q.c, EndReset) != 1 {
		t.Fatalf("RST acknowledging the SYN: %v %v", r.v, r.code)
	}
}

// TestRSTWindowScaled: windows after the handshake are scaled by the
// shift both sides offered (RFC 7323).
func TestRSTWindowScaled(t *testing.T) {
	ws := []layers.TCPOption{{OptionType: layers.TCPOptionKindWindowScale, OptionLength: 3, OptionData: []byte{7}},
		{OptionType: layers.TCPOptionKindNop}}
	p := newPair(t, allowAll, map[string]string{"app": "web"}, map[string]string{"app": "db"})
	syn := tcpFrame(t, seg{src: cIP, dst: sIP, sport: 40000, dport: 5432, flags: packet.SYN, seq: 100, opts: ws})
	synack := tcpFrame(t, seg{src: sIP, dst: cIP, sport: 5432, dport: 40000, flags: packet.SYN | packet.ACK, seq: 700, ack: 101, opts: ws})
	ack := tcpFrame(t, seg{src: cIP, dst: sIP, sport: 40000, dport: 5432, flags: packet.ACK, seq: 101, ack: 701})
	p.c2s(syn)
	p.s2c(synack)
	p.c2s(ack)
	// The server's window: 64240 << 7 from its next ACK on.
	p.s2c(tcpFrame(t, seg{src: sIP, dst: cIP, sport: 5432, dport: 40000, flags: packet.ACK, seq: 701, ack: 101}))
	if r := p.s.run(FromNet, rstFrom(t, true, 101+64240*100, 0), p.now); r.v != Forward || len(p.s.sink.all()) != 0 {
		t.Fatalf("RST in the scaled window: %v %v", r.v, r.code)
	}
	if r := p.s.run(FromNet, rstFrom(t, true, 101+64240*200, 0), p.now); r.v != Drop || r.code != reason.OutOfWindow {
		t.Fatalf("RST beyond the scaled window: %v %v", r.v, r.code)
	}
}

// TestRSTKernelBypass: live, an established flow's packets pass in the
// kernel, so the enforcer's window is out of date. A RST from the network
// goes to the PU (its TCP applies RFC 5961) without changing the flow, and
// a probe follows it; the PU's answer, a RST when its connection is gone,
// ends the flow.
func TestRSTKernelBypass(t *testing.T) {
	p := newPair(t, allowAll, map[string]string{"app": "web"}, map[string]string{"app": "db"})
	p.c.e.kernelBypass, p.s.e.kernelBypass = true, true
	p.handshake()
	rst := rstFrom(t, true, 123456789, 0)
	r := p.s.run(FromNet, rst, p.now)
	mustDeliver(t, "RST to the PU", r, rst)
	if len(r.notes) != 0 || len(p.s.sink.all()) != 0 || len(r.inject) != 1 || !r.inject[0].AfterFrame || r.inject[0].To != ToPU {
		t.Fatalf("unverifiable RST: notes %+v records %+v inject %+v", r.notes, p.s.sink.all(), r.inject)
	}
	var probe packet.Packet
	if probe.Decode(r.inject[0].Frame) != reason.None || probe.Flags != packet.ACK ||
		probe.Seq != 123456789+1<<31 || probe.Src != cIP || probe.Dst != sIP || !packet.VerifyTCPChecksum(&probe) {
		t.Fatalf("probe: %+v", probe)
	}
	if p.s.e.Stats().Probes != 1 {
		t.Fatal("probe not counted")
	}
	// A second RST right after: passed on, no second probe.
	if r = p.s.run(FromNet, rst, p.now.Add(10*time.Millisecond)); r.v != Forward || len(r.inject) != 0 {
		t.Fatalf("second RST: %v %+v", r.v, r.inject)
	}
	p.mustStillWork("after the RST")
	// The PU's TCP no longer had the connection: it answers the probe.
	answer := rstFrom(t, false, probe.Ack, 0)
	a := p.s.run(FromApp, answer, p.now)
	if a.v != Forward || len(a.notes) != 1 || a.notes[0].Kind != Revoke || recordsEnding(p.s, EndReset) != 1 {
		t.Fatalf("the PU's RST: %v %v notes %+v records %+v", a.v, a.code, a.notes, p.s.sink.all())
	}
}

// tfoSYN is a SYN from cIP with a TCP Fast Open cookie and n bytes of data.
func tfoSYN(t *testing.T, dst netip.Addr, dport uint16, n int) []byte {
	opts := []layers.TCPOption{
		{OptionType: layers.TCPOptionKindMSS, OptionLength: 4, OptionData: []byte{5, 0xb4}},
		{OptionType: layers.TCPOptionKindSACKPermitted, OptionLength: 2},
		{OptionType: 34, OptionLength: 10, OptionData: []byte{1, 2, 3, 4, 5, 6, 7, 8}},
	}
	return tcpFrame(t, seg{src: cIP, dst: dst, sport: 40000, dport: dport, flags: packet.SYN, seq: 100, opts: opts,
		payload: bytes.Repeat([]byte("Q"), n)})
}

func synOptionKinds(t *testing.T, f []byte) []uint8 {
	var p packet.Packet
	if p.Decode(f) != reason.None {
		t.Fatal("does not parse")
	}
	var kinds []uint8
	b := f[p.L4+20 : p.Payload]
	for i := 0; i < len(b); {
		if b[i] <= 1 {
			i++
			continue
		}
		kinds = append(kinds, b[i])
		i += int(b[i+1])
	}
	return kinds
}

// TestSYNDataWaitsForBothDecisions (item 6): the client's egress decides
// at the SYN-ACK, so data on the SYN (Fast Open or plain) never crosses:
// the client's enforcer takes it (and the Fast Open option) off before the
// token goes on, and the server's enforcer would take off whatever is
// left. Here the client's egress refuses the server: not one byte of the
// data reached the server PU, although its ingress allowed the SYN.
func TestSYNDataWaitsForBothDecisions(t *testing.T) {
	yaml := webDB + `
  - name: web-in
    selector: app=web
    ingress: [{name: any, action: allow}]
`
	for _, n := range []int{407, 1400} { // 1400: no room for the token if the data stayed
		p := newPair(t, yaml, map[string]string{"app": "bad"}, map[string]string{"app": "web"})
		syn := tfoSYN(t, sIP, 5432, n)
		wire, a, b := p.c2s(syn)
		if a.v != Forward {
			t.Fatalf("%d bytes: client enforcer: %v %v", n, a.v, a.code)
		}
		var w packet.Packet
		w.Decode(wire)
		if tl, err := tokens.FrameLen(wire[w.Payload:w.End]); err != nil || w.PayloadLen() != tl || bytes.Contains(wire, []byte("QQQQ")) {
			t.Fatalf("%d bytes: data on the wire (payload %d, token %d, %v)", n, w.PayloadLen(), tl, err)
		}
		var d packet.Packet
		if b.v != Forward || d.Decode(b.frame) != reason.None || d.PayloadLen() != 0 ||
			!packet.VerifyTCPChecksum(&d) || !packet.VerifyIPv4Checksum(&d) {
			t.Fatalf("%d bytes: SYN at the server: %v %v, payload %d", n, b.v, b.code, d.PayloadLen())
		}
		for _, k := range synOptionKinds(t, b.frame) {
			if k == 34 {
				t.Fatalf("%d bytes: Fast Open option delivered", n)
			}
		}
		synack := tcpFrame(t, seg{src: sIP, dst: cIP, sport: 5432, dport: 40000, flags: packet.SYN | packet.ACK, seq: 700, ack: 101})
		if _, _, b = p.s2c(synack); b.v != Reset || b.code != reason.PolicyDenied {
			t.Fatalf("%d bytes: SYN-ACK: %v %v, want the client's egress to refuse", n, b.v, b.code)
		}
	}
	// Toward an external host (no enforcer there) the CIDR rules decided at
	// the SYN: its data goes as it is.
	p := newPair(t, webDB, map[string]string{"app": "web"}, map[string]string{"app": "db"})
	syn := tfoSYN(t, extIP, 80, 200)
	mustDeliver(t, "Fast Open SYN to an external host", p.c.run(FromApp, syn, p.now), syn)
}

func icmpFrame(t *testing.T, src, dst netip.Addr, typ, code uint8, quoted []byte) []byte {
	return icmpErrorFrame(t, src, dst, typ, code, quoted)
}

// ipOf returns the IP packet of an Ethernet frame without link padding.
func ipOf(t *testing.T, f []byte) []byte {
	var p packet.Packet
	if p.Decode(f) != reason.None {
		t.Fatal("does not parse")
	}
	return f[p.L3:p.End]
}

// TestICMPErrorsFitTheirFlow (item 9): an ICMP error passes on a flow's
// behalf only on the flow's own path: toward the sender of the packet it
// quotes, from that packet's destination or a router; nothing larger than
// an error may be. Otherwise it would carry data to anyone.
func TestICMPErrorsFitTheirFlow(t *testing.T) {
	s := newSide(t, "n", webDB, map[string]string{"app": "web"}, MidStreamDrop, flow.Config{})
	q := udpFrame(t, cIP, extIP, 5353, 53)
	ans := udpFrame(t, extIP, cIP, 53, 5353)
	s.run(FromApp, q, t0)
	s.run(FromNet, ans, t0)
	router := netip.MustParseAddr("192.0.2.1")
	covert := netip.MustParseAddr("198.18.0.7")
	secret := bytes.Repeat([]byte("S"), 34)
	cases := []struct {
		name string
		dir  Direction
		f    []byte
		v    Verdict
		code reason.Code
	}{
		{"router to the PU about its packet", FromNet, icmpFrame(t, router, cIP, 3, 4, ipOf(t, q)[:28]), Forward, reason.None},
		{"peer to the PU about its packet", FromNet, icmpFrame(t, extIP, cIP, 3, 3, ipOf(t, q)), Forward, reason.None},
		{"PU back to the sender of a packet it got", FromApp, icmpFrame(t, cIP, extIP, 3, 3, ipOf(t, ans)), Forward, reason.None},
		{"PU to a third host, quoting a packet it got", FromApp, icmpFrame(t, cIP, covert, 3, 3, append(ipOf(t, ans)[:28], secret...)), Drop, reason.BadICMPError},
		{"PU about its own packet", FromApp, icmpFrame(t, cIP, extIP, 3, 3, ipOf(t, q)), Drop, reason.BadICMPError},
		{"to the PU about a packet it did not send", FromNet, icmpFrame(t, router, cIP, 11, 0, ipOf(t, ans)), Drop, reason.BadICMPError},
		{"router to the PU, oversized", FromNet, icmpFrame(t, router, cIP, 3, 4, append(ipOf(t, q)[:28], make([]byte, 600)...)), Drop, reason.BadICMPError},
		{"quoting no flow: the rules decide", FromApp, icmpFrame(t, cIP, covert, 3, 3, ipOf(t, udpFrame(t, covert, cIP, 1, 2))), Drop, reason.PolicyDenied},
	}
	for _, tc := range cases {
		r := s.run(tc.dir, tc.f, t0)
		if r.v != tc.v || r.code != tc.code {
			t.Errorf("%s: %v %v, want %v %v", tc.name, r.v, r.code, tc.v, tc.code)
		}
	}
}

// TestICMPv6ErrorsFitTheirFlow: the same for ICMPv6 (1280-byte bound).
func TestICMPv6ErrorsFitTheirFlow(t *testing.T) {
	c6, e6, r6 := netip.MustParseAddr("fd00::1"), netip.MustParseAddr("2001:db8::9"), netip.MustParseAddr("2001:db8::1")
	s := newSide(t, "n", `
targetNetworks: [fd00::/64]
policies:
  - name: out
    selector: "*"
    egress: [{name: dns, to: [{cidr: "2001:db8::/64"}], ports: [udp/53], action: allow}]
`, map[string]string{"app": "web"}, MidStreamDrop, flow.Config{})
	q := udp6Frame(t, c6, e6, 5353, 53, 8)
	if r := s.run(FromApp, q, t0); r.v != Forward {
		t.Fatalf("udp6: %v %v", r.v, r.code)
	}
	ptb := func(src, dst netip.Addr, n int) []byte {
		return icmp6Frame(t, src, dst, 2, 0, append(ipOf(t, q), make([]byte, n)...))
	}
	if r := s.run(FromNet, ptb(r6, c6, 0), t0); r.v != Forward {
		t.Fatalf("packet too big from a router: %v %v", r.v, r.code)
	}
	if r := s.run(FromNet, ptb(r6, c6, 1300), t0); r.v != Drop || r.code != reason.BadICMPError {
		t.Fatalf("oversized ICMPv6 error: %v %v", r.v, r.code)
	}
	if r := s.run(FromApp, icmp6Frame(t, c6, r6, 1, 4, ipOf(t, q)), t0); r.v != Drop || r.code != reason.BadICMPError {
		t.Fatalf("PU's error about its own packet: %v %v", r.v, r.code)
	}
}

func udp6Frame(t *testing.T, src, dst netip.Addr, sport, dport uint16, n int) []byte {
	eth := &layers.Ethernet{SrcMAC: cMAC, DstMAC: sMAC, EthernetType: layers.EthernetTypeIPv6}
	ip := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolUDP, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
	udp := &layers.UDP{SrcPort: layers.UDPPort(sport), DstPort: layers.UDPPort(dport)}
	udp.SetNetworkLayerForChecksum(ip)
	return serialize(t, eth, ip, udp, gopacket.Payload(make([]byte, n)))
}

func icmp6Frame(t *testing.T, src, dst netip.Addr, typ, code uint8, body []byte) []byte {
	eth := &layers.Ethernet{SrcMAC: sMAC, DstMAC: cMAC, EthernetType: layers.EthernetTypeIPv6}
	ip := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolICMPv6, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
	icmp := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(typ, code)}
	icmp.SetNetworkLayerForChecksum(ip)
	// 4 bytes unused / MTU, then the quoted packet.
	return serialize(t, eth, ip, icmp, gopacket.Payload(append([]byte{0, 0, 5, 0}, body...)))
}

func serialize(t *testing.T, ls ...gopacket.SerializableLayer) []byte {
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatal(err)
	}
	return bytes.Clone(buf.Bytes())
}

// frag6 is an IPv6 fragment of a datagram of proto (offset in bytes).
func frag6(t *testing.T, src, dst netip.Addr, id uint32, off int, more bool, data []byte) []byte {
	eth := &layers.Ethernet{SrcMAC: cMAC, DstMAC: sMAC, EthernetType: layers.EthernetTypeIPv6}
	ip := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolIPv6Fragment, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
	fh := []byte{17, 0, byte(off >> 8), byte(off) &^ 7, byte(id >> 24), byte(id >> 16), byte(id >> 8), byte(id)}
	if more {
		fh[3] |= 1
	}
	return serialize(t, eth, ip, gopacket.Payload(append(fh, data...)))
}

// TestFragmentsOfAuthorizedFlows (item 10): once a datagram flow is
// authorized, its fragmented datagrams pass whole, both ways and on both
// IP versions (live, the kernel steers every fragment to the dataplane);
// fragments of other datagrams, and later fragments that overlap the
// first (they could rewrite the header the decision was made on), do not.
func TestFragmentsOfAuthorizedFlows(t *testing.T) {
	s := newSide(t, "n", webDB, map[string]string{"app": "web"}, MidStreamDrop, flow.Config{})
	if r := s.run(FromApp, udpFrame(t, cIP, extIP, 5000, 53), t0); r.v != Forward {
		t.Fatalf("first datagram: %v %v", r.v, r.code)
	}
	hdr := func(src, dst netip.Addr, sport, dport uint16) []byte { // UDP header of a 3000-byte datagram
		return []byte{byte(sport >> 8), byte(sport), byte(dport >> 8), byte(dport), 3000 >> 8, 3000 & 0xff, 0, 0}
	}
	first := fragFrame(t, cIP, extIP, layers.IPProtocolUDP, 77, layers.IPv4MoreFragments, 0, append(hdr(cIP, extIP, 5000, 53), make([]byte, 1472)...))
	second := fragFrame(t, cIP, extIP, layers.IPProtocolUDP, 77, layers.IPv4MoreFragments, 1480/8, make([]byte, 1480))
	last := fragFrame(t, cIP, extIP, layers.IPProtocolUDP, 77, 0, 2960/8, make([]byte, 40))
	for i, f := range [][]byte{first, second, last} {
		if r := s.run(FromApp, f, t0); r.v != Forward {
			t.Fatalf("fragment %d of the allowed flow's datagram: %v %v", i+1, r.v, r.code)
		}
	}
	// The answer, fragmented too.
	afirst := fragFrame(t, extIP, cIP, layers.IPProtocolUDP, 91, layers.IPv4MoreFragments, 0, append(hdr(extIP, cIP, 53, 5000), make([]byte, 1472)...))
	alast := fragFrame(t, extIP, cIP, layers.IPProtocolUDP, 91, 0, 1480/8, make([]byte, 1520))
	for i, f := range [][]byte{afirst, alast} {
		if r := s.run(FromNet, f, t0); r.v != Forward {
			t.Fatalf("answer fragment %d: %v %v", i+1, r.v, r.code)
		}
	}
	refused := []struct {
		name string
		dir  Direction
		f    []byte
	}{
		// RFC 1858: offset 8 rewrites the bytes after a TCP/UDP header.
		{"overlapping the first fragment", FromApp, fragFrame(t, cIP, extIP, layers.IPProtocolUDP, 77, 0, 1, make([]byte, 64))},
		{"same ID, other direction", FromNet, fragFrame(t, extIP, cIP, layers.IPProtocolUDP, 77, 0, 2960/8, make([]byte, 40))},
		{"another datagram", FromApp, fragFrame(t, cIP, extIP, layers.IPProtocolUDP, 78, 0, 1480/8, make([]byte, 40))},
	}
	for _, tc := range refused {
		if r := s.run(tc.dir, tc.f, t0); r.v != Drop || r.code != reason.Fragment {
			t.Errorf("%s: %v %v", tc.name, r.v, r.code)
		}
	}
	// A first fragment too short for its transport header (tiny fragment).
	if r := s.run(FromApp, fragFrame(t, cIP, extIP, layers.IPProtocolUDP, 79, layers.IPv4MoreFragments, 0, hdr(cIP, extIP, 5000, 53)[:4]), t0); r.v != Drop || r.code != reason.Malformed {
		t.Errorf("tiny first fragment: %v %v", r.v, r.code)
	}

	// IPv6, the same datagram flow.
	c6, e6 := netip.MustParseAddr("fd00::1"), netip.MustParseAddr("2001:db8::9")
	s6 := newSide(t, "n6", `
targetNetworks: [fd00::/64]
policies:
  - name: out
    selector: "*"
    egress: [{name: dns, to: [{cidr: "2001:db8::/64"}], ports: [udp/53], action: allow}]
`, map[string]string{"app": "web"}, MidStreamDrop, flow.Config{})
	if r := s6.run(FromApp, udp6Frame(t, c6, e6, 5000, 53, 8), t0); r.v != Forward {
		t.Fatalf("udp6: %v %v", r.v, r.code)
	}
	f1 := frag6(t, c6, e6, 0xabcd, 0, true, append(hdr(c6, e6, 5000, 53), make([]byte, 1224)...))
	f2 := frag6(t, c6, e6, 0xabcd, 1232, false, make([]byte, 1000))
	for i, f := range [][]byte{f1, f2} {
		if r := s6.run(FromApp, f, t0); r.v != Forward {
			t.Fatalf("IPv6 fragment %d: %v %v", i+1, r.v, r.code)
		}
	}
	if r := s6.run(FromApp, frag6(t, c6, e6, 0xabcd, 8, false, make([]byte, 64)), t0); r.v != Drop || r.code != reason.Fragment {
		t.Fatalf("overlapping IPv6 fragment: %v %v", r.v, r.code)
	}
	// A denied flow's datagram: its first fragment is refused, so are the
	// others.
	df := frag6(t, c6, e6, 0xbeef, 0, true, append(hdr(c6, e6, 5000, 99), make([]byte, 64)...))
	if r := s6.run(FromApp, df, t0); r.v != Drop || r.code != reason.PolicyDenied {
		t.Fatalf("denied first fragment: %v %v", r.v, r.code)
	}
	if r := s6.run(FromApp, frag6(t, c6, e6, 0xbeef, 72, false, make([]byte, 64)), t0); r.v != Drop || r.code != reason.Fragment {
		t.Fatalf("denied later fragment: %v %v", r.v, r.code)
	}
}

// TestRecordsSayTheRightThing (item 14).
func TestRecordsSayTheRightThing(t *testing.T) {
	// Inbound UDP the db refuses: "ingress", the sender is the client.
	db := newSide(t, "n", webDB, map[string]string{"app": "db"}, MidStreamDrop, flow.Config{})
	if r := db.run(FromNet, udpFrame(t, extIP, sIP, 53000, 9999), t0); r.v != Drop {
		t.Fatalf("inbound UDP: %v", r.v)
	}
	// UDP from a peer inside the target networks (also refused).
	db.run(FromNet, udpFrame(t, cIP, sIP, 53001, 9999), t0)
	rs := db.sink.all()
	if len(rs) != 2 {
		t.Fatalf("records: %+v", rs)
	}
	if r := rs[0]; r.Direction != "ingress" || r.Client != netip.AddrPortFrom(extIP, 53000) || r.Server != netip.AddrPortFrom(sIP, 9999) ||
		r.Action != "deny" || !r.Remote.External {
		t.Fatalf("inbound UDP record: %+v", r)
	}
	if r := rs[1]; r.Remote.External || r.Direction != "ingress" {
		t.Fatalf("UDP from a target-network peer: %+v", r)
	}
	// A handshake that never completes, under allow-all: both sides say
	// "none"/"timeout".
	p := newPair(t, allowAll, map[string]string{"app": "web"}, map[string]string{"app": "db"})
	syn, synack, _, _, _ := p.frames()
	p.c2s(syn)
	p.s2c(synack)
	var out Output
	for name, s := range map[string]*side{"client": p.c, "server": p.s} {
		s.e.Expire(t0.Add(2*time.Minute), &out)
		rs := s.sink.all()
		if len(rs) != 1 || rs[0].Action != "none" || rs[0].Reason != "timeout" || rs[0].End != EndExpired {
			t.Fatalf("%s record of an unfinished handshake: %+v", name, rs)
		}
	}
}

// TestForgedFINDoesNotCloseFlow: a FIN from the network is believed only when
// a TCP that accepted it shows it (it acknowledges the PU's FIN, or the PU's
// FIN acknowledges it). A forged FIN is passed on (the PU's TCP judges it)
// but does not let the PU's own FIN take the flow out of the kernel; the
// real close does, whichever side closes first, even with forged FINs
// before and after the real one.
func TestForgedFINDoesNotCloseFlow(t *testing.T) {
	revokes := func(r result) int {
		n := 0
		for _, nt := range r.notes {
			if nt.Kind == Revoke {
				n++
			}
		}
		return n
	}
	forged := func(t *testing.T, seq, ack uint32) []byte {
		return tcpFrame(t, seg{src: cIP, dst: sIP, sport: 40000, dport: 5432, flags: packet.FIN | packet.ACK, seq: seq, ack: ack})
	}
	tests := []struct {
		name string
		run  func(t *testing.T, p *pair)
	}{
		{"forged FIN, then the server PU closes", func(t *testing.T, p *pair) {
			if r := p.s.run(FromNet, forged(t, 5000, 9999), p.now); r.v != Forward || revokes(r) != 0 {
				t.Fatalf("forged FIN: %v %v notes %+v", r.v, r.code, r.notes)
			}
			// The server PU closes; its FIN acknowledges what the client
			// really sent (101), not the forged FIN.
			fin := tcpFrame(t, seg{src: sIP, dst: cIP, sport: 5432, dport: 40000, flags: packet.FIN | packet.ACK, seq: 701, ack: 101})
			if r := p.s.run(FromApp, fin, p.now); r.v != Forward || revokes(r) != 0 {
				t.Fatalf("server FIN after a forged one: %v notes %+v, want the flow kept", r.v, r.notes)
			}
			// The real client FIN acknowledges the server's: closing.
			cfin := tcpFrame(t, seg{src: cIP, dst: sIP, sport: 40000, dport: 5432, flags: packet.FIN | packet.ACK, seq: 101, ack: 702})
			if r := p.s.run(FromNet, cfin, p.now); revokes(r) != 1 {
				t.Fatalf("real client FIN: notes %+v, want one revoke", r.notes)
			}
		}},
		{"forged FINs around the real one, client closes first", func(t *testing.T, p *pair) {
			p.s.run(FromNet, forged(t, 5000, 9999), p.now)
			cfin := tcpFrame(t, seg{src: cIP, dst: sIP, sport: 40000, dport: 5432, flags: packet.FIN | packet.ACK, seq: 101, ack: 701})
			if r := p.s.run(FromNet, cfin, p.now); revokes(r) != 0 {
				t.Fatalf("first FIN: notes %+v", r.notes)
			}
			p.s.run(FromNet, forged(t, 7000, 9999), p.now)
			p.s.run(FromNet, forged(t, 8000, 9999), p.now)
			// The server's FIN acknowledges the real client FIN (101+1).
			fin := tcpFrame(t, seg{src: sIP, dst: cIP, sport: 5432, dport: 40000, flags: packet.FIN | packet.ACK, seq: 701, ack: 102})
			if r := p.s.run(FromApp, fin, p.now); revokes(r) != 1 {
				t.Fatalf("server FIN acknowledging the real one: notes %+v, want one revoke", r.notes)
			}
		}},
		{"forged FIN guessing close to the PU's FIN", func(t *testing.T, p *pair) {
			fin := tcpFrame(t, seg{src: sIP, dst: cIP, sport: 5432, dport: 40000, flags: packet.FIN | packet.ACK, seq: 701, ack: 101})
			p.s.run(FromApp, fin, p.now)
			for _, ack := range []uint32{701, 703, 1} {
				if r := p.s.run(FromNet, forged(t, 101, ack), p.now); revokes(r) != 0 {
					t.Fatalf("forged FIN acking %d: notes %+v, want the flow kept", ack, r.notes)
				}
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newPair(t, allowAll, map[string]string{"app": "web"}, map[string]string{"app": "db"})
			p.handshake()
			tt.run(t, p)
		})
	}
}
