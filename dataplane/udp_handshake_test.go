package dataplane

import (
	"bytes"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/trireme-go/trireme/dataplane/packet"
	"github.com/trireme-go/trireme/flow"
	"github.com/trireme-go/trireme/ipproto"
	"github.com/trireme-go/trireme/reason"
	"github.com/trireme-go/trireme/tokens"
)

// Server app=db takes udp/53 from app=web only; app=web and app=bad may
// send anywhere; app=picky (a client) may reach app=db only on udp/5353.
const udpPolicy = `
targetNetworks: [10.0.0.0/8]
policies:
  - name: db
    selector: app=db
    ingress:
      - name: dns-from-web
        from: [{selector: app=web}]
        ports: [udp/53, udp/5353]
        action: allow
      - name: dns-from-picky
        from: [{selector: app=picky}]
        ports: [udp/53]
        action: allow
  - name: clients
    selector: app in (web, bad)
    egress: [{name: any, action: allow}]
    ingress: [{name: any, action: allow}]
  - name: picky
    selector: app=picky
    egress:
      - name: mdns-to-db
        to: [{selector: app=db}]
        ports: [udp/5353]
        action: allow
`

// held reports whether the frame was taken and held (not counted yet).
func (r result) held() bool { return r.v == Drop && r.code == reason.None && r.frame == nil }

func udpData(t testing.TB, src, dst netip.Addr, sport, dport uint16, payload []byte) []byte {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: cMAC, DstMAC: sMAC, EthernetType: layers.EthernetTypeIPv4}
	if src == sIP {
		eth.SrcMAC, eth.DstMAC = sMAC, cMAC
	}
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
	udp := &layers.UDP{SrcPort: layers.UDPPort(sport), DstPort: layers.UDPPort(dport)}
	udp.SetNetworkLayerForChecksum(ip)
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ip, udp, gopacket.Payload(payload)); err != nil {
		t.Fatal(err)
	}
	return bytes.Clone(buf.Bytes())
}

// udpWire runs datagrams between a client PU and a server PU on two
// enforcers: what each enforcer sends toward the network is delivered to the
// other, unless dropped by the test (loss), and what reaches each PU is
// kept.
type udpWire struct {
	t *testing.T
	p *pair
	// toServer, toClient: frames on the wire, in order.
	toServer, toClient [][]byte
	// atServer, atClient: frames delivered to the PUs.
	atServer, atClient [][]byte
	notesC, notesS     []Note
	codes              []reason.Code
}

func newUDPWire(t *testing.T, yaml, ctag, stag string) *udpWire {
	return &udpWire{t: t, p: newPair(t, yaml, map[string]string{"app": ctag}, map[string]string{"app": stag})}
}

// collect files a result of side s (client when c) into the wire.
func (w *udpWire) collect(client bool, dir Direction, r result) {
	w.codes = append(w.codes, r.code)
	for _, in := range r.inject {
		switch {
		case in.To == ToNet && client:
			w.toServer = append(w.toServer, in.Frame)
		case in.To == ToNet:
			w.toClient = append(w.toClient, in.Frame)
		case client:
			w.atClient = append(w.atClient, in.Frame)
		default:
			w.atServer = append(w.atServer, in.Frame)
		}
	}
	if client {
		w.notesC = append(w.notesC, r.notes...)
	} else {
		w.notesS = append(w.notesS, r.notes...)
	}
	if r.v != Forward {
		return
	}
	switch {
	case dir == FromApp && client:
		w.toServer = append(w.toServer, r.frame)
	case dir == FromApp:
		w.toClient = append(w.toClient, r.frame)
	case client:
		w.atClient = append(w.atClient, r.frame)
	default:
		w.atServer = append(w.atServer, r.frame)
	}
}

func (w *udpWire) clientSends(f []byte) result {
	r := w.p.c.run(FromApp, f, w.p.now)
	w.collect(true, FromApp, r)
	return r
}

func (w *udpWire) serverSends(f []byte) result {
	r := w.p.s.run(FromApp, f, w.p.now)
	w.collect(false, FromApp, r)
	return r
}

