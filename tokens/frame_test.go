package tokens

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"testing"

	"github.com/trireme-go/trireme/reason"
)

// TestFrameErrors: malformed frames are rejected with the right reason by
// FrameLen and by each Verify.
func TestFrameErrors(t *testing.T) {
	p := newPair(t, "pki")
	var cc, sc Conn
	_, _, fr, err := p.handshake(&cc, &sc, base)
	if err != nil {
		t.Fatal(err)
	}
	with := func(b []byte, f func([]byte)) []byte {
		b = append([]byte(nil), b...)
		f(b)
		return b
	}
	oversized := with(append(fr.syn, make([]byte, MaxFrame)...), func(b []byte) {
		binary.BigEndian.PutUint16(b[2:], MaxFrame+1)
	})
	tests := []struct {
		name  string
		frame []byte
		want  reason.Code
	}{
		{"empty", nil, reason.MissingToken},
		{"one byte", []byte{Version}, reason.MalformedToken},
		{"version 0", with(fr.syn, func(b []byte) { b[0] = 0 }), reason.UnsupportedVersion},
		{"version 2", with(fr.syn, func(b []byte) { b[0] = 2 }), reason.UnsupportedVersion},
		{"version 2, short", []byte{2}, reason.UnsupportedVersion},
		{"unknown type", with(fr.syn, func(b []byte) { b[1] = 9 }), reason.MalformedToken},
		{"length beyond payload", with(fr.syn, func(b []byte) { binary.BigEndian.PutUint16(b[2:], uint16(len(b)+1)) }), reason.MalformedToken},
		{"length below minimum", with(fr.syn, func(b []byte) { binary.BigEndian.PutUint16(b[2:], headerSize+synFixed) }), reason.MalformedToken},
		{"oversized", oversized, reason.MalformedToken},
		{"ACK with a longer length", with(append(fr.ack, 0), func(b []byte) { b[3]++ }), reason.MalformedToken},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := FrameLen(tc.frame); err != tc.want {
				t.Errorf("FrameLen: %v, want %v", err, tc.want)
			}
			var s Conn
			if _, err := p.server.VerifySYN(tc.frame, &s, base); err != tc.want {
				t.Errorf("VerifySYN: %v, want %v", err, tc.want)
			}
		})
	}

	// Every truncation of every message is rejected.
	for name, f := range map[string][]byte{"SYN": fr.syn, "SYN-ACK": fr.synack, "ACK": fr.ack} {
		for n := range len(f) {
			want := reason.MalformedToken
			if n == 0 {
				want = reason.MissingToken
			}
			if _, err := FrameLen(f[:n]); err != want {
				t.Errorf("%s truncated to %d: %v, want %v", name, n, err, want)
			}
		}
	}
	// A type mismatch is malformed for each Verify.
	var s Conn
	if _, err := p.server.VerifySYN(fr.synack, &s, base); err != reason.MalformedToken {
		t.Errorf("SYN-ACK to VerifySYN: %v", err)
	}
	if err := p.server.VerifyACK(fr.syn, &sc); err != reason.MalformedToken {
		t.Errorf("SYN to VerifyACK: %v", err)
	}
	// Data after the frame (TCP Fast Open) is not the frame's.
	tfo := append(append([]byte(nil), fr.syn...), "GET / HTTP/1.1\r\n"...)
	if n, err := FrameLen(tfo); err != nil || n != len(fr.syn) {
		t.Errorf("FrameLen with TFO data = %d, %v; want %d", n, err, len(fr.syn))
	}
	var s2 Conn
	if _, err := p.server.VerifySYN(tfo, &s2, base); err != nil {
		t.Errorf("SYN followed by data: %v", err)
	}
}

// TestGarbageFrames: random bytes never verify and always give a token
// reason.
func TestGarbageFrames(t *testing.T) {
	p := newPair(t, "pki")
	r := rand.New(rand.NewPCG(1, 2))
	valid := map[reason.Code]bool{reason.MissingToken: true, reason.MalformedToken: true,
		reason.UnsupportedVersion: true, reason.UntrustedCertificate: true}
	for i := range 2000 {
		b := make([]byte, r.IntN(1400))
		for j := range b {
			b[j] = byte(r.Uint32())
		}
		if len(b) > 4 && i%2 == 0 { // a plausible header half the time
			b[0], b[1] = Version, byte(1+i%3)
			binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
		}
		var s Conn
		peer, err := p.server.VerifySYN(b, &s, base)
		rc, ok := err.(reason.Code)
		if peer != nil || !ok || !valid[rc] {
			t.Fatalf("garbage %x: %v, %v", b[:min(len(b), 16)], peer, err)
		}
	}
}

func TestOptionMarker(t *testing.T) {
	if Option != [4]byte{253, 4, 0x74, 0x72} || !bytes.Equal(Option[2:], []byte("tr")) {
		t.Errorf("Option = %x", Option)
	}
}
