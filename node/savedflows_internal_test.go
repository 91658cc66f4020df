package node

import (
	"encoding/json"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestPolicyDigest: the digest that tells a restarted daemon whether the
// policy changed while it was down is the same for the same content and
// differs for any change, targets included.
func TestPolicyDigest(t *testing.T) {
	const base = `
targetNetworks: [10.0.0.0/8]
policies:
  - name: db
    selector: app=db
    ingress: [{from: [{selector: app=web}], ports: [tcp/5432], action: allow}]
`
	a, b := policyDigest(compilePolicy(t, base)), policyDigest(compilePolicy(t, base))
	if a == "" || a != b {
		t.Fatalf("same content: %q and %q", a, b)
	}
	for _, changed := range []string{
		`
targetNetworks: [10.0.0.0/8]
policies:
  - name: db
    selector: app=db
    ingress: [{from: [{selector: app=nobody}], ports: [tcp/5432], action: allow}]
`, `
targetNetworks: [10.0.0.0/16]
policies:
  - name: db
    selector: app=db
    ingress: [{from: [{selector: app=web}], ports: [tcp/5432], action: allow}]
`} {
		if d := policyDigest(compilePolicy(t, changed)); d == "" || d == a {
			t.Errorf("changed content, same digest: %s", changed)
		}
	}
	if policyDigest(nil) != "" {
		t.Error("no policy: want no digest")
	}
}

// BenchmarkSavedFlowsJSON: flows.json for 100,000 established flows of 100
// PUs, each flow with its side and one of 100 peer identities (a pod's
// tags): its size (bytes/file) and the time to encode and decode it.
func BenchmarkSavedFlowsJSON(b *testing.B) {
	s := savedFlows{Saved: time.Now(), Policy: strings.Repeat("ab", 32)}
	for i := range 100 {
		s.Peers = append(s.Peers, savedPeer{Node: "node-1", Tags: []string{
			"@sys:id=k8s-0b7f4c1e-5d2a-4f8e-9c3b-" + strconv.Itoa(100000+i), "@sys:kind=pod", "@sys:name=web-" + strconv.Itoa(i),
			"@sys:namespace=prod", "app=web", "tier=frontend"}})
	}
	now := time.Now()
	for i := range 100000 {
		s.Flows = append(s.Flows, savedFlow{PU: "k8s-0b7f4c1e-5d2a-4f8e-9c3b-" + strconv.Itoa(100000+i%100),
			Local:    netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}), 8080),
			Remote:   netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 2, byte(i >> 16), byte(i >> 8)}), uint16(30000+i%30000)),
			LastSeen: now, Server: i%2 == 0, Peer: 1 + i%100})
	}
	var size int
	for b.Loop() {
		out, err := json.Marshal(s)
		if err != nil {
			b.Fatal(err)
		}
		var back savedFlows
		if err := json.Unmarshal(out, &back); err != nil || len(back.Flows) != len(s.Flows) {
			b.Fatal(err)
		}
		size = len(out)
	}
	b.ReportMetric(float64(size), "bytes/file")
}
