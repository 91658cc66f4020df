package steer

import (
	"encoding/binary"
	"fmt"
	"unsafe"

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

// RevokeCounted queues Steerer.Revoke, and reads the entries' counters
// into c first: Commit reads them right before the transaction that
// deletes the entries (the packets the kernel passes between the read and
// the delete, a few µs, are not in them). c is filled when Commit returns
// without error.
func (b *Batch) RevokeCounted(pu string, t Tuple, c *FinalCounts) {
	b.ops = append(b.ops, batchOp{pu: pu, t: t, del: true, counts: c})
}

// counterReq asks for the counter of one entry.
type counterReq struct {
	table, set string
	key        []byte
	dst        *FlowCount
	found      *bool
}

// maxGetsPerSend bounds the element reads of one sendmsg: each answer is
// a message of its own on the receive buffer.
const maxGetsPerSend = 256

// counters reads the counters of the entries of reqs (one GETSETELEM
// message each, so that an entry gone does not hide the others: the
// kernel stops at the first element it cannot find in a message).
func (w *elemWriter) counters(reqs []counterReq) error {
	for len(reqs) > 0 {
		n := min(len(reqs), maxGetsPerSend)
		if err := w.countersOnce(reqs[:n]); err != nil {
			return err
		}
		reqs = reqs[n:]
	}
	return nil
}

func (w *elemWriter) countersOnce(reqs []counterReq) error {
	if _, err := w.dial(); err != nil {
		return err
	}
	b := w.wbuf[:0]
	first := w.seq + 1
	for _, r := range reqs {
		w.seq++
		msg := len(b)
		b = appendHeader(b, unix.NFNL_SUBSYS_NFTABLES<<8|unix.NFT_MSG_GETSETELEM, netlink.Request, w.seq)
		b = append(b, nfgen(unix.NFPROTO_NETDEV, 0)...)
		b = appendStringAttr(b, unix.NFTA_SET_ELEM_LIST_TABLE, r.table)
		b = appendStringAttr(b, unix.NFTA_SET_ELEM_LIST_SET, r.set)
		var elems, elem, key int
		b, elems = beginAttr(b, netlink.Nested|unix.NFTA_SET_ELEM_LIST_ELEMENTS)
		b, elem = beginAttr(b, netlink.Nested|nftaListElem)
		b, key = beginAttr(b, netlink.Nested|unix.NFTA_SET_ELEM_KEY)
		b = appendAttr(b, unix.NFTA_DATA_VALUE, r.key)
		b = endAttr(b, key)
		b = endAttr(b, elem)
		b = endAttr(b, elems)
		setMsgLen(b, msg)
	}
	w.wbuf = b
	w.io.b = b
	err := w.rc.Write(w.io.send)
	if err == nil && w.io.errno != 0 {
		err = w.io.errno
	}
	if err == nil && w.io.n != len(b) {
		err = fmt.Errorf("short write (%d of %d bytes)", w.io.n, len(b))
	}
	if err != nil {
		w.close()
		return fmt.Errorf("steer: read flow counters: %w", err)
	}
	// Each message is answered by one message: the element, or an error
	// (ENOENT: not there). The kernel queues them before sendmsg returns;
	// recvmmsg takes them all in one system call (each answer is a
	// datagram of its own: one recvfrom each cost ~5 µs per flow).
	m := &w.mm
	m.init()
	for answered := 0; answered < len(reqs); {
		m.vlen = len(reqs) - answered
		err := w.rc.Read(m.recv)
		if err == nil && m.errno != 0 {
			err = m.errno
		}
		for i := 0; err == nil && i < m.n; i++ {
			h := &m.hdrs[i]
			if h.Hdr.Flags&unix.MSG_TRUNC != 0 {
				err = fmt.Errorf("netlink answer of more than %d bytes", replySlot)
				break
			}
			var n int
			n, err = parseCounterReplies(m.buf[i*replySlot:i*replySlot+int(h.Len)], reqs, first)
			answered += n
		}
		if err != nil {
			w.close() // answers may remain on the socket: start afresh
			return fmt.Errorf("steer: read flow counters: %w", err)
		}
	}
	return nil
}

// replySlot is the room for one answer to an element read (~200 bytes:
// table and set names, key, timeout, expiration, counter).
const replySlot = 1024

// mmsgRecv receives up to maxGetsPerSend netlink messages in one
// recvmmsg; its buffers are made once and its recv method bound once, so
// a read allocates nothing.
type mmsgRecv struct {
	hdrs  []unix.Mmsghdr
	iovs  []unix.Iovec
	buf   []byte
	vlen  int // messages wanted
	n     int // messages received
	errno unix.Errno
	recv  func(fd uintptr) bool
}

func (m *mmsgRecv) init() {
	if m.recv != nil {
		return
	}
	m.hdrs = make([]unix.Mmsghdr, maxGetsPerSend)
	m.iovs = make([]unix.Iovec, maxGetsPerSend)
	m.buf = make([]byte, maxGetsPerSend*replySlot)
	for i := range m.hdrs {
		m.iovs[i].Base = &m.buf[i*replySlot]
		m.iovs[i].SetLen(replySlot)
		m.hdrs[i].Hdr.Iov = &m.iovs[i]
		m.hdrs[i].Hdr.SetIovlen(1)
	}
	m.recv = m.sysRecv
}

// sysRecv runs recvmmsg (no timeout, no flags: the socket does not
// block); false (EAGAIN) parks the caller in the poller.
func (m *mmsgRecv) sysRecv(fd uintptr) bool {
	for {
		n, _, e := unix.RawSyscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&m.hdrs[0])), uintptr(min(m.vlen, len(m.hdrs))), 0, 0, 0)
		switch e {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		}
		m.n, m.errno = int(n), e
		if e != 0 {
			m.n = 0
		}
		return true
	}
}

