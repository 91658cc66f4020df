package steer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"unsafe"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Changes to the table layout (tables, chains, rules, sets, counters) are
// encoded by google/nftables but sent by txnWriter, for three reasons:
//
//   - google/nftables' Flush asks the kernel for an acknowledgement of every
//     message and an echo of every rule, and reads them only once the whole
//     batch has run in the kernel (inside sendmsg). A restart's batch (tens
//     of messages per PU) overflowed the socket's receive buffer at 5 PUs
//     (ENOBUFS, "no buffer space available", the kernel's replies lost).
//     txnWriter asks for no echo and for one acknowledgement per
//     transaction (the last message's; a failing message is reported
//     whatever its flags).
//   - A big change is split into several transactions at unit boundaries
//     (the messages of a unit, e.g. one PU's chains, are applied all or
//     nothing), so no transaction grows with the number of PUs.
//   - A transaction the kernel refuses for lack of memory or buffer space is
//     tried again in smaller ones.
//
// google/nftables has no way to hand its encoded messages out except by
// sending them; a Conn dialled with WithTestDial sends them to a function,
// which is how builder collects them (no socket is involved).

// unit is messages applied together, in one transaction.
type unit struct {
	what string // for errors: "PU pu3", "table trireme_n1"
	msgs []netlink.Message
	// done, if set, runs once the unit's transaction has committed.
	done func()
}

func (u *unit) size() int {
	n := 0
	for _, m := range u.msgs {
		n += nlmsgAlign(unix.NLMSG_HDRLEN + len(m.Data))
	}
	return n
}

func nlmsgAlign(n int) int { return (n + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1) }

// builder encodes nf_tables messages with google/nftables' Conn API and
// hands them out instead of sending them.
type builder struct {
	*nftables.Conn
	got []netlink.Message
}

func newBuilder() *builder {
	b := &builder{}
	c, err := nftables.New(nftables.WithTestDial(b.capture))
	if err != nil {
		// Without AsLasting, New dials nothing and cannot fail.
		panic(err)
	}
	b.Conn = c
	return b
}

// capture receives what Flush would send: BATCH_BEGIN, the messages,
// BATCH_END; and the reads that follow (nil), which it answers with nothing
// (Flush then takes every message as acknowledged).
func (b *builder) capture(req []netlink.Message) ([]netlink.Message, error) {
	for _, m := range req {
		switch t := uint16(m.Header.Type); t {
		case unix.NFNL_MSG_BATCH_BEGIN, unix.NFNL_MSG_BATCH_END:
		default:
			m.Data = append([]byte(nil), m.Data...)
			b.got = append(b.got, m)
		}
	}
	return nil, nil
}

// take returns the messages queued since the last take as a unit.
func (b *builder) take(what string) (unit, error) {
	b.got = nil
	if err := b.Flush(); err != nil {
		return unit{}, fmt.Errorf("steer: encoding %s: %w", what, err)
	}
	return unit{what: what, msgs: b.got}, nil
}

// Transaction sizes. A PU's unit is about 15 KiB; maxTxnBytes keeps a
// transaction to a few dozen PUs, so that its kernel memory and the time
// the nf_tables mutex is held do not grow with the node. minTxnBytes is
// where halving after a resource error stops (one unit is always sent
// alone if it is bigger).
const (
	maxTxnBytes = 1 << 20
	minTxnBytes = 16 << 10
	// txnSocketBuffer is forced on both directions of the socket: a
	// transaction is one datagram (sent whole), and the replies of a
	// refused one are one error per failing message.
	txnSocketBuffer = 4 * maxTxnBytes
)

// txnWriter sends nf_tables transactions on its own netlink socket.
type txnWriter struct {
	netns int
	// sockBuf is forced on the socket; 0: txnSocketBuffer.
	sockBuf int
	conn    *netlink.Conn
	rc      syscall.RawConn
	seq     uint32
	buf     []byte
	rbuf    []byte
	// budget is the largest transaction sent; it halves after a resource
	// error, down to minTxnBytes.
	budget int
	// sent counts transactions committed (tests, stats).
	sent int
}

