package attacks

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/trireme-go/trireme/identity"
	"github.com/trireme-go/trireme/testenv"
	"github.com/trireme-go/trireme/tokens"
)

// Token frames crafted byte by byte after docs/wire.md. A valid base comes
// from the tokens package with a real node's certificate and key (what root
// on that node holds, which the threat model trusts): the tests corrupt it,
// or use it as the control that shows the harness delivers what is valid.

// nodeTokens returns a token engine holding node d's certificate and key.
func nodeTokens(t *testing.T, d *testenv.Daemon) *tokens.Engine {
	t.Helper()
	dir := filepath.Join(d.Dir, "pki")
	sec, err := tokens.LoadPKI(filepath.Join(dir, "ca.crt"), filepath.Join(dir, "node.crt"), filepath.Join(dir, "node.key"))
	if err != nil {
		t.Fatal(err)
	}
	return newEngine(t, "", sec)
}

// sceneTokens returns a token engine with the scene's node secrets (PKI:
// its certificate and key; PSK: the key).
func sceneTokens(t *testing.T, s *scene) *tokens.Engine {
	t.Helper()
	cfg, err := os.ReadFile(s.d.Config)
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`pskFile: ([^}\s]+)`).FindSubmatch(cfg)
	if m == nil {
		return nodeTokens(t, s.d)
	}
	sec, err := tokens.LoadPSK(string(m[1]))
	if err != nil {
		t.Fatal(err)
	}
	return newEngine(t, "stolen", sec)
}

// rogueTokens returns a token engine whose node certificate names node but
// is signed by a CA of the attacker's own: a forged node identity.
func rogueTokens(t *testing.T, node string) *tokens.Engine {
	t.Helper()
	now := time.Now()
	ca, caKey, err := tokens.NewCA("rogue CA", now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cert, key, err := tokens.IssueNode(ca, caKey, node, now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	sec, err := tokens.NewPKI(ca, cert, key)
	if err != nil {
		t.Fatal(err)
	}
	return newEngine(t, "", sec)
}

// pskTokens returns a PSK-mode token engine (a key the deployment does not
// use): its tokens carry no certificate.
func pskTokens(t *testing.T, node string) *tokens.Engine {
	t.Helper()
	k := make([]byte, tokens.MinPSKSize)
	_, _ = rand.Read(k)
	sec, err := tokens.NewPSK(k)
	if err != nil {
		t.Fatal(err)
	}
	return newEngine(t, node, sec)
}

func newEngine(t *testing.T, node string, sec tokens.Secrets) *tokens.Engine {
	t.Helper()
	e, err := tokens.New(tokens.Config{Node: node, Secrets: sec})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// mintSYN returns a SYN frame of a PU with tags, made at now.
func mintSYN(t *testing.T, e *tokens.Engine, tags map[string]string, now time.Time) []byte {
	t.Helper()
	var c tokens.Conn
	f, err := e.AppendSYN(nil, e.NewLocal(identity.NewTags(tags)), &c, now)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// synFrame is a decoded SYN frame (docs/wire.md §3, §4).
type synFrame struct {
	nonce []byte
	cert  []byte // DER, empty in PSK mode
	jws   string
}

func parseSYNFrame(t *testing.T, f []byte) synFrame {
	t.Helper()
	if len(f) < 22 || f[0] != tokens.Version || f[1] != 1 || int(binary.BigEndian.Uint16(f[2:])) != len(f) {
		t.Fatalf("not a SYN frame: %x", f)
	}
	tok := f[20:]
	n := int(binary.BigEndian.Uint16(tok))
	return synFrame{nonce: f[4:20], cert: tok[2 : 2+n], jws: string(tok[2+n:])}
}

// bytes encodes the frame with consistent lengths.
func (s synFrame) bytes() []byte {
	n := 4 + tokens.NonceSize + 2 + len(s.cert) + len(s.jws)
	b := []byte{tokens.Version, 1, byte(n >> 8), byte(n)}
	b = append(b, s.nonce...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(s.cert)))
	b = append(b, s.cert...)
	return append(b, s.jws...)
}

// synackFrame encodes a SYN-ACK frame: the server's nonce, the nonce it
// answers, a MAC and an identity token.
func synackFrame(ns, rmt, mac, token []byte) []byte {
	n := 4 + 3*16 + len(token)
	b := []byte{tokens.Version, 2, byte(n >> 8), byte(n)}
	b = append(append(append(b, ns...), rmt...), mac...)
	return append(b, token...)
}

// ackFrame encodes a handshake ACK frame.
func ackFrame(rmt, mac []byte) []byte {
	b := []byte{tokens.Version, 3, 0, 36}
	return append(append(b, rmt...), mac...)
}

// identityToken returns the identity token of a SYN or SYN-ACK frame.
func identityToken(f []byte) []byte {
	if f[1] == 2 {
		return f[52:]
	}
	return f[20:]
}

// withIdentityJWS returns an identity token (docs/wire.md §4) with its JWT
// rewritten by edit.
func withIdentityJWS(tok []byte, edit func(jws string) string) []byte {
	n := 2 + int(binary.BigEndian.Uint16(tok))
	return append(append([]byte(nil), tok[:n]...), edit(string(tok[n:]))...)
}

func random(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

// jwsParts splits a compact JWS.
func jwsParts(t *testing.T, jws string) (header, claims, sig string) {
	t.Helper()
	p := strings.Split(jws, ".")
	if len(p) != 3 {
		t.Fatalf("not a compact JWS: %q", jws)
	}
	return p[0], p[1], p[2]
}

// editClaims rewrites the JWT's claims (decoded JSON) with edit and keeps
// the header and signature: tags changed after signing.
func editClaims(t *testing.T, jws string, edit func(string) string) string {
	t.Helper()
	h, c, s := jwsParts(t, jws)
	js, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil {
		t.Fatal(err)
	}
	edited := edit(string(js))
	if edited == string(js) {
		t.Fatalf("claims unchanged: %s", js)
	}
	return h + "." + base64.RawURLEncoding.EncodeToString([]byte(edited)) + "." + s
}

// flipSignature changes one character in the middle of the JWS signature to
// another base64url character (the signature still decodes).
func flipSignature(t *testing.T, jws string) string {
	t.Helper()
	h, c, s := jwsParts(t, jws)
	b := []byte(s)
	i := len(b) / 2
	if b[i] == 'A' {
		b[i] = 'B'
	} else {
		b[i] = 'A'
	}
	return h + "." + c + "." + string(b)
}

// resign signs the JWT's header and claims with key (ES256): the claims of
// a real token under a signature the attacker can make.
func resign(t *testing.T, jws string, key *ecdsa.PrivateKey) string {
	t.Helper()
	h, c, _ := jwsParts(t, jws)
	sig, err := jwt.SigningMethodES256.Sign(h+"."+c, key)
	if err != nil {
		t.Fatal(err)
	}
	return h + "." + c + "." + base64.RawURLEncoding.EncodeToString(sig)
}

// algNone replaces the JWT's header with {"alg":"none"} and drops the
// signature.
func algNone(t *testing.T, jws string) string {
	t.Helper()
	_, c, _ := jwsParts(t, jws)
	return base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none"}`)) + "." + c + "."
}

func attackerKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}
