// Package pcapio reads pcap and pcapng captures into Ethernet frames for the
// enforcer (raw-IP and Linux cooked captures get a synthesized Ethernet
// header) and writes Ethernet pcap files. It reads what tcpdump (libpcap)
// reads, by libpcap's rules, with its own readers: every length a file
// claims is checked before anything is allocated for it, and a file cut
// inside a record is an error (ErrTruncated), not a clean end.
package pcapio

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"
)

// Link types beyond gopacket's names.
const (
	linkRawBSD12   = 12  // DLT_RAW on most BSDs
	linkRawBSD14   = 14  // DLT_RAW on OpenBSD
	linkRaw        = 101 // LINKTYPE_RAW
	linkLinuxSLL   = 113
	linkIPv4       = 228
	linkIPv6       = 229
	linkLinuxSLL2  = 276
	linkEthernet   = 1
	ethHeaderBytes = 14
)

// Packet is one captured frame as an Ethernet frame.
type Packet struct {
	Time time.Time
	// Frame is the Ethernet frame: the caller's (Next), or valid until the
	// next call (NextShared).
	Frame []byte
	// CaptureLen and WireLen are the captured and original lengths of the
	// frame as recorded (before any header synthesis).
	CaptureLen, WireLen int
	// LinkType is the capture's link type for this frame.
	LinkType int
}

// MaxCaptureLen is the longest record a capture may hold: libpcap's
// largest snapshot length for these link types. A record claiming more is
// an error (ErrCaptureLen), not an allocation of what a hostile file asks.
const MaxCaptureLen = 262144

// Errors, wrapped with the packet's number.
var (
	// ErrTruncated: the file ends inside a record (its header or its data).
	ErrTruncated = errors.New("truncated capture")
	// ErrCaptureLen: a record longer than MaxCaptureLen.
	ErrCaptureLen = errors.New("capture length over the maximum")
)

// source reads the records of one capture format. The data it returns is
// valid until its next call.
type source interface {
	next() (data []byte, ts time.Time, caplen, wirelen, link int, err error)
}

// Reader reads a pcap or pcapng stream.
type Reader struct {
	src source
	n   int
	eth []byte // synthesized Ethernet frames (NextShared)
}

// Open opens a capture file; Close it with the returned closer.
func Open(path string) (*Reader, io.Closer, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	r, err := NewReader(bufio.NewReaderSize(f, 1<<16))
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	return r, f, nil
}

// ReadFile reads every packet of a capture file (for small captures: tests,
// fixtures). An error names the file.
func ReadFile(path string) ([]Packet, error) {
	r, c, err := Open(path)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	var out []Packet
	for {
		p, err := r.Next()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, fmt.Errorf("%s: %w", path, err)
		}
		out = append(out, p)
	}
}

// NewReader detects pcap (µs or ns, either byte order, gzip-compressed or
// not) or pcapng by the magic number.
func NewReader(r io.Reader) (*Reader, error) {
	br, ok := r.(*bufio.Reader)
	if !ok || br.Size() < 4096 {
		br = bufio.NewReaderSize(r, 1<<16)
	}
	magic, err := br.Peek(4)
	if err != nil {
		return nil, errors.New("not a capture file: too short")
	}
	if magic[0] == 0x1f && magic[1] == 0x8b {
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("gzip: %w", err)
		}
		return NewReader(bufio.NewReaderSize(zr, 1<<16))
	}
	if bytes.Equal(magic, []byte{0x0a, 0x0d, 0x0d, 0x0a}) {
		src, err := newNgSource(br)
		if err != nil {
			return nil, fmt.Errorf("pcapng: %w", err)
		}
		return &Reader{src: src}, nil
	}
	src, err := newPcapSource(br)
	if err != nil {
		return nil, fmt.Errorf("pcap: %w", err)
	}
	return &Reader{src: src}, nil
}

// ErrLinkType is returned (wrapped) for frames of an unsupported link type.
var ErrLinkType = errors.New("unsupported link type")

// Next returns the next packet, or io.EOF at the end. Its Frame is the
// caller's. A frame of an unsupported link type returns an error wrapping
// ErrLinkType; reading may continue after it. A file that ends inside a
// record returns an error wrapping ErrTruncated.
func (r *Reader) Next() (Packet, error) {
	p, err := r.NextShared()
	if p.Frame != nil {
		p.Frame = bytes.Clone(p.Frame)
	}
	return p, err
}

