package policy

import (
	"fmt"
	"math/rand"
	"net/netip"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/trireme-go/trireme/identity"
	"github.com/trireme-go/trireme/ipproto"
)

// threadCPU is the CPU time of the calling OS thread. The benchmarks report
// it per decision as cpu-ns/op next to wall-clock ns/op: on a shared, loaded
// machine wall time includes time spent waiting for a core.
func threadCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(1 /* RUSAGE_THREAD */, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// cpuTimer measures the thread CPU time of a benchmark loop.
func cpuTimer(b *testing.B) func() {
	runtime.LockOSThread()
	start := threadCPU()
	return func() {
		b.ReportMetric(float64(threadCPU()-start)/float64(b.N), "cpu-ns/op")
		runtime.UnlockOSThread()
	}
}

// benchSet builds a Set of n ingress rules for the PUs tagged app=web (the
// worst case for the decision: every rule belongs to the deciding PU), plus
// n rules in policies that select other PUs (they must cost nothing).
// 80% of the rules have selector peers on the peers' 100 tags, 20% CIDR
// peers; ports are spread over tcp/1000-2999; some rules reject, some are
// observed, some have negative requirements or no peers.
func benchSet(n int) *Set {
	s := &Set{TargetNetworks: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}
	mk := func(i int) Rule {
		r := Rule{Index: i % 100, Action: Allow}
		if i%17 == 0 {
			r.Action = Reject
		}
		if i%13 == 0 {
			r.Observe = ObserveContinue
		}
		switch {
		case i%101 == 0: // every peer
		case i%5 == 4:
			r.Peers = []Peer{{CIDR: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i / 256 % 256), byte(i % 256), 0}), 24)}}
		default:
			text := fmt.Sprintf("k%d=v%d, env in (prod,staging)", i%100, i/100%20)
			if i%3 == 0 {
				text += ", !quarantine"
			}
			sel, err := ParseSelector(text)
			if err != nil {
				panic(err)
			}
			r.Peers = []Peer{{Selector: sel}}
		}
		r.Ports = []PortRange{{Protocol: ipproto.TCP, First: uint16(1000 + i%2000), Last: uint16(1000 + i%2000)}}
		return r
	}
	for p := 0; p*100 < n; p++ {
		web, _ := ParseSelector("app=web")
		other, _ := ParseSelector(fmt.Sprintf("app=other%d", p))
		pw := Policy{Name: fmt.Sprintf("web%d", p), Selector: web}
		po := Policy{Name: fmt.Sprintf("other%d", p), Selector: other}
		for i := p * 100; i < (p+1)*100 && i < n; i++ {
			pw.Ingress = append(pw.Ingress, mk(i))
			po.Ingress = append(po.Ingress, mk(i))
		}
		s.Policies = append(s.Policies, pw, po)
	}
	return s
}

func benchTags(r *rand.Rand, extra ...string) identity.Tags {
	m := map[string]string{"env": "prod"}
	for i := 0; i < 100; i++ {
		m[fmt.Sprintf("k%d", i)] = fmt.Sprintf("v%d", r.Intn(20))
	}
	for _, kv := range extra {
		k, v, _ := strings.Cut(kv, "=")
		m[k] = v
	}
	return identity.NewTags(m)
}

type benchQuery struct {
	peer *identity.Identity
	addr netip.Addr
	port uint16
}

func BenchmarkDecide(b *testing.B) {
	for _, n := range []int{10, 1000, 10000} {
		b.Run(fmt.Sprintf("rules=%d", n), func(b *testing.B) {
			r := rand.New(rand.NewSource(1))
			e, err := Compile(benchSet(n))
			if err != nil {
				b.Fatal(err)
			}
			pu := e.ForPU(benchTags(r, "app=web"))
			qs := make([]benchQuery, 256)
			for i := range qs {
				qs[i] = benchQuery{
					peer: identity.New(benchTags(r)),
					addr: netip.AddrFrom4([4]byte{10, byte(r.Intn(40)), byte(r.Intn(256)), 7}),
					port: uint16(1000 + r.Intn(min(n, 2000))),
				}
				if i%4 == 0 {
					qs[i].peer = nil // a host outside the target networks
				}
			}
			allowed := 0
			b.ReportAllocs()
			b.ResetTimer()
			stop := cpuTimer(b)
			for i := 0; i < b.N; i++ {
				q := &qs[i&255]
				if pu.Ingress(q.peer, q.addr, ipproto.TCP, q.port).Action == Allow {
					allowed++
				}
			}
			stop()
			b.ReportMetric(float64(allowed)/float64(b.N), "allowed/op")
		})
	}
}

// BenchmarkDecideOnePort: every rule of the PU is on tcp/443, so the
// port-first plan cannot help and each decision goes through the inverted
// index over the peer's 100 tags.
func BenchmarkDecideOnePort(b *testing.B) {
	for _, n := range []int{10, 1000, 10000} {
		b.Run(fmt.Sprintf("rules=%d", n), func(b *testing.B) {
			r := rand.New(rand.NewSource(1))
			s := benchSet(n)
			for pi := range s.Policies {
				for ri := range s.Policies[pi].Ingress {
					s.Policies[pi].Ingress[ri].Ports = []PortRange{{Protocol: ipproto.TCP, First: 443, Last: 443}}
				}
			}
			e, err := Compile(s)
			if err != nil {
				b.Fatal(err)
			}
			pu := e.ForPU(benchTags(r, "app=web"))
			qs := make([]benchQuery, 256)
			for i := range qs {
				qs[i] = benchQuery{peer: identity.New(benchTags(r)), addr: netip.AddrFrom4([4]byte{10, byte(r.Intn(40)), byte(r.Intn(256)), 7})}
				if i%4 == 0 {
					qs[i].peer = nil
				}
			}
			allowed := 0
			b.ReportAllocs()
			b.ResetTimer()
			stop := cpuTimer(b)
			for i := 0; i < b.N; i++ {
				q := &qs[i&255]
				if pu.Ingress(q.peer, q.addr, ipproto.TCP, 443).Action == Allow {
					allowed++
				}
			}
			stop()
			b.ReportMetric(float64(allowed)/float64(b.N), "allowed/op")
		})
	}
}

// BenchmarkNewIdentity: preparing a 100-tag peer (once per verified token).
func BenchmarkNewIdentity(b *testing.B) {
	tags := benchTags(rand.New(rand.NewSource(1)))
	identity.New(tags) // symbols interned: measure the steady state
	b.ReportAllocs()
	b.ResetTimer()
	stop := cpuTimer(b)
	for i := 0; i < b.N; i++ {
		identity.New(tags)
	}
	stop()
}

// BenchmarkForPU: a PU's rules out of 10,000 (cache cleared, so it measures
// the per-PU build).
func BenchmarkForPU(b *testing.B) {
	e, err := Compile(benchSet(10000))
	if err != nil {
		b.Fatal(err)
	}
	tags := benchTags(rand.New(rand.NewSource(1)), "app=web")
	b.ReportAllocs()
	b.ResetTimer()
	stop := cpuTimer(b)
	for i := 0; i < b.N; i++ {
		e.mu.Lock()
		clear(e.cache)
		e.mu.Unlock()
		e.ForPU(tags)
	}
	stop()
}
