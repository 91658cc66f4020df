package tokens

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"
)

// jwsKeys are the keys the differential tests sign and verify with.
type jwsKeys struct {
	ec   *ecdsa.PrivateKey
	hmac []byte
}

func newJWSKeys(t testing.TB) jwsKeys {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return jwsKeys{ec: k, hmac: []byte("0123456789abcdef0123456789abcdef")}
}

func (k jwsKeys) verifyKey(alg string) any {
	if alg == "ES256" {
		return &k.ec.PublicKey
	}
	return k.hmac
}

// sign returns the compact JWS of header and payload (JSON text) signed
// with alg's key.
func (k jwsKeys) sign(t testing.TB, alg, header, payload string) string {
	enc := base64.RawURLEncoding
	signed := enc.EncodeToString([]byte(header)) + "." + enc.EncodeToString([]byte(payload))
	var sig []byte
	switch alg {
	case "ES256":
		h := sha256.Sum256([]byte(signed))
		r, s, err := ecdsa.Sign(rand.Reader, k.ec, h[:])
		if err != nil {
			t.Fatal(err)
		}
		sig = make([]byte, 64)
		r.FillBytes(sig[:32])
		s.FillBytes(sig[32:])
	case "HS256":
		m := hmac.New(sha256.New, k.hmac)
		m.Write([]byte(signed))
		sig = m.Sum(nil)
	}
	return signed + "." + enc.EncodeToString(sig)
}

// pathsAgree checks that the fast path, when it takes the JWS, gives the
// library path's answer; it reports whether the fast path took it.
func pathsAgree(t *testing.T, jws string, alg string, key any, now time.Time) bool {
	t.Helper()
	fast, ferr := parseJWTFast([]byte(jws), alg, key, now)
	if ferr == errOtherHeader {
		return false
	}
	lib, lerr := parseJWTLib([]byte(jws), alg, key, now)
	if lerr == nil {
		lerr = validateTimes(lib, now) // the library validated already: nil
	}
	if ferr != lerr {
		t.Fatalf("%s: fast path %v, library %v", jws, ferr, lerr)
	}
	if ferr == nil && !reflect.DeepEqual(fast, lib) {
		t.Fatalf("%s: fast path claims %+v, library %+v", jws, fast, lib)
	}
	return true
}

