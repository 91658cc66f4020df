package steer_test

import (
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/trireme-go/trireme/ipproto"
	"github.com/trireme-go/trireme/netsetup/steer"
	"github.com/trireme-go/trireme/netsetup/tap"
	"github.com/trireme-go/trireme/netsetup/vnet"
	"github.com/trireme-go/trireme/testenv"
)

// countTap counts the frames read from a TAP that match (until the test
// ends); frames are not forwarded.
func countTap(t *testing.T, tp *tap.Tap, match ...func(steer.Tuple, uint8) bool) []*atomic.Int64 {
	// One reader per TAP, counting for every matcher: two readers of one
	// TAP would each take frames meant for the other's count.
	counts := make([]*atomic.Int64, len(match))
	for i := range counts {
		counts[i] = new(atomic.Int64)
	}
	go func() {
		buf := make([]byte, tap.MaxFrame)
		for {
			k, err := tp.Read(buf)
			if err != nil {
				return
			}
			if k > vnet.HdrLen {
				if tu, flags, ok := parse(buf[vnet.HdrLen:k]); ok {
					for i, m := range match {
						if m(tu, flags) {
							counts[i].Add(1)
						}
					}
				}
			}
		}
	}()
	return counts
}

// TestBudget: packets leaving a PU that would be steered pass to its TAP
// within its budget (per bucket: SYN/FIN/RST, the rest, ...); beyond it the
// kernel drops and counts them. Packets toward a PU are not budgeted, and
// other PUs keep their own budget.
func TestBudget(t *testing.T) {
	r := newRig(t, 3, 2) // pu0, pu1 steered; PUs[2] an external host
	t.Cleanup(r.closeTaps)
	b := steer.Budget{Rate: 200, Burst: 20}
	s, err := steer.Open(steer.Config{Node: "test" + r.node.Suffix, NetNS: int(r.node.NS), Budget: b})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	if err := s.Apply(r.pus, nil); err != nil {
		t.Fatal(err)
	}
	pu0, pu1, ext := r.node.PUs[0], r.node.PUs[1], r.node.PUs[2]
	in0, _ := tapNames(0)
	_, out1 := tapNames(1)
	const udpPort, synPort = 9999, 9998
	in0Counts := countTap(t, r.taps[in0],
		func(tu steer.Tuple, _ uint8) bool { return tu.Proto == ipproto.UDP && tu.DstPort == udpPort },
		func(tu steer.Tuple, fl uint8) bool { return tu.Proto == ipproto.TCP && tu.DstPort == synPort })
	udpIn0, synIn0 := in0Counts[0], in0Counts[1]
	countTap(t, r.taps[out1]) // drained, not forwarded

	const n = 3000
	dst := netip.AddrPortFrom(pu1.Addr, udpPort)
	send := func(from *testenv.PU) time.Duration {
		c := from.ListenUDP(0)
		start := time.Now()
		for i := 0; i < n; i++ {
			if _, err := c.WriteToUDPAddrPort([]byte("x"), dst); err != nil {
				t.Fatal(err)
			}
		}
		return time.Since(start)
	}
	took := send(pu0)
	raw := pu0.Raw()
	mac0, mac1 := pu0.MACOf(), pu1.MACOf()
	syns := make([][]byte, n)
	for i := range syns {
		syns[i] = testenv.TCPSegment(mac0, mac1, netip.AddrPortFrom(pu0.Addr, uint16(10000+i)), netip.AddrPortFrom(pu1.Addr, synPort), "S", 1, 0, nil)
	}
	start := time.Now()
	for _, f := range syns {
		raw.MustSend(f)
	}
	took2 := time.Since(start)
	// Later IPv4 fragments (rule 4b's own bucket).
	frags := make([][]byte, n)
	for i := range frags {
		ip := testenv.IPv4(pu0.Addr, pu1.Addr, layers.IPProtocolUDP)
		ip.Id, ip.FragOffset = uint16(i), 100
		frags[i] = testenv.Frame(testenv.Eth(mac0, mac1, layers.EthernetTypeIPv4), ip, gopacket.Payload(make([]byte, 64)))
	}
	start = time.Now()
	for _, f := range frags {
		raw.MustSend(f)
	}
	took3 := time.Since(start)
	send(ext) // toward pu1 from outside: pu1's egress chain, not budgeted
	time.Sleep(300 * time.Millisecond)

	c0, err := s.Counters("pu0")
	if err != nil {
		t.Fatal(err)
	}
	c1, err := s.Counters("pu1")
	if err != nil {
		t.Fatal(err)
	}
	// Each bucket passes at most its rate over the time it took, its
	// burst, and the rate once more (the kernel's bucket starts full).
	most := func(d time.Duration) int64 { return int64(float64(b.Rate)*(d.Seconds()+1)) + int64(b.Burst) }
	udp, syn := udpIn0.Load(), synIn0.Load()
	t.Logf("pu0 sent %d datagrams in %v, %d SYNs and %d fragments: %d and %d reached its TAP, %d dropped over budget; pu1 %+v", n, took, n, n, udp, syn, c0.InOverBudget.Packets, c1)
	if udp == 0 || udp > most(took) || syn == 0 || syn > most(took2) {
		t.Fatalf("through the budget: %d datagrams in %v, %d SYNs (at most %d, %d)", udp, took, syn, most(took), most(took2))
	}
	// Every packet beyond what the buckets let through is counted (plus
	// whatever of the PU's own IPv6 chatter fell over budget too).
	if got := int64(c0.InOverBudget.Packets); got < 3*n-most(took)-most(took2)-most(took3) || got > 3*n+50 {
		t.Fatalf("over-budget counter %d; sent %d, read %d datagrams and %d SYNs", got, 3*n, udp, syn)
	}
	if c1.InOverBudget.Packets != 0 || c1.OutSteered.Packets < n {
		t.Fatalf("toward pu1: %+v; want every datagram steered, none over budget", c1)
	}
	all, err := s.AllCounters()
	if err != nil || all["pu0"].InOverBudget != c0.InOverBudget || all["pu1"].InOverBudget.Packets != 0 {
		t.Fatalf("AllCounters = %+v, %v", all, err)
	}
}
