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
	set     string
	key     []byte
	timeout time.Duration // 0: no timeout (until revoked)
	del     bool
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
	table string
	netns int
	conn  *netlink.Conn
	rc    syscall.RawConn
	seq   uint32
	io    rawIO
	rbuf  []byte
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
// nothing) per maxElemsPerTxn elements.
func (w *elemWriter) commit(ops []elemOp) error {
	for len(ops) > maxElemsPerTxn {
		if err := w.commitTxn(ops[:maxElemsPerTxn]); err != nil {
			return err
		}
		ops = ops[maxElemsPerTxn:]
	}
	return w.commitTxn(ops)
}

func (w *elemWriter) commitTxn(ops []elemOp) error {
	if len(ops) == 0 {
		return nil
	}
	msgs := []netlink.Message{{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_MSG_BATCH_BEGIN), Flags: netlink.Request},
		Data:   nfgen(unix.AF_UNSPEC, unix.NFNL_SUBSYS_NFTABLES),
	}}
	for i := 0; i < len(ops); {
		j := i + 1
		for j < len(ops) && j-i < maxElemsPerMsg && ops[j].set == ops[i].set && ops[j].del == ops[i].del {
			j++
		}
		m, err := w.message(ops[i:j])
		if err != nil {
			return err
		}
		msgs = append(msgs, m)
		i = j
	}
	msgs = append(msgs, netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_MSG_BATCH_END), Flags: netlink.Request},
		Data:   nfgen(unix.AF_UNSPEC, unix.NFNL_SUBSYS_NFTABLES),
	})
	if _, err := w.dial(); err != nil {
		return err
	}
	// One datagram holds the whole transaction.
	var txn []byte
	want := 0 // acknowledgements: one per element message
	for _, m := range msgs {
		w.seq++
		if m.Header.Flags&netlink.Acknowledge != 0 {
			want++
		}
		txn = appendMessage(txn, m, w.seq)
	}
	w.io.b = txn
	err := w.rc.Write(w.io.send)
	if err == nil && w.io.errno != 0 {
		err = w.io.errno
	}
	if err == nil && w.io.n != len(txn) {
		err = fmt.Errorf("short write (%d of %d bytes)", w.io.n, len(txn))
	}
	if err != nil {
		w.close()
		return fmt.Errorf("steer: send set elements: %w", err)
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
		}
		if err != nil {
			// The transaction was aborted; unread acks may remain on the
			// socket, so start afresh next time.
			w.close()
			return fmt.Errorf("steer: set elements: %w", err)
		}
	}
	return nil
}

// appendMessage appends m as a netlink message (native byte order) with
// the given sequence number; the kernel fills in our port ID.
func appendMessage(b []byte, m netlink.Message, seq uint32) []byte {
	l := unix.NLMSG_HDRLEN + len(m.Data)
	b = binary.NativeEndian.AppendUint32(b, uint32(l))
	b = binary.NativeEndian.AppendUint16(b, uint16(m.Header.Type))
	b = binary.NativeEndian.AppendUint16(b, uint16(m.Header.Flags))
	b = binary.NativeEndian.AppendUint32(b, seq)
	b = binary.NativeEndian.AppendUint32(b, 0)
	b = append(b, m.Data...)
	for len(b)%unix.NLMSG_ALIGNTO != 0 {
		b = append(b, 0)
	}
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

func (w *elemWriter) message(ops []elemOp) (netlink.Message, error) {
	ae := netlink.NewAttributeEncoder()
	ae.String(unix.NFTA_SET_ELEM_LIST_TABLE, w.table)
	ae.String(unix.NFTA_SET_ELEM_LIST_SET, ops[0].set)
	ae.Nested(unix.NFTA_SET_ELEM_LIST_ELEMENTS, func(le *netlink.AttributeEncoder) error {
		for _, op := range ops {
			le.Nested(nftaListElem, func(ee *netlink.AttributeEncoder) error {
				ee.Nested(unix.NFTA_SET_ELEM_KEY, func(ke *netlink.AttributeEncoder) error {
					ke.Bytes(unix.NFTA_DATA_VALUE, op.key)
					return nil
				})
				if !op.del && op.timeout > 0 {
					ms := uint64((op.timeout + time.Millisecond - 1) / time.Millisecond)
					ee.Bytes(unix.NFTA_SET_ELEM_TIMEOUT, binary.BigEndian.AppendUint64(nil, ms))
					ee.Bytes(unix.NFTA_SET_ELEM_EXPIRATION, binary.BigEndian.AppendUint64(nil, ms))
				}
				return nil
			})
		}
		return nil
	})
	data, err := ae.Encode()
	if err != nil {
		return netlink.Message{}, fmt.Errorf("steer: encode set elements: %w", err)
	}
	typ := unix.NFT_MSG_NEWSETELEM
	flags := netlink.Request | netlink.Acknowledge | netlink.Create // no EXCL: existing elements are updated
	if ops[0].del {
		typ = msgDestroySetElem
		flags = netlink.Request | netlink.Acknowledge
	}
	return netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | typ), Flags: flags},
		Data:   append(nfgen(unix.NFPROTO_NETDEV, 0), data...),
	}, nil
}
