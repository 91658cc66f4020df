package pcapio

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/trireme-go/trireme/dataplane/fixtures"
)

// rec is one record of a crafted pcap file.
type rec struct {
	sec, frac       uint32
	caplen, wirelen uint32 // 0: len(data)
	data            []byte
}

// header describes a crafted pcap file header.
type header struct {
	order        binary.ByteOrder
	magic        uint32
	major, minor uint16
	snaplen      uint32
	link         uint32
	extra        int // bytes after each record header (the modified format: 8)
}

var le = header{order: binary.LittleEndian, magic: magicMicro, major: 2, minor: 4, snaplen: 65535, link: 1}

func (h header) with(f func(*header)) header { f(&h); return h }

func pcapBytes(h header, recs ...rec) []byte {
	var b bytes.Buffer
	w := func(v any) { binary.Write(&b, h.order, v) }
	w(h.magic)
	w(h.major)
	w(h.minor)
	w(uint32(0)) // thiszone
	w(uint32(0)) // sigfigs
	w(h.snaplen)
	w(h.link)
	for _, r := range recs {
		caplen, wirelen := r.caplen, r.wirelen
		if caplen == 0 {
			caplen = uint32(len(r.data))
		}
		if wirelen == 0 {
			wirelen = uint32(len(r.data))
		}
		w(r.sec)
		w(r.frac)
		w(caplen)
		w(wirelen)
		b.Write(make([]byte, h.extra))
		b.Write(r.data)
	}
	return b.Bytes()
}

// eth is an Ethernet frame of n bytes whose bytes count up from seed.
func eth(n int, seed byte) []byte {
	f := make([]byte, n)
	for i := range f {
		f[i] = seed + byte(i)
	}
	return f
}

type want struct {
	frame           []byte
	t               time.Time
	caplen, wirelen int
}

// TestReaderCases: what libpcap (tcpdump) reads, pcapio reads: both byte
// orders, micro- and nanosecond files, the modified format, a snapshot
// length of 0, records longer than the snapshot length; and the named
// errors for what it does not.
func TestReaderCases(t *testing.T) {
	f60, f100, f1500 := eth(60, 1), eth(100, 2), eth(1500, 3)
	ip4 := []byte{0x45, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2}
	ts := func(sec, ns int64) time.Time { return time.Unix(sec, ns).UTC() }
	gz := func(b []byte) []byte {
		var out bytes.Buffer
		zw := gzip.NewWriter(&out)
		zw.Write(b)
		zw.Close()
		return out.Bytes()
	}
	two := []rec{{sec: 1700000000, frac: 123456, data: f60}, {sec: 1700000001, frac: 999999, data: f1500}}
	twoWant := []want{{f60, ts(1700000000, 123456000), 60, 60}, {f1500, ts(1700000001, 999999000), 1500, 1500}}
	cases := []struct {
		name string
		file []byte
		want []want
		err  error // after the packets of want
	}{
		{"microseconds, little-endian", pcapBytes(le, two...), twoWant, nil},
		{"microseconds, big-endian", pcapBytes(le.with(func(h *header) { h.order = binary.BigEndian }), two...), twoWant, nil},
		{"nanoseconds, little-endian", pcapBytes(le.with(func(h *header) { h.magic = magicNano }),
			rec{sec: 5, frac: 999999999, data: f60}), []want{{f60, ts(5, 999999999), 60, 60}}, nil},
		{"nanoseconds, big-endian", pcapBytes(le.with(func(h *header) { h.magic, h.order = magicNano, binary.BigEndian }),
			rec{sec: 5, frac: 1, data: f100}), []want{{f100, ts(5, 1), 100, 100}}, nil},
		{"modified (Kuznetzov) format", pcapBytes(le.with(func(h *header) { h.magic, h.extra = magicModified, 8 }), two...), twoWant, nil},
		{"snaplen 0", pcapBytes(le.with(func(h *header) { h.snaplen = 0 }), two...), twoWant, nil},
		{"caplen > snaplen: read whole", pcapBytes(le.with(func(h *header) { h.snaplen = 64 }), two...), twoWant, nil},
		{"snaplen over the maximum", pcapBytes(le.with(func(h *header) { h.snaplen = 1 << 31 }), two...), twoWant, nil},
		{"caplen < wire length (snapped)", pcapBytes(le, rec{sec: 1, data: f60, wirelen: 1514}), []want{{f60, ts(1, 0), 60, 1514}}, nil},
		{"caplen > wire length", pcapBytes(le, rec{sec: 1, data: f60, wirelen: 40}), []want{{f60, ts(1, 0), 60, 40}}, nil},
		{"version 2.2", pcapBytes(le.with(func(h *header) { h.minor = 2 }), two...), twoWant, nil},
		{"link type with FCS length bits", pcapBytes(le.with(func(h *header) { h.link = 0x14000001 }), two...), twoWant, nil},
		{"raw IPv4 (101)", pcapBytes(le.with(func(h *header) { h.link = 101 }), rec{sec: 1, data: ip4}),
			[]want{{append([]byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0}, ip4...), ts(1, 0), 20, 20}}, nil},
		{"gzip-compressed", gz(pcapBytes(le, two...)), twoWant, nil},
		{"no record", pcapBytes(le), nil, nil},
		{"caplen over the maximum", pcapBytes(le, rec{sec: 1, data: f60}, rec{sec: 2, caplen: MaxCaptureLen + 1, data: f60}),
			[]want{{f60, ts(1, 0), 60, 60}}, ErrCaptureLen},
		{"truncated in a record header", pcapBytes(le, two...)[:24+16+60+10], twoWant[:1], ErrTruncated},
		{"truncated in a record's data", pcapBytes(le, two...)[:24+16+60+16+700], twoWant[:1], ErrTruncated},
		{"truncated in the only record", pcapBytes(le, two...)[:24+16+59], nil, ErrTruncated},
		{"unsupported link type", pcapBytes(le.with(func(h *header) { h.link = 127 }), two...), nil, ErrLinkType},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r, err := NewReader(bytes.NewReader(c.file))
			if err != nil {
				t.Fatal(err)
			}
			for i, w := range c.want {
				p, err := r.Next()
				if err != nil {
					t.Fatalf("packet %d: %v", i+1, err)
				}
				if !bytes.Equal(p.Frame, w.frame) || !p.Time.Equal(w.t) || p.CaptureLen != w.caplen || p.WireLen != w.wirelen {
					t.Fatalf("packet %d: %v caplen %d wirelen %d %x, want %v %d %d %x", i+1, p.Time, p.CaptureLen, p.WireLen, p.Frame, w.t, w.caplen, w.wirelen, w.frame)
				}
			}
			_, err = r.Next()
			switch {
			case c.err == nil && err != io.EOF:
				t.Fatalf("end: %v, want EOF", err)
			case c.err != nil && !errors.Is(err, c.err):
				t.Fatalf("end: %v, want %v", err, c.err)
			}
		})
	}
}

