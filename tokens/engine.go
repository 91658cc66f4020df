// Package tokens proves PUs' identities to each other inside the TCP
// handshake. The client's enforcer puts a frame with its PU's identity token
// in the SYN; the server's enforcer verifies it and answers in the SYN-ACK
// with its own PU's token and a MAC binding both tokens to both connection
// nonces; the handshake ACK carries the client's MAC over the extended
// transcript. docs/wire.md describes the bytes and the reasons.
//
// The package knows nothing of packets beyond the frame bytes it is given.
// Identity tokens are signed once per PU per epoch (Config.Refresh); verified
// tokens and ECDH results are cached, so after the first connection between
// two PUs in an epoch a handshake costs only hashes.
package tokens

import (
	"bytes"
	"crypto/ecdh"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/maphash"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/trireme-go/trireme/identity"
	"github.com/trireme-go/trireme/reason"
)

// Defaults of Config.
const (
	DefaultRefresh   = 5 * time.Minute
	DefaultCacheSize = 4096
)

// Config configures an Engine.
type Config struct {
	// Node is this node's name, the iss of its tokens. In PKI mode it must be
	// empty (the certificate's name is used) or the certificate's name.
	Node string
	// Secrets sign and verify tokens.
	Secrets Secrets
	// Refresh is how long a PU's identity token and ephemeral key are used
	// before new ones are made (default 5 minutes). Tokens expire 2×Refresh
	// after they are issued, so peers' clocks may lag.
	Refresh time.Duration
	// CacheSize bounds each cache: verified tokens, tokens that failed
	// verification, ECDH results, verified certificates (default 4096).
	CacheSize int
	// Budget bounds the public-key verifications that SYNs with tokens not
	// seen before can cost, per source and for the node (PKI mode).
	Budget VerifyBudget
}

// Engine signs, verifies and caches identity tokens and runs the handshake
// for one node. It is safe for concurrent use.
type Engine struct {
	node string
	// secrets are swapped whole by SetSecrets (a rotated key or
	// certificate); gen counts the swaps, so that Locals sign again.
	secrets atomic.Pointer[secretsGen]
	// secMu orders SetSecrets' forgetting with knowOwn's caching.
	secMu   sync.Mutex
	refresh time.Duration
	seed    maphash.Seed
	// check is a second, independent hash of a token: with seed's it
	// identifies a failed token (128 bits) without keeping its bytes.
	check maphash.Seed

	tokens   *clockCache[*Peer]
	failures *clockCache[failure]
	shared   *clockCache[*sharedSecret]
	certs    *clockCache[*verifiedCert]
	budget   *verifyLimiter

	stats struct {
		tokenHits, tokenMisses  atomic.Uint64
		signatureVerifications  atomic.Uint64
		certificateVerification atomic.Uint64
		ecdh, ecdhHits          atomic.Uint64
		signatures, keys        atomic.Uint64
		publicKeyOps            atomic.Uint64
		failureHits, limited    atomic.Uint64
	}
}

// failure is a token that failed verification: the reason it failed, and
// from when (the failure's time) until when that answer is reused. Time
// only moves forward for a token refused for its time: one expired at the
// failure's time is expired later too, but may have been valid before.
type failure struct {
	check     uint64
	at, until int64
	code      reason.Code
}

// How long a failed token's answer is reused: a signature that does not
// verify never will (until SetSecrets, which forgets them all); a
// token refused for its time (expired, not yet valid, a certificate out of
// its validity) is looked at again soon.
const (
	failureTTL     = 5 * time.Minute
	failureTimeTTL = 10 * time.Second
)

// secretsGen is one generation of an engine's secrets.
type secretsGen struct {
	Secrets
	gen uint64
}

func (e *Engine) sec() *secretsGen { return e.secrets.Load() }