// flush delivers the frames on the wire both ways until none is left;
// lose(i) drops the i-th frame put on the wire (from 0, both ways).
func (w *udpWire) flush(lose func(n int) bool) {
	n := 0
	for len(w.toServer)+len(w.toClient) > 0 {
		if len(w.toServer) > 0 {
			f := w.toServer[0]
			w.toServer = w.toServer[1:]
			if lose == nil || !lose(n) {
				w.collect(false, FromNet, w.p.s.run(FromNet, f, w.p.now))
			}
			n++
			continue
		}
		f := w.toClient[0]
		w.toClient = w.toClient[1:]
		if lose == nil || !lose(n) {
			w.collect(true, FromNet, w.p.c.run(FromNet, f, w.p.now))
		}
		n++
	}
}

// retry runs the client's Retry at the wire's clock.
func (w *udpWire) retry() {
	var out Output
	w.p.c.e.Retry(w.p.now, &out)
	for _, in := range out.Inject {
		if in.To == ToNet {
			w.toServer = append(w.toServer, bytes.Clone(in.Frame))
		} else {
			w.atClient = append(w.atClient, bytes.Clone(in.Frame))
		}
	}
	w.notesC = append(w.notesC, out.Notes...)
}

func (w *udpWire) data(i int) []byte {
	return udpData(w.t, cIP, sIP, 40000, 53, fmt.Appendf(nil, "query %d", i))
}

func authorized(notes []Note) int {
	n := 0
	for _, x := range notes {
		if x.Kind == Authorize {
			n++
		}
	}
	return n
}

func TestDatagramHandshakeAllowed(t *testing.T) {
	w := newUDPWire(t, udpPolicy, "web", "db")
	var sent [][]byte
	for i := range 3 {
		d := w.data(i)
		sent = append(sent, d)
		if r := w.clientSends(d); r.v != Drop || r.code != reason.None || r.frame != nil {
			t.Fatalf("datagram %d before the handshake: %v %v (want held)", i, r.v, r.code)
		}
	}
	if len(w.toServer) != 1 || tokens.KindOf(udpPayload(t, w.toServer[0])) != tokens.Hello {
		t.Fatalf("want one hello on the wire, got %d frames", len(w.toServer))
	}
	w.flush(nil)
	if len(w.atServer) != 3 {
		t.Fatalf("server PU got %d datagrams, want 3", len(w.atServer))
	}
	for i := range sent {
		if !bytes.Equal(w.atServer[i], sent[i]) {
			t.Fatalf("datagram %d differs or out of order:\n got %x\nwant %x", i, w.atServer[i], sent[i])
		}
	}
	if len(w.atClient) != 0 {
		t.Fatalf("a handshake message reached the client PU: %x", w.atClient)
	}
	if authorized(w.notesC) != 1 || authorized(w.notesS) != 1 {
		t.Fatalf("authorize notes: client %v server %v", w.notesC, w.notesS)
	}
	n := w.notesS[0]
	if n.Proto != 17 || n.Local != netip.AddrPortFrom(sIP, 53) || n.Remote != netip.AddrPortFrom(cIP, 40000) {
		t.Fatalf("server note %+v", n)
	}
	// Replies and later datagrams pass both ways on the fast path.
	reply := udpData(t, sIP, cIP, 53, 40000, []byte("answer"))
	w.serverSends(reply)
	w.clientSends(w.data(4))
	w.flush(nil)
	if len(w.atClient) != 1 || !bytes.Equal(w.atClient[0], reply) || len(w.atServer) != 4 {
		t.Fatalf("after the handshake: client got %d, server %d", len(w.atClient), len(w.atServer))
	}
	// Each side knows the other's identity.
	w.p.c.e.Flush(w.p.now, &Output{})
	w.p.s.e.Flush(w.p.now, &Output{})
	rc, rs := w.p.c.sink.all(), w.p.s.sink.all()
	if len(rc) != 1 || len(rs) != 1 || fmt.Sprint(rc[0].Remote.Tags) != "[app=db]" || fmt.Sprint(rs[0].Remote.Tags) != "[app=web]" || rc[0].Action != "allow" || rs[0].Action != "allow" {
		t.Fatalf("records: client %+v server %+v", rc, rs)
	}
	if s := w.p.c.e.Stats(); s.Forwarded < 4 || s.Packets != s.Forwarded+s.Consumed+sumDrops(s) {
		t.Fatalf("client stats %+v", s)
	}
}

