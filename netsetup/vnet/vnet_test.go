package vnet

import (
	"encoding/binary"
	"errors"
	"testing"
)

// tcp4Frame builds an Ethernet+IPv4+TCP frame whose TCP checksum field holds
// the folded pseudo-header sum, as the kernel leaves it for CHECKSUM_PARTIAL.
func tcp4Frame(payload []byte) (frame []byte, h Hdr) {
	const eth, ip, tcp = 14, 20, 20
	frame = make([]byte, eth+ip+tcp+len(payload))
	binary.BigEndian.PutUint16(frame[12:], 0x0800)
	p := frame[eth:]
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:], uint16(ip+tcp+len(payload)))
	p[8], p[9] = 64, 6
	copy(p[12:], []byte{10, 0, 0, 1})
	copy(p[16:], []byte{10, 0, 0, 2})
	binary.BigEndian.PutUint16(p[10:], ^Checksum(p[:ip], 0))
	t := p[ip:]
	binary.BigEndian.PutUint16(t[0:], 40000)
	binary.BigEndian.PutUint16(t[2:], 80)
	t[12] = 5 << 4
	t[13] = 0x02 // SYN
	copy(t[tcp:], payload)
	binary.BigEndian.PutUint16(t[16:], pseudo4(p, uint16(tcp+len(payload))))
	return frame, Hdr{Flags: FlagNeedsCsum, CsumStart: eth + ip, CsumOffset: 16}
}

func pseudo4(ip []byte, l4len uint16) uint16 {
	var ph [12]byte
	copy(ph[0:], ip[12:20])
	ph[9] = ip[9]
	binary.BigEndian.PutUint16(ph[10:], l4len)
	return Checksum(ph[:], 0)
}

// verifies reports whether the TCP checksum of an IPv4 frame is correct.
func verifies(frame []byte) bool {
	ip := frame[14:]
	l4 := ip[20:]
	var ph [12]byte
	copy(ph[0:], ip[12:20])
	ph[9] = ip[9]
	binary.BigEndian.PutUint16(ph[10:], uint16(len(l4)))
	return Checksum(l4, uint32(Checksum(ph[:], 0))) == 0xffff
}

func TestEncodeDecodeRoundTrip(t *testing.T) {
	for _, h := range []Hdr{
		{},
		{Flags: FlagNeedsCsum, CsumStart: 34, CsumOffset: 16},
		{Flags: FlagNeedsCsum, GSOType: GSOTCPv4, HdrLen: 66, GSOSize: 1448, CsumStart: 34, CsumOffset: 16},
		{GSOType: GSOTCPv6 | GSOECN, HdrLen: 86, GSOSize: 1428},
	} {
		var b [HdrLen]byte
		if err := h.Encode(b[:]); err != nil {
			t.Fatal(err)
		}
		got, err := Decode(b[:])
		if err != nil || got != h {
			t.Errorf("round trip of %+v = %+v, %v", h, got, err)
		}
	}
	if _, err := Decode(make([]byte, HdrLen-1)); !errors.Is(err, ErrShort) {
		t.Errorf("short decode: %v", err)
	}
	if err := (Hdr{}).Encode(make([]byte, 3)); !errors.Is(err, ErrShort) {
		t.Errorf("short encode: %v", err)
	}
}

func TestCompleteChecksum(t *testing.T) {
	for _, tc := range []struct {
		name    string
		payload []byte
		mutate  func(*Hdr)
		wantErr error
		wantOK  bool
	}{
		{name: "syn no payload", wantOK: true},
		{name: "odd payload", payload: []byte{1, 2, 3, 4, 5, 6, 7}, wantOK: true},
		{name: "token sized payload", payload: make([]byte, 517), wantOK: true},
		{name: "no NEEDS_CSUM is left alone", mutate: func(h *Hdr) { h.Flags = 0 }},
		{name: "gso refused", mutate: func(h *Hdr) { h.GSOType = GSOTCPv4 }, wantErr: ErrGSO},
		{name: "start past end", mutate: func(h *Hdr) { h.CsumStart = 1000 }, wantErr: ErrBadCsumSpan},
		{name: "field past end", mutate: func(h *Hdr) { h.CsumOffset = 30 }, wantErr: ErrBadCsumSpan},
	} {
		t.Run(tc.name, func(t *testing.T) {
			frame, h := tcp4Frame(tc.payload)
			if tc.mutate != nil {
				tc.mutate(&h)
			}
			before := h
			err := CompleteChecksum(&h, frame)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			if verifies(frame) != tc.wantOK {
				t.Fatalf("checksum verifies = %v, want %v", !tc.wantOK, tc.wantOK)
			}
			if tc.wantOK && h.Flags&FlagNeedsCsum != 0 {
				t.Errorf("NEEDS_CSUM still set: %+v", h)
			}
			if !tc.wantOK && h != before {
				t.Errorf("header changed on failure/no-op: %+v -> %+v", before, h)
			}
		})
	}
}

func FuzzCompleteChecksum(f *testing.F) {
	frame, h := tcp4Frame([]byte("hello"))
	var hb [HdrLen]byte
	_ = h.Encode(hb[:])
	f.Add(append(hb[:], frame...))
	f.Add([]byte{1, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := Decode(b)
		if err != nil {
			return
		}
		frame := b[HdrLen:]
		if err := CompleteChecksum(&h, frame); err != nil {
			return
		}
		if h.Flags&FlagNeedsCsum != 0 {
			t.Fatalf("flag left set after success")
		}
	})
}

func BenchmarkCompleteChecksum(b *testing.B) {
	frame, h0 := tcp4Frame(make([]byte, 500))
	b.ReportAllocs()
	for b.Loop() {
		h := h0
		if err := CompleteChecksum(&h, frame); err != nil {
			b.Fatal(err)
		}
	}
}
