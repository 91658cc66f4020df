package steer

import (
	"encoding/binary"
	"fmt"
	"syscall"
	"time"
	"unsafe"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// The authorized sets are written with hand-built nf_tables messages rather
// than google/nftables, for two kernel features v0.3.0 cannot express:
//   - NFTA_SET_ELEM_EXPIRATION: re-adding an existing element with the same
//     timeout does NOT restart its timer on this kernel (measured on 6.18);
//     sending the expiration too does, so Authorize refreshes a flow.
//   - NFT_MSG_DESTROYSETELEM (kernel >= 6.3): delete without ENOENT, so a
//     Revoke of an entry that already expired does not abort the batch.
const (
	msgDestroySetElem = 30 // NFT_MSG_DESTROYSETELEM
	nftaListElem      = 1  // NFTA_LIST_ELEM
	maxElemsPerMsg    = 256
	// maxElemsPerTxn keeps one transaction (one sendmsg) well under the
	// default netlink send buffer (wmem_max, 208 KiB): a v6 element takes
	// about 90 bytes on the wire.
	maxElemsPerTxn = 1024
	// MaxTimeout bounds per-element timeouts (the kernel rejects values
	// that overflow its jiffies conversion).
	MaxTimeout = 30 * 24 * time.Hour
)

type elemOp struct {
	table   string
	set     string
	key     []byte
	timeout time.Duration // 0: no timeout (until revoked)
	del     bool
	// count, for a delete, asks for the entry's counter (RevokeCounted):
	// the kernel echoes the deleted element; found is set if it was there.
	count  *FlowCount
	found  *bool
	echoed bool // its echo was read
}

// elemWriter sends batches of set-element changes on its own netfilter
// netlink socket.
//
// The socket is dialled with mdlayher/netlink (namespace, binding) but
// written and read with raw system calls through its poller hook: the
// daemon commits a transaction for nearly every new connection, and a
// netlink sendmsg runs the whole nf_tables transaction inline (tens of
// µs). Through syscall.Syscall each of them woke the Go runtime's sysmon
// from its idle sleep into 20 µs polling for the next millisecond or more,
// which at a few hundred connections per second kept it polling for good
// (12 % of the daemon's CPU). The kernel queues the acknowledgements
// before sendmsg returns, so the reads do not wait either.
type elemWriter struct {
	netns int
	conn  *netlink.Conn
	rc    syscall.RawConn
	seq   uint32
	io    rawIO
	rbuf  []byte
	wbuf  []byte // the last transaction, reused
	// echoed are the counted deletes of the transaction being read, by
	// message (finalcounts.go).
	echoed [][]elemOp
}

// rawIO is one raw send or receive on the netlink socket; its methods are
// bound once (send, recv) so that using them allocates nothing.
type rawIO struct {
	b          []byte
	n          int
	errno      unix.Errno
	send, recv func(fd uintptr) bool
}

func (r *rawIO) sysSend(fd uintptr) bool { return r.do(unix.SYS_SENDTO, fd) }
func (r *rawIO) sysRecv(fd uintptr) bool { return r.do(unix.SYS_RECVFROM, fd) }

// do runs sendto/recvfrom with no address and no flags; false (EAGAIN)
// parks the caller in the poller until the socket is ready.
func (r *rawIO) do(trap, fd uintptr) bool {
	for {
		n, _, e := unix.RawSyscall6(trap, fd, uintptr(unsafe.Pointer(&r.b[0])), uintptr(len(r.b)), 0, 0, 0)
		switch e {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		}
		r.n, r.errno = int(n), e
		return true
	}
}

// netlinkCapAck is NETLINK_CAP_ACK: error acknowledgements carry the
// failed message's header only, not the whole (large) message.
const netlinkCapAck = 10

func (w *elemWriter) dial() (*netlink.Conn, error) {
	if w.conn != nil {
		return w.conn, nil
	}
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: w.netns})
	if err != nil {
		return nil, fmt.Errorf("steer: netlink: %w", err)
	}
	rc, err := c.SyscallConn()
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("steer: netlink: %w", err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_NETLINK, netlinkCapAck, 1)
		if serr == nil {
			// Room for the errors of a refused transaction (one per
			// failing message).
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 1<<20)
		}
	}); err != nil || serr != nil {
		c.Close()
		return nil, fmt.Errorf("steer: netlink NETLINK_CAP_ACK: %v %v", err, serr)
	}
	if w.io.send == nil {
		w.io.send, w.io.recv = w.io.sysSend, w.io.sysRecv
		w.rbuf = make([]byte, 64<<10)
	}
	w.conn, w.rc = c, rc
	return c, nil
}

