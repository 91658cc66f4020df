package node

import (
	"net/netip"
	"net/url"
	"reflect"
	"testing"
	"time"

	"github.com/trireme-go/trireme/dataplane"
	"github.com/trireme-go/trireme/ipproto"
)

func sampleFlow(seq uint64) Flow {
	return Flow{Seq: seq, Verdict: VerdictDenied, LocalName: "web", Record: dataplane.Record{
		Time: time.Unix(1000, 0), Proto: ipproto.TCP, Direction: "ingress",
		Client: netip.MustParseAddrPort("10.0.0.5:4000"), Server: netip.MustParseAddrPort("10.0.0.3:8080"),
		Local: dataplane.PUInfo{ID: "p1", Tags: []string{"app=web"}}, Remote: dataplane.PeerInfo{IP: netip.MustParseAddr("10.0.0.5"), Tags: []string{"app=rogue", "env=dev"}},
		Action: "deny", Reason: "policy-denied", Rule: &dataplane.RuleInfo{Policy: "web", Direction: "ingress", Index: 1, Name: "no-dev"},
	}}
}

// TestFlowQueryMatch: each filter keeps the sample flow when it names it
// and drops it when it names something else.
func TestFlowQueryMatch(t *testing.T) {
	f := sampleFlow(7)
	for _, tc := range []struct {
		query string
		want  bool
	}{
		{"", true},
		{"pu=web", true}, {"pu=p1", true}, {"pu=db", false}, {"pu=db&pu=web", true},
		{"pu-selector=app%3Dweb", true}, {"pu-selector=app%3Ddb", false}, {"pu-selector=%21app", false},
		{"peer=10.0.0.5", true}, {"peer=10.0.0.0/24", true}, {"peer=10.0.1.0/24", false},
		{"peer-selector=env+in+(dev,prod)", true}, {"peer-selector=env%21%3Ddev", false},
		{"port=8080", true}, {"port=8000-8100", true}, {"port=tcp/8080", true}, {"port=udp/8080", false}, {"port=80", false},
		{"proto=tcp", true}, {"proto=udp", false}, {"proto=ip-6", true},
		{"verdict=denied", true}, {"verdict=allowed", false}, {"verdict=observed", false},
		{"reason=policy-denied", true}, {"reason=timeout", false},
		{"rule=web", true}, {"rule=no-dev", true}, {"rule=web/ingress/1", true}, {"rule=web/ingress/0", false}, {"rule=db", false},
		{"direction=ingress", true}, {"direction=egress", false},
		{"since=1970-01-01T00:16:40Z", true}, {"since=1970-01-01T00:16:41Z", false},
		{"after=6", true}, {"after=7", false},
	} {
		v, err := url.ParseQuery(tc.query)
		if err != nil {
			t.Fatal(err)
		}
		q, err := ParseFlowQuery(v, time.Now())
		if err != nil {
			t.Errorf("%q: %v", tc.query, err)
			continue
		}
		if got := q.Match(&f); got != tc.want {
			t.Errorf("%q: Match = %v, want %v", tc.query, got, tc.want)
		}
		// Encode reads back to the same query.
		back, err := ParseFlowQuery(q.Encode(), time.Now())
		if err != nil || back.Match(&f) != tc.want {
			t.Errorf("%q: Encode %q reads back as %v, %v", tc.query, q.Encode().Encode(), back, err)
		}
	}
}