// mustUnreachable checks that f is an ICMP unreachable, administratively
// prohibited, from the destination of the datagram d to its sender, quoting
// it.
func mustUnreachable(t *testing.T, f, d []byte) {
	t.Helper()
	var p, q packet.Packet
	if p.Decode(f) != reason.None || q.Decode(d) != reason.None {
		t.Fatal("decode")
	}
	if p.Proto != ipproto.ICMP || p.ICMPType != 3 || p.ICMPCode != 13 || p.Src != q.Dst || p.Dst != q.Src || !p.IsICMPError() {
		t.Fatalf("not an unreachable answering the datagram: %+v", p)
	}
	src, dst, proto, sport, dport, ok := p.Quoted()
	if !ok || src != q.Src || dst != q.Dst || proto != ipproto.UDP || sport != q.SrcPort || dport != q.DstPort {
		t.Fatalf("quotes %v:%d -> %v:%d", src, sport, dst, dport)
	}
	if !packet.VerifyIPv4Checksum(&p) || packet.Checksum(0, f[p.L4:p.End]) != 0 {
		t.Fatal("bad checksums")
	}
}

func sumDrops(s Stats) uint64 {
	var n uint64
	for _, d := range s.Drops {
		n += d
	}
	return n
}

func udpPayload(t *testing.T, f []byte) []byte {
	t.Helper()
	var p packet.Packet
	if rc := p.Decode(f); rc != reason.None {
		t.Fatalf("decode: %v", rc)
	}
	return p.UDPPayload()
}

// TestDatagramDenials: the server's ingress rules decide on the client's
// identity (a reject), the client's egress rules on the server's; the held
// datagrams are dropped and counted, and the denial is remembered: the
// PU's next datagrams cost no handshake.
func TestDatagramDenials(t *testing.T) {
	for _, tc := range []struct {
		name   string
		client string
		dport  uint16
		want   reason.Code
		// server: the server's entries left (the client's enforcer
		// remembers the denial; after an egress denial the server's flow
		// waits for a confirm that never comes, half-open).
		server int
	}{
		{"server ingress denies the client", "bad", 53, reason.IngressDenied, 0},
		{"server ingress denies the port", "web", 99, reason.IngressDenied, 0},
		{"client egress denies the port", "picky", 53, reason.PolicyDenied, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newUDPWire(t, udpPolicy, tc.client, "db")
			w.clientSends(udpData(t, cIP, sIP, 40000, tc.dport, []byte("a")))
			w.clientSends(udpData(t, cIP, sIP, 40000, tc.dport, []byte("b")))
			w.flush(nil)
			if len(w.atServer) != 0 || len(w.atClient) != 1 {
				t.Fatalf("delivered: server %d client %d", len(w.atServer), len(w.atClient))
			}
			// The client PU is told at once: an ICMP unreachable
			// (administratively prohibited) from the server's address,
			// quoting its first datagram.
			mustUnreachable(t, w.atClient[0], udpData(t, cIP, sIP, 40000, tc.dport, []byte("a")))
			if authorized(w.notesC)+authorized(w.notesS) != 0 {
				t.Fatal("a denied flow was authorized")
			}
			if got := w.p.c.e.Stats().Drops[tc.want]; got < 2 {
				t.Fatalf("client drops %v = %d, want the 2 held datagrams", tc.want, got)
			}
			if tc.want == reason.IngressDenied && w.p.s.e.Stats().Drops[reason.PolicyDenied] != 1 {
				t.Fatalf("server drops %v: the hello's denial not counted policy-denied", w.p.s.e.Stats().Drops)
			}
			r := w.clientSends(udpData(t, cIP, sIP, 40000, tc.dport, []byte("c")))
			if r.v != Drop || r.code != tc.want || len(w.toServer) != 0 {
				t.Fatalf("next datagram: %v %v, %d on the wire (want dropped, no hello)", r.v, r.code, len(w.toServer))
			}
			if c, s := w.p.c.e.PUStats(w.p.c.pu).Flows, w.p.s.e.PUStats(w.p.s.pu).Flows; c != 1 || s != tc.server {
				t.Fatalf("entries: client %d server %d", c, s)
			}
			// After the denied lifetime the flow is decided again.
			w.p.now = w.p.now.Add(flow.DefaultDenied + time.Second)
			w.clientSends(udpData(t, cIP, sIP, 40000, tc.dport, []byte("d")))
			if len(w.toServer) != 1 {
				t.Fatal("no new hello after the denied lifetime")
			}
		})
	}
}