// NextShared is Next without a copy: the packet's Frame is valid until
// the next call (the replay's read loop: nothing allocated per packet).
func (r *Reader) NextShared() (Packet, error) {
	data, ts, caplen, wirelen, lt, err := r.src.next()
	if err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return Packet{}, fmt.Errorf("packet %d: %w: %w", r.n+1, ErrTruncated, err)
		}
		if err == io.EOF {
			return Packet{}, err
		}
		return Packet{}, fmt.Errorf("packet %d: %w", r.n+1, err)
	}
	r.n++
	p := Packet{Time: ts, CaptureLen: caplen, WireLen: wirelen, LinkType: lt}
	if lt == linkEthernet {
		p.Frame = data
		return p, nil
	}
	r.eth, err = toEthernet(r.eth[:0], lt, data)
	if err != nil {
		return p, fmt.Errorf("packet %d: %w", r.n, err)
	}
	p.Frame = r.eth
	return p, nil
}

// Count is the number of records read so far.
func (r *Reader) Count() int { return r.n }

// pcapSource reads classic pcap the way libpcap does (what tcpdump reads):
// microsecond, nanosecond and the modified (Kuznetzov) format, both byte
// orders, versions 2.0 to 2.4; a snapshot length of 0 (or over the
// maximum) means the maximum, and a record longer than the file's
// snapshot length is read whole up to MaxCaptureLen (libpcap accepts it
// but hands out only the snapshot length; Wireshark reads it whole: the
// bytes are in the file, and a frame cut short would replay as malformed).
type pcapSource struct {
	br *bufio.Reader
	endian
	nano    bool
	hdrLen  int // record header: 16, or 24 in the modified format
	snaplen int
	link    int
	buf     []byte // records larger than the bufio buffer
}

const (
	magicMicro    = 0xa1b2c3d4
	magicNano     = 0xa1b23c4d
	magicModified = 0xa1b2cd34 // Alexey Kuznetzov's patched libpcap
)

func newPcapSource(br *bufio.Reader) (*pcapSource, error) {
	var h [24]byte
	if _, err := io.ReadFull(br, h[:]); err != nil {
		return nil, errors.New("not a capture file: too short")
	}
	s := &pcapSource{br: br, hdrLen: 16}
	le, be := binary.LittleEndian.Uint32(h[:4]), binary.BigEndian.Uint32(h[:4])
	magic := le
	switch {
	case le == magicMicro || le == magicNano || le == magicModified:
	case be == magicMicro || be == magicNano || be == magicModified:
		s.big, magic = true, be
	default:
		return nil, fmt.Errorf("not a capture file: unknown magic %x", h[:4])
	}
	s.nano = magic == magicNano
	if magic == magicModified {
		s.hdrLen = 24
	}
	major, minor := s.u16(h[4:6]), s.u16(h[6:8])
	if major != 2 || minor > 4 {
		return nil, fmt.Errorf("unsupported pcap version %d.%d", major, minor)
	}
	s.snaplen = int(s.u32(h[16:20]))
	if s.snaplen <= 0 || s.snaplen > MaxCaptureLen {
		s.snaplen = MaxCaptureLen
	}
	// The upper bits carry the FCS length: the link type is the low 16.
	s.link = int(s.u32(h[20:24]) & 0xffff)
	return s, nil
}

// endian reads the integers of a file in its byte order (both formats
// say it in their header).
type endian struct {
	big bool // big-endian file
}

func (e endian) u16(b []byte) uint16 {
	if e.big {
		return binary.BigEndian.Uint16(b)
	}
	return binary.LittleEndian.Uint16(b)
}

func (e endian) u32(b []byte) uint32 {
	if e.big {
		return binary.BigEndian.Uint32(b)
	}
	return binary.LittleEndian.Uint32(b)
}

