package packet

import (
	"bytes"
	"encoding/hex"
	"net/netip"
	"path/filepath"
	"testing"

	"github.com/trireme-go/trireme/dataplane/fixtures"
	"github.com/trireme-go/trireme/dataplane/pcapio"
	"github.com/trireme-go/trireme/ipproto"
	"github.com/trireme-go/trireme/reason"
)

var testMarker = [4]byte{253, 4, 0x74, 0x72}

func readAll(t testing.TB, path string) [][]byte {
	t.Helper()
	ps, err := pcapio.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out := make([][]byte, len(ps))
	for i := range ps {
		out[i] = ps[i].Frame
	}
	return out
}

// Every TCP segment of every capture survives insert+strip byte for byte,
// with tokens of odd and even lengths, and keeps its checksums' validity.
func TestInsertStripRoundTripAllCaptures(t *testing.T) {
	files, err := fixtures.Captures()
	if err != nil {
		t.Fatal(err)
	}
	tokens := [][]byte{{}, {1}, {1, 2}, bytes.Repeat([]byte{0xa5, 0x17, 0x3c}, 101), bytes.Repeat([]byte{0xff}, 500)}
	total := 0
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			for i, frame := range readAll(t, f) {
				var p Packet
				if p.Decode(frame) != reason.None || p.Proto != ipproto.TCP || p.Frag != NotFragment {
					continue
				}
				ckOK, ipOK := VerifyTCPChecksum(&p), VerifyIPv4Checksum(&p)
				for _, tok := range tokens {
					orig := bytes.Clone(frame)
					ins, code := InsertToken(nil, &p, testMarker, tok, 0)
					if code == reason.NoRoomForToken {
						if p.TCPHeaderLen()-20+4 <= MaxTCPOptions {
							t.Fatalf("packet %d: no room with %d option bytes", i+1, p.TCPHeaderLen()-20)
						}
						continue
					}
					if code != reason.None {
						t.Fatalf("packet %d: insert: %v", i+1, code)
					}
					var q Packet
					if c := q.Decode(ins); c != reason.None {
						t.Fatalf("packet %d: inserted frame does not parse: %v", i+1, c)
					}
					if VerifyTCPChecksum(&q) != ckOK || VerifyIPv4Checksum(&q) != ipOK {
						t.Fatalf("packet %d token %d: checksum validity changed", i+1, len(tok))
					}
					if q.PayloadLen() != p.PayloadLen()+len(tok) || !bytes.Equal(q.Frame[q.Payload:q.Payload+len(tok)], tok) {
						t.Fatalf("packet %d: token not at payload start", i+1)
					}
					off, ok := FindOption(&q, testMarker)
					if !ok || off != q.L4+20 {
						t.Fatalf("packet %d: marker not found first (%d %v)", i+1, off, ok)
					}
					out, code := StripToken(&q, off, len(tok))
					if code != reason.None || !bytes.Equal(out, orig) {
						t.Fatalf("packet %d token %d: strip(insert(x)) != x\n got %x\nwant %x", i+1, len(tok), out, orig)
					}
					total++
				}
			}
		})
	}
	if total < 300 {
		t.Fatalf("only %d round trips: captures missing?", total)
	}
}

