package steer

import (
	"encoding/binary"
	"fmt"
	"time"

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
type elemWriter struct {
	table string
	netns int
	conn  *netlink.Conn
}

func (w *elemWriter) dial() (*netlink.Conn, error) {
	if w.conn != nil {
		return w.conn, nil
	}
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: w.netns})
	if err != nil {
		return nil, fmt.Errorf("steer: netlink: %w", err)
	}
	w.conn = c
	return c, nil
}

func (w *elemWriter) close() {
	if w.conn != nil {
		w.conn.Close()
		w.conn = nil
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
	c, err := w.dial()
	if err != nil {
		return err
	}
	if _, err := c.SendMessages(msgs); err != nil {
		w.close()
		return fmt.Errorf("steer: send set elements: %w", err)
	}
	// One acknowledgement (NLMSG_ERROR, errno 0) per element message.
	want := len(msgs) - 2
	for want > 0 {
		replies, err := c.Receive()
		if err != nil {
			// The transaction was aborted; unread acks may remain on the
			// socket, so start afresh next time.
			w.close()
			return fmt.Errorf("steer: set elements: %w", err)
		}
		for _, r := range replies {
			if r.Header.Type == netlink.Error {
				want--
			}
		}
	}
	return nil
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
