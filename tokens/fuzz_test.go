package tokens

import (
	"net/netip"
	"testing"

	"github.com/trireme-go/trireme/reason"
)

// fuzzFixture is a PSK and a PKI pair with a client connection waiting for a
// SYN-ACK and a server connection waiting for an ACK, and seed frames from
// other connections (so that no seed is a valid answer to the fixture's).
type fuzzFixture struct {
	pairs      [2]pair
	synSent    [2]Conn
	synackSent [2]Conn
	seeds      [][]byte
	tokens     [][]byte
}

func newFuzzFixture(f *testing.F) *fuzzFixture {
	fx := &fuzzFixture{}
	for i, mode := range []string{"psk", "pki"} {
		p := newPair(f, mode)
		fx.pairs[i] = p
		var cc, sc Conn
		_, _, fr, err := p.handshake(&cc, &sc, base)
		if err != nil {
			f.Fatal(err)
		}
		fx.seeds = append(fx.seeds, fr.syn, fr.synack, fr.ack)
		fx.tokens = append(fx.tokens, cc.own.token, sc.own.token)
		var c, s Conn
		syn, _ := p.client.AppendSYN(nil, p.cl, &c, base)
		fx.synSent[i] = c
		if _, err := p.server.VerifySYN(syn, &s, base); err != nil {
			f.Fatal(err)
		}
		if _, err := p.server.AppendSYNACK(nil, p.sl, &s, base); err != nil {
			f.Fatal(err)
		}
		fx.synackSent[i] = s
	}
	return fx
}

func isReason(err error) bool {
	_, ok := err.(reason.Code)
	return ok
}

// FuzzFrame feeds arbitrary TCP payloads to FrameLen and to every Verify.
func FuzzFrame(f *testing.F) {
	fx := newFuzzFixture(f)
	for _, s := range fx.seeds {
		f.Add(s)
	}
	f.Add([]byte{})
	f.Add([]byte{2, 1, 0, 40})
	f.Add([]byte{1, 3, 0, 36})
	f.Fuzz(func(t *testing.T, data []byte) {
		n, err := FrameLen(data)
		if err == nil && (n < headerSize || n > len(data) || n > MaxFrame) {
			t.Fatalf("FrameLen = %d for %d bytes", n, len(data))
		}
		if err != nil && !isReason(err) {
			t.Fatalf("FrameLen error %v is not a reason", err)
		}
		for i, p := range fx.pairs {
			var s Conn
			if peer, err := p.server.VerifySYN(data, &s, base); err != nil {
				if !isReason(err) || peer != nil || s != (Conn{}) {
					t.Fatalf("VerifySYN: %v, %v", peer, err)
				}
			} else if err := peer.Tags.Validate(); err != nil || s.peer != peer {
				t.Fatalf("VerifySYN accepted a peer with tags %v", peer.Tags)
			}
			c := fx.synSent[i]
			if peer, err := p.client.VerifySYNACK(data, &c, base); err == nil {
				t.Fatalf("VerifySYNACK accepted a SYN-ACK for another connection: %v", peer)
			} else if !isReason(err) || c != fx.synSent[i] {
				t.Fatalf("VerifySYNACK: %v", err)
			}
			s = fx.synackSent[i]
			if err := p.server.VerifyACK(data, &s); err == nil {
				t.Fatal("VerifyACK accepted an ACK for another connection")
			} else if !isReason(err) {
				t.Fatalf("VerifyACK: %v", err)
			}
		}
	})
}

// FuzzToken feeds arbitrary identity tokens (certificate length, certificate,
// JWT) to the token parser and verifier of both kinds of secrets.
func FuzzToken(f *testing.F) {
	fx := newFuzzFixture(f)
	for _, tok := range fx.tokens {
		f.Add(tok)
		f.Add(tok[:len(tok)/2])
	}
	f.Add([]byte{0, 0, 'a', '.', 'b', '.', 'c'})
	f.Add([]byte{0, 0, 'e', 'y', 'J', '9', '.', 'e', 'y', 'J', '9', '.'})
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, p := range fx.pairs {
			peer, err := p.server.verifyToken(data, base, false, netip.Addr{})
			if err != nil {
				if !isReason(err) || peer != nil {
					t.Fatalf("verifyToken: %v, %v", peer, err)
				}
				continue
			}
			if peer.Tags.Validate() != nil || peer.Node == "" || peer.Identity == nil || !base.Before(peer.Expires) {
				t.Fatalf("verifyToken accepted %+v", peer)
			}
		}
	})
}
