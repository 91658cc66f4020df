package tokens

import (
	"crypto/sha256"
	"crypto/subtle"
)

// HMAC-SHA256 and HKDF-SHA256 over fixed-size stack buffers: the handshake
// derives a key and two MACs per connection, and crypto/hmac and crypto/hkdf
// allocate a hash state each call. Tests check both against the standard
// library.

const maxMACInput = 160 // longest message we MAC: the ACK transcript

// hmacSHA256 returns HMAC-SHA256(key, msg). key is at most 64 bytes and msg at
// most maxMACInput bytes (callers are fixed-size).
func hmacSHA256(key, msg []byte) [32]byte {
	var buf [64 + maxMACInput]byte
	var k [64]byte
	copy(k[:], key)
	for i := range k {
		buf[i] = k[i] ^ 0x36
	}
	n := copy(buf[64:], msg)
	inner := sha256.Sum256(buf[:64+n])
	for i := range k {
		buf[i] = k[i] ^ 0x5c
	}
	copy(buf[64:], inner[:])
	return sha256.Sum256(buf[:64+32])
}

// hkdfExtract is HKDF-Extract-SHA256(salt, ikm) (RFC 5869); salt is at most
// 64 bytes.
func hkdfExtract(salt, ikm []byte) [32]byte { return hmacSHA256(salt, ikm) }

// hkdfExpand32 is HKDF-Expand-SHA256(prk, info, 32): one block.
func hkdfExpand32(prk *[32]byte, info []byte) [32]byte {
	var in [maxMACInput]byte
	n := copy(in[:], info)
	in[n] = 1
	return hmacSHA256(prk[:], in[:n+1])
}

// macEqual compares MACs in constant time.
func macEqual(a, b []byte) bool { return subtle.ConstantTimeCompare(a, b) == 1 }
