package steer

import (
	"encoding/binary"
	"errors"
	"os"
	"runtime"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// reply builds an NLMSG_ERROR reply to the request with sequence number seq
// (NETLINK_CAP_ACK: the request's header only), with an extended-ack
// message when msg is not "".
func reply(seq uint32, code int32, msg string) []byte {
	data := binary.NativeEndian.AppendUint32(nil, uint32(code))
	data = appendHeader(data, 0x0a0a, 0, seq) // the request's header
	var flags netlink.HeaderFlags
	if msg != "" {
		flags = unix.NLM_F_ACK_TLVS
		data = appendStringAttr(data, unix.NLMSGERR_ATTR_MSG, msg)
	}
	return appendMessage(nil, netlink.Message{Header: netlink.Header{Type: netlink.Error, Flags: flags}, Data: data}, seq)
}

func TestWalkReplies(t *testing.T) {
	type got struct {
		seq  uint32
		code int32
		msg  string
	}
	other := appendMessage(nil, netlink.Message{Header: netlink.Header{Type: netlink.Done}, Data: []byte{0, 0, 0, 0}}, 2)
	badLen := reply(4, 0, "")
	binary.NativeEndian.PutUint32(badLen, uint32(len(badLen)+4))
	for _, tc := range []struct {
		name string
		in   []byte
		want []got
	}{
		{"empty", nil, nil},
		{"ack", reply(7, 0, ""), []got{{7, 0, ""}}},
		{"error with a message, then the ack", append(reply(3, -int32(unix.ENOENT), "No such chain"), reply(7, 0, "")...),
			[]got{{3, -int32(unix.ENOENT), "No such chain"}, {7, 0, ""}}},
		{"other messages skipped", append(other, reply(5, 0, "")...), []got{{5, 0, ""}}},
		{"length beyond the datagram ends the walk", append(reply(1, 0, ""), badLen...), []got{{1, 0, ""}}},
		{"truncated error", reply(1, 0, "")[:unix.NLMSG_HDRLEN+4], nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out []got
			walkReplies(tc.in, func(seq uint32, code int32, msg string) { out = append(out, got{seq, code, msg}) })
			if len(out) != len(tc.want) {
				t.Fatalf("got %+v, want %+v", out, tc.want)
			}
			for i := range out {
				if out[i] != tc.want[i] {
					t.Errorf("reply %d: %+v, want %+v", i, out[i], tc.want[i])
				}
			}
		})
	}
}

// FuzzWalkReplies: replies are the kernel's, but a parser must not panic on
// any bytes.
func FuzzWalkReplies(f *testing.F) {
	f.Add(reply(1, 0, ""))
	f.Add(append(reply(3, -2, "x"), reply(4, 0, "")...))
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, b []byte) {
		n := 0
		walkReplies(b, func(uint32, int32, string) { n++ })
		if n > len(b)/unix.NLMSG_HDRLEN {
			t.Fatalf("%d replies from %d bytes", n, len(b))
		}
	})
}

// newNetns returns a fresh, empty network namespace (closed by cleanup).
func newNetns(t *testing.T) netns.NsHandle {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("this test needs root (network namespaces, nftables): run as root")
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	ns, err := netns.New()
	if err != nil {
		t.Fatal(err)
	}
	if err := netns.Set(orig); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	return ns
}

// TestTxnErrorNamesUnit: a refused transaction reports the unit whose
// message failed, with the kernel's reason; the units of earlier
// transactions stay applied, those of the refused one and after are not.
func TestTxnErrorNamesUnit(t *testing.T) {
	ns := newNetns(t)
	w := &txnWriter{netns: int(ns)}
	defer w.close()
	tb := &nftables.Table{Name: "trireme_txntest", Family: nftables.TableFamilyNetdev}
	unitOf := func(what string, fn func(b *builder)) unit {
		b := newBuilder()
		fn(b)
		u, err := b.take(what)
		if err != nil {
			t.Fatal(err)
		}
		return u
	}
	var done []string
	mark := func(u unit) unit {
		u.done = func() { done = append(done, u.what) }
		return u
	}
	table := mark(unitOf("table", func(b *builder) { b.AddTable(tb) }))
	set := mark(unitOf("set a", func(b *builder) {
		_ = b.AddSet(&nftables.Set{Table: tb, Name: "a", KeyType: nftables.TypeIPAddr}, nil)
	}))
	bad := mark(unitOf("PU ghost", func(b *builder) { b.DelChain(&nftables.Chain{Table: tb, Name: "in_ghost"}) }))
	after := mark(unitOf("set b", func(b *builder) {
		_ = b.AddSet(&nftables.Set{Table: tb, Name: "b", KeyType: nftables.TypeIPAddr}, nil)
	}))
	if err := w.commit([]unit{table}); err != nil {
		t.Fatal(err)
	}
	err := w.commit([]unit{set, bad, after})
	if err == nil || !errors.Is(err, unix.ENOENT) || !strings.Contains(err.Error(), "PU ghost") {
		t.Fatalf("error %v, want ENOENT naming PU ghost", err)
	}
	if strings.Join(done, ",") != "table" {
		t.Errorf("units done: %v", done)
	}
	// Nothing of the refused transaction is in the kernel; the socket is
	// usable again.
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		t.Fatal(err)
	}
	sets, err := c.GetSets(tb)
	if err != nil || len(sets) != 0 {
		t.Fatalf("sets after the refused transaction: %v %v", sets, err)
	}
	if err := w.commit([]unit{set, after}); err != nil {
		t.Fatal(err)
	}
	if sets, _ = c.GetSets(tb); len(sets) != 2 {
		t.Errorf("%d sets, want 2", len(sets))
	}
}
