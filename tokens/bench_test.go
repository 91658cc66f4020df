package tokens

import (
	"testing"
)

// BenchmarkHandshake measures one whole handshake, both ends, all three
// messages: AppendSYN, VerifySYN, AppendSYNACK, VerifySYNACK, AppendACK,
// VerifyACK. Warm: both PUs' tokens and their ECDH result are cached (every
// connection after the first between two PUs in an epoch). Cold: every cache
// of both engines is emptied before each handshake (the first connection
// between two nodes); the PUs' tokens are signed already (once per epoch, see
// BenchmarkNewEpoch).
func BenchmarkHandshake(b *testing.B) {
	for _, mode := range []string{"psk", "pki"} {
		for _, cold := range []bool{false, true} {
			name := mode + "/warm"
			if cold {
				name = mode + "/cold"
			}
			b.Run(name, func(b *testing.B) {
				p := newPair(b, mode)
				var cc, sc Conn
				if _, _, _, err := p.handshake(&cc, &sc, base); err != nil {
					b.Fatal(err)
				}
				syn := make([]byte, 0, MaxFrame)
				synack := make([]byte, 0, MaxFrame)
				ack := make([]byte, 0, 64)
				b.ReportAllocs()
				b.ResetTimer()
				for b.Loop() {
					if cold {
						b.StopTimer()
						for _, e := range []*Engine{p.client, p.server} {
							e.tokens.reset()
							e.shared.reset()
							e.certs.reset()
						}
						b.StartTimer()
					}
					var cc, sc Conn
					var err error
					syn, _ = p.client.AppendSYN(syn[:0], p.cl, &cc, base)
					if _, err = p.server.VerifySYN(syn, &sc, base); err != nil {
						b.Fatal(err)
					}
					synack, _ = p.server.AppendSYNACK(synack[:0], p.sl, &sc, base)
					if _, err = p.client.VerifySYNACK(synack, &cc, base); err != nil {
						b.Fatal(err)
					}
					ack, _ = p.client.AppendACK(ack[:0], &cc)
					if err = p.server.VerifyACK(ack, &sc); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// BenchmarkNewEpoch measures making a PU's identity token: ephemeral key
// generation (PKI) and signing, once per PU per Refresh.
func BenchmarkNewEpoch(b *testing.B) {
	for _, mode := range []string{"psk", "pki"} {
		b.Run(mode, func(b *testing.B) {
			p := newPair(b, mode)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := p.client.newEpoch(clientTags, base); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkVerifySYNWarm measures the server's per-SYN cost with a cached
// token.
func BenchmarkVerifySYNWarm(b *testing.B) {
	p := newPair(b, "pki")
	var c Conn
	syn, _ := p.client.AppendSYN(nil, p.cl, &c, base)
	b.ReportAllocs()
	for b.Loop() {
		var s Conn
		if _, err := p.server.VerifySYN(syn, &s, base); err != nil {
			b.Fatal(err)
		}
	}
}