// TestParseJWTPathsAgree: for JWSs with trireme's header, the hand-written
// verification accepts what the jwt library accepts, with the same claims,
// and refuses the rest with the same reason (signature, encoding, JSON,
// exp/nbf faults, and the order between them).
func TestParseJWTPathsAgree(t *testing.T) {
	k := newJWSKeys(t)
	now := time.Unix(1795448700, 0)
	claims := []string{
		`{"T":["app=web"],"EK":"A0-U","iss":"node-a","exp":1795449284,"iat":1795448684}`,
		`{"T":[],"iss":"n","exp":1795448700,"iat":1}`,                  // exp == now: expired
		`{"T":[],"iss":"n","exp":1795448699.5,"iat":1}`,                // fractional, past
		`{"T":[],"iss":"n","exp":1795448700.25,"iat":1}`,               // fractional, future
		`{"T":[],"iss":"n","exp":1e10,"iat":1}`,                        // exponent
		`{"T":[],"iss":"n","iat":1}`,                                   // no exp
		`{"T":[],"iss":"n","iat":1,"nbf":1795448800}`,                  // no exp, not yet valid
		`{"T":[],"iss":"n","exp":1795449284,"nbf":1795448800}`,         // not yet valid
		`{"T":[],"iss":"n","exp":1795449284,"nbf":1795448600}`,         // nbf past
		`{"T":[],"iss":"n","exp":1,"nbf":1795448800}`,                  // both
		`{"T":[],"iss":"n","exp":"1795449284"}`,                        // exp a string
		`{"T":[],"iss":"n","exp":null}`,                                // exp null
		`{"t":["x=y"],"ek":"e","ISS":"n","EXP":1795449284,"Iat":5}`,    // case-folded keys
		`{"T":["a=b"],"T":["c=d"],"iss":"n","exp":1795449284}`,         // duplicate key
		`{"T":[],"iss":"n","exp":1795449284,"aud":"x","sub":"s"}`,      // other registered claims
		`{"T":[],"iss":"n","exp":1795449284,"aud":5}`,                  // aud not a string
		`{"T":[],"iss":"n","exp":1795449284,"extra":{"a":[1,2]}}`,      // unknown claim
		`{"T":[],"iss":"n","exp":1795449284} trailing`,                 // trailing bytes
		`{"T":[],"iss":"n","exp":1795449284}{}`,                        // two values
		`{"T":"notalist","exp":1795449284}`,                            // wrong type
		`{"T":["\u0000\ud800"],"iss":"\"<>","exp":1795449284,"iat":1}`, // escapes
		"{\"T\":[\"\xff\"],\"iss\":\"n\",\"exp\":1795449284}",          // invalid UTF-8
		`null`, `[]`, `{}`, `"s"`, `1`, ``, `{`,
		// The shape trireme signs, and near misses of it.
		`{"T":["a=b","c=d"],"EK":"","iss":"n","exp":1795449284,"iat":0}`,
		`{"T":["a=b"],"iss":"n","exp":1795449284,"iat":1795448684} `,
		`{"T":["a=\"b"],"iss":"n","exp":1795449284,"iat":1}`,
		`{"T":["caf\u00e9=1"],"iss":"n","exp":1795449284,"iat":1}`,
		"{\"T\":[\"a=\tb\"],\"iss\":\"n\",\"exp\":1795449284,\"iat\":1}",
		`{"T":["a=b"],"iss":"n","exp":01795449284,"iat":1}`,
		`{"T":["a=b"],"iss":"n","exp":1795449284000000,"iat":1}`,
		`{"T":["a=b"],"iss":"n","exp":179544928400000,"iat":1}`,
		`{"T":["a=b"],"iss":"n","exp":1795449284.0,"iat":1}`,
		`{"T":["a=b"],"iss":"n","exp":1795449284e0,"iat":1}`,
		`{"T":["a=b"],"iss":"n","exp":-1,"iat":1}`,
		`{"T":["a=b"],"iss":"n","exp":1795449284,"iat":1,"nbf":5}`,
		`{"T":["a=b"],"iss":"n","exp":1795449284,"iat":1}}`,
		`{"T":["a=b",],"iss":"n","exp":1795449284,"iat":1}`,
		`{"T":["a=b"],"iss":"n","iat":1,"exp":1795449284}`,
	}
	for _, alg := range []string{"ES256", "HS256"} {
		hdr := `{"alg":"` + alg + `"}`
		key := k.verifyKey(alg)
		for _, c := range claims {
			jws := k.sign(t, alg, hdr, c)
			if !pathsAgree(t, jws, alg, key, now) {
				t.Fatalf("%s: canonical header not on the fast path", jws)
			}
			segs := strings.Split(jws, ".")
			variants := []string{
				segs[0] + "." + segs[1] + "." + flipSig(segs[2]),               // bad signature
				segs[0] + "." + segs[1] + "." + segs[2][:len(segs[2])-4],       // short signature
				segs[0] + "." + segs[1] + "." + segs[2] + "AA",                 // long signature
				segs[0] + "." + segs[1] + "." + segs[2] + "=",                  // padded
				segs[0] + "." + segs[1] + "." + segs[2][:len(segs[2])-1] + "B", // stray bits (ES256) / altered
				segs[0] + "." + segs[1] + "." + "!!!!",                         // not base64
				segs[0] + "." + segs[1] + ".",                                  // empty signature
				segs[0] + "." + segs[1] + "x." + segs[2],                       // payload altered
				segs[0] + "." + segs[1] + "=." + segs[2],                       // payload padded
				segs[0] + ".!" + segs[1] + "." + segs[2],                       // payload not base64
				segs[0] + "." + segs[1],                                        // two segments
				jws + ".x",                                                     // four segments
			}
			for _, v := range variants {
				pathsAgree(t, v, alg, key, now)
			}
		}
		// Keys of the wrong kind: what the engine never passes, still the
		// same answer.
		other := k.verifyKey(map[string]string{"ES256": "HS256", "HS256": "ES256"}[alg])
		pathsAgree(t, k.sign(t, alg, hdr, claims[0]), alg, other, now)
	}
	// Other headers go to the library.
	for _, hdr := range []string{`{"alg":"ES256","typ":"JWT"}`, `{"alg":"none"}`, `{"alg":"HS256"}`, `{"typ":"JWT","alg":"ES256"}`} {
		jws := k.sign(t, "ES256", hdr, claims[0])
		if pathsAgree(t, jws, "ES256", &k.ec.PublicKey, now) {
			t.Errorf("header %s took the fast path", hdr)
		}
	}
}