// TestDatagramLoss: every handshake message may be lost; retries with
// backoff (hello), repeated answers (reply) and a reply sent again on data
// (confirm) complete the flow, and nothing is delivered twice.
func TestDatagramLoss(t *testing.T) {
	for _, tc := range []struct {
		name string
		lose func(n int) bool
	}{
		{"hello", func(n int) bool { return n == 0 }},
		{"reply", func(n int) bool { return n == 1 }},
		{"hello twice", func(n int) bool { return n <= 1 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newUDPWire(t, udpPolicy, "web", "db")
			d := w.data(0)
			w.clientSends(d)
			w.flush(tc.lose)
			// Retries at 250 ms, then 500 ms, 1 s after the last.
			sent := 0
			for i := 0; i < 40 && len(w.atServer) == 0; i++ {
				w.p.now = w.p.now.Add(100 * time.Millisecond)
				before := len(w.toServer)
				w.retry()
				sent += len(w.toServer) - before
				w.flush(func(n int) bool { return false })
			}
			if len(w.atServer) != 1 || !bytes.Equal(w.atServer[0], d) {
				t.Fatalf("server got %d datagrams after retries", len(w.atServer))
			}
			if sent == 0 {
				t.Fatal("no retry")
			}
			if authorized(w.notesC) != 1 || authorized(w.notesS) != 1 {
				t.Fatalf("authorize: client %d server %d", authorized(w.notesC), authorized(w.notesS))
			}
		})
	}
	t.Run("confirm", func(t *testing.T) {
		w := newUDPWire(t, udpPolicy, "web", "db")
		w.clientSends(w.data(0))
		// hello, reply pass; the confirm is lost, the held datagram
		// behind it arrives before the server is done.
		w.flush(func(n int) bool { return n == 2 })
		if len(w.atServer) != 0 {
			t.Fatal("a datagram reached the server PU before the confirm")
		}
		if w.p.s.e.Stats().Drops[reason.HandshakePending] != 1 {
			t.Fatal("datagram before the confirm not counted handshake-pending")
		}
		// The server answered that datagram with its reply again; the
		// client's enforcer confirmed again; the next datagram passes.
		if authorized(w.notesS) != 1 {
			t.Fatal("not authorized after the repeated confirm")
		}
		d := w.data(1)
		w.clientSends(d)
		w.flush(nil)
		if len(w.atServer) != 1 || !bytes.Equal(w.atServer[0], d) || len(w.atClient) != 0 {
			t.Fatalf("after the repeated confirm: server %d client %d", len(w.atServer), len(w.atClient))
		}
	})
}

// TestDatagramWithoutEnforcer: a target peer that never answers: the held
// datagrams are dropped missing-token after the retries, and so is what
// the PU sends next, for the denied lifetime, without new hellos. A
// datagram from such a peer is missing-token at the receiving PU.
func TestDatagramWithoutEnforcer(t *testing.T) {
	w := newUDPWire(t, udpPolicy, "web", "db")
	w.clientSends(w.data(0))
	w.toServer = nil // no enforcer: the hello goes nowhere
	hellos := 1
	for range 50 {
		w.p.now = w.p.now.Add(100 * time.Millisecond)
		w.retry()
		hellos += len(w.toServer)
		w.toServer = nil
	}
	if hellos != HelloTries {
		t.Fatalf("%d hellos, want %d", hellos, HelloTries)
	}
	if w.p.c.e.Stats().Drops[reason.MissingToken] != 1 {
		t.Fatal("held datagram not dropped missing-token")
	}
	if len(w.atClient) != 1 {
		t.Fatalf("the PU got %d frames at the give-up, want an ICMP unreachable", len(w.atClient))
	}
	mustUnreachable(t, w.atClient[0], w.data(0))
	if r := w.clientSends(w.data(1)); r.v != Drop || r.code != reason.MissingToken || len(w.toServer) != 0 {
		t.Fatalf("next datagram: %v %v", r.v, r.code)
	}
	// At the server: plain datagrams from a target peer.
	r := w.p.s.run(FromNet, w.data(2), w.p.now)
	if r.v != Drop || r.code != reason.MissingToken {
		t.Fatalf("datagram without handshake at the server: %v %v", r.v, r.code)
	}
	if rs := w.p.s.sink.all(); len(rs) != 1 || rs[0].Reason != "missing-token" {
		t.Fatalf("server records %+v", rs)
	}
	w.p.s.run(FromNet, w.data(3), w.p.now)
	if rs := w.p.s.sink.all(); len(rs) != 1 {
		t.Fatal("each datagram recorded: the denial is not remembered")
	}
}