func (w *txnWriter) dial() error {
	if w.conn != nil {
		return nil
	}
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: w.netns})
	if err != nil {
		return fmt.Errorf("steer: netlink: %w", err)
	}
	rc, err := c.SyscallConn()
	if err != nil {
		c.Close()
		return fmt.Errorf("steer: netlink: %w", err)
	}
	bufSize := w.sockBuf
	if bufSize == 0 {
		bufSize = txnSocketBuffer
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = errors.Join(
			unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, bufSize),
			unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, bufSize),
			unix.SetsockoptInt(int(fd), unix.SOL_NETLINK, netlinkCapAck, 1),
			unix.SetsockoptInt(int(fd), unix.SOL_NETLINK, unix.NETLINK_EXT_ACK, 1),
		)
	}); err != nil || serr != nil {
		c.Close()
		return fmt.Errorf("steer: netlink socket options: %w", errors.Join(err, serr))
	}
	if w.rbuf == nil {
		w.rbuf = make([]byte, 64<<10)
	}
	if w.budget == 0 {
		w.budget = maxTxnBytes
	}
	w.conn, w.rc = c, rc
	return nil
}

func (w *txnWriter) close() {
	if w.conn != nil {
		w.conn.Close()
		w.conn, w.rc = nil, nil
	}
}

// errResource: the kernel lacked memory or buffer space for a transaction
// (nothing of it was applied).
func errResource(err error) bool {
	return errors.Is(err, unix.ENOBUFS) || errors.Is(err, unix.ENOMEM) || errors.Is(err, unix.EMSGSIZE)
}

// commit applies units in order, packed into transactions of at most
// w.budget bytes (a bigger unit goes alone). A transaction refused for lack
// of resources is sent again in smaller ones. On any other error the units
// of the failed transaction and those after it are not applied; those
// before it are (their done has run).
func (w *txnWriter) commit(units []unit) error {
	for len(units) > 0 {
		n, size := 1, units[0].size()
		for n < len(units) && size+units[n].size() <= w.budget {
			size += units[n].size()
			n++
		}
		err := w.send(units[:n])
		if err != nil && errResource(err) && (n > 1 || w.budget > minTxnBytes) {
			w.budget = max(minTxnBytes, min(w.budget, size)/2)
			continue
		}
		if err != nil {
			return err
		}
		for _, u := range units[:n] {
			if u.done != nil {
				u.done()
			}
		}
		units = units[n:]
	}
	return nil
}

// send applies units in one transaction: no echo, an acknowledgement for the
// last message only. It returns the first error the kernel reported, with
// the unit it belongs to.
func (w *txnWriter) send(units []unit) error {
	if err := w.dial(); err != nil {
		return err
	}
	type span struct {
		first, last uint32
		what        string
	}
	var spans []span
	b := w.buf[:0]
	w.seq++
	begin := w.seq
	b = appendHeader(b, unix.NFNL_MSG_BATCH_BEGIN, netlink.Request, w.seq)
	b = append(b, nfgen(unix.AF_UNSPEC, unix.NFNL_SUBSYS_NFTABLES)...)
	var last uint32
	nmsgs := 0
	for _, u := range units {
		nmsgs += len(u.msgs)
	}
	for _, u := range units {
		sp := span{first: w.seq + 1, what: u.what}
		for _, m := range u.msgs {
			w.seq++
			nmsgs--
			flags := m.Header.Flags &^ (netlink.Echo | netlink.Acknowledge)
			if nmsgs == 0 {
				flags |= netlink.Acknowledge
				last = w.seq
			}
			start := len(b)
			b = appendHeader(b, uint16(m.Header.Type), flags, w.seq)
			b = append(b, m.Data...)
			setMsgLen(b, start)
			for len(b)%unix.NLMSG_ALIGNTO != 0 {
				b = append(b, 0)
			}
		}
		sp.last = w.seq
		spans = append(spans, sp)
	}
	if last == 0 {
		return nil
	}
	w.seq++
	b = appendHeader(b, unix.NFNL_MSG_BATCH_END, netlink.Request, w.seq)
	b = append(b, nfgen(unix.AF_UNSPEC, unix.NFNL_SUBSYS_NFTABLES)...)
	w.buf = b
	if err := w.write(b); err != nil {
		w.close()
		return fmt.Errorf("steer: nftables transaction: %w", err)
	}
	whose := func(seq uint32) string {
		if seq == begin {
			return "commit"
		}
		for _, sp := range spans {
			if seq >= sp.first && seq <= sp.last {
				return sp.what
			}
		}
		return fmt.Sprintf("message %d", seq)
	}
	// The kernel has queued every reply before sendmsg returned: read until
	// the last message's acknowledgement, or until there is nothing left.
	var first error
	for {
		n, err := w.read()
		if err == unix.EAGAIN {
			if first == nil {
				first = errors.New("no acknowledgement")
			}
			break
		}
		if err != nil {
			w.close()
			return fmt.Errorf("steer: nftables transaction: %w", err)
		}
		done := false
		walkReplies(w.rbuf[:n], func(seq uint32, code int32, msg string) {
			if code != 0 && first == nil {
				e := error(unix.Errno(-code))
				if msg != "" {
					e = fmt.Errorf("%w (%s)", e, msg)
				}
				first = fmt.Errorf("%s: %w", whose(seq), e)
			}
			if seq == last {
				done = true
			}
		})
		if done {
			break
		}
	}
	if first != nil {
		// Replies of a refused transaction may remain: start afresh.
		w.close()
		return fmt.Errorf("steer: nftables transaction: %w", first)
	}
	w.sent++
	return nil
}

