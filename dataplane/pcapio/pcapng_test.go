package pcapio

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
	"time"
)

// ngFile builds pcapng blocks in one byte order.
type ngFile struct {
	order binary.ByteOrder
	b     bytes.Buffer
}

func (f *ngFile) block(typ uint32, body []byte) *ngFile {
	for len(body)%4 != 0 {
		body = append(body, 0)
	}
	n := uint32(12 + len(body))
	binary.Write(&f.b, f.order, typ)
	binary.Write(&f.b, f.order, n)
	f.b.Write(body)
	binary.Write(&f.b, f.order, n)
	return f
}

func (f *ngFile) put(vs ...any) []byte {
	var b bytes.Buffer
	for _, v := range vs {
		switch v := v.(type) {
		case []byte:
			b.Write(v)
		default:
			binary.Write(&b, f.order, v)
		}
	}
	return b.Bytes()
}

func (f *ngFile) shb() *ngFile {
	return f.block(ngSectionHeader, f.put(uint32(ngByteOrderMagic), uint16(1), uint16(0), int64(-1)))
}

// idb adds an interface; opts are raw option bytes (code, length, value).
func (f *ngFile) idb(link uint16, snaplen uint32, opts ...[]byte) *ngFile {
	body := f.put(link, uint16(0), snaplen)
	for _, o := range opts {
		body = append(body, o...)
	}
	return f.block(ngInterface, body)
}

func (f *ngFile) opt(code uint16, v []byte) []byte {
	b := f.put(code, uint16(len(v)), v)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

func (f *ngFile) epb(iface uint32, ts uint64, data []byte, wirelen uint32) *ngFile {
	return f.block(ngEnhancedPacket, f.put(iface, uint32(ts>>32), uint32(ts), uint32(len(data)), wirelen, data))
}

func ngNew(order binary.ByteOrder) *ngFile { return &ngFile{order: order} }

// TestPcapngCases: pcapng as libpcap reads it: both byte orders, the
// timestamp resolutions, several interfaces of their own link types,
// simple packet blocks, blocks to skip; and errors for lengths that do not
// fit their block and for truncated files.
func TestPcapngCases(t *testing.T) {
	f60, f100 := eth(60, 1), eth(100, 7)
	ip4 := []byte{0x45, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2}
	le, be := binary.LittleEndian, binary.BigEndian
	us := uint64(1700000000_123456)
	cases := []struct {
		name string
		file []byte
		want []want
		err  error
	}{
		{"little-endian, microseconds", ngNew(le).shb().idb(1, 0).epb(0, us, f60, 60).b.Bytes(),
			[]want{{f60, time.Unix(1700000000, 123456000).UTC(), 60, 60}}, nil},
		{"big-endian", ngNew(be).shb().idb(1, 65535).epb(0, us, f60, 1514).b.Bytes(),
			[]want{{f60, time.Unix(1700000000, 123456000).UTC(), 60, 1514}}, nil},
		{"nanoseconds (if_tsresol 9) and an offset", func() []byte {
			f := ngNew(le)
			return f.shb().idb(1, 0, f.opt(ngOptTSResolution, []byte{9}), f.opt(ngOptTSOffset, f.put(int64(100))), f.put(uint32(0))).
				epb(0, 5_000000001, f60, 60).b.Bytes()
		}(), []want{{f60, time.Unix(105, 1).UTC(), 60, 60}}, nil},
		{"binary resolution 2^-10", func() []byte {
			f := ngNew(le)
			return f.shb().idb(1, 0, f.opt(ngOptTSResolution, []byte{0x80 | 10})).epb(0, 3*1024+512, f60, 60).b.Bytes()
		}(), []want{{f60, time.Unix(3, 500000000).UTC(), 60, 60}}, nil},
		{"two interfaces, raw IP on the second; other blocks skipped", func() []byte {
			f := ngNew(le)
			f.shb().idb(1, 0).idb(101, 0)
			f.block(5, f.put(uint32(0), uint32(0), uint32(0))) // interface statistics
			f.block(4, f.put(uint32(0)))                       // name resolution
			return f.epb(1, us, ip4, 20).epb(0, us, f100, 100).b.Bytes()
		}(), []want{{append(make([]byte, 12), append([]byte{8, 0}, ip4...)...), time.Unix(1700000000, 123456000).UTC(), 20, 20},
			{f100, time.Unix(1700000000, 123456000).UTC(), 100, 100}}, nil},
		{"simple packet block, cut to the snaplen", func() []byte {
			f := ngNew(le)
			return f.shb().idb(1, 64).block(ngSimplePacket, f.put(uint32(100), f100)).b.Bytes()
		}(), []want{{f100[:64], time.Time{}, 64, 100}}, nil},
		{"second section in the other byte order", func() []byte {
			a := ngNew(le).shb().idb(1, 0).epb(0, us, f60, 60).b.Bytes()
			return append(a, ngNew(be).shb().idb(1, 0).epb(0, us, f100, 100).b.Bytes()...)
		}(), []want{{f60, time.Unix(1700000000, 123456000).UTC(), 60, 60}, {f100, time.Unix(1700000000, 123456000).UTC(), 100, 100}}, nil},
		{"capture length beyond its block", func() []byte {
			f := ngNew(le)
			return f.shb().idb(1, 0).block(ngEnhancedPacket, f.put(uint32(0), uint32(0), uint32(0), uint32(4000), uint32(4000), f60)).b.Bytes()
		}(), nil, nil},
		{"packet of an undescribed interface", ngNew(le).shb().idb(1, 0).epb(3, us, f60, 60).b.Bytes(), nil, nil},
		{"truncated in a block", func() []byte {
			b := ngNew(le).shb().idb(1, 0).epb(0, us, f60, 60).epb(0, us, f100, 100).b.Bytes()
			return b[:len(b)-30]
		}(), []want{{f60, time.Unix(1700000000, 123456000).UTC(), 60, 60}}, ErrTruncated},
		{"truncated in a block header", func() []byte {
			b := ngNew(le).shb().idb(1, 0).epb(0, us, f60, 60).b.Bytes()
			return append(b, 6, 0, 0)
		}(), []want{{f60, time.Unix(1700000000, 123456000).UTC(), 60, 60}}, ErrTruncated},
		{"block length over 16 MiB", func() []byte {
			f := ngNew(le).shb().idb(1, 0)
			binary.Write(&f.b, le, uint32(6))
			binary.Write(&f.b, le, uint32(1<<30))
			return f.b.Bytes()
		}(), nil, nil},
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
			case c.err != nil && !errors.Is(err, c.err):
				t.Fatalf("end: %v, want %v", err, c.err)
			case c.err == nil && c.want == nil && (err == nil || err == io.EOF):
				t.Fatalf("end: %v, want an error", err) // the malformed files
			case c.err == nil && c.want != nil && err != io.EOF:
				t.Fatalf("end: %v, want EOF", err)
			}
		})
	}
}
