// Package vnet encodes and decodes the virtio-net header (struct
// virtio_net_hdr, 10 bytes) that TAP devices opened with IFF_VNET_HDR and
// AF_PACKET sockets with PACKET_VNET_HDR put in front of every frame. The
// header carries what the kernel knows about offloads: GSO type and segment
// size of a super-packet, and where a partial (CHECKSUM_PARTIAL) checksum
// starts and must be stored. Without it, offloaded packets cross userspace
// broken (see docs/steering.md).
package vnet

import (
	"encoding/binary"
	"errors"
)

// HdrLen is the size of struct virtio_net_hdr (no mergeable-buffer count).
const HdrLen = 10

// Flags (virtio_net_hdr.flags).
const (
	FlagNeedsCsum uint8 = 1 // checksum from CsumStart to the end is partial
	FlagDataValid uint8 = 2 // checksum already verified
)

// GSO types (virtio_net_hdr.gso_type).
const (
	GSONone  uint8 = 0
	GSOTCPv4 uint8 = 1
	GSOUDP   uint8 = 3
	GSOTCPv6 uint8 = 4
	GSOUDPL4 uint8 = 5
	GSOECN   uint8 = 0x80
)

// Hdr is a decoded virtio_net_hdr. Multi-byte fields are little-endian on
// the wire (the kernel uses the legacy native order; every Linux target
// trireme runs on is little-endian, and TUNSETVNETLE is the default on them).
type Hdr struct {
	Flags      uint8
	GSOType    uint8
	HdrLen     uint16 // length of the headers to replicate per segment
	GSOSize    uint16 // payload bytes per segment
	CsumStart  uint16 // offset of the start of the checksummed region
	CsumOffset uint16 // offset of the checksum field from CsumStart
}

// Errors of Decode and CompleteChecksum. Sentinel values: the packet path
// compares them and never allocates.
var (
	ErrShort       = errors.New("vnet: buffer shorter than a virtio-net header")
	ErrBadCsumSpan = errors.New("vnet: checksum start/offset outside the frame")
	ErrGSO         = errors.New("vnet: checksum of a GSO super-packet cannot be completed in software")
)

// Decode reads the header at the start of b.
func Decode(b []byte) (Hdr, error) {
	if len(b) < HdrLen {
		return Hdr{}, ErrShort
	}
	return Hdr{
		Flags:      b[0],
		GSOType:    b[1],
		HdrLen:     binary.LittleEndian.Uint16(b[2:]),
		GSOSize:    binary.LittleEndian.Uint16(b[4:]),
		CsumStart:  binary.LittleEndian.Uint16(b[6:]),
		CsumOffset: binary.LittleEndian.Uint16(b[8:]),
	}, nil
}

// Encode writes h at the start of b, which must hold HdrLen bytes.
func (h Hdr) Encode(b []byte) error {
	if len(b) < HdrLen {
		return ErrShort
	}
	b[0] = h.Flags
	b[1] = h.GSOType
	binary.LittleEndian.PutUint16(b[2:], h.HdrLen)
	binary.LittleEndian.PutUint16(b[4:], h.GSOSize)
	binary.LittleEndian.PutUint16(b[6:], h.CsumStart)
	binary.LittleEndian.PutUint16(b[8:], h.CsumOffset)
	return nil
}

// IsGSO reports whether the frame is a super-packet the kernel segments.
func (h Hdr) IsGSO() bool { return h.GSOType&^GSOECN != GSONone }

// CompleteChecksum finishes a CHECKSUM_PARTIAL frame in software, as
// skb_checksum_help does: the checksum field already holds the folded
// pseudo-header sum, so the one's complement sum from CsumStart to the end
// of the frame, inverted, is the final checksum. On success the NEEDS_CSUM
// flag is cleared from *h (the caller re-encodes it when injecting). Frames
// without NEEDS_CSUM are left alone. frame is the Ethernet frame without the
// virtio-net header. The dataplane uses this for the small handshake packets
// it rewrites; GSO super-packets are refused.
func CompleteChecksum(h *Hdr, frame []byte) error {
	if h.Flags&FlagNeedsCsum == 0 {
		return nil
	}
	if h.IsGSO() {
		return ErrGSO
	}
	start := int(h.CsumStart)
	field := start + int(h.CsumOffset)
	if start >= len(frame) || field+2 > len(frame) {
		return ErrBadCsumSpan
	}
	sum := Checksum(frame[start:], 0)
	binary.BigEndian.PutUint16(frame[field:], ^sum)
	h.Flags &^= FlagNeedsCsum
	h.CsumStart, h.CsumOffset = 0, 0
	return nil
}

// Checksum returns the folded 16-bit one's complement sum of b added to
// initial (not inverted). Used for IP/TCP/UDP checksums.
func Checksum(b []byte, initial uint32) uint16 {
	sum := uint64(initial)
	for len(b) >= 8 {
		sum += uint64(binary.BigEndian.Uint32(b)) + uint64(binary.BigEndian.Uint32(b[4:]))
		b = b[8:]
	}
	if len(b) >= 4 {
		sum += uint64(binary.BigEndian.Uint32(b))
		b = b[4:]
	}
	if len(b) >= 2 {
		sum += uint64(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint64(b[0]) << 8
	}
	for sum>>16 != 0 {
		sum = (sum & 0xffff) + sum>>16
	}
	return uint16(sum)
}
