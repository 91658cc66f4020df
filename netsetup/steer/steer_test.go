package steer_test

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/trireme-go/trireme/ipproto"
	"github.com/trireme-go/trireme/netsetup/steer"
	"github.com/trireme-go/trireme/netsetup/tap"
	"github.com/trireme-go/trireme/netsetup/vnet"
	"github.com/trireme-go/trireme/testenv"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// echoServer accepts connections on ln and echoes them.
func echoServer(ln net.Listener) {
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
}

// sinkServer accepts connections, counts what it reads, and answers with
// the count (8 bytes, big endian) when the client half-closes.
func sinkServer(ln net.Listener) {
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				n, _ := io.Copy(io.Discard, c)
				var b [8]byte
				for i := range b {
					b[i] = byte(uint64(n) >> (56 - 8*i))
				}
				_, _ = c.Write(b[:])
			}()
		}
	}()
}

func addrOf(ln net.Listener) netip.AddrPort { return netip.MustParseAddrPort(ln.Addr().String()) }

// echo writes msg on c and expects it back.
func echo(t testing.TB, c net.Conn, msg string) {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatalf("write: %v", err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != msg {
		t.Fatalf("echo: got %q, %v", got, err)
	}
}

// bulk sends n bytes over a new connection to a sink and checks the count.
func bulk(t testing.TB, from *testenv.PU, to netip.AddrPort, n int) time.Duration {
	t.Helper()
	c, err := from.Dial(to, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %v: %v", to, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(60 * time.Second))
	buf := bytes.Repeat([]byte("trireme!"), 16384) // 128 KiB
	start := time.Now()
	for sent := 0; sent < n; sent += len(buf) {
		if _, err := c.Write(buf); err != nil {
			t.Fatalf("bulk write after %d bytes: %v", sent, err)
		}
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	var b [8]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		t.Fatalf("bulk: reading count: %v", err)
	}
	d := time.Since(start)
	var got uint64
	for _, x := range b {
		got = got<<8 | uint64(x)
	}
	want := uint64((n + len(buf) - 1) / len(buf) * len(buf))
	if got != want {
		t.Fatalf("bulk: server read %d bytes, want %d", got, want)
	}
	return d
}

// TestSteeredTCP: a real TCP connection and a bulk transfer between two
// steered PUs through the test forwarder; after authorization the data
// stays in the kernel.
func TestSteeredTCP(t *testing.T) {
	r := newRig(t, 2, 2)
	f := r.startForwarder()
	t.Cleanup(f.stop)
	client, server := r.node.PUs[0], r.node.PUs[1]

	ln := server.Listen(0)
	echoServer(ln)
	c, err := client.Dial(addrOf(ln), 5*time.Second)
	if err != nil {
		t.Fatalf("dial through the steered path: %v", err)
	}
	defer c.Close()
	echo(t, c, "hello through the dataplane")

	sink := server.Listen(0)
	sinkServer(sink)
	const size = 256 << 20
	readsBefore := f.byProto[ipproto.TCP].Load()
	d := bulk(t, client, addrOf(sink), size)
	reads := f.byProto[ipproto.TCP].Load() - readsBefore
	f.check(t)
	t.Logf("bulk %d MiB in %v (%.2f Gbit/s), %d frames through the TAPs", size>>20, d, float64(size)*8/d.Seconds()/1e9, reads)
	// The handshake crosses 4 TAPs (client in, server out, and back) and
	// the first ACK/data until authorization: a few dozen frames at most,
	// for ~180000 segments of data.
	if reads > 64 {
		t.Errorf("%d frames went through the TAPs for one bulk connection: data is not staying in the kernel", reads)
	}
	cc, err := r.s.Counters("pu0")
	if err != nil {
		t.Fatal(err)
	}
	sc, err := r.s.Counters("pu1")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("client counters %+v; server counters %+v", cc, sc)
	if cc.InAuthorized.Bytes < size || sc.OutAuthorized.Bytes < size {
		t.Errorf("authorized-flow counters do not cover the bulk data: client in %d B, server out %d B", cc.InAuthorized.Bytes, sc.OutAuthorized.Bytes)
	}
	if cc.InSteered.Packets == 0 || sc.OutSteered.Packets == 0 || cc.InSteered.Packets > 64 {
		t.Errorf("steered counters: client in %d, server out %d packets", cc.InSteered.Packets, sc.OutSteered.Packets)
	}
	// The injection port never learned the PUs' MACs (learning is off):
	// the bridge still forwards to the PUs' own ports.
	r.node.MustDo(func() error {
		port, err := netlink.LinkByName(r.inj.BrName)
		if err != nil {
			return err
		}
		fdb, err := netlink.NeighList(port.Attrs().Index, unix.AF_BRIDGE)
		if err != nil {
			return err
		}
		for _, e := range fdb {
			for _, p := range r.node.PUs {
				if bytes.Equal(e.HardwareAddr, p.Link.PUMAC) {
					t.Errorf("bridge learned PU MAC %v on the injection port", e.HardwareAddr)
				}
			}
		}
		return nil
	})
	// Both directions of both connections are in both PUs' sets.
	entries, err := r.s.List("pu0")
	if err != nil {
		t.Fatal(err)
	}
	if !hasFlow(entries, client.Addr, addrOf(sink)) || !hasFlow(entries, client.Addr, addrOf(ln)) {
		t.Errorf("pu0 authorized set lacks the flows: %+v", entries)
	}
	// Closing the authorized echo connection: its FINs leave the kernel
	// path and reach the dataplane (the enforcer sees every end), on the
	// way out of the client and into the server, and back.
	before := f.closes.Load()
	c.Close()
	deadline := time.Now().Add(5 * time.Second)
	for f.closes.Load()-before < 4 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := f.closes.Load() - before; n < 4 {
		t.Errorf("%d FIN/RST frames of an authorized flow reached the TAPs, want both FINs through both PUs' TAPs (4)", n)
	}
}

func hasFlow(es []steer.Entry, src netip.Addr, dst netip.AddrPort) bool {
	fwd, rev := false, false
	for _, e := range es {
		if e.Tuple.Proto != ipproto.TCP {
			continue
		}
		if e.Tuple.Src == src && e.Tuple.Dst == dst.Addr() && e.Tuple.DstPort == dst.Port() {
			fwd = e.Expires > 0
		}
		if e.Tuple.Dst == src && e.Tuple.Src == dst.Addr() && e.Tuple.SrcPort == dst.Port() {
			rev = e.Expires > 0
		}
	}
	return fwd && rev
}

// TestSteeredSYNOnTAP: with no dataplane, a client's SYN arrives on the
// PU's ingress TAP with a virtio-net header describing its partial
// checksum, which CompleteChecksum turns into a valid one.
func TestSteeredSYNOnTAP(t *testing.T) {
	r := newRig(t, 2, 1)
	client, server := r.node.PUs[0], r.node.PUs[1]
	ln := server.Listen(0)
	go func() { // the SYN is steered and never answered
		c, err := client.Dial(addrOf(ln), time.Second)
		if err == nil {
			c.Close()
		}
	}()
	in, _ := tapNames(0)
	buf := make([]byte, tap.MaxFrame)
	// The PU's own IPv6 chatter (MLD reports) is steered too: skip it.
	var h vnet.Hdr
	var frame []byte
	deadline := time.Now().Add(3 * time.Second)
	for {
		n, err := readTimeout(r.taps[in], buf, time.Until(deadline))
		if err != nil {
			t.Fatalf("read steered SYN: %v", err)
		}
		if h, err = vnet.Decode(buf[:n]); err != nil {
			t.Fatal(err)
		}
		frame = buf[vnet.HdrLen:n]
		if tu, _, ok := parse(frame); ok && tu.Proto == ipproto.TCP {
			break
		}
	}
	tu, flags, _ := parse(frame)
	if tu.Src != client.Addr || tu.Dst != server.Addr || tu.DstPort != addrOf(ln).Port() || flags&0x12 != 0x02 {
		t.Fatalf("not the client's SYN: %v flags %#x", tu, flags)
	}
	t.Logf("SYN vnet header %+v, frame %d bytes", h, len(frame))
	if h.Flags&vnet.FlagNeedsCsum == 0 || h.IsGSO() || h.CsumStart != 34 || h.CsumOffset != 16 {
		t.Fatalf("SYN from a veth should carry a partial checksum at 34+16, header %+v", h)
	}
	if tcpChecksumOK(frame) {
		t.Fatal("partial checksum already verifies: the test would not show anything")
	}
	if err := vnet.CompleteChecksum(&h, frame); err != nil {
		t.Fatal(err)
	}
	if !tcpChecksumOK(frame) {
		t.Fatal("completed checksum does not verify")
	}
}

// readTimeout reads one frame, closing the TAP if nothing comes in time.
func readTimeout(tp *tap.Tap, buf []byte, d time.Duration) (int, error) {
	tm := time.AfterFunc(d, func() { tp.Close() })
	defer tm.Stop()
	return tp.Read(buf)
}

func tcpChecksumOK(f []byte) bool {
	ip := f[14:]
	ihl := int(ip[0]&0x0f) * 4
	total := int(ip[2])<<8 | int(ip[3])
	l4 := ip[ihl:total]
	var ph [12]byte
	copy(ph[:8], ip[12:20])
	ph[9] = ip[9]
	ph[10], ph[11] = byte(len(l4)>>8), byte(len(l4))
	return vnet.Checksum(l4, uint32(vnet.Checksum(ph[:], 0))) == 0xffff
}

// nftList returns `nft list table` inside the node (tests check kernel
// state with nft; the product never runs it).
func nftList(t testing.TB, r *rig) string {
	t.Helper()
	out, err := r.node.Run(context.Background(), "nft", "list", "table", "netdev", r.s.TableName())
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestSteeredUDP: the first datagram of a UDP flow goes through the
// dataplane, which authorizes the flow; the rest stays in the kernel.
func TestSteeredUDP(t *testing.T) {
	r := newRig(t, 2, 2)
	f := r.startForwarder()
	t.Cleanup(f.stop)
	client, server := r.node.PUs[0], r.node.PUs[1]
	srv := server.ListenUDP(0)
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := srv.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			_, _ = srv.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	cl := client.ListenUDP(0)
	dst := netip.MustParseAddrPort(srv.LocalAddr().String())
	const rounds = 200
	buf := make([]byte, 2048)
	for i := 0; i < rounds; i++ {
		msg := []byte("datagram " + strings.Repeat("x", i%50))
		if _, err := cl.WriteToUDPAddrPort(msg, dst); err != nil {
			t.Fatal(err)
		}
		_ = cl.SetReadDeadline(time.Now().Add(3 * time.Second))
		n, _, err := cl.ReadFromUDPAddrPort(buf)
		if err != nil || string(buf[:n]) != string(msg) {
			c0, _ := r.s.Counters("pu0")
			c1, _ := r.s.Counters("pu1")
			t.Fatalf("round %d: %q, %v (forwarder: %d reads, %d UDP, %d errors, last %v; pu0 %+v; pu1 %+v)",
				i, buf[:n], err, f.reads.Load(), f.byProto[ipproto.UDP].Load(), f.errs.Load(), f.last.Load(), c0, c1)
		}
	}
	f.check(t)
	c0, _ := r.s.Counters("pu0")
	n := f.byProto[ipproto.UDP].Load()
	t.Logf("UDP: %d UDP frames (%d in all) through the TAPs for %d round trips; pu0 counters %+v", n, f.reads.Load(), rounds, c0)
	// The first datagram crosses 2 TAPs (pu0 in, pu1 out), the first
	// answer 2 more; a handful more may race the authorization.
	if n < 2 || n > 12 {
		t.Errorf("%d frames through the TAPs for a %d-round UDP flow", n, rounds)
	}
	if c0.InAuthorized.Packets < rounds-6 {
		t.Errorf("UDP datagrams did not stay in the kernel: %+v", c0)
	}
}

// TestSteeredCrossNode: two nodes, each with its own table, TAPs and
// forwarder; a TCP connection between PUs on different nodes is steered on
// both (client egress side on node 0, server side on node 1) and the bulk
// data then stays in both kernels.
func TestSteeredCrossNode(t *testing.T) {
	c := testenv.NewCluster(t, 2, 1)
	r0 := newRigOn(t, c.Nodes[0], 1)
	r1 := newRigOn(t, c.Nodes[1], 1)
	f0, f1 := r0.startForwarder(), r1.startForwarder()
	t.Cleanup(f0.stop)
	t.Cleanup(f1.stop)
	client, server := c.Nodes[0].PUs[0], c.Nodes[1].PUs[0]
	sink := server.Listen(0)
	sinkServer(sink)
	const size = 64 << 20
	d := bulk(t, client, addrOf(sink), size)
	f0.check(t)
	f1.check(t)
	t.Logf("cross-node bulk %d MiB in %v; TCP frames through the TAPs: node0 %d, node1 %d", size>>20, d, f0.byProto[ipproto.TCP].Load(), f1.byProto[ipproto.TCP].Load())
	for i, f := range []*forwarder{f0, f1} {
		if n := f.byProto[ipproto.TCP].Load(); n < 2 || n > 32 {
			t.Errorf("node %d: %d frames through the TAPs", i, n)
		}
	}
	c0, _ := r0.s.Counters("pu0")
	c1, _ := r1.s.Counters("pu0")
	if c0.InAuthorized.Bytes < size || c1.OutAuthorized.Bytes < size {
		t.Errorf("bulk data not on the authorized path: node0 %+v node1 %+v", c0, c1)
	}
}

// TestSteeredUnauthorizedBulk: a flow the dataplane never authorizes
// crosses userspace packet by packet. The PU's TCP stack sends GSO
// super-packets (up to 64 KB) with partial checksums; they must arrive
// whole on the TAP with their virtio-net header and be re-injected intact
// (the kernel segments them on the way out). The sink verifies the count.
func TestSteeredUnauthorizedBulk(t *testing.T) {
	r := newRig(t, 2, 2)
	f := r.startForwarderOpts(true)
	t.Cleanup(f.stop)
	client, server := r.node.PUs[0], r.node.PUs[1]
	sink := server.Listen(0)
	sinkServer(sink)
	const size = 32 << 20
	d := bulk(t, client, addrOf(sink), size)
	f.check(t)
	t.Logf("unauthorized bulk %d MiB in %v (%.2f Gbit/s) through Go: %d frames, %d GSO, largest %d bytes",
		size>>20, d, float64(size)*8/d.Seconds()/1e9, f.byProto[ipproto.TCP].Load(), f.gso.Load(), f.maxRead.Load())
	if f.gso.Load() == 0 || f.maxRead.Load() <= 1514+vnet.HdrLen {
		t.Errorf("no GSO super-packet read from the TAPs (largest frame %d)", f.maxRead.Load())
	}
	if es, _ := r.s.List("pu0"); len(es) != 0 {
		t.Errorf("flows authorized although the forwarder never authorizes: %+v", es)
	}
}

// TestSteeredICMP: the echo rules. The first echo request goes through
// the dataplane, which authorizes (src:id, dst:0, icmp); the following
// requests and replies stay in the kernel.
func TestSteeredICMP(t *testing.T) {
	r := newRig(t, 2, 2)
	f := r.startForwarder()
	t.Cleanup(f.stop)
	client, server := r.node.PUs[0], r.node.PUs[1]
	var conn net.PacketConn
	if err := client.Do(func() error {
		var err error
		conn, err = net.ListenPacket("ip4:icmp", client.Addr.String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	const rounds = 50
	buf := make([]byte, 1500)
	for i := 0; i < rounds; i++ {
		req := []byte{8, 0, 0, 0, 0x12, 0x34, 0, byte(i), 't', 'r', 'i'}
		cs := ^vnet.Checksum(req, 0)
		req[2], req[3] = byte(cs>>8), byte(cs)
		if _, err := conn.WriteTo(req, &net.IPAddr{IP: server.Addr.AsSlice()}); err != nil {
			t.Fatal(err)
		}
		for {
			_ = conn.SetReadDeadline(time.Now().Add(3 * time.Second))
			n, _, err := conn.ReadFrom(buf)
			if err != nil {
				c, _ := r.s.Counters("pu0")
				c1, _ := r.s.Counters("pu1")
				t.Fatalf("echo %d: %v (forwarder: %d reads, %d ICMP, %d errors, last %v; pu0 %+v; pu1 %+v)",
					i, err, f.reads.Load(), f.byProto[1].Load(), f.errs.Load(), f.last.Load(), c, c1)
			}
			if n >= 8 && buf[0] == 0 && buf[7] == byte(i) {
				break // our reply
			}
		}
	}
	f.check(t)
	c0, _ := r.s.Counters("pu0")
	n := f.byProto[1].Load()
	t.Logf("ICMP: %d ICMP frames through the TAPs for %d echoes; pu0 %+v", n, rounds, c0)
	if n < 2 || n > 8 {
		t.Errorf("%d ICMP frames through the TAPs for %d echoes", n, rounds)
	}
	if c0.InAuthorized.Packets < rounds-4 {
		t.Errorf("echo requests did not stay in the kernel: %+v", c0)
	}
}

// TestSteeredTCP6: the same over IPv6 (the a6 sets, 44-byte keys), with
// neighbour discovery passing in the kernel.
func TestSteeredTCP6(t *testing.T) {
	r := newRig(t, 2, 2)
	f := r.startForwarder()
	t.Cleanup(f.stop)
	client, server := r.node.PUs[0], r.node.PUs[1]
	sink := server.ListenOn(server.Addr6, 0)
	sinkServer(sink)
	const size = 64 << 20
	before := f.byProto[ipproto.TCP].Load()
	d := bulk(t, client, addrOf(sink), size)
	reads := f.byProto[ipproto.TCP].Load() - before
	f.check(t)
	t.Logf("IPv6 bulk %d MiB in %v, %d TCP frames through the TAPs", size>>20, d, reads)
	if reads < 2 || reads > 64 {
		t.Errorf("%d TCP frames through the TAPs over IPv6", reads)
	}
	es, err := r.s.List("pu1")
	if err != nil {
		t.Fatal(err)
	}
	if !hasFlow(es, client.Addr6, addrOf(sink)) {
		t.Errorf("IPv6 flow not in pu1's set: %+v", es)
	}
}
