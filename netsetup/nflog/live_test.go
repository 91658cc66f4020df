package nflog

import (
	"errors"
	"net"
	"os"
	"runtime"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// TestOverrunThenRead: a netdev chain on the loopback device of a fresh
// namespace logs every packet to the group; with a tiny receive buffer and
// nobody reading, the kernel drops batches: the next Read reports
// ErrOverrun (counted), and reading goes on with what came after. Messages
// carry the hook, the device and the packet as logged.
func TestOverrunThenRead(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	ns, err := netns.New() // this thread is in it now
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := netns.Set(orig); err != nil {
			panic(err) // the thread is locked: it must not go back to the pool elsewhere
		}
		ns.Close()
	}()
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
	const group = 0x7e01 // the namespace is the test's own
	r, err := Open(Config{Group: group, Snaplen: 128, FlushTimeout: 1, RcvBuf: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		t.Fatal(err)
	}
	tab := c.AddTable(&nftables.Table{Name: "nflogtest", Family: nftables.TableFamilyNetdev})
	ch := c.AddChain(&nftables.Chain{Name: "in", Table: tab, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookIngress, Priority: nftables.ChainPriorityFilter, Device: "lo"})
	c.AddRule(&nftables.Rule{Table: tab, Chain: ch, Exprs: []expr.Any{
		&expr.Log{Key: 1<<unix.NFTA_LOG_GROUP | 1<<unix.NFTA_LOG_SNAPLEN | 1<<unix.NFTA_LOG_QTHRESHOLD, Group: group, Snaplen: 128, QThreshold: 1},
		&expr.Verdict{Kind: expr.VerdictAccept},
	}})
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	u, err := net.Dial("udp4", "127.0.0.1:9") // discard; nothing listens, no matter
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	payload := make([]byte, 64)
	for range 2000 {
		_, _ = u.Write(payload)
	}
	buf := make([]byte, 1<<16)
	if _, err := r.Read(buf); !errors.Is(err, ErrOverrun) || r.Overruns.Load() != 1 {
		t.Fatalf("first read after the flood: %v, overruns %d; want ErrOverrun", err, r.Overruns.Load())
	}
	// Reading goes on: one more packet is logged and read.
	_, _ = u.Write(payload)
	frame := make([]byte, MaxFrame)
	for range 10000 {
		b, err := r.Read(buf)
		if errors.Is(err, ErrOverrun) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		m := NewMessages(b)
		var p Packet
		ok, err := m.Next(&p)
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			continue
		}
		if p.Family != unix.NFPROTO_NETDEV || p.Hook != HookIngress || p.InDev != uint32(lo.Attrs().Index) || p.HWProtocol != 0x0800 || len(p.HWHeader) != 14 {
			t.Fatalf("message: %+v", p)
		}
		// UDP: the frame is made (IPv4), its length the IP packet's.
		f, err := p.Frame(frame)
		if err != nil || len(f) != 14+20+8+len(payload) {
			t.Fatalf("frame: %v, %d bytes", err, len(f))
		}
		return
	}
	t.Fatal("no message after the overrun")
}
