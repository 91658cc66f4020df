package tokens

import (
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/binary"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/trireme-go/trireme/reason"
)

// Helpers to take frames and tokens apart and put them back together, as an
// attacker on the path would.

// synParts splits a SYN frame into its nonce and identity token.
func synParts(t testing.TB, syn []byte) (nonce [NonceSize]byte, token []byte) {
	t.Helper()
	f, err := parseFrame(syn, typeSYN)
	if err != nil {
		t.Fatal(err)
	}
	copy(nonce[:], f.lcl)
	return nonce, append([]byte(nil), f.token...)
}

func mustSYN(t testing.TB, nonce [NonceSize]byte, token []byte) []byte {
	t.Helper()
	b, err := appendSYN(nil, &nonce, token)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// tokenJWT splits an identity token into its certificate and JWT.
func tokenJWT(token []byte) (cert []byte, jws string) {
	n := int(binary.BigEndian.Uint16(token))
	return token[2 : 2+n], string(token[2+n:])
}

func makeToken(cert []byte, jws string) []byte {
	b := binary.BigEndian.AppendUint16(nil, uint16(len(cert)))
	b = append(b, cert...)
	return append(b, jws...)
}

// validClaims are claims a node would sign at now.
func validClaims(t testing.TB, node string, now time.Time, withEK bool) *tokenClaims {
	t.Helper()
	cl := &tokenClaims{T: []string{"app=web", "env=prod"}}
	cl.Issuer = node
	cl.IssuedAt = jwt.NewNumericDate(now)
	cl.ExpiresAt = jwt.NewNumericDate(now.Add(10 * time.Minute))
	if withEK {
		k, err := ecdh.P256().GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		cl.EK = base64.RawURLEncoding.EncodeToString(compressP256(k.PublicKey().Bytes()))
	}
	return cl
}

// customCert issues a node certificate for node-a from tmpl's usages.
func customCert(t *testing.T, ca testCA, mod func(*x509.Certificate)) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(42),
		Subject:               pkix.Name{CommonName: "node-a"},
		NotBefore:             base.Add(-time.Hour),
		NotAfter:              base.Add(time.Hour),
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           NodeExtKeyUsages,
	}
	mod(tmpl)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

// rawPKI builds PKI secrets without NewPKI's own-certificate checks, as an
// attacker's enforcer would.
func rawPKI(ca testCA, cert *x509.Certificate, key *ecdsa.PrivateKey) Secrets {
	roots := x509.NewCertPool()
	roots.AddCert(ca.cert)
	return &pkiSecrets{ca: ca.cert, roots: roots, cert: cert, key: key, node: cert.Subject.CommonName}
}

// synFrom returns the SYN of a client engine made from secrets s, at now.
func synFrom(t *testing.T, s Secrets, now time.Time) []byte {
	t.Helper()
	node := s.Node()
	if node == "" {
		node = "node-a"
	}
	e := engine(t, node, s)
	var c Conn
	syn, err := e.AppendSYN(nil, e.NewLocal(clientTags), &c, now)
	if err != nil {
		t.Fatal(err)
	}
	return syn
}

// flipInSegment changes one base64url character in the middle of the JWT's
// segment i (0 header, 1 claims, 2 signature), keeping the encoding valid.
func flipInSegment(jws string, i int) string {
	parts := strings.Split(jws, ".")
	b := []byte(parts[i])
	m := len(b) / 2
	if b[m] == 'A' {
		b[m] = 'B'
	} else {
		b[m] = 'A'
	}
	parts[i] = string(b)
	return strings.Join(parts, ".")
}