func (w *elemWriter) close() {
	if w.conn != nil {
		w.conn.Close()
		w.conn, w.rc = nil, nil
	}
}

func nfgen(family uint8, resID uint16) []byte {
	return []byte{family, unix.NFNETLINK_V0, byte(resID >> 8), byte(resID)}
}

// commit applies ops in order, in one nf_tables transaction (all or
// nothing) per maxElemsPerTxn elements. The counts of counted deletes come
// with the transaction (echoes); if some of them could not be read, the
// transactions are still applied and countErr says why.
func (w *elemWriter) commit(ops []elemOp) (countErr, err error) {
	for len(ops) > 0 {
		n := min(len(ops), maxElemsPerTxn)
		cerr, err := w.commitTxn(ops[:n])
		if err != nil {
			return countErr, err
		}
		if countErr == nil {
			countErr = cerr
		}
		ops = ops[n:]
	}
	return countErr, nil
}

func (w *elemWriter) commitTxn(ops []elemOp) (countErr, err error) {
	if len(ops) == 0 {
		return nil, nil
	}
	if _, err := w.dial(); err != nil {
		return nil, err
	}
	// One datagram holds the whole transaction, encoded into a buffer
	// kept from one commit to the next.
	txn := w.wbuf[:0]
	w.seq++
	txn = appendHeader(txn, unix.NFNL_MSG_BATCH_BEGIN, netlink.Request, w.seq)
	txn = append(txn, nfgen(unix.AF_UNSPEC, unix.NFNL_SUBSYS_NFTABLES)...)
	// Only the last message asks for an acknowledgement: one per
	// message, for a batch of flows of many PUs (a message per PU), did
	// not fit the socket's receive buffer (ENOBUFS). A failing message is
	// reported whatever its flags, before that acknowledgement.
	//
	// Counted deletes go in messages of their own, with NLM_F_ECHO: the
	// kernel then sends the deleted elements back, with their counters
	// as the transaction commits (nf_tables_setelem_notify), before the
	// acknowledgement. Only those: echoes of every change overflowed the
	// receive buffer of a restart's transactions.
	last := 0
	w.echoed = w.echoed[:0]
	for i := 0; i < len(ops); {
		j := i + 1
		for j < len(ops) && j-i < maxElemsPerMsg && ops[j].set == ops[i].set && ops[j].table == ops[i].table && ops[j].del == ops[i].del && (ops[j].count == nil) == (ops[i].count == nil) {
			j++
		}
		w.seq++
		last = len(txn)
		txn = appendElemMessage(txn, ops[i:j], w.seq)
		if ops[i].count != nil {
			w.echoed = append(w.echoed, ops[i:j])
		}
		i = j
	}
	flags := binary.NativeEndian.Uint16(txn[last+6:])
	binary.NativeEndian.PutUint16(txn[last+6:], flags|uint16(netlink.Acknowledge))
	want := 1
	w.seq++
	txn = appendHeader(txn, unix.NFNL_MSG_BATCH_END, netlink.Request, w.seq)
	txn = append(txn, nfgen(unix.AF_UNSPEC, unix.NFNL_SUBSYS_NFTABLES)...)
	w.wbuf = txn
	w.io.b = txn
	err = w.rc.Write(w.io.send)
	if err == nil && w.io.errno != 0 {
		err = w.io.errno
	}
	if err == nil && w.io.n != len(txn) {
		err = fmt.Errorf("short write (%d of %d bytes)", w.io.n, len(txn))
	}
	if err != nil {
		w.close()
		return nil, fmt.Errorf("steer: send set elements: %w", err)
	}
	for want > 0 {
		w.io.b = w.rbuf
		err := w.rc.Read(w.io.recv)
		if err == nil && w.io.errno != 0 {
			err = w.io.errno
		}
		if err == nil {
			var acked int
			acked, err = parseAcks(w.rbuf[:w.io.n])
			want -= acked
			if err == nil && len(w.echoed) > 0 && countErr == nil {
				countErr = w.readEchoes(w.rbuf[:w.io.n])
			}
		}
		if err != nil {
			// The transaction was aborted; unread acks may remain on the
			// socket, so start afresh next time.
			w.close()
			return nil, fmt.Errorf("steer: set elements: %w", err)
		}
	}
	if countErr != nil {
		w.close() // echoes may remain on the socket: start afresh
	}
	return countErr, nil
}

// appendHeader appends a netlink header (native byte order) whose length
// setMsgLen fills in; the kernel fills in our port ID.
func appendHeader(b []byte, typ uint16, flags netlink.HeaderFlags, seq uint32) []byte {
	b = binary.NativeEndian.AppendUint32(b, unix.NLMSG_HDRLEN+4) // header + nfgenmsg; see setMsgLen
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = binary.NativeEndian.AppendUint16(b, uint16(flags))
	b = binary.NativeEndian.AppendUint32(b, seq)
	return binary.NativeEndian.AppendUint32(b, 0)
}