func TestParseCaptures(t *testing.T) {
	dir, err := fixtures.PcapDir()
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		file  string
		idx   int // 1-based
		want  reason.Code
		check func(t *testing.T, p *Packet)
	}{
		{"zeek-vlan-pcp-dei.pcapng", 1, reason.None, func(t *testing.T, p *Packet) {
			if p.VLAN != [2]uint16{10, 20} || p.DstPort != 80 || p.Flags != SYN {
				t.Fatalf("QinQ: %+v", p.VLAN)
			}
		}},
		{"zeek-vlan-pcp-dei.pcapng", 2, reason.None, func(t *testing.T, p *Packet) {
			if p.VLAN != [2]uint16{20, 0} {
				t.Fatalf("single tag: %v", p.VLAN)
			}
		}},
		{"zeek-http-vlan-0.pcap", 1, reason.None, func(t *testing.T, p *Packet) {
			if p.VLAN != [2]uint16{} || p.Flags != SYN {
				t.Fatalf("priority tag must count as untagged: %v", p.VLAN)
			}
		}},
		{"zeek-trunc-ip4-trunc.pcap", 1, reason.Malformed, nil},
		{"zeek-tcp-reassembly.pcap", 7, reason.Malformed, nil}, // shorter than its IP length
		{"zeek-icmp_dot1q.pcap", 1, reason.None, func(t *testing.T, p *Packet) {
			if !p.ARP || p.VLAN[0] != 123 {
				t.Fatal("ARP in VLAN 123")
			}
		}},
		{"zeek-ipv6-fragmented-dns.pcap", 4, reason.None, func(t *testing.T, p *Packet) {
			if p.Frag != LaterFragment || p.FragID != 1 || p.Proto != ipproto.UDP {
				t.Fatalf("lone later fragment: %+v", p)
			}
		}},
		{"zeek-ipv6-fragmented-dns.pcap", 6, reason.None, func(t *testing.T, p *Packet) {
			if p.Frag != FirstFragment || p.FragID != 2 || p.SrcPort != 53 {
				t.Fatalf("first fragment: frag=%v id=%d sport=%d", p.Frag, p.FragID, p.SrcPort)
			}
		}},
		{"suricata-ipv4frags-icmp.pcap", 2, reason.None, func(t *testing.T, p *Packet) {
			if p.Frag != LaterFragment || p.FragID != 46544 {
				t.Fatalf("later fragment: %+v", p)
			}
		}},
		{"zeek-icmp-ping.pcap", 1, reason.None, func(t *testing.T, p *Packet) {
			// The requester's side holds the id, the responder's 0.
			if !p.IsEcho() || !p.IsEchoRequest() || p.SrcPort != 34844 || p.DstPort != 0 {
				t.Fatalf("echo request: request %v ports %d -> %d", p.IsEchoRequest(), p.SrcPort, p.DstPort)
			}
		}},
		{"zeek-icmp-ping.pcap", 2, reason.None, func(t *testing.T, p *Packet) {
			if !p.IsEcho() || p.IsEchoRequest() || p.SrcPort != 0 || p.DstPort != 34844 {
				t.Fatalf("echo reply: request %v ports %d -> %d", p.IsEchoRequest(), p.SrcPort, p.DstPort)
			}
		}},
		{"zeek-port4242-ipv6.pcap", 1, reason.None, func(t *testing.T, p *Packet) {
			if !p.IPv6 || p.Dst != netip.MustParseAddr("::1") || p.DstPort != 4242 {
				t.Fatalf("ipv6: %+v", p)
			}
		}},
	}
	for _, c := range cases {
		frames := readAll(t, filepath.Join(dir, c.file))
		var p Packet
		if got := p.Decode(frames[c.idx-1]); got != c.want {
			t.Fatalf("%s #%d: got %v want %v", c.file, c.idx, got, c.want)
		}
		if c.check != nil {
			c.check(t, &p)
		}
	}
}

func TestBuildTCP(t *testing.T) {
	dir, err := fixtures.PcapDir()
	if err != nil {
		t.Fatal(err)
	}
	for _, file := range []string{"zeek-http-get.pcap", "zeek-port4242-ipv6.pcap", "zeek-vlan-pcp-dei.pcapng"} {
		var p Packet
		if p.Decode(readAll(t, filepath.Join(dir, file))[0]) != reason.None {
			t.Fatal(file)
		}
		src, dst := p.Src, p.Dst
		sp, dp, vlan := p.SrcPort, p.DstPort, p.VLAN
		f := BuildTCP(nil, &p, &Segment{Reverse: true, Flags: RST | ACK, Ack: p.Seq + 1, Options: testMarker[:], Payload: []byte{1, 2, 3}})
		var q Packet
		if c := q.Decode(f); c != reason.None {
			t.Fatalf("%s: %v", file, c)
		}
		if q.Src != dst || q.Dst != src || q.SrcPort != dp || q.DstPort != sp || q.VLAN != vlan ||
			q.Flags != RST|ACK || q.Ack != p.Seq+1 || !VerifyTCPChecksum(&q) || !VerifyIPv4Checksum(&q) || q.PayloadLen() != 3 {
			t.Fatalf("%s: built %+v", file, q)
		}
		if _, ok := FindOption(&q, testMarker); !ok {
			t.Fatal("marker missing")
		}
	}
}

func TestParseDoesNotAllocate(t *testing.T) {
	dir, err := fixtures.PcapDir()
	if err != nil {
		t.Fatal(err)
	}
	frame := readAll(t, filepath.Join(dir, "zeek-http-get.pcap"))[5]
	var p Packet
	if n := testing.AllocsPerRun(100, func() { p.Decode(frame) }); n != 0 {
		t.Fatalf("%v allocs", n)
	}
}