// TestAttacksOnSYN: tokens an attacker could present in a SYN, each rejected
// by the server with the right reason, cold and (where a valid token was seen
// before) warm.
func TestAttacksOnSYN(t *testing.T) {
	ca, rogue := cas(t)
	tests := []struct {
		name string
		mode string
		// syn builds the attacker's SYN given a valid SYN of the pair.
		syn  func(t *testing.T, p pair, valid []byte) []byte
		at   time.Duration // verification time after base
		want reason.Code
	}{
		{"signature bytes altered", "pki", func(t *testing.T, p pair, valid []byte) []byte {
			n, tok := synParts(t, valid)
			cert, jws := tokenJWT(tok)
			return mustSYN(t, n, makeToken(cert, flipInSegment(jws, 2)))
		}, 0, reason.BadSignature},
		{"signature bytes altered", "psk", func(t *testing.T, p pair, valid []byte) []byte {
			n, tok := synParts(t, valid)
			cert, jws := tokenJWT(tok)
			return mustSYN(t, n, makeToken(cert, flipInSegment(jws, 2)))
		}, 0, reason.BadSignature},
		{"victim's certificate, attacker's key", "pki", func(t *testing.T, p pair, valid []byte) []byte {
			n, tok := synParts(t, valid)
			cert, _ := tokenJWT(tok)
			k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			jws, err := signJWT(jwt.SigningMethodES256, k, validClaims(t, "node-a", base, true))
			if err != nil {
				t.Fatal(err)
			}
			return mustSYN(t, n, makeToken(cert, jws))
		}, 0, reason.BadSignature},
		{"tags edited after signing", "pki", editTags, 0, reason.BadSignature},
		{"tags edited after signing", "psk", editTags, 0, reason.BadSignature},
		{"alg none", "pki", func(t *testing.T, p pair, valid []byte) []byte {
			n, tok := synParts(t, valid)
			cert, jws := tokenJWT(tok)
			parts := strings.Split(jws, ".")
			hdr := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none"}`))
			return mustSYN(t, n, makeToken(cert, hdr+"."+parts[1]+"."))
		}, 0, reason.BadSignature},
		{"HS256 keyed with the certificate (alg confusion)", "pki", func(t *testing.T, p pair, valid []byte) []byte {
			n, tok := synParts(t, valid)
			cert, _ := tokenJWT(tok)
			jws, err := signJWT(jwt.SigningMethodHS256, cert, validClaims(t, "node-a", base, true))
			if err != nil {
				t.Fatal(err)
			}
			return mustSYN(t, n, makeToken(cert, jws))
		}, 0, reason.BadSignature},
		{"wrong PSK", "psk", func(t *testing.T, p pair, valid []byte) []byte {
			return synFrom(t, testPSK(t, 99), base)
		}, 0, reason.BadSignature},
		{"certificate from another CA", "pki", func(t *testing.T, p pair, valid []byte) []byte {
			return synFrom(t, pkiSecretsFor(t, rogue, rogue.cert, "node-a", time.Hour), base)
		}, 0, reason.UntrustedCertificate},
		{"expired certificate", "pki", func(t *testing.T, p pair, valid []byte) []byte {
			// The certificate is valid until base+1h; the token is fresh at
			// base+1h+1m (our own enforcer refuses to sign it, see
			// TestOwnCertificateExpired; an attacker's would not).
			n, _ := synParts(t, valid)
			cert, key, err := IssueNode(ca.cert, ca.key, "node-a", base, time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			jws, err := signJWT(jwt.SigningMethodES256, key, validClaims(t, "node-a", base.Add(time.Hour+time.Minute), true))
			if err != nil {
				t.Fatal(err)
			}
			return mustSYN(t, n, makeToken(cert.Raw, jws))
		}, time.Hour + time.Minute, reason.UntrustedCertificate},
		{"certificate without clientAuth", "pki", func(t *testing.T, p pair, valid []byte) []byte {
			c, k := customCert(t, ca, func(c *x509.Certificate) { c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth} })
			return synFrom(t, rawPKI(ca, c, k), base)
		}, 0, reason.UntrustedCertificate},
		{"certificate without digitalSignature", "pki", func(t *testing.T, p pair, valid []byte) []byte {
			c, k := customCert(t, ca, func(c *x509.Certificate) { c.KeyUsage = x509.KeyUsageKeyEncipherment })
			return synFrom(t, rawPKI(ca, c, k), base)
		}, 0, reason.UntrustedCertificate},
		{"CA certificate as node certificate", "pki", func(t *testing.T, p pair, valid []byte) []byte {
			return synFrom(t, rawPKI(ca, ca.cert, ca.key), base)
		}, 0, reason.UntrustedCertificate},
		{"issuer is not the certificate's node", "pki", func(t *testing.T, p pair, valid []byte) []byte {
			n, _ := synParts(t, valid)
			forged, err := p.client.sec().sign(validClaims(t, "node-z", base, true))
			if err != nil {
				t.Fatal(err)
			}
			return mustSYN(t, n, forged)
		}, 0, reason.UntrustedCertificate},
		{"PSK token to a PKI node", "pki", func(t *testing.T, p pair, valid []byte) []byte {
			return synFrom(t, testPSK(t, 1), base)
		}, 0, reason.UntrustedCertificate},
		{"PKI token to a PSK node", "psk", func(t *testing.T, p pair, valid []byte) []byte {
			return synFrom(t, pkiSecretsFor(t, ca, ca.cert, "node-a", time.Hour), base)
		}, 0, reason.UntrustedCertificate},
		{"expired token", "pki", keep, 2*DefaultRefresh + time.Second, reason.ExpiredToken},
		{"expired token", "psk", keep, 2*DefaultRefresh + time.Second, reason.ExpiredToken},
		{"token from the future", "pki", func(t *testing.T, p pair, valid []byte) []byte {
			return synFrom(t, p.client.sec().Secrets, base.Add(10*time.Minute))
		}, 0, reason.ExpiredToken},
		{"unsorted tags", "psk", func(t *testing.T, p pair, valid []byte) []byte {
			n, _ := synParts(t, valid)
			cl := validClaims(t, "node-a", base, false)
			cl.T = []string{"env=prod", "app=web"}
			tok, err := p.client.sec().sign(cl)
			if err != nil {
				t.Fatal(err)
			}
			return mustSYN(t, n, tok)
		}, 0, reason.MalformedToken},
		{"no ephemeral key", "pki", func(t *testing.T, p pair, valid []byte) []byte {
			n, _ := synParts(t, valid)
			tok, err := p.client.sec().sign(validClaims(t, "node-a", base, false))
			if err != nil {
				t.Fatal(err)
			}
			return mustSYN(t, n, tok)
		}, 0, reason.MalformedToken},
		{"ephemeral key not a point", "pki", func(t *testing.T, p pair, valid []byte) []byte {
			n, _ := synParts(t, valid)
			cl := validClaims(t, "node-a", base, false)
			cl.EK = base64.RawURLEncoding.EncodeToString(append([]byte{5}, make([]byte, 32)...))
			tok, err := p.client.sec().sign(cl)
			if err != nil {
				t.Fatal(err)
			}
			return mustSYN(t, n, tok)
		}, 0, reason.MalformedToken},
		{"certificate length beyond the token", "pki", func(t *testing.T, p pair, valid []byte) []byte {
			n, tok := synParts(t, valid)
			binary.BigEndian.PutUint16(tok, uint16(len(tok)))
			return mustSYN(t, n, tok)
		}, 0, reason.MalformedToken},
		{"garbage certificate", "pki", func(t *testing.T, p pair, valid []byte) []byte {
			n, tok := synParts(t, valid)
			cert, jws := tokenJWT(tok)
			return mustSYN(t, n, makeToken(make([]byte, len(cert)), jws))
		}, 0, reason.MalformedToken},
		{"garbage JWT", "psk", func(t *testing.T, p pair, valid []byte) []byte {
			n, _ := synParts(t, valid)
			return mustSYN(t, n, makeToken(nil, "not.a.jwt!"))
		}, 0, reason.MalformedToken},
	}
	for _, tc := range tests {
		t.Run(tc.mode+"/"+tc.name, func(t *testing.T) {
			p := newPair(t, tc.mode)
			var cc Conn
			valid, err := p.client.AppendSYN(nil, p.cl, &cc, base)
			if err != nil {
				t.Fatal(err)
			}
			bad := tc.syn(t, p, valid)
			now := base.Add(tc.at)
			// Cold, then again with the same bytes (answered from the
			// failure cache), then after the valid SYN warmed the caches.
			for i, warm := range []bool{false, false, true} {
				if warm {
					var sc Conn
					if _, err := p.server.VerifySYN(valid, &sc, base); err != nil {
						t.Fatalf("valid SYN: %v", err)
					}
				}
				var sc Conn
				peer, err := p.server.VerifySYN(bad, &sc, now)
				if err != tc.want || peer != nil {
					t.Errorf("try %d: VerifySYN = %v, %v; want %v", i, peer, err, tc.want)
				}
				if sc != (Conn{}) {
					t.Errorf("try %d: failed VerifySYN changed the connection", i)
				}
			}
		})
	}
}

