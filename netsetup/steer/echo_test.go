package steer_test

import (
	"encoding/binary"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/trireme-go/trireme/ipproto"
	"github.com/trireme-go/trireme/netsetup/steer"
	"github.com/trireme-go/trireme/testenv"
)

// TestSteeredEchoDirection: the direction of an echo is part of its key in
// the kernel. With A's ping to B authorized on both PUs (A:id -> B:0, as
// the dataplane writes it), A's requests and B's replies pass in the
// kernel; B's requests to A, with A's identifier or another, and A's
// replies to B are steered (the dataplane decides them). An echo of
// identifier 0 is steered even where an ICMP flow of zero ports (another
// ICMP message) is authorized; that other message passes. Over IPv4 and
// IPv6, on the chain of the sending PU.
func TestSteeredEchoDirection(t *testing.T) {
	r := newRig(t, 2, 2) // no dataplane: what is steered is lost
	a, b := r.node.PUs[0], r.node.PUs[1]
	const id = 0x4242
	for _, tu := range []steer.Tuple{
		{Src: a.Addr, Dst: b.Addr, Proto: ipproto.ICMP, SrcPort: id},
		{Src: a.Addr, Dst: b.Addr, Proto: ipproto.ICMP}, // another ICMP message (timestamp)
		{Src: a.Addr6, Dst: b.Addr6, Proto: ipproto.ICMPv6, SrcPort: id},
	} {
		for _, pu := range []string{"pu0", "pu1"} {
			if err := r.s.Authorize(pu, tu, time.Minute); err != nil {
				t.Fatal(err)
			}
		}
	}
	A, B := a.MACOf(), b.MACOf()
	icmp4 := func(from, to *testenv.PU, typ uint8, id, seq uint16) []byte {
		src, dst := A, B
		if from == b {
			src, dst = B, A
		}
		return testenv.Frame(testenv.Eth(src, dst, layers.EthernetTypeIPv4), testenv.IPv4(from.Addr, to.Addr, layers.IPProtocolICMPv4),
			&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(typ, 0), Id: id, Seq: seq}, gopacket.Payload("echo-direction: longer than the Ethernet minimum"))
	}
	icmp6 := func(from, to *testenv.PU, typ uint8, id, seq uint16) []byte {
		src, dst := A, B
		if from == b {
			src, dst = B, A
		}
		body := binary.BigEndian.AppendUint16(binary.BigEndian.AppendUint16(nil, id), seq)
		return testenv.ICMPv6Frame(src, dst, from.Addr6, to.Addr6, 64, typ, append(body, "echo-direction"...))
	}
	// Each frame differs (sequence numbers) so that the capture tells them
	// apart; IPv4 frames are longer than 60 bytes (no Ethernet padding,
	// which the capture would not show).
	runFrameCases(t, r, "pu0", a, b, false, []frameCase{
		{"A's echo request", icmp4(a, b, 8, id, 1), authorized},
		{"A's timestamp request (zero ports)", icmp4(a, b, 13, 7, 2), authorized},
		{"A's echo reply to B", icmp4(a, b, 0, id, 3), steered},
		{"A's echo request, another id", icmp4(a, b, 8, id+1, 4), steered},
		{"A's ICMPv6 echo request", icmp6(a, b, 128, id, 5), authorized},
		{"A's ICMPv6 echo reply to B", icmp6(a, b, 129, id, 6), steered},
	})
	runFrameCases(t, r, "pu1", b, a, false, []frameCase{
		{"B's echo reply", icmp4(b, a, 0, id, 11), authorized},
		{"B's echo request, A's id", icmp4(b, a, 8, id, 12), steered},
		{"B's echo request, another id", icmp4(b, a, 8, id+1, 13), steered},
		{"B's echo request, id 0", icmp4(b, a, 8, 0, 14), steered},
		{"B's echo reply, id 0", icmp4(b, a, 0, 0, 15), steered},
		{"B's ICMPv6 echo reply", icmp6(b, a, 129, id, 16), authorized},
		{"B's ICMPv6 echo request, A's id", icmp6(b, a, 128, id, 17), steered},
		{"B's ICMPv6 echo request, another id", icmp6(b, a, 128, id+1, 18), steered},
	})
}