func (w *txnWriter) write(b []byte) error {
	var n int
	var errno unix.Errno
	err := w.rc.Write(func(fd uintptr) bool {
		r, _, e := unix.Syscall6(unix.SYS_SENDTO, fd, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), 0, 0, 0)
		if e == unix.EAGAIN {
			return false
		}
		n, errno = int(r), e
		return true
	})
	if err == nil && errno != 0 {
		err = errno
	}
	if err == nil && n != len(b) {
		err = fmt.Errorf("short write (%d of %d bytes)", n, len(b))
	}
	return err
}

// read reads one datagram of replies without waiting: EAGAIN when none is
// queued.
func (w *txnWriter) read() (int, error) {
	var n int
	var errno unix.Errno
	err := w.rc.Read(func(fd uintptr) bool {
		for {
			r, _, e := unix.Syscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&w.rbuf[0])), uintptr(len(w.rbuf)), unix.MSG_DONTWAIT, 0, 0)
			if e == unix.EINTR {
				continue
			}
			n, errno = int(r), e
			return true
		}
	})
	if err != nil {
		return 0, err
	}
	if errno != 0 {
		return 0, errno
	}
	return n, nil
}

// walkReplies calls fn for every NLMSG_ERROR message (an acknowledgement
// when code is 0) of a datagram, with the extended-ack message if any.
// Malformed input ends the walk.
func walkReplies(b []byte, fn func(seq uint32, code int32, msg string)) {
	for len(b) >= unix.NLMSG_HDRLEN {
		l := int(binary.NativeEndian.Uint32(b))
		if l < unix.NLMSG_HDRLEN || l > len(b) {
			return
		}
		if binary.NativeEndian.Uint16(b[4:]) == unix.NLMSG_ERROR && l >= unix.NLMSG_HDRLEN+4+unix.NLMSG_HDRLEN {
			body := b[unix.NLMSG_HDRLEN:l]
			code := int32(binary.NativeEndian.Uint32(body))
			orig := body[4:]
			seq := binary.NativeEndian.Uint32(orig[8:])
			fn(seq, code, extAckMsg(b[:l]))
		}
		l = nlmsgAlign(l)
		if l > len(b) {
			return
		}
		b = b[l:]
	}
}

// extAckMsg returns the NLMSGERR_ATTR_MSG of an error message sent with
// NETLINK_CAP_ACK (the original header only, then the attributes).
func extAckMsg(m []byte) string {
	if binary.NativeEndian.Uint16(m[6:])&unix.NLM_F_ACK_TLVS == 0 {
		return ""
	}
	attrs := m[unix.NLMSG_HDRLEN+4+unix.NLMSG_HDRLEN:]
	for len(attrs) >= 4 {
		l := int(binary.NativeEndian.Uint16(attrs))
		if l < 4 || l > len(attrs) {
			return ""
		}
		if binary.NativeEndian.Uint16(attrs[2:])&^netlink.Nested == unix.NLMSGERR_ATTR_MSG {
			return strings.TrimRight(string(attrs[4:l]), "\x00")
		}
		l = (l + 3) &^ 3
		if l > len(attrs) {
			return ""
		}
		attrs = attrs[l:]
	}
	return ""
}
