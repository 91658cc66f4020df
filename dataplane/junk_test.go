package dataplane

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/x509"
	"testing"
	"time"

	"github.com/trireme-go/trireme/dataplane/packet"
	"github.com/trireme-go/trireme/flow"
	"github.com/trireme-go/trireme/identity"
	"github.com/trireme-go/trireme/reason"
	"github.com/trireme-go/trireme/tokens"
)

// pkiSide is an enforcer in PKI mode (a node certificate from a throwaway
// CA), the mode an operator deploys and the one where a junk token costs a
// public-key verification.
func pkiSide(t testing.TB, node, yaml string, tags map[string]string, ca *pkiCA) *side {
	t.Helper()
	return pkiSideBudget(t, node, yaml, tags, ca, tokens.VerifyBudget{})
}

// pkiSideBudget is pkiSide with a verification budget.
func pkiSideBudget(t testing.TB, node, yaml string, tags map[string]string, ca *pkiCA, budget tokens.VerifyBudget) *side {
	t.Helper()
	cert, key, err := tokens.IssueNode(ca.cert, ca.key, node, pkiNow, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	sec, err := tokens.NewPKI(ca.cert, cert, key)
	if err != nil {
		t.Fatal(err)
	}
	te, err := tokens.New(tokens.Config{Secrets: sec, Budget: budget})
	if err != nil {
		t.Fatal(err)
	}
	s := &side{sink: &memSink{}}
	s.e, err = New(Config{Tokens: te, Policy: compile(t, yaml), Sink: s.sink, Flows: flow.Config{}})
	if err != nil {
		t.Fatal(err)
	}
	s.pu = s.e.AddPU(node+"-pu", identity.NewTags(tags), nil)
	return s
}

// pkiNow is the PKI tests' clock: NewPKI checks the node certificate
// against the wall clock.
var pkiNow = time.Now().Truncate(time.Second)

type pkiCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newPKICA(t testing.TB) *pkiCA {
	t.Helper()
	cert, key, err := tokens.NewCA("test CA", pkiNow, 48*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return &pkiCA{cert, key}
}

// junkSYN returns a SYN as the client's enforcer put it on the wire, with
// the JWT signature of its token altered: a real node certificate, a
// signature that does not verify. mark(frame, i) makes the i-th distinct
// junk token in place (4 signature characters encode i).
func junkSYN(t testing.TB, c *side, now time.Time) (frame []byte, mark func(f []byte, i int)) {
	t.Helper()
	syn := tcpFrame(t, seg{src: cIP, dst: sIP, sport: 40000, dport: 5432, flags: packet.SYN, seq: 1})
	var out Output
	c.e.Process(c.pu, FromApp, syn, now, &out)
	if out.Verdict != Forward {
		t.Fatalf("client SYN: %v %v", out.Verdict, out.Reason)
	}
	frame = bytes.Clone(out.Frame)
	dot := bytes.LastIndexByte(frame, '.')
	if dot < 0 || len(frame)-dot < 40 {
		t.Fatal("no JWT signature in the SYN")
	}
	sig := dot + 10
	const b64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	// One character changed for good: no i gives back the real signature.
	if frame[sig+4] == 'A' {
		frame[sig+4] = 'B'
	} else {
		frame[sig+4] = 'A'
	}
	mark = func(f []byte, i int) {
		for j := 0; j < 4; j++ {
			f[sig+j] = b64[(i>>(6*j))&63]
		}
	}
	return frame, mark
}

// BenchmarkJunkSYN: the server enforcer's CPU per SYN carrying a junk token
// (a real node certificate, a bad signature) from one source, new client
// port each time: parse, lookup, token verification, denial, flow record,
// RST. same-token repeats one junk token; fresh-token makes a new one each
// time (what an attacker who can vary bytes sends); fresh-token-spoofed
// also sends each from another source address (what an attacker who can
// also spoof sources sends: the node's budget holds).
func BenchmarkJunkSYN(b *testing.B) {
	ca := newPKICA(b)
	for _, v := range []string{"same-token", "fresh-token", "fresh-token-spoofed"} {
		b.Run(v, func(b *testing.B) {
			c := pkiSide(b, "node-c", allowAll, map[string]string{"app": "web"}, ca)
			s := pkiSide(b, "node-s", allowAll, map[string]string{"app": "db"}, ca)
			s.e.sink = discardSink{}
			frame, mark := junkSYN(b, c, pkiNow)
			wire := make([]byte, 0, 2048)
			var out Output
			i := 0
			b.ReportAllocs()
			cpu0 := cpuTime()
			for b.Loop() {
				i++
				if v != "same-token" {
					mark(frame, i)
				}
				if v == "fresh-token-spoofed" {
					frame[28], frame[29] = byte(i>>8), byte(i) // source address
				}
				frame[34], frame[35] = byte(i>>8), byte(i) // client port
				wire = append(wire[:0], frame...)
				s.e.Process(s.pu, FromNet, wire, pkiNow, &out)
				if out.Verdict != Drop || out.Reason == reason.None {
					b.Fatalf("junk SYN: %v %v", out.Verdict, out.Reason)
				}
			}
			b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/op")
		})
	}
}

// discardSink builds nothing and keeps nothing; the record is still made.
type discardSink struct{}

func (discardSink) Record(*Record) {}

// TestVerifyBudgetDropsSilently: a SYN whose token cannot be verified for
// lack of budget is dropped without a RST (the client's kernel retransmits
// it; once the budget has refilled it is verified as usual) and leaves no
// state, with a record naming the reason; a junk token refused before gets
// its own reason from the failure cache, budget or not.
func TestVerifyBudgetDropsSilently(t *testing.T) {
	ca := newPKICA(t)
	c := pkiSide(t, "node-c", allowAll, map[string]string{"app": "web"}, ca)
	s := pkiSideBudget(t, "node-s", allowAll, map[string]string{"app": "db"}, ca, tokens.VerifyBudget{SourceRate: 1, SourceBurst: 1})
	junk, mark := junkSYN(t, c, pkiNow)
	if r := s.run(FromNet, junk, pkiNow); r.v != Drop || r.code != reason.BadSignature || len(r.inject) != 1 {
		t.Fatalf("first junk SYN: %v %v, %d injected; want bad-signature and a RST", r.v, r.code, len(r.inject))
	}
	mark(junk, 7)
	r := s.run(FromNet, junk, pkiNow)
	if r.v != Drop || r.code != reason.VerifyRateLimited || len(r.inject) != 0 {
		t.Fatalf("over budget: %v %v, %d injected; want a silent verify-rate-limited drop", r.v, r.code, len(r.inject))
	}
	if n, _ := s.e.Flows(); n != 0 {
		t.Fatalf("%d flows kept", n)
	}
	if rs := s.sink.all(); len(rs) != 2 || rs[1].Reason != "verify-rate-limited" || rs[1].Action != "deny" || rs[1].End != EndDenied {
		t.Fatalf("records: %+v", rs)
	}
	// A second later the retransmitted SYN is verified (and refused for
	// what it is).
	if r := s.run(FromNet, junk, pkiNow.Add(time.Second)); r.code != reason.BadSignature {
		t.Fatalf("retransmission after the refill: %v %v", r.v, r.code)
	}
	// A real client's SYN over budget gets through on its retransmission.
	syn := tcpFrame(t, seg{src: cIP, dst: sIP, sport: 41000, dport: 5432, flags: packet.SYN, seq: 9})
	c2 := pkiSide(t, "node-c2", allowAll, map[string]string{"app": "web"}, ca)
	c2.e.Process(c2.pu, FromApp, syn, pkiNow, &c2.out)
	wire := bytes.Clone(c2.out.Frame)
	if r := s.run(FromNet, wire, pkiNow.Add(time.Second)); r.code != reason.VerifyRateLimited {
		t.Fatalf("valid SYN over budget: %v %v", r.v, r.code)
	}
	if r := s.run(FromNet, wire, pkiNow.Add(2*time.Second)); r.v != Forward {
		t.Fatalf("valid SYN retransmitted after the refill: %v %v", r.v, r.code)
	}
}
