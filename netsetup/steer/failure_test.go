package steer_test

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/trireme-go/trireme/ipproto"
	"github.com/trireme-go/trireme/netsetup"
	"github.com/trireme-go/trireme/netsetup/steer"
	"github.com/trireme-go/trireme/netsetup/tap"
)

// TestFailClosedAndRestart: with the dataplane gone (no TAP reader) new
// connections fail while an authorized one keeps working; a "restarted
// daemon" re-opens the same TAPs (same ifindex), re-applies the table
// carrying the authorized flows over, finds them with List, and serves new
// connections again; the old connection survives all of it.
func TestFailClosedAndRestart(t *testing.T) {
	r := newRig(t, 2, 2)
	f := r.startForwarder()
	client, server := r.node.PUs[0], r.node.PUs[1]
	ln := server.Listen(0)
	echoServer(ln)
	old, err := client.Dial(addrOf(ln), 5*time.Second)
	if err != nil {
		t.Fatalf("dial with the dataplane up: %v", err)
	}
	defer old.Close()
	echo(t, old, "established")
	f.check(t)

	excl := []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24"), netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("2001:db8::/32"), netip.MustParsePrefix("ffff::/16")}
	for _, p := range []netip.Prefix{excl[0], excl[2], excl[3]} {
		if err := r.s.AddExcluded(p); err != nil {
			t.Fatal(err)
		}
	}

	// The dataplane dies.
	f.stop()
	indexes := map[string]int{}
	for n, tp := range r.taps {
		indexes[n] = tp.Index()
	}
	if c, err := client.Dial(addrOf(ln), 1500*time.Millisecond); err == nil {
		c.Close()
		t.Fatal("a new connection was established with no dataplane reading the TAPs")
	}
	echo(t, old, "still flowing with the dataplane down")

	// Restart: same TAPs, a new Steerer that finds the table, Apply keeps
	// the authorized flows.
	r.reopenTaps()
	for n, tp := range r.taps {
		if tp.Index() != indexes[n] {
			t.Fatalf("TAP %s came back with ifindex %d, was %d", n, tp.Index(), indexes[n])
		}
	}
	r.s.Close()
	r.openSteerer()
	st, ok, err := r.s.Existing()
	if err != nil || !ok {
		t.Fatalf("Existing: %v %v", ok, err)
	}
	if !slices.Equal(st.PUs, []string{"pu0", "pu1"}) || !slices.Equal(st.Excluded, []netip.Prefix{excl[0], excl[2], excl[3]}) {
		t.Fatalf("Existing = %+v", st)
	}
	if err := r.s.Apply(r.pus, st.Excluded); err != nil {
		t.Fatal(err)
	}
	// Intervals reaching the top of the space read back too.
	if err := r.s.AddExcluded(excl[1]); err != nil {
		t.Fatal(err)
	}
	if st, _, err = r.s.Existing(); err != nil || !slices.Equal(st.Excluded, []netip.Prefix{excl[1], excl[2], excl[3]}) {
		t.Fatalf("Existing after 0/0 = %+v, %v", st, err)
	}
	if err := r.s.Apply(r.pus, nil); err != nil {
		t.Fatal(err)
	}
	entries, err := r.s.List("pu0")
	if err != nil {
		t.Fatal(err)
	}
	if !hasFlow(entries, client.Addr, addrOf(ln)) {
		t.Fatalf("authorized flow lost over the restart: %+v", entries)
	}
	echo(t, old, "after the table was replaced")
	f = r.startForwarder()
	t.Cleanup(f.stop)
	c, err := client.Dial(addrOf(ln), 5*time.Second)
	if err != nil {
		t.Fatalf("dial after restart: %v", err)
	}
	defer c.Close()
	echo(t, c, "new after restart")
	echo(t, old, "old after restart")
	f.check(t)
}