func keep(t *testing.T, p pair, valid []byte) []byte { return valid }

// editTags replaces a tag value in the signed claims by one of the same
// length, keeping the signature.
func editTags(t *testing.T, p pair, valid []byte) []byte {
	n, tok := synParts(t, valid)
	cert, jws := tokenJWT(tok)
	parts := strings.Split(jws, ".")
	claims, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	edited := strings.Replace(string(claims), `"app=web"`, `"app=adm"`, 1)
	if edited == string(claims) {
		t.Fatalf("no app=web in %s", claims)
	}
	parts[1] = base64.RawURLEncoding.EncodeToString([]byte(edited))
	return mustSYN(t, n, makeToken(cert, strings.Join(parts, ".")))
}

// TestAttacksOnSYNACK: a client accepts only the SYN-ACK that answers its own
// connection, from the PU whose token the MAC covers.
func TestAttacksOnSYNACK(t *testing.T) {
	tests := []struct {
		name string
		// synack builds what the client receives on conn c2 given a valid
		// SYN-ACK for c1 and one for c2.
		synack func(t *testing.T, p pair, s1, s2 []byte) []byte
		want   reason.Code
	}{
		{"SYN-ACK replayed from another connection", func(t *testing.T, p pair, s1, s2 []byte) []byte {
			return s1
		}, reason.NonceMismatch},
		{"replayed SYN-ACK with the nonce rewritten", func(t *testing.T, p pair, s1, s2 []byte) []byte {
			b := append([]byte(nil), s1...)
			copy(b[headerSize+NonceSize:], s2[headerSize+NonceSize:headerSize+2*NonceSize])
			return b
		}, reason.BadMAC},
		{"MAC altered", func(t *testing.T, p pair, s1, s2 []byte) []byte {
			b := append([]byte(nil), s2...)
			b[headerSize+2*NonceSize] ^= 1
			return b
		}, reason.BadMAC},
		{"server nonce altered", func(t *testing.T, p pair, s1, s2 []byte) []byte {
			b := append([]byte(nil), s2...)
			b[headerSize] ^= 1
			return b
		}, reason.BadMAC},
		{"server token swapped for another PU's", func(t *testing.T, p pair, s1, s2 []byte) []byte {
			other := p.server.NewLocal(clientTags)
			var cx, sx Conn
			syn, _ := p.client.AppendSYN(nil, p.cl, &cx, base)
			if _, err := p.server.VerifySYN(syn, &sx, base); err != nil {
				t.Fatal(err)
			}
			s3, err := p.server.AppendSYNACK(nil, other, &sx, base)
			if err != nil {
				t.Fatal(err)
			}
			b := append([]byte(nil), s2[:headerSize+synackFixed]...)
			b = append(b, s3[headerSize+synackFixed:]...)
			binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
			return b
		}, reason.BadMAC},
		{"SYN instead of SYN-ACK", func(t *testing.T, p pair, s1, s2 []byte) []byte {
			var c Conn
			syn, _ := p.server.AppendSYN(nil, p.sl, &c, base)
			return syn
		}, reason.MalformedToken},
	}
	for _, mode := range []string{"psk", "pki"} {
		for _, tc := range tests {
			t.Run(mode+"/"+tc.name, func(t *testing.T) {
				p := newPair(t, mode)
				var c1, c2, s1c, s2c Conn
				s1 := serverAnswer(t, p, &c1, &s1c)
				s2 := serverAnswer(t, p, &c2, &s2c)
				before := c2
				peer, err := p.client.VerifySYNACK(tc.synack(t, p, s1, s2), &c2, base)
				if err != tc.want || peer != nil {
					t.Errorf("VerifySYNACK = %v, %v; want %v", peer, err, tc.want)
				}
				if c2 != before {
					t.Error("failed VerifySYNACK changed the connection")
				}
				// The genuine SYN-ACK still completes the connection.
				if _, err := p.client.VerifySYNACK(s2, &c2, base); err != nil {
					t.Errorf("genuine SYN-ACK after the attack: %v", err)
				}
			})
		}
	}
}

