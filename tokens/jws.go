package tokens

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"math/big"
	"time"
	"unicode/utf8"

	"github.com/golang-jwt/jwt/v5"

	"github.com/trireme-go/trireme/reason"
)

// The identity JWT's header is one of two fixed strings (docs/wire.md §4):
// the token path checks it by comparing bytes instead of decoding JSON into
// a map, and verifies the signature and the claims itself, without the jwt
// library's parser (its token object, header map, string copies and
// big-integer signature conversion: about a third of a cold verification's
// cost besides the P-256 arithmetic). A token with any other header takes
// the library's path (parseJWTLib), so what is accepted and each refusal's
// reason are the same on both paths (TestParseJWTPathsAgree,
// FuzzParseJWTPaths).
var (
	es256Header = []byte(base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"ES256"}`)))
	hs256Header = []byte(base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"HS256"}`)))
)

// b64 is the JWT segments' encoding as the library decodes them
// (jwt.WithStrictDecoding: no padding, no stray bits).
var b64 = base64.RawURLEncoding.Strict()

// errOtherHeader: the JWS does not have the header trireme signs; the
// library's parser decides.
var errOtherHeader = errors.New("tokens: JWS header is not the canonical one")

// parseJWT verifies a JWT's signature and its exp and iat at now. Errors are
// reason codes.
func parseJWT(jws []byte, alg string, key any, now time.Time) (*tokenClaims, error) {
	cl, err := parseJWTFast(jws, alg, key, now)
	if err == errOtherHeader {
		cl, err = parseJWTLib(jws, alg, key, now)
	}
	if err != nil {
		return nil, err
	}
	return cl, checkClaims(cl, now)
}

// checkClaims: what trireme requires beyond the JWT rules.
func checkClaims(cl *tokenClaims, now time.Time) error {
	if cl.IssuedAt == nil || cl.Issuer == "" {
		return reason.MalformedToken
	}
	if cl.IssuedAt.After(now.Add(MaxClockSkew)) {
		return reason.ExpiredToken // not valid yet
	}
	return nil
}

// parseJWTFast does what jwt.Parser.ParseWithClaims does with the options of
// parseJWTLib, in the same order (so with the same error for each fault),
// for a JWS with the canonical header of alg: decode the claims (malformed),
// decode the signature (malformed), verify it (bad signature), validate exp
// (required, not past) and nbf (if present, not future).
func parseJWTFast(jws []byte, alg string, key any, now time.Time) (*tokenClaims, error) {
	hdr := es256Header
	if alg == jwt.SigningMethodHS256.Alg() {
		hdr = hs256Header
	}
	if len(jws) <= len(hdr) || jws[len(hdr)] != '.' || !bytes.Equal(jws[:len(hdr)], hdr) {
		return nil, errOtherHeader
	}
	rest := jws[len(hdr)+1:]
	dot := bytes.IndexByte(rest, '.')
	if dot < 0 || bytes.IndexByte(rest[dot+1:], '.') >= 0 {
		return nil, errOtherHeader // not three segments: the library says how
	}
	signed, payload, sigSeg := jws[:len(hdr)+1+dot], rest[:dot], rest[dot+1:]

	var pbuf [MaxFrame]byte
	if b64.DecodedLen(len(payload)) > len(pbuf) {
		return nil, errOtherHeader // cannot be in a frame; not worth a fast path
	}
	n, err := b64.Decode(pbuf[:], payload)
	if err != nil {
		return nil, reason.MalformedToken
	}
	cl, err := decodeClaims(pbuf[:n])
	if err != nil {
		return nil, reason.MalformedToken
	}

	var sbuf [128]byte
	if b64.DecodedLen(len(sigSeg)) > len(sbuf) {
		return nil, errOtherHeader
	}
	n, err = b64.Decode(sbuf[:], sigSeg)
	if err != nil {
		return nil, reason.MalformedToken
	}
	sig := sbuf[:n]
	if !verifySignature(alg, key, signed, sig) {
		return nil, reason.BadSignature
	}
	return cl, validateTimes(cl, now)
}

// verifySignature checks an ES256 or HS256 signature as the jwt library's
// signing methods do.
func verifySignature(alg string, key any, signed, sig []byte) bool {
	switch alg {
	case jwt.SigningMethodES256.Alg():
		pub, ok := key.(*ecdsa.PublicKey)
		if !ok || len(sig) != 64 {
			return false
		}
		h := sha256.Sum256(signed)
		var r, s big.Int
		return ecdsa.Verify(pub, h[:], r.SetBytes(sig[:32]), s.SetBytes(sig[32:]))
	case jwt.SigningMethodHS256.Alg():
		k, ok := key.([]byte)
		if !ok {
			return false
		}
		m := hmac.New(sha256.New, k)
		m.Write(signed)
		var sum [sha256.Size]byte
		return hmac.Equal(sig, m.Sum(sum[:0]))
	}
	return false
}

// validateTimes is the jwt library's claims validation with
// WithExpirationRequired: an expired or not-yet-valid token is expired, a
// missing exp (when the times are otherwise fine) is malformed.
func validateTimes(cl *tokenClaims, now time.Time) error {
	expired := cl.ExpiresAt != nil && !now.Before(cl.ExpiresAt.Time)
	early := cl.NotBefore != nil && now.Before(cl.NotBefore.Time)
	switch {
	case expired || early:
		return reason.ExpiredToken
	case cl.ExpiresAt == nil:
		return reason.MalformedToken
	}
	return nil
}