// TestRevokeSteersAgain: a revoked flow's packets go back to the dataplane;
// with no dataplane they are dropped and the connection stalls.
func TestRevokeSteersAgain(t *testing.T) {
	r := newRig(t, 2, 2)
	f := r.startForwarder()
	client, server := r.node.PUs[0], r.node.PUs[1]
	ln := server.Listen(0)
	echoServer(ln)
	c, err := client.Dial(addrOf(ln), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	echo(t, c, "before revoke")
	f.stop()
	lp := netip.MustParseAddrPort(c.LocalAddr().String())
	tu := steer.Tuple{Src: lp.Addr(), Dst: addrOf(ln).Addr(), Proto: ipproto.TCP, SrcPort: lp.Port(), DstPort: addrOf(ln).Port()}
	for _, pu := range []string{"pu0", "pu1"} {
		if err := r.s.Revoke(pu, tu); err != nil {
			t.Fatal(err)
		}
		// Revoking twice is fine (DESTROY, not DELETE).
		if err := r.s.Revoke(pu, tu); err != nil {
			t.Fatalf("second revoke: %v", err)
		}
	}
	es, _ := r.s.List("pu0")
	if hasFlow(es, lp.Addr(), addrOf(ln)) {
		t.Fatal("flow still listed after Revoke")
	}
	_ = c.SetDeadline(time.Now().Add(time.Second))
	_, _ = c.Write([]byte("x"))
	var b [1]byte
	if _, err := c.Read(b[:]); err == nil {
		t.Fatal("a revoked flow still passes with no dataplane")
	}
}

// TestAuthorizeRefreshesTimeout: authorizing again restarts the timer
// (the kernel only does so when the expiration is sent too).
func TestAuthorizeRefreshesTimeout(t *testing.T) {
	r := newRig(t, 1, 1)
	tu := steer.Tuple{Src: netip.MustParseAddr("10.77.0.2"), Dst: netip.MustParseAddr("192.0.2.1"), Proto: ipproto.UDP, SrcPort: 5000, DstPort: 53}
	if err := r.s.Authorize("pu0", tu, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1200 * time.Millisecond)
	if err := r.s.Authorize("pu0", tu, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	es, err := r.s.List("pu0")
	if err != nil {
		t.Fatal(err)
	}
	if len(es) != 2 {
		t.Fatalf("want both directions, got %+v", es)
	}
	for _, e := range es {
		if e.Expires < 9500*time.Millisecond {
			t.Errorf("entry %v expires in %v: timeout not refreshed", e.Tuple, e.Expires)
		}
	}
	// Portless protocols are keyed without ports; an ICMP echo keeps its
	// identifier on the requester's side (and 0 on the other).
	gre := steer.Tuple{Src: tu.Src, Dst: tu.Dst, Proto: 47, SrcPort: 7, DstPort: 9}
	echo := steer.Tuple{Src: tu.Src, Dst: tu.Dst, Proto: ipproto.ICMP, SrcPort: 7}
	for _, x := range []steer.Tuple{gre, echo} {
		if err := r.s.Authorize("pu0", x, time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	es, _ = r.s.List("pu0")
	want := map[steer.Tuple]bool{
		{Src: tu.Src, Dst: tu.Dst, Proto: 47}: true, {Src: tu.Dst, Dst: tu.Src, Proto: 47}: true,
		echo: true, echo.Reverse(): true,
	}
	for _, e := range es {
		if e.Tuple.Proto != ipproto.UDP && !want[e.Tuple] {
			t.Errorf("unexpected entry %v", e.Tuple)
		}
		delete(want, e.Tuple)
	}
	if len(want) != 0 {
		t.Errorf("entries not listed: %v", want)
	}
	// Hostile input: mixed families, unknown PU, absurd timeouts.
	for _, tc := range []struct {
		name string
		pu   string
		tu   steer.Tuple
		to   time.Duration
	}{
		{"mixed families", "pu0", steer.Tuple{Src: tu.Src, Dst: netip.MustParseAddr("2001:db8::1"), Proto: ipproto.TCP}, time.Second},
		{"zero tuple", "pu0", steer.Tuple{}, time.Second},
		{"unknown PU", "nope", tu, time.Second},
		{"negative timeout", "pu0", tu, -time.Second},
		{"huge timeout", "pu0", tu, 365 * 24 * time.Hour},
	} {
		if err := r.s.Authorize(tc.pu, tc.tu, tc.to); err == nil {
			t.Errorf("%s: Authorize accepted it", tc.name)
		}
	}
}

// TestExcludedRuntime: with no dataplane, a PU cannot reach an unsteered
// host; excluding the host's address at runtime lets the connection through
// in the kernel, removing it steers (and so blocks) again.
func TestExcludedRuntime(t *testing.T) {
	r := newRig(t, 2, 1) // PU 1 is an unenforced "external" host
	client, ext := r.node.PUs[0], r.node.PUs[1]
	ln := ext.Listen(0)
	echoServer(ln)
	dial := func() error {
		c, err := client.Dial(addrOf(ln), time.Second)
		if err == nil {
			defer c.Close()
			echo(t, c, "excluded")
		}
		return err
	}
	if dial() == nil {
		t.Fatal("connection to a non-excluded host succeeded with no dataplane")
	}
	for _, p := range []string{"10.77.0.128/30", "10.77.0.0/16" /* covers ext too */, ext.Addr.String() + "/32", "2001:db8::/64"} {
		if err := r.s.AddExcluded(netip.MustParsePrefix(p)); err != nil {
			t.Fatalf("exclude %s: %v", p, err)
		}
	}
	if err := dial(); err != nil {
		t.Fatalf("connection to an excluded host failed: %v", err)
	}
	before, _ := r.s.Counters("pu0")
	if err := r.s.RemoveExcluded(netip.PrefixFrom(ext.Addr, 32)); err != nil {
		t.Fatal(err)
	}
	if err := dial(); err != nil {
		t.Fatalf("removing the /32 while the /16 still covers it blocked the host: %v", err)
	}
	if err := r.s.RemoveExcluded(netip.MustParsePrefix("10.77.0.0/16")); err != nil {
		t.Fatal(err)
	}
	if dial() == nil {
		t.Fatal("connection succeeded after the exclusion was removed")
	}
	after, _ := r.s.Counters("pu0")
	if after.InSteered.Packets <= before.InSteered.Packets {
		t.Errorf("SYNs after removing the exclusion were not steered: %+v -> %+v", before, after)
	}
	if got := r.s.Excluded(); len(got) != 2 {
		t.Errorf("excluded now %v, want the /30 and the IPv6 prefix", got)
	}
	if err := r.s.RemoveExcluded(netip.MustParsePrefix("192.0.2.0/24")); err == nil {
		t.Error("removing a network that is not excluded succeeded")
	}
}

// TestTapPersistence: a TAP keeps its ifindex when closed and re-opened,
// refuses a second reader, and Delete removes it.
func TestTapPersistence(t *testing.T) {
	r := newRig(t, 1, 0)
	r.node.MustDo(func() error {
		tp, err := tap.Open("tpers")
		if err != nil {
			return err
		}
		idx := tp.Index()
		if _, err := tap.Open("tpers"); err == nil {
			t.Error("a second reader attached to a single-queue TAP")
		}
		tp.Close()
		if !netsetup.LinkExists("tpers") {
			t.Fatal("TAP vanished on close: not persistent")
		}
		tp, err = tap.Open("tpers")
		if err != nil {
			return err
		}
		defer tp.Close()
		if tp.Index() != idx {
			t.Errorf("ifindex %d after reopen, was %d", tp.Index(), idx)
		}
		if _, err := tp.Read(make([]byte, 100)); err != tap.ErrShortBuffer {
			t.Errorf("short buffer read: %v", err)
		}
		tp.Close()
		if err := tap.Delete("tpers"); err != nil {
			return err
		}
		if netsetup.LinkExists("tpers") {
			t.Error("TAP still there after Delete")
		}
		return tap.Delete("tpers") // idempotent
	})
}

// TestAtomicReplaceAndStale: Apply replaces the whole table (a stale PU of
// a crashed run disappears, a new one appears) and DeleteStaleTables
// removes other trireme tables; Delete removes ours.
func TestAtomicReplaceAndStale(t *testing.T) {
	r := newRig(t, 2, 2)
	list := nftList(t, r)
	for _, want := range []string{"chain in_pu0", "chain out_pu1", "hook egress", "set a4_pu1", "set x6", "dup to", "@a6_pu0"} {
		if !strings.Contains(list, want) {
			t.Errorf("table lacks %q:\n%s", want, list)
		}
	}
	// A stale table of another (crashed, renamed) node and a foreign table.
	var removed []string
	r.node.MustDo(func() error {
		c, err := nftables.New()
		if err != nil {
			return err
		}
		c.AddTable(&nftables.Table{Name: steer.TablePrefix + "ghost", Family: nftables.TableFamilyNetdev})
		c.AddTable(&nftables.Table{Name: "someone_else", Family: nftables.TableFamilyNetdev})
		if err := c.Flush(); err != nil {
			return err
		}
		removed, err = steer.DeleteStaleTables(0, "test"+r.node.Suffix)
		return err
	})
	if len(removed) != 1 || removed[0] != steer.TablePrefix+"ghost" {
		t.Errorf("DeleteStaleTables removed %v", removed)
	}
	out, _ := r.node.Run(context.Background(), "nft", "list", "tables")
	if strings.Contains(out, "ghost") || !strings.Contains(out, "someone_else") || !strings.Contains(out, r.s.TableName()) {
		t.Errorf("tables after stale cleanup:\n%s", out)
	}
	// Replace with only pu1: pu0's chains go, in one batch.
	if err := r.s.Apply(r.pus[1:], []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}); err != nil {
		t.Fatal(err)
	}
	list = nftList(t, r)
	if strings.Contains(list, "pu0") || !strings.Contains(list, "in_pu1") || !strings.Contains(list, "192.0.2.0/24") {
		t.Errorf("after replace:\n%s", list)
	}
	if got := r.s.PUs(); len(got) != 1 || got[0] != "pu1" {
		t.Errorf("PUs() = %v", got)
	}
	// Incremental add and remove.
	if err := r.s.AddPU(r.pus[0]); err != nil {
		t.Fatal(err)
	}
	if err := r.s.AddPU(r.pus[0]); err == nil {
		t.Error("adding a PU twice succeeded")
	}
	if err := r.s.RemovePU("pu1"); err != nil {
		t.Fatal(err)
	}
	list = nftList(t, r)
	if strings.Contains(list, "pu1") || !strings.Contains(list, "in_pu0") {
		t.Errorf("after add pu0 / remove pu1:\n%s", list)
	}
	// Bad input.
	for _, pu := range []steer.PU{
		{Name: "bad name", Veth: "x", TapIn: 1, TapOut: 1},
		{Name: "ok", Veth: "", TapIn: 1, TapOut: 1},
		{Name: "ok", Veth: "x", TapIn: 0, TapOut: 1},
	} {
		if err := r.s.AddPU(pu); err == nil {
			t.Errorf("AddPU(%+v) accepted", pu)
		}
	}
	if err := r.s.Delete(); err != nil {
		t.Fatal(err)
	}
	out, _ = r.node.Run(context.Background(), "nft", "list", "tables")
	if strings.Contains(out, steer.TablePrefix) {
		t.Errorf("table still there after Delete:\n%s", out)
	}
	if err := r.s.Delete(); err != nil {
		t.Errorf("second Delete: %v", err)
	}
	if _, ok, err := r.s.Existing(); ok || err != nil {
		t.Errorf("Existing after Delete: %v %v", ok, err)
	}
}

// TestBatchLarge: a batch spanning several netlink messages is applied
// whole, and a revocation batch removes everything again.
func TestBatchLarge(t *testing.T) {
	r := newRig(t, 1, 1)
	const n = 2000 // several messages and several transactions
	b := r.s.NewBatch()
	for i := 0; i < n; i++ {
		b.Authorize("pu0", benchTuple(i), time.Minute)
	}
	if b.Len() != n {
		t.Fatalf("Len = %d", b.Len())
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	es, err := r.s.List("pu0")
	if err != nil {
		t.Fatal(err)
	}
	if len(es) != 2*n {
		t.Fatalf("%d entries, want %d", len(es), 2*n)
	}
	// A batch with one bad flow changes nothing.
	b.Authorize("pu0", steer.Tuple{Src: netip.MustParseAddr("10.0.0.1"), Dst: netip.MustParseAddr("192.0.2.9"), Proto: ipproto.TCP, SrcPort: 1, DstPort: 2}, time.Minute)
	b.Authorize("nope", benchTuple(0), time.Minute)
	if err := b.Commit(); err == nil {
		t.Fatal("batch with an unknown PU committed")
	}
	for i := 0; i < n; i++ {
		b.Revoke("pu0", benchTuple(i))
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	if es, _ = r.s.List("pu0"); len(es) != 0 {
		t.Fatalf("%d entries left after revoking all", len(es))
	}
}

// TestVethGone: a PU whose veth disappeared (the workload died) can still
// be removed, and a PU whose veth does not exist cannot be added; a failed
// Apply leaves the previous table working.
func TestVethGone(t *testing.T) {
	r := newRig(t, 2, 2)
	r.node.MustDo(func() error { return netsetup.DeleteLink(r.pus[0].Veth) })
	if err := r.s.RemovePU("pu0"); err != nil {
		t.Fatalf("RemovePU after the veth vanished: %v", err)
	}
	if strings.Contains(nftList(t, r), "pu0") {
		t.Error("pu0 objects left in the table")
	}
	ghost := r.pus[0]
	ghost.Name = "ghost"
	if err := r.s.AddPU(ghost); err == nil {
		t.Error("AddPU on a missing veth succeeded")
	}
	if err := r.s.Apply([]steer.PU{r.pus[1], ghost}, nil); err == nil {
		t.Error("Apply with a missing veth succeeded")
	}
	// The previous table is intact and usable.
	if got := r.s.PUs(); len(got) != 1 || got[0] != "pu1" {
		t.Errorf("PUs after failed Apply: %v", got)
	}
	if !strings.Contains(nftList(t, r), "in_pu1") {
		t.Error("failed Apply changed the table")
	}
	if err := r.s.AddExcluded(netip.MustParsePrefix("192.0.2.0/24")); err != nil {
		t.Errorf("AddExcluded after failed Apply: %v", err)
	}
	if err := r.s.Authorize("pu1", benchTuple(1), time.Minute); err != nil {
		t.Errorf("Authorize after failed Apply: %v", err)
	}
}

// TestApplyCarriesManyFlows: a restart with many authorized flows (and
// many excluded networks) keeps every flow, and List finds them all even
// right after the inserts (while the kernel resizes the hash set).
func TestApplyCarriesManyFlows(t *testing.T) {
	r := newRig(t, 1, 1)
	const n = 20000
	b := r.s.NewBatch()
	for i := 0; i < n; i++ {
		b.Authorize("pu0", benchTuple(i), 10*time.Minute)
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	r.s.Close()
	r.openSteerer()
	var excl []netip.Prefix
	for i := 0; i < 3000; i++ {
		excl = append(excl, netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), 32))
	}
	if err := r.s.Apply(r.pus, excl); err != nil {
		t.Fatalf("Apply carrying %d flows and %d exclusions: %v", n, len(excl), err)
	}
	if err := r.s.AddExcluded(netip.MustParsePrefix("203.0.113.0/24")); err != nil {
		t.Fatalf("AddExcluded with %d exclusions: %v", len(excl), err)
	}
	if st, _, err := r.s.Existing(); err != nil || len(st.Excluded) != len(excl)+1 {
		t.Fatalf("Existing: %d exclusions, %v", len(st.Excluded), err)
	}
	es, err := r.s.List("pu0")
	if err != nil {
		t.Fatal(err)
	}
	if len(es) != 2*n {
		t.Fatalf("%d entries after the restart, want %d", len(es), 2*n)
	}
}