// TestDatagramHostile: what an attacker on the network (or a PU's
// application) can send never authorizes a flow or reaches a PU as a
// handshake.
func TestDatagramHostile(t *testing.T) {
	w := newUDPWire(t, udpPolicy, "web", "db")
	w.clientSends(w.data(0))
	hello := w.toServer[0]
	w.flush(nil)
	// 1. A hello replayed on another 5-tuple (the attacker's own port):
	// answered, but without the client's key no confirm: nothing passes.
	s := w.p.s
	replayed := retarget(t, hello, 45000)
	r := s.run(FromNet, replayed, w.p.now)
	if r.v != Drop || len(r.notes) != 0 {
		t.Fatalf("replayed hello: %v %v notes %v", r.v, r.code, r.notes)
	}
	d := udpData(t, cIP, sIP, 45000, 53, []byte("smuggled"))
	if r := s.run(FromNet, d, w.p.now); r.v != Drop || r.code != reason.HandshakePending {
		t.Fatalf("data after a replayed hello: %v %v", r.v, r.code)
	}
	// 2. A forged confirm (right shape, wrong MAC) does not authorize it.
	forged := append(append([]byte{}, tokens.DatagramMarker[:]...), 1, 6, 0, 36)
	forged = append(forged, make([]byte, 32)...)
	if r := s.run(FromNet, udpData(t, cIP, sIP, 45000, 53, forged), w.p.now); r.v != Drop || r.code != reason.NonceMismatch || len(r.notes) != 0 {
		t.Fatalf("forged confirm: %v %v", r.v, r.code)
	}
	// 3. A forged reply toward a client whose hello is pending: refused,
	// the flow stays pending.
	c := w.p.c
	c.run(FromApp, udpData(t, cIP, sIP, 46000, 53, []byte("q")), w.p.now)
	fr := append(append([]byte{}, tokens.DatagramMarker[:]...), 1, 5, 0, 60)
	fr = append(fr, make([]byte, 56)...)
	if r := c.run(FromNet, udpData(t, sIP, cIP, 53, 46000, fr), w.p.now); r.v != Drop || r.code == reason.None || len(r.notes) != 0 {
		t.Fatalf("forged reply: %v %v", r.v, r.code)
	}
	// 4. Datagrams from the server side toward a pending client are not
	// delivered.
	if r := c.run(FromNet, udpData(t, sIP, cIP, 53, 46000, []byte("early")), w.p.now); r.v != Drop || r.code != reason.HandshakePending {
		t.Fatalf("data toward a pending client: %v %v", r.v, r.code)
	}
}

// retarget rewrites a captured UDP frame's source port (checksum redone).
func retarget(t *testing.T, f []byte, sport uint16) []byte {
	t.Helper()
	var p packet.Packet
	if p.Decode(f) != reason.None {
		t.Fatal("decode")
	}
	q := p
	q.SrcPort = sport
	return packet.BuildUDP(nil, &q, false, p.UDPPayload())
}

// TestDatagramLookalike: an application datagram that looks like a
// handshake message (the marker, even a whole captured message) is the
// application's: held and sent like any other by the client's enforcer,
// delivered unchanged by the server's.
func TestDatagramLookalike(t *testing.T) {
	w := newUDPWire(t, udpPolicy, "web", "db")
	w.clientSends(w.data(0))
	hello := udpPayload(t, w.toServer[0])
	w.flush(nil)
	for _, payload := range [][]byte{
		append(hello[:len(hello)-1:len(hello)-1], 'x'), // a hello whose signature fails
		append(tokens.DatagramMarker[:4:4], "application bytes"...),
		tokens.DatagramMarker[:],
	} {
		d := udpData(t, cIP, sIP, 40000, 53, payload)
		w.clientSends(d)
		w.flush(nil)
		got := w.atServer[len(w.atServer)-1]
		if !bytes.Equal(got, d) {
			t.Fatalf("lookalike %x not delivered as is", payload)
		}
		// And toward the client.
		back := udpData(t, sIP, cIP, 53, 40000, payload)
		w.serverSends(back)
		w.flush(nil)
		if !bytes.Equal(w.atClient[len(w.atClient)-1], back) {
			t.Fatalf("lookalike %x toward the client not delivered as is", payload)
		}
	}
	// On a new flow, the client's enforcer holds it like any datagram and
	// starts a handshake of its own.
	w.clientSends(udpData(t, cIP, sIP, 40001, 53, hello))
	if len(w.toServer) != 1 || bytes.Equal(udpPayload(t, w.toServer[0]), hello) {
		t.Fatal("a hello-looking application datagram was sent as a hello")
	}
}