// SetSecrets replaces the engine's secrets while it runs (a rotated
// pre-shared key, a renewed node certificate or CA): tokens signed from now
// on use them, each PU signs a new token on its next connection, and every
// cached verification is forgotten (a token verified with the old secrets
// is verified again with the new ones). The kind cannot change (PSK to PKI
// needs a restart), nor the node name a certificate certifies.
func (e *Engine) SetSecrets(s Secrets) error {
	if s == nil {
		return errors.New("tokens: no secrets")
	}
	old := e.sec()
	if s.Kind() != old.Kind() {
		return fmt.Errorf("tokens: secrets of kind %s cannot replace %s (restart to change modes)", s.Kind(), old.Kind())
	}
	if n := s.Node(); n != "" && n != e.node {
		return fmt.Errorf("tokens: the new certificate names node %s, not %s", n, e.node)
	}
	e.secMu.Lock()
	defer e.secMu.Unlock()
	e.secrets.Store(&secretsGen{Secrets: s, gen: old.gen + 1})
	e.tokens.reset()
	e.failures.reset()
	e.shared.reset()
	e.certs.reset()
	return nil
}

// New returns an Engine.
func New(cfg Config) (*Engine, error) {
	if cfg.Secrets == nil {
		return nil, errors.New("tokens: no secrets")
	}
	node := cfg.Node
	if n := cfg.Secrets.Node(); n != "" {
		if node != "" && node != n {
			return nil, errors.New("tokens: node name " + node + " differs from the certificate's " + n)
		}
		node = n
	}
	if node == "" {
		return nil, errors.New("tokens: no node name")
	}
	if cfg.Refresh <= 0 {
		cfg.Refresh = DefaultRefresh
	}
	if cfg.CacheSize <= 0 {
		cfg.CacheSize = DefaultCacheSize
	}
	e := &Engine{
		node:     node,
		refresh:  cfg.Refresh,
		seed:     maphash.MakeSeed(),
		check:    maphash.MakeSeed(),
		tokens:   newClockCache[*Peer](cfg.CacheSize),
		failures: newClockCache[failure](cfg.CacheSize),
		shared:   newClockCache[*sharedSecret](cfg.CacheSize),
		certs:    newClockCache[*verifiedCert](cfg.CacheSize),
		budget:   newVerifyLimiter(cfg.Budget),
	}
	e.secrets.Store(&secretsGen{Secrets: cfg.Secrets})
	return e, nil
}

// Node returns the node name in this engine's tokens.
func (e *Engine) Node() string { return e.node }

// Stats counts the engine's work since it was made.
type Stats struct {
	TokenCacheHits   uint64 // identity tokens found verified in the cache
	TokenCacheMisses uint64 // identity tokens verified from scratch
	// SignatureVerifications counts JWT signature checks (ES256 or HS256).
	SignatureVerifications uint64
	// CertificateVerifications counts certificate chain checks (PKI).
	CertificateVerifications uint64
	ECDH                     uint64 // ECDH computations
	ECDHCacheHits            uint64 // handshake keys from a cached ECDH result
	Signatures               uint64 // identity tokens signed (once per PU per epoch)
	KeyGenerations           uint64 // ephemeral ECDH keys generated
	// PublicKeyOps counts every public-key operation: ECDSA signatures and
	// verifications (tokens and certificates), ECDH, key generation.
	PublicKeyOps uint64
	// FailureCacheHits counts tokens refused from the cache of tokens that
	// failed before (a repeated junk token costs a hash lookup).
	FailureCacheHits uint64
	// VerifyRateLimited counts SYN tokens not verified because their
	// source (or the node) had spent its verification budget.
	VerifyRateLimited uint64
}

// Stats returns the engine's counters.
func (e *Engine) Stats() Stats {
	s := &e.stats
	return Stats{
		TokenCacheHits:           s.tokenHits.Load(),
		TokenCacheMisses:         s.tokenMisses.Load(),
		SignatureVerifications:   s.signatureVerifications.Load(),
		CertificateVerifications: s.certificateVerification.Load(),
		ECDH:                     s.ecdh.Load(),
		ECDHCacheHits:            s.ecdhHits.Load(),
		Signatures:               s.signatures.Load(),
		KeyGenerations:           s.keys.Load(),
		PublicKeyOps:             s.publicKeyOps.Load(),
		FailureCacheHits:         s.failureHits.Load(),
		VerifyRateLimited:        s.limited.Load(),
	}
}

