package steer

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/mdlayher/netlink"
	"github.com/trireme-go/trireme/ipproto"
	"golang.org/x/sys/unix"
)

// nlError builds an NLMSG_ERROR reply with errno code (0: acknowledgement).
func nlError(code int32) []byte {
	data := binary.NativeEndian.AppendUint32(nil, uint32(code))
	data = append(data, make([]byte, unix.NLMSG_HDRLEN)...) // the request's header (NETLINK_CAP_ACK)
	return appendMessage(nil, netlink.Message{Header: netlink.Header{Type: netlink.Error}, Data: data}, 1)
}

func TestParseAcks(t *testing.T) {
	ack, enoent := nlError(0), nlError(-int32(unix.ENOENT))
	cat := func(bs ...[]byte) (out []byte) {
		for _, b := range bs {
			out = append(out, b...)
		}
		return out
	}
	other := appendMessage(nil, netlink.Message{Header: netlink.Header{Type: netlink.Done}, Data: []byte{0, 0, 0, 0}}, 2)
	badLen := append([]byte(nil), ack...)
	binary.NativeEndian.PutUint32(badLen, 4)
	long := append([]byte(nil), ack...)
	binary.NativeEndian.PutUint32(long, uint32(len(ack)+8))
	short := appendMessage(nil, netlink.Message{Header: netlink.Header{Type: netlink.Error}, Data: []byte{}}, 3)
	for _, tc := range []struct {
		name    string
		in      []byte
		acked   int
		wantErr error // nil: none; errAny: some error
	}{
		{"empty", nil, 0, nil},
		{"one ack", ack, 1, nil},
		{"three acks in one datagram", cat(ack, ack, ack), 3, nil},
		{"other messages are skipped", cat(other, ack), 1, nil},
		{"error after an ack", cat(ack, enoent, ack), 1, unix.ENOENT},
		{"length below the header", badLen, 0, errAny},
		{"length beyond the datagram", long, 0, errAny},
		{"error message without errno", short, 0, errAny},
		{"trailing bytes shorter than a header", cat(ack, []byte{1, 2, 3}), 1, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, err := parseAcks(tc.in)
			if n != tc.acked {
				t.Errorf("acked %d, want %d", n, tc.acked)
			}
			switch {
			case tc.wantErr == nil && err != nil:
				t.Errorf("error %v", err)
			case tc.wantErr == errAny && err == nil:
				t.Error("no error")
			case tc.wantErr != nil && tc.wantErr != errAny && !errors.Is(err, tc.wantErr):
				t.Errorf("error %v, want %v", err, tc.wantErr)
			}
		})
	}
}

var errAny = errors.New("any error")

// FuzzParseAcks: replies are the kernel's, but a parser must not panic on
// any bytes.
func FuzzParseAcks(f *testing.F) {
	f.Add(nlError(0))
	f.Add(append(nlError(0), nlError(-2)...))
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, b []byte) {
		n, _ := parseAcks(b)
		if n < 0 || n > len(b)/unix.NLMSG_HDRLEN {
			t.Fatalf("acked %d from %d bytes", n, len(b))
		}
	})
}

// appendMessage appends m as a netlink message (native byte order) with the
// given sequence number and port ID 0.
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

// refMessage is the element message encoded with mdlayher/netlink's
// attribute encoder: the reference appendElemMessage must match.
func refMessage(table string, ops []elemOp) (netlink.Message, error) {
	ae := netlink.NewAttributeEncoder()
	ae.String(unix.NFTA_SET_ELEM_LIST_TABLE, table)
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
	flags := netlink.Request | netlink.Create // no EXCL: existing elements are updated
	if ops[0].del {
		typ = msgDestroySetElem
		flags = netlink.Request
	}
	return netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | typ), Flags: flags},
		Data:   append(nfgen(unix.NFPROTO_NETDEV, 0), data...),
	}, nil
}

// TestElemMessageEncoding: the hand-encoded element messages are byte for
// byte what mdlayher/netlink's encoder produces (which the live tests
// exercised against the kernel first).
func TestElemMessageEncoding(t *testing.T) {
	key := func(tu Tuple) []byte {
		k, _, err := appendKey(nil, tu)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	v4 := key(Tuple{Src: netip.MustParseAddr("10.0.0.1"), Dst: netip.MustParseAddr("10.0.0.2"), Proto: ipproto.TCP, SrcPort: 40000, DstPort: 80})
	v6 := key(Tuple{Src: netip.MustParseAddr("fd00::1"), Dst: netip.MustParseAddr("fd00::2"), Proto: ipproto.UDP, SrcPort: 5353, DstPort: 53})
	many := make([]elemOp, 300)
	for i := range many {
		many[i] = elemOp{set: "a4_pu0", key: v4, timeout: time.Duration(i) * time.Second}
	}
	for _, tc := range []struct {
		name string
		ops  []elemOp
	}{
		{"add v4 with timeout", []elemOp{{set: "a4_pu0", key: v4, timeout: 5 * time.Minute}}},
		{"add v6 with sub-ms timeout", []elemOp{{set: "a6_pu0", key: v6, timeout: time.Microsecond}}},
		{"add without timeout", []elemOp{{set: "a4_x", key: v4}}},
		{"destroy", []elemOp{{set: "a4_pu0", key: v4, del: true}, {set: "a4_pu0", key: v4, del: true}}},
		{"many, odd set name length", append([]elemOp{{set: "a4_p", key: v4, timeout: time.Hour}}, many...)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for i := range tc.ops {
				tc.ops[i].set = tc.ops[0].set
			}
			for _, table := range []string{"trireme_n1", "trireme_node-with-long-name_s12"} {
				for i := range tc.ops {
					tc.ops[i].table = table
				}
				m, err := refMessage(table, tc.ops)
				if err != nil {
					t.Fatal(err)
				}
				want := appendMessage(nil, m, 7)
				prefix := []byte{1, 2, 3, 4} // appended after what is there
				got := appendElemMessage(append([]byte(nil), prefix...), tc.ops, 7)
				if !bytes.Equal(got[:4], prefix) || !bytes.Equal(got[4:], want) {
					t.Errorf("table %s: encoding differs\n got %x\nwant %x", table, got[4:], want)
				}
			}
		})
	}
}

// TestBatchHeaders: begin and end of a transaction.
func TestBatchHeaders(t *testing.T) {
	for _, typ := range []uint16{unix.NFNL_MSG_BATCH_BEGIN, unix.NFNL_MSG_BATCH_END} {
		got := appendHeader(nil, typ, netlink.Request, 9)
		got = append(got, nfgen(unix.AF_UNSPEC, unix.NFNL_SUBSYS_NFTABLES)...)
		want := appendMessage(nil, netlink.Message{Header: netlink.Header{Type: netlink.HeaderType(typ), Flags: netlink.Request},
			Data: nfgen(unix.AF_UNSPEC, unix.NFNL_SUBSYS_NFTABLES)}, 9)
		if !bytes.Equal(got, want) {
			t.Errorf("%s: got %x want %x", fmt.Sprint(typ), got, want)
		}
	}
}
