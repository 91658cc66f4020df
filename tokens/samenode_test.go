package tokens

import (
	"net/netip"
	"testing"
	"time"

	"github.com/trireme-go/trireme/reason"
)

// samePair is two PUs of one node: one engine at both ends.
func samePair(t testing.TB, mode string) pair {
	t.Helper()
	p := newPair(t, mode)
	p.server = p.client
	p.sl = p.client.NewLocal(serverTags)
	return p
}

// TestSameNodeFirstContact: two PUs of one node meet for the first time.
// Their tokens are this engine's own: no signature or certificate is
// verified again, and the ECDH of the two ephemeral keys is computed once
// for both ends. Each end gets the Peer that verifying the other's token
// gives another node of the deployment (tags, node, expiry).
func TestSameNodeFirstContact(t *testing.T) {
	for _, mode := range []string{"psk", "pki"} {
		t.Run(mode, func(t *testing.T) {
			p := samePair(t, mode)
			var cc, sc Conn
			server, client, fr, err := p.handshake(&cc, &sc, base)
			if err != nil {
				t.Fatal(err)
			}
			s := p.client.Stats()
			if s.SignatureVerifications != 0 || s.CertificateVerifications != 0 || s.TokenCacheMisses != 0 || s.TokenCacheHits != 2 {
				t.Errorf("stats %+v: own tokens verified again", s)
			}
			wantECDH := uint64(0)
			if mode == "pki" {
				wantECDH = 1
			}
			if s.ECDH != wantECDH || s.ECDHCacheHits != wantECDH {
				t.Errorf("ECDH %d (cache hits %d), want %d and %d", s.ECDH, s.ECDHCacheHits, wantECDH, wantECDH)
			}
			// Another node verifies the same tokens from scratch.
			other := newPair(t, mode).server
			other = engineWith(t, other, VerifyBudget{SourceRate: -1, NodeRate: -1})
			for _, c := range []struct {
				got   *Peer
				frame []byte
			}{{client, fr.syn}, {server, fr.synack}} {
				f, err := parseFrame(c.frame, c.frame[1])
				if err != nil {
					t.Fatal(err)
				}
				want, err := other.verifyToken(f.token, base, false, netip.Addr{})
				if err != nil {
					t.Fatal(err)
				}
				if c.got.Node != want.Node || !c.got.Expires.Equal(want.Expires) || c.got.Tags.String() != want.Tags.String() ||
					c.got.hash != want.hash || c.got.ekID != want.ekID || (c.got.ek == nil) != (want.ek == nil) {
					t.Errorf("own token's Peer %+v, a verifier's %+v", c.got, want)
				}
			}
			if other.Stats().SignatureVerifications != 2 {
				t.Fatalf("the other node verified %d signatures, want 2", other.Stats().SignatureVerifications)
			}
		})
	}
}

// TestSameNodeOwnTokenLimits: an own token known without verification is
// still held to its expiry, and SetSecrets forgets it (a token signed with
// the replaced secrets is verified again, with the new ones).
func TestSameNodeOwnTokenLimits(t *testing.T) {
	for _, mode := range []string{"psk", "pki"} {
		t.Run(mode, func(t *testing.T) {
			p := samePair(t, mode)
			var cc Conn
			syn, err := p.client.AppendSYN(nil, p.cl, &cc, base)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := p.server.VerifySYN(syn, &Conn{}, base); err != nil {
				t.Fatal(err)
			}
			late := base.Add(2*DefaultRefresh + time.Second)
			if _, err := p.server.VerifySYN(syn, &Conn{}, late); err != reason.ExpiredToken {
				t.Errorf("own token after its exp: %v, want %v", err, reason.ExpiredToken)
			}
			var rotated Secrets
			if mode == "psk" {
				rotated = testPSK(t, 9)
			} else {
				_, otherCA := cas(t)
				rotated = pkiSecretsFor(t, otherCA, otherCA.cert, "node-a", time.Hour)
			}
			if err := p.client.SetSecrets(rotated); err != nil {
				t.Fatal(err)
			}
			want := reason.BadSignature
			if mode == "pki" {
				want = reason.UntrustedCertificate // the old certificate is not of the new CA
			}
			if _, err := p.server.VerifySYN(syn, &Conn{}, base); err != want {
				t.Errorf("own token of replaced secrets: %v, want %v", err, want)
			}
			// The PUs' next tokens (new secrets) are known again.
			before := p.client.Stats().SignatureVerifications
			var c2, s2 Conn
			if _, _, _, err := p.handshake(&c2, &s2, base.Add(time.Second)); err != nil {
				t.Fatalf("after the rotation: %v", err)
			}
			if n := p.client.Stats().SignatureVerifications - before; n != 0 {
				t.Errorf("%d signatures verified after the rotation, want 0", n)
			}
		})
	}
}
