package tokens

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hkdf"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/trireme-go/trireme/reason"
)

// Secrets are what a node proves its PUs' identities with: a pre-shared key
// for the whole deployment (NewPSK, LoadPSK) or a CA certificate plus the
// node's certificate and key (NewPKI, LoadPKI). The rest of trireme holds a
// Secrets and never asks which kind it is; only this package does.
type Secrets interface {
	// Kind is "psk" or "pki", for logs and status.
	Kind() string
	// Node is the node name the secrets certify ("" for a PSK, which
	// certifies no name).
	Node() string

	// sign returns the identity token for the claims: the 2-byte certificate
	// length, the certificate (PKI) and the signed JWT.
	sign(cl *tokenClaims) ([]byte, error)
	// verify checks an identity token (cold path) and returns its claims and
	// the time until which the verification holds. Before its first
	// public-key operation it takes b (reason.VerifyRateLimited if refused).
	verify(e *Engine, token []byte, now time.Time, b *spend) (*tokenClaims, time.Time, error)
	// handshakePRK is the HKDF pseudorandom key the connections' keys are
	// expanded from, or nil when it comes from ECDH of the two ephemeral keys.
	handshakePRK() *[32]byte
	// ownValidity is until when a verifier at now accepts what these
	// secrets certify (the end of the node's certificate chain; no limit
	// for a PSK), and whether it does at now.
	ownValidity(now time.Time) (time.Time, bool)
}

// MinPSKSize is the smallest accepted pre-shared key.
const MinPSKSize = 32

// MaxClockSkew is how far in the future a token's iat may be: nodes' clocks
// differ a little.
const MaxClockSkew = 30 * time.Second

// Labels that separate the keys derived from one PSK.
const (
	pskTokenInfo     = "trireme/1 psk token signing key"
	pskHandshakeInfo = "trireme/1 psk handshake key"
)

type pskSecrets struct {
	tokenKey     []byte   // HS256 key
	handshakeKey [32]byte // PRK of the connections' keys K
}

// NewPSK returns secrets from a pre-shared key of at least MinPSKSize bytes.
// The JWT signing key and the handshake key are derived from it separately
// (HKDF-SHA256 with distinct info strings).
func NewPSK(key []byte) (Secrets, error) {
	if len(key) < MinPSKSize {
		return nil, fmt.Errorf("pre-shared key is %d bytes, want at least %d", len(key), MinPSKSize)
	}
	tk, err := hkdf.Key(sha256.New, key, nil, pskTokenInfo, 32)
	if err != nil {
		return nil, err
	}
	hk, err := hkdf.Key(sha256.New, key, nil, pskHandshakeInfo, 32)
	if err != nil {
		return nil, err
	}
	p := &pskSecrets{tokenKey: tk}
	copy(p.handshakeKey[:], hk)
	return p, nil
}

// LoadPSK reads a pre-shared key from a file. Leading and trailing white
// space (an editor's final newline) is not part of the key.
func LoadPSK(path string) (Secrets, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	s, err := NewPSK(bytes.TrimSpace(b))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return s, nil
}

func (*pskSecrets) Kind() string { return "psk" }
func (*pskSecrets) Node() string { return "" }

func (p *pskSecrets) sign(cl *tokenClaims) ([]byte, error) {
	jws, err := signJWT(jwt.SigningMethodHS256, p.tokenKey, cl)
	if err != nil {
		return nil, err
	}
	tok := make([]byte, 2, 2+len(jws))
	return append(tok, jws...), nil
}

func (p *pskSecrets) verify(e *Engine, token []byte, now time.Time, _ *spend) (*tokenClaims, time.Time, error) {
	if len(token) < minToken {
		return nil, time.Time{}, reason.MalformedToken
	}
	if binary.BigEndian.Uint16(token) != 0 {
		// A certificate: the peer runs PKI mode; this node cannot check it.
		return nil, time.Time{}, reason.UntrustedCertificate
	}
	e.stats.signatureVerifications.Add(1)
	cl, err := parseJWT(token[2:], jwt.SigningMethodHS256.Alg(), p.tokenKey, now)
	if err != nil {
		return nil, time.Time{}, err
	}
	return cl, cl.ExpiresAt.Time, nil
}

