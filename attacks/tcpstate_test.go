package attacks

import (
	"errors"
	mrand "math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/trireme-go/trireme/dataplane"
	"github.com/trireme-go/trireme/testenv"
)

// Attacks on the enforcer's TCP state (issue 11 items 4 and 5), from the
// position that still reaches the victim's enforcer once PUs cannot spoof
// (kernel anti-spoofing): a host on the underlay that taps the wire
// between the nodes and sends with any address (newUnderlayScene).

// connected opens frontend's allowed connection to web:8080, checks it and
// returns it with its client end, and frontend's SYN (with its token) and
// first data segment as the tap saw them on the wire.
func (u *underlayScene) connected(t *testing.T) (c *net.TCPConn, client netip.AddrPort, syn, data *layers.TCP) {
	t.Helper()
	nc, err := u.frontend.Dial(u.victim.Addr, 3*time.Second)
	if err != nil {
		t.Fatalf("frontend -> web:8080 (allowed): %v", err)
	}
	t.Cleanup(func() { nc.Close() })
	client = netip.MustParseAddrPort(nc.LocalAddr().String())
	if err := testenv.EchoConn(nc, "hello", 3*time.Second); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for (syn == nil || data == nil) && time.Now().Before(deadline) {
		for _, p := range u.tap.Capture(50*time.Millisecond, fromPort(client.Port())) {
			switch tcp := tcpOf(p); {
			case tcp.SYN && len(tcp.Payload) > 0:
				syn = tcp
			case string(tcp.Payload) == "hello":
				data = tcp
			}
		}
	}
	if syn == nil || data == nil {
		t.Fatal("frontend's SYN or data was not seen on the underlay")
	}
	return nc.(*net.TCPConn), client, syn, data
}

// recordsOf returns d's flow records of the connection client -> server
// written by its server's enforcer with the given end.
func recordsOf(d *testenv.Daemon, client, server netip.AddrPort, end dataplane.End) []dataplane.Record {
	var out []dataplane.Record
	for _, r := range d.Records() {
		if r.Client == client && r.Server == server && r.Direction == "ingress" && r.End == end {
			out = append(out, r)
		}
	}
	return out
}

// TestSpoofedSYNOnEstablishedFlow (item 4): with frontend -> web:8080
// established, the attacker sends SYNs with a new ISN on that connection's
// own 4-tuple: one without a token (missing-token), and one carrying the
// token of frontend's SYN as captured on the wire (it authenticates: web's
// TCP gets it and answers with a challenge ACK, RFC 5961 §4). Neither
// changes web's flow: it is not replaced, never taken out of the kernel,
// and the connection goes on.
func TestSpoofedSYNOnEstablishedFlow(t *testing.T) {
	u := newUnderlayScene(t)
	c, client, captured, _ := u.connected(t)
	revoked := countersOf(t, u.d1)["kernel-revoked"]

	before := dropsOf(t, u.d1)
	u.send(t, seg{src: client, dst: u.victim.Addr, flags: "S", seq: mrand.Uint32(), opts: []layers.TCPOption{mss}})
	waitDropOn(t, u.d1, before, "missing-token")

	// The captured token on a new ISN: web's TCP answers it, keeping its
	// connection: a pure ACK toward frontend (a challenge ACK). Linux sends
	// at most one out-of-window or challenge ACK per socket per 500 ms
	// (tcp_invalid_ratelimit); web's counters tell a SYN its TCP got and
	// rate-limited (TCPACKSkippedChallenge) from one that never reached it,
	// and a rate-limited one is sent again once the limit has passed.
	isChallenge := func(p gopacket.Packet) bool {
		tcp := tcpOf(p)
		return tcp != nil && uint16(tcp.DstPort) == client.Port() && tcp.ACK && !tcp.SYN && !tcp.RST && len(tcp.Payload) == 0
	}
	var challenge gopacket.Packet
	for try := 0; try < 3 && challenge == nil; try++ {
		ext, drops := tcpExt(t, u.web), dropsOf(t, u.d1)
		u.send(t, seg{src: client, dst: u.victim.Addr, flags: "S", seq: mrand.Uint32(), opts: captured.Options, payload: captured.Payload})
		if challenge = firstFrame(u.tap, 2*time.Second, isChallenge); challenge != nil {
			break
		}
		now := tcpExt(t, u.web)
		if now["TCPSYNChallenge"] == ext["TCPSYNChallenge"] {
			t.Fatalf("the authenticated SYN did not reach web's TCP (drops before %v, after %v)", drops, dropsOf(t, u.d1))
		}
		if now["TCPACKSkippedChallenge"] == ext["TCPACKSkippedChallenge"] {
			t.Fatalf("web's TCP got the SYN and sent a challenge ACK that was not seen on the wire (TcpExt before %v, after %v)", ext, now)
		}
		t.Logf("web's TCP rate-limited its challenge ACK (TCPACKSkippedChallenge %d -> %d); sending the SYN again",
			ext["TCPACKSkippedChallenge"], now["TCPACKSkippedChallenge"])
		time.Sleep(600 * time.Millisecond)
	}
	if challenge == nil {
		t.Error("web's TCP rate-limited its challenge ACK three times in a row")
	}

	if err := testenv.EchoConn(c, "still-ok", 3*time.Second); err != nil {
		t.Fatalf("the established connection after the SYNs: %v", err)
	}
	if r := recordsOf(u.d1, client, u.victim.Addr, dataplane.EndReplaced); len(r) != 0 {
		t.Errorf("web's flow was replaced: %+v", r)
	}
	if got := countersOf(t, u.d1)["kernel-revoked"]; got != revoked {
		t.Errorf("web's enforcer took %d flows out of the kernel", got-revoked)
	}
	if a := u.victim.Accepted(); len(a) != 1 || a[0] != client.String() {
		t.Errorf("web accepted %v, want frontend's connection only", a)
	}
	if r := u.victim.Read(); r != "hellostill-ok" {
		t.Errorf("web read %q", r)
	}
}

