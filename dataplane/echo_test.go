package dataplane

import (
	"bytes"
	"net/netip"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/trireme-go/trireme/flow"
	"github.com/trireme-go/trireme/reason"
)

// pingOneWay: app=a may send ICMP to 10.0.2.0/24 and fd00:2::/64 (where
// B is); nothing may send ICMP to it.
const pingOneWay = `
targetNetworks: [10.0.0.0/8, fd00::/8]
policies:
  - name: a
    selector: app=a
    egress:
      - name: ping-out
        to: [{cidr: 10.0.2.0/24}, {cidr: "fd00:2::/64"}]
        ports: [icmp, icmpv6]
        action: allow
`

// icmpMsg builds an ICMP (IPv4) or ICMPv6 message of type typ whose 4
// bytes after the checksum hold id and seq (an echo's identifier and
// sequence number; a timestamp request has them too).
func icmpMsg(t *testing.T, src, dst netip.Addr, typ uint8, id, seq uint16) []byte {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: cMAC, DstMAC: sMAC, EthernetType: layers.EthernetTypeIPv4}
	var ls []gopacket.SerializableLayer
	if src.Is4() {
		ls = []gopacket.SerializableLayer{eth,
			&layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolICMPv4, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()},
			&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(typ, 0), Id: id, Seq: seq}, gopacket.Payload("ping-data")}
	} else {
		eth.EthernetType = layers.EthernetTypeIPv6
		ip := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolICMPv6, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
		icmp := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(typ, 0)}
		_ = icmp.SetNetworkLayerForChecksum(ip)
		ls = []gopacket.SerializableLayer{eth, ip, icmp, &layers.ICMPv6Echo{Identifier: id, SeqNumber: seq}, gopacket.Payload("ping-data")}
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatal(err)
	}
	return bytes.Clone(buf.Bytes())
}

// TestEchoDirection: an echo's direction is part of its flow. A's
// allowed ping to B passes both ways (request out, reply in) and is
// authorized as (A:id, B:0); B's echo requests to A, with A's identifier
// or another, are new flows that A's ingress rules deny; an ICMP error
// about A's request fits A's flow. Identifier 0 (keyed like any other
// ICMP message, both ports 0) is held to its direction too.
func TestEchoDirection(t *testing.T) {
	for _, fam := range []struct {
		name          string
		a, b, router  netip.Addr
		req, rep, ts  uint8
		errTyp, errCo uint8
	}{
		{"IPv4", cIP, sIP, netip.MustParseAddr("10.0.2.254"), 8, 0, 13, 3, 1},
		{"IPv6", netip.MustParseAddr("fd00:1::1"), netip.MustParseAddr("fd00:2::2"), netip.MustParseAddr("fd00:2::fe"), 128, 129, 0, 1, 0},
	} {
		t.Run(fam.name, func(t *testing.T) {
			for _, id := range []uint16{0x1234, 0} {
				s := newSide(t, "n", pingOneWay, map[string]string{"app": "a"}, MidStreamDrop, flow.Config{})
				a, b := fam.a, fam.b
				req := icmpMsg(t, a, b, fam.req, id, 1)
				r := s.run(FromApp, req, t0)
				if r.v != Forward {
					t.Fatalf("id %d: A's request: %v %v", id, r.v, r.code)
				}
				var auth *Note
				for i := range r.notes {
					if r.notes[i].Kind == Authorize {
						auth = &r.notes[i]
					}
				}
				if auth == nil || auth.Local != netip.AddrPortFrom(a, id) || auth.Remote != netip.AddrPortFrom(b, 0) {
					t.Fatalf("id %d: A's request authorized %+v, want %v:%d -> %v:0", id, auth, a, id, b)
				}
				if r := s.run(FromNet, icmpMsg(t, b, a, fam.rep, id, 1), t0); r.v != Forward {
					t.Fatalf("id %d: B's reply: %v %v", id, r.v, r.code)
				}
				if r := s.run(FromApp, icmpMsg(t, a, b, fam.req, id, 2), t0); r.v != Forward {
					t.Fatalf("id %d: A's second request: %v %v", id, r.v, r.code)
				}
				// An error from a router about A's request reaches A.
				var q []byte
				if a.Is4() {
					q = ipOf(t, req)[:28]
				} else {
					q = ipOf(t, req)[:48]
				}
				if r := s.run(FromNet, icmpMsg6or4Error(t, fam.router, a, fam.errTyp, fam.errCo, q), t0); r.v != Forward {
					t.Fatalf("id %d: error about A's request: %v %v", id, r.v, r.code)
				}
				for _, bid := range []uint16{id, id + 1} {
					r := s.run(FromNet, icmpMsg(t, b, a, fam.req, bid, 1), t0)
					if r.v != Drop || r.code != reason.PolicyDenied {
						t.Fatalf("A pinged with id %d; B's request with id %d: %v %v, want policy-denied", id, bid, r.v, r.code)
					}
				}
			}
			// A's allowed non-echo ICMP message (IPv4 timestamp
			// request) is a flow of both ports 0: B's echo request of
			// identifier 0 is not part of it.
			if fam.ts != 0 {
				s := newSide(t, "n", pingOneWay, map[string]string{"app": "a"}, MidStreamDrop, flow.Config{})
				if r := s.run(FromApp, icmpMsg(t, fam.a, fam.b, fam.ts, 7, 0), t0); r.v != Forward {
					t.Fatalf("A's timestamp request: %v %v", r.v, r.code)
				}
				if r := s.run(FromNet, icmpMsg(t, fam.b, fam.a, fam.req, 0, 1), t0); r.v != Drop || r.code != reason.PolicyDenied {
					t.Fatalf("B's request of id 0 after A's timestamp request: %v %v, want policy-denied", r.v, r.code)
				}
			}
		})
	}
}

