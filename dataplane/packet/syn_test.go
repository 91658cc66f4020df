package packet

import (
	"bytes"
	"net"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/trireme-go/trireme/dataplane/fixtures"
	"github.com/trireme-go/trireme/ipproto"
	"github.com/trireme-go/trireme/reason"
)

func synFrame(t testing.TB, v6 bool, opts []layers.TCPOption, data []byte) []byte {
	eth := &layers.Ethernet{SrcMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, DstMAC: net.HardwareAddr{2, 0, 0, 0, 0, 2}, EthernetType: layers.EthernetTypeIPv4}
	tcp := &layers.TCP{SrcPort: 40000, DstPort: 80, Seq: 7, SYN: true, Window: 65535, Options: opts}
	var ip gopacket.SerializableLayer
	if v6 {
		eth.EthernetType = layers.EthernetTypeIPv6
		ip6 := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolTCP, SrcIP: net.ParseIP("fd00::1"), DstIP: net.ParseIP("fd00::2")}
		tcp.SetNetworkLayerForChecksum(ip6)
		ip = ip6
	} else {
		ip4 := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: net.IP{10, 0, 0, 1}, DstIP: net.IP{10, 0, 0, 2}}
		tcp.SetNetworkLayerForChecksum(ip4)
		ip = ip4
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ip, tcp, gopacket.Payload(data)); err != nil {
		t.Fatal(err)
	}
	return bytes.Clone(buf.Bytes())
}

var (
	optMSS  = layers.TCPOption{OptionType: layers.TCPOptionKindMSS, OptionLength: 4, OptionData: []byte{5, 0xb4}}
	optWS   = layers.TCPOption{OptionType: layers.TCPOptionKindWindowScale, OptionLength: 3, OptionData: []byte{9}}
	tcpNOP  = layers.TCPOption{OptionType: layers.TCPOptionKindNop}
	optTFO  = layers.TCPOption{OptionType: 34, OptionLength: 10, OptionData: []byte{1, 2, 3, 4, 5, 6, 7, 8}}
	optTFOx = layers.TCPOption{OptionType: 254, OptionLength: 4, OptionData: []byte{0xf9, 0x89}} // experimental cookie request
	optExp  = layers.TCPOption{OptionType: 254, OptionLength: 4, OptionData: []byte{0x74, 0x72}} // another experiment: kept
)

