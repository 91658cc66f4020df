package steer_test

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/trireme-go/trireme/ipproto"
	"github.com/trireme-go/trireme/netsetup/steer"
)

// TestRevokeCounted: revoking a flow reads what the kernel counted on its
// two entries, then deletes them, in one Commit; an entry already gone
// (expired, revoked) counts nothing and fails nothing.
func TestRevokeCounted(t *testing.T) {
	r := newRig(t, 2, 2)
	f := r.startForwarder()
	t.Cleanup(f.stop)
	client, server := r.node.PUs[0], r.node.PUs[1]
	srv := server.ListenUDP(0)
	cl := client.ListenUDP(0)
	dst := netip.MustParseAddrPort(srv.LocalAddr().String())
	src := netip.MustParseAddrPort(cl.LocalAddr().String())
	src = netip.AddrPortFrom(client.Addr, src.Port())
	out := steer.Tuple{Src: src.Addr(), Dst: dst.Addr(), Proto: ipproto.UDP, SrcPort: src.Port(), DstPort: dst.Port()}

	// One datagram at a time until both PUs' entries are in the kernel
	// (the forwarder authorizes each side after its first datagram).
	buf := make([]byte, 2048)
	authorized := func(pu string) bool {
		es, err := r.s.List(pu)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, e := range es {
			if e.Tuple == out || e.Tuple == out.Reverse() {
				n++
			}
		}
		return n == 2
	}
	deadline := time.Now().Add(10 * time.Second)
	for !authorized("pu0") || !authorized("pu1") {
		if time.Now().After(deadline) {
			t.Fatal("the flow was not authorized on both PUs")
		}
		if _, err := cl.WriteToUDPAddrPort([]byte("warm-up"), dst); err != nil {
			t.Fatal(err)
		}
		_ = srv.SetReadDeadline(time.Now().Add(3 * time.Second))
		if _, _, err := srv.ReadFromUDPAddrPort(buf); err != nil {
			t.Fatal(err)
		}
	}
	before := map[string]map[steer.Tuple]steer.FlowCount{}
	for _, pu := range []string{"pu0", "pu1"} {
		c, err := r.s.FlowCounters(pu)
		if err != nil {
			t.Fatal(err)
		}
		before[pu] = c
	}

	// n datagrams of size bytes from the client, each answered by one of
	// half the size: all stay in the kernel, on both PUs' entries.
	const n, size = 50, 300
	msg := []byte(strings.Repeat("c", size))
	for i := 0; i < n; i++ {
		if _, err := cl.WriteToUDPAddrPort(msg, dst); err != nil {
			t.Fatal(err)
		}
		_ = srv.SetReadDeadline(time.Now().Add(3 * time.Second))
		m, from, err := srv.ReadFromUDPAddrPort(buf)
		if err != nil || m != size {
			t.Fatalf("datagram %d: %d bytes, %v", i, m, err)
		}
		if _, err := srv.WriteToUDPAddrPort(msg[:size/2], from); err != nil {
			t.Fatal(err)
		}
		_ = cl.SetReadDeadline(time.Now().Add(3 * time.Second))
		if m, _, err := cl.ReadFromUDPAddrPort(buf); err != nil || m != size/2 {
			t.Fatalf("answer %d: %d bytes, %v", i, m, err)
		}
	}
	f.check(t)

	// The client's side revoked with its tuple, the server's with its
	// own (reverse); a flow never authorized in the same batch counts
	// nothing and does not abort it.
	var c0, c1, none steer.FinalCounts
	ghost := out
	ghost.SrcPort++
	b := r.s.NewBatch()
	b.RevokeCounted("pu0", out, &c0)
	b.RevokeCounted("pu0", ghost, &none)
	b.RevokeCounted("pu1", out.Reverse(), &c1)
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	// Leaving a PU a datagram is counted at the veth's ingress hook, as
	// its IP packet (20 + 8 bytes of IPv4 and UDP headers); toward a PU
	// at the egress hook, as its Ethernet frame (14 bytes more).
	const ip, eth = 20 + 8, 14
	for _, tc := range []struct {
		name     string
		got      steer.FlowCount
		pu       string
		tuple    steer.Tuple
		wantPkts uint64
		wantLen  uint64 // of each
	}{
		{"client's datagrams, leaving pu0", c0.Out, "pu0", out, n, ip + size},
		{"answers, toward pu0", c0.In, "pu0", out.Reverse(), n, eth + ip + size/2},
		{"answers, leaving pu1", c1.Out, "pu1", out.Reverse(), n, ip + size/2},
		{"client's datagrams, toward pu1", c1.In, "pu1", out, n, eth + ip + size},
	} {
		was := before[tc.pu][tc.tuple]
		got := steer.FlowCount{Packets: tc.got.Packets - was.Packets, Bytes: tc.got.Bytes - was.Bytes}
		want := steer.FlowCount{Packets: tc.wantPkts, Bytes: tc.wantPkts * tc.wantLen}
		t.Logf("%s: %+v (before the %d round trips: %+v)", tc.name, got, n, was)
		if got != want {
			t.Errorf("%s: counted %+v during the round trips, want %+v", tc.name, got, want)
		}
	}
	if !c0.Found || !c1.Found {
		t.Errorf("entries not found: %+v %+v", c0, c1)
	}
	if none != (steer.FinalCounts{}) {
		t.Errorf("a flow never authorized counted %+v", none)
	}
	for _, pu := range []string{"pu0", "pu1"} {
		if authorized(pu) {
			t.Errorf("%s: the flow is still authorized after the revoke", pu)
		}
	}
	// Revoked again: gone, nothing counted, no error.
	var again steer.FinalCounts
	b.RevokeCounted("pu0", out, &again)
	if err := b.Commit(); err != nil || again != (steer.FinalCounts{}) {
		t.Errorf("revoking a revoked flow: %+v, %v", again, err)
	}
}