// TestFlowRing: the ring keeps the newest records in order, numbered, and
// wakes followers.
func TestFlowRing(t *testing.T) {
	r := newFlowRing(4)
	fs, ch := r.since(0, nil)
	if len(fs) != 0 {
		t.Fatalf("empty ring gave %d", len(fs))
	}
	for i := range 6 {
		r.Record(&dataplane.Record{Reason: string(rune('a' + i))})
	}
	select {
	case <-ch:
	default:
		t.Fatal("a follower was not woken")
	}
	fs, _ = r.since(0, nil)
	var got []string
	var seqs []uint64
	for _, f := range fs {
		got, seqs = append(got, f.Reason), append(seqs, f.Seq)
	}
	if !reflect.DeepEqual(got, []string{"c", "d", "e", "f"}) || !reflect.DeepEqual(seqs, []uint64{3, 4, 5, 6}) {
		t.Errorf("ring holds %v %v", got, seqs)
	}
	if fs, _ = r.since(5, nil); len(fs) != 1 || fs[0].Reason != "f" {
		t.Errorf("since(5) = %+v", fs)
	}
	if fs, _ = r.since(99, nil); len(fs) != 0 {
		t.Errorf("since(99) = %+v", fs)
	}
	if size, held := r.stats(); size != 4 || held != 4 {
		t.Errorf("stats = %d, %d", size, held)
	}
}

// FuzzParseFlowQuery: any query string is parsed or refused with an error,
// never a panic; what parses matches without panicking and reads back.
func FuzzParseFlowQuery(f *testing.F) {
	for _, s := range []string{"pu=a&peer=10.0.0.0/8&port=1-2&proto=udp&verdict=observed&since=5m&last=3&follow=1",
		"pu-selector=app+in+(a,b)&peer-selector=!x&rule=a/ingress/0&reason=timeout&direction=egress&after=9", "since=2026-01-01T00:00:00Z"} {
		f.Add(s)
	}
	fl := sampleFlow(3)
	f.Fuzz(func(t *testing.T, s string) {
		v, err := url.ParseQuery(s)
		if err != nil {
			return
		}
		now := time.Unix(5000, 0)
		q, err := ParseFlowQuery(v, now)
		if err != nil {
			return
		}
		m := q.Match(&fl)
		back, err := ParseFlowQuery(q.Encode(), now)
		if err != nil {
			t.Fatalf("%q: Encode %q does not read back: %v", s, q.Encode().Encode(), err)
		}
		if back.Match(&fl) != m {
			t.Fatalf("%q: Encode changes the match", s)
		}
	})
}

// TestFlowRingConcurrent: the enforcer records while followers read; each
// reader sees increasing sequence numbers without gaps inside one answer
// (run with -race).
func TestFlowRingConcurrent(t *testing.T) {
	r := newFlowRing(128)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 20000 {
			r.Record(&dataplane.Record{Count: uint64(i)})
		}
	}()
	var seq uint64
	for {
		fs, ch := r.since(seq, nil)
		for i, f := range fs {
			if f.Seq <= seq || i > 0 && f.Seq != fs[i-1].Seq+1 || f.Count != f.Seq-1 {
				t.Fatalf("record %d after %d: %+v", f.Seq, seq, f.Record)
			}
		}
		if len(fs) > 0 {
			seq = fs[len(fs)-1].Seq
		}
		if seq == 20000 {
			break
		}
		select {
		case <-ch:
		case <-done:
		}
	}
	<-done
}

// BenchmarkFlowQuery: a query over a full ring of the default size (the
// copy under the ring's lock, then the filters), and the cost of one
// Record for the enforcer.
func BenchmarkFlowQuery(b *testing.B) {
	r := newFlowRing(DefaultFlowRing)
	for i := range DefaultFlowRing {
		f := sampleFlow(uint64(i))
		r.Record(&f.Record)
	}
	v, _ := url.ParseQuery("verdict=denied&pu-selector=app%3Dweb&peer=10.0.0.0/24&port=8080")
	q, err := ParseFlowQuery(v, time.Now())
	if err != nil {
		b.Fatal(err)
	}
	b.Run("query", func(b *testing.B) {
		var buf []Flow
		for b.Loop() {
			buf, _ = r.since(0, buf[:0])
			n := 0
			for i := range buf {
				buf[i].Verdict = verdictOf(&buf[i].Record)
				if q.Match(&buf[i]) {
					n++
				}
			}
			if n != DefaultFlowRing {
				b.Fatalf("%d matched", n)
			}
		}
	})
	b.Run("record", func(b *testing.B) {
		f := sampleFlow(1)
		for b.Loop() {
			r.Record(&f.Record)
		}
	})
}
