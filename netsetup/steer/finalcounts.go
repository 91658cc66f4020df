package steer

import (
	"bytes"
	"encoding/binary"
	"fmt"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// FinalCounts is what the kernel counted on a flow's two entries when the
// flow was revoked (Batch.RevokeCounted): Out on the entry of the tuple
// revoked (the PU's packets when its Src is the PU's address), In on its
// reverse. Found says at least one of the entries was still there (an
// entry that expired in the kernel took its counter with it).
type FinalCounts struct {
	Out, In FlowCount
	Found   bool
}

// RevokeCounted queues Steerer.Revoke, and reads the entries' final
// counters into c: the kernel reports each deleted entry, with its
// counter, as Commit's transaction deletes it (so the counts miss no
// packet the kernel passed). c is filled when Commit returns without
// error.
func (b *Batch) RevokeCounted(pu string, t Tuple, c *FinalCounts) {
	b.ops = append(b.ops, batchOp{pu: pu, t: t, del: true, counts: c})
}

// Types of the echo of a deleted element (a DESTROYSETELEM's is reported
// as a DELSETELEM; both are accepted).
const (
	msgDelSetElem      = unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_DELSETELEM
	msgDestroyElemEcho = unix.NFNL_SUBSYS_NFTABLES<<8 | msgDestroySetElem
)

// readEchoes reads the echoes of deleted elements in a datagram of
// replies (one element per message) into the ops of w.echoed of the same
// table, set and key. The kernel sends them as the transaction commits,
// with sequence number 0 (measured on 6.18), so they are matched by what
// they name. An entry that was not there (expired, revoked) is not echoed:
// its counts stay zero.
func (w *elemWriter) readEchoes(b []byte) error {
	for len(b) >= unix.NLMSG_HDRLEN {
		l := int(binary.NativeEndian.Uint32(b))
		if l < unix.NLMSG_HDRLEN || l > len(b) {
			return fmt.Errorf("malformed netlink reply (length %d of %d)", l, len(b))
		}
		if typ := binary.NativeEndian.Uint16(b[4:]); typ == msgDelSetElem || typ == msgDestroyElemEcho {
			if l < unix.NLMSG_HDRLEN+4 {
				return fmt.Errorf("short set element echo")
			}
			e, err := parseElement(b[unix.NLMSG_HDRLEN+4 : l])
			if err != nil {
				return err
			}
			if !w.matchEcho(e) {
				return fmt.Errorf("set element echo of an element not deleted counted (%s %s)", e.table, e.set)
			}
		}
		l = nlmsgAlign(l)
		if l > len(b) {
			break
		}
		b = b[l:]
	}
	return nil
}

// matchEcho gives e's counter to the first counted delete of its element
// not yet echoed (a key deleted twice in a transaction is echoed once: the
// second delete finds nothing).
func (w *elemWriter) matchEcho(e echoedElem) bool {
	for _, ops := range w.echoed {
		if ops[0].set != string(e.set) || ops[0].table != string(e.table) {
			continue
		}
		for i := range ops {
			op := &ops[i]
			if !op.echoed && bytes.Equal(op.key, e.key) {
				op.echoed = true
				*op.count, *op.found = e.count, true
				return true
			}
		}
	}
	return false
}

// echoedElem is what a set element message names and counted.
type echoedElem struct {
	table, set, key []byte
	count           FlowCount
}

// nftaSetElemExpressions is NFTA_SET_ELEM_EXPRESSIONS (an element with
// several stateful expressions; one alone comes as NFTA_SET_ELEM_EXPR).
const nftaSetElemExpressions = 11

// parseElement finds the table, the set, the key and the counter (zero if
// it has none) of the one element of a set element message's attributes.
func parseElement(attrs []byte) (echoedElem, error) {
	var e echoedElem
	c, key := &e.count, &e.key
	found := false
	err := walk(attrs, func(typ uint16, data []byte) error {
		switch typ {
		case unix.NFTA_SET_ELEM_LIST_TABLE:
			e.table = trimNUL(data)
			return nil
		case unix.NFTA_SET_ELEM_LIST_SET:
			e.set = trimNUL(data)
			return nil
		case unix.NFTA_SET_ELEM_LIST_ELEMENTS:
		default:
			return nil
		}
		return walk(data, func(_ uint16, elem []byte) error {
			return walk(elem, func(typ uint16, data []byte) error {
				switch typ {
				case unix.NFTA_SET_ELEM_KEY:
					return walk(data, func(typ uint16, v []byte) error {
						if typ == unix.NFTA_DATA_VALUE {
							*key = v
						}
						return nil
					})
				case unix.NFTA_SET_ELEM_EXPR:
					return exprCounter(data, c, &found)
				case nftaSetElemExpressions:
					return walk(data, func(_ uint16, e []byte) error { return exprCounter(e, c, &found) })
				}
				return nil
			})
		})
	})
	if err == nil && (e.key == nil || e.set == nil || e.table == nil) {
		err = fmt.Errorf("set element echo without a table, set or key")
	}
	return e, err
}

// exprCounter reads a counter expression (NFTA_EXPR_NAME "counter",
// NFTA_EXPR_DATA with the counts, big-endian).
func exprCounter(e []byte, c *FlowCount, found *bool) error {
	var name string
	var data []byte
	if err := walk(e, func(typ uint16, d []byte) error {
		switch typ {
		case unix.NFTA_EXPR_NAME:
			name = string(trimNUL(d))
		case unix.NFTA_EXPR_DATA:
			data = d
		}
		return nil
	}); err != nil || name != "counter" {
		return err
	}
	*found = true
	return walk(data, func(typ uint16, d []byte) error {
		if len(d) != 8 {
			return nil
		}
		switch typ {
		case unix.NFTA_COUNTER_BYTES:
			c.Bytes = binary.BigEndian.Uint64(d)
		case unix.NFTA_COUNTER_PACKETS:
			c.Packets = binary.BigEndian.Uint64(d)
		}
		return nil
	})
}

func trimNUL(b []byte) []byte {
	for len(b) > 0 && b[len(b)-1] == 0 {
		b = b[:len(b)-1]
	}
	return b
}

// walk calls fn with the type (flags cleared) and data of each attribute
// of b.
func walk(b []byte, fn func(typ uint16, data []byte) error) error {
	for len(b) >= unix.NLA_HDRLEN {
		l := int(binary.NativeEndian.Uint16(b))
		if l < unix.NLA_HDRLEN || l > len(b) {
			return fmt.Errorf("malformed netlink attribute (length %d of %d)", l, len(b))
		}
		typ := binary.NativeEndian.Uint16(b[2:]) &^ (netlink.Nested | netlink.NetByteOrder)
		if err := fn(typ, b[unix.NLA_HDRLEN:l]); err != nil {
			return err
		}
		l = (l + unix.NLA_ALIGNTO - 1) &^ (unix.NLA_ALIGNTO - 1)
		if l >= len(b) {
			return nil
		}
		b = b[l:]
	}
	return nil
}
