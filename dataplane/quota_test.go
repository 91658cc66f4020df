package dataplane

import (
	"bytes"
	"net/netip"
	"testing"
	"time"

	"github.com/trireme-go/trireme/dataplane/packet"
	"github.com/trireme-go/trireme/flow"
	"github.com/trireme-go/trireme/identity"
	"github.com/trireme-go/trireme/reason"
	"github.com/trireme-go/trireme/tokens"
)

// oneNode is one enforcer with several PUs, as on a live node: a
// connection between two of them costs entries in both PUs' shares.
type oneNode struct {
	t    *testing.T
	e    *Enforcer
	sink *memSink
	out  Output
}

func newOneNode(t *testing.T, yaml string, flows flow.Config) *oneNode {
	t.Helper()
	sec, err := tokens.NewPSK(psk)
	if err != nil {
		t.Fatal(err)
	}
	te, err := tokens.New(tokens.Config{Node: "node", Secrets: sec})
	if err != nil {
		t.Fatal(err)
	}
	n := &oneNode{t: t, sink: &memSink{}}
	if n.e, err = New(Config{Tokens: te, Policy: compile(t, yaml), Sink: n.sink, Flows: flows}); err != nil {
		t.Fatal(err)
	}
	return n
}

func (n *oneNode) pu(app string) *PU {
	return n.e.AddPU(app, identity.NewTags(map[string]string{"app": app}), nil)
}

func (n *oneNode) run(pu *PU, dir Direction, f []byte, now time.Time) result {
	n.e.Process(pu, dir, bytes.Clone(f), now, &n.out)
	r := result{v: n.out.Verdict, code: n.out.Reason, frame: bytes.Clone(n.out.Frame)}
	for _, in := range n.out.Inject {
		r.inject = append(r.inject, Injected{To: in.To, Frame: bytes.Clone(in.Frame), PU: in.PU})
	}
	return r
}

// connect sends a client PU's SYN through both PUs' enforcement as the
// node would (the client's app path, the server's net path) and delivers
// what the enforcer injects toward the network to the other PU.
func (n *oneNode) connect(client, server *PU, syn []byte, now time.Time) (atServer result) {
	a := n.run(client, FromApp, syn, now)
	n.pump(client, server, a, now)
	if a.v != Forward {
		return a
	}
	b := n.run(server, FromNet, a.frame, now)
	n.pump(server, client, b, now)
	return b
}

// pump delivers what the enforcer injected for from toward the network to
// the other PU, and so on back and forth (a datagram handshake).
func (n *oneNode) pump(from, to *PU, r result, now time.Time) {
	for _, in := range r.inject {
		if in.To == ToNet {
			n.pump(to, from, n.run(to, FromNet, in.Frame, now), now)
		}
	}
}

func (n *oneNode) flows(pu *PU) int { return n.e.PUStats(pu).Flows }

var (
	webIP = netip.MustParseAddr("10.0.1.1")
	dbIP  = netip.MustParseAddr("10.0.2.2")
	badIP = netip.MustParseAddr("10.0.3.3")
)

// TestDenialCostsOneEntry: a refused connection between two PUs of one
// node leaves one entry (the refusing side's), for the denied lifetime
// (seconds), not two for 30 s.
func TestDenialCostsOneEntry(t *testing.T) {
	cases := []struct {
		name    string
		server  string
		dport   uint16
		proto   string
		refuser string // whose entry stays
	}{
		{"tcp, server ingress denies", "db", 22, "tcp", "db"},
		{"tcp, client egress denies (external)", "ext", 25, "tcp", "bad"},
		{"udp, server ingress denies (the client's enforcer remembers the reject)", "db", 53, "udp", "bad"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			n := newOneNode(t, webDB, flow.Config{})
			bad, db := n.pu("bad"), n.pu("db")
			dst := dbIP
			if tc.server == "ext" {
				dst = extIP
			}
			var f []byte
			if tc.proto == "tcp" {
				f = tcpFrame(t, seg{src: badIP, dst: dst, sport: 40000, dport: tc.dport, flags: packet.SYN, seq: 7})
			} else {
				f = udpFrame(t, badIP, dst, 40000, tc.dport)
			}
			r := n.connect(bad, db, f, t0)
			if r.v == Forward {
				t.Fatalf("not denied: %v", r.v)
			}
			want := map[string]int{"bad": 0, "db": 0}
			want[tc.refuser] = 1
			if n.flows(bad) != want["bad"] || n.flows(db) != want["db"] {
				t.Fatalf("entries: bad %d, db %d; want %v", n.flows(bad), n.flows(db), want)
			}
			var out Output
			n.e.Expire(t0.Add(flow.DefaultDenied), &out)
			if got := n.flows(bad) + n.flows(db); got != want["bad"]+want["db"] {
				t.Fatalf("denied flow gone before its lifetime: %d left", got)
			}
			n.e.Expire(t0.Add(flow.DefaultDenied+time.Millisecond), &out)
			if n.flows(db) != 0 || n.flows(bad) != 0 {
				t.Fatalf("after the denied lifetime: bad %d, db %d", n.flows(bad), n.flows(db))
			}
		})
	}
}