// TestDatagramHoldBounds: at most HoldPerFlow datagrams per flow and
// HoldPerPU bytes per PU are held; beyond, hold-full.
func TestDatagramHoldBounds(t *testing.T) {
	w := newUDPWire(t, udpPolicy, "web", "db")
	for i := range HoldPerFlow + 2 {
		r := w.clientSends(w.data(i))
		if want := i >= HoldPerFlow; (r.code == reason.HoldFull) != want {
			t.Fatalf("datagram %d: %v", i, r.code)
		}
	}
	big := make([]byte, 1400)
	n := 0
	for port := uint16(41000); ; port++ {
		r := w.clientSends(udpData(t, cIP, sIP, port, 53, big))
		if r.code == reason.HoldFull {
			break
		}
		n++
		if n > 1000 {
			t.Fatal("no per-PU bound")
		}
	}
	if held := w.p.c.pu.held.Load(); held > HoldPerPU || n < HoldPerPU/1500-HoldPerFlow {
		t.Fatalf("held %d bytes in %d flows", held, n)
	}
	// Held datagrams of flows that end are returned to the budget.
	var out Output
	w.p.c.e.Expire(w.p.now.Add(2*time.Minute), &out)
	if held := w.p.c.pu.held.Load(); held != 0 {
		t.Fatalf("%d bytes still held after expiry", held)
	}
}

func TestDatagramFastPathNoAlloc(t *testing.T) {
	w := newUDPWire(t, udpPolicy, "web", "db")
	w.clientSends(w.data(0))
	w.flush(nil)
	d := w.data(1)
	var out Output
	now := w.p.now
	w.p.c.e.Process(w.p.c.pu, FromApp, bytes.Clone(d), now, &out)
	buf := bytes.Clone(d)
	allocs := testing.AllocsPerRun(200, func() {
		copy(buf, d)
		w.p.c.e.Process(w.p.c.pu, FromApp, buf, now, &out)
	})
	if out.Verdict != Forward || allocs != 0 {
		t.Fatalf("established datagram: %v, %v allocs", out.Verdict, allocs)
	}
}

// BenchmarkDatagramNewFlow measures a new UDP flow between two PUs on two
// nodes: identity (hold, hello, reply, confirm, release; a repeat flow
// between the same PUs: caches warm, no public-key operation) against the
// CIDR-only decision of a flow toward an external peer (what every UDP
// flow cost before).
func BenchmarkDatagramNewFlow(b *testing.B) {
	b.Run("identity", func(b *testing.B) {
		c := newSide(b, "node-c", udpPolicy, map[string]string{"app": "web"}, MidStreamDrop, flow.Config{Capacity: 1 << 20})
		s := newSide(b, "node-s", udpPolicy, map[string]string{"app": "db"}, MidStreamDrop, flow.Config{Capacity: 1 << 20})
		frames := make([][]byte, 50000)
		for i := range frames {
			frames[i] = udpData(b, cIP, sIP, uint16(1024+i), 53, []byte("query"))
		}
		var oc, os Output
		now := t0
		pk := c.e.tok.Stats().PublicKeyOps + s.e.tok.Stats().PublicKeyOps
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if i%len(frames) == 0 && i > 0 {
				now = now.Add(time.Hour) // the old flows expire
				c.e.Expire(now, &oc)
				s.e.Expire(now, &os)
			}
			c.e.Process(c.pu, FromApp, frames[i%len(frames)], now, &oc) // held, hello
			s.e.Process(s.pu, FromNet, oc.Inject[0].Frame, now, &os)    // reply
			c.e.Process(c.pu, FromNet, os.Inject[0].Frame, now, &oc)    // confirm, release
			s.e.Process(s.pu, FromNet, oc.Inject[0].Frame, now, &os)    // confirm
			s.e.Process(s.pu, FromNet, oc.Inject[1].Frame, now, &os)    // the datagram
			if os.Verdict != Forward {
				b.Fatalf("datagram not delivered: %v %v", os.Verdict, os.Reason)
			}
		}
		b.StopTimer()
		if n := c.e.tok.Stats().PublicKeyOps + s.e.tok.Stats().PublicKeyOps - pk; b.N > 1 && n > 6 {
			b.Fatalf("%d public-key operations for %d flows", n, b.N)
		}
	})
	b.Run("cidr-only", func(b *testing.B) {
		c := newSide(b, "node-c", webDB, map[string]string{"app": "web"}, MidStreamDrop, flow.Config{Capacity: 1 << 20})
		frames := make([][]byte, 50000)
		for i := range frames {
			frames[i] = udpData(b, cIP, extIP, uint16(1024+i), 53, []byte("query"))
		}
		var oc Output
		now := t0
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if i%len(frames) == 0 && i > 0 {
				now = now.Add(time.Hour)
				c.e.Expire(now, &oc)
			}
			c.e.Process(c.pu, FromApp, frames[i%len(frames)], now, &oc)
			if oc.Verdict != Forward {
				b.Fatal(oc.Verdict, oc.Reason)
			}
		}
	})
}

