package tokens

import (
	"net/netip"
	"time"

	"github.com/trireme-go/trireme/reason"
)

// The datagram handshake (docs/wire.md §8) proves the identities of the two
// PUs of a UDP flow with the TCP handshake's cryptography and caches, in
// datagrams of their own on the flow's 5-tuple, which the enforcers consume:
//
//	hello   client → server: marker, frame type 4 (layout of SYN):     Nc, client token
//	reply   server → client: marker, frame type 5 (layout of SYN-ACK): Ns, Nc, MAC, server token
//	reject  server → client: marker, frame type 7 (layout of SYN-ACK), the MAC under another label
//	confirm client → server: marker, frame type 6 (layout of ACK):     Ns, MAC
//
// A message is the whole UDP payload: the 4-byte marker, then exactly one
// frame. The marker only makes a datagram a candidate; what makes it a
// message is its verification (a hello: its signed token; a reply, reject or
// confirm: its MAC under the flow's key, bound to both nonces), so an
// application datagram that starts with the marker is not mistaken for one.

// DatagramMarker is the first 4 bytes of every datagram handshake message.
// 0x1f is no printable character, no QUIC first byte (fixed bit 0x40 clear)
// and no STUN message type (0x00 or 0x01); "tr" is trireme's ExID.
var DatagramMarker = [4]byte{0x1f, 't', 'r', 0xd6}

// MarkerSize is the length of DatagramMarker.
const MarkerSize = len(DatagramMarker)

// DatagramKind is the kind of a datagram handshake message.
type DatagramKind uint8

// The kinds of datagram handshake message (KindOf).
const (
	NotHandshake DatagramKind = iota
	Hello
	Reply
	Confirm
	Reject
)

// KindOf returns the kind of datagram handshake message a UDP payload claims
// to be: the marker, a known frame type and a frame that fills the payload
// exactly. It verifies nothing: NotHandshake means the payload is
// application data; anything else still has to verify.
func KindOf(payload []byte) DatagramKind {
	if len(payload) < MarkerSize+headerSize || [4]byte(payload[:MarkerSize]) != DatagramMarker {
		return NotHandshake
	}
	f := payload[MarkerSize:]
	n, err := FrameLen(f)
	if err != nil || n != len(f) {
		return NotHandshake
	}
	switch f[1] {
	case typeHello:
		return Hello
	case typeReply:
		return Reply
	case typeConfirm:
		return Confirm
	case typeReject:
		return Reject
	}
	return NotHandshake
}

// messageFrame returns the frame of a message (the payload after the
// marker), checked to fill the payload.
func messageFrame(payload []byte) ([]byte, error) {
	if len(payload) < MarkerSize || [4]byte(payload[:MarkerSize]) != DatagramMarker {
		return nil, reason.MissingToken
	}
	f := payload[MarkerSize:]
	n, err := FrameLen(f)
	if err != nil {
		return nil, err
	}
	if n != len(f) {
		return nil, reason.MalformedToken
	}
	return f, nil
}

// AppendHello appends the hello message (marker and frame) of a new client
// flow of PU l to dst. On a Conn that sent its hello it appends the same
// bytes again (a retry).
func (e *Engine) AppendHello(dst []byte, l *Local, c *Conn, now time.Time) ([]byte, error) {
	if c.state == stateNew {
		c.dgram = true
	}
	if !c.dgram {
		return dst, reason.InvalidState
	}
	dst = append(dst, DatagramMarker[:]...)
	return e.AppendSYN(dst, l, c, now)
}

// VerifyHelloFrom verifies a hello message from source src on the server
// side and returns the client PU's identity. A repeated hello (same nonce)
// leaves the flow as it is; one with another nonce starts it over. A token
// not seen before costs src's verification budget and the node's.
func (e *Engine) VerifyHelloFrom(payload []byte, c *Conn, now time.Time, src netip.Addr) (*Peer, error) {
	if c.state != stateNew && !c.dgram {
		return nil, reason.InvalidState
	}
	f, err := messageFrame(payload)
	if err != nil {
		return nil, err
	}
	was := *c
	c.dgram = true
	p, err := e.VerifySYNFrom(f, c, now, src)
	if err != nil {
		*c = was
		return nil, err
	}
	return p, nil
}

// AppendReply appends the server's answer to the hello VerifyHelloFrom
// accepted: a reply, or a reject when reject (the server's enforcer denied
// the flow; the client's then drops the datagrams it holds at once). Its
// MAC proves the answer comes from an enforcer that shares the flow's key.
// On a Conn that answered already it appends the same bytes again.
func (e *Engine) AppendReply(dst []byte, l *Local, c *Conn, now time.Time, reject bool) ([]byte, error) {
	if !c.dgram {
		return dst, reason.InvalidState
	}
	if c.state == stateSYNReceived {
		c.rejected = reject
	}
	dst = append(dst, DatagramMarker[:]...)
	return e.AppendSYNACK(dst, l, c, now)
}

// VerifyReply verifies the server's reply or reject on the client side. It
// returns the server PU's identity, and rejected when the server's enforcer
// denied the flow. On error c is unchanged.
func (e *Engine) VerifyReply(payload []byte, c *Conn, now time.Time) (p *Peer, rejected bool, err error) {
	if !c.dgram {
		return nil, false, reason.InvalidState
	}
	f, err := messageFrame(payload)
	if err != nil {
		return nil, false, err
	}
	p, err = e.VerifySYNACK(f, c, now)
	if err != nil {
		return nil, false, err
	}
	return p, c.rejected, nil
}

// AppendConfirm appends the client's confirm message of a flow whose reply
// VerifyReply accepted.
func (e *Engine) AppendConfirm(dst []byte, c *Conn) ([]byte, error) {
	if !c.dgram {
		return dst, reason.InvalidState
	}
	n := len(dst)
	dst = append(dst, DatagramMarker[:]...)
	dst, err := e.AppendACK(dst, c)
	if err != nil {
		return dst[:n], err
	}
	return dst, nil
}

// VerifyConfirm verifies the client's confirm on the server side: it must
// answer this flow's server nonce with the expected MAC.
func (e *Engine) VerifyConfirm(payload []byte, c *Conn) error {
	if !c.dgram {
		return reason.InvalidState
	}
	f, err := messageFrame(payload)
	if err != nil {
		return err
	}
	return e.VerifyACK(f, c)
}

// Rejected reports whether the flow's server denied it (a reject sent or
// verified).
func (c *Conn) Rejected() bool { return c.rejected }

// Answered reports whether the server's end answered the hello it
// verified (a reply or reject made): a repeated hello with the same nonce
// leaves it so, a new one starts the flow over.
func (c *Conn) Answered() bool { return c.state == stateSYNACKSent || c.state == stateServerDone }
