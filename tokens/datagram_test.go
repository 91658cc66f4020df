package tokens

import (
	"bytes"
	"net/netip"
	"slices"
	"testing"

	"github.com/trireme-go/trireme/reason"
)

// datagramFrames are the messages of one datagram handshake.
type datagramFrames struct{ hello, reply, confirm []byte }

func (p pair) datagramHandshake(cc, sc *Conn, reject bool) (server, client *Peer, fr datagramFrames, rejected bool, err error) {
	now := base
	if fr.hello, err = p.client.AppendHello(nil, p.cl, cc, now); err != nil {
		return
	}
	if client, err = p.server.VerifyHelloFrom(fr.hello, sc, now, netip.Addr{}); err != nil {
		return
	}
	if fr.reply, err = p.server.AppendReply(nil, p.sl, sc, now, reject); err != nil {
		return
	}
	if server, rejected, err = p.client.VerifyReply(fr.reply, cc, now); err != nil || rejected {
		return
	}
	if fr.confirm, err = p.client.AppendConfirm(nil, cc); err != nil {
		return
	}
	err = p.server.VerifyConfirm(fr.confirm, sc)
	return
}

func TestDatagramHandshake(t *testing.T) {
	for _, mode := range []string{"psk", "pki"} {
		t.Run(mode, func(t *testing.T) {
			p := newPair(t, mode)
			var cc, sc Conn
			server, client, fr, rejected, err := p.datagramHandshake(&cc, &sc, false)
			if err != nil || rejected {
				t.Fatalf("handshake: %v rejected %v", err, rejected)
			}
			if !slices.Equal(client.Tags, clientTags) || !slices.Equal(server.Tags, serverTags) {
				t.Errorf("peers %v %v", client.Tags, server.Tags)
			}
			if !cc.Established() || !sc.Established() {
				t.Error("not established")
			}
			for _, m := range []struct {
				b    []byte
				kind DatagramKind
			}{{fr.hello, Hello}, {fr.reply, Reply}, {fr.confirm, Confirm}} {
				if got := KindOf(m.b); got != m.kind {
					t.Errorf("KindOf = %v, want %v", got, m.kind)
				}
				if !bytes.HasPrefix(m.b, DatagramMarker[:]) {
					t.Error("message without the marker")
				}
			}
			if len(fr.confirm) != MarkerSize+ackSize {
				t.Errorf("confirm is %d bytes", len(fr.confirm))
			}

			// A repeat flow between the same PUs costs no public-key
			// operation.
			before := p.client.Stats().PublicKeyOps + p.server.Stats().PublicKeyOps
			var cc2, sc2 Conn
			if _, _, _, _, err := p.datagramHandshake(&cc2, &sc2, false); err != nil {
				t.Fatal(err)
			}
			if after := p.client.Stats().PublicKeyOps + p.server.Stats().PublicKeyOps; after != before {
				t.Errorf("repeat flow: %d public-key operations", after-before)
			}

			// The confirm of one flow does not confirm another (bound to
			// the server's nonce), nor does a reply answer another hello.
			var cc3, sc3 Conn
			hello, _ := p.client.AppendHello(nil, p.cl, &cc3, base)
			if _, err := p.server.VerifyHelloFrom(hello, &sc3, base, netip.Addr{}); err != nil {
				t.Fatal(err)
			}
			if _, err := p.server.AppendReply(nil, p.sl, &sc3, base, false); err != nil {
				t.Fatal(err)
			}
			if err := p.server.VerifyConfirm(fr.confirm, &sc3); err != reason.NonceMismatch {
				t.Errorf("replayed confirm: %v, want nonce-mismatch", err)
			}
			if _, _, err := p.client.VerifyReply(fr.reply, &cc3, base); err != reason.NonceMismatch {
				t.Errorf("replayed reply: %v, want nonce-mismatch", err)
			}
		})
	}
}