// TestDatagramServerForgot: the server's enforcer lost an established flow
// (its PU re-attached, its entry expired) while the client's still holds
// it: the client's next datagram is missing-token there and answered with
// an ICMP unreachable, on which the client's enforcer forgets the flow (the
// error goes on to the PU); the PU's next datagram starts a new handshake
// and passes.
func TestDatagramServerForgot(t *testing.T) {
	w := newUDPWire(t, udpPolicy, "web", "db")
	w.clientSends(w.data(0))
	w.flush(nil)
	// The server's PU is detached and attached again.
	var out Output
	s := w.p.s
	s.e.RemovePU(s.pu, w.p.now, &out)
	s.pu = s.e.AddPU("db-again", s.pu.Tags(), nil)
	w.p.now = w.p.now.Add(time.Second)
	w.clientSends(w.data(1)) // the client's fast path: the flow lives there
	w.flush(nil)
	if len(w.atServer) != 1 {
		t.Fatalf("server got %d datagrams, want only the first", len(w.atServer))
	}
	if len(w.atClient) != 1 {
		t.Fatalf("the client PU got %d frames, want the ICMP unreachable", len(w.atClient))
	}
	mustUnreachable(t, w.atClient[0], w.data(1))
	if w.p.c.e.PUStats(w.p.c.pu).Flows != 0 {
		t.Fatal("the client's enforcer kept the flow the server forgot")
	}
	d := w.data(2)
	w.clientSends(d)
	w.flush(nil)
	if len(w.atServer) != 2 || !bytes.Equal(w.atServer[1], d) {
		t.Fatalf("after a new handshake: server got %d datagrams", len(w.atServer))
	}
}

func udpData6(t testing.TB, src, dst netip.Addr, sport, dport uint16, payload []byte) []byte {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: cMAC, DstMAC: sMAC, EthernetType: layers.EthernetTypeIPv6}
	if src.As16()[15] == 2 {
		eth.SrcMAC, eth.DstMAC = sMAC, cMAC
	}
	ip := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolUDP, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
	udp := &layers.UDP{SrcPort: layers.UDPPort(sport), DstPort: layers.UDPPort(dport)}
	udp.SetNetworkLayerForChecksum(ip)
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ip, udp, gopacket.Payload(payload)); err != nil {
		t.Fatal(err)
	}
	return bytes.Clone(buf.Bytes())
}

