package steer_test

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"

	"github.com/trireme-go/trireme/ipproto"
	"github.com/trireme-go/trireme/netsetup/steer"
	"github.com/trireme-go/trireme/netsetup/tap"
	"github.com/trireme-go/trireme/testenv"
)

// scaleNode is a node namespace with n steerable PUs made of bare veth
// pairs (both ends in the node namespace: nothing runs behind them) and
// their TAPs; they go with the namespace (the kernel then deletes them in
// one batch).
func scaleNode(t testing.TB, n int) (*testenv.Node, []steer.PU) {
	t.Helper()
	node := testenv.NewNode(t, testenv.NodeOptions{})
	var pus []steer.PU
	var taps []*tap.Tap
	t.Cleanup(func() {
		for _, tp := range taps {
			tp.Close()
		}
	})
	node.MustDo(func() error {
		for i := range n {
			v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: fmt.Sprintf("sv%d", i)}, PeerName: fmt.Sprintf("sp%d", i)}
			if err := netlink.LinkAdd(v); err != nil {
				return err
			}
			in, err := tap.Open(fmt.Sprintf("s%di", i))
			if err != nil {
				return err
			}
			taps = append(taps, in)
			out, err := tap.Open(fmt.Sprintf("s%do", i))
			if err != nil {
				return err
			}
			taps = append(taps, out)
			peer, err := netlink.LinkByName(v.PeerName) // stands for the PU's interface
			if err != nil {
				return err
			}
			pus = append(pus, steer.PU{Name: fmt.Sprintf("pu%d", i), Veth: v.Name, TapIn: in.Index(), TapOut: out.Index(),
				MAC: peer.Attrs().HardwareAddr, Addrs: []netip.Prefix{netip.PrefixFrom(flowOf(i, 0).Src, 8)}})
		}
		return nil
	})
	return node, pus
}