// serverAnswer sends a SYN on c and returns the server's SYN-ACK.
func serverAnswer(t *testing.T, p pair, c, s *Conn) []byte {
	t.Helper()
	syn, err := p.client.AppendSYN(nil, p.cl, c, base)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.server.VerifySYN(syn, s, base); err != nil {
		t.Fatal(err)
	}
	synack, err := p.server.AppendSYNACK(nil, p.sl, s, base)
	if err != nil {
		t.Fatal(err)
	}
	return synack
}

// TestAttacksOnACK: the server accepts only the ACK for its own nonce with
// the right MAC.
func TestAttacksOnACK(t *testing.T) {
	tests := []struct {
		name string
		ack  func(a1, a2 []byte) []byte // given valid ACKs of conns 1 and 2, what conn 2's server gets
		want reason.Code
	}{
		{"ACK of another connection", func(a1, a2 []byte) []byte { return a1 }, reason.NonceMismatch},
		{"wrong nonce", func(a1, a2 []byte) []byte {
			b := append([]byte(nil), a2...)
			b[headerSize] ^= 0x80
			return b
		}, reason.NonceMismatch},
		{"wrong MAC", func(a1, a2 []byte) []byte {
			b := append([]byte(nil), a2...)
			b[len(b)-1] ^= 1
			return b
		}, reason.BadMAC},
		{"another connection's MAC", func(a1, a2 []byte) []byte {
			b := append([]byte(nil), a2...)
			copy(b[headerSize+NonceSize:], a1[headerSize+NonceSize:])
			return b
		}, reason.BadMAC},
		{"truncated", func(a1, a2 []byte) []byte { return a2[:len(a2)-1] }, reason.MalformedToken},
		{"empty", func(a1, a2 []byte) []byte { return nil }, reason.MissingToken},
	}
	for _, mode := range []string{"psk", "pki"} {
		for _, tc := range tests {
			t.Run(mode+"/"+tc.name, func(t *testing.T) {
				p := newPair(t, mode)
				var c1, s1, c2, s2 Conn
				_, _, f1, err := p.handshake(&c1, &s1, base)
				if err != nil {
					t.Fatal(err)
				}
				syn, _ := p.client.AppendSYN(nil, p.cl, &c2, base)
				p.server.VerifySYN(syn, &s2, base)
				synack, _ := p.server.AppendSYNACK(nil, p.sl, &s2, base)
				if _, err := p.client.VerifySYNACK(synack, &c2, base); err != nil {
					t.Fatal(err)
				}
				a2, _ := p.client.AppendACK(nil, &c2)
				if err := p.server.VerifyACK(tc.ack(f1.ack, a2), &s2); err != tc.want {
					t.Errorf("VerifyACK = %v, want %v", err, tc.want)
				}
				if s2.Established() {
					t.Error("established after a bad ACK")
				}
				if err := p.server.VerifyACK(a2, &s2); err != nil || !s2.Established() {
					t.Errorf("genuine ACK after the attack: %v", err)
				}
			})
		}
	}
}

