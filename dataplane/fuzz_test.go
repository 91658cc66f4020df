package dataplane

import (
	"net/netip"
	"testing"

	"github.com/google/gopacket/layers"

	"github.com/trireme-go/trireme/dataplane/fixtures"
	"github.com/trireme-go/trireme/dataplane/packet"
	"github.com/trireme-go/trireme/dataplane/pcapio"
	"github.com/trireme-go/trireme/flow"
	"github.com/trireme-go/trireme/ipproto"
	"github.com/trireme-go/trireme/tokens"
)

// FuzzProcess feeds arbitrary frames to an enforcer in both directions,
// after a real handshake so that established-flow paths are reachable too.
// It must never panic, and its outputs must be consistent.
func FuzzProcess(f *testing.F) {
	files, err := fixtures.Captures()
	if err != nil {
		f.Fatal(err)
	}
	for _, file := range files {
		ps, err := pcapio.ReadFile(file)
		if err != nil && len(ps) == 0 {
			f.Fatal(err)
		}
		for _, p := range ps[:min(len(ps), 6)] {
			f.Add(p.Frame, true)
		}
	}
	// Token-carrying frames from a real handshake.
	p := &pair{t: &testing.T{}, now: t0}
	p.c = newSide(f, "node-c", allowAll, map[string]string{"app": "web"}, MidStreamReset, flow.Config{Capacity: 64})
	p.s = newSide(f, "node-s", allowAll, map[string]string{"app": "db"}, MidStreamAllowACL, flow.Config{Capacity: 64})
	syn, synack, ack, data, _ := p.frames()
	w1, _, _ := p.c2s(syn)
	w2, _, _ := p.s2c(synack)
	w3, _, _ := p.c2s(ack)
	for _, w := range [][]byte{w1, w2, w3, data} {
		f.Add(w, false)
	}
	// A datagram handshake's messages, and a datagram between the PUs.
	dw := &udpWire{t: &testing.T{}, p: p}
	dw.clientSends(udpData(dw.t, cIP, sIP, 40000, 53, []byte("q")))
	f.Add(dw.toServer[0], false) // the hello
	dw.flush(func(n int) bool { return false })
	f.Add(udpData(dw.t, cIP, sIP, 40001, 53, []byte("q")), true)
	f.Add(udpData(dw.t, sIP, cIP, 53, 40000, append(tokens.DatagramMarker[:4:4], 1, 5, 0, 60)), false)
	// SYN data, RSTs, ICMP errors and fragments (issue 11's attacks).
	ft := &testing.T{}
	q := udpFrame(ft, cIP, extIP, 5353, 53)
	for _, s := range [][]byte{
		tfoSYN(ft, sIP, 5432, 300),
		rstFrom(ft, true, 101, 0), rstFrom(ft, false, 0, 101),
		icmpErrorFrame(ft, netip.MustParseAddr("192.0.2.1"), cIP, 3, 4, q[14:14+28]),
		fragFrame(ft, cIP, extIP, layers.IPProtocolUDP, 7, layers.IPv4MoreFragments, 0, q[34:34+13]),
		fragFrame(ft, cIP, extIP, layers.IPProtocolUDP, 7, 0, 2, make([]byte, 40)),
		frag6(ft, netip.MustParseAddr("fd00::1"), netip.MustParseAddr("2001:db8::9"), 9, 0, true, q[34:34+13]),
	} {
		f.Add(s, true)
		f.Add(s, false)
	}
	var out Output
	f.Fuzz(func(t *testing.T, frame []byte, fromApp bool) {
		for _, s := range []*side{p.c, p.s} {
			dir := FromNet
			if fromApp {
				dir = FromApp
			}
			in := append([]byte(nil), frame...)
			s.e.Process(s.pu, dir, in, t0, &out)
			switch out.Verdict {
			case Forward:
				if out.Frame == nil {
					t.Fatal("forward without a frame")
				}
				var q packet.Packet
				_ = q.Decode(out.Frame)
			case Drop, Reset:
				if out.Frame != nil {
					t.Fatal("drop with a frame")
				}
				if out.Verdict == Reset && (len(out.Inject) == 0 || out.Inject[0].To != ToPU) {
					t.Fatal("reset without a RST toward the PU")
				}
			default:
				t.Fatalf("verdict %d", out.Verdict)
			}
			for _, in := range out.Inject {
				var q packet.Packet
				if q.Decode(in.Frame) != 0 {
					t.Fatalf("injected frame does not parse: %x", in.Frame)
				}
				switch {
				case in.Released: // the PU's own datagram, as it came
				case q.Proto == ipproto.TCP, q.Proto == ipproto.UDP:
					// (VerifyTCPChecksum is the TCP/UDP pseudo-header sum.)
					if !packet.VerifyTCPChecksum(&q) {
						t.Fatalf("injected %v frame with a bad checksum: %x", q.Proto, in.Frame)
					}
				case q.Proto == ipproto.ICMP, q.Proto == ipproto.ICMPv6:
					if !q.IsICMPError() {
						t.Fatalf("injected ICMP that is no error: %x", in.Frame)
					}
				default:
					t.Fatalf("injected %v frame: %x", q.Proto, in.Frame)
				}
			}
		}
	})
}
