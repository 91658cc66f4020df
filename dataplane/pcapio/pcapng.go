package pcapio

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"time"
)

// pcapng block types.
const (
	ngSectionHeader   = 0x0a0d0d0a
	ngInterface       = 1
	ngPacketObsolete  = 2
	ngSimplePacket    = 3
	ngEnhancedPacket  = 6
	ngByteOrderMagic  = 0x1a2b3c4d
	ngMaxBlock        = 16 << 20 // libpcap's largest block
	ngOptTSResolution = 9
	ngOptTSOffset     = 14
)

// ngSource reads pcapng the way libpcap does: sections of either byte
// order, interfaces of any link type and timestamp resolution
// (if_tsresol, if_tsoffset), enhanced, simple and obsolete packet blocks;
// other blocks are skipped. Every length is checked against its block: a
// hostile file gets an error, never an allocation of what it claims
// (blocks are at most 16 MiB, records MaxCaptureLen).
type ngSource struct {
	br *bufio.Reader
	endian
	ifaces []ngIface
	block  []byte
}

type ngIface struct {
	link    int
	snaplen uint32
	// units is how many timestamp units make a second; offset is added
	// to every timestamp (seconds).
	units  uint64
	offset int64
}

func newNgSource(br *bufio.Reader) (*ngSource, error) {
	s := &ngSource{br: br}
	typ, _, err := s.readBlock()
	if err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, errors.New("not a capture file: too short")
		}
		return nil, err
	}
	if typ != ngSectionHeader {
		return nil, errors.New("no section header block")
	}
	return s, nil
}

// readBlock reads the next block and returns its type and body (valid
// until the next call). A section header is taken in here (byte order,
// interfaces reset). io.EOF only at a block boundary.
func (s *ngSource) readBlock() (uint32, []byte, error) {
	var h [12]byte
	if _, err := io.ReadFull(s.br, h[:8]); err != nil {
		return 0, nil, err
	}
	head := 8
	typ := s.u32(h[0:4])
	if binary.LittleEndian.Uint32(h[0:4]) == ngSectionHeader {
		typ = ngSectionHeader
		if _, err := io.ReadFull(s.br, h[8:12]); err != nil {
			return 0, nil, eofInside(err)
		}
		switch {
		case binary.BigEndian.Uint32(h[8:12]) == ngByteOrderMagic:
			s.big = true
		case binary.LittleEndian.Uint32(h[8:12]) == ngByteOrderMagic:
			s.big = false
		default:
			return 0, nil, errors.New("pcapng: section header with a bad byte-order magic")
		}
		head = 12
	}
	total := s.u32(h[4:8])
	if total%4 != 0 || total < uint32(head)+4 || total > ngMaxBlock {
		return 0, nil, fmt.Errorf("pcapng: block length %d", total)
	}
	n := int(total) - head
	if cap(s.block) < n {
		s.block = make([]byte, n)
	}
	b := s.block[:n]
	if _, err := io.ReadFull(s.br, b); err != nil {
		return 0, nil, eofInside(err)
	}
	if s.u32(b[n-4:]) != total {
		return 0, nil, errors.New("pcapng: block lengths at its start and end differ")
	}
	b = b[:n-4]
	if typ == ngSectionHeader {
		if len(b) < 12 || s.u16(b[0:2]) != 1 {
			return 0, nil, errors.New("pcapng: unsupported section version")
		}
		s.ifaces = s.ifaces[:0]
	}
	return typ, b, nil
}

