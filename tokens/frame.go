package tokens

import (
	"encoding/binary"

	"github.com/trireme-go/trireme/reason"
)

// OptionKind is the TCP option kind that marks a segment carrying a token
// frame: 253, the RFC 6994 shared experimental option.
const OptionKind = 253

// ExID is trireme's RFC 6994 experiment identifier, the two bytes after the
// option's kind and length ("tr" in ASCII). See docs/wire.md.
const ExID uint16 = 0x7472

// Option is the 4-byte marker option the dataplane adds to SYN, SYN-ACK and
// the handshake ACK that carry a frame, and strips before delivery.
var Option = [4]byte{OptionKind, 4, byte(ExID >> 8), byte(ExID & 0xff)}

// Frame layout constants (docs/wire.md).
const (
	// Version is the frame version this package speaks.
	Version = 1
	// NonceSize is the size of a connection nonce (LCL, RMT).
	NonceSize = 16
	// MACSize is the size of a handshake MAC (HMAC-SHA256 truncated).
	MACSize = 16
	// MaxFrame is the largest frame accepted or produced: a SYN with MaxFrame
	// bytes of payload still fits a 1280-byte IPv6 minimum MTU with a 40-byte
	// IPv6 header and a 60-byte TCP header.
	MaxFrame = 1180

	headerSize = 4 // version, type, 2-byte frame length
)

// Message types (byte 1 of a frame).
const (
	typeSYN    = 1
	typeSYNACK = 2
	typeACK    = 3
	// Datagram handshake messages (datagram.go): the same layouts as
	// SYN, SYN-ACK and ACK, other types so that a frame of one protocol is
	// never accepted by the other.
	typeHello   = 4 // layout of SYN
	typeReply   = 5 // layout of SYN-ACK
	typeConfirm = 6 // layout of ACK
	typeReject  = 7 // layout of SYN-ACK: the server's enforcer denied the flow
)

// Fixed part of each message after the header.
const (
	synFixed    = NonceSize                       // LCL
	synackFixed = NonceSize + NonceSize + MACSize // LCL, RMT, MAC
	ackFixed    = NonceSize + MACSize             // RMT, MAC
	ackSize     = headerSize + ackFixed
	// minToken is the smallest identity token: a 2-byte certificate length
	// and a JWT of at least "a.b.c".
	minToken = 2 + 5
)

// FrameLen returns the length of the token frame at the start of a TCP
// payload; bytes after it (TCP Fast Open data) belong to the application.
// It checks the header only: version, type and that the length is plausible
// for the type and present in payload.
func FrameLen(payload []byte) (int, error) {
	if len(payload) == 0 {
		return 0, reason.MissingToken
	}
	if payload[0] != Version {
		return 0, reason.UnsupportedVersion
	}
	if len(payload) < headerSize {
		return 0, reason.MalformedToken
	}
	n := int(binary.BigEndian.Uint16(payload[2:4]))
	var lo, hi int
	switch layoutOf(payload[1]) {
	case typeSYN:
		lo, hi = headerSize+synFixed+minToken, MaxFrame
	case typeSYNACK:
		lo, hi = headerSize+synackFixed+minToken, MaxFrame
	case typeACK:
		lo, hi = ackSize, ackSize
	default:
		return 0, reason.MalformedToken
	}
	if n < lo || n > hi || n > len(payload) {
		return 0, reason.MalformedToken
	}
	return n, nil
}

// frame is a decoded frame; its slices point into the packet.
type frame struct {
	lcl, rmt, mac []byte
	token         []byte
}

// parseFrame decodes the frame at the start of payload, which must be of
// type typ.
func parseFrame(payload []byte, typ byte) (frame, error) {
	n, err := FrameLen(payload)
	if err != nil {
		return frame{}, err
	}
	if payload[1] != typ {
		return frame{}, reason.MalformedToken
	}
	b := payload[headerSize:n]
	var f frame
	switch layoutOf(typ) {
	case typeSYN:
		f.lcl, f.token = b[:NonceSize], b[NonceSize:]
	case typeSYNACK:
		f.lcl = b[:NonceSize]
		f.rmt = b[NonceSize : 2*NonceSize]
		f.mac = b[2*NonceSize : 2*NonceSize+MACSize]
		f.token = b[synackFixed:]
	case typeACK:
		f.rmt, f.mac = b[:NonceSize], b[NonceSize:]
	}
	return f, nil
}

// layoutOf returns the TCP message type whose layout a frame type has (0
// for an unknown type).
func layoutOf(typ byte) byte {
	switch typ {
	case typeSYN, typeHello:
		return typeSYN
	case typeSYNACK, typeReply, typeReject:
		return typeSYNACK
	case typeACK, typeConfirm:
		return typeACK
	}
	return 0
}

// appendHeader appends a frame header for a frame of total length n.
func appendHeader(dst []byte, typ byte, n int) []byte {
	return append(dst, Version, typ, byte(n>>8), byte(n))
}

func appendSYN(dst []byte, lcl *[NonceSize]byte, token []byte) ([]byte, error) {
	return appendFirst(dst, typeSYN, lcl, token)
}

func appendFirst(dst []byte, typ byte, lcl *[NonceSize]byte, token []byte) ([]byte, error) {
	n := headerSize + synFixed + len(token)
	if n > MaxFrame {
		return dst, reason.NoRoomForToken
	}
	dst = appendHeader(dst, typ, n)
	dst = append(dst, lcl[:]...)
	return append(dst, token...), nil
}

func appendSYNACK(dst []byte, typ byte, lcl, rmt *[NonceSize]byte, mac *[MACSize]byte, token []byte) ([]byte, error) {
	n := headerSize + synackFixed + len(token)
	if n > MaxFrame {
		return dst, reason.NoRoomForToken
	}
	dst = appendHeader(dst, typ, n)
	dst = append(dst, lcl[:]...)
	dst = append(dst, rmt[:]...)
	dst = append(dst, mac[:]...)
	return append(dst, token...), nil
}

func appendACK(dst []byte, typ byte, rmt *[NonceSize]byte, mac *[MACSize]byte) []byte {
	dst = appendHeader(dst, typ, ackSize)
	dst = append(dst, rmt[:]...)
	return append(dst, mac[:]...)
}
