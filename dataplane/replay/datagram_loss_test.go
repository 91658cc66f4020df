package replay

import (
	"bytes"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/trireme-go/trireme/dataplane"
	"github.com/trireme-go/trireme/dataplane/packet"
	"github.com/trireme-go/trireme/dataplane/pcapio"
	"github.com/trireme-go/trireme/identity"
	"github.com/trireme-go/trireme/reason"
	"github.com/trireme-go/trireme/tokens"
)

// TestDatagramLoss replays a crafted capture of one UDP flow between two
// PUs (c and s, on two nodes) over a wire that loses a datagram handshake
// message: c sends q1, sends q2 300 ms later (the first hello's retry is
// due at 250 ms), s answers a1. Whatever message is lost, the client's
// enforcer sends its hello again, the server's answers the repeated hello
// again, and the flow ends allowed on both sides with q1, q2 and a1
// delivered unchanged and in order; the summary shows the retries.
func TestDatagramLoss(t *testing.T) {
	c, s := netip.MustParseAddr("10.1.0.1"), netip.MustParseAddr("10.1.0.2")
	cMAC, sMAC := net.HardwareAddr{2, 0, 0, 0, 0, 1}, net.HardwareAddr{2, 0, 0, 0, 0, 2}
	cs, ss := netip.AddrPortFrom(c, 5000), netip.AddrPortFrom(s, 53)
	frames := [][]byte{
		craftUDP(t, cMAC, cs, ss, []byte("q1")), // held during the handshake
		craftUDP(t, cMAC, cs, ss, []byte("q2")), // the application tries again
		craftUDP(t, sMAC, ss, cs, []byte("a1")), // the answer
	}
	at := []time.Duration{0, 300 * time.Millisecond, 310 * time.Millisecond}
	path := filepath.Join(t.TempDir(), "loss.pcap")
	w, err := pcapio.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 12, 4, 2, 0, 0, 0, time.UTC)
	for i, f := range frames {
		if err := w.Write(t0.Add(at[i]), f); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name string
		lose tokens.DatagramKind
		// on the wire, lost ones included
		hellos, replies, confirms int
	}{
		{"nothing lost", tokens.NotHandshake, 1, 1, 1},
		// The hello is lost: the client's enforcer sends it again.
		{"hello lost", tokens.Hello, 2, 1, 1},
		// The reply is lost: the client's enforcer sends its hello again,
		// the server's answers the repeated hello again.
		{"reply lost", tokens.Reply, 2, 2, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			topo := &Topology{TargetNetworks: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/24")}}
			if tc.lose != tokens.NotHandshake {
				topo.Lose = map[tokens.DatagramKind]int{tc.lose: 1}
			}
			for _, p := range []struct {
				name string
				ip   netip.Addr
			}{{"c", c}, {"s", s}} {
				topo.PUs = append(topo.PUs, PUSpec{Name: p.name, Node: "node-" + p.name, IPs: []netip.Addr{p.ip},
					Tags: identity.NewTags(map[string]string{"app": p.name})})
			}
			out, sum, _ := run(t, path, topo, mustPolicy(t, allowAllPolicy), dataplane.MidStreamDrop)

			wantLost := 0
			if tc.lose != tokens.NotHandshake {
				wantLost = 1
			}
			if sum.PacketsIn != 3 || sum.Forwarded != 3 || len(sum.Dropped) != 0 || sum.Lost != wantLost {
				t.Fatalf("summary %+v", sum)
			}
			if sum.Handshake["hello"] != tc.hellos || sum.Handshake["reply"] != tc.replies || sum.Handshake["confirm"] != tc.confirms {
				t.Fatalf("handshake messages in the summary %v, want %d hello, %d reply, %d confirm", sum.Handshake, tc.hellos, tc.replies, tc.confirms)
			}
			// The wire output (wire.pcap) shows the same messages.
			kinds := map[tokens.DatagramKind]int{}
			for _, f := range out.wire {
				var p packet.Packet
				if p.Decode(f) == reason.None {
					kinds[tokens.KindOf(p.UDPPayload())]++
				}
			}
			if kinds[tokens.Hello] != tc.hellos || kinds[tokens.Reply] != tc.replies || kinds[tokens.Confirm] != tc.confirms {
				t.Fatalf("handshake messages on the wire %v", kinds)
			}
			// Delivered: q1 and q2 to s in order, a1 to c, unchanged; no
			// handshake message reaches a PU.
			var got []int
			for _, d := range out.delivered {
				if d.origin < 0 {
					t.Fatalf("an enforcer's frame delivered to %s", d.pu)
				}
				if !bytes.Equal(d.frame, frames[d.origin]) {
					t.Fatalf("packet %d delivered changed", d.origin)
				}
				got = append(got, d.origin)
			}
			if len(got) != 3 || got[0] != 0 || got[1] != 1 || got[2] != 2 {
				t.Fatalf("delivered packets %v, want 0 1 2", got)
			}
			// Allowed in the end, on both sides, each with the other's
			// identity.
			allowed := 0
			for _, r := range out.records {
				if r.Client != cs || r.Server != ss {
					t.Fatalf("record of another flow: %+v", r)
				}
				if r.Action != "allow" {
					t.Fatalf("record %+v, want allow", r)
				}
				if !slices.Contains(r.Remote.Tags, "app=c") && !slices.Contains(r.Remote.Tags, "app=s") {
					t.Fatalf("record without the peer's identity: %+v", r)
				}
				allowed++
			}
			if allowed != 2 {
				t.Fatalf("%d allow records of c -> s, want 2 (one per side): %+v", allowed, out.records)
			}
		})
	}
}

// TestTopologyLose reads the wire's losses from a topology file.
func TestTopologyLose(t *testing.T) {
	topo, err := ParseTopology("t.yaml", []byte("lose: {hello: 2, reply: 1}\npus:\n  - {name: a, ip: 10.0.0.1}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(topo.Lose) != 2 || topo.Lose[tokens.Hello] != 2 || topo.Lose[tokens.Reply] != 1 {
		t.Fatalf("lose %v", topo.Lose)
	}
	for _, y := range []string{"lose: {syn: 1}\n", "lose: {hello: -1}\n"} {
		if _, err := ParseTopology("t.yaml", []byte(y)); err == nil || !strings.Contains(err.Error(), "t.yaml: lose:") {
			t.Fatalf("%q: %v", y, err)
		}
	}
}