// setMsgLen sets the length of the message starting at b[start:] to run
// to the end of b.
func setMsgLen(b []byte, start int) {
	binary.NativeEndian.PutUint32(b[start:], uint32(len(b)-start))
}

// beginAttr appends an attribute header whose length endAttr fills in.
func beginAttr(b []byte, typ uint16) ([]byte, int) {
	start := len(b)
	b = binary.NativeEndian.AppendUint16(b, 0)
	return binary.NativeEndian.AppendUint16(b, typ), start
}

// endAttr sets the length of the attribute starting at start (unpadded)
// and pads b to the netlink alignment.
func endAttr(b []byte, start int) []byte {
	binary.NativeEndian.PutUint16(b[start:], uint16(len(b)-start))
	for len(b)%unix.NLA_ALIGNTO != 0 {
		b = append(b, 0)
	}
	return b
}

func appendAttr(b []byte, typ uint16, data []byte) []byte {
	b, start := beginAttr(b, typ)
	return endAttr(append(b, data...), start)
}

func appendStringAttr(b []byte, typ uint16, s string) []byte {
	b, start := beginAttr(b, typ)
	b = append(b, s...)
	return endAttr(append(b, 0), start)
}

// appendElemMessage appends one NEWSETELEM (or DESTROYSETELEM) message
// (asking for no acknowledgement) for
// ops, which all share a table, a set and a kind: per element its key and, when
// added with a timeout, the timeout and the expiration (which restarts the
// timer of an element already there). Encoded by hand, into the caller's
// buffer: the daemon sends one for nearly every connection.
func appendElemMessage(b []byte, ops []elemOp, seq uint32) []byte {
	typ := uint16(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_NEWSETELEM)
	flags := netlink.Request | netlink.Create // no EXCL: existing elements are updated
	if ops[0].del {
		typ = unix.NFNL_SUBSYS_NFTABLES<<8 | msgDestroySetElem
		flags = netlink.Request
		if ops[0].count != nil {
			flags |= netlink.Echo
		}
	}
	msg := len(b)
	b = appendHeader(b, typ, flags, seq)
	b = append(b, nfgen(unix.NFPROTO_NETDEV, 0)...)
	b = appendStringAttr(b, unix.NFTA_SET_ELEM_LIST_TABLE, ops[0].table)
	b = appendStringAttr(b, unix.NFTA_SET_ELEM_LIST_SET, ops[0].set)
	b, elems := beginAttr(b, netlink.Nested|unix.NFTA_SET_ELEM_LIST_ELEMENTS)
	for _, op := range ops {
		var elem, key int
		b, elem = beginAttr(b, netlink.Nested|nftaListElem)
		b, key = beginAttr(b, netlink.Nested|unix.NFTA_SET_ELEM_KEY)
		b = appendAttr(b, unix.NFTA_DATA_VALUE, op.key)
		b = endAttr(b, key)
		if !op.del && op.timeout > 0 {
			var ms [8]byte
			binary.BigEndian.PutUint64(ms[:], uint64((op.timeout+time.Millisecond-1)/time.Millisecond))
			b = appendAttr(b, unix.NFTA_SET_ELEM_TIMEOUT, ms[:])
			b = appendAttr(b, unix.NFTA_SET_ELEM_EXPIRATION, ms[:])
		}
		b = endAttr(b, elem)
	}
	b = endAttr(b, elems)
	setMsgLen(b, msg)
	return b
}

// parseAcks reads a datagram of replies: it counts the acknowledgements
// (NLMSG_ERROR with errno 0) and returns the first error reported.
func parseAcks(b []byte) (int, error) {
	acked := 0
	for len(b) >= unix.NLMSG_HDRLEN {
		l := int(binary.NativeEndian.Uint32(b))
		if l < unix.NLMSG_HDRLEN || l > len(b) {
			return acked, fmt.Errorf("malformed netlink reply (length %d of %d)", l, len(b))
		}
		if binary.NativeEndian.Uint16(b[4:]) == unix.NLMSG_ERROR {
			if l < unix.NLMSG_HDRLEN+4 {
				return acked, fmt.Errorf("short netlink error message")
			}
			if code := int32(binary.NativeEndian.Uint32(b[unix.NLMSG_HDRLEN:])); code != 0 {
				return acked, unix.Errno(-code)
			}
			acked++
		}
		l = (l + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1)
		if l > len(b) {
			break
		}
		b = b[l:]
	}
	return acked, nil
}