func FuzzParseMangle(f *testing.F) {
	files, _ := fixtures.Captures()
	for _, file := range files {
		for i, fr := range readAll(f, file) {
			if i < 4 {
				f.Add(fr)
			}
		}
	}
	f.Fuzz(func(t *testing.T, frame []byte) {
		var p Packet
		if p.Decode(frame) != reason.None || p.ARP {
			return
		}
		if p.L3 > p.L4 || p.L4 > p.Payload || p.Payload > p.End || p.End > len(frame) {
			t.Fatalf("offsets out of order: %+v", p)
		}
		if p.Proto != ipproto.TCP || p.Frag != NotFragment {
			return
		}
		orig := bytes.Clone(frame)
		ins, code := InsertToken(nil, &p, testMarker, []byte{9, 8, 7}, 0)
		if code != reason.None {
			return
		}
		var q Packet
		if q.Decode(ins) != reason.None {
			return // e.g. options that gopacket rejects once shifted
		}
		off, ok := FindOption(&q, testMarker)
		if !ok {
			return
		}
		out, code := StripToken(&q, off, 3)
		if code != reason.None || off != q.L4+20 {
			return
		}
		// The documented corner: a stored 0xFFFF checksum (never a correct
		// one) comes back as 0x0000.
		for _, at := range []int{p.L4 + 16, p.L3 + 10} {
			if !p.IPv6 || at == p.L4+16 {
				if orig[at] == 0xff && orig[at+1] == 0xff && out[at] == 0 && out[at+1] == 0 {
					out[at], out[at+1] = 0xff, 0xff
				}
			}
		}
		if !bytes.Equal(out, orig) {
			t.Fatalf("round trip differs\n got %x\nwant %x", out, orig)
		}
	})
}

func BenchmarkParse(b *testing.B) {
	dir, err := fixtures.PcapDir()
	if err != nil {
		b.Fatal(err)
	}
	frame := readAll(b, filepath.Join(dir, "zeek-http-get.pcap"))[5]
	var p Packet
	b.ReportAllocs()
	for b.Loop() {
		p.Decode(frame)
	}
}

// TestChecksumZeroForms pins the one documented corner of incremental
// updates: ones' complement has two zeros, so a stored 0xFFFF (which no
// correct checksum can be) comes back as 0x0000; every other value,
// including 0x0000, comes back as it was.
func TestChecksumZeroForms(t *testing.T) {
	dir, err := fixtures.PcapDir()
	if err != nil {
		t.Fatal(err)
	}
	frame := readAll(t, filepath.Join(dir, "zeek-http-get.pcap"))[0]
	for _, ck := range []uint16{0x0000, 0x0001, 0x7fff, 0xfffe, 0xffff} {
		for _, tok := range [][]byte{{1, 2}, {1, 2, 3}} {
			f := bytes.Clone(frame)
			var p Packet
			p.Decode(f)
			f[p.L4+16], f[p.L4+17] = byte(ck>>8), byte(ck)
			ins, _ := InsertToken(nil, &p, testMarker, tok, 0)
			var q Packet
			q.Decode(ins)
			off, _ := FindOption(&q, testMarker)
			out, _ := StripToken(&q, off, len(tok))
			got := uint16(out[p.L4+16])<<8 | uint16(out[p.L4+17])
			want := ck
			if ck == 0xffff {
				want = 0
			}
			if got != want || !bytes.Equal(out[:p.L4+16], f[:p.L4+16]) || !bytes.Equal(out[p.L4+18:], f[p.L4+18:]) {
				t.Fatalf("checksum %#04x token %d: came back %#04x", ck, len(tok), got)
			}
		}
	}
}

// TestParseIPv6HopByHop: IPv6 packets with a hop-by-hop header (here an MLDv2
// report, as every PU sends when its IPv6 comes up) are whole packets, not
// truncated ones; cut short, they are malformed.
func TestParseIPv6HopByHop(t *testing.T) {
	mld, _ := hex.DecodeString("3333000000168a67340a691486dd6000000000240001" +
		"00000000000000000000000000000000" + "ff020000000000000000000000000016" + // :: -> ff02::16
		"3a00050200000100" + // hop-by-hop: next ICMPv6, router alert, PadN
		"8f000000000000010400000" + "0ff0200000000000000000001ff0a6914") // MLDv2 report, one record
	tests := []struct {
		name  string
		frame []byte
		want  reason.Code
	}{
		{"whole", mld, reason.None},
		{"cut in the ICMPv6 message", mld[:len(mld)-10], reason.Malformed},
		{"cut in the hop-by-hop header", mld[:14+40+4], reason.Malformed},
	}
	for _, tt := range tests {
		var p Packet
		if got := p.Decode(tt.frame); got != tt.want {
			t.Errorf("%s: %v, want %v", tt.name, got, tt.want)
			continue
		}
		if tt.want == reason.None && (p.Proto != ipproto.ICMPv6 || p.ICMPType != 143 || p.L4 != 14+40+8 || p.End != len(mld)) {
			t.Errorf("%s: proto %d type %d L4 %d End %d", tt.name, p.Proto, p.ICMPType, p.L4, p.End)
		}
	}
}