func (p *pskSecrets) handshakePRK() *[32]byte { return &p.handshakeKey }

func (*pskSecrets) ownValidity(time.Time) (time.Time, bool) {
	return time.Unix(1<<62, 0), true
}

type pkiSecrets struct {
	ca    *x509.Certificate
	roots *x509.CertPool
	cert  *x509.Certificate
	key   *ecdsa.PrivateKey
	node  string
	// self is the node certificate as checkNodeCert accepted it.
	self *verifiedCert
}

// NewPKI returns secrets from the deployment CA certificate and this node's
// certificate and private key. The node certificate must be one a peer would
// accept now: signed by ca, valid, of the right usage (checkNodeCert), and
// key must be its private key.
func NewPKI(ca *x509.Certificate, cert *x509.Certificate, key *ecdsa.PrivateKey) (Secrets, error) {
	if ca == nil || cert == nil || key == nil {
		return nil, errors.New("pki: CA certificate, node certificate and key are all required")
	}
	if !ca.IsCA || ca.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, errors.New("pki: the CA certificate is not a CA (basic constraints, keyCertSign)")
	}
	if key.Curve != elliptic.P256() {
		return nil, errors.New("pki: node key is not ECDSA P-256")
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	p := &pkiSecrets{ca: ca, roots: roots, cert: cert, key: key, node: cert.Subject.CommonName}
	self, err := p.checkNodeCert(cert, time.Now())
	if err != nil {
		return nil, fmt.Errorf("pki: node certificate %q: %w", cert.Subject.CommonName, err)
	}
	p.self = self
	if !key.PublicKey.Equal(cert.PublicKey) {
		return nil, errors.New("pki: node key does not match the node certificate")
	}
	if len(cert.Raw) > 0xffff {
		return nil, errors.New("pki: node certificate too large")
	}
	return p, nil
}

// LoadPKI reads PEM files written by `trireme pki`: the CA certificate, the
// node certificate and the node's private key.
func LoadPKI(caCertFile, nodeCertFile, nodeKeyFile string) (Secrets, error) {
	ca, err := ReadCertificate(caCertFile)
	if err != nil {
		return nil, err
	}
	cert, err := ReadCertificate(nodeCertFile)
	if err != nil {
		return nil, err
	}
	key, err := ReadKey(nodeKeyFile)
	if err != nil {
		return nil, err
	}
	return NewPKI(ca, cert, key)
}

func (*pkiSecrets) Kind() string   { return "pki" }
func (p *pkiSecrets) Node() string { return p.node }

func (p *pkiSecrets) sign(cl *tokenClaims) ([]byte, error) {
	if cl.IssuedAt != nil && !cl.IssuedAt.Before(p.cert.NotAfter) {
		// Peers would reject it; fail here with the reason they would give.
		return nil, reason.UntrustedCertificate
	}
	jws, err := signJWT(jwt.SigningMethodES256, p.key, cl)
	if err != nil {
		return nil, err
	}
	der := p.cert.Raw
	tok := make([]byte, 0, 2+len(der)+len(jws))
	tok = binary.BigEndian.AppendUint16(tok, uint16(len(der)))
	tok = append(tok, der...)
	return append(tok, jws...), nil
}

func (p *pkiSecrets) verify(e *Engine, token []byte, now time.Time, b *spend) (*tokenClaims, time.Time, error) {
	if len(token) < minToken {
		return nil, time.Time{}, reason.MalformedToken
	}
	n := int(binary.BigEndian.Uint16(token))
	if n == 0 {
		// No certificate: a PSK-mode peer, or a token stripped of it.
		return nil, time.Time{}, reason.UntrustedCertificate
	}
	if n > len(token)-minToken {
		return nil, time.Time{}, reason.MalformedToken
	}
	der, jws := token[2:2+n], token[2+n:]
	vc, err := e.verifyCert(p, der, now, b)
	if err != nil {
		return nil, time.Time{}, err
	}
	if !b.take() {
		return nil, time.Time{}, reason.VerifyRateLimited
	}
	e.stats.signatureVerifications.Add(1)
	e.stats.publicKeyOps.Add(1)
	cl, err := parseJWT(jws, jwt.SigningMethodES256.Alg(), vc.pub, now)
	if err != nil {
		return nil, time.Time{}, err
	}
	if cl.Issuer != vc.node {
		// Signed by a node's key but claiming another node's name.
		return nil, time.Time{}, reason.UntrustedCertificate
	}
	until := cl.ExpiresAt.Time
	if vc.notAfter.Before(until) {
		until = vc.notAfter
	}
	return cl, until, nil
}

