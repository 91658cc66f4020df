package attacks

import (
	"bytes"
	mrand "math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/trireme-go/trireme/dataplane"
	"github.com/trireme-go/trireme/identity"
	"github.com/trireme-go/trireme/policy"
	"github.com/trireme-go/trireme/tokens"
)

// TestReplayedSYN: what a captured SYN is worth. web's enforcer adds web's
// token to every SYN toward the target networks (its egress rules decide
// on the SYN-ACK), so a host there that runs no enforcer collects web's
// token as soon as web dials it. The host replays that SYN to db:5432 from
// its own address and another port. As docs/wire.md says, db's enforcer
// accepts it (the token is valid and db allows app=web) and db's kernel
// answers: that is all the replayer gets. It cannot make the handshake ACK
// (it would need web's ephemeral key): an ACK without a token, data, an
// ACK frame with a forged MAC or another connection's nonce are dropped
// with their reasons, db's socket accepts nothing and reads nothing, and
// no flow is authorized in the kernel. (The half-open flow it leaves is
// reaped by the half-open timer: TestReplayedSYNIsReaped.)
func TestReplayedSYN(t *testing.T) {
	s := newScene(t, sceneOptions{})
	host := s.node.AddPU() // in the target networks, no enforcer
	silenceRSTs(t, host)   // the replayer answers by hand
	host.Listen(7777)
	v := serveVictim(t, s.db, s.db.Addr, 5432)
	raw := host.Raw()
	seen := s.db.Raw()
	hostMAC, dbMAC := host.MACOf(), s.db.MACOf()

	// web dials the host: its SYN carries web's token. (The host's kernel
	// answers without a token, so web's enforcer refuses the connection.)
	if c, err := s.web.Dial(netip.AddrPortFrom(host.Addr, 7777), 3*time.Second); err == nil {
		c.Close()
		t.Fatal("web -> host (no token in its SYN-ACK) connected")
	}
	p := firstFrame(raw, 3*time.Second, synTo(7777))
	if p == nil {
		t.Fatal("the host captured no SYN of web carrying a token")
	}
	captured := tcpOf(p)
	if !hasMarker(captured) {
		t.Fatal("web's SYN to a target address carries no marker")
	}

	// The replay, from the host's own address and another port.
	const port = 42424
	isn := mrand.Uint32()
	from := netip.AddrPortFrom(host.Addr, port)
	before := s.drops()
	auth := countersOf(t, s.d)["kernel-authorized"]
	raw.MustSend(seg{srcMAC: hostMAC, dstMAC: dbMAC, src: from, dst: v.Addr, flags: "S", seq: isn,
		opts: captured.Options, payload: captured.Payload}.frame())
	sa := firstFrame(raw, 3*time.Second, synackTo(port))
	if sa == nil {
		t.Fatal("the replayed SYN got no SYN-ACK: db's enforcer refused a valid captured token (docs/wire.md says it is accepted until it expires)")
	}
	synack := tcpOf(sa)
	if !hasMarker(synack) || len(synack.Payload) < 52 {
		t.Fatal("db's SYN-ACK carries no token frame")
	}
	ns := synack.Payload[4:20]

	// What the replayer cannot do: complete the handshake.
	steps := []struct {
		name    string
		flags   string
		opts    []layers.TCPOption
		payload []byte
		want    string
	}{
		{"ACK without a token", "A", nil, nil, "missing-token"},
		{"data without a token", "PA", nil, []byte("STOLEN"), "missing-token"},
		{"ACK frame with a forged MAC", "PA", []layers.TCPOption{marker}, append(ackFrame(ns, random(16)), "STOLEN"...), "bad-mac"},
		{"ACK frame of another connection", "A", []layers.TCPOption{marker}, ackFrame(random(16), random(16)), "nonce-mismatch"},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			b := s.drops()
			raw.MustSend(seg{srcMAC: hostMAC, dstMAC: dbMAC, src: from, dst: v.Addr, flags: st.flags,
				seq: isn + 1, ack: synack.Seq + 1, opts: st.opts, payload: st.payload}.frame())
			waitDropOn(t, s.d, b, st.want)
		})
	}

	got := seen.Capture(300*time.Millisecond, fromPort(port))
	for _, p := range got {
		if tcp := tcpOf(p); !tcp.SYN || tcp.ACK {
			t.Errorf("a segment of the replayer other than its SYN reached db: %v", p)
		}
		if bytes.Contains(p.Data(), []byte("STOLEN")) {
			t.Errorf("the replayer's data reached db's interface: %v", p)
		}
	}
	if len(got) == 0 {
		t.Error("the replayed SYN is not seen at db (the harness did not deliver it?)")
	}
	if a, r := v.Accepted(), v.Read(); len(a) != 0 || r != "" {
		t.Errorf("db accepted %v and read %q", a, r)
	}
	if n := countersOf(t, s.d)["kernel-authorized"]; n != auth {
		t.Errorf("the replay authorized %d flows in the kernel", n-auth)
	}
	if d := s.drops(); d["missing-token"] <= before["missing-token"] {
		t.Errorf("drops %v", d)
	}
}