// TestSpoofedRSTOnEstablishedFlow (item 5): RSTs from the attacker on the
// established connection, far outside its window. Live, an established
// flow's packets pass in the kernel, so its enforcer cannot tell where the
// window is now: it hands the RST to web's TCP (which applies RFC 5961 and
// ignores it) and sends a probe after it; web's TCP, still holding the
// connection, does not answer with a RST, so nothing changes (rst-probes
// counts the probes). Then frontend really resets the connection: web's
// TCP accepts that RST, answers the probe with a RST, and web's enforcer
// ends the flow (record "reset") at once.
func TestSpoofedRSTOnEstablishedFlow(t *testing.T) {
	u := newUnderlayScene(t)
	c, client, _, data := u.connected(t)
	probes := countersOf(t, u.d1)["rst-probes"]
	revoked := countersOf(t, u.d1)["kernel-revoked"]
	for _, s := range []seg{
		{src: client, dst: u.victim.Addr, flags: "R", seq: data.Seq + 1<<30},
		{src: client, dst: u.victim.Addr, flags: "RA", seq: data.Seq - 1<<20, ack: data.Ack + 12345},
	} {
		u.send(t, s)
		time.Sleep(250 * time.Millisecond) // one probe per flow per 200 ms
	}
	deadline := time.Now().Add(5 * time.Second)
	for countersOf(t, u.d1)["rst-probes"] < probes+2 {
		if time.Now().After(deadline) {
			t.Fatalf("rst-probes %d, want %d", countersOf(t, u.d1)["rst-probes"], probes+2)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := testenv.EchoConn(c, "still-ok", 3*time.Second); err != nil {
		t.Fatalf("the connection after the forged RSTs: %v", err)
	}
	time.Sleep(200 * time.Millisecond)
	if r := recordsOf(u.d1, client, u.victim.Addr, dataplane.EndReset); len(r) != 0 {
		t.Fatalf("web's flow ended on a forged RST: %+v", r)
	}
	if got := countersOf(t, u.d1)["kernel-revoked"]; got != revoked {
		t.Fatalf("web's flow was taken out of the kernel")
	}

	// The genuine reset.
	if err := c.SetLinger(0); err != nil {
		t.Fatal(err)
	}
	c.Close()
	deadline = time.Now().Add(5 * time.Second)
	for len(recordsOf(u.d1, client, u.victim.Addr, dataplane.EndReset)) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("frontend's real RST did not end web's flow (records %+v)", u.d1.Records())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestSpoofedRSTInSynSent (item 5): frontend connects to an address of
// node 1 where no host answers; its enforcer is in SYN-SENT. The attacker,
// who sees the SYN on the wire, forges the answers of the missing server:
// a RST+ACK that does not acknowledge the SYN, a bare RST, a SYN-ACK
// acknowledging something else. None is acceptable in SYN-SENT (RFC 793,
// RFC 5961 §3): each is dropped (out-of-window) and the connection attempt
// goes on. A RST+ACK that does acknowledge the SYN (the attacker read it
// off the wire) is what a closed port sends: it ends the attempt.
func TestSpoofedRSTInSynSent(t *testing.T) {
	u := newUnderlayScene(t)
	silent := netip.AddrPortFrom(netip.MustParseAddr("10.81.0.200"), 8080)
	type result struct {
		err error
		at  time.Time
	}
	done := make(chan result, 1)
	go func() {
		c, err := u.frontend.Dial(silent, 8*time.Second)
		if err == nil {
			c.Close()
		}
		done <- result{err, time.Now()}
	}()
	p := firstFrame(u.tap, 3*time.Second, func(p gopacket.Packet) bool {
		ip, _ := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
		return synTo(silent.Port())(p) && ip != nil && ip.DstIP.Equal(silent.Addr().AsSlice())
	})
	if p == nil {
		t.Fatal("frontend's SYN was not seen on the underlay")
	}
	syn := tcpOf(p)
	client := netip.AddrPortFrom(u.frontend.Addr, uint16(syn.SrcPort))
	toNode0 := u.c.Nodes[0].UplinkMAC()
	send := func(s seg) {
		s.srcMAC, s.dstMAC, s.src, s.dst = u.raw.MAC, toNode0, silent, client
		u.raw.MustSend(s.frame())
	}
	for _, s := range []seg{
		{flags: "RA", ack: syn.Seq + 1 + 1000},
		{flags: "R", seq: mrand.Uint32()},
		{flags: "SA", seq: mrand.Uint32(), ack: syn.Seq + 77, opts: []layers.TCPOption{mss}},
	} {
		before := dropsOf(t, u.d0)
		send(s)
		waitDropOn(t, u.d0, before, "out-of-window")
	}
	select {
	case r := <-done:
		t.Fatalf("the connection attempt ended on a forged segment: %v", r.err)
	case <-time.After(300 * time.Millisecond):
	}
	sent := time.Now()
	send(seg{flags: "RA", ack: syn.Seq + 1})
	r := <-done
	if !errors.Is(r.err, syscall.ECONNREFUSED) || r.at.Sub(sent) > 2*time.Second {
		t.Fatalf("the RST acknowledging the SYN: dial ended with %v after %v, want connection refused at once", r.err, r.at.Sub(sent))
	}
	if !strings.Contains(r.err.Error(), "refused") {
		t.Fatalf("dial: %v", r.err)
	}
}