func openSteerer(t testing.TB, node *testenv.Node, shardSize int) *steer.Steerer {
	t.Helper()
	s, err := steer.Open(steer.Config{Node: "test" + node.Suffix, NetNS: int(node.NS), ShardSize: shardSize})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// flowOf is the i-th authorized flow of PU p (distinct over all PUs).
func flowOf(p, i int) steer.Tuple {
	return steer.Tuple{
		Src:   netip.AddrFrom4([4]byte{10, byte(p >> 8), byte(p), 1}),
		Dst:   netip.AddrFrom4([4]byte{10, 200, byte(i >> 8), byte(i)}),
		Proto: ipproto.TCP, SrcPort: uint16(10000 + i), DstPort: 443,
	}
}

// TestRestartManyPUsAndFlows: a node with 1,000 PUs and 100,000 authorized
// flows (100 per PU, 200,000 set elements) is taken over by a new Steerer
// (a restarted daemon) whose Apply replaces every PU's chains: every flow
// is still in the kernel, every PU has its chains, and the tables hold at
// most ShardSize PUs each. The time Apply took is logged. (The daemon's
// live restart test, node/restart_test.go, does the same through the real
// daemon at 1,000 PUs with real connections.)
func TestRestartManyPUsAndFlows(t *testing.T) {
	const nPUs, perPU = 1000, 100
	start := time.Now()
	node, pus := scaleNode(t, nPUs)
	t.Logf("%d veth pairs and %d TAPs: %v", nPUs, 2*nPUs, time.Since(start))
	s := openSteerer(t, node, 0)
	start = time.Now()
	if err := s.Apply(nil, []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}); err != nil {
		t.Fatal(err)
	}
	for _, pu := range pus {
		if err := s.AddPU(pu); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("%d AddPU: %v", nPUs, time.Since(start))
	start = time.Now()
	// Flows of many PUs interleaved, as a daemon's batches are: a
	// message per flow, more than one transaction's acknowledgements
	// used to fit the socket (ENOBUFS).
	b := s.NewBatch()
	for i := range perPU {
		for p := range nPUs {
			b.Authorize(pus[p].Name, flowOf(p, i), 10*time.Minute)
		}
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d flows authorized: %v", nPUs*perPU, time.Since(start))
	tables := s.Tables()
	s.Close()

	// The restart.
	s = openSteerer(t, node, 0)
	start = time.Now()
	st, ok, err := s.Existing()
	if err != nil || !ok || len(st.PUs) != nPUs {
		t.Fatalf("Existing: %d PUs, %v %v", len(st.PUs), ok, err)
	}
	if err := s.Apply(pus, st.Excluded); err != nil {
		t.Fatalf("Apply with %d PUs and %d flows: %v", nPUs, nPUs*perPU, err)
	}
	t.Logf("restart: Existing + Apply of %d PUs: %v", nPUs, time.Since(start))
	if got := s.Tables(); !maps_equal(got, tables) {
		t.Errorf("tables after the restart %v, before %v", got, tables)
	}
	for name, n := range tables {
		if n > steer.DefaultShardSize {
			t.Errorf("table %s holds %d PUs", name, n)
		}
	}
	start = time.Now()
	for p, pu := range pus {
		es, err := s.List(pu.Name)
		if err != nil {
			t.Fatal(err)
		}
		if len(es) != 2*perPU {
			t.Fatalf("%s: %d entries after the restart, want %d", pu.Name, len(es), 2*perPU)
		}
		for i := range perPU {
			if !hasFlow(es, flowOf(p, i).Src, netip.AddrPortFrom(flowOf(p, i).Dst, 443)) {
				t.Fatalf("%s: flow %v lost", pu.Name, flowOf(p, i))
			}
		}
	}
	t.Logf("List of every PU: %v", time.Since(start))
	chains := map[string]bool{}
	node.MustDo(func() error {
		c, err := nftables.New()
		if err != nil {
			return err
		}
		cs, err := c.ListChainsOfTableFamily(nftables.TableFamilyNetdev)
		for _, ch := range cs {
			chains[ch.Name] = true
		}
		return err
	})
	for _, pu := range pus {
		for _, c := range []string{"in_" + pu.Name, "out_" + pu.Name} {
			if !chains[c] {
				t.Fatalf("chain %s missing after the restart", c)
			}
		}
	}
}

func maps_equal(a, b map[string]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func nftListAll(t testing.TB, node *testenv.Node) string {
	t.Helper()
	out, err := node.Run(t.Context(), "nft", "list", "ruleset")
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestShards: PUs fill tables of ShardSize in order; removing the last PU
// of a table (but the first) removes the table; a new PU takes the first
// free place; a restart with a smaller ShardSize leaves every PU where its
// flows are; excluded networks reach every table.
func TestShards(t *testing.T) {
	node, pus := scaleNode(t, 7)
	s := openSteerer(t, node, 3)
	if err := s.Apply(pus[:5], nil); err != nil {
		t.Fatal(err)
	}
	base := s.TableName()
	want := map[string]int{base: 3, base + "_s1": 2}
	if got := s.Tables(); !maps_equal(got, want) {
		t.Fatalf("tables %v, want %v", got, want)
	}
	for i, pu := range pus[:5] {
		if err := s.Authorize(pu.Name, flowOf(i, 1), time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.AddPU(pus[5]); err != nil {
		t.Fatal(err)
	}
	if err := s.AddPU(pus[6]); err != nil {
		t.Fatal(err)
	}
	want = map[string]int{base: 3, base + "_s1": 3, base + "_s2": 1}
	if got := s.Tables(); !maps_equal(got, want) {
		t.Fatalf("tables %v, want %v", got, want)
	}
	if err := s.RemovePU(pus[6].Name); err != nil {
		t.Fatal(err)
	}
	if err := s.RemovePU(pus[1].Name); err != nil {
		t.Fatal(err)
	}
	want = map[string]int{base: 2, base + "_s1": 3}
	if got := s.Tables(); !maps_equal(got, want) {
		t.Fatalf("after removals: tables %v, want %v", got, want)
	}
	if strings.Contains(nftListAll(t, node), base+"_s2") {
		t.Error("an empty table was left")
	}
	if err := s.AddPU(pus[6]); err != nil { // the free place in the first table
		t.Fatal(err)
	}
	if got := s.Tables(); got[base] != 3 || got[base+"_s1"] != 3 {
		t.Fatalf("a new PU did not fill the first table: %v", got)
	}
	if err := s.AddExcluded(netip.MustParsePrefix("192.0.2.0/24")); err != nil {
		t.Fatal(err)
	}
	for _, tb := range []string{base, base + "_s1"} {
		out, err := node.Run(t.Context(), "nft", "list", "set", "netdev", tb, "x4")
		if err != nil || !strings.Contains(out, "192.0.2.0/24") {
			t.Errorf("%s lacks the excluded network: %v\n%s", tb, err, out)
		}
	}
	s.Close()

	// Restart with ShardSize 1 and without pus[0]: the others stay where
	// their flows are, the stale PU goes, nothing moves.
	s = openSteerer(t, node, 1)
	keep := []steer.PU{pus[2], pus[3], pus[4], pus[5], pus[6]}
	if err := s.Apply(keep, []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}); err != nil {
		t.Fatal(err)
	}
	want = map[string]int{base: 2, base + "_s1": 3}
	if got := s.Tables(); !maps_equal(got, want) {
		t.Fatalf("after the restart: tables %v, want %v", got, want)
	}
	for _, i := range []int{2, 3, 4} {
		es, err := s.List(pus[i].Name)
		if err != nil || !hasFlow(es, flowOf(i, 1).Src, netip.AddrPortFrom(flowOf(i, 1).Dst, 443)) {
			t.Errorf("%s lost its flow over the restart: %v %v", pus[i].Name, es, err)
		}
	}
	if st, _, err := s.Existing(); err != nil || !slices.Equal(st.PUs, []string{"pu2", "pu3", "pu4", "pu5", "pu6"}) {
		t.Errorf("Existing: %v %v", st.PUs, err)
	}
	// A new PU with ShardSize 1: a table of its own.
	if err := s.AddPU(pus[0]); err != nil {
		t.Fatal(err)
	}
	if got := s.Tables(); got[base+"_s2"] != 1 {
		t.Errorf("tables %v", got)
	}
	if err := s.Delete(); err != nil {
		t.Fatal(err)
	}
	if out := nftListAll(t, node); strings.Contains(out, base) {
		t.Errorf("tables left after Delete:\n%s", out)
	}
}

// TestApplyRebuildsForeignExcludedSet: a table whose excluded set is not
// what trireme makes (another type) is rebuilt, and the PUs' flows kept.
func TestApplyRebuildsForeignExcludedSet(t *testing.T) {
	node, pus := scaleNode(t, 2)
	s := openSteerer(t, node, 0)
	if err := s.Apply(pus, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.Authorize(pus[0].Name, flowOf(0, 1), time.Minute); err != nil {
		t.Fatal(err)
	}
	s.Close()
	// Replace x4 by a set of another type (chains first: they use it).
	node.MustDo(func() error {
		c, err := nftables.New()
		if err != nil {
			return err
		}
		tb := &nftables.Table{Name: "trireme_test" + node.Suffix, Family: nftables.TableFamilyNetdev}
		for _, pu := range pus {
			c.DelChain(&nftables.Chain{Table: tb, Name: "in_" + pu.Name})
			c.DelChain(&nftables.Chain{Table: tb, Name: "out_" + pu.Name})
		}
		c.DelSet(&nftables.Set{Table: tb, Name: "x4"})
		if err := c.AddSet(&nftables.Set{Table: tb, Name: "x4", KeyType: nftables.TypeInetService}, nil); err != nil {
			return err
		}
		return c.Flush()
	})
	s = openSteerer(t, node, 0)
	if err := s.Apply(pus, []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}); err != nil {
		t.Fatal(err)
	}
	list := nftListAll(t, node)
	if !strings.Contains(list, "type ipv4_addr") || !strings.Contains(list, "chain in_pu1") || !strings.Contains(list, "192.0.2.0/24") {
		t.Errorf("table not rebuilt:\n%s", list)
	}
	es, err := s.List(pus[0].Name)
	if err != nil || !hasFlow(es, flowOf(0, 1).Src, netip.AddrPortFrom(flowOf(0, 1).Dst, 443)) {
		t.Errorf("flow lost in the rebuild: %v %v", es, err)
	}
}

// TestApplySplitsOnResourceErrors: a transaction the kernel refuses for
// lack of buffer space (here a socket buffer far smaller than a 40-PU
// transaction: EMSGSIZE) is sent again in smaller ones until it fits,
// instead of failing the restart.
func TestApplySplitsOnResourceErrors(t *testing.T) {
	node, pus := scaleNode(t, 40)
	s := openSteerer(t, node, 0)
	if err := s.Apply(pus, nil); err != nil {
		t.Fatal(err)
	}
	sent, budget := steer.TxnStats(s)
	t.Logf("40 PUs with the default buffer: %d transaction(s), budget %d", sent, budget)
	s.Close()

	s = openSteerer(t, node, 0)
	steer.SetTxnSocketBuffer(s, 48<<10)
	if err := s.Apply(pus, nil); err != nil {
		t.Fatalf("Apply with a small socket buffer: %v", err)
	}
	sent2, budget2 := steer.TxnStats(s)
	t.Logf("with a 96 KiB buffer: %d transactions, budget %d", sent2, budget2)
	if budget2 >= budget || sent2 <= sent {
		t.Errorf("Apply did not split: %d transactions, budget %d", sent2, budget2)
	}
	if got := s.PUs(); len(got) != len(pus) {
		t.Fatalf("%d PUs steered, want %d", len(got), len(pus))
	}
	st, _, err := s.Existing()
	if err != nil || len(st.PUs) != len(pus) {
		t.Fatalf("Existing: %d PUs, %v", len(st.PUs), err)
	}
}
