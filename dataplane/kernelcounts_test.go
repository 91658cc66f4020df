package dataplane

import (
	"testing"
	"time"

	"github.com/trireme-go/trireme/dataplane/packet"
)

// TestKernelCountsFinalRecords (Config.KernelCounts): a flow closed by
// FINs asks for the kernel's counts at its revoke and its record carries
// them; a flow reset while the kernel holds it hands its record over on
// its revoke note instead of writing it.
func TestKernelCountsFinalRecords(t *testing.T) {
	newBypass := func() *pair {
		p := newPair(t, webDB, map[string]string{"app": "web"}, map[string]string{"app": "db"})
		for _, s := range []*side{p.c, p.s} {
			s.e.kernelBypass, s.e.kernelCounts = true, true
		}
		p.handshake()
		return p
	}

	t.Run("fin", func(t *testing.T) {
		p := newBypass()
		fin1 := tcpFrame(t, seg{src: cIP, dst: sIP, sport: 40000, dport: 5432, flags: packet.FIN | packet.ACK, seq: 101, ack: 701})
		fin2 := tcpFrame(t, seg{src: sIP, dst: cIP, sport: 5432, dport: 40000, flags: packet.FIN | packet.ACK, seq: 701, ack: 102})
		p.c2s(fin1)
		_, a, _ := p.s2c(fin2)
		if len(a.notes) != 1 || a.notes[0].Kind != Revoke || !a.notes[0].Count || a.notes[0].Since == 0 || a.notes[0].Record != nil {
			t.Fatalf("server's revoke at the second FIN: %+v, want one asking for the counts", a.notes)
		}
		n := a.notes[0]
		stale := n
		stale.Since++ // another flow on the same 4-tuple
		if p.s.e.AddKernelCounts(&stale, 1, 1, 1, 1) {
			t.Fatal("counts of another flow were taken")
		}
		if !p.s.e.AddKernelCounts(&n, 10, 1000, 20, 3000) {
			t.Fatal("the counts of the closing flow were not taken")
		}
		if len(p.s.sink.all()) != 0 {
			t.Fatalf("a record before the closing timer: %+v", p.s.sink.all())
		}
		var out Output
		p.s.e.Expire(p.now.Add(time.Minute), &out)
		rs := p.s.sink.all()
		if len(rs) != 1 {
			t.Fatalf("server records: %+v", rs)
		}
		// The enforcer saw SYN, ACK, FIN in and SYN-ACK, FIN out.
		r := rs[0]
		if r.End != EndClosed || !r.KernelCounted || r.PacketsOut != 2+10 || r.PacketsIn != 3+20 || r.BytesOut < 1000 || r.BytesIn < 3000 {
			t.Fatalf("server record: %+v", r)
		}
		if p.s.e.AddKernelCounts(&n, 1, 1, 1, 1) {
			t.Fatal("counts taken after the record was written")
		}
	})

	t.Run("rst", func(t *testing.T) {
		p := newBypass()
		rst := tcpFrame(t, seg{src: cIP, dst: sIP, sport: 40000, dport: 5432, flags: packet.RST | packet.ACK, seq: 101, ack: 701})
		a := p.c.run(FromApp, rst, p.now)
		if a.v != Forward || len(a.notes) != 1 || a.notes[0].Kind != Revoke || a.notes[0].Record == nil {
			t.Fatalf("client's RST: %v %v notes %+v, want a revoke carrying the record", a.v, a.code, a.notes)
		}
		if r := a.notes[0].Record; r.End != EndReset || r.Action != "allow" || r.Direction != "egress" || r.KernelCounted {
			t.Fatalf("the record on the revoke: %+v", r)
		}
		if len(p.c.sink.all()) != 0 {
			t.Fatalf("the record also went to the sink: %+v", p.c.sink.all())
		}
		// It is the flow's only record: the reset flow lingers, and ends
		// without another.
		var out Output
		p.c.e.Expire(p.now.Add(time.Minute), &out)
		if len(out.Notes) != 0 || len(p.c.sink.all()) != 0 {
			t.Fatalf("after the linger: notes %+v records %+v", out.Notes, p.c.sink.all())
		}
	})
}
