package steer

import (
	"encoding/binary"
	"errors"
	"testing"

	"github.com/mdlayher/netlink"
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
