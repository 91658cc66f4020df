package dataplane

import (
	"bytes"
	"encoding/json"
	"io"
	"math"
	"net/netip"
	"reflect"
	"testing"
	"time"

	"github.com/trireme-go/trireme/ipproto"
)

// hostileStrings are PU names, tags and rule names a user or a peer's token
// can put in a record: every escaping rule of encoding/json.
var hostileStrings = []string{
	"",
	"web",
	`quo"te`,
	`back\slash`,
	"<script>alert(1)</script> & co",
	"ctl\x00\x01\x07\b\t\n\v\f\r\x1b\x1f\x7f",
	"bad utf8 \xff\xfe end",
	"cut rune \xe2\x82",
	"\xed\xa0\x80 surrogate",
	"line\u2028sep\u2029para",
	"héllo wörld ✓ 日本 \U0001F600",
	"\ufffd real replacement char",
	"app=web\"},\"action\":\"allow",
}

func recordTable() []Record {
	t0 := time.Date(2026, 11, 23, 12, 0, 0, 123456789, time.UTC)
	rule := &RuleInfo{Policy: "shop", Direction: "ingress", Index: 3, Name: "db-from-web", Action: "allow"}
	recs := []Record{
		{}, // the zero record: zero times, empty addresses
		{
			Time: t0, End: EndClosed, EndTime: t0.Add(time.Second), Proto: ipproto.TCP,
			Client: netip.MustParseAddrPort("10.0.0.1:40000"), Server: netip.MustParseAddrPort("10.0.0.2:5432"),
			Direction: "ingress", Local: PUInfo{ID: "db", Node: "node-a", Tags: []string{"app=db", "env=prod"}},
			Remote: PeerInfo{IP: netip.MustParseAddr("10.0.0.1"), Node: "node-b", Tags: []string{"app=web"}},
			Action: "allow", Reason: "none", Rule: rule, Observed: rule,
			PacketsOut: 10, PacketsIn: 12, BytesOut: 1500, BytesIn: math.MaxUint64,
		},
		{
			Time: t0.Add(-time.Hour * 24 * 365 * 30), End: EndDenied, EndTime: time.Unix(0, math.MaxInt64).UTC(), Proto: ipproto.UDP,
			Client: netip.MustParseAddrPort("[2001:db8::1]:53"), Server: netip.MustParseAddrPort("[::ffff:10.1.2.3]:65535"),
			VLAN: []uint16{100}, Direction: "egress", Local: PUInfo{ID: "x", Tags: []string{}},
			Remote: PeerInfo{IP: netip.MustParseAddr("2001:db8::1"), External: true, Tags: []string{}},
			Action: "deny", Reason: "policy-denied", Rule: &RuleInfo{Index: -1},
			MidStream: true, Restored: true, Count: 7,
		},
		{
			Time: time.Unix(0, math.MinInt64).UTC(), End: EndEstablished, Proto: ipproto.Proto(253), VLAN: []uint16{0, 4095},
			Client: netip.MustParseAddrPort("0.0.0.0:0"), Server: netip.AddrPortFrom(netip.IPv6Unspecified(), 1),
			Observed: &RuleInfo{Policy: "p", Direction: "egress", Action: "reject"},
		},
		{ // a time in another zone, as a caller outside the enforcer might give
			Time:    time.Date(2026, 1, 2, 3, 4, 5, 0, time.FixedZone("x", -(5*3600+30*60))),
			EndTime: time.Date(2026, 1, 2, 3, 4, 5, 1000, time.FixedZone("y", 23*3600+59*60)),
			Proto:   ipproto.ICMP,
		},
		{ // zones are free text (never in a flow key)
			Client: netip.MustParseAddrPort(`[fe80::1%eth0]:80`), Server: netip.AddrPortFrom(netip.MustParseAddr("fe80::2").WithZone(`a"<b>`), 9),
			Remote: PeerInfo{IP: netip.MustParseAddr("fe80::3").WithZone("\xff\n")},
		},
	}
	for _, s := range hostileStrings {
		recs = append(recs, Record{
			Time: t0, EndTime: t0, End: End(s), Direction: s, Action: s, Reason: s, Proto: ipproto.TCP,
			Local:  PUInfo{ID: s, Node: s, Tags: []string{s, "k=" + s}},
			Remote: PeerInfo{Node: s, Tags: []string{s}},
			Rule:   &RuleInfo{Policy: s, Direction: s, Name: s, Action: s},
		})
	}
	return recs
}