func (p *pkiSecrets) handshakePRK() *[32]byte { return nil }

func (p *pkiSecrets) ownValidity(now time.Time) (time.Time, bool) {
	// verifyCert's test of a cached certificate; secrets not made by
	// NewPKI (tests' forgeries) vouch for nothing.
	if p.self == nil || now.Before(p.self.notBefore) || now.After(p.self.notAfter) {
		return time.Time{}, false
	}
	return p.self.notAfter, true
}

// NodeExtKeyUsages are the extended key usages a node certificate must carry:
// every node is a client (SYN) and a server (SYN-ACK) of the handshake.
var NodeExtKeyUsages = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}

// checkNodeCert checks a peer's (or our own) node certificate: chain to the
// CA, validity period at now, key usage digitalSignature, extended key usages
// NodeExtKeyUsages, not a CA, an ECDSA P-256 key and a node name (CN).
func (p *pkiSecrets) checkNodeCert(cert *x509.Certificate, now time.Time) (*verifiedCert, error) {
	chains, err := cert.Verify(x509.VerifyOptions{
		Roots:       p.roots,
		CurrentTime: now,
		KeyUsages:   []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	if err != nil {
		return nil, reason.UntrustedCertificate
	}
	if cert.IsCA || cert.KeyUsage&x509.KeyUsageDigitalSignature == 0 || cert.Subject.CommonName == "" {
		return nil, reason.UntrustedCertificate
	}
	for _, u := range NodeExtKeyUsages {
		if !slices.Contains(cert.ExtKeyUsage, u) {
			return nil, reason.UntrustedCertificate
		}
	}
	pub, ok := cert.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		return nil, reason.UntrustedCertificate
	}
	vc := &verifiedCert{pub: pub, node: cert.Subject.CommonName, notBefore: cert.NotBefore, notAfter: cert.NotAfter}
	for _, c := range chains[0] {
		if c.NotBefore.After(vc.notBefore) {
			vc.notBefore = c.NotBefore
		}
		if c.NotAfter.Before(vc.notAfter) {
			vc.notAfter = c.NotAfter
		}
	}
	return vc, nil
}

// verifiedCert is a node certificate that checkNodeCert accepted, cached by
// its DER so that a new PU's token from a known node costs one signature
// check, not two.
type verifiedCert struct {
	der                 []byte
	pub                 *ecdsa.PublicKey
	node                string
	notBefore, notAfter time.Time
}

// tokenClaims are the claims of an identity JWT (docs/wire.md).
type tokenClaims struct {
	// T are the PU's identity tags as "key=value", sorted by key.
	T []string `json:"T"`
	// EK is the PU's ephemeral ECDH P-256 public key (SEC 1 compressed
	// point, base64url), PKI mode only.
	EK string `json:"EK,omitempty"`
	jwt.RegisteredClaims
}

func signJWT(m jwt.SigningMethod, key any, cl *tokenClaims) (string, error) {
	t := jwt.NewWithClaims(m, cl)
	delete(t.Header, "typ") // every byte counts in a SYN
	return t.SignedString(key)
}

// jwtReason maps a jwt error to the drop reason.
func jwtReason(err error) reason.Code {
	var rc reason.Code
	switch {
	case errors.As(err, &rc):
		return rc
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return reason.BadSignature
	case errors.Is(err, jwt.ErrTokenExpired), errors.Is(err, jwt.ErrTokenNotValidYet),
		errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return reason.ExpiredToken
	default:
		return reason.MalformedToken
	}
}