func (s *pcapSource) next() ([]byte, time.Time, int, int, int, error) {
	h, err := s.br.Peek(s.hdrLen)
	if err != nil {
		if err == io.EOF && len(h) > 0 {
			err = io.ErrUnexpectedEOF
		}
		return nil, time.Time{}, 0, 0, 0, err
	}
	sec, frac := int64(s.u32(h[0:4])), int64(s.u32(h[4:8]))
	caplen, wirelen := s.u32(h[8:12]), s.u32(h[12:16])
	s.br.Discard(s.hdrLen)
	if caplen > MaxCaptureLen {
		return nil, time.Time{}, 0, 0, 0, fmt.Errorf("%w: %d > %d", ErrCaptureLen, caplen, MaxCaptureLen)
	}
	if !s.nano {
		frac *= 1000
	}
	ts := time.Unix(sec, frac).UTC()
	n := int(caplen)
	var data []byte
	if n <= s.br.Size() {
		// Within the read buffer: no copy (valid until the next read).
		if data, err = s.br.Peek(n); err == nil {
			s.br.Discard(n)
		}
	} else {
		if cap(s.buf) < n {
			s.buf = make([]byte, n)
		}
		data = s.buf[:n]
		_, err = io.ReadFull(s.br, data)
	}
	if err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, time.Time{}, 0, 0, 0, err
	}
	return data, ts, n, int(wirelen), s.link, nil
}

// ToEthernet turns a frame of the given link type into an Ethernet frame
// (a new slice, except for Ethernet frames which are returned as is).
func ToEthernet(linkType int, data []byte) ([]byte, error) {
	if linkType == linkEthernet {
		return data, nil
	}
	return toEthernet(nil, linkType, data)
}

// toEthernet appends to dst the Ethernet frame for data of linkType.
func toEthernet(dst []byte, linkType int, data []byte) ([]byte, error) {
	switch linkType {
	case linkEthernet:
		return append(dst, data...), nil
	case linkRaw, linkRawBSD12, linkRawBSD14, linkIPv4, linkIPv6:
		var et uint16
		if len(data) > 0 {
			switch data[0] >> 4 {
			case 4:
				et = 0x0800
			case 6:
				et = 0x86dd
			}
		}
		return synth(dst, nil, et, data), nil
	case linkLinuxSLL:
		if len(data) < 16 {
			return synth(dst, nil, 0, nil), nil
		}
		addr := sllAddr(data[4:6], data[6:14])
		return synth(dst, addr, uint16(data[14])<<8|uint16(data[15]), data[16:]), nil
	case linkLinuxSLL2:
		if len(data) < 20 {
			return synth(dst, nil, 0, nil), nil
		}
		addr := sllAddr(data[11:12], data[12:20])
		return synth(dst, addr, uint16(data[0])<<8|uint16(data[1]), data[20:]), nil
	}
	return dst, fmt.Errorf("%w %d", ErrLinkType, linkType)
}

func sllAddr(lenField, addr []byte) []byte {
	n := int(lenField[len(lenField)-1])
	if n == 6 {
		return addr[:6]
	}
	return nil
}

// synth appends an Ethernet header and payload to dst: destination zero
// (unknown), source the cooked capture's link address when it has one.
func synth(dst, src []byte, etherType uint16, payload []byte) []byte {
	var h [ethHeaderBytes]byte
	copy(h[6:12], src)
	h[12], h[13] = byte(etherType>>8), byte(etherType)
	f := append(dst, h[:]...)
	return append(f, payload...)
}

// Writer writes an Ethernet pcap file with nanosecond timestamps.
type Writer struct {
	w   *pcapgo.Writer
	buf *bufio.Writer
	f   *os.File
}

// Create creates a pcap file for Ethernet frames.
func Create(path string) (*Writer, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	buf := bufio.NewWriterSize(f, 1<<16)
	w := pcapgo.NewWriterNanos(buf)
	if err := w.WriteFileHeader(262144, layers.LinkTypeEthernet); err != nil {
		f.Close()
		return nil, err
	}
	return &Writer{w: w, buf: buf, f: f}, nil
}

// Write appends one frame.
func (w *Writer) Write(t time.Time, frame []byte) error {
	return w.w.WritePacket(gopacket.CaptureInfo{Timestamp: t, CaptureLength: len(frame), Length: len(frame)}, frame)
}

// Close flushes and closes the file.
func (w *Writer) Close() error {
	err := w.buf.Flush()
	if cerr := w.f.Close(); err == nil {
		err = cerr
	}
	return err
}