func TestDatagramReject(t *testing.T) {
	p := newPair(t, "psk")
	var cc, sc Conn
	server, _, fr, rejected, err := p.datagramHandshake(&cc, &sc, true)
	if err != nil || !rejected || server == nil {
		t.Fatalf("reject: err %v rejected %v server %v", err, rejected, server)
	}
	if KindOf(fr.reply) != Reject {
		t.Errorf("KindOf(reject) = %v", KindOf(fr.reply))
	}
	if _, err := p.client.AppendConfirm(nil, &cc); err != reason.InvalidState {
		t.Errorf("confirm after a reject: %v", err)
	}
	// A reject whose type was changed into a reply does not verify: the
	// label is in the MAC.
	var cc2, sc2 Conn
	hello, _ := p.client.AppendHello(nil, p.cl, &cc2, base)
	p.server.VerifyHelloFrom(hello, &sc2, base, netip.Addr{})
	rej, _ := p.server.AppendReply(nil, p.sl, &sc2, base, true)
	rej[MarkerSize+1] = typeReply
	if _, _, err := p.client.VerifyReply(rej, &cc2, base); err != reason.BadMAC {
		t.Errorf("reject turned reply: %v, want bad-mac", err)
	}
}

// TCP frames are not datagram messages and the reverse: a captured frame
// of one protocol is refused by the other.
func TestDatagramCrossProtocol(t *testing.T) {
	p := newPair(t, "psk")
	var cc, sc Conn
	_, _, tf, err := p.handshake(&cc, &sc, base)
	if err != nil {
		t.Fatal(err)
	}
	var s1 Conn
	withMarker := append(DatagramMarker[:len(DatagramMarker):len(DatagramMarker)], tf.syn...)
	if _, err := p.server.VerifyHelloFrom(withMarker, &s1, base, netip.Addr{}); err != reason.MalformedToken {
		t.Errorf("TCP SYN frame as a hello: %v", err)
	}
	if KindOf(withMarker) != NotHandshake {
		t.Error("a TCP SYN frame is a datagram message")
	}
	var c2, s2 Conn
	hello, _ := p.client.AppendHello(nil, p.cl, &c2, base)
	if _, err := p.server.VerifySYN(hello[MarkerSize:], &s2, base); err != reason.MalformedToken {
		t.Errorf("hello frame as a SYN: %v", err)
	}
}

func TestKindOf(t *testing.T) {
	p := newPair(t, "psk")
	var cc, sc Conn
	_, _, fr, _, err := p.datagramHandshake(&cc, &sc, false)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		payload []byte
		want    DatagramKind
	}{
		{"empty", nil, NotHandshake},
		{"dns query", []byte{0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0}, NotHandshake},
		{"marker only", DatagramMarker[:], NotHandshake},
		{"marker and junk", append(DatagramMarker[:4:4], 1, 9, 0, 8, 0, 0, 0, 0), NotHandshake},
		{"confirm with data after", append(bytes.Clone(fr.confirm), 'x'), NotHandshake},
		{"confirm cut", fr.confirm[:len(fr.confirm)-1], NotHandshake},
		{"confirm", fr.confirm, Confirm},
		{"hello", fr.hello, Hello},
	} {
		if got := KindOf(tc.payload); got != tc.want {
			t.Errorf("%s: KindOf = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// FuzzDatagramMessage feeds any UDP payload to the datagram decoder and to
// every verification step: a clear error or a kind, never a panic, and
// nothing accepted that the peer's keys did not make.
func FuzzDatagramMessage(f *testing.F) {
	p := newPair(f, "psk")
	var cc, sc Conn
	_, _, fr, _, err := p.datagramHandshake(&cc, &sc, false)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(fr.hello)
	f.Add(fr.reply)
	f.Add(fr.confirm)
	f.Add([]byte("\x1ftr\xd6\x01\x06\x00\x24"))
	f.Fuzz(func(t *testing.T, payload []byte) {
		k := KindOf(payload)
		var s1 Conn
		if _, err := p.server.VerifyHelloFrom(payload, &s1, base, netip.Addr{}); err == nil && k != Hello {
			t.Fatalf("hello accepted, KindOf %v", k)
		}
		var c2 Conn
		p.client.AppendHello(nil, p.cl, &c2, base)
		if _, _, err := p.client.VerifyReply(payload, &c2, base); err == nil {
			t.Fatal("a reply to a fresh hello verified")
		}
		var c3, s3 Conn
		hello, _ := p.client.AppendHello(nil, p.cl, &c3, base)
		p.server.VerifyHelloFrom(hello, &s3, base, netip.Addr{})
		p.server.AppendReply(nil, p.sl, &s3, base, false)
		if err := p.server.VerifyConfirm(payload, &s3); err == nil {
			t.Fatal("a confirm of a fresh flow verified")
		}
	})
}