// Peer is a verified identity token: the remote PU's identity. It is
// immutable and shared by every connection that presented the same token.
type Peer struct {
	Tags     identity.Tags
	Identity *identity.Identity
	Node     string
	// Expires is when the verification stops holding (the token's exp, or
	// the certificate's end if sooner).
	Expires time.Time

	tagStrs []string // Tags.Strings(), made once (TagStrings)

	token []byte          // the identity token bytes (cache hit check)
	hash  [32]byte        // SHA-256 of token, in the MAC transcript
	ek    *ecdh.PublicKey // ephemeral key (PKI)
	ekID  [32]byte        // SHA-256 of the ephemeral key (ECDH cache key)
	_     [0]func()       // not comparable
}

// sharedSecret is a cached ECDH result for a pair of ephemeral keys, as
// the HKDF pseudorandom key the connections' keys are expanded from.
type sharedSecret struct {
	lo, hi [32]byte // the key ids, lo < hi (the pair is unordered)
	prk    [32]byte
}

// Local is a local PU's identity: its tags and its current epoch (identity
// token and ephemeral key), made lazily and replaced when older than
// Config.Refresh.
type Local struct {
	e    *Engine
	tags identity.Tags
	mu   sync.Mutex
	cur  atomic.Pointer[epoch]
}

// epoch is one signed identity token of a Local and its ephemeral key.
// Connections keep a pointer to the epoch they used, so that retransmissions
// carry the same bytes after a refresh.
type epoch struct {
	token     []byte
	hash      [32]byte
	priv      *ecdh.PrivateKey // nil in PSK mode
	ekID      [32]byte
	refreshAt time.Time
	gen       uint64 // of the secrets that signed it
}

// NewLocal returns the identity of a local PU with the given tags. The tags
// are copied. The token is signed on first use.
func (e *Engine) NewLocal(tags identity.Tags) *Local {
	t := slices.Clone(tags)
	slices.SortFunc(t, func(a, b identity.Tag) int { return strings.Compare(a.Key, b.Key) })
	return &Local{e: e, tags: t}
}

// Tags returns the PU's tags.
func (l *Local) Tags() identity.Tags { return l.tags }

// Prepare makes the PU's identity token now if it has none current, so that
// the cost of signing (and a problem such as tags too long for a frame) shows
// when the PU is set up rather than on its first SYN.
func (l *Local) Prepare(now time.Time) error {
	_, err := l.epoch(now)
	return err
}

