package dataplane

import (
	"bytes"
	"testing"
	"time"

	"github.com/trireme-go/trireme/dataplane/packet"
	"github.com/trireme-go/trireme/flow"
)

// logged runs a frame through ProcessLogged, as the daemon does for a FIN
// or RST the kernel passed and logged.
func (s *side) logged(dir Direction, f []byte, now time.Time) result {
	s.e.ProcessLogged(s.pu, dir, bytes.Clone(f), now, &s.out)
	r := result{v: s.out.Verdict, code: s.out.Reason, frame: bytes.Clone(s.out.Frame), notes: append([]Note(nil), s.out.Notes...)}
	for _, in := range s.out.Inject {
		in.Frame = bytes.Clone(in.Frame)
		r.inject = append(r.inject, in)
	}
	return r
}

// TestProcessLogged: FINs and RSTs the kernel passed on a flow it carries
// are judged as steered ones are (the same state machine), neither
// forwarded nor counted: two believed FINs revoke the flow with the
// kernel's counts asked for, a forged FIN changes nothing, the PU's RST
// ends the flow, a RST from the network is left to the PU and probed.
func TestProcessLogged(t *testing.T) {
	newBypass := func() *pair {
		p := newPair(t, webDB, map[string]string{"app": "web"}, map[string]string{"app": "db"})
		for _, s := range []*side{p.c, p.s} {
			s.e.kernelBypass, s.e.kernelCounts = true, true
		}
		p.handshake()
		return p
	}
	fin1 := tcpFrame(t, seg{src: cIP, dst: sIP, sport: 40000, dport: 5432, flags: packet.FIN | packet.ACK, seq: 101, ack: 701})
	fin2 := tcpFrame(t, seg{src: sIP, dst: cIP, sport: 5432, dport: 40000, flags: packet.FIN | packet.ACK, seq: 701, ack: 102})
	entry := func(s *side) *flow.Entry[conn] {
		var ent *flow.Entry[conn]
		s.e.table.Range(func(e *flow.Entry[conn]) bool { ent = e; return false })
		return ent
	}

	t.Run("fin", func(t *testing.T) {
		p := newBypass()
		before := p.c.e.Stats()
		pkts := entry(p.c).Packets
		a := p.c.logged(FromApp, fin1, p.now)
		if a.v != Drop || a.frame != nil || len(a.notes) != 0 || len(a.inject) != 0 {
			t.Fatalf("first FIN: %+v", a)
		}
		b := p.c.logged(FromNet, fin2, p.now)
		if b.frame != nil || len(b.notes) != 1 || b.notes[0].Kind != Revoke || !b.notes[0].Count {
			t.Fatalf("second FIN: %+v, want a counted revoke", b)
		}
		ent := entry(p.c)
		if ent.State != flow.Closing || ent.Packets != pkts {
			t.Fatalf("flow %v packets %v, want closing and %v (the kernel counted the FINs)", ent.State, ent.Packets, pkts)
		}
		after := p.c.e.Stats()
		if after.Logged != before.Logged+2 || after.Packets != before.Packets || after.Forwarded != before.Forwarded {
			t.Fatalf("stats before %+v after %+v", before, after)
		}
		// Logged again (a retransmission): nothing more.
		if c := p.c.logged(FromNet, fin2, p.now); len(c.notes) != 0 {
			t.Fatalf("retransmitted FIN: %+v", c)
		}
		n := b.notes[0]
		if !p.c.e.AddKernelCounts(&n, 10, 1000, 20, 3000) {
			t.Fatal("the counts of the closing flow were not taken")
		}
		var out Output
		p.c.e.Expire(p.now.Add(time.Minute), &out)
		rs := p.c.sink.all()
		if len(rs) != 1 || rs[0].End != EndClosed || !rs[0].KernelCounted || rs[0].PacketsOut != 2+10 || rs[0].PacketsIn != 1+20 {
			t.Fatalf("client records: %+v", rs)
		}
	})

	t.Run("forged fin", func(t *testing.T) {
		p := newBypass()
		p.c.logged(FromApp, fin1, p.now)
		// From the network, acknowledging nothing the PU sent: a blind
		// forgery on the 4-tuple (or one of another PU) is not believed.
		forged := tcpFrame(t, seg{src: sIP, dst: cIP, sport: 5432, dport: 40000, flags: packet.FIN | packet.ACK, seq: 9999, ack: 5555})
		if a := p.c.logged(FromNet, forged, p.now); len(a.notes) != 0 {
			t.Fatalf("forged FIN: %+v", a)
		}
		if ent := entry(p.c); ent.State != flow.Established || ent.FIN[sideRemote] {
			t.Fatalf("after a forged FIN: %v %v", ent.State, ent.FIN)
		}
		if b := p.c.logged(FromNet, fin2, p.now); len(b.notes) != 1 || b.notes[0].Kind != Revoke {
			t.Fatalf("the real FIN after a forged one: %+v", b)
		}
	})

	t.Run("fin with data", func(t *testing.T) {
		// The FIN's place in the sequence space is after its data: the
		// logged headers keep the IP length (nflog.Packet.Frame).
		p := newBypass()
		data := tcpFrame(t, seg{src: cIP, dst: sIP, sport: 40000, dport: 5432, flags: packet.FIN | packet.ACK | packet.PSH, seq: 101, ack: 701, payload: []byte("bye")})
		p.c.logged(FromApp, data, p.now)
		wrong := tcpFrame(t, seg{src: sIP, dst: cIP, sport: 5432, dport: 40000, flags: packet.FIN | packet.ACK, seq: 701, ack: 102})
		if a := p.c.logged(FromNet, wrong, p.now); len(a.notes) != 0 {
			t.Fatalf("FIN acknowledging the data but not the FIN: %+v", a)
		}
		right := tcpFrame(t, seg{src: sIP, dst: cIP, sport: 5432, dport: 40000, flags: packet.FIN | packet.ACK, seq: 702, ack: 105})
		if a := p.c.logged(FromNet, right, p.now); len(a.notes) != 1 {
			t.Fatalf("FIN acknowledging the FIN: %+v", a)
		}
	})

	t.Run("rst from the PU", func(t *testing.T) {
		p := newBypass()
		rst := tcpFrame(t, seg{src: cIP, dst: sIP, sport: 40000, dport: 5432, flags: packet.RST | packet.ACK, seq: 101, ack: 701})
		a := p.c.logged(FromApp, rst, p.now)
		if a.frame != nil || len(a.notes) != 1 || a.notes[0].Kind != Revoke || a.notes[0].Record == nil || a.notes[0].Record.End != EndReset {
			t.Fatalf("PU's RST: %+v", a)
		}
		if ent := entry(p.c); ent.State != flow.Reset {
			t.Fatalf("flow %v, want reset", ent.State)
		}
	})

	t.Run("rst from the network", func(t *testing.T) {
		p := newBypass()
		rst := tcpFrame(t, seg{src: sIP, dst: cIP, sport: 5432, dport: 40000, flags: packet.RST | packet.ACK, seq: 701, ack: 101})
		a := p.c.logged(FromNet, rst, p.now)
		if a.frame != nil || len(a.notes) != 0 || len(a.inject) != 1 || a.inject[0].To != ToPU {
			t.Fatalf("network RST: %+v, want a probe toward the PU and nothing else", a)
		}
		if ent := entry(p.c); ent.State != flow.Established {
			t.Fatalf("flow %v, want established", ent.State)
		}
	})

	t.Run("ignored", func(t *testing.T) {
		p := newBypass()
		other := tcpFrame(t, seg{src: cIP, dst: sIP, sport: 40001, dport: 5432, flags: packet.FIN | packet.ACK, seq: 1, ack: 1})
		syn := tcpFrame(t, seg{src: cIP, dst: sIP, sport: 40000, dport: 5432, flags: packet.SYN | packet.FIN, seq: 1})
		data := tcpFrame(t, seg{src: cIP, dst: sIP, sport: 40000, dport: 5432, flags: packet.ACK, seq: 101, ack: 701})
		before := p.c.e.Stats()
		for _, f := range [][]byte{other, syn, data, fin1[:30], nil} {
			if a := p.c.logged(FromApp, f, p.now); a.frame != nil || len(a.notes) != 0 || len(a.inject) != 0 {
				t.Fatalf("%x: %+v", f, a)
			}
		}
		if got := p.c.e.Stats(); got.LoggedIgnored != before.LoggedIgnored+5 || got.Logged != before.Logged {
			t.Fatalf("stats %+v", got)
		}
		if ent := entry(p.c); ent.State != flow.Established || ent.FIN != [2]bool{} {
			t.Fatalf("flow %v %v", ent.State, ent.FIN)
		}
	})
}

// FuzzProcessLogged: whatever a logged packet holds (the PU or the wire
// made it), judging it never panics and never forwards a frame, on a PU
// with a flow the kernel carries.
func FuzzProcessLogged(f *testing.F) {
	f.Add(tcpFrame(f, seg{src: cIP, dst: sIP, sport: 40000, dport: 5432, flags: packet.FIN | packet.ACK, seq: 101, ack: 701}), true)
	f.Add(tcpFrame(f, seg{src: sIP, dst: cIP, sport: 5432, dport: 40000, flags: packet.RST, seq: 701}), false)
	f.Fuzz(func(t *testing.T, frame []byte, app bool) {
		p := newPair(t, webDB, map[string]string{"app": "web"}, map[string]string{"app": "db"})
		p.c.e.kernelBypass, p.c.e.kernelCounts = true, true
		p.s.e.kernelBypass, p.s.e.kernelCounts = true, true
		p.handshake()
		dir := FromNet
		if app {
			dir = FromApp
		}
		for range 2 {
			if r := p.c.logged(dir, frame, p.now); r.frame != nil || r.v != Drop {
				t.Fatalf("a logged packet was forwarded: %+v", r)
			}
		}
	})
}