// TestReplayedSYNIsReaped (offline, the enforcement core): the half-open
// flow a replayed SYN leaves on the server's enforcer is never authorized
// and is reaped by the half-open timer (60 s after its last packet); the
// replayer's ACKs meanwhile are dropped.
func TestReplayedSYNIsReaped(t *testing.T) {
	set, err := policy.Parse("replay.yaml", []byte(`targetNetworks: [10.0.0.0/8]
policies:
  - name: db
    selector: app=db
    ingress: [{from: [{selector: app=web}], ports: [tcp/5432], action: allow}]
  - name: web
    selector: app=web
    egress: [{to: [{selector: app=db}], ports: [tcp/5432], action: allow}]
`))
	if err != nil {
		t.Fatal(err)
	}
	pol, err := policy.Compile(set)
	if err != nil {
		t.Fatal(err)
	}
	sec, err := tokens.NewPSK(random(32))
	if err != nil {
		t.Fatal(err)
	}
	sink := &records{}
	enforcer := func(node string, s dataplane.Sink) *dataplane.Enforcer {
		te, err := tokens.New(tokens.Config{Node: node, Secrets: sec})
		if err != nil {
			t.Fatal(err)
		}
		e, err := dataplane.New(dataplane.Config{Tokens: te, Policy: pol, Sink: s})
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	client, server := enforcer("node-c", nil), enforcer("node-s", sink)
	web := client.AddPU("web", identity.NewTags(map[string]string{"app": "web"}), nil)
	db := server.AddPU("db", identity.NewTags(map[string]string{"app": "db"}), nil)
	mac := net.HardwareAddr{2, 0, 0, 0, 0, 1}
	webAddr, dbAddr := netip.MustParseAddrPort("10.0.1.1:40000"), netip.MustParseAddrPort("10.0.2.2:5432")
	replayer := netip.MustParseAddrPort("10.0.9.9:50000")
	now := time.Now()
	var out dataplane.Output

	// web's SYN, as its enforcer puts it on the wire.
	client.Process(web, dataplane.FromApp, seg{srcMAC: mac, dstMAC: mac, src: webAddr, dst: dbAddr, flags: "S", seq: 100, opts: []layers.TCPOption{mss}}.frame(), now, &out)
	if out.Verdict != dataplane.Forward {
		t.Fatalf("web's SYN: %v %v", out.Verdict, out.Reason)
	}
	wire := gopacket.NewPacket(bytes.Clone(out.Frame), layers.LayerTypeEthernet, gopacket.Default)
	captured := tcpOf(wire)

	// The replay reaches db (documented), db answers.
	server.Process(db, dataplane.FromNet, seg{srcMAC: mac, dstMAC: mac, src: replayer, dst: dbAddr, flags: "S", seq: 5000,
		opts: captured.Options, payload: captured.Payload}.frame(), now, &out)
	if out.Verdict != dataplane.Forward {
		t.Fatalf("replayed SYN: %v %v, want it delivered (valid token)", out.Verdict, out.Reason)
	}
	server.Process(db, dataplane.FromApp, seg{srcMAC: mac, dstMAC: mac, src: dbAddr, dst: replayer, flags: "SA", seq: 9000, ack: 5001, opts: []layers.TCPOption{mss}}.frame(), now, &out)
	if out.Verdict != dataplane.Forward || len(out.Notes) != 0 {
		t.Fatalf("db's SYN-ACK: %v %v notes %v", out.Verdict, out.Reason, out.Notes)
	}
	ns := tcpOf(gopacket.NewPacket(bytes.Clone(out.Frame), layers.LayerTypeEthernet, gopacket.Default)).Payload[4:20]

	for _, a := range []struct {
		opts    []layers.TCPOption
		payload []byte
		want    string
	}{
		{nil, nil, "missing-token"},
		{nil, []byte("STOLEN"), "missing-token"},
		{[]layers.TCPOption{marker}, ackFrame(ns, random(16)), "bad-mac"},
	} {
		server.Process(db, dataplane.FromNet, seg{srcMAC: mac, dstMAC: mac, src: replayer, dst: dbAddr, flags: "PA", seq: 5001, ack: 9001,
			opts: a.opts, payload: a.payload}.frame(), now, &out)
		if out.Verdict != dataplane.Drop || out.Reason.String() != a.want || len(out.Notes) != 0 {
			t.Fatalf("replayer's ACK %q: %v %v notes %v, want drop %s", a.payload, out.Verdict, out.Reason, out.Notes, a.want)
		}
	}
	if n := server.Expire(now.Add(59*time.Second), &out); n != 0 {
		t.Fatalf("%d flows expired before the half-open timeout", n)
	}
	if n := server.Expire(now.Add(61*time.Second), &out); n != 1 {
		t.Fatalf("the replayed half-open flow was not reaped (%d expired)", n)
	}
	if n, _ := server.Flows(); n != 0 {
		t.Fatalf("%d flows left on the server's enforcer", n)
	}
	rs := sink.all()
	// (What the record's action and reason say about a handshake that never
	// completed is #11 item 14's.)
	if len(rs) != 1 || rs[0].End != dataplane.EndExpired || rs[0].Client != replayer {
		t.Fatalf("records: %+v", rs)
	}
}

// records is a dataplane.Sink that keeps records in memory.
type records struct {
	mu sync.Mutex
	rs []dataplane.Record
}

func (r *records) Record(rec *dataplane.Record) {
	r.mu.Lock()
	r.rs = append(r.rs, *rec)
	r.mu.Unlock()
}

func (r *records) all() []dataplane.Record {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]dataplane.Record(nil), r.rs...)
}
