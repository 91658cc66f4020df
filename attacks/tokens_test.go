package attacks

import (
	"bytes"
	"encoding/binary"
	mrand "math/rand/v2"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/gopacket/layers"

	"github.com/trireme-go/trireme/tokens"
)

// TestForgedTokens: a host inside the target networks that runs no
// enforcer (a namespace on the node bridge the daemon does not police: it
// sends whatever it likes, no enforcer of its own adds or strips anything)
// sends SYNs to db:5432 whose token is missing, cut short, lengthened, of
// another version or type, or whose signature, claims or certificate were
// altered, signed by a key or CA of its own, expired or not yet valid.
// db's enforcer drops each with its reason and nothing reaches db: its
// interface sees none of these SYNs, its socket accepts nothing. The
// controls show the harness delivers what is valid: the unaltered token of
// app=web reaches db's kernel (a SYN-ACK comes back), app=frontend's is
// refused by policy.
func TestForgedTokens(t *testing.T) {
	s := newScene(t, sceneOptions{})
	host := s.node.AddPU() // on the bridge, in the target networks, not attached
	v := serveVictim(t, s.db, s.db.Addr, 5432)
	v6 := serveVictim(t, s.db, s.db.Addr6, 5432)
	raw := host.Raw()
	seen := s.db.Raw()
	hostMAC, dbMAC := host.MACOf(), s.db.MACOf()
	st, err := s.d.Client().Stats()
	if err != nil {
		t.Fatal(err)
	}

	eng := nodeTokens(t, s.d)
	now := time.Now()
	web := mintSYN(t, eng, map[string]string{"app": "web"}, now)
	front := mintSYN(t, eng, map[string]string{"app": "frontend"}, now)
	wf := parseSYNFrame(t, web)

	edit := func(f []byte, fn func(b []byte)) []byte {
		b := bytes.Clone(f)
		fn(b)
		return b
	}
	withJWS := func(jws string) []byte { g := wf; g.jws = jws; return g.bytes() }
	withCert := func(cert []byte) []byte { g := wf; g.cert = cert; return g.bytes() }
	oversized := func() []byte {
		b := make([]byte, tokens.MaxFrame+1)
		copy(b, web)
		binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
		return b
	}

	opts := []layers.TCPOption{marker, mss}
	cases := []struct {
		name    string
		opts    []layers.TCPOption
		payload []byte
		patch   func(frame []byte) // edits the serialized frame (checksum fixed after)
		want    string
		ipv6    bool
	}{
		{name: "no option, no frame", opts: []layers.TCPOption{mss}, want: "missing-token"},
		{name: "option, no frame", opts: opts, want: "missing-token"},
		{name: "frame without the option", opts: []layers.TCPOption{mss}, payload: web, want: "missing-token"},
		{name: "option length lies", opts: opts, payload: web, want: "malformed-packet",
			patch: func(f []byte) { f[14+20+20+1] = 40 }}, // the marker claims more than the option space
		{name: "truncated frame", opts: opts, payload: web[:len(web)-100], want: "malformed-token"},
		{name: "truncated header", opts: opts, payload: web[:3], want: "malformed-token"},
		{name: "length beyond the payload", opts: opts, want: "malformed-token",
			payload: edit(web, func(b []byte) { binary.BigEndian.PutUint16(b[2:], uint16(len(b)+200)) })},
		{name: "frame above MaxFrame", opts: opts, payload: oversized(), want: "malformed-token"},
		{name: "version 2", opts: opts, payload: edit(web, func(b []byte) { b[0] = 2 }), want: "unsupported-version"},
		{name: "ACK frame on a SYN", opts: opts, payload: ackFrame(random(16), random(16)), want: "malformed-token"},
		{name: "certificate length lies", opts: opts, want: "malformed-token",
			payload: edit(web, func(b []byte) { binary.BigEndian.PutUint16(b[20:], uint16(len(wf.cert)+1)) })},
		{name: "certificate signature altered", opts: opts, want: "untrusted-certificate",
			payload: withCert(edit(wf.cert, func(b []byte) { b[len(b)-2] ^= 0x01 }))},
		{name: "JWT signature altered", opts: opts, payload: withJWS(flipSignature(t, wf.jws)), want: "bad-signature"},
		{name: "tags edited after signing", opts: opts, want: "bad-signature",
			payload: func() []byte {
				g := parseSYNFrame(t, front)
				g.jws = editClaims(t, g.jws, func(c string) string { return strings.Replace(c, `"app=frontend"`, `"app=web"`, 1) })
				return g.bytes()
			}()},
		{name: "real certificate, JWT signed by the attacker", opts: opts, payload: withJWS(resign(t, wf.jws, attackerKey(t))), want: "bad-signature"},
		{name: "alg none", opts: opts, payload: withJWS(algNone(t, wf.jws)), want: "bad-signature"},
		{name: "certificate of another CA naming this node", opts: opts, want: "untrusted-certificate",
			payload: mintSYN(t, rogueTokens(t, st.Node), map[string]string{"app": "web"}, now)},
		{name: "PSK token to a PKI node", opts: opts, want: "untrusted-certificate",
			payload: mintSYN(t, pskTokens(t, st.Node), map[string]string{"app": "web"}, now)},
		{name: "expired token", opts: opts, want: "expired-token",
			payload: mintSYN(t, eng, map[string]string{"app": "web"}, now.Add(-30*time.Minute))},
		{name: "token issued in the future", opts: opts, want: "expired-token",
			payload: mintSYN(t, eng, map[string]string{"app": "web"}, now.Add(time.Hour))},
		{name: "valid token of a PU db does not allow", opts: opts, payload: front, want: "policy-denied"},
		{name: "IPv6, no frame", opts: []layers.TCPOption{mss}, want: "missing-token", ipv6: true},
		{name: "IPv6, JWT signature altered", opts: opts, payload: withJWS(flipSignature(t, wf.jws)), want: "bad-signature", ipv6: true},
	}

	syn := func(port uint16, opts []layers.TCPOption, payload []byte) []byte {
		return seg{srcMAC: hostMAC, dstMAC: dbMAC, src: netip.AddrPortFrom(host.Addr, port), dst: v.Addr,
			flags: "S", seq: mrand.Uint32(), opts: opts, payload: payload}.frame()
	}
	syn6 := func(port uint16, opts []layers.TCPOption, payload []byte) []byte {
		return seg{srcMAC: hostMAC, dstMAC: dbMAC, src: netip.AddrPortFrom(host.Addr6, port), dst: v6.Addr,
			flags: "S", seq: mrand.Uint32(), opts: opts, payload: payload}.frame()
	}

	// Control: the unaltered token of app=web passes db's enforcer; db's
	// kernel answers.
	const control = 40999
	raw.MustSend(syn(control, opts, web))
	if p := firstFrame(raw, 3*time.Second, synackTo(control)); p == nil {
		t.Fatal("control: the valid SYN of app=web got no SYN-ACK from db")
	} else if !hasMarker(tcpOf(p)) {
		t.Fatal("control: db's SYN-ACK carries no token")
	}

	var ports []uint16
	for i, c := range cases {
		port := uint16(41000 + i)
		ports = append(ports, port)
		t.Run(c.name, func(t *testing.T) {
			before := s.drops()
			f := syn(port, c.opts, c.payload)
			if c.ipv6 {
				f = syn6(port, c.opts, c.payload)
			}
			if c.patch != nil {
				c.patch(f)
				fixTCPChecksum(f)
			}
			raw.MustSend(f)
			waitDropOn(t, s.d, before, c.want)
		})
	}
	if got := seen.Capture(300*time.Millisecond, fromPort(ports...)); len(got) != 0 {
		t.Errorf("%d forged SYNs reached db's interface, first: %v", len(got), got[0])
	}
	if a, a6 := v.Accepted(), v6.Accepted(); len(a)+len(a6) != 0 {
		t.Errorf("db accepted %v %v", a, a6)
	}
}
