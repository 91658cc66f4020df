package replay

import (
	"fmt"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/trireme-go/trireme/identity"
)

// TestMemoryFollowsFlows: a topology of 500 PUs, each on its own node,
// replaying one connection's SYN costs memory for that flow, not for the
// 500 enforcers' capacity: everything New and the packet allocate stays
// under what one full flow table of the default capacity would hold
// (65,536 entries of at least 256 bytes: 16 MiB), where a table per node
// set up front would be 500 of them.
func TestMemoryFollowsFlows(t *testing.T) {
	topo := &Topology{TargetNetworks: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16")}}
	for i := range 500 {
		name := fmt.Sprintf("pu%d", i)
		topo.PUs = append(topo.PUs, PUSpec{Name: name, Node: "node-" + name,
			IPs:  []netip.Addr{netip.AddrFrom4([4]byte{10, 1, byte((i + 1) >> 8), byte(i + 1)})},
			Tags: identity.NewTags(map[string]string{"app": name})})
	}
	pol := mustPolicy(t, allowAllPolicy)
	syn := craft(t, craftSeg{src: netip.MustParseAddr("10.1.0.1"), dst: netip.MustParseAddr("10.1.0.2"), sport: 40000, dport: 80, syn: true, seq: 1})
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	r, err := New(Options{Topology: topo, Policy: pol})
	if err != nil {
		t.Fatal(err)
	}
	r.Packet(0, time.Unix(1700000000, 0), syn)
	runtime.ReadMemStats(&after)
	sum := r.Finish()
	if sum.Forwarded != 1 || sum.Flows != 2 {
		t.Fatalf("summary %+v", sum)
	}
	allocated := after.TotalAlloc - before.TotalAlloc
	t.Logf("500 nodes, one SYN: %d KiB allocated (%d B per node)", allocated>>10, allocated/500)
	if allocated > 16<<20 {
		t.Fatalf("%d MiB allocated for 500 PUs and one flow", allocated>>20)
	}
}
