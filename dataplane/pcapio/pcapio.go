// Package pcapio reads pcap and pcapng captures into Ethernet frames for the
// enforcer (raw-IP and Linux cooked captures get a synthesized Ethernet
// header) and writes Ethernet pcap files.
package pcapio

import (
	"bufio"
	"bytes"
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
	// Frame is the Ethernet frame (owned by the caller; not reused).
	Frame []byte
	// CaptureLen and WireLen are the captured and original lengths of the
	// frame as recorded (before any header synthesis).
	CaptureLen, WireLen int
	// LinkType is the capture's link type for this frame.
	LinkType int
}

type source interface {
	ReadPacketData() ([]byte, gopacket.CaptureInfo, error)
}

// Reader reads a pcap or pcapng stream.
type Reader struct {
	src  source
	link func(ci gopacket.CaptureInfo) int
	n    int
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
			return out, fmt.Errorf("%s: packet %d: %w", path, len(out)+1, err)
		}
		out = append(out, p)
	}
}

// NewReader detects pcap (µs or ns) or pcapng by the magic number.
func NewReader(r io.Reader) (*Reader, error) {
	br, ok := r.(*bufio.Reader)
	if !ok {
		br = bufio.NewReader(r)
	}
	magic, err := br.Peek(4)
	if err != nil {
		return nil, errors.New("not a capture file: too short")
	}
	if bytes.Equal(magic, []byte{0x0a, 0x0d, 0x0d, 0x0a}) {
		ng, err := pcapgo.NewNgReader(br, pcapgo.DefaultNgReaderOptions)
		if err != nil {
			return nil, fmt.Errorf("pcapng: %w", err)
		}
		return &Reader{src: ng, link: func(ci gopacket.CaptureInfo) int {
			iface, err := ng.Interface(ci.InterfaceIndex)
			if err != nil {
				return int(ng.LinkType())
			}
			return int(iface.LinkType)
		}}, nil
	}
	pr, err := pcapgo.NewReader(br)
	if err != nil {
		return nil, fmt.Errorf("pcap: %w", err)
	}
	lt := int(pr.LinkType())
	return &Reader{src: pr, link: func(gopacket.CaptureInfo) int { return lt }}, nil
}

// ErrLinkType is returned (wrapped) for frames of an unsupported link type.
var ErrLinkType = errors.New("unsupported link type")

// Next returns the next packet, or io.EOF at the end. A frame of an
// unsupported link type returns an error wrapping ErrLinkType; reading may
// continue after it.
func (r *Reader) Next() (Packet, error) {
	data, ci, err := r.src.ReadPacketData()
	if err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return Packet{}, fmt.Errorf("packet %d: truncated capture: %w", r.n+1, err)
		}
		return Packet{}, err
	}
	r.n++
	lt := r.link(ci)
	p := Packet{Time: ci.Timestamp, CaptureLen: ci.CaptureLength, WireLen: ci.Length, LinkType: lt}
	p.Frame, err = ToEthernet(lt, data)
	if err != nil {
		return p, fmt.Errorf("packet %d: %w", r.n, err)
	}
	return p, nil
}

// ToEthernet turns a frame of the given link type into an Ethernet frame
// (a new slice, except for Ethernet frames which are returned as is).
func ToEthernet(linkType int, data []byte) ([]byte, error) {
	switch linkType {
	case linkEthernet:
		return data, nil
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
		return synth(nil, et, data), nil
	case linkLinuxSLL:
		if len(data) < 16 {
			return synth(nil, 0, nil), nil
		}
		addr := sllAddr(data[4:6], data[6:14])
		return synth(addr, uint16(data[14])<<8|uint16(data[15]), data[16:]), nil
	case linkLinuxSLL2:
		if len(data) < 20 {
			return synth(nil, 0, nil), nil
		}
		addr := sllAddr(data[11:12], data[12:20])
		return synth(addr, uint16(data[0])<<8|uint16(data[1]), data[20:]), nil
	}
	return nil, fmt.Errorf("%w %d", ErrLinkType, linkType)
}

func sllAddr(lenField, addr []byte) []byte {
	n := int(lenField[len(lenField)-1])
	if n == 6 {
		return addr[:6]
	}
	return nil
}

// synth builds an Ethernet header: destination zero (unknown), source the
// cooked capture's link address when it has one.
func synth(src []byte, etherType uint16, payload []byte) []byte {
	f := make([]byte, ethHeaderBytes+len(payload))
	copy(f[6:12], src)
	f[12], f[13] = byte(etherType>>8), byte(etherType)
	copy(f[14:], payload)
	return f
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