// parseJWTLib verifies a JWT with the jwt library (a header other than the
// canonical one).
func parseJWTLib(jws []byte, alg string, key any, now time.Time) (*tokenClaims, error) {
	p := jwt.NewParser(
		jwt.WithValidMethods([]string{alg}),
		jwt.WithExpirationRequired(),
		jwt.WithStrictDecoding(),
		jwt.WithTimeFunc(func() time.Time { return now }),
	)
	cl := new(tokenClaims)
	if _, err := p.ParseWithClaims(string(jws), cl, func(*jwt.Token) (any, error) { return key, nil }); err != nil {
		return nil, jwtReason(err)
	}
	return cl, nil
}

// ownClaims decodes the claims of an identity token this engine signed,
// without verifying it, as a verifier decodes them.
func ownClaims(token []byte) (*tokenClaims, error) {
	if len(token) < 2 || 2+int(binary.BigEndian.Uint16(token)) > len(token) {
		return nil, reason.MalformedToken
	}
	jws := token[2+int(binary.BigEndian.Uint16(token)):]
	_, rest, ok := bytes.Cut(jws, []byte{'.'})
	if !ok {
		return nil, reason.MalformedToken
	}
	payload, _, ok := bytes.Cut(rest, []byte{'.'})
	if !ok {
		return nil, reason.MalformedToken
	}
	b := make([]byte, b64.DecodedLen(len(payload)))
	n, err := b64.Decode(b, payload)
	if err != nil {
		return nil, reason.MalformedToken
	}
	cl, err := decodeClaims(b[:n])
	if err != nil {
		return nil, reason.MalformedToken
	}
	return cl, nil
}

// decodeClaims decodes a JWT's claims as json.Unmarshal into a tokenClaims
// does. The claims trireme signs have one shape (json.Marshal of
// tokenClaims: T, EK, iss, exp, iat in this order, plain strings, integer
// times; docs/wire.md §4); scanClaims reads that shape without reflection
// (the JSON decoder was most of a JWT's cost besides the signature), and
// anything else goes to encoding/json.
func decodeClaims(b []byte) (*tokenClaims, error) {
	if cl := scanClaims(b); cl != nil {
		return cl, nil
	}
	cl := new(tokenClaims)
	if err := json.Unmarshal(b, cl); err != nil {
		return nil, err
	}
	return cl, nil
}

// scanClaims reads claims of exactly the shape trireme signs, or returns
// nil: `{"T":[...]` then optional `"EK":`, then `"iss":`, `"exp":`, `"iat":`,
// no white space, strings without escapes, control characters or invalid
// UTF-8 (encoding/json would change those), integers of at most 15 digits
// (exact as float64, as the jwt library's NumericDate reads them).
func scanClaims(b []byte) *tokenClaims {
	sc := claimScanner{b: b}
	cl := new(tokenClaims)
	if !sc.lit(`{"T":[`) {
		return nil
	}
	if !sc.lit("]") {
		for {
			str, ok := sc.str()
			if !ok {
				return nil
			}
			cl.T = append(cl.T, str)
			if sc.lit("]") {
				break
			}
			if !sc.lit(",") {
				return nil
			}
		}
	}
	if cl.T == nil {
		cl.T = []string{} // json.Unmarshal of [] is an empty, non-nil slice
	}
	var ok bool
	if sc.lit(`,"EK":`) {
		if cl.EK, ok = sc.str(); !ok {
			return nil
		}
	}
	if !sc.lit(`,"iss":`) {
		return nil
	}
	if cl.Issuer, ok = sc.str(); !ok {
		return nil
	}
	if !sc.lit(`,"exp":`) {
		return nil
	}
	if cl.ExpiresAt, ok = sc.date(); !ok {
		return nil
	}
	if !sc.lit(`,"iat":`) {
		return nil
	}
	if cl.IssuedAt, ok = sc.date(); !ok {
		return nil
	}
	if !sc.lit("}") || len(sc.b) != 0 {
		return nil
	}
	return cl
}

type claimScanner struct{ b []byte }

func (s *claimScanner) lit(l string) bool {
	if len(s.b) < len(l) || string(s.b[:len(l)]) != l {
		return false
	}
	s.b = s.b[len(l):]
	return true
}

// str reads a JSON string that needs no unescaping or repair.
func (s *claimScanner) str() (string, bool) {
	if len(s.b) == 0 || s.b[0] != '"' {
		return "", false
	}
	for i := 1; i < len(s.b); i++ {
		switch c := s.b[i]; {
		case c == '"':
			v := s.b[1:i]
			if !utf8.Valid(v) {
				return "", false
			}
			s.b = s.b[i+1:]
			return string(v), true
		case c == '\\' || c < 0x20:
			return "", false
		}
	}
	return "", false
}

// date reads a non-negative integer without leading zeros as the jwt
// library's NumericDate does (float64 seconds, truncated to TimePrecision).
func (s *claimScanner) date() (*jwt.NumericDate, bool) {
	n := 0
	for n < len(s.b) && s.b[n] >= '0' && s.b[n] <= '9' {
		n++
	}
	if n == 0 || n > 15 || (n > 1 && s.b[0] == '0') {
		return nil, false
	}
	if n < len(s.b) && (s.b[n] == '.' || s.b[n] == 'e' || s.b[n] == 'E') {
		return nil, false
	}
	var v int64
	for _, c := range s.b[:n] {
		v = v*10 + int64(c-'0')
	}
	s.b = s.b[n:]
	return jwt.NewNumericDate(time.Unix(v, 0)), true
}