// TestRecordAppendJSON: the hand-written encoder writes what encoding/json
// writes (the flow log's format), byte for byte, and what it writes reads
// back as the same record.
func TestRecordAppendJSON(t *testing.T) {
	for i, r := range recordTable() {
		want, werr := json.Marshal(&r)
		got, gerr := r.AppendJSON([]byte("prefix"))
		if (werr == nil) != (gerr == nil) {
			t.Fatalf("record %d: error %v, encoding/json's %v", i, gerr, werr)
		}
		if werr != nil {
			if string(got) != "prefix" {
				t.Errorf("record %d: failed but appended %q", i, got)
			}
			continue
		}
		if !bytes.Equal(got[len("prefix"):], want) {
			t.Errorf("record %d:\n got %s\nwant %s", i, got[len("prefix"):], want)
		}
	}
}

// TestRecordAppendJSONTimeErrors: a time RFC 3339 cannot write fails as it
// does with encoding/json (the writer counts the record as dropped).
func TestRecordAppendJSONTimeErrors(t *testing.T) {
	for _, tm := range []time.Time{
		time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(-1, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(2026, 1, 1, 0, 0, 0, 0, time.FixedZone("z", 24*3600)),
	} {
		for _, r := range []Record{{Time: tm}, {EndTime: tm}} {
			if _, err := json.Marshal(&r); err == nil {
				t.Fatalf("encoding/json wrote %v", tm)
			}
			got, err := r.AppendJSON(nil)
			if err == nil || len(got) != 0 {
				t.Errorf("time %v: %q, %v; want an error and nothing appended", tm, got, err)
			}
		}
	}
}

// TestRecordAppendJSONNoAlloc: encoding a record into a buffer with room
// allocates nothing.
func TestRecordAppendJSONNoAlloc(t *testing.T) {
	recs := recordTable()
	r := &recs[1]
	buf := make([]byte, 0, 4096)
	if n := testing.AllocsPerRun(100, func() {
		buf, _ = r.AppendJSON(buf[:0])
	}); n != 0 {
		t.Errorf("%v allocations per record, want 0", n)
	}
}

// TestJSONLSinkFormat: the sink writes one encoding/json line per record.
func TestJSONLSinkFormat(t *testing.T) {
	var got, want bytes.Buffer
	s := NewJSONLSink(&got)
	enc := json.NewEncoder(&want)
	for _, r := range recordTable() {
		s.Record(&r)
		if err := enc.Encode(&r); err != nil {
			t.Fatal(err)
		}
	}
	if s.Err() != nil || got.String() != want.String() {
		t.Errorf("sink wrote (err %v)\n%s\nencoding/json\n%s", s.Err(), got.String(), want.String())
	}
}

func FuzzRecordAppendJSON(f *testing.F) {
	for _, s := range hostileStrings {
		f.Add(s, s, s, int64(0), uint64(1), uint16(2), []byte{10, 0, 0, 1})
	}
	f.Add("a", "b", "c", int64(math.MaxInt64), uint64(math.MaxUint64), uint16(65535), []byte(nil))
	f.Fuzz(func(t *testing.T, a, b, c string, ns int64, n uint64, port uint16, ip []byte) {
		addr, _ := netip.AddrFromSlice(ip)
		tm := time.Unix(0, ns)
		if ns&1 == 1 {
			tm = tm.UTC()
		}
		rs := []Record{
			{
				Time: tm, EndTime: tm.Add(time.Duration(n)), End: End(a), Proto: ipproto.Proto(port),
				Client: netip.AddrPortFrom(addr, port), Server: netip.AddrPortFrom(addr.WithZone(c), port),
				Direction: b, Local: PUInfo{ID: a, Node: b, Tags: []string{a, b, c}},
				Remote: PeerInfo{IP: addr, External: n&1 == 1, Node: c, Tags: []string{c}},
				Action: a, Reason: b, Rule: &RuleInfo{Policy: a, Direction: b, Index: int(ns), Name: c, Action: a},
				PacketsOut: n, PacketsIn: n >> 1, BytesOut: n >> 2, BytesIn: n >> 3, MidStream: n&2 == 2, Restored: n&4 == 4, Count: n & 0xff,
				VLAN: []uint16{port, uint16(n)},
			},
			{Local: PUInfo{ID: c}, Observed: &RuleInfo{Name: b}, Remote: PeerInfo{IP: addr.WithZone(a)}},
		}
		for i := range rs {
			want, werr := json.Marshal(&rs[i])
			got, gerr := rs[i].AppendJSON(nil)
			if (werr == nil) != (gerr == nil) {
				t.Fatalf("error %v, encoding/json's %v", gerr, werr)
			}
			if werr == nil && !bytes.Equal(got, want) {
				t.Fatalf("\n got %s\nwant %s", got, want)
			}
		}
	})
}

// BenchmarkRecordJSON: one flow record as the flow-log writer encodes it,
// with encoding/json (before) and AppendJSON.
func BenchmarkRecordJSON(b *testing.B) {
	r := recordTable()[1]
	b.Run("encoding-json", func(b *testing.B) {
		enc := json.NewEncoder(io.Discard)
		b.ReportAllocs()
		for b.Loop() {
			if err := enc.Encode(&r); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("append", func(b *testing.B) {
		var buf []byte
		b.ReportAllocs()
		for b.Loop() {
			var err error
			if buf, err = r.AppendJSON(buf[:0]); err != nil {
				b.Fatal(err)
			}
			buf = append(buf, '\n')
			io.Discard.Write(buf)
		}
	})
}

// everyFieldRecord sets every field of a Record and of what it holds, so
// that a field the hand-written encoder does not know shows up in
// TestRecordAppendJSONEveryField.
func everyFieldRecord() Record {
	t0 := time.Date(2026, 12, 4, 8, 0, 0, 1, time.UTC)
	rule := &RuleInfo{Policy: "p", Direction: "ingress", Index: 2, Name: "n", Action: "allow"}
	return Record{
		Time: t0, End: EndClosed, EndTime: t0.Add(time.Second), Proto: ipproto.TCP,
		Client: netip.MustParseAddrPort("10.0.0.1:1"), Server: netip.MustParseAddrPort("10.0.0.2:2"),
		VLAN: []uint16{7}, Direction: "ingress",
		Local:  PUInfo{ID: "db", Node: "n1", Tags: []string{"app=db"}},
		Remote: PeerInfo{IP: netip.MustParseAddr("10.0.0.1"), External: true, Node: "n2", Tags: []string{"app=web"}},
		Action: "allow", Reason: "none", Rule: rule, Observed: rule,
		PacketsOut: 1, PacketsIn: 2, BytesOut: 3, BytesIn: 4,
		KernelCounted: true, MidStream: true, Restored: true, Count: 5,
	}
}

// zeroFields lists the fields of v (a struct, followed through pointers
// and into nested structs of this package) that hold their zero value.
func zeroFields(prefix string, v reflect.Value) []string {
	for v.Kind() == reflect.Pointer {
		if v.IsNil() {
			return []string{prefix}
		}
		v = v.Elem()
	}
	var zero []string
	for i := 0; i < v.NumField(); i++ {
		f, ft := v.Field(i), v.Type().Field(i)
		if !ft.IsExported() {
			continue
		}
		name := prefix + "." + ft.Name
		if f.IsZero() {
			zero = append(zero, name)
			continue
		}
		inner := f
		for inner.Kind() == reflect.Pointer {
			inner = inner.Elem()
		}
		if inner.Kind() == reflect.Struct && inner.Type().PkgPath() == v.Type().PkgPath() {
			zero = append(zero, zeroFields(name, f)...)
		}
	}
	return zero
}

// TestRecordAppendJSONEveryField: a record with every field set encodes as
// encoding/json encodes it. A field added to Record (or PUInfo, PeerInfo,
// RuleInfo) without the encoder knowing it fails here: first because the
// record below leaves it zero, then because the encoder leaves it out.
func TestRecordAppendJSONEveryField(t *testing.T) {
	r := everyFieldRecord()
	if zero := zeroFields("Record", reflect.ValueOf(&r)); len(zero) > 0 {
		t.Fatalf("everyFieldRecord leaves %v zero: set them there (and encode them in AppendJSON)", zero)
	}
	want, err := json.Marshal(&r)
	if err != nil {
		t.Fatal(err)
	}
	got, err := r.AppendJSON(nil)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("AppendJSON:\n got %s\nwant %s", got, want)
	}
}