// TestEchoRestore: a ping flow restored from the kernel's authorized set
// (the PU's side of the element: A:id -> B:0) takes A's requests and B's
// replies, not B's requests.
func TestEchoRestore(t *testing.T) {
	s := newSide(t, "n", pingOneWay, map[string]string{"app": "a"}, MidStreamDrop, flow.Config{})
	if !s.e.Restore(s.pu, 1, netip.AddrPortFrom(cIP, 0x1234), netip.AddrPortFrom(sIP, 0), t0) {
		t.Fatal("restore")
	}
	if r := s.run(FromNet, icmpMsg(t, sIP, cIP, 0, 0x1234, 1), t0); r.v != Forward || len(r.notes) != 0 {
		t.Fatalf("B's reply on the restored flow: %v %v %v", r.v, r.code, r.notes)
	}
	if r := s.run(FromNet, icmpMsg(t, sIP, cIP, 8, 0x1234, 1), t0); r.v != Drop || r.code != reason.PolicyDenied {
		t.Fatalf("B's request: %v %v, want policy-denied", r.v, r.code)
	}
}

// icmpMsg6or4Error builds an ICMP error (IPv4 or ICMPv6, by the
// addresses) quoting quoted.
func icmpMsg6or4Error(t *testing.T, src, dst netip.Addr, typ, code uint8, quoted []byte) []byte {
	if src.Is4() {
		return icmpErrorFrame(t, src, dst, typ, code, quoted)
	}
	eth := &layers.Ethernet{SrcMAC: cMAC, DstMAC: sMAC, EthernetType: layers.EthernetTypeIPv6}
	ip := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolICMPv6, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
	icmp := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(typ, code)}
	_ = icmp.SetNetworkLayerForChecksum(ip)
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		eth, ip, icmp, gopacket.Payload(append([]byte{0, 0, 0, 0}, quoted...))); err != nil {
		t.Fatal(err)
	}
	return bytes.Clone(buf.Bytes())
}