// eofInside turns an end of file inside a block into a truncation.
func eofInside(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// addInterface reads an interface description block.
func (s *ngSource) addInterface(b []byte) error {
	if len(b) < 8 {
		return errors.New("pcapng: short interface block")
	}
	ifc := ngIface{link: int(s.u16(b[0:2])), snaplen: s.u32(b[4:8]), units: 1_000_000}
	for o := b[8:]; len(o) >= 4; {
		code, l := s.u16(o[0:2]), int(s.u16(o[2:4]))
		if code == 0 {
			break
		}
		if 4+l > len(o) {
			return errors.New("pcapng: interface option beyond its block")
		}
		v := o[4 : 4+l]
		switch {
		case code == ngOptTSResolution && l == 1:
			exp := uint64(v[0] & 0x7f)
			if v[0]&0x80 != 0 {
				if exp > 63 {
					return fmt.Errorf("pcapng: timestamp resolution 2^-%d", exp)
				}
				ifc.units = 1 << exp
			} else {
				if exp > 19 {
					return fmt.Errorf("pcapng: timestamp resolution 10^-%d", exp)
				}
				ifc.units = 1
				for range exp {
					ifc.units *= 10
				}
			}
		case code == ngOptTSOffset && l == 8:
			if s.big {
				ifc.offset = int64(binary.BigEndian.Uint64(v))
			} else {
				ifc.offset = int64(binary.LittleEndian.Uint64(v))
			}
		}
		o = o[min(len(o), 4+(l+3)&^3):]
	}
	s.ifaces = append(s.ifaces, ifc)
	return nil
}

// time converts a timestamp of interface ifc.
func (ifc *ngIface) time(ts uint64) time.Time {
	sec, frac := ts/ifc.units, ts%ifc.units
	hi, lo := bits.Mul64(frac, 1e9)
	ns, _ := bits.Div64(hi, lo, ifc.units) // frac < units: no overflow
	return time.Unix(int64(sec)+ifc.offset, int64(ns)).UTC()
}

func (s *ngSource) next() ([]byte, time.Time, int, int, int, error) {
	for {
		typ, b, err := s.readBlock()
		if err != nil {
			return nil, time.Time{}, 0, 0, 0, err
		}
		var (
			idx             uint32
			ts              uint64
			caplen, wirelen uint32
			data            []byte
		)
		switch typ {
		case ngInterface:
			if err := s.addInterface(b); err != nil {
				return nil, time.Time{}, 0, 0, 0, err
			}
			continue
		case ngEnhancedPacket, ngPacketObsolete:
			if len(b) < 20 {
				return nil, time.Time{}, 0, 0, 0, errors.New("pcapng: short packet block")
			}
			if typ == ngEnhancedPacket {
				idx = s.u32(b[0:4])
			} else {
				idx = uint32(s.u16(b[0:2]))
			}
			ts = uint64(s.u32(b[4:8]))<<32 | uint64(s.u32(b[8:12]))
			caplen, wirelen = s.u32(b[12:16]), s.u32(b[16:20])
			if caplen > uint32(len(b)-20) {
				return nil, time.Time{}, 0, 0, 0, fmt.Errorf("pcapng: capture length %d beyond its block", caplen)
			}
			data = b[20 : 20+caplen]
		case ngSimplePacket:
			if len(b) < 4 || len(s.ifaces) == 0 {
				return nil, time.Time{}, 0, 0, 0, errors.New("pcapng: simple packet block without an interface")
			}
			wirelen = s.u32(b[0:4])
			caplen = min(wirelen, uint32(len(b)-4))
			if sl := s.ifaces[0].snaplen; sl != 0 {
				caplen = min(caplen, sl)
			}
			data = b[4 : 4+caplen]
		default:
			continue // statistics, name resolution, custom blocks...
		}
		if int(idx) >= len(s.ifaces) {
			return nil, time.Time{}, 0, 0, 0, fmt.Errorf("pcapng: packet of interface %d, %d described", idx, len(s.ifaces))
		}
		if caplen > MaxCaptureLen {
			return nil, time.Time{}, 0, 0, 0, fmt.Errorf("%w: %d > %d", ErrCaptureLen, caplen, MaxCaptureLen)
		}
		ifc := &s.ifaces[idx]
		var t time.Time
		if typ != ngSimplePacket {
			t = ifc.time(ts)
		}
		return data, t, int(caplen), int(wirelen), ifc.link, nil
	}
}