// parseCounterReplies reads a datagram of answers to the element reads of
// reqs (sequence numbers from first on) and returns how many it held.
func parseCounterReplies(b []byte, reqs []counterReq, first uint32) (int, error) {
	answered := 0
	for len(b) >= unix.NLMSG_HDRLEN {
		l := int(binary.NativeEndian.Uint32(b))
		if l < unix.NLMSG_HDRLEN || l > len(b) {
			return answered, fmt.Errorf("malformed netlink reply (length %d of %d)", l, len(b))
		}
		typ := binary.NativeEndian.Uint16(b[4:])
		i := int(binary.NativeEndian.Uint32(b[8:]) - first)
		if i < 0 || i >= len(reqs) {
			return answered, fmt.Errorf("netlink reply to an unknown request (seq %d)", binary.NativeEndian.Uint32(b[8:]))
		}
		switch typ {
		case unix.NLMSG_ERROR:
			if l < unix.NLMSG_HDRLEN+4 {
				return answered, fmt.Errorf("short netlink error message")
			}
			switch code := unix.Errno(-int32(binary.NativeEndian.Uint32(b[unix.NLMSG_HDRLEN:]))); code {
			case 0, unix.ENOENT: // gone (expired): nothing counted there
			default:
				return answered, code
			}
		case unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_NEWSETELEM:
			c, ok, err := elementCounter(b[unix.NLMSG_HDRLEN+4 : l])
			if err != nil {
				return answered, err
			}
			*reqs[i].found = true
			if ok {
				*reqs[i].dst = c
			}
		default:
			return answered, fmt.Errorf("unexpected netlink reply type %#x", typ)
		}
		answered++
		l = (l + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1)
		if l > len(b) {
			break
		}
		b = b[l:]
	}
	return answered, nil
}

// nftaSetElemExpressions is NFTA_SET_ELEM_EXPRESSIONS (an element with
// several stateful expressions; one alone comes as NFTA_SET_ELEM_EXPR).
const nftaSetElemExpressions = 11

// elementCounter finds the counter of the one element of a NEWSETELEM
// message's attributes.
func elementCounter(attrs []byte) (FlowCount, bool, error) {
	var c FlowCount
	found := false
	err := walk(attrs, func(typ uint16, data []byte) error {
		if typ != unix.NFTA_SET_ELEM_LIST_ELEMENTS {
			return nil
		}
		return walk(data, func(_ uint16, elem []byte) error {
			return walk(elem, func(typ uint16, data []byte) error {
				switch typ {
				case unix.NFTA_SET_ELEM_EXPR:
					return exprCounter(data, &c, &found)
				case nftaSetElemExpressions:
					return walk(data, func(_ uint16, e []byte) error { return exprCounter(e, &c, &found) })
				}
				return nil
			})
		})
	})
	return c, found, err
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
