package attacks

import (
	mrand "math/rand/v2"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/trireme-go/trireme/identity"
	"github.com/trireme-go/trireme/tokens"
)

// TestForgedSYNACK: frontend dials a host of the target networks that runs
// no enforcer (frontend's SYN carries its token and nonce Nc); the host
// answers by hand with SYN-ACKs whose token frame is missing, answers
// another connection's nonce, carries a valid server token under a forged
// MAC or a valid SYN-ACK with another valid token swapped in, a certificate
// of another CA, or an altered JWT signature. frontend's enforcer refuses
// each with its reason before frontend's socket sees it: the connect fails
// (a RST from the enforcer). The control: a SYN-ACK made with a real node's
// key (what root on a node can do) connects.
func TestForgedSYNACK(t *testing.T) {
	s := newScene(t, sceneOptions{})
	host := s.node.AddPU() // in the target networks, no enforcer
	silenceRSTs(t, host)   // its kernel stays quiet: the attacker answers
	raw := host.Raw()
	hostMAC, frontMAC := host.MACOf(), s.frontend.MACOf()
	st, err := s.d.Client().Stats()
	if err != nil {
		t.Fatal(err)
	}
	eng := nodeTokens(t, s.d)
	now := time.Now()
	web := eng.NewLocal(identity.NewTags(map[string]string{"app": "web"}))
	webToken := identityToken(mintSYN(t, eng, map[string]string{"app": "web"}, now))
	rogue := identityToken(mintSYN(t, rogueTokens(t, st.Node), map[string]string{"app": "web"}, now))
	server := netip.AddrPortFrom(host.Addr, 80) // frontend may reach app=web on tcp/80

	// valid answers frontend's SYN frame as a real node would.
	valid := func(t *testing.T, syn []byte) []byte {
		var c tokens.Conn
		if _, err := eng.VerifySYN(syn, &c, time.Now()); err != nil {
			t.Fatalf("frontend's SYN frame: %v", err)
		}
		f, err := eng.AppendSYNACK(nil, web, &c, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	cases := []struct {
		name   string
		answer func(t *testing.T, syn []byte) (opts []layers.TCPOption, payload []byte)
		want   string // "" : the control, which connects
	}{
		{"no token frame", func(*testing.T, []byte) ([]layers.TCPOption, []byte) {
			return []layers.TCPOption{mss}, nil
		}, "missing-token"},
		{"another connection's nonce", func(_ *testing.T, syn []byte) ([]layers.TCPOption, []byte) {
			return []layers.TCPOption{marker, mss}, synackFrame(random(16), random(16), random(16), webToken)
		}, "nonce-mismatch"},
		{"valid token, forged MAC", func(_ *testing.T, syn []byte) ([]layers.TCPOption, []byte) {
			return []layers.TCPOption{marker, mss}, synackFrame(random(16), syn[4:20], random(16), webToken)
		}, "bad-mac"},
		{"valid SYN-ACK, another valid token swapped in", func(t *testing.T, syn []byte) ([]layers.TCPOption, []byte) {
			f := valid(t, syn)
			return []layers.TCPOption{marker, mss}, synackFrame(f[4:20], f[20:36], f[36:52], identityToken(mintSYN(t, eng, map[string]string{"app": "web", "v": "2"}, now)))
		}, "bad-mac"},
		{"certificate of another CA", func(_ *testing.T, syn []byte) ([]layers.TCPOption, []byte) {
			return []layers.TCPOption{marker, mss}, synackFrame(random(16), syn[4:20], random(16), rogue)
		}, "untrusted-certificate"},
		{"JWT signature altered", func(t *testing.T, syn []byte) ([]layers.TCPOption, []byte) {
			f := valid(t, syn)
			tok := withIdentityJWS(identityToken(f), func(jws string) string { return flipSignature(t, jws) })
			return []layers.TCPOption{marker, mss}, synackFrame(f[4:20], f[20:36], f[36:52], tok)
		}, "bad-signature"},
		{"control: made with a node's key", func(t *testing.T, syn []byte) ([]layers.TCPOption, []byte) {
			return []layers.TCPOption{marker, mss}, valid(t, syn)
		}, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := s.drops()
			type result struct {
				conn net.Conn
				err  error
			}
			done := make(chan result, 1)
			go func() {
				conn, err := s.frontend.Dial(server, 3*time.Second)
				done <- result{conn, err}
			}()
			p := firstFrame(raw, 3*time.Second, synTo(80))
			if p == nil {
				t.Fatal("no SYN of frontend with a token reached the host")
			}
			syn := tcpOf(p)
			ip := p.NetworkLayer().(*layers.IPv4)
			opts, payload := c.answer(t, syn.Payload)
			raw.MustSend(seg{srcMAC: hostMAC, dstMAC: frontMAC, src: server,
				dst:   netip.AddrPortFrom(netip.AddrFrom4([4]byte(ip.SrcIP.To4())), uint16(syn.SrcPort)),
				flags: "SA", seq: mrand.Uint32(), ack: syn.Seq + 1, opts: opts, payload: payload}.frame())
			r := <-done
			if c.want == "" {
				if r.err != nil {
					t.Fatalf("control: %v", r.err)
				}
				r.conn.Close()
				return
			}
			if r.err == nil {
				r.conn.Close()
				t.Fatal("frontend connected to a forged server")
			}
			waitDropOn(t, s.d, before, c.want)
		})
	}
}

// TestSYNACKFromPU: a PU cannot answer a handshake its enforcer did not see
// begin. The attacker sends SYN-ACKs to web, from its own address and with
// db's address and port (web has a connection to db open), carrying a
// token frame; its own enforcer has no flow for them and drops them
// (unknown-flow, or spoofed-source where anti-spoofing stops the second
// earlier). Nothing reaches web.
func TestSYNACKFromPU(t *testing.T) {
	s := newScene(t, sceneOptions{})
	_, client, server := s.established()
	raw := s.attacker.Raw()
	seen := s.web.Raw()
	webMAC := s.web.MACOf()
	frame := synackFrame(random(16), random(16), random(16), identityToken(mintSYN(t, nodeTokens(t, s.d), map[string]string{"app": "db"}, time.Now())))
	for _, from := range []netip.AddrPort{netip.AddrPortFrom(s.attacker.Addr, 5432), server} {
		before := s.drops()
		raw.MustSend(seg{srcMAC: raw.MAC, dstMAC: webMAC, src: from, dst: client, flags: "SA", seq: mrand.Uint32(), ack: mrand.Uint32(),
			opts: []layers.TCPOption{marker, mss}, payload: frame}.frame())
		waitDropOn(t, s.d, before, "unknown-flow", "spoofed-source")
	}
	if got := seen.Capture(300*time.Millisecond, func(p gopacket.Packet) bool {
		tcp := tcpOf(p)
		return tcp != nil && tcp.SYN && tcp.ACK
	}); len(got) != 0 {
		t.Fatalf("web received %d forged SYN-ACKs", len(got))
	}
}