func flipSig(seg string) string {
	b, _ := base64.RawURLEncoding.DecodeString(seg)
	b[len(b)/2] ^= 1
	return base64.RawURLEncoding.EncodeToString(b)
}

// FuzzParseJWTPaths: arbitrary claims (signed validly, or segments as they
// come) get the same answer on both paths.
func FuzzParseJWTPaths(f *testing.F) {
	k := newJWSKeys(f)
	f.Add([]byte(`{"T":["app=web"],"iss":"node-a","exp":1795449284,"iat":1795448684}`), "", true)
	f.Add([]byte(`{"T":[],"iss":"n","nbf":1795448800,"exp":1.5}`), "", true)
	f.Add([]byte(`eyJUIjpbXX0`), "AAAA", false)
	now := time.Unix(1795448700, 0)
	f.Fuzz(func(t *testing.T, payload []byte, sig string, signed bool) {
		jws := "eyJhbGciOiJIUzI1NiJ9." + string(payload) + "." + sig
		if signed {
			jws = k.sign(t, "HS256", `{"alg":"HS256"}`, string(payload))
		}
		pathsAgree(t, jws, "HS256", k.hmac, now)
		if signed {
			parts := strings.SplitN(jws, ".", 3)
			pathsAgree(t, parts[0]+"."+parts[1]+"."+sig, "HS256", k.hmac, now)
		}
	})
}

func TestJWSHeaders(t *testing.T) {
	for alg, h := range map[string][]byte{"ES256": es256Header, "HS256": hs256Header} {
		b, err := base64.RawURLEncoding.DecodeString(string(h))
		if err != nil || string(b) != fmt.Sprintf(`{"alg":%q}`, alg) {
			t.Errorf("%s header %s decodes to %s (%v)", alg, h, b, err)
		}
	}
}

// BenchmarkParseJWT: verifying one identity JWT by hand (the token path)
// and with the jwt library (other headers; the path before #14), same
// token, same key.
func BenchmarkParseJWT(b *testing.B) {
	k := newJWSKeys(b)
	now := time.Unix(1795448700, 0)
	claims := `{"T":["@sys:image=registry.example/shop/web:1.4","@sys:name=web-7d9f","app=web","env=prod"],"EK":"A0-Umb8zprHAPvHvi4GJgoqfubhEU34R99f-nz6sRKLw","iss":"node-a","exp":1795449284,"iat":1795448684}`
	for _, alg := range []string{"HS256", "ES256"} {
		jws := []byte(k.sign(b, alg, `{"alg":"`+alg+`"}`, claims))
		key := k.verifyKey(alg)
		for _, path := range []struct {
			name  string
			parse func([]byte, string, any, time.Time) (*tokenClaims, error)
		}{{"fast", parseJWTFast}, {"library", parseJWTLib}} {
			b.Run(alg+"/"+path.name, func(b *testing.B) {
				b.ReportAllocs()
				clock := startCPUClock(b)
				for b.Loop() {
					if _, err := path.parse(jws, alg, key, now); err != nil {
						b.Fatal(err)
					}
				}
				clock.report(b)
			})
		}
	}
}

// TestScanClaimsCanonical: the claims an engine signs are read by the
// scanner (not by encoding/json), into what encoding/json makes of them.
func TestScanClaimsCanonical(t *testing.T) {
	for _, mode := range []string{"psk", "pki"} {
		p := newPair(t, mode)
		ep, err := p.client.newEpoch(clientTags, base)
		if err != nil {
			t.Fatal(err)
		}
		jws := ep.token[2+int(ep.token[0])<<8+int(ep.token[1]):]
		payload, err := base64.RawURLEncoding.DecodeString(strings.Split(string(jws), ".")[1])
		if err != nil {
			t.Fatal(err)
		}
		got := scanClaims(payload)
		if got == nil {
			t.Fatalf("%s: the scanner refused %s", mode, payload)
		}
		want := new(tokenClaims)
		if err := json.Unmarshal(payload, want); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: scanner %+v, encoding/json %+v", mode, got, want)
		}
	}
}