// TestClosedFlowLifetime: a connection closed by FINs both ways leaves the
// table after the closing lifetime (5 s) with its record "closed"; a new
// SYN on the same 4-tuple right after the close (TIME_WAIT reuse) is a new
// connection, decided afresh.
func TestClosedFlowLifetime(t *testing.T) {
	for _, reuse := range []bool{false, true} {
		p := newPair(t, webDB, map[string]string{"app": "web"}, map[string]string{"app": "db"})
		p.handshake()
		fin1 := tcpFrame(t, seg{src: cIP, dst: sIP, sport: 40000, dport: 5432, flags: packet.FIN | packet.ACK, seq: 101, ack: 701})
		fin2 := tcpFrame(t, seg{src: sIP, dst: cIP, sport: 5432, dport: 40000, flags: packet.FIN | packet.ACK, seq: 701, ack: 102})
		last := tcpFrame(t, seg{src: cIP, dst: sIP, sport: 40000, dport: 5432, flags: packet.ACK, seq: 102, ack: 702})
		p.c2s(fin1)
		p.s2c(fin2)
		_, _, b := p.c2s(last)
		mustDeliver(t, "last ACK", b, last)
		if reuse {
			p.now = p.now.Add(time.Second)
			syn := tcpFrame(t, seg{src: cIP, dst: sIP, sport: 40000, dport: 5432, flags: packet.SYN, seq: 5000})
			_, _, b := p.c2s(syn)
			mustDeliver(t, "SYN reusing the 4-tuple", b, syn)
			if rs := p.s.sink.all(); len(rs) != 1 || rs[0].End != EndReplaced {
				t.Fatalf("records after reuse: %+v", rs)
			}
			continue
		}
		var out Output
		for _, s := range []*side{p.c, p.s} {
			s.e.Expire(t0.Add(flow.DefaultClosing), &out)
			if n, _ := s.e.Flows(); n != 1 {
				t.Fatalf("closed flow gone before its lifetime: %d", n)
			}
			s.e.Expire(t0.Add(flow.DefaultClosing+time.Millisecond), &out)
			if n, _ := s.e.Flows(); n != 0 {
				t.Fatalf("closed flow kept after its lifetime: %d", n)
			}
			if rs := s.sink.all(); len(rs) != 1 || rs[0].End != EndClosed {
				t.Fatalf("records: %+v", rs)
			}
		}
	}
}

// TestFlowQuota: a PU flooding new flows fills its own share and has its
// new flows refused (flow-quota, counted for it), while another PU of the
// node opens flows as before.
func TestFlowQuota(t *testing.T) {
	n := newOneNode(t, webDB, flow.Config{Capacity: 64, PerPU: 16})
	bad, web := n.pu("bad"), n.pu("web")
	refused := 0
	for i := range 40 {
		// Allowed external UDP flows: established, never evicted.
		r := n.run(bad, FromApp, udpFrame(t, badIP, extIP, uint16(2000+i), 53), t0)
		switch {
		case r.v == Forward:
		case r.v == Drop && r.code == reason.FlowQuota:
			refused++
		default:
			t.Fatalf("flood datagram %d: %v %v", i, r.v, r.code)
		}
	}
	// The PU's SYN is refused promptly too: a RST toward the PU.
	r := n.run(bad, FromApp, tcpFrame(t, seg{src: badIP, dst: extIP, sport: 9, dport: 80, flags: packet.SYN, seq: 1}), t0)
	if r.v != Reset || r.code != reason.FlowQuota || len(r.inject) != 1 || r.inject[0].To != ToPU {
		t.Fatalf("SYN over quota: %v %v", r.v, r.code)
	}
	if refused != 24 || n.flows(bad) != 16 || n.e.PUStats(bad).Refused != 25 {
		t.Fatalf("flooder: %d refused, %+v", refused, n.e.PUStats(bad))
	}
	if got := n.e.Stats().Drops[reason.FlowQuota]; got != 25 {
		t.Fatalf("flow-quota drops %d", got)
	}
	for i := range 16 {
		r := n.run(web, FromApp, udpFrame(t, webIP, extIP, uint16(3000+i), 53), t0)
		if r.v != Forward {
			t.Fatalf("other PU's flow %d: %v %v", i, r.v, r.code)
		}
	}
	if st := n.e.PUStats(web); st.Flows != 16 || st.Refused != 0 {
		t.Fatalf("other PU: %+v", st)
	}
	if s := n.e.Stats(); s.Capacity != 64 || s.PerPU != 16 || s.Flows != 32 {
		t.Fatalf("stats: %+v", s)
	}
}