// epoch returns the current epoch, making a new one if none is current.
func (l *Local) epoch(now time.Time) (*epoch, error) {
	if ep := l.cur.Load(); ep != nil && now.Before(ep.refreshAt) && ep.gen == l.e.sec().gen {
		return ep, nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if ep := l.cur.Load(); ep != nil && now.Before(ep.refreshAt) && ep.gen == l.e.sec().gen {
		return ep, nil
	}
	ep, err := l.e.newEpoch(l.tags, now)
	if err != nil {
		return nil, err
	}
	l.cur.Store(ep)
	l.e.knowOwn(ep, now)
	return ep, nil
}

func (e *Engine) newEpoch(tags identity.Tags, now time.Time) (*epoch, error) {
	kvs, err := tags.Encode()
	if err != nil { // e.g. a key twice: peers would reject the token
		return nil, reason.MalformedToken
	}
	cl := &tokenClaims{T: kvs}
	cl.Issuer = e.node
	iat := now.Truncate(time.Second)
	cl.IssuedAt = jwt.NewNumericDate(iat)
	cl.ExpiresAt = jwt.NewNumericDate(iat.Add(2 * e.refresh))
	ep := &epoch{refreshAt: now.Add(e.refresh)}
	sec := e.sec()
	ep.gen = sec.gen
	if sec.handshakePRK() == nil {
		k, err := ecdh.P256().GenerateKey(rand.Reader)
		if err != nil {
			return nil, err
		}
		e.stats.keys.Add(1)
		e.stats.publicKeyOps.Add(1)
		ep.priv = k
		pub := k.PublicKey().Bytes()
		ep.ekID = sha256.Sum256(pub)
		cl.EK = base64.RawURLEncoding.EncodeToString(compressP256(pub))
	}
	tok, err := sec.sign(cl)
	if err != nil {
		return nil, err
	}
	e.stats.signatures.Add(1)
	if ep.priv != nil {
		e.stats.publicKeyOps.Add(1)
	}
	if headerSize+synackFixed+len(tok) > MaxFrame {
		return nil, reason.NoRoomForToken
	}
	ep.token = tok
	ep.hash = sha256.Sum256(tok)
	return ep, nil
}

// verifyToken returns the Peer of an identity token, from the cache when the
// same bytes were verified before and have not expired. A token that failed
// before gets the same answer from the failure cache. Otherwise, when
// budgeted (a SYN's token), the verification's first public-key operation
// must fit src's budget and the node's (reason.VerifyRateLimited); a token
// that fails its cheap checks (framing, certificate DER) costs none.
func (e *Engine) verifyToken(token []byte, now time.Time, budgeted bool, src netip.Addr) (*Peer, error) {
	h := maphash.Bytes(e.seed, token)
	if p, ok := e.tokens.get(h); ok && bytes.Equal(p.token, token) && now.Before(p.Expires) {
		e.stats.tokenHits.Add(1)
		return p, nil
	}
	check := maphash.Bytes(e.check, token)
	if f, ok := e.failures.get(h); ok && f.check == check && f.at <= now.UnixNano() && now.UnixNano() < f.until {
		e.stats.failureHits.Add(1)
		return nil, f.code
	}
	b := spend{e: e, src: src, now: now.UnixNano(), budgeted: budgeted}
	p, err := e.verifyTokenSlow(token, now, &b)
	if err == reason.VerifyRateLimited {
		return nil, err // not verified: nothing to remember
	}
	e.stats.tokenMisses.Add(1)
	if err != nil {
		if rc, ok := err.(reason.Code); ok {
			ttl := failureTTL
			if rc == reason.ExpiredToken || rc == reason.UntrustedCertificate {
				ttl = failureTimeTTL
			}
			e.failures.put(h, failure{check: check, at: now.UnixNano(), until: now.Add(ttl).UnixNano(), code: rc})
		}
		return nil, err
	}
	e.tokens.put(h, p)
	return p, nil
}

// verifyTokenSlow verifies a token from scratch and makes its Peer.
func (e *Engine) verifyTokenSlow(token []byte, now time.Time, b *spend) (*Peer, error) {
	sec := e.sec()
	cl, until, err := sec.verify(e, token, now, b)
	if err != nil {
		return nil, err
	}
	return newPeer(sec, token, cl, until)
}

// newPeer makes the Peer of a token whose claims were verified (or that
// this engine signed), valid until until.
func newPeer(sec Secrets, token []byte, cl *tokenClaims, until time.Time) (*Peer, error) {
	p := &Peer{Node: cl.Issuer, Expires: until, token: bytes.Clone(token), hash: sha256.Sum256(token)}
	var err error
	if p.Tags, err = identity.Decode(cl.T); err != nil {
		return nil, reason.MalformedToken
	}
	if sec.handshakePRK() == nil {
		raw, err := base64.RawURLEncoding.Strict().DecodeString(cl.EK)
		if err != nil {
			return nil, reason.MalformedToken
		}
		pub := decompressP256(raw)
		if pub == nil {
			return nil, reason.MalformedToken
		}
		if p.ek, err = ecdh.P256().NewPublicKey(pub); err != nil {
			return nil, reason.MalformedToken
		}
		p.ekID = sha256.Sum256(pub)
	}
	p.Identity = identity.New(p.Tags)
	p.tagStrs = p.Tags.Strings()
	return p, nil
}

// TagStrings returns the peer's tags as "key=value" strings
// (identity.Tags.Strings), made once per verified token rather than for
// every flow record that names the peer. The slice is shared: callers must
// not modify it.
func (p *Peer) TagStrings() []string {
	if p.tagStrs == nil && len(p.Tags) > 0 { // a Peer not made by an Engine
		return p.Tags.Strings()
	}
	return p.tagStrs
}

// knowOwn puts the identity token of a new epoch of this engine's PU in the
// verified-token cache: a PU connecting to a PU of the same node presents a
// token this engine signed, and verifying it again (its ECDSA signature,
// and this node's certificate) would cost the node the same public-key
// operations on every first contact. The Peer is what verifying the token
// would give: made from the token's own bytes (its claims decoded as a
// verifier decodes them), valid until its exp or the end of this node's
// certificate chain; nothing is cached when a verifier would refuse it now.
// Like any cached token it is forgotten by SetSecrets, and an epoch of
// secrets already replaced is not cached.
func (e *Engine) knowOwn(ep *epoch, now time.Time) {
	sec := e.sec()
	if sec.gen != ep.gen {
		return
	}
	cl, err := ownClaims(ep.token)
	if err != nil || cl.Issuer != e.node || cl.ExpiresAt == nil || validateTimes(cl, now) != nil || checkClaims(cl, now) != nil {
		return
	}
	until, ok := sec.ownValidity(now)
	if !ok {
		return
	}
	if cl.ExpiresAt.Before(until) {
		until = cl.ExpiresAt.Time
	}
	p, err := newPeer(sec.Secrets, ep.token, cl, until)
	if err != nil {
		return
	}
	e.secMu.Lock()
	defer e.secMu.Unlock()
	if e.sec().gen == ep.gen { // SetSecrets has not forgotten the caches since
		e.tokens.put(maphash.Bytes(e.seed, ep.token), p)
	}
}

// verifyCert returns a verified node certificate, from the cache when the
// same DER was verified before.
func (e *Engine) verifyCert(p *pkiSecrets, der []byte, now time.Time, b *spend) (*verifiedCert, error) {
	h := maphash.Bytes(e.seed, der)
	if vc, ok := e.certs.get(h); ok && bytes.Equal(vc.der, der) {
		if now.Before(vc.notBefore) || now.After(vc.notAfter) {
			return nil, reason.UntrustedCertificate
		}
		return vc, nil
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, reason.MalformedToken
	}
	if !b.take() {
		return nil, reason.VerifyRateLimited
	}
	e.stats.certificateVerification.Add(1)
	e.stats.publicKeyOps.Add(1)
	vc, err := p.checkNodeCert(cert, now)
	if err != nil {
		return nil, err
	}
	vc.der = bytes.Clone(der)
	e.certs.put(h, vc)
	return vc, nil
}

// handshakeKey derives the connection's key
//
//	K = HKDF-Expand(PRK, "trireme/1 handshake key" ‖ Nc ‖ Ns, 32)
//
// where PRK = HKDF-Extract("trireme/1 ecdh", ECDH(own ephemeral, peer EK))
// in PKI mode (cached per pair of ephemeral keys) and the PSK's handshake key
// in PSK mode. Per connection this is one HMAC.
func (e *Engine) handshakeKey(own *epoch, peer *Peer, nc, ns *[NonceSize]byte) ([32]byte, error) {
	prk := e.sec().handshakePRK()
	if prk == nil {
		if own.priv == nil || peer.ek == nil {
			return [32]byte{}, reason.MalformedToken
		}
		s, err := e.ecdh(own, peer)
		if err != nil {
			return [32]byte{}, err
		}
		prk = &s.prk
	}
	var info [len(keyInfo) + 2*NonceSize]byte
	n := copy(info[:], keyInfo)
	n += copy(info[n:], nc[:])
	copy(info[n:], ns[:])
	return hkdfExpand32(prk, info[:]), nil
}

const (
	keyInfo  = "trireme/1 handshake key"
	ecdhSalt = "trireme/1 ecdh"
)

// ecdh returns the PRK of ECDH(own private, peer public), cached per pair of
// keys. The pair is unordered: ECDH(a, B) = ECDH(b, A), so when both PUs are
// on this node (one engine) the server's computation serves the client too.
// The key ids are SHA-256 of the public keys: an entry cannot answer for
// another pair.
func (e *Engine) ecdh(own *epoch, peer *Peer) (*sharedSecret, error) {
	lo, hi := own.ekID, peer.ekID
	if bytes.Compare(lo[:], hi[:]) > 0 {
		lo, hi = hi, lo
	}
	k := binary.LittleEndian.Uint64(lo[:]) ^ binary.LittleEndian.Uint64(hi[8:])
	if s, ok := e.shared.get(k); ok && s.lo == lo && s.hi == hi {
		e.stats.ecdhHits.Add(1)
		return s, nil
	}
	e.stats.ecdh.Add(1)
	e.stats.publicKeyOps.Add(1)
	b, err := own.priv.ECDH(peer.ek)
	if err != nil {
		return nil, reason.MalformedToken
	}
	s := &sharedSecret{lo: lo, hi: hi, prk: hkdfExtract([]byte(ecdhSalt), b)}
	e.shared.put(k, s)
	return s, nil
}

// Transcript labels; they make the SYN-ACK and ACK MACs differ, and the
// datagram handshake's MACs differ from TCP's.
const (
	synackLabel  = "trireme/1 SYN-ACK"
	ackLabel     = "trireme/1 ACK"
	replyLabel   = "trireme/1 datagram reply"
	rejectLabel  = "trireme/1 datagram reject"
	confirmLabel = "trireme/1 datagram confirm"
)

// messages are a handshake's frame types and MAC labels.
type messages struct {
	first, second, third, reject         byte
	secondLabel, thirdLabel, rejectLabel string
}

var (
	tcpMessages      = messages{typeSYN, typeSYNACK, typeACK, 0, synackLabel, ackLabel, ""}
	datagramMessages = messages{typeHello, typeReply, typeConfirm, typeReject, replyLabel, confirmLabel, rejectLabel}
)

// The MAC inputs must fit hmacSHA256's buffer (a compile-time check).
var (
	_ [maxMACInput - (len(synackLabel) + 2*NonceSize + 2*sha256.Size)]byte
	_ [maxMACInput - (len(ackLabel) + 2*NonceSize + 2*sha256.Size + MACSize)]byte
	_ [maxMACInput - (len(rejectLabel) + 2*NonceSize + 2*sha256.Size)]byte
	_ [maxMACInput - (len(confirmLabel) + 2*NonceSize + 2*sha256.Size + MACSize)]byte
	_ [maxMACInput - (len(keyInfo) + 2*NonceSize + 1)]byte
)

// handshakeMACs returns the SYN-ACK MAC and the ACK MAC of a connection:
//
//	synack = HMAC(K, "trireme/1 SYN-ACK" ‖ Nc ‖ Ns ‖ H(client token) ‖ H(server token))[:16]
//	ack    = HMAC(K, "trireme/1 ACK" ‖ Nc ‖ Ns ‖ H(client token) ‖ H(server token) ‖ synack)[:16]
func handshakeMACs(k *[32]byte, nc, ns *[NonceSize]byte, hc, hs *[32]byte) (synack, ack [MACSize]byte) {
	return transcriptMACs(k, &tcpMessages, false, nc, ns, hc, hs)
}

// transcriptMACs computes the second and third messages' MACs with the
// labels of m (the reject label for the second when reject).
func transcriptMACs(k *[32]byte, msgs *messages, reject bool, nc, ns *[NonceSize]byte, hc, hs *[32]byte) (synack, ack [MACSize]byte) {
	var t [maxMACInput]byte
	l2 := msgs.secondLabel
	if reject {
		l2 = msgs.rejectLabel
	}
	n := copy(t[:], l2)
	n += copy(t[n:], nc[:])
	n += copy(t[n:], ns[:])
	n += copy(t[n:], hc[:])
	n += copy(t[n:], hs[:])
	m := hmacSHA256(k[:], t[:n])
	copy(synack[:], m[:])

	n = copy(t[:], msgs.thirdLabel)
	n += copy(t[n:], nc[:])
	n += copy(t[n:], ns[:])
	n += copy(t[n:], hc[:])
	n += copy(t[n:], hs[:])
	n += copy(t[n:], synack[:])
	m = hmacSHA256(k[:], t[:n])
	copy(ack[:], m[:])
	return synack, ack
}

// Conn is one connection's handshake state, stored inline in the flow table.
// The zero value is a fresh connection. It is not safe for concurrent use
// (the flow table serializes a flow's packets).
type Conn struct {
	own    *epoch // our identity token (and ephemeral key) for this connection
	peer   *Peer  // the peer's verified identity
	nc, ns [NonceSize]byte
	synack [MACSize]byte
	ack    [MACSize]byte
	state  connState
	// dgram: the datagram handshake (datagram.go), whose messages have
	// their own types and MAC labels.
	dgram bool
	// rejected: the server's enforcer denied the flow (datagrams: it sent
	// or we verified a reject).
	rejected bool
}

// msgs returns the message types and labels of c's protocol.
func (c *Conn) msgs() *messages {
	if c.dgram {
		return &datagramMessages
	}
	return &tcpMessages
}

type connState uint8

const (
	stateNew connState = iota
	stateSYNSent
	stateClientDone // SYN-ACK verified; ACK ready
	stateSYNReceived
	stateSYNACKSent
	stateServerDone // ACK verified
)

// Peer returns the connection's verified peer, or nil.
func (c *Conn) Peer() *Peer { return c.peer }

// Established reports whether this end has verified the whole handshake
// (client: the SYN-ACK; server: the ACK).
func (c *Conn) Established() bool {
	return c.state == stateClientDone || c.state == stateServerDone
}

func newNonce(n *[NonceSize]byte) {
	// crypto/rand never fails on Linux (getrandom); a failure aborts the
	// program rather than returning a predictable nonce.
	rand.Read(n[:])
}

// AppendSYN appends the SYN frame of a new client connection of PU l to dst.
// On a Conn that already sent its SYN it appends the same bytes again.
func (e *Engine) AppendSYN(dst []byte, l *Local, c *Conn, now time.Time) ([]byte, error) {
	switch c.state {
	case stateNew:
		if l == nil {
			return dst, reason.InvalidState
		}
		ep, err := l.epoch(now)
		if err != nil {
			return dst, err
		}
		newNonce(&c.nc)
		c.own = ep
		c.state = stateSYNSent
	case stateSYNSent, stateClientDone:
	default:
		return dst, reason.InvalidState
	}
	return appendFirst(dst, c.msgs().first, &c.nc, c.own.token)
}

// VerifySYN verifies a SYN frame on the server side and returns the client
// PU's identity. A retransmitted SYN (same nonce) leaves the connection as
// it is; a SYN with another nonce starts the connection over. On error c is
// unchanged. The token's verification, if it is not in a cache, is held to
// the node's verification budget (Config.Budget); VerifySYNFrom also to
// its source's.
func (e *Engine) VerifySYN(frame []byte, c *Conn, now time.Time) (*Peer, error) {
	return e.VerifySYNFrom(frame, c, now, netip.Addr{})
}

// VerifySYNFrom is VerifySYN for a SYN from source address src: a token
// not seen before costs src's verification budget as well as the node's.
func (e *Engine) VerifySYNFrom(frame []byte, c *Conn, now time.Time, src netip.Addr) (*Peer, error) {
	switch c.state {
	case stateNew, stateSYNReceived, stateSYNACKSent, stateServerDone:
	default:
		return nil, reason.InvalidState
	}
	f, err := parseFrame(frame, c.msgs().first)
	if err != nil {
		return nil, err
	}
	p, err := e.verifyToken(f.token, now, true, src)
	if err != nil {
		return nil, err
	}
	if c.state != stateNew && bytes.Equal(f.lcl, c.nc[:]) && p.hash == c.peer.hash {
		return p, nil
	}
	*c = Conn{peer: p, state: stateSYNReceived, dgram: c.dgram}
	copy(c.nc[:], f.lcl)
	return p, nil
}

// AppendSYNACK appends the SYN-ACK frame of PU l answering the SYN that
// VerifySYN accepted on c. On a Conn that already sent its SYN-ACK it appends
// the same bytes again.
func (e *Engine) AppendSYNACK(dst []byte, l *Local, c *Conn, now time.Time) ([]byte, error) {
	switch c.state {
	case stateSYNReceived:
		if l == nil {
			return dst, reason.InvalidState
		}
		ep, err := l.epoch(now)
		if err != nil {
			return dst, err
		}
		var ns [NonceSize]byte
		newNonce(&ns)
		k, err := e.handshakeKey(ep, c.peer, &c.nc, &ns)
		if err != nil {
			return dst, err
		}
		c.synack, c.ack = transcriptMACs(&k, c.msgs(), c.rejected, &c.nc, &ns, &c.peer.hash, &ep.hash)
		c.own, c.ns, c.state = ep, ns, stateSYNACKSent
	case stateSYNACKSent, stateServerDone:
	default:
		return dst, reason.InvalidState
	}
	typ := c.msgs().second
	if c.rejected {
		typ = c.msgs().reject
	}
	return appendSYNACK(dst, typ, &c.ns, &c.nc, &c.synack, c.own.token)
}

// VerifySYNACK verifies the server's SYN-ACK frame on the client side: it
// must answer this connection's nonce, carry a valid identity token, and a
// MAC made with the key only the two ends share. It returns the server PU's
// identity. On error c is unchanged.
func (e *Engine) VerifySYNACK(frame []byte, c *Conn, now time.Time) (*Peer, error) {
	if c.state != stateSYNSent && c.state != stateClientDone {
		return nil, reason.InvalidState
	}
	m := c.msgs()
	reject := false
	if c.dgram && len(frame) > 1 && frame[0] == Version && frame[1] == m.reject {
		reject = true
	}
	typ := m.second
	if reject {
		typ = m.reject
	}
	f, err := parseFrame(frame, typ)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(f.rmt, c.nc[:]) {
		return nil, reason.NonceMismatch
	}
	// No budget: a SYN-ACK reaches verification only if it echoes the
	// nonce of a SYN our PU sent; its rate is our PUs' own.
	p, err := e.verifyToken(f.token, now, false, netip.Addr{})
	if err != nil {
		return nil, err
	}
	var ns [NonceSize]byte
	copy(ns[:], f.lcl)
	k, err := e.handshakeKey(c.own, p, &c.nc, &ns)
	if err != nil {
		return nil, err
	}
	synack, ack := transcriptMACs(&k, m, reject, &c.nc, &ns, &c.own.hash, &p.hash)
	if !macEqual(synack[:], f.mac) {
		return nil, reason.BadMAC
	}
	c.peer, c.ns, c.synack, c.ack, c.state, c.rejected = p, ns, synack, ack, stateClientDone, reject
	return p, nil
}

// AppendACK appends the handshake ACK frame of a client connection whose
// SYN-ACK VerifySYNACK accepted.
func (e *Engine) AppendACK(dst []byte, c *Conn) ([]byte, error) {
	if c.state != stateClientDone || c.rejected {
		return dst, reason.InvalidState
	}
	return appendACK(dst, c.msgs().third, &c.ns, &c.ack), nil
}

// VerifyACK verifies the client's handshake ACK frame on the server side: it
// must answer this connection's server nonce with the expected MAC.
func (e *Engine) VerifyACK(frame []byte, c *Conn) error {
	if c.state != stateSYNACKSent && c.state != stateServerDone || c.rejected {
		return reason.InvalidState
	}
	f, err := parseFrame(frame, c.msgs().third)
	if err != nil {
		return err
	}
	if !bytes.Equal(f.rmt, c.ns[:]) {
		return reason.NonceMismatch
	}
	if !macEqual(f.mac, c.ack[:]) {
		return reason.BadMAC
	}
	c.state = stateServerDone
	return nil
}

// compressP256 returns the SEC 1 compressed form (33 bytes) of an
// uncompressed P-256 point (65 bytes): it saves 43 base64 characters of every
// PKI token, and crypto/ecdh speaks only the uncompressed form.
func compressP256(pub []byte) []byte {
	c := make([]byte, 33)
	c[0] = 2 | pub[64]&1
	copy(c[1:], pub[1:33])
	return c
}

// decompressP256 returns the uncompressed form of a compressed P-256 point,
// or nil if it is not one (cold path: a square root mod p).
func decompressP256(c []byte) []byte {
	x, y := elliptic.UnmarshalCompressed(elliptic.P256(), c)
	if x == nil {
		return nil
	}
	pub := make([]byte, 65)
	pub[0] = 4
	x.FillBytes(pub[1:33])
	y.FillBytes(pub[33:])
	return pub
}