// TestDatagramHandshakeIPv6: the same exchange over IPv6, and a denial
// answered with an ICMPv6 unreachable (administratively prohibited).
func TestDatagramHandshakeIPv6(t *testing.T) {
	pol := strings.Replace(udpPolicy, "targetNetworks: [10.0.0.0/8]", "targetNetworks: [fd00::/8]", 1)
	w := newUDPWire(t, pol, "web", "db")
	c6, s6 := netip.MustParseAddr("fd00::1"), netip.MustParseAddr("fd00::2")
	d := udpData6(t, c6, s6, 40000, 53, []byte("q6"))
	if r := w.clientSends(d); !r.held() {
		t.Fatalf("first IPv6 datagram: %v %v", r.v, r.code)
	}
	w.flush(nil)
	if len(w.atServer) != 1 || !bytes.Equal(w.atServer[0], d) || authorized(w.notesC) != 1 || authorized(w.notesS) != 1 {
		t.Fatalf("IPv6: server got %d, notes %v %v", len(w.atServer), w.notesC, w.notesS)
	}
	reply := udpData6(t, s6, c6, 53, 40000, []byte("a6"))
	w.serverSends(reply)
	w.flush(nil)
	if len(w.atClient) != 1 || !bytes.Equal(w.atClient[0], reply) {
		t.Fatal("IPv6 reply not delivered")
	}
	// Port 99: dns's ingress denies.
	w.clientSends(udpData6(t, c6, s6, 40001, 99, []byte("no")))
	w.flush(nil)
	if len(w.atClient) != 2 {
		t.Fatalf("client PU got %d frames, want the reply and an ICMPv6 unreachable", len(w.atClient))
	}
	var p packet.Packet
	if p.Decode(w.atClient[1]) != reason.None || p.Proto != ipproto.ICMPv6 || !p.AdministrativelyProhibited() || p.Src != s6 || p.Dst != c6 || !packet.VerifyTCPChecksum(&p) {
		t.Fatalf("not an ICMPv6 unreachable from the server: %+v", p)
	}
}

// TestDatagramForgedMissingTokenDoesNotDeny: datagrams without a handshake
// from the network (forged by someone spoofing the server) make the
// client's enforcer remember a missing-token denial of that 5-tuple; the
// PU's own next flow on it is still decided by a handshake, and passes.
func TestDatagramForgedMissingTokenDoesNotDeny(t *testing.T) {
	w := newUDPWire(t, udpPolicy, "web", "db")
	if r := w.p.c.run(FromNet, udpData(t, sIP, cIP, 53, 40000, []byte("forged")), w.p.now); r.v != Drop || r.code != reason.MissingToken {
		t.Fatalf("forged datagram: %v %v", r.v, r.code)
	}
	d := w.data(0)
	if r := w.clientSends(d); !r.held() || len(w.toServer) != 1 {
		t.Fatalf("the PU's datagram on that 5-tuple: %v %v (want held, a hello sent)", r.v, r.code)
	}
	w.flush(nil)
	if len(w.atServer) != 1 || !bytes.Equal(w.atServer[0], d) {
		t.Fatal("the PU's flow did not pass")
	}
}

// TestDatagramFragmentedFirst: a flow's first datagram in fragments (a
// 3,000-byte query) is held whole, its later fragments with its first, and
// released in order; the server's enforcer lets the later fragments follow
// the first. A denied flow's fragments are dropped with its reason.
func TestDatagramFragmentedFirst(t *testing.T) {
	for _, tc := range []struct {
		name  string
		dport uint16
		want  reason.Code
	}{{"allowed", 53, reason.None}, {"denied", 99, reason.IngressDenied}} {
		t.Run(tc.name, func(t *testing.T) {
			w := newUDPWire(t, udpPolicy, "web", "db")
			whole := udpData(t, cIP, sIP, 40000, tc.dport, bytes.Repeat([]byte("z"), 2000))
			l4 := whole[34:] // UDP header and payload
			first := fragFrame(t, cIP, sIP, layers.IPProtocolUDP, 77, layers.IPv4MoreFragments, 0, l4[:1480])
			second := fragFrame(t, cIP, sIP, layers.IPProtocolUDP, 77, 0, 1480/8, l4[1480:])
			for i, f := range [][]byte{first, second} {
				if r := w.clientSends(f); !r.held() {
					t.Fatalf("fragment %d: %v %v (want held)", i+1, r.v, r.code)
				}
			}
			w.flush(nil)
			if tc.want != reason.None {
				if len(w.atServer) != 0 || w.p.c.e.Stats().Drops[tc.want] < 2 { // the two held fragments (and the reject itself)
					t.Fatalf("denied: server got %d, drops %v", len(w.atServer), w.p.c.e.Stats().Drops[tc.want])
				}
				return
			}
			if len(w.atServer) != 2 || !bytes.Equal(w.atServer[0], first) || !bytes.Equal(w.atServer[1], second) {
				t.Fatalf("server got %d frames, want both fragments in order", len(w.atServer))
			}
		})
	}
}