// TestRevokeCountedMany: counted revokes mixed with authorizations and
// plain revokes in one batch, more than one transaction's worth, over IPv4
// and IPv6: each counted flow still there is found, one expired or never
// authorized is not (and fails nothing), a flow revoked twice is found
// once, and the other changes are applied.
func TestRevokeCountedMany(t *testing.T) {
	r := newRig(t, 1, 1)
	const n = 700 // 1400 entries: more than one transaction
	v6 := func(i int) steer.Tuple {
		return steer.Tuple{Src: netip.MustParseAddr("fd00:77::2"), Dst: netip.AddrFrom16([16]byte{0xfd, 0, 0x78, 15: byte(i)}),
			Proto: ipproto.UDP, SrcPort: uint16(2000 + i), DstPort: 53}
	}
	counted := func(i int) steer.Tuple {
		if i%7 == 3 {
			return v6(i)
		}
		return benchTuple(i)
	}
	expired := benchTuple(5000)
	b := r.s.NewBatch()
	for i := 0; i < n; i++ {
		b.Authorize("pu0", counted(i), time.Minute)
	}
	b.Authorize("pu0", expired, time.Millisecond)
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // expired's timeout runs out

	counts := make([]steer.FinalCounts, n)
	var again, gone, never steer.FinalCounts
	var added []steer.Tuple
	for i := 0; i < n; i++ {
		b.RevokeCounted("pu0", counted(i), &counts[i])
		if i%10 == 0 {
			added = append(added, benchTuple(10000+i))
			b.Authorize("pu0", added[len(added)-1], time.Minute)
			b.Revoke("pu0", benchTuple(20000+i)) // never there
		}
	}
	b.RevokeCounted("pu0", counted(0), &again)
	b.RevokeCounted("pu0", expired, &gone)
	b.RevokeCounted("pu0", benchTuple(30000), &never)
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	for i, c := range counts {
		// No traffic: the counters are there, at zero.
		if c != (steer.FinalCounts{Found: true}) {
			t.Errorf("flow %d (%v): %+v, want found with zero counts", i, counted(i), c)
		}
	}
	for name, c := range map[string]steer.FinalCounts{"revoked twice": again, "expired": gone, "never authorized": never} {
		if c != (steer.FinalCounts{}) {
			t.Errorf("%s: %+v, want nothing found", name, c)
		}
	}
	es, err := r.s.List("pu0")
	if err != nil {
		t.Fatal(err)
	}
	want := map[steer.Tuple]bool{}
	for _, a := range added {
		want[a], want[a.Reverse()] = true, true
	}
	for _, e := range es {
		if !want[e.Tuple] {
			t.Errorf("still authorized: %v", e.Tuple)
		}
		delete(want, e.Tuple)
	}
	for tu := range want {
		t.Errorf("not authorized: %v", tu)
	}
}
