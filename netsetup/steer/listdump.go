package steer

import (
	"encoding/binary"
	"fmt"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// nlmFDumpIntr is NLM_F_DUMP_INTR: the kernel saw the object change during
// the dump.
const nlmFDumpIntr = 0x10

// dumpSet appends the elements of one authorized set to out, with one
// GETSETELEM dump read through the element socket. It reports whether the
// kernel flagged the dump as interrupted.
//
// The dump is read with recvfrom into a 64 KiB buffer rather than through
// google/nftables: mdlayher/netlink receives with a page-sized buffer, and
// the kernel sizes each dump chunk by the largest buffer the reader has
// used (up to 32 KiB), so a set came in chunks of about 40 elements. Each
// chunk walks the kernel's hash set from its start, skipping what was
// sent: with 200,000 elements that was 5,000 walks of 100,000 elements on
// average (30 s or more of kernel time per dump); chunks eight times as
// large make it eight times fewer walks.
func (w *elemWriter) dumpSet(out []Entry, table, set string) ([]Entry, bool, error) {
	if _, err := w.dial(); err != nil {
		return out, false, err
	}
	w.seq++
	seq := w.seq
	b := appendHeader(w.wbuf[:0], unix.NFNL_SUBSYS_NFTABLES<<8|unix.NFT_MSG_GETSETELEM, netlink.Request|netlink.Dump, seq)
	b = append(b, nfgen(unix.NFPROTO_NETDEV, 0)...)
	b = appendStringAttr(b, unix.NFTA_SET_ELEM_LIST_TABLE, table)
	b = appendStringAttr(b, unix.NFTA_SET_ELEM_LIST_SET, set)
	setMsgLen(b, 0)
	w.wbuf = b
	w.io.b = b
	err := w.rc.Write(w.io.send)
	if err == nil && w.io.errno != 0 {
		err = w.io.errno
	}
	if err != nil {
		w.close()
		return out, false, fmt.Errorf("steer: dump %s: %w", set, err)
	}
	intr := false
	for {
		w.io.b = w.rbuf
		err := w.rc.Read(w.io.recv)
		if err == nil && w.io.errno != 0 {
			err = w.io.errno
		}
		var done bool
		if err == nil {
			out, done, err = parseDump(out, w.rbuf[:w.io.n], seq, &intr)
		}
		if err != nil {
			// The rest of the dump may still be queued: start afresh.
			w.close()
			return out, false, fmt.Errorf("steer: dump %s: %w", set, err)
		}
		if done {
			return out, intr, nil
		}
	}
}

// parseDump appends the elements of a datagram of a set dump (request seq)
// to out; done at NLMSG_DONE.
func parseDump(out []Entry, b []byte, seq uint32, intr *bool) ([]Entry, bool, error) {
	for len(b) >= unix.NLMSG_HDRLEN {
		l := int(binary.NativeEndian.Uint32(b))
		if l < unix.NLMSG_HDRLEN || l > len(b) {
			return out, false, fmt.Errorf("malformed netlink reply (length %d of %d)", l, len(b))
		}
		typ := binary.NativeEndian.Uint16(b[4:])
		if binary.NativeEndian.Uint16(b[6:])&nlmFDumpIntr != 0 {
			*intr = true
		}
		if got := binary.NativeEndian.Uint32(b[8:]); got != seq {
			return out, false, fmt.Errorf("netlink reply to another request (seq %d, want %d)", got, seq)
		}
		switch typ {
		case unix.NLMSG_DONE, unix.NLMSG_ERROR:
			if l < unix.NLMSG_HDRLEN+4 {
				return out, false, fmt.Errorf("short netlink message (type %d)", typ)
			}
			if code := int32(binary.NativeEndian.Uint32(b[unix.NLMSG_HDRLEN:])); code != 0 {
				return out, false, unix.Errno(-code)
			}
			return out, true, nil // NLMSG_ERROR 0 is the ack, after DONE
		case unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_NEWSETELEM:
			if l < unix.NLMSG_HDRLEN+4 {
				return out, false, fmt.Errorf("short set element message")
			}
			var err error
			if out, err = appendElements(out, b[unix.NLMSG_HDRLEN+4:l]); err != nil {
				return out, false, err
			}
		default:
			return out, false, fmt.Errorf("unexpected netlink reply type %#x", typ)
		}
		l = (l + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1)
		if l >= len(b) {
			break
		}
		b = b[l:]
	}
	return out, false, nil
}

// appendElements appends the elements of one NEWSETELEM message of a dump.
func appendElements(out []Entry, attrs []byte) ([]Entry, error) {
	err := walk(attrs, func(typ uint16, data []byte) error {
		if typ != unix.NFTA_SET_ELEM_LIST_ELEMENTS {
			return nil
		}
		return walk(data, func(_ uint16, elem []byte) error {
			var e Entry
			var key []byte
			if err := walk(elem, func(typ uint16, d []byte) error {
				switch typ {
				case unix.NFTA_SET_ELEM_KEY:
					return walk(d, func(typ uint16, v []byte) error {
						if typ == unix.NFTA_DATA_VALUE {
							key = v
						}
						return nil
					})
				case unix.NFTA_SET_ELEM_TIMEOUT:
					e.Timeout = msAttr(d)
				case unix.NFTA_SET_ELEM_EXPIRATION:
					e.Expires = msAttr(d)
				}
				return nil
			}); err != nil {
				return err
			}
			t, err := parseKey(key)
			if err != nil {
				return err
			}
			e.Tuple = t
			out = append(out, e)
			return nil
		})
	})
	return out, err
}

// msAttr reads a big-endian 64-bit count of milliseconds.
func msAttr(d []byte) time.Duration {
	if len(d) != 8 {
		return 0
	}
	return time.Duration(binary.BigEndian.Uint64(d)) * time.Millisecond
}