// TestFloodOfDenialsDoesNotRefuse: a PU flooding another PU's denied port
// fills the victim's share with denied flows; the victim's allowed
// connections still get in (a denied flow is evicted for each), its
// established flows are never evicted, and nobody is refused.
func TestFloodOfDenialsDoesNotRefuse(t *testing.T) {
	n := newOneNode(t, webDB, flow.Config{Capacity: 1024, PerPU: 32})
	bad, web, db := n.pu("bad"), n.pu("web"), n.pu("db")
	// db holds 8 established connections from web.
	for i := range 8 {
		n.handshake(web, db, uint16(10000+i))
	}
	for i := range 200 {
		syn := tcpFrame(t, seg{src: badIP, dst: dbIP, sport: uint16(20000 + i), dport: 5432, flags: packet.SYN, seq: 9})
		if r := n.connect(bad, db, syn, t0); r.v != Drop || r.code != reason.PolicyDenied {
			t.Fatalf("flood SYN %d: %v %v", i, r.v, r.code)
		}
		if i%20 == 0 {
			n.handshake(web, db, uint16(30000+i))
		}
	}
	st := n.e.Stats()
	if st.Drops[reason.FlowQuota] != 0 || st.Drops[reason.TableFull] != 0 {
		t.Fatalf("refusals: %v flow-quota, %v table-full", st.Drops[reason.FlowQuota], st.Drops[reason.TableFull])
	}
	if n.flows(db) != 32 || n.flows(bad) != 0 {
		t.Fatalf("db holds %d flows, the flooder %d", n.flows(db), n.flows(bad))
	}
	// Every established connection is still there: the evicted ones were
	// all denied.
	established := 0
	n.e.table.RangePU(db.index, func(e *flow.Entry[conn]) bool {
		if e.State == flow.Established {
			established++
		}
		return false
	})
	if established != 18 || st.Evictions != 200-(32-18) {
		t.Fatalf("db: %d established, %d evictions", established, st.Evictions)
	}
}

// handshake opens an allowed web -> db:5432 connection from sport through
// the node's enforcer, all three packets.
func (n *oneNode) handshake(web, db *PU, sport uint16) {
	n.t.Helper()
	t := n.t
	syn := tcpFrame(t, seg{src: webIP, dst: dbIP, sport: sport, dport: 5432, flags: packet.SYN, seq: 100})
	synack := tcpFrame(t, seg{src: dbIP, dst: webIP, sport: 5432, dport: sport, flags: packet.SYN | packet.ACK, seq: 700, ack: 101})
	ack := tcpFrame(t, seg{src: webIP, dst: dbIP, sport: sport, dport: 5432, flags: packet.ACK, seq: 101, ack: 701})
	for _, step := range []struct {
		from, to *PU
		f        []byte
	}{{web, db, syn}, {db, web, synack}, {web, db, ack}} {
		a := n.run(step.from, FromApp, step.f, t0)
		if a.v != Forward {
			t.Fatalf("handshake from port %d: app %v %v", sport, a.v, a.code)
		}
		if b := n.run(step.to, FromNet, a.frame, t0); b.v != Forward {
			t.Fatalf("handshake from port %d: net %v %v", sport, b.v, b.code)
		}
	}
}