// TestStripSYNData: the payload and the Fast Open options go, everything
// else stays; lengths and checksums stay right (v4 and v6, odd and even
// payloads, link padding kept).
func TestStripSYNData(t *testing.T) {
	cases := []struct {
		name string
		v6   bool
		opts []layers.TCPOption
		data int
		keep []byte // option bytes expected after the strip
	}{
		{"TFO cookie and data", false, []layers.TCPOption{optMSS, optTFO, tcpNOP, tcpNOP}, 301,
			[]byte{2, 4, 5, 0xb4, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1}},
		{"experimental cookie request, no data", false, []layers.TCPOption{optMSS, optTFOx}, 0,
			[]byte{2, 4, 5, 0xb4, 1, 1, 1, 1}},
		{"plain SYN data, v6", true, []layers.TCPOption{optMSS, optWS, tcpNOP}, 1200,
			[]byte{2, 4, 5, 0xb4, 3, 3, 9, 1}},
		{"other experiment kept, tiny data", false, []layers.TCPOption{optExp, optTFO, tcpNOP, tcpNOP}, 1,
			[]byte{254, 4, 0x74, 0x72, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1}},
	}
	for _, tc := range cases {
		f := synFrame(t, tc.v6, tc.opts, bytes.Repeat([]byte{0xa5}, tc.data))
		f = append(f, 0xee, 0xee) // link-layer trailer
		var p Packet
		if p.Decode(f) != reason.None {
			t.Fatalf("%s: parse", tc.name)
		}
		out, n := StripSYNData(&p)
		if n != tc.data {
			t.Fatalf("%s: removed %d bytes, want %d", tc.name, n, tc.data)
		}
		var q Packet
		if q.Decode(out) != reason.None || q.PayloadLen() != 0 || !VerifyTCPChecksum(&q) || !VerifyIPv4Checksum(&q) {
			t.Fatalf("%s: result %x does not parse or has bad checksums", tc.name, out)
		}
		if got := out[q.L4+20 : q.Payload]; !bytes.Equal(got, tc.keep) {
			t.Fatalf("%s: options %x, want %x", tc.name, got, tc.keep)
		}
		if !bytes.Equal(out[len(out)-2:], []byte{0xee, 0xee}) || p.End != q.End || len(out) != q.End+2 {
			t.Fatalf("%s: trailer lost or lengths off", tc.name)
		}
	}
	// A SYN without data or Fast Open option is left as it is.
	f := synFrame(t, false, []layers.TCPOption{optMSS, optWS, tcpNOP}, nil)
	orig := bytes.Clone(f)
	var p Packet
	p.Decode(f)
	if out, n := StripSYNData(&p); n != 0 || !bytes.Equal(out, orig) {
		t.Fatal("plain SYN changed")
	}
	if sh, ok := WindowScale(&p); !ok || sh != 9 {
		t.Fatalf("window scale %d %v", sh, ok)
	}
	f = synFrame(t, false, []layers.TCPOption{optMSS, {OptionType: layers.TCPOptionKindWindowScale, OptionLength: 3, OptionData: []byte{30}}, tcpNOP}, nil)
	p.Decode(f)
	if sh, _ := WindowScale(&p); sh != 14 {
		t.Fatalf("window scale %d, want the RFC 7323 cap 14", sh)
	}
}

// TestFragmentOffset: the parser reports where a later fragment starts.
func TestFragmentOffset(t *testing.T) {
	dir, err := fixtures.PcapDir()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		file string
		idx  int
		off  int
	}{
		{"suricata-ipv4frags-icmp.pcap", 2, 976},
		{"zeek-ipv6-fragmented-dns.pcap", 4, 2896},
	} {
		var p Packet
		if p.Decode(readAll(t, dir+"/"+c.file)[c.idx-1]) != reason.None || p.Frag != LaterFragment || p.FragOff != c.off {
			t.Fatalf("%s #%d: frag %v offset %d, want %d", c.file, c.idx, p.Frag, p.FragOff, c.off)
		}
	}
}

// FuzzStripSYNData: any frame that parses as a SYN survives the strip: no
// panic, the result parses, its payload is gone, and checksums that were
// right stay right.
func FuzzStripSYNData(f *testing.F) {
	f.Add(synFrame(f, false, []layers.TCPOption{optMSS, optTFO, tcpNOP, tcpNOP}, []byte("hello")))
	f.Add(synFrame(f, true, []layers.TCPOption{optTFOx}, []byte("x")))
	f.Add(synFrame(f, false, []layers.TCPOption{optExp}, nil))
	f.Fuzz(func(t *testing.T, frame []byte) {
		var p Packet
		if p.Decode(frame) != reason.None || p.Proto != ipproto.TCP || p.Frag != NotFragment || p.Flags&SYN == 0 {
			return
		}
		okTCP, okIP := VerifyTCPChecksum(&p), VerifyIPv4Checksum(&p)
		out, _ := StripSYNData(&p)
		var q Packet
		if q.Decode(out) != reason.None {
			return // options gopacket rejects (the strip only writes NOPs)
		}
		if q.PayloadLen() != 0 || q.End != p.End {
			t.Fatalf("payload left: %d", q.PayloadLen())
		}
		if okTCP && !VerifyTCPChecksum(&q) || okIP && !VerifyIPv4Checksum(&q) {
			t.Fatalf("checksum broken: %x", out)
		}
	})
}