// TestReaderRejects: headers that are no capture libpcap reads.
func TestReaderRejects(t *testing.T) {
	cases := map[string][]byte{
		"empty":            nil,
		"short header":     pcapBytes(le)[:20],
		"unknown magic":    pcapBytes(le.with(func(h *header) { h.magic = 0x12345678 })),
		"version 1.0":      pcapBytes(le.with(func(h *header) { h.major, h.minor = 1, 0 })),
		"version 2.5":      pcapBytes(le.with(func(h *header) { h.minor = 5 })),
		"version 3.0":      pcapBytes(le.with(func(h *header) { h.major = 3 })),
		"gzip of junk":     {0x1f, 0x8b, 1, 2, 3},
		"pcapng too short": {0x0a, 0x0d, 0x0d, 0x0a, 0, 0},
	}
	for name, b := range cases {
		if _, err := NewReader(bytes.NewReader(b)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestNextShared: the shared frame is the same bytes as Next's, and Next's
// frames stay the caller's after later reads.
func TestNextShared(t *testing.T) {
	file := pcapBytes(le, rec{sec: 1, data: eth(60, 1)}, rec{sec: 2, data: eth(60, 9)}, rec{sec: 3, data: eth(70000, 5)})
	r, _ := NewReader(bytes.NewReader(file))
	first, _ := r.Next()
	keep := bytes.Clone(first.Frame)
	s, err := r.NextShared()
	if err != nil || !bytes.Equal(s.Frame, eth(60, 9)) {
		t.Fatalf("shared: %v %x", err, s.Frame)
	}
	// A record larger than the read buffer.
	s, err = r.NextShared()
	if err != nil || !bytes.Equal(s.Frame, eth(70000, 5)) {
		t.Fatalf("large record: %v %d", err, len(s.Frame))
	}
	if !bytes.Equal(first.Frame, keep) {
		t.Fatal("Next's frame changed by later reads")
	}
	if r.Count() != 3 {
		t.Fatalf("count %d", r.Count())
	}
}

// FuzzReader: any bytes, as a capture: no panic, no frame longer than a
// record may be, reading ends.
func FuzzReader(f *testing.F) {
	f.Add(pcapBytes(le, rec{sec: 1, data: eth(60, 1)}))
	f.Add(pcapBytes(le.with(func(h *header) { h.magic, h.order = magicNano, binary.BigEndian }), rec{sec: 1, data: eth(60, 1)}))
	f.Add(pcapBytes(le.with(func(h *header) { h.magic, h.extra = magicModified, 8 }), rec{sec: 1, data: eth(60, 1)}))
	f.Add(pcapBytes(le.with(func(h *header) { h.link = 113 }), rec{sec: 1, data: eth(40, 1)}))
	if dir, err := fixtures.PcapDir(); err == nil {
		for _, name := range []string{"zeek-tcp-http-missing-syn.pcapng", "zeek-vlan-pcp-dei.pcapng", "tcpdump-tcp-handshake-nano-sll.pcap"} {
			if b, err := os.ReadFile(filepath.Join(dir, name)); err == nil {
				f.Add(b)
			}
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := NewReader(bytes.NewReader(b))
		if err != nil {
			return
		}
		for range 1000 {
			p, err := r.NextShared()
			if errors.Is(err, ErrLinkType) {
				continue
			}
			if err != nil {
				return
			}
			if len(p.Frame) > MaxCaptureLen+ethHeaderBytes {
				t.Fatalf("frame of %d bytes", len(p.Frame))
			}
		}
	})
}
