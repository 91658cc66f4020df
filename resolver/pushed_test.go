package resolver

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/trireme-go/trireme/policy"
)

func TestPushed(t *testing.T) {
	parse := func(text string) *policy.Set {
		s, err := policy.Parse("p.yaml", []byte(text))
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	p, err := NewPushed("kubernetes", &policy.Set{}, FileOptions{TargetNetworks: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}})
	if err != nil {
		t.Fatal(err)
	}
	if st := p.Status(); st.File != "kubernetes" || st.Policies != 0 || st.Reloads != 1 {
		t.Fatalf("initial status %+v", st)
	}
	set := parse("policies:\n  - name: a\n    selector: app=a\n    ingress: []\n")
	if err := p.Put(set); err != nil {
		t.Fatal(err)
	}
	e := <-p.Updates()
	if e != p.Current() || len(e.Set().Policies) != 1 {
		t.Fatalf("update %v, current %v", e, p.Current())
	}
	// The resolver's networks are added to the compiled set, not to the caller's.
	if len(set.TargetNetworks) != 0 || len(e.Set().TargetNetworks) != 1 {
		t.Fatalf("target networks: caller's %v, compiled %v", set.TargetNetworks, e.Set().TargetNetworks)
	}
	// A set that does not compile leaves the previous one in force.
	bad := &policy.Set{Policies: []policy.Policy{{Name: "x"}, {Name: "x"}}}
	if err := p.Put(bad); err == nil {
		t.Fatal("a set with a duplicate policy compiled")
	}
	if p.Current() != e || !strings.Contains(p.Status().LastError, "x") {
		t.Fatalf("after a rejected set: current changed %v, status %+v", p.Current() != e, p.Status())
	}
	select {
	case <-p.Updates():
		t.Fatal("a rejected set was pushed")
	default:
	}
}