// TestOwnCertificateExpired: a node does not sign tokens its peers would
// reject for its expired certificate; Prepare reports it.
func TestOwnCertificateExpired(t *testing.T) {
	ca, _ := cas(t)
	e := engine(t, "node-a", pkiSecretsFor(t, ca, ca.cert, "node-a", time.Hour))
	l := e.NewLocal(clientTags)
	if err := l.Prepare(base); err != nil {
		t.Fatalf("Prepare while valid: %v", err)
	}
	if err := l.Prepare(base.Add(time.Hour + time.Minute)); err != reason.UntrustedCertificate {
		t.Errorf("Prepare after expiry: %v, want %v", err, reason.UntrustedCertificate)
	}
	var c Conn
	if _, err := e.AppendSYN(nil, l, &c, base.Add(time.Hour+time.Minute)); err != reason.UntrustedCertificate {
		t.Errorf("AppendSYN after expiry: %v, want %v", err, reason.UntrustedCertificate)
	}
}

// TestOutOfOrder: calls in the wrong state are refused, not acted on.
func TestOutOfOrder(t *testing.T) {
	p := newPair(t, "psk")
	var fresh Conn
	if _, err := p.client.AppendACK(nil, &fresh); err != reason.InvalidState {
		t.Errorf("AppendACK on a fresh conn: %v", err)
	}
	if _, err := p.server.AppendSYNACK(nil, p.sl, &fresh, base); err != reason.InvalidState {
		t.Errorf("AppendSYNACK before VerifySYN: %v", err)
	}
	if err := p.server.VerifyACK(make([]byte, ackSize), &fresh); err != reason.InvalidState {
		t.Errorf("VerifyACK on a fresh conn: %v", err)
	}
	if _, err := p.client.VerifySYNACK(make([]byte, 100), &fresh, base); err != reason.InvalidState {
		t.Errorf("VerifySYNACK on a fresh conn: %v", err)
	}
	var c Conn
	syn, _ := p.client.AppendSYN(nil, p.cl, &c, base)
	if _, err := p.client.VerifySYN(syn, &c, base); err != reason.InvalidState {
		t.Errorf("VerifySYN on a client conn: %v", err)
	}
	if _, err := p.client.AppendSYN(nil, nil, &Conn{}, base); err != reason.InvalidState {
		t.Errorf("AppendSYN without a PU: %v", err)
	}
}
